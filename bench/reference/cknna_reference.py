#!/usr/bin/env python3
"""CKNNA the way the reference pipeline computes it (Platonic Representation Hypothesis code, as specified in
the leads' metrics spec, see fixtures/golden/README.md; written from those formulas, not copied): dense n×n float32 kernels in torch, kNN masks
from torch.topk on kernels whose diagonal is −inf, and the unbiased HSIC whose third term is the O(n³) product
torch.mm(K̃, L̃). It is the baseline `bench/reference.bench.ts` times against viral-lens's engine.

Usage: cknna_reference.py A.npy B.npy [--k 10] [--preprocess prh|l2|none] [--q 0.95] [--threads N]
Prints one JSON object: value, timings (s), peak RSS of this process (resource.getrusage ru_maxrss) and the BLAS
library torch actually loaded (the dense products dominate, so the BLAS decides the baseline's speed).
"""
import argparse
import json
import os
import resource
import sys
import time

import numpy as np
import torch


def prh(x: torch.Tensor, q: float) -> torch.Tensor:
    """Outlier clamp at the value of index floor(q·N) of the ascending |x| (no interpolation), then L2 rows."""
    flat = x.abs().flatten()
    n = flat.numel()
    q_val = torch.sort(flat).values[min(n - 1, int(np.floor(q * n)))]
    return l2(x.clamp(-q_val, q_val))


def l2(x: torch.Tensor) -> torch.Tensor:
    norms = x.norm(dim=1, keepdim=True)
    return torch.where(norms > 0, x / norms.clamp_min(torch.finfo(x.dtype).tiny), x)


def knn_mask(kernel: torch.Tensor, k: int) -> torch.Tensor:
    """M_ij = 1 if j is among the k largest K_ij of row i, j ≠ i (self excluded by a −inf diagonal)."""
    n = kernel.shape[0]
    masked = kernel.clone()
    masked.fill_diagonal_(float('-inf'))
    idx = torch.topk(masked, k, dim=1).indices
    return torch.zeros(n, n, dtype=kernel.dtype).scatter_(1, idx, 1.0)


def hsic_unbiased(K: torch.Tensor, L: torch.Tensor) -> torch.Tensor:
    """[Σ K̃∘L̃ᵀ + ΣK̃·ΣL̃/((m−1)(m−2)) − 2/(m−2)·Σ(K̃L̃)] / (m(m−3)); the last sum via the dense product K̃·L̃."""
    m = K.shape[0]
    Kt = K.clone().fill_diagonal_(0)
    Lt = L.clone().fill_diagonal_(0)
    term1 = torch.sum(Kt * Lt.T)
    term2 = torch.sum(Kt) * torch.sum(Lt) / ((m - 1) * (m - 2))
    term3 = 2.0 / (m - 2) * torch.sum(torch.mm(Kt, Lt))
    return (term1 + term2 - term3) / (m * (m - 3))


def cknna(A: torch.Tensor, B: torch.Tensor, k: int, timings: dict) -> float:
    t = time.perf_counter()
    K = torch.mm(A, A.T)
    L = torch.mm(B, B.T)
    timings['gram_s'] = time.perf_counter() - t
    t = time.perf_counter()
    MK = knn_mask(K, k)
    ML = knn_mask(L, k)
    M = MK * ML
    timings['masks_s'] = time.perf_counter() - t
    t = time.perf_counter()
    sim_kl = hsic_unbiased(M * K, M * L)
    sim_kk = hsic_unbiased(MK * K, MK * K)
    sim_ll = hsic_unbiased(ML * L, ML * L)
    timings['hsic_s'] = time.perf_counter() - t
    return (sim_kl / (torch.sqrt(sim_kk * sim_ll) + 1e-6)).item()


def loaded_blas() -> str:
    try:
        with open('/proc/self/maps') as f:
            libs = {line.split()[-1] for line in f if 'blas' in line or 'mkl' in line}
        return ', '.join(sorted(libs)) or 'unknown'
    except OSError:
        return 'unknown'


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument('a')
    ap.add_argument('b')
    ap.add_argument('--k', type=int, default=10)
    ap.add_argument('--preprocess', choices=['prh', 'l2', 'none'], default='prh')
    ap.add_argument('--q', type=float, default=0.95)
    ap.add_argument('--threads', type=int, default=os.cpu_count())
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    timings: dict = {}
    t0 = time.perf_counter()
    A = torch.from_numpy(np.load(args.a).astype(np.float32, copy=False))
    B = torch.from_numpy(np.load(args.b).astype(np.float32, copy=False))
    timings['load_s'] = time.perf_counter() - t0
    t = time.perf_counter()
    if args.preprocess == 'prh':
        A, B = prh(A, args.q), prh(B, args.q)
    elif args.preprocess == 'l2':
        A, B = l2(A), l2(B)
    timings['preprocess_s'] = time.perf_counter() - t
    t = time.perf_counter()
    value = cknna(A, B, args.k, timings)
    timings['cknna_s'] = time.perf_counter() - t
    timings['total_s'] = timings['preprocess_s'] + timings['cknna_s']
    json.dump(
        {
            'value': value,
            'n': A.shape[0],
            'dA': A.shape[1],
            'dB': B.shape[1],
            'k': args.k,
            'preprocess': args.preprocess,
            'threads': torch.get_num_threads(),
            'torch': torch.__version__,
            'blas': loaded_blas(),
            'timings': timings,
            'maxrss_bytes': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        },
        sys.stdout,
    )
    sys.stdout.write('\n')
    return 0


if __name__ == '__main__':
    sys.exit(main())
