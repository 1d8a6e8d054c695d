"""viral_lens_torch.engine (the torch engine's worker functions): OOM retry with smaller tiles, exact quantile, prh."""

import math
import unittest
from unittest import mock

from common import torch  # noqa: F401

from viral_lens_torch import engine  # noqa: E402


def oracle_knn(x, k):
    """Full float64 sort with self excluded, ties by the smaller column (the ref engine's order)."""
    g = x.double() @ x.double().T
    g.fill_diagonal_(float('-inf'))
    v, i = torch.sort(g, dim=1, descending=True, stable=True)
    return i[:, :k], v[:, :k], v[:, k]


class EngineTest(unittest.TestCase):
    def test_out_of_memory_halves_the_tile_and_gives_the_same_lists(self):
        x = torch.randint(-3, 4, (64, 5)).float()  # integer entries: exact ties, exact products
        calls = []
        real = engine._knn_tile

        def flaky(x_, s, e, k, precision):
            calls.append(e - s)
            if e - s > 8:
                raise RuntimeError('CUDA out of memory. Tried to allocate 2.00 GiB')
            return real(x_, s, e, k, precision)

        with mock.patch.object(engine, '_knn_tile', flaky):
            idx, val, nxt, _ = engine.knn_lists(x, 6, tile_rows=64)
        self.assertEqual(calls[:4], [64, 32, 16, 8])
        want_i, want_v, want_n = oracle_knn(x, 6)
        self.assertTrue(torch.equal(idx, want_i))
        self.assertTrue(torch.equal(val.double(), want_v))
        self.assertTrue(torch.equal(nxt.double(), want_n))

    def test_other_errors_are_not_retried(self):
        with mock.patch.object(engine, '_knn_tile', side_effect=RuntimeError('shape mismatch')):
            with self.assertRaisesRegex(RuntimeError, 'shape mismatch'):
                engine.knn_lists(torch.randn(10, 3), 2)

    def test_quantile_equals_the_sorted_value(self):
        g = torch.Generator().manual_seed(3)
        for x in (torch.randn(101, 7, generator=g), torch.randint(-4, 5, (40, 9), generator=g).float(),
                  torch.randn(33, 5, generator=g).double(), torch.zeros(6, 2)):
            s = x.abs().flatten().sort().values
            for q in (0.95, 0.5, 0.0, 0.9999, 1.0):
                want = s[min(s.numel() - 1, math.floor(q * s.numel()))].item()
                self.assertEqual(engine.abs_quantile(x, q, chunk=50), want, (q, x.dtype))

    def test_prh_clamps_at_the_quantile_then_unit_rows(self):
        x = torch.tensor([[1.0, -10.0], [0.0, 0.0], [2.0, 3.0]])
        out = engine.prh(x, 0.5)  # |x| sorted: 0 0 1 2 3 10 -> rank 3 -> 2
        want = torch.tensor([[1.0, -2.0], [0.0, 0.0], [2.0, 2.0]])
        want = want / want.norm(dim=1, keepdim=True).masked_fill(want.norm(dim=1, keepdim=True) == 0, 1)
        self.assertTrue(torch.allclose(out, want))

    def test_fast_modes_report_their_wider_tolerance(self):
        x = torch.randn(30, 16)
        *_, tol32 = engine.knn_lists(x, 3, 'float32')
        *_, tolbf = engine.knn_lists(x, 3, 'bf16')
        # The same formula with eps 2^-8 instead of 2^-24 (max |K| itself differs slightly in bf16).
        self.assertLess(abs(tolbf / tol32 / 2.0 ** 16 - 1), 0.02)


if __name__ == '__main__':
    unittest.main()
