"""Minimal safetensors reader/writer (no dependency on the ``safetensors`` package, no numpy).

File layout: 8-byte little-endian unsigned header length N, then N bytes of UTF-8 JSON
``{name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}`` padded with spaces
to a multiple of 8, then the raw little-endian tensor bytes (offsets are relative to the end of the header).
"""

import ctypes
import json
import os
import struct
import sys

import torch

from .errors import CaptureFormatError, CaptureWriteError

DTYPE_TO_ST = {
    torch.float16: "F16",
    torch.bfloat16: "BF16",
    torch.float32: "F32",
    torch.float64: "F64",
    torch.int8: "I8",
    torch.uint8: "U8",
    torch.int16: "I16",
    torch.int32: "I32",
    torch.int64: "I64",
    torch.bool: "BOOL",
}
ST_TO_DTYPE = {v: k for k, v in DTYPE_TO_ST.items()}

# dtypes allowed in capture shards (docs/capture-format.md)
CAPTURE_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def _check_little_endian():
    if sys.byteorder != "little":  # pragma: no cover - no big-endian hosts in practice
        raise NotImplementedError("viral_lens_torch writes safetensors only on little-endian hosts")


def _tensor_view(t):
    """A zero-copy memoryview over the bytes of a contiguous CPU tensor (keep ``t`` alive while used)."""
    n = t.numel() * t.element_size()
    if n == 0:
        return memoryview(b"")
    return memoryview((ctypes.c_char * n).from_address(t.data_ptr())).cast("B")


def encode_header(tensors, metadata=None):
    """Return (header_bytes_including_length_prefix, list_of_contiguous_cpu_tensors)."""
    _check_little_endian()
    header = {}
    prepared = []
    offset = 0
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor):
            raise TypeError("tensor %r is a %s, not a torch.Tensor" % (name, type(t).__name__))
        if t.dtype not in DTYPE_TO_ST:
            raise TypeError("tensor %r has dtype %s, which safetensors cannot store" % (name, t.dtype))
        t = t.detach().to("cpu").contiguous()
        nbytes = t.numel() * t.element_size()
        header[name] = {"dtype": DTYPE_TO_ST[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
        prepared.append(t)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    raw = json.dumps(header, separators=(",", ":")).encode("utf-8")
    raw += b" " * ((8 - len(raw) % 8) % 8)
    return struct.pack("<Q", len(raw)) + raw, prepared


def safetensors_bytes(tensors, metadata=None):
    """The complete file contents as bytes (convenient for tests; copies the data)."""
    head, prepared = encode_header(tensors, metadata)
    return head + b"".join(bytes(_tensor_view(t)) for t in prepared)


def fsync_dir(path):
    """fsync a directory so a rename inside it is durable (no-op where unsupported)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _write_chunks(f, chunks):
    """Write every chunk to the open file ``f`` (split out so tests can inject failures)."""
    for chunk in chunks:
        f.write(chunk)


def atomic_write(path, chunks):
    """Write ``chunks`` (bytes-like objects) to ``path`` atomically.

    The data goes to ``path.tmp-<pid>-<random hex>`` in the same directory, is flushed and fsynced, then renamed over ``path``
    and the directory is fsynced. On any failure the temp file is removed, ``path`` is untouched, and a
    :class:`CaptureWriteError` naming ``path`` is raised (the original OSError is its ``__cause__``).
    """
    path = os.fspath(path)
    tmp = "%s.tmp-%d-%s" % (path, os.getpid(), os.urandom(4).hex())
    f = None
    try:
        f = open(tmp, "wb")
        _write_chunks(f, chunks)
        f.flush()
        os.fsync(f.fileno())
        f.close()
        f = None
        os.replace(tmp, path)
    except BaseException as err:
        if f is not None:
            try:
                f.close()
            except OSError:
                pass
        try:
            os.unlink(tmp)
        except OSError:
            pass
        if isinstance(err, OSError):
            raise CaptureWriteError("could not write %s: %s" % (path, err.strerror or err), path=path) from err
        raise
    fsync_dir(os.path.dirname(path) or ".")


def save_file(tensors, path, metadata=None):
    """Atomically write ``tensors`` (dict name -> tensor) as a safetensors file."""
    head, prepared = encode_header(tensors, metadata)
    atomic_write(path, [head] + [_tensor_view(t) for t in prepared])
    del prepared


def read_header(path):
    """Return (header dict without __metadata__, metadata dict, data_start_offset)."""
    with open(path, "rb") as f:
        prefix = f.read(8)
        if len(prefix) != 8:
            raise CaptureFormatError("%s: not a safetensors file (shorter than 8 bytes)" % path)
        (n,) = struct.unpack("<Q", prefix)
        size = os.fstat(f.fileno()).st_size
        if n > size - 8:
            raise CaptureFormatError("%s: header length %d exceeds file size %d" % (path, n, size))
        try:
            header = json.loads(f.read(n).decode("utf-8"))
        except ValueError as err:
            raise CaptureFormatError("%s: invalid safetensors header: %s" % (path, err)) from err
    metadata = header.pop("__metadata__", {}) or {}
    return header, metadata, 8 + n


def load_file(path, names=None):
    """Read a safetensors file into a dict name -> CPU tensor (optionally only ``names``)."""
    _check_little_endian()
    header, _metadata, start = read_header(path)
    out = {}
    with open(path, "rb") as f:
        f.seek(0, os.SEEK_END)
        data_len = f.tell() - start
        for name, info in header.items():
            if names is not None and name not in names:
                continue
            dt = ST_TO_DTYPE.get(info["dtype"])
            if dt is None:
                raise CaptureFormatError("%s: tensor %r has unsupported dtype %s" % (path, name, info["dtype"]))
            b, e = info["data_offsets"]
            shape = list(info["shape"])
            numel = 1
            for s in shape:
                numel *= s
            itemsize = torch.empty((), dtype=dt).element_size()
            if not (0 <= b <= e <= data_len) or e - b != numel * itemsize:
                raise CaptureFormatError("%s: tensor %r has inconsistent data_offsets %s for shape %s"
                                         % (path, name, info["data_offsets"], shape))
            f.seek(start + b)
            buf = bytearray(f.read(e - b))
            if numel == 0:
                t = torch.empty(shape, dtype=dt)
            else:
                t = torch.frombuffer(buf, dtype=dt).reshape(shape).clone()
            out[name] = t
    return out
