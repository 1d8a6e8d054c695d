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


class LoadRowsTest(unittest.TestCase):
    """`load` with a `source`: the worker's half of the file-backed matrices (src/engine/source.ts)."""

    def setUp(self):
        import tempfile
        self.dir = tempfile.mkdtemp()

    def tearDown(self):
        import shutil
        shutil.rmtree(self.dir, ignore_errors=True)

    def write(self, name, t, offset=16, big=False, fortran=False):
        """Raw values after `offset` junk bytes, in the asked byte order and layout."""
        import os
        path = os.path.join(self.dir, name)
        v = (t.T if fortran else t).contiguous().reshape(-1)
        raw = bytes(v.view(torch.uint8).tolist())
        if big:
            size = t.element_size()
            raw = b''.join(raw[i:i + size][::-1] for i in range(0, len(raw), size))
        with open(path, 'wb') as f:
            f.write(b'x' * offset + raw)
        return path

    def seg(self, path, t, samples, **kw):
        dtype = {torch.float32: 'float32', torch.float64: 'float64', torch.float16: 'float16', torch.bfloat16: 'bfloat16'}[t.dtype]
        return {'path': path, 'dtype': dtype, 'offset': 16, 'samples': samples, 'non_finite': {'kind': 'matrix', 'label': path}, **kw}

    def test_byte_orders_and_fortran_order_give_the_logical_matrix(self):
        g = torch.Generator().manual_seed(5)
        x = torch.randn(9, 4, generator=g, dtype=torch.float64)
        for big in (False, True):
            for fortran in (False, True):
                p = self.write(f'm-{big}-{fortran}', x, big=big, fortran=fortran)
                src = {'segments': [self.seg(p, x, 9, little_endian=not big, order='F' if fortran else 'C')], 'cols': 4, 'float64': True}
                got = engine.load_rows(src, 'cpu')
                self.assertEqual(got.dtype, torch.float64)
                self.assertTrue(torch.equal(got, x), (big, fortran))
                src['float64'] = False
                self.assertTrue(torch.equal(engine.load_rows(src, 'cpu'), x.float()))

    def test_token_modes_and_pick_across_segments(self):
        g = torch.Generator().manual_seed(6)
        tokens, cols = 3, 5
        a = torch.randn(4, tokens, cols, generator=g)
        b = torch.randn(2, tokens, cols, generator=g).to(torch.bfloat16)
        segs = [self.seg(self.write('a', a), a, 4), self.seg(self.write('b', b), b, 2)]
        whole = torch.cat([a, b.float()])
        want = {'per-token': whole.reshape(-1, cols), 'first': whole[:, 0, :], 'mean': (whole.double().sum(1) / tokens).float()}
        for mode, w in want.items():
            src = {'segments': segs, 'tokens': tokens, 'cols': cols, 'mode': mode}
            self.assertTrue(torch.equal(engine.load_rows(src, 'cpu'), w), mode)
            pick = [0, 2, w.shape[0] - 2, w.shape[0] - 1]
            self.assertTrue(torch.equal(engine.load_rows({**src, 'pick': pick}, 'cpu'), w[pick]), mode)

    def test_preprocessing_is_the_node_arithmetic(self):
        x = torch.tensor([[3.0, -4.0, 0.5], [0.0, 0.0, 0.0], [1e-3, 2.0, -7.0]])
        p = self.write('p', x)
        src = {'segments': [self.seg(p, x, 3)], 'cols': 3}
        # l2: Σx² in float64, then x·(1/√s) rounded to float32; a zero row stays zero.
        s = (x.double() ** 2).sum(1, keepdim=True)
        want = (x.double() * torch.where(s == 0, torch.ones_like(s), 1 / s.sqrt())).float()
        self.assertTrue(torch.equal(engine.load_rows({**src, 'preprocess': 'l2'}, 'cpu'), want))
        # prh at q = 0.5: |x| sorted 0 0 0 1e-3 0.5 2 3 4 7 → rank 4 → 0.5
        c = x.clamp(-0.5, 0.5)
        s = (c.double() ** 2).sum(1, keepdim=True)
        want = (c.double() * torch.where(s == 0, torch.ones_like(s), 1 / s.sqrt())).float()
        self.assertTrue(torch.equal(engine.load_rows({**src, 'preprocess': 'prh', 'q': 0.5}, 'cpu'), want))
        self.assertTrue(torch.equal(engine.load_rows(src, 'cpu'), x))

    def test_non_finite_values_are_named_as_node_names_them(self):
        x = torch.zeros(2, 3, 4)
        x[1, 2, 3] = float('-inf')
        p = self.write('nf', x)
        seg = self.seg(p, x, 2, non_finite={'kind': 'shard', 'head': "f.safetensors: tensor 'hidden'", 'what': "layer 'l'", 'shard_start': 10})
        with self.assertRaises(engine.EngineError) as ctx:
            engine.load_rows({'segments': [seg], 'tokens': 3, 'cols': 4, 'mode': 'mean'}, 'cpu')
        self.assertEqual(str(ctx.exception), "f.safetensors: tensor 'hidden': non-finite value -Infinity at sample 11 (shard row 1), token 2, dim 3 of layer 'l'; NaN/Inf values are not allowed")
        y = torch.zeros(4, 2)
        y[2, 1] = float('nan')
        p = self.write('nf2', y)
        with self.assertRaises(engine.EngineError) as ctx, mock.patch.object(engine, 'ROW_BLOCK_ELEMENTS', 2):  # a later block
            engine.load_rows({'segments': [self.seg(p, y, 4)], 'cols': 2}, 'cpu')
        self.assertEqual(str(ctx.exception), f'{p}: row 2, column 1 is NaN (NaN/Inf values are not allowed)')

    def test_row_and_column_sums_and_centring_in_float64(self):
        g = torch.Generator().manual_seed(7)
        a = torch.randn(50, 6, generator=g) + 100
        b = torch.randn(50, 6, generator=g)
        with mock.patch.object(engine, 'ROW_BLOCK_ELEMENTS', 12):  # many blocks
            self.assertTrue(torch.allclose(engine.row_dots(a, b), (a.double() * b.double()).sum(1), rtol=1e-15, atol=0))
            self.assertTrue(torch.allclose(engine.column_squared_norms(a), (a.double() ** 2).sum(0), rtol=1e-14, atol=0))
            c = engine.centred(a)
        self.assertEqual(c.dtype, torch.float32)
        self.assertTrue(torch.equal(c, (a.double() - a.double().mean(0)).float()))


if __name__ == '__main__':
    unittest.main()
