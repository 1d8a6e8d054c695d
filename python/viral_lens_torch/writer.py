"""CaptureWriter: writes the viral-lens capture format (docs/capture-format.md), atomically and resumably."""

import concurrent.futures
import copy
import datetime
import json
import logging
import os
import re
import shutil

import torch

from . import __version__
from .errors import CaptureFormatError, CaptureWriteError, DuplicateSampleError
from .safetensors_io import CAPTURE_DTYPES, atomic_write, read_header, save_file

log = logging.getLogger("viral_lens_torch")

FORMAT = "viral-lens.capture"
VERSION = 1
MANIFEST = "manifest.json"
LAYER_TENSOR = "hidden"
TARGET_TENSOR = "features"

# shards of one batch written in parallel (CaptureWriter._write_shards; 1 = one after the other). I/O-bound, so
# not tied to the core count: on a 2-core VM 1 -> 287, 4 -> 620, 8 -> 580-700 MB/s vs 780 MB/s for one plain file
WRITE_WORKERS = 8

_TMP_RE = re.compile(r"\.tmp-\d+(-[0-9a-f]+)?$")  # ours and the TS writer's
_NAME_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")
_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.out$")

_DTYPE_SIZES = {"F16": 2, "BF16": 2, "F32": 4, "F64": 8, "float16": 2, "half": 2, "bfloat16": 2, "float32": 4,
                "float": 4, "float64": 8, "double": 8}


def layer_name(index):
    """Canonical hook name of hidden_states index ``index`` (0 = ``embed``, l = ``blocks.{l-1}.out``)."""
    return "embed" if index == 0 else "blocks.%d.out" % (index - 1)


def layer_index(name):
    """Inverse of :func:`layer_name`."""
    if name == "embed":
        return 0
    m = _BLOCK_RE.match(name)
    if not m:
        raise CaptureFormatError("layer name %r is not canonical (expected 'embed' or 'blocks.<i>.out')" % name)
    return int(m.group(1)) + 1


def dtype_size(dtype):
    if isinstance(dtype, torch.dtype):
        return torch.empty((), dtype=dtype).element_size()
    key = str(dtype).replace("torch.", "")
    if key not in _DTYPE_SIZES:
        raise ValueError("unknown dtype %r" % (dtype,))
    return _DTYPE_SIZES[key]


def estimate_disk_bytes(num_samples, num_layers, tokens, dim, dtype=torch.float16, targets=None):
    """Bytes of tensor data a capture will take (safetensors headers and the manifest add a few KB).

    ``num_layers`` counts every captured hidden_states index (33 for a 32-layer LLM: embed + 32 blocks);
    ``tokens`` is the stored tokens per sample (576, or 1 when pooled). ``targets`` optionally maps a target name
    to ``(tokens, dim)`` to include target features (same dtype). Example: LLaVA-1.5-7B, one image, all layers,
    576 tokens, fp16: ``estimate_disk_bytes(1, 33, 576, 4096)`` = 155,713,536 (≈156 MB); pooled: 270,336 (≈270 KB).
    """
    size = dtype_size(dtype)
    total = int(num_samples) * int(num_layers) * int(tokens) * int(dim) * size
    if targets:
        items = targets.values() if isinstance(targets, dict) else targets
        for t_tokens, t_dim in items:
            total += int(num_samples) * int(t_tokens) * int(t_dim) * size
    return total


def format_bytes(n):
    """Human-readable decimal size (1 MB = 10**6 bytes)."""
    n = float(n)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return ("%d %s" % (n, unit)) if unit == "B" else ("%.1f %s" % (n, unit))
        n /= 1000.0
    return "%.1f PB" % n  # pragma: no cover


def _utcnow():
    return datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat().replace("+00:00", "Z")


def _label_values(name, values, n):
    if isinstance(values, torch.Tensor):
        values = values.tolist()
    values = list(values)
    if len(values) != n:
        raise CaptureFormatError("label %r has %d values for a batch of %d samples" % (name, len(values), n))
    out = []
    for v in values:
        if hasattr(v, "item") and not isinstance(v, (str, bytes)):
            v = v.item()
        if isinstance(v, bool) or not isinstance(v, (int, float, str)):
            raise CaptureFormatError("label %r: value %r is not a number or a string" % (name, v))
        out.append(v)
    return out


class CaptureWriter:
    """Writes one capture directory.

    Use :meth:`create` for a new capture, :meth:`resume` to continue one after a crash, or :meth:`open` for
    "resume if a manifest exists, else create". Then call :meth:`append_batch` once per batch. Every shard is
    written atomically (temp file + fsync + rename) and ``manifest.json`` is rewritten atomically after the
    batch's shards exist, so a crash at any point leaves a valid capture of the batches completed before it.
    """

    def __init__(self, out_dir, manifest, ingest=None):
        self.out_dir = os.path.abspath(os.fspath(out_dir))
        self._m = manifest
        self._ids = set(manifest["samples"]["ids"])
        self._dtypes = {}  # (kind, name) -> safetensors dtype of the shards written so far
        self.ingest = ingest
        self._made_dir = False  # create() made out_dir (discard_if_empty may then remove it)
        self.write_workers = WRITE_WORKERS

    # ------------------------------------------------------------------ construction
    @classmethod
    def create(cls, out_dir, *, model=None, variant="baseline", checkpoint=None, token_layout=None, layers=None,
               targets=None, provenance=None, overwrite=False, ingest=None):
        """Start a new capture in ``out_dir`` (created if missing; must be empty unless ``overwrite``).

        ``model``: dict with at least ``name`` (free-form extra keys allowed). ``token_layout``: ``tokens``,
        ``source_tokens``, ``grid``, ``pooling`` (``kind`` defaults to ``"image"``). ``layers`` / ``targets``
        optionally declare the layer set (``[{"name", "dim"}]``) and target set (``[{"name", "dim", "tokens",
        "description"}]``) up front; otherwise the first batch declares them. Anything not known yet can be set
        with :meth:`configure` before the first batch (capture_hidden_states does that). ``manifest.json`` is
        written with the first batch (a 0-sample capture is never left on disk; see :meth:`discard_if_empty`).
        A directory holding only leftovers of a writer that died before its first manifest (``layers/``,
        ``targets/``, temp files) is cleaned and reused.
        """
        out_dir = os.path.abspath(os.fspath(out_dir))
        if os.path.isdir(out_dir) and os.listdir(out_dir):
            entries = os.listdir(out_dir)
            has_manifest = MANIFEST in entries
            leftovers = all(e in ("layers", "targets") or _TMP_RE.search(e) for e in entries)
            if not overwrite and (has_manifest or not leftovers):
                hint = ("it already holds a capture: use CaptureWriter.resume / open, or overwrite=True"
                        if has_manifest else "pass overwrite=True to replace it")
                raise CaptureFormatError("capture directory %s is not empty (%s)" % (out_dir, hint))
            if not overwrite:
                log.warning("capture %s: removing leftovers of a writer that stopped before its first batch", out_dir)
            for sub in ("layers", "targets"):
                shutil.rmtree(os.path.join(out_dir, sub), ignore_errors=True)
            for name in os.listdir(out_dir):
                if name == MANIFEST or _TMP_RE.search(name):
                    os.unlink(os.path.join(out_dir, name))
        for sub in ("layers", "targets"):
            if os.path.islink(os.path.join(out_dir, sub)):
                raise CaptureFormatError("%s: %s is a symbolic link; a capture's folders must be real directories "
                                         "inside it" % (out_dir, os.path.join(out_dir, sub)))
        if variant not in VARIANTS:
            raise CaptureFormatError("variant must be one of %s, not %r" % (", ".join(VARIANTS), variant))
        made = not os.path.isdir(out_dir)
        try:
            os.makedirs(out_dir, exist_ok=True)
        except OSError as err:
            raise CaptureWriteError("could not create capture directory %s: %s" % (out_dir, err.strerror or err),
                                    path=out_dir) from err
        prov = {"tool": "viral-lens-torch %s" % __version__, "created": _utcnow()}
        if provenance:
            prov.update(provenance)
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "model": {k: v for k, v in (model or {}).items() if v is not None},
            "variant": variant,
            "token_layout": _normalize_layout(token_layout) if token_layout else None,
            "layers": [],
            "targets": [],
            "samples": {"count": 0, "ids": []},
            "labels": {},
            "provenance": prov,
        }
        if checkpoint is not None:
            manifest["checkpoint"] = _check_checkpoint(checkpoint)
        w = cls(out_dir, manifest, ingest=ingest)
        w._made_dir = made
        w._declare(layers, targets)
        return w

    @classmethod
    def resume(cls, out_dir, *, ingest=None):
        """Re-open a capture after a crash: keep exactly the samples ``manifest.json`` lists, delete every stray
        file (temp files, shards the manifest does not list) and continue appending after the last sample."""
        out_dir = os.path.abspath(os.fspath(out_dir))
        path = os.path.join(out_dir, MANIFEST)
        try:
            with open(path, "r", encoding="utf-8") as f:
                manifest = json.load(f)
        except FileNotFoundError:
            raise CaptureFormatError("cannot resume %s: no %s" % (out_dir, MANIFEST)) from None
        except ValueError as err:
            raise CaptureFormatError("cannot resume %s: %s is not valid JSON: %s" % (out_dir, path, err)) from err
        if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
            raise CaptureFormatError("%s is not a %s version %d manifest" % (path, FORMAT, VERSION))
        manifest.setdefault("labels", {})
        manifest.setdefault("targets", [])
        if not manifest.get("layers") or not manifest.get("token_layout"):
            raise CaptureFormatError("cannot resume %s: %s has no layers or no token_layout" % (out_dir, path))
        w = cls(out_dir, manifest, ingest=ingest)
        w._check_and_clean()
        return w

    @classmethod
    def open(cls, out_dir, *, resume=True, ingest=None, **create_kwargs):
        """:meth:`resume` when ``out_dir/manifest.json`` exists and ``resume`` is true, else :meth:`create`.

        On resume, ``model``/``variant``/``checkpoint`` given here are checked against the manifest's values
        (a mismatch is an error: a different run must not be appended to an existing capture)."""
        if resume and os.path.exists(os.path.join(os.fspath(out_dir), MANIFEST)):
            w = cls.resume(out_dir, ingest=ingest)
            for key in ("variant", "checkpoint"):
                want = create_kwargs.get(key)
                if want is not None and w._m.get(key) != want:
                    raise CaptureFormatError("cannot resume %s: its %s is %r, not %r"
                                             % (w.out_dir, key, w._m.get(key), want))
            if create_kwargs.get("token_layout"):
                w.configure(token_layout=create_kwargs["token_layout"])
            return w
        return cls.create(out_dir, ingest=ingest, **create_kwargs)

    # ------------------------------------------------------------------ state
    @property
    def manifest(self):
        """A deep copy of the current manifest."""
        return copy.deepcopy(self._m)

    @property
    def ids(self):
        return list(self._m["samples"]["ids"])

    @property
    def count(self):
        return self._m["samples"]["count"]

    @property
    def token_layout(self):
        return copy.deepcopy(self._m.get("token_layout"))

    def __contains__(self, sample_id):
        return sample_id in self._ids

    def __len__(self):
        return self.count

    def configure(self, token_layout=None, model=None, layers=None, targets=None):
        """Set the token layout, model info and (optionally) declare layers / targets.

        The token layout and the declarations can only change while the capture has no sample; a conflicting
        layout on a non-empty capture raises. Model keys are merged (existing keys kept)."""
        changed = False
        if token_layout is not None:
            new = dict(self._m.get("token_layout") or {})
            new.update(token_layout)
            new = _normalize_layout(new)
            old = self._m.get("token_layout")
            if old != new:
                if self.count > 0:
                    raise CaptureFormatError("capture %s has token_layout %s; cannot change it to %s"
                                             % (self.out_dir, json.dumps(old), json.dumps(new)))
                self._m["token_layout"] = new
                changed = True
        if model:
            cur = self._m.setdefault("model", {})
            for k, v in model.items():
                if v is not None and k not in cur:
                    cur[k] = v
                    changed = True
        if layers is not None or targets is not None:
            changed = self._declare(layers, targets) or changed
        if changed:
            self._write_manifest_if_complete()

    def _declare(self, layers, targets):
        """Declare layer / target sets before the first batch (no-op when they are already the same)."""
        changed = False
        if layers:
            entries = []
            for spec in layers:
                name = spec["name"]
                idx = layer_index(name)
                if "index" in spec and spec["index"] != idx:
                    raise CaptureFormatError("layer %s has hidden_states index %d, not %d" % (name, idx, spec["index"]))
                entries.append({"name": name, "index": idx, "dim": int(spec["dim"]), "shards": []})
            entries.sort(key=lambda e: e["index"])
            if [(e["name"], e["dim"]) for e in entries] != [(e["name"], e["dim"]) for e in self._m["layers"]]:
                if self.count > 0:
                    raise CaptureFormatError("capture %s already has layers %s"
                                             % (self.out_dir, [e["name"] for e in self._m["layers"]]))
                self._m["layers"] = entries
                changed = True
        if targets:
            entries = []
            for spec in targets:
                if not _NAME_RE.match(spec["name"]):
                    raise CaptureFormatError("target name %r must match %s" % (spec["name"], _NAME_RE.pattern))
                e = {"name": spec["name"], "dim": int(spec["dim"]), "tokens": int(spec["tokens"]), "shards": []}
                if spec.get("description"):
                    e = {"name": e["name"], "description": str(spec["description"]), "dim": e["dim"],
                         "tokens": e["tokens"], "shards": []}
                entries.append(e)
            key = lambda e: (e["name"], e["dim"], e["tokens"])  # noqa: E731
            if [key(e) for e in entries] != [key(e) for e in self._m["targets"]]:
                if self.count > 0:
                    raise CaptureFormatError("capture %s already has targets %s"
                                             % (self.out_dir, [e["name"] for e in self._m["targets"]]))
                self._m["targets"] = entries
                changed = True
        return changed

    def _complete(self, m=None):
        m = self._m if m is None else m
        return bool(m.get("token_layout")) and bool(m["layers"]) and bool(m.get("model", {}).get("name"))

    def _write_manifest_if_complete(self):
        # No manifest before the first batch: a 0-sample capture left by a failed start would look valid.
        if self.count > 0 and self._complete():
            self._write_manifest()

    def discard_if_empty(self):
        """Remove what this writer left when it holds no sample (a start that failed before its first batch
        committed): shards of that batch, temp files, and ``out_dir`` itself if :meth:`create` made it.
        Returns True when the directory is gone. A no-op on a capture with samples."""
        if self.count > 0 or os.path.exists(os.path.join(self.out_dir, MANIFEST)):
            return False
        for sub in ("layers", "targets"):
            p = os.path.join(self.out_dir, sub)
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p, ignore_errors=True)
        try:
            names = os.listdir(self.out_dir)
        except OSError:
            return False
        for name in names:
            if _TMP_RE.search(name):
                try:
                    os.unlink(os.path.join(self.out_dir, name))
                except OSError:
                    pass
        if self._made_dir:
            try:
                os.rmdir(self.out_dir)
                return True
            except OSError:
                return False
        return False

    # ------------------------------------------------------------------ writing
    def append_batch(self, ids, labels=None, layers=None, targets=None, target_descriptions=None,
                     target_compute=None):
        """Append one batch of samples.

        ``ids``: list of unique sample ids (strings) not yet in the capture. ``labels``: dict name -> list of
        numbers/strings (one per sample; every batch must carry the same label names). ``layers``: dict canonical
        layer name (``embed``, ``blocks.{i}.out``) -> tensor ``[b, tokens, dim]``; ``targets``: dict name ->
        tensor ``[b, tokens, dim]``. Declared layers / targets must all be present; the first batch declares the
        rest and fixes dims and dtypes; later batches must match exactly. ``target_compute``: optional dict
        name -> ``{"source", "dtype", "autocast"}`` (how the target was computed), recorded with the first batch.
        """
        ids = [str(i) for i in ids]
        n = len(ids)
        if n == 0:
            return
        layers = dict(layers or {})
        targets = dict(targets or {})
        labels = dict(labels or {})
        if len(set(ids)) != n:
            dup = sorted({i for i in ids if ids.count(i) > 1})
            raise DuplicateSampleError("batch repeats sample ids %s" % dup[:10])
        dup = [i for i in ids if i in self._ids]
        if dup:
            raise DuplicateSampleError("sample ids already in capture %s: %s" % (self.out_dir, dup[:10]))
        if not layers:
            raise CaptureFormatError("append_batch needs at least one layer tensor")
        layout = self._m.get("token_layout")
        if not layout:
            raise CaptureFormatError("token_layout is not set: pass token_layout= to CaptureWriter.create or call "
                                     "configure(token_layout=...) before the first batch")
        tokens = layout["tokens"]

        empty = self.count == 0
        # --- validate layers (declared up front, or declared by the first batch)
        for name, t in layers.items():
            layer_index(name)
            self._check_tensor("layer %s" % name, t, n, tokens)
        new_layers = []
        if self._m["layers"]:
            have = {e["name"] for e in self._m["layers"]}
            if have != set(layers):
                raise CaptureFormatError("batch has layers %s but the capture has %s"
                                         % (sorted(layers, key=layer_index), sorted(have, key=layer_index)))
            if not empty:
                for e in self._m["layers"]:
                    self._check_same(e, layers[e["name"]], "layer " + e["name"],
                                     self._dtypes.get(("layer", e["name"])))
        else:
            new_layers = sorted(layers, key=layer_index)
        # --- validate targets (declared ones must be present; new ones only in the first batch)
        for name, t in targets.items():
            if not _NAME_RE.match(name):
                raise CaptureFormatError("target name %r must match %s" % (name, _NAME_RE.pattern))
            self._check_tensor("target %s" % name, t, n, None)
        have = {e["name"] for e in self._m["targets"]}
        missing = have - set(targets)
        new_targets = [k for k in targets if k not in have]
        if missing or (new_targets and not empty):
            raise CaptureFormatError("batch has targets %s but the capture has %s" % (sorted(targets), sorted(have)))
        for e in self._m["targets"]:
            self._check_same(e, targets[e["name"]], "target " + e["name"], self._dtypes.get(("target", e["name"])))
        # --- validate labels
        clean_labels = {k: _label_values(k, v, n) for k, v in labels.items()}
        if self.count > 0 and set(clean_labels) != set(self._m["labels"]):
            raise CaptureFormatError("batch has labels %s but the capture has %s"
                                     % (sorted(clean_labels), sorted(self._m["labels"])))

        # --- write shards (each atomically); the manifest still lists only the previous batches
        new_m = copy.deepcopy(self._m)
        new_dtypes = dict(self._dtypes)
        start = self.count
        meta = {"format": FORMAT, "start": start, "count": n}
        for e in new_m["layers"]:
            if empty and e["dim"] != int(layers[e["name"]].shape[2]):  # a declared dim was a guess: the data wins
                log.warning("capture %s: layer %s has dim %d, not the declared %d", self.out_dir, e["name"],
                            layers[e["name"]].shape[2], e["dim"])
                e["dim"] = int(layers[e["name"]].shape[2])
        for name in new_layers:
            t = layers[name]
            new_m["layers"].append({"name": name, "index": layer_index(name), "dim": int(t.shape[2]), "shards": []})
        for name in new_targets:
            t = targets[name]
            new_m["targets"].append({"name": name, "description": (target_descriptions or {}).get(name, name),
                                     "dim": int(t.shape[2]), "tokens": int(t.shape[1]), "shards": []})
        if empty:
            for i, e in enumerate(new_m["targets"]):
                desc = (target_descriptions or {}).get(e["name"])
                if desc and "description" not in e:
                    new_m["targets"][i] = {"name": e["name"], "description": desc, "dim": e["dim"],
                                           "tokens": e["tokens"], "shards": e["shards"]}
            for e in new_m["targets"]:
                info = (target_compute or {}).get(e["name"])
                if info and "compute" not in e:
                    e["compute"] = {k: info[k] for k in ("source", "dtype", "autocast") if k in info}
            for name, t in layers.items():
                new_dtypes[("layer", name)] = _st_dtype(t)
            for name, t in targets.items():
                new_dtypes[("target", name)] = _st_dtype(t)
        if not new_m.get("model", {}).get("name"):
            log.warning("capture %s: no model name given; writing model.name = 'unknown'", self.out_dir)
            new_m.setdefault("model", {})["name"] = "unknown"
        listed = {sh["file"] for e in new_m["layers"] + new_m["targets"] for sh in e["shards"]}

        def shard_name(folder, k):
            # another tool may have named its shards differently: never reuse a listed name
            while "%s/%05d.safetensors" % (folder, k) in listed:
                k += 1
            return "%s/%05d.safetensors" % (folder, k)

        jobs = []
        for e in new_m["layers"]:
            rel = shard_name("layers/%03d" % e["index"], len(e["shards"]))
            jobs.append((rel, LAYER_TENSOR, layers[e["name"]], dict(meta, layer=e["name"])))
            e["shards"].append({"file": rel, "tensor": LAYER_TENSOR, "start": start, "count": n})
        for e in new_m["targets"]:
            rel = shard_name("targets/%s" % e["name"], len(e["shards"]))
            jobs.append((rel, TARGET_TENSOR, targets[e["name"]], dict(meta, target=e["name"])))
            e["shards"].append({"file": rel, "tensor": TARGET_TENSOR, "start": start, "count": n})
        self._write_shards(jobs)
        new_m["samples"]["ids"].extend(ids)
        new_m["samples"]["count"] = start + n
        for k, v in clean_labels.items():
            new_m["labels"].setdefault(k, []).extend(v)
        # --- commit: the manifest rename is the point where the batch becomes part of the capture
        self._write_manifest(new_m)
        self._m = new_m
        self._dtypes = new_dtypes
        self._ids.update(ids)
        if self.ingest is not None:
            self.ingest.post(self.manifest)

    def _check_tensor(self, what, t, n, tokens):
        if not isinstance(t, torch.Tensor):
            raise CaptureFormatError("%s is a %s, not a tensor" % (what, type(t).__name__))
        if t.dim() != 3:
            raise CaptureFormatError("%s has shape %s; expected [samples, tokens, dim]" % (what, list(t.shape)))
        if t.shape[0] != n:
            raise CaptureFormatError("%s has %d samples but the batch has %d ids" % (what, t.shape[0], n))
        if tokens is not None and t.shape[1] != tokens:
            raise CaptureFormatError("%s has %d tokens per sample; token_layout.tokens is %d"
                                     % (what, t.shape[1], tokens))
        if t.dtype not in CAPTURE_DTYPES:
            raise CaptureFormatError("%s has dtype %s; capture shards must be float16/bfloat16/float32/float64"
                                     % (what, t.dtype))

    @staticmethod
    def _check_same(entry, t, what, dtype):
        if int(t.shape[2]) != entry["dim"]:
            raise CaptureFormatError("%s has dim %d; earlier batches had %d" % (what, t.shape[2], entry["dim"]))
        if "tokens" in entry and int(t.shape[1]) != entry["tokens"]:
            raise CaptureFormatError("%s has %d tokens; earlier batches had %d" % (what, t.shape[1], entry["tokens"]))
        if dtype and _st_dtype(t) != dtype:
            raise CaptureFormatError("%s has dtype %s; earlier batches had %s" % (what, _st_dtype(t), dtype))

    def _write_shards(self, jobs):
        """Write the batch's shards, each atomically, ``write_workers`` at a time: one file's write + fsync
        rarely fills a fast disk, and both release the GIL. All are attempted; the first error is raised."""
        workers = min(self.write_workers, len(jobs))
        if workers <= 1:
            for job in jobs:
                self._write_shard(*job)
            return
        with concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="viral-lens-shard") as ex:
            futures = [ex.submit(self._write_shard, *job) for job in jobs]
        for f in futures:
            f.result()

    def _write_shard(self, rel, tensor_name, t, meta):
        path = os.path.join(self.out_dir, *rel.split("/"))
        d = os.path.dirname(path)
        try:
            os.makedirs(d, exist_ok=True)
        except OSError as err:
            raise CaptureWriteError("could not create directory %s for %s: %s" % (d, path, err.strerror or err),
                                    path=path) from err
        save_file({tensor_name: t}, path, metadata=meta)

    def _write_manifest(self, manifest=None):
        m = self._m if manifest is None else manifest
        ordered = {}
        for key in ("format", "version", "model", "variant", "checkpoint", "token_layout", "layers", "targets",
                    "samples", "labels", "provenance"):
            if key in m and not (key == "labels" and not m[key]):
                ordered[key] = m[key]
        for key in m:  # keys written by other tools are kept as they are
            if key not in ordered and not (key == "labels" and not m[key]):
                ordered[key] = m[key]
        data = (json.dumps(ordered, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
        atomic_write(os.path.join(self.out_dir, MANIFEST), [data])

    # ------------------------------------------------------------------ resume
    def _refuse_symlinks(self):
        """A symlinked ``layers/`` / ``targets/`` (or a folder below them) would make resume delete, and the
        writer write, files outside the capture."""
        for sub in ("layers", "targets"):
            root = os.path.join(self.out_dir, sub)
            if os.path.islink(root):
                raise CaptureFormatError("%s: %s is a symbolic link (to %s); a capture's folders must be real "
                                         "directories inside it" % (self.out_dir, root, os.path.realpath(root)))
            for dirpath, dirnames, _ in os.walk(root):
                for d in dirnames:
                    p = os.path.join(dirpath, d)
                    if os.path.islink(p):
                        raise CaptureFormatError("%s: %s is a symbolic link (to %s); a capture's folders must be "
                                                 "real directories inside it"
                                                 % (self.out_dir, p, os.path.realpath(p)))

    def _check_and_clean(self):
        m = self._m
        self._refuse_symlinks()
        real_root = os.path.realpath(self.out_dir)
        count = m["samples"]["count"]
        if len(m["samples"]["ids"]) != count or len(self._ids) != count:
            raise CaptureFormatError("%s: samples.ids has %d entries (%d unique) but samples.count is %d"
                                     % (self.out_dir, len(m["samples"]["ids"]), len(self._ids), count))
        keep = {MANIFEST}
        for kind, entries in (("layer", m["layers"]), ("target", m["targets"])):
            for e in entries:
                pos = 0
                for s in e["shards"]:
                    rel = s["file"]
                    if rel.startswith("/") or ".." in rel.split("/"):
                        raise CaptureFormatError("%s: shard path %r is not inside the capture" % (self.out_dir, rel))
                    if s["start"] != pos:
                        raise CaptureFormatError("%s: %s %s shards are not contiguous at sample %d"
                                                 % (self.out_dir, kind, e["name"], pos))
                    pos += s["count"]
                    if not os.path.isfile(os.path.join(self.out_dir, *rel.split("/"))):
                        raise CaptureFormatError("%s: manifest lists %s but the file is missing"
                                                 % (self.out_dir, rel))
                    real = os.path.realpath(os.path.join(self.out_dir, *rel.split("/")))
                    if os.path.commonpath([real, real_root]) != real_root:
                        raise CaptureFormatError("%s: shard %s resolves to %s, outside the capture"
                                                 % (self.out_dir, rel, real))
                    keep.add(os.path.normpath(rel))
                    if (kind, e["name"]) not in self._dtypes:
                        header, _, _ = read_header(os.path.join(self.out_dir, *rel.split("/")))
                        info = header.get(s["tensor"])
                        if info is None:
                            raise CaptureFormatError("%s: shard %s has no tensor %r" % (self.out_dir, rel, s["tensor"]))
                        self._dtypes[(kind, e["name"])] = info["dtype"]
                if pos != count:
                    raise CaptureFormatError("%s: %s %s shards cover %d samples, manifest says %d"
                                             % (self.out_dir, kind, e["name"], pos, count))
        removed = []
        for top in os.listdir(self.out_dir):
            p = os.path.join(self.out_dir, top)
            if os.path.isfile(p) and _TMP_RE.search(top):
                os.unlink(p)
                removed.append(top)
        for sub in ("layers", "targets"):
            root = os.path.join(self.out_dir, sub)
            if not os.path.isdir(root):
                continue
            for dirpath, dirnames, filenames in os.walk(root, topdown=False):
                for fn in filenames:
                    p = os.path.join(dirpath, fn)
                    rel = os.path.normpath(os.path.relpath(p, self.out_dir))
                    if rel not in keep:
                        os.unlink(p)
                        removed.append(rel)
                if dirpath != root and not os.listdir(dirpath):
                    os.rmdir(dirpath)
        if removed:
            log.warning("resume %s: deleted %d stray file(s) not listed in the manifest: %s",
                        self.out_dir, len(removed), ", ".join(sorted(removed)[:10]))
        log.info("resume %s: keeping %d sample(s)", self.out_dir, count)


VARIANTS = ("baseline", "residual", "viral", "other")
_LAYOUT_KEYS = ("kind", "tokens", "source_tokens", "grid", "pooling")


def _check_checkpoint(checkpoint):
    cp = dict(checkpoint)
    extra = set(cp) - {"step", "path"}
    if extra:
        raise CaptureFormatError("checkpoint may only have 'step' and 'path' (got %s)" % sorted(extra))
    if "step" in cp:
        step = cp["step"]
        if isinstance(step, bool) or not isinstance(step, int) or step < 0:
            raise CaptureFormatError("checkpoint.step must be an integer >= 0, not %r" % (step,))
    if "path" in cp and not isinstance(cp["path"], str):
        raise CaptureFormatError("checkpoint.path must be a string")
    return cp


def _normalize_layout(layout):
    extra = set(layout) - set(_LAYOUT_KEYS)
    if extra:
        raise CaptureFormatError("token_layout has unknown keys %s (allowed: %s)" % (sorted(extra), _LAYOUT_KEYS))
    out = {"kind": "image"}
    out.update(layout)
    for key in ("tokens", "source_tokens"):
        v = out.get(key)
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise CaptureFormatError("token_layout.%s must be a positive integer, not %r" % (key, v))
    for key in ("tokens", "source_tokens", "pooling"):
        if key not in out:
            raise CaptureFormatError("token_layout needs %r (got %s)" % (key, json.dumps(layout)))
    out["grid"] = [int(x) for x in out["grid"]] if out.get("grid") is not None else None
    if out["pooling"] not in ("none", "mean"):
        raise CaptureFormatError("token_layout.pooling must be 'none' or 'mean', not %r" % (out["pooling"],))
    want = 1 if out["pooling"] == "mean" else out["source_tokens"]
    if out["tokens"] != want:
        raise CaptureFormatError("token_layout.tokens is %d but pooling %r stores %d token(s) per sample"
                                 % (out["tokens"], out["pooling"], want))
    if out["grid"] is not None and out["grid"][0] * out["grid"][1] != out["source_tokens"]:
        raise CaptureFormatError("token_layout.grid %s has %d cells but source_tokens is %d"
                                 % (out["grid"], out["grid"][0] * out["grid"][1], out["source_tokens"]))
    return {k: out[k] for k in _LAYOUT_KEYS}


def _st_dtype(t):
    return {torch.float16: "F16", torch.bfloat16: "BF16", torch.float32: "F32", torch.float64: "F64"}[t.dtype]


def read_capture(out_dir):
    """Load a whole capture into memory (for tests and small captures): returns
    ``(manifest, {layer name: tensor [count, tokens, dim]}, {target name: tensor})``."""
    from .safetensors_io import load_file

    with open(os.path.join(out_dir, MANIFEST), "r", encoding="utf-8") as f:
        m = json.load(f)

    def cat(entry):
        parts = [load_file(os.path.join(out_dir, *s["file"].split("/")))[s["tensor"]] for s in entry["shards"]]
        return torch.cat(parts, 0) if parts else None

    return m, {e["name"]: cat(e) for e in m["layers"]}, {e["name"]: cat(e) for e in m["targets"]}
