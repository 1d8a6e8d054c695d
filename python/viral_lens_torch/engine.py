"""viral-lens's torch compute engine: the O(n²·d) work (Gram tiles, exact row top-k, cross products) on a torch
device, as a long-lived worker for the Node engine `--engine torch` (src/engine/torch.ts), and as functions for
Python callers (bench/gpu/cknna_torch.py).

    python -m viral_lens_torch.engine [--device cuda:0|mps|cpu] [--precision float32|tf32|bf16]

speaks the framed protocol of docs/torch-engine.md on stdin/stdout. Works with torch >= 1.13 (public APIs only).
Semantics are those of the other engines (src/engine/ref.ts, onnx.ts): neighbours of row i under K = X·Xᵀ with self
excluded, ordered by (value desc, column asc), plus the (k+1)-th value so that ties at the k-th neighbour can be
detected; cross products accumulate over row blocks in float64.
"""
import ctypes
import json
import math
import mmap
import os
import struct
import sys
import time

EPS = {'float32': 2.0 ** -24, 'tf32': 2.0 ** -11, 'bf16': 2.0 ** -8}
PRECISIONS = tuple(EPS)
# Rows per block of the cross product Aᵀ·B; partial sums across blocks are added in float64.
CROSS_BLOCK_ROWS = 65536
# Elements per chunk of the streamed quantile: bounded temporary memory, and no single op on more than 2³¹ elements.
# On a CPU 2²⁰: chunks the allocator reuses (2²⁶ was 10× slower there, every chunk fresh pages).
QUANTILE_CHUNK = 1 << 26
CPU_QUANTILE_CHUNK = 1 << 20
# CPU tile budget (bytes of one Gram tile): keeps the working set moderate on shared machines.
CPU_TILE_BYTES = 256 << 20
# Bytes per Gram element a tile needs at its peak: the float32 tile, the comparison mask of the tie check, top-k scratch.
TILE_BYTES_PER_ELEMENT = 10
# Largest tile in elements: some torch versions' top-k kernels index with 32-bit integers.
MAX_TILE_ELEMENTS = (1 << 31) - 1
# Elements per row block of the exact float64 row/column sums (l2, centring, row dots, NaN/Inf checks). On a CPU
# 2²⁰ doubles = 8 MiB, small enough for the allocator to reuse its blocks (2²⁴ made every block fresh pages: 20×
# slower) and large enough that thread synchronisation does not dominate; on a GPU 2²⁴ (128 MiB), so that 10⁶ rows
# are a few dozen kernel launches, not thousands.
ROW_BLOCK_ELEMENTS = 1 << 20
GPU_ROW_BLOCK_ELEMENTS = 1 << 24


class EngineError(Exception):
    """An error the worker reports to its caller as one line (`kind` = 'input' for bad data, else 'engine')."""

    def __init__(self, message, kind='engine'):
        super().__init__(message)
        self.kind = kind


def _torch():
    import torch  # imported late so that `--help` and the no-torch message work without it

    return torch


def is_oom(err):
    torch = _torch()
    oom = getattr(torch.cuda, 'OutOfMemoryError', None)  # torch >= 2.0
    if oom is not None and isinstance(err, oom):
        return True
    return isinstance(err, RuntimeError) and 'out of memory' in str(err).lower()


def default_device():
    torch = _torch()
    if torch.cuda.is_available():
        return 'cuda:0'
    mps = getattr(torch.backends, 'mps', None)
    if mps is not None and mps.is_available():
        return 'mps'
    return 'cpu'


def set_precision(precision):
    """TF32 only where asked for: float32 means 23 mantissa bits, which is what makes values equal `ref` ≤ 2e-5."""
    torch = _torch()
    if precision not in EPS:
        raise EngineError(f"precision '{precision}' is not one of {', '.join(PRECISIONS)}", 'input')
    torch.backends.cuda.matmul.allow_tf32 = precision == 'tf32'
    torch.backends.cudnn.allow_tf32 = precision == 'tf32'


def device_info(device):
    """Name and memory of a device, for `doctor` and every result's `device` field."""
    torch = _torch()
    dev = torch.device(device)
    info = {'device': str(dev), 'free_bytes': None, 'total_bytes': None}
    if dev.type == 'cuda':
        idx = dev.index if dev.index is not None else torch.cuda.current_device()
        info['device_name'] = torch.cuda.get_device_name(idx)
        free, total = torch.cuda.mem_get_info(idx)
        info['free_bytes'], info['total_bytes'] = int(free), int(total)
        info['cuda'] = torch.version.cuda
    elif dev.type == 'mps':
        info['device_name'] = 'Apple MPS'
    else:
        info['device_name'] = f'CPU ({torch.get_num_threads()} threads)'
        try:
            pages = os.sysconf('SC_AVPHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')
            info['free_bytes'] = int(pages)
        except (ValueError, OSError, AttributeError):
            pass
    return info


def _matmul(a, b_t, precision):
    """a · b_tᵀ in the engine's arithmetic (bf16 inputs with float32 accumulation in `bf16` mode)."""
    torch = _torch()
    if precision == 'bf16':
        return (a.to(torch.bfloat16) @ b_t.to(torch.bfloat16).T).float()
    return a @ b_t.T


def _compute_copy(x, precision):
    """The matrix in the products' dtype, converted once per kNN rather than once per tile."""
    torch = _torch()
    return x.to(torch.bfloat16) if precision == 'bf16' else x


def tile_rows_for(n, device, requested=None):
    """Rows per Gram tile: as many as half the device's free memory allows (tiles are t × n float32)."""
    torch = _torch()
    if requested:
        return max(1, min(n, int(requested)))
    dev = torch.device(device)
    if dev.type == 'cuda':
        free, _ = torch.cuda.mem_get_info(dev)
        budget = free // 2
    elif dev.type == 'mps':
        budget = 1 << 30
    else:
        budget = CPU_TILE_BYTES
    t = budget // (TILE_BYTES_PER_ELEMENT * max(n, 1))
    t = min(t, MAX_TILE_ELEMENTS // max(n, 1))
    return max(1, min(n, int(t)))


def _knn_tile(x, s, e, k, precision):
    """Top-(k+1) of rows s…e of X·Xᵀ, self excluded, in (value desc, column asc) order."""
    torch = _torch()
    n = x.shape[0]
    g = _matmul(x[s:e], x, precision)
    if g.dtype != torch.float32:
        g = g.float()
    # Self values feed the tie tolerance (as the ONNX engine's top value including self), then leave the race.
    diag = g.diagonal(s).clone()
    g.diagonal(s).fill_(float('-inf'))
    want = min(k + 1, n)
    v, ix = torch.topk(g, want, dim=1, largest=True, sorted=True)
    # topk orders equal values arbitrarily; the other engines put the smaller column first. Where values equal to
    # the last kept one continue beyond the list, which columns are kept is ambiguous too: those rows are redone with
    # a stable full sort (rare: exactly tied float32 products).
    straddle = (g >= v[:, want - 1:want]).sum(dim=1) > want
    rows = torch.nonzero(straddle).flatten()
    if rows.numel() > 0:
        sv, si = torch.sort(g[rows], dim=1, descending=True, stable=True)
        v[rows] = sv[:, :want]
        ix[rows] = si[:, :want]
    order = torch.argsort(ix, dim=1)
    v = torch.gather(v, 1, order)
    ix = torch.gather(ix, 1, order)
    _, order = torch.sort(v, dim=1, descending=True, stable=True)
    v = torch.gather(v, 1, order)
    ix = torch.gather(ix, 1, order)
    top = torch.maximum(v[:, 0], diag).abs().max()
    return v, ix, top


def knn_lists(x, k, precision='float32', tile_rows=None, progress=None):
    """Exact row top-k of X·Xᵀ, self excluded, tile by tile (memory O(t·n + n·k)).

    Returns (indices int64 [n,k], values float32 [n,k], next float32 [n], tie_tolerance float). `next` is the
    (k+1)-th largest value (−inf when k = n−1). A CUDA out-of-memory halves the tile and retries the same rows.
    """
    torch = _torch()
    n, d = x.shape
    if not (1 <= k < n):
        raise EngineError(f'k = {k} must be in [1, n − 1] for n = {n}', 'input')
    t = tile_rows_for(n, x.device, tile_rows)
    idx = torch.empty(n, k, dtype=torch.int64, device=x.device)
    val = torch.empty(n, k, dtype=torch.float32, device=x.device)
    nxt = torch.empty(n, dtype=torch.float32, device=x.device)
    top = torch.zeros((), dtype=torch.float32, device=x.device)
    x = _compute_copy(x, precision)
    s = 0
    while s < n:
        e = min(n, s + t)
        oom = False
        try:
            v, ix, tile_top = _knn_tile(x, s, e, k, precision)
        except Exception as err:  # noqa: BLE001 (only OOM is retried; everything else propagates)
            if not is_oom(err) or t == 1:
                raise
            oom = True
        if oom:
            # Outside the except block, so the failed tile's tensors (held by the traceback) are already released.
            if x.device.type == 'cuda':
                torch.cuda.empty_cache()
            t = max(1, t // 2)
            continue
        idx[s:e] = ix[:, :k]
        val[s:e] = v[:, :k]
        nxt[s:e] = v[:, k]
        top = torch.maximum(top, tile_top)
        s = e
        if progress is not None:
            progress(e, n)
    tol = 4 * EPS[precision] * math.sqrt(d) * float(top)
    return idx, val, nxt, tol


def gram_tile(a, row_start, row_end, b, precision='float32'):
    """A[row_start:row_end] · Bᵀ, float32."""
    return _matmul(a[row_start:row_end], b, precision).float()


def cross_product(a, b, precision='float32', block_rows=CROSS_BLOCK_ROWS):
    """Aᵀ·B, float32 (or the fast mode's) products per row block, summed in float64."""
    torch = _torch()
    out = torch.zeros(a.shape[1], b.shape[1], dtype=torch.float64, device=a.device)
    for s in range(0, a.shape[0], block_rows):
        e = min(a.shape[0], s + block_rows)
        # Transposed views, no copies: BLAS takes them as they are (a contiguous copy first was 2× slower on a CPU).
        out += _matmul(a[s:e].T, b[s:e].T, precision).double()
    return out


def abs_quantile(x, q, chunk=None):
    """The element of rank floor(q·N) (0-based, ascending) of |x| over all N elements, exactly.

    The same definition as src/core/preprocess.ts. A radix selection on the bit patterns of |x| (non-negative
    IEEE floats order like their bit patterns as integers): one histogram pass per 16 bits (2 passes for float32,
    4 for float64), each streamed in chunks, so any N works (torch.kthvalue refuses more than 2³¹ elements) and the
    cost is a few reads of the data.
    """
    torch = _torch()
    if x.dtype == torch.float32:
        int_dtype, bits = torch.int32, 32
    elif x.dtype == torch.float64:
        int_dtype, bits = torch.int64, 64
    else:
        raise EngineError(f'quantile: unsupported dtype {x.dtype}', 'input')
    chunk = chunk or (CPU_QUANTILE_CHUNK if x.device.type == 'cpu' else QUANTILE_CHUNK)
    flat = x.reshape(-1)
    total = flat.numel()
    if total == 0:
        raise EngineError('quantile of an empty matrix', 'input')
    rank = min(total - 1, int(math.floor(q * total)))
    prefix = 0
    for shift in range(bits - 16, -1, -16):
        hist = torch.zeros(65536, dtype=torch.int64, device=x.device)
        for s in range(0, total, chunk):
            b = flat[s:s + chunk].abs().view(int_dtype)
            if shift + 16 < bits:
                b = b[(b >> (shift + 16)) == prefix]
            hist += torch.bincount(((b >> shift) & 0xFFFF).long(), minlength=65536)
        cum = torch.cumsum(hist, 0)
        digit = int(torch.searchsorted(cum, torch.tensor([rank], dtype=torch.int64, device=x.device), right=True)[0])
        if digit > 0:
            rank -= int(cum[digit - 1])
        prefix = (prefix << 16) | digit
    return float(torch.tensor([prefix], dtype=int_dtype).view(x.dtype)[0])


def prh(x, q=0.95, chunk=None):
    """prh preprocessing (src/core/preprocess.ts) of a copy of x: clamp to ±(exact |x| quantile q), then unit-norm
    rows (rows of norm 0 stay 0)."""
    return preprocess_(x.clone(), 'prh', q, chunk)


def _row_blocks(x):
    """Row ranges of x of a bounded number of elements: the float64 temporaries of the exact ops below stay small."""
    n, cols = x.shape[0], x.shape[1]
    budget = ROW_BLOCK_ELEMENTS if x.device.type == 'cpu' else GPU_ROW_BLOCK_ELEMENTS
    step = max(1, budget // max(1, cols))
    return ((s, min(n, s + step)) for s in range(0, n, step))


def l2_rows_(x):
    """In place, src/core/preprocess.ts's arithmetic: s = Σ x² in float64, x·(1/√s) rounded to x's dtype; rows
    with s = 0 stay 0."""
    torch = _torch()
    for s, e in _row_blocks(x):
        blk = x[s:e].double()
        ss = (blk * blk).sum(dim=1, keepdim=True)
        inv = torch.where(ss == 0, torch.ones_like(ss), 1.0 / ss.sqrt())
        x[s:e] = (blk * inv).to(x.dtype)
    return x


def preprocess_(x, name, q=0.95, chunk=None):
    """`none`, `l2` or `prh` (src/core/preprocess.ts), in place on a matrix the caller owns."""
    if name == 'none':
        return x
    if name not in ('l2', 'prh'):
        raise EngineError(f"unknown preprocessing '{name}'", 'input')
    if name == 'prh' and q < 1:
        qv = abs_quantile(x, q, chunk)
        x.clamp_(-qv, qv)
    return l2_rows_(x)


def row_dots(a, b):
    """Σ_c a_ic·b_ic per row, float64 (the sums Node forms over its own arrays)."""
    torch = _torch()
    out = torch.empty(a.shape[0], dtype=torch.float64, device=a.device)
    for s, e in _row_blocks(a):
        out[s:e] = (a[s:e].double() * b[s:e].double()).sum(dim=1)
    return out


def column_squared_norms(x):
    torch = _torch()
    out = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    for s, e in _row_blocks(x):
        blk = x[s:e].double()
        out += (blk * blk).sum(dim=0)
    return out


def centred(x, dtype=None):
    """Column-centred copy: means in float64, x − mean in float64, stored as `dtype` (Features.centred)."""
    torch = _torch()
    total = torch.zeros(x.shape[1], dtype=torch.float64, device=x.device)
    for s, e in _row_blocks(x):
        total += x[s:e].double().sum(dim=0)
    mean = total / x.shape[0]
    out = torch.empty(x.shape, dtype=dtype or torch.float32, device=x.device)
    for s, e in _row_blocks(x):
        out[s:e] = (x[s:e].double() - mean).to(out.dtype)
    return out


def _js_number(v):
    """How Node prints a number in the same message: NaN, Infinity, -Infinity."""
    if v != v:
        return 'NaN'
    if math.isinf(v):
        return 'Infinity' if v > 0 else '-Infinity'
    return repr(v)


def _segment_error(x, seg, tokens):
    """The in-heap readers' message for the first NaN/Inf of a segment (row-major order), or None."""
    torch = _torch()
    for s, e in _row_blocks(x):
        bad = ~torch.isfinite(x[s:e])
        if bool(bad.any()):
            break
    else:
        return None
    r, c = (int(v) for v in torch.nonzero(bad)[0])
    v = _js_number(float(x[s + r, c]))
    r += s
    nf = seg.get('non_finite') or {}
    if nf.get('kind') == 'shard':
        sample, token = divmod(r, tokens)
        return (f"{nf['head']}: non-finite value {v} at sample {int(nf['shard_start']) + sample} (shard row {sample}), token {token}, "
                f"dim {c} of {nf['what']}; NaN/Inf values are not allowed")
    if nf.get('kind') == 'sample':
        sample, token = divmod(r, tokens)
        return f"{nf['label']}: non-finite value {v} at sample {sample}{f', token {token}' if nf.get('tokens') else ''}, dim {c}; NaN/Inf values are not allowed"
    return f"{nf.get('label') or seg['path']}: row {r}, column {c} is {v} (NaN/Inf values are not allowed)"


def load_rows(source, device):
    """The rows a file-backed matrix describes (docs/torch-engine.md, `load` with `source`): each segment mapped from
    its file, byte-swapped if big-endian, checked for NaN/Inf, reduced by the token mode and the row pick, then
    concatenated along samples and preprocessed, on `device`. Node never holds these values."""
    torch = _torch()
    tokens = int(source.get('tokens', 1))
    cols = int(source['cols'])
    mode = source.get('mode', 'per-token')
    pick = source.get('pick')
    keep64 = bool(source.get('float64'))
    per_row = 1 if mode == 'per-token' else tokens  # flattened rows per output row before the pick
    segments = source['segments']
    total = len(pick) if pick is not None else sum(int(g['samples']) for g in segments) * tokens // per_row
    # Filled segment by segment: the peak is the result plus one shard, not twice the result (as torch.cat would be).
    x = None
    at = 0
    first_row = 0
    pick_t = torch.tensor(pick, dtype=torch.int64) if pick is not None else None
    for seg in segments:
        samples = int(seg['samples'])
        n_flat = samples * tokens
        m = map_matrix(seg['path'], seg['dtype'], n_flat, cols, int(seg.get('offset', 0)), seg.get('order', 'C'),
                       little_endian=seg.get('little_endian', True))
        # A real copy (off the mapping, or onto the device), so that preprocessing in place never writes the file's pages.
        t = m.clone(memory_format=torch.contiguous_format) if torch.device(device).type == 'cpu' else m.to(device).contiguous()
        del m
        if not (keep64 and t.dtype == torch.float64):
            t = t.float()
        err = _segment_error(t, seg, tokens)
        if err:
            raise EngineError(err, 'input')
        out_rows = n_flat // per_row
        if mode == 'first':
            t = t.view(samples, tokens, cols)[:, 0, :].contiguous()
        elif mode == 'mean':
            t = (t.view(samples, tokens, cols).double().sum(dim=1) / tokens).float()
        elif mode != 'per-token':
            raise EngineError(f"unknown token mode '{mode}'", 'input')
        if pick_t is not None:
            sel = pick_t[(pick_t >= first_row) & (pick_t < first_row + out_rows)] - first_row
            t = t.index_select(0, sel.to(t.device))
        first_row += out_rows
        if len(segments) == 1:
            x = t
            break
        if x is None:
            x = torch.empty(total, cols, dtype=t.dtype, device=t.device)
        x[at:at + t.shape[0]] = t
        at += t.shape[0]
        del t
    if torch.device(device).type == 'mps' and x.dtype == torch.float64:
        x = x.float()
    return preprocess_(x, source.get('preprocess', 'none'), float(source.get('q', 0.95)))


def check_finite(x, what):
    torch = _torch()
    bad = ~torch.isfinite(x)
    if bool(bad.any()):
        pos = int(torch.nonzero(bad.reshape(-1))[0])
        r, c = divmod(pos, x.shape[1])
        raise EngineError(f'{what}: row {r}, column {c} is {float(x.reshape(-1)[pos])} (NaN/Inf values are not allowed)', 'input')


def map_matrix(path, dtype, rows, cols, offset=0, order='C', little_endian=True):
    """Memory-maps rows × cols values of `dtype` at byte `offset` of `path` (a .npy payload, a capture shard, or the
    Node engine's shared-memory file) as a CPU tensor; nothing is read until used (big-endian data is swapped into a
    copy)."""
    torch = _torch()
    tdt = {'float32': torch.float32, 'float64': torch.float64, 'float16': torch.float16, 'bfloat16': torch.bfloat16}.get(dtype)
    if tdt is None:
        raise EngineError(f'{path}: unsupported dtype {dtype}', 'input')
    count = rows * cols
    if count == 0:
        return torch.empty(rows, cols, dtype=tdt)
    with open(path, 'rb') as f:
        # Copy-on-write: a writable buffer for torch.frombuffer, and the file stays untouched.
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY)
    need = offset + count * torch.tensor([], dtype=tdt).element_size()
    if len(mm) < need:
        raise EngineError(f'{path}: {len(mm)} bytes, but {rows}×{cols} {dtype} at offset {offset} needs {need}', 'input')
    t = torch.frombuffer(mm, dtype=tdt, count=count, offset=offset)
    if little_endian != (sys.byteorder == 'little'):
        size = t.element_size()
        t = torch.frombuffer(mm, dtype=torch.uint8, count=count * size, offset=offset).view(count, size).flip(1).contiguous().view(tdt).view(-1)
    return t.reshape(cols, rows).T if order == 'F' else t.reshape(rows, cols)


class Worker:
    """The protocol loop: one request at a time, replies in request order (docs/torch-engine.md)."""

    def __init__(self, device, precision, out):
        torch = _torch()
        self.torch = torch
        self.device = torch.device(device)
        self.precision = precision
        self.out = out
        self.mats = {}
        set_precision(precision)
        if self.device.type == 'cpu' and hasattr(os, 'sched_getaffinity'):
            # Some builds start with one intra-op thread; use the cores this process may run on (as the cpu engine).
            torch.set_num_threads(max(1, len(os.sched_getaffinity(0))))

    def send(self, header, blobs=()):
        blobs = [memoryview(b).cast('B') for b in blobs]
        header = dict(header)
        if blobs:
            header['blobs'] = [len(b) for b in blobs]
        data = json.dumps(header, allow_nan=True).encode('utf-8')
        self.out.write(struct.pack('<I', len(data)))
        self.out.write(data)
        for b in blobs:
            self.out.write(b)
        self.out.flush()

    def hello(self):
        torch = self.torch
        info = device_info(self.device)
        self.send({'event': 'hello', 'protocol': 1, 'python': sys.executable, 'python_version': sys.version.split()[0],
                   'torch': torch.__version__, 'precision': self.precision, 'pid': os.getpid(), **info})

    def mat(self, name, for_compute=True):
        try:
            m = self.mats[name]
        except KeyError:
            raise EngineError(f"no matrix '{name}' loaded") from None
        if for_compute and m.dtype != self.torch.float32:
            # The engine computes in float32 (the fast modes convert per product); float64 inputs are converted once.
            if name + '#f32' not in self.mats:
                self.mats[name + '#f32'] = m.float()
            m = self.mats[name + '#f32']
        return m

    def _footprint(self, t):
        # Device bytes of a matrix, counting the float32 copy a float64 one gets on first compute (self.mat).
        return t.numel() * (t.element_size() + (4 if t.dtype == self.torch.float64 else 0))

    def op_load(self, req):
        if req.get('source') is not None:
            t = load_rows(req['source'], self.device)
            self.mats[req['name']] = t
            return {'rows': t.shape[0], 'cols': t.shape[1], 'bytes': self._footprint(t)}, ()
        m = map_matrix(req['path'], req['dtype'], int(req['rows']), int(req['cols']), int(req.get('offset', 0)), req.get('order', 'C'))
        check_finite(m, req.get('label') or req['path'])
        if self.device.type == 'mps' and m.dtype == self.torch.float64:
            m = m.float()  # MPS has no float64; the products are float32 anyway
        # A real copy (onto the device, or off the mapping on the CPU), so the file may go away.
        t = m.to(self.device, copy=True).contiguous()
        del m
        if req.get('unlink'):
            try:
                os.unlink(req['path'])
            except OSError:
                pass
        self.mats[req['name']] = t
        return {'rows': t.shape[0], 'cols': t.shape[1], 'bytes': self._footprint(t)}, ()

    def op_free(self, req):
        self.mats.pop(req['name'], None)
        self.mats.pop(req['name'] + '#f32', None)
        return {}, ()

    def op_gram(self, req):
        g = gram_tile(self.mat(req['a']), int(req['row_start']), int(req['row_end']), self.mat(req['b']), self.precision)
        return {'dtype': 'float32', 'shape': list(g.shape)}, (_tensor_bytes(g),)

    def op_knn(self, req, rid):
        last = [0.0]

        def progress(done, total):
            now = time.monotonic()
            if now - last[0] > 0.2 or done == total:
                last[0] = now
                self.send({'id': rid, 'event': 'progress', 'done': done, 'total': total})

        x = self.mat(req['x'])
        idx, val, nxt, tol = knn_lists(x, int(req['k']), self.precision, req.get('tile_rows'), progress)
        torch = self.torch
        return {'tie_tolerance': tol}, (_tensor_bytes(idx.to(torch.int32)), _tensor_bytes(val.double()), _tensor_bytes(nxt.double()))

    def op_cross(self, req):
        c = cross_product(self.mat(req['a']), self.mat(req['b']), self.precision)
        return {'dtype': 'float64', 'shape': list(c.shape)}, (_tensor_bytes(c),)

    def op_quantile(self, req):
        x = self.mat(req['x'], for_compute=False)
        return {'value': abs_quantile(x, float(req['q']), int(req.get('chunk') or 0) or None)}, ()

    def op_prh(self, req):
        x = self.mat(req['x'], for_compute=False)
        self.mats[req['out']] = prh(x, float(req.get('q', 0.95)))
        return {}, ()

    def op_centre(self, req):
        t = centred(self.mat(req['x'], for_compute=False))
        self.mats[req['out']] = t
        return {'bytes': self._footprint(t)}, ()

    def op_rowdots(self, req):
        a = self.mat(req['a'], for_compute=False)
        b = self.mat(req['b'], for_compute=False)
        if a.shape[0] != b.shape[0] or a.shape[1] != b.shape[1]:
            raise EngineError(f'rowdots: {tuple(a.shape)} vs {tuple(b.shape)}', 'input')
        return {}, (_tensor_bytes(row_dots(a, b)),)

    def op_colsq(self, req):
        return {}, (_tensor_bytes(column_squared_norms(self.mat(req['x'], for_compute=False))),)

    def op_fetch(self, req):
        x = self.mat(req['x'], for_compute=False)
        if x.dtype != self.torch.float64:
            x = x.float()
        return {'dtype': 'float64' if x.dtype == self.torch.float64 else 'float32', 'shape': list(x.shape)}, (_tensor_bytes(x),)

    def op_ping(self, req):
        # `delay_s` exists for the fault tests (a request in flight when the worker dies).
        time.sleep(float(req.get('delay_s', 0)))
        resident = {'count': len(self.mats), 'bytes': sum(t.numel() * t.element_size() for t in self.mats.values())}
        return {'device_info': device_info(self.device), 'resident': resident}, ()

    def serve(self, inp):
        self.hello()
        while True:
            head = _read_exact(inp, 4)
            if head is None:
                return 0
            (size,) = struct.unpack('<I', head)
            body = _read_exact(inp, size)
            if body is None:
                return 0
            req = json.loads(body)
            rid = req.get('id')
            op = req.get('op')
            if op == 'shutdown':
                self.send({'id': rid, 'ok': True})
                return 0
            try:
                fn = getattr(self, f'op_{op}', None)
                if fn is None:
                    raise EngineError(f"unknown op '{op}'")
                header, blobs = fn(req, rid) if op == 'knn' else fn(req)
                self.send({'id': rid, 'ok': True, **header}, blobs)
            except Exception as err:  # noqa: BLE001 (every failure becomes a one-line reply; the worker lives on)
                kind = getattr(err, 'kind', 'oom' if is_oom(err) else 'engine')
                msg = str(err).strip().split('\n')[0] or type(err).__name__
                self.send({'id': rid, 'ok': False, 'kind': kind, 'error': f'{type(err).__name__}: {msg}' if kind != 'input' else msg})


def _tensor_bytes(t):
    t = t.detach().cpu().contiguous()
    # The raw bytes without numpy (torch 2.x may be installed without it).
    return ctypes.string_at(t.data_ptr(), t.numel() * t.element_size()) if t.numel() else b''


def _read_exact(f, n):
    buf = bytearray()
    while len(buf) < n:
        chunk = f.read(n - len(buf))
        if not chunk:
            return None
        buf += chunk
    return bytes(buf)


def main(argv=None):
    import argparse

    ap = argparse.ArgumentParser(prog='python -m viral_lens_torch.engine', description=__doc__.split('\n\n')[0])
    ap.add_argument('--device', default=None, help='cuda:N, mps or cpu (default: the first GPU, else cpu)')
    ap.add_argument('--precision', default='float32', choices=PRECISIONS)
    args = ap.parse_args(argv)
    # The protocol owns the real stdout; anything else printing (libraries, warnings) goes to stderr.
    proto = os.fdopen(os.dup(1), 'wb')
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    inp = os.fdopen(os.dup(0), 'rb')

    def fail_hello(missing, message):
        data = json.dumps({'event': 'hello', 'error': message, 'missing': missing, 'python': sys.executable,
                           'python_version': sys.version.split()[0]}).encode('utf-8')
        proto.write(struct.pack('<I', len(data)) + data)
        proto.flush()
        return 3

    try:
        torch = _torch()
    except Exception as err:  # noqa: BLE001 (ImportError, or a broken install raising anything)
        return fail_hello('torch', f'{sys.executable} cannot import torch ({type(err).__name__}: {err})')
    device = args.device or default_device()
    try:
        dev = torch.device(device)
        if dev.type == 'cuda' and not torch.cuda.is_available():
            return fail_hello('cuda', f'--device {device}: torch {torch.__version__} sees no CUDA GPU (torch.cuda.is_available() is False)')
        if dev.type == 'cuda' and (dev.index or 0) >= torch.cuda.device_count():
            return fail_hello('cuda', f'--device {device}: only {torch.cuda.device_count()} CUDA device(s) visible')
        if dev.type == 'mps' and not (getattr(torch.backends, 'mps', None) and torch.backends.mps.is_available()):
            return fail_hello('mps', f'--device mps: torch {torch.__version__} has no usable MPS backend here')
        if dev.type not in ('cuda', 'mps', 'cpu'):
            return fail_hello('device', f"--device {device}: expected cuda:N, mps or cpu")
        worker = Worker(device, args.precision, proto)
    except Exception as err:  # noqa: BLE001
        return fail_hello('device', f'--device {device}: {type(err).__name__}: {err}')
    return worker.serve(inp)


if __name__ == '__main__':
    sys.exit(main())
