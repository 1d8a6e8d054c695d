#!/usr/bin/env python3
"""GPU-side measurement for `npm run bench:gpu` when Node.js cannot run on the GPU machine (PyTorch fallback).

1. GEMM ceiling: TFLOP/s of a large float32 matmul with TF32 off (true fp32, what viral-lens computes) and on.
2. CKNNA with viral-lens's semantics on the GPU: tiled Gram rows X[s:e]·Xᵀ with top-(k+2) per tile (no n×n matrix),
   self removed, ties at the k-th neighbour counted; then the unbiased HSIC of the kNN-masked kernels from the
   O(n·k) listed entries only (the transposed-entry lookup by sorted keys, column/row sums), in float64; exactly the
   formulas of src/metrics/hsic.ts and cknna.ts.
3. Correctness first: at a small n the same code is compared with the dense reference (bench/reference/
   cknna_reference.py, float64) and must agree within 2e-5, else the run fails.

Prints a table and, with --json, writes every number. Installs nothing, downloads nothing.
"""
import argparse
import json
import math
import os
import sys
import time

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, '..', 'reference'))
import cknna_reference as dense  # noqa: E402  (the dense baseline, used as the small-n oracle)

# One implementation: the tile loop, top-k and prh quantile are the product's torch engine (python).
sys.path.insert(0, os.path.join(HERE, '..', '..', 'python'))
from viral_lens_torch import engine  # noqa: E402


def sync(device):
    if device.type == 'cuda':
        torch.cuda.synchronize(device)


def timed(fn, device, repeats=3):
    """Median wall time of fn() over `repeats` runs after one warm-up, synchronising the device around each."""
    fn()
    sync(device)
    times = []
    out = None
    for _ in range(repeats):
        t = time.perf_counter()
        out = fn()
        sync(device)
        times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2], out


def gemm_tflops(device, m, k, n, tf32, repeats):
    torch.backends.cuda.matmul.allow_tf32 = tf32
    a = torch.randn(m, k, device=device)
    b = torch.randn(k, n, device=device)
    t, _ = timed(lambda: a @ b, device, repeats)
    return 2.0 * m * k * n / t / 1e12


def prh(x, q=0.95):
    """prh on the device, as the product's torch engine does it (exact streamed quantile, no 2³¹-element limit)."""
    return engine.prh(x, q)


def knn_lists(x, k, tile_bytes=None):
    """The product's torch-engine kNN (viral_lens_torch.engine.knn_lists): indices, values, next."""
    tile_rows = max(1, tile_bytes // (4 * x.shape[0])) if tile_bytes else None
    idx, val, nxt, _ = engine.knn_lists(x, k, 'float32', tile_rows)
    return idx, val, nxt


def dense_cknna(A, B, k):
    """The dense baseline (platonic-rep's CKNNA, fp32 on the device): n×n kernels, top-k masks, dense unbiased HSIC."""
    def mask(K):
        Km = K.clone().fill_diagonal_(float('-inf'))
        return torch.zeros_like(K).scatter_(1, torch.topk(Km, k, dim=1).indices, 1.0)

    def hsic(K, L):
        m = K.shape[0]
        Kt, Lt = K.clone().fill_diagonal_(0), L.clone().fill_diagonal_(0)
        return (torch.sum(Kt * Lt.T) + Kt.sum() * Lt.sum() / ((m - 1) * (m - 2)) - 2.0 / (m - 2) * torch.sum(Kt @ Lt)) / (m * (m - 3))

    K, L = A @ A.T, B @ B.T
    MK, ML = mask(K), mask(L)
    M = MK * ML
    return (hsic(M * K, M * L) / (torch.sqrt(hsic(MK * K, MK * K) * hsic(ML * L, ML * L)) + 1e-6)).item()


def masked_entries(ia, va, ib=None, vb=None):
    """(rows, cols, K values, L values) of the CKNNA mask: j ∈ knn_a(i) [∧ j ∈ knn_b(i)]."""
    n, k = ia.shape
    rows = torch.arange(n, device=ia.device).unsqueeze(1).expand(n, k)
    if ib is None:
        return rows.reshape(-1), ia.reshape(-1), va.reshape(-1).double(), va.reshape(-1).double()
    eq = ia.unsqueeze(2) == ib.unsqueeze(1)  # [n, k, k]: position r of a's list equals position s of b's
    hit = eq.any(dim=2)
    slot = eq.to(torch.int8).argmax(dim=2)
    lv = torch.gather(vb, 1, slot)
    return rows[hit], ia[hit], va[hit].double(), lv[hit].double()


def hsic_sparse(n, rows, cols, kv, lv):
    """Unbiased HSIC of kernels that are zero outside the listed entries (src/metrics/hsic.ts), float64."""
    m = float(n)
    keys = rows * n + cols
    order = torch.argsort(keys)
    skeys = keys[order]
    slv = lv[order]
    tkeys = cols * n + rows  # the transposed entry (j, i)
    pos = torch.searchsorted(skeys, tkeys).clamp(max=skeys.numel() - 1)
    found = skeys[pos] == tkeys
    term1 = torch.sum(torch.where(found, kv * slv[pos], torch.zeros_like(kv)))
    col_sum_k = torch.zeros(n, dtype=torch.float64, device=kv.device).index_add_(0, cols, kv)
    row_sum_l = torch.zeros(n, dtype=torch.float64, device=kv.device).index_add_(0, rows, lv)
    term3 = torch.dot(col_sum_k, row_sum_l)
    return ((term1 + kv.sum() * lv.sum() / ((m - 1) * (m - 2)) - 2 * term3 / (m - 2)) / (m * (m - 3))).item()


def cknna_tiled(A, B, k, tile_bytes):
    n = A.shape[0]
    ia, va, na = knn_lists(A, k, tile_bytes)
    ib, vb, nb = knn_lists(B, k, tile_bytes)
    kl = hsic_sparse(n, *masked_entries(ia, va, ib, vb))
    kk = hsic_sparse(n, *masked_entries(ia, va))
    ll = hsic_sparse(n, *masked_entries(ib, vb))
    prod = kk * ll
    value = kl / (math.sqrt(prod) + 1e-6) if prod >= 0 else float('nan')
    # Rows whose k-th and (k+1)-th values are closer than float32 noise: their mask is implementation-defined.
    tol = lambda x, v: 4 * 2.0**-24 * math.sqrt(x.shape[1]) * v[:, 0].abs().max().item()
    tied = int(((va[:, -1] - na) <= tol(A, va)).sum().item() + ((vb[:, -1] - nb) <= tol(B, vb)).sum().item())
    return value, tied


def synthetic(n, dA, dB, seed, device):
    """A and B see one 32-dimensional latent signal through random maps, plus noise (as bench/reference.bench.ts)."""
    g = torch.Generator(device='cpu').manual_seed(seed)
    z = torch.randn(n, 32, generator=g).to(device)
    pa = torch.randn(32, dA, generator=g).to(device)
    pb = torch.randn(32, dB, generator=g).to(device)
    A = z @ pa + 0.5 * torch.randn(n, dA, generator=g).to(device)
    B = z @ pb + 0.8 * torch.randn(n, dB, generator=g).to(device)
    return A, B


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--device', default='cuda')
    ap.add_argument('--sizes', default='20000,100000')
    ap.add_argument('--dA', type=int, default=4096)
    ap.add_argument('--dB', type=int, default=1024)
    ap.add_argument('--k', type=int, default=10)
    ap.add_argument('--check-n', type=int, default=2000, help='n of the correctness check against the dense reference')
    ap.add_argument('--gemm', default='8192,8192,8192', help='m,k,n of the GEMM ceiling measurement')
    ap.add_argument('--tile-mib', type=int, default=0, help='Gram tile budget (0 = the engine\'s choice from free memory)')
    ap.add_argument('--sweep-layers', type=int, default=0, help='layers of the sweep timing (0 = skip)')
    ap.add_argument('--sweep-targets', type=int, default=2)
    ap.add_argument('--sweep-n', type=int, default=100000)
    ap.add_argument('--dense-sizes', default='20000', help='n of the dense torch baseline (platonic-rep style), side by side')
    ap.add_argument('--repeats', type=int, default=3)
    ap.add_argument('--json')
    args = ap.parse_args()
    device = torch.device(args.device)
    if device.type == 'cuda' and not torch.cuda.is_available():
        print('cknna_torch.py: torch.cuda.is_available() is False: no usable GPU for PyTorch here', file=sys.stderr)
        return 3
    name = torch.cuda.get_device_name(device) if device.type == 'cuda' else f'CPU ({torch.get_num_threads()} threads)'
    tile_bytes = args.tile_mib * 2**20 or None
    report = {'device': name, 'torch': torch.__version__, 'cuda': torch.version.cuda, 'k': args.k, 'dA': args.dA, 'dB': args.dB}
    print(f'device: {name}; torch {torch.__version__}, CUDA {torch.version.cuda}')

    # 1. Correctness against the dense reference (float64 on the CPU) before any timing.
    torch.backends.cuda.matmul.allow_tf32 = False
    A, B = synthetic(args.check_n, min(args.dA, 512), min(args.dB, 256), 7, device)
    A, B = prh(A), prh(B)
    ours, tied = cknna_tiled(A, B, args.k, tile_bytes)
    ref = dense.cknna(A.double().cpu(), B.double().cpu(), args.k, {})
    ok = abs(ours - ref) <= 2e-5
    report['check'] = {'n': args.check_n, 'tiled': ours, 'dense_reference_float64': ref, 'abs_diff': abs(ours - ref), 'tied_rows': tied, 'ok': ok}
    print(f'check n={args.check_n}: tiled {ours:.8f} vs dense reference (float64) {ref:.8f}, |Δ| = {abs(ours - ref):.2e}, tied rows {tied}: {"OK" if ok else "MISMATCH"}')
    if not ok:
        return 1

    # 2. GEMM ceiling.
    m, kk, nn = (int(v) for v in args.gemm.split(','))
    fp32 = gemm_tflops(device, m, kk, nn, False, args.repeats)
    tf32 = gemm_tflops(device, m, kk, nn, True, args.repeats) if device.type == 'cuda' else float('nan')
    torch.backends.cuda.matmul.allow_tf32 = False
    report['gemm'] = {'shape': [m, kk, nn], 'fp32_tflops': fp32, 'tf32_tflops': tf32}
    print(f'GEMM {m}x{kk}x{nn}: fp32 {fp32:.1f} TFLOP/s, TF32 {tf32:.1f} TFLOP/s')

    # 3. CKNNA at scale (fp32, TF32 off), timed end to end from features on the device.
    report['cknna'] = []
    for n in (int(s) for s in args.sizes.split(',')):
        A, B = synthetic(n, args.dA, args.dB, 1234 + n, device)
        t_pre, (pa, pb) = timed(lambda: (prh(A), prh(B)), device, 1)
        t, (value, tied) = timed(lambda: cknna_tiled(pa, pb, args.k, tile_bytes), device, args.repeats)
        flops = 2.0 * n * n * (args.dA + args.dB)
        achieved = flops / t / 1e12
        row = {'n': n, 'value': value, 'seconds': t, 'preprocess_seconds': t_pre, 'tied_rows': tied, 'gram_tflops': achieved, 'fraction_of_fp32_gemm': achieved / fp32}
        if device.type == 'cuda':
            row['peak_device_memory_bytes'] = torch.cuda.max_memory_allocated(device)
            torch.cuda.reset_peak_memory_stats(device)
        report['cknna'].append(row)
        print(f'CKNNA n={n}: {value:.6f} in {t:.3f} s (+ prh {t_pre:.3f} s); Gram work {achieved:.1f} TFLOP/s = {100 * achieved / fp32:.0f}% of the fp32 GEMM ceiling; tied rows {tied}')
        if str(n) in args.dense_sizes.split(','):
            try:
                t_dense, dense_value = timed(lambda: dense_cknna(pa, pb, args.k), device, 1)
                row['dense_seconds'] = t_dense
                row['dense_value'] = dense_value
                row['speedup_vs_dense'] = t_dense / t
                print(f'  dense torch baseline n={n}: {dense_value:.6f} in {t_dense:.3f} s; engine is {t_dense / t:.1f}x faster')
            except Exception as err:  # noqa: BLE001 (the dense baseline runs out of memory at large n: say so)
                row['dense_error'] = str(err).split('\n')[0]
                print(f'  dense torch baseline n={n}: failed ({row["dense_error"]})')
            if device.type == 'cuda':
                torch.cuda.empty_cache()
        del A, B, pa, pb
    # 4. A layer sweep: each target's kNN once, then every layer's kNN and its CKNNA against every target.
    if args.sweep_layers > 0:
        n = args.sweep_n
        t0 = time.perf_counter()
        targets = []
        for ti in range(args.sweep_targets):
            _, T = synthetic(n, 8, args.dB, 99 + ti, device)
            targets.append(knn_lists(prh(T), args.k))
            del T
        values = []
        for layer in range(args.sweep_layers):
            H, _ = synthetic(n, args.dA, 8, 500 + layer, device)
            ia, va, _ = knn_lists(prh(H), args.k)
            del H
            for ib, vb, _ in targets:
                kl = hsic_sparse(n, *masked_entries(ia, va, ib, vb))
                kk = hsic_sparse(n, *masked_entries(ia, va))
                ll = hsic_sparse(n, *masked_entries(ib, vb))
                values.append(kl / (math.sqrt(kk * ll) + 1e-6) if kk * ll >= 0 else float('nan'))
        sync(device)
        t_sweep = time.perf_counter() - t0
        report['sweep'] = {'n': n, 'layers': args.sweep_layers, 'targets': args.sweep_targets, 'seconds': t_sweep,
                           'knn_computed': args.sweep_layers + args.sweep_targets}
        print(f'sweep: {args.sweep_layers} layers x {args.sweep_targets} targets at n={n} (dA {args.dA}, dB {args.dB}): '
              f'{t_sweep:.1f} s incl. synthesis and prh; {args.sweep_layers + args.sweep_targets} kNN computations (targets once)')
    if args.json:
        with open(args.json, 'w') as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == '__main__':
    sys.exit(main())
