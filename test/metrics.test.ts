import assert from 'node:assert/strict';
import { test } from 'node:test';
import { createEngine } from '../src/engine/index.js';
import { InputError } from '../src/core/errors.js';
import type { Matrix } from '../src/core/matrix.js';
import { computeMetric, Features, METRICS, preprocess, type MetricName } from '../src/metrics/index.js';
import { absQuantile } from '../src/core/preprocess.js';
import { matmul, randn, randomRotation, scale } from './helpers.js';

const ref = await createEngine('ref');
const cpu = await createEngine('cpu');

async function m(metric: MetricName, A: Matrix, B: Matrix, k = 10, engine = ref) {
  return computeMetric(metric, new Features(A, engine, 'A'), new Features(B, engine, 'B'), k, 'none');
}

/** Dense CKNNA written straight from the reference code's steps (n×n matrices), as an independent oracle. */
function denseCknna(A: Matrix, B: Matrix, k: number): number {
  const n = A.rows;
  const gram = (X: Matrix) => {
    const G = new Float64Array(n * n);
    for (let i = 0; i < n; i++)
      for (let j = 0; j < n; j++) {
        let s = 0;
        for (let c = 0; c < X.cols; c++) s += X.data[i * X.cols + c]! * X.data[j * X.cols + c]!;
        G[i * n + j] = s;
      }
    return G;
  };
  const knnMask = (G: Float64Array) => {
    const M = new Float64Array(n * n);
    for (let i = 0; i < n; i++) {
      const order = [...Array(n).keys()].filter((j) => j !== i).sort((p, q) => G[i * n + q]! - G[i * n + p]!);
      for (const j of order.slice(0, k)) M[i * n + j] = 1;
    }
    return M;
  };
  const hsicU = (K: Float64Array, L: Float64Array) => {
    const Kt = K.slice();
    const Lt = L.slice();
    for (let i = 0; i < n; i++) Kt[i * n + i] = Lt[i * n + i] = 0;
    let t1 = 0, sk = 0, sl = 0, t3 = 0;
    for (let i = 0; i < n; i++)
      for (let j = 0; j < n; j++) {
        t1 += Kt[i * n + j]! * Lt[j * n + i]!;
        sk += Kt[i * n + j]!;
        sl += Lt[i * n + j]!;
      }
    for (let i = 0; i < n; i++)
      for (let j = 0; j < n; j++) {
        let s = 0; // (K̃L̃)_ij, the O(n³) way
        for (let q = 0; q < n; q++) s += Kt[i * n + q]! * Lt[q * n + j]!;
        t3 += s;
      }
    return (t1 + (sk * sl) / ((n - 1) * (n - 2)) - (2 * t3) / (n - 2)) / (n * (n - 3));
  };
  const K = gram(A), L = gram(B);
  const MK = knnMask(K), ML = knnMask(L);
  const M = MK.map((v, i) => v * ML[i]!);
  const sim = (X: Float64Array, Y: Float64Array, mask: Float64Array) => hsicU(X.map((v, i) => v * mask[i]!), Y.map((v, i) => v * mask[i]!));
  return sim(K, L, M) / (Math.sqrt(sim(K, K, MK) * sim(L, L, ML)) + 1e-6);
}

test('sparse CKNNA equals the dense O(n³) definition on unnormalised, asymmetric inputs', async () => {
  const A = randn(40, 7, 1);
  const B = matmul(A, randn(7, 5, 2).data, 5);
  for (let i = 0; i < B.data.length; i++) B.data[i]! += 0.7 * randn(40, 5, 3).data[i]!;
  for (const k of [2, 5, 13]) {
    const got = (await m('cknna', A, B, k)).value;
    const want = denseCknna(A, B, k);
    assert.ok(Math.abs(got - want) < 1e-12, `k=${k}: ${got} vs ${want}`);
  }
});

test('k = n−1 makes CKNNA equal unbiased CKA', async () => {
  const A = preprocess(randn(30, 6, 4), 'l2');
  const B = preprocess(randn(30, 9, 5), 'l2');
  const c = (await m('cknna', A, B, 29)).value;
  const u = (await m('unbiased_cka', A, B)).value;
  assert.ok(Math.abs(c - u) < 1e-10, `${c} vs ${u}`);
});

test('CKNNA is asymmetric and CKNNA(A, A) is just below 1', async () => {
  const A = preprocess(randn(60, 8, 6), 'l2');
  const B = preprocess(randn(60, 12, 7), 'l2');
  const ab = (await m('cknna', A, B)).value;
  const ba = (await m('cknna', B, A)).value;
  assert.ok(Math.abs(ab - ba) > 1e-6, `${ab} vs ${ba}`);
  const aa = (await m('cknna', A, A)).value;
  assert.ok(aa < 1 && aa > 1 - 1e-3, `${aa}`);
});

test('CKA is invariant to orthogonal rotation and isotropic scaling; mutual_knn(A, A) = 1', async () => {
  const A = randn(50, 10, 8);
  const B = randn(50, 6, 9);
  for (const metric of ['cka', 'unbiased_cka'] as const) {
    const base = (await m(metric, A, B)).value;
    const rotated = (await m(metric, matmul(A, randomRotation(10, 10), 10), B)).value;
    const scaled = (await m(metric, scale(A, 3.5), B)).value;
    assert.ok(Math.abs(base - rotated) < 1e-9, `${metric} rotation: ${base} vs ${rotated}`);
    assert.ok(Math.abs(base - scaled) < 1e-6, `${metric} scaling: ${base} vs ${scaled}`);
  }
  // CKNNA and the kNN metrics are invariant to rotation too (the kernels do not change).
  const c0 = (await m('cknna', A, B)).value;
  const c1 = (await m('cknna', matmul(A, randomRotation(10, 11), 10), B)).value;
  assert.ok(Math.abs(c0 - c1) < 1e-9);
  assert.equal((await m('mutual_knn', A, A)).value, 1);
  assert.equal((await m('cycle_knn', A, A)).value, 1);
});

test('CKA is not invariant to a non-isotropic scaling (it must not claim more than it has)', async () => {
  const A = randn(50, 4, 12);
  const B = randn(50, 4, 13);
  for (let i = 0; i < 50; i++) B.data[i * 4]! += 2 * A.data[i * 4]!;
  const stretched = { ...A, data: A.data.map((v, i) => (i % 4 === 0 ? v * 0.01 : v)) };
  const base = (await m('cka', A, B)).value;
  const other = (await m('cka', stretched, B)).value;
  assert.ok(Math.abs(base - other) > 1e-3);
});

test('ref and cpu engines agree on random inputs for every metric', async () => {
  const A = preprocess(randn(200, 48, 14), 'l2');
  const B = preprocess(randn(200, 24, 15), 'l2');
  for (let i = 0; i < 200; i++) for (let c = 0; c < 24; c++) B.data[i * 24 + c]! += A.data[i * 48 + c]!;
  for (const metric of Object.keys(METRICS) as MetricName[]) {
    const Bm = metric === 'cosine' ? A : B;
    const r = await m(metric, A, Bm, 10, ref);
    const c = await m(metric, A, Bm, 10, cpu);
    assert.ok(Math.abs(r.value - c.value) < 2e-5, `${metric}: ref ${r.value} cpu ${c.value}`);
    assert.equal(c.engine, 'cpu');
    assert.equal(c.precision, 'float32');
  }
});

test('CKNNA above 1 at small n: the same value as platonic-rep, with a warning naming n and k', async () => {
  // Eight 2-d points (rows 0/7 and 2/5 coincide) and a copy with a few coordinates moved by 1; no tie at the 5th
  // neighbour. platonic-rep's AlignmentMetrics.cknna(A, B, topk=5) (metrics.py, torch float64) returns
  // 1.517102908594955 on exactly these inputs: values above 1 come from the unbiased HSIC's centring terms, not from us.
  const A = { rows: 8, cols: 2, data: Float64Array.from([-1, -2, -4, -3, -1, -3, -1, -4, 4, -1, -1, -3, -1, 2, -1, -2]) };
  const B = { rows: 8, cols: 2, data: Float64Array.from([-1, -2, -4, -4, -1, -3, -1, -5, 3, -1, -1, -2, -2, 1, -1, -2]) };
  const r = await m('cknna', A, B, 5);
  assert.equal(r.tied_rows_a, 0);
  assert.equal(r.tied_rows_b, 0);
  assert.ok(Math.abs(r.value - 1.517102908594955) < 1e-12, `got ${r.value}`);
  assert.ok(Math.abs(r.value - denseCknna(A, B, 5)) < 1e-12);
  assert.match(r.warning ?? '', /CKNNA = 1\.5171 > 1 at small n = 8 for k = 5 \(n < 10·k\)/);
  // Small n relative to k is flagged even when the value happens to stay below 1 …
  const C = randn(40, 6, 21);
  const small = await m('cknna', C, matmul(C, randomRotation(6, 22), 6), 5);
  assert.ok(small.value <= 1);
  assert.match(small.warning ?? '', /^CKNNA at small n = 40 for k = 5 \(n < 10·k\)/);
  // … and not at n ≥ 10·k with a value ≤ 1, nor for metrics bounded by construction.
  const D = randn(120, 6, 23);
  const E = randn(120, 6, 24);
  const large = await m('cknna', D, E, 10);
  assert.ok(large.value <= 1);
  assert.equal(large.warning, undefined);
  assert.equal((await m('mutual_knn', C, C, 5)).warning, undefined);
});

test('a negative masked HSIC under the square root gives NaN with a reason, not a crash', async () => {
  // Unbiased HSIC estimates a non-negative quantity but can itself be negative at small n. This 5×4 Gaussian draw
  // (found by search) has HSIC_u(M_K∘K, M_K∘K) ≈ −0.0195 at k = 2.
  const A = randn(5, 4, 799);
  const r = await m('cknna', A, randn(5, 3, 1), 2);
  assert.ok(Number.isNaN(r.value));
  assert.match(r.undefined_reason ?? '', /< 0/);
});

test('invalid n and k are input errors naming the problem', async () => {
  const A = randn(3, 4, 1);
  await assert.rejects(m('cknna', A, A, 2), (e: unknown) => e instanceof InputError && /n = 3/.test(e.message));
  const B = randn(20, 4, 2);
  await assert.rejects(m('cknna', B, B, 20), (e: unknown) => e instanceof InputError && /k = 20/.test(e.message));
  await assert.rejects(m('cknna', B, B, 1), (e: unknown) => e instanceof InputError && /≥ 2/.test(e.message));
  await assert.rejects(m('cknna', B, randn(21, 4, 3), 5), (e: unknown) => e instanceof InputError && /20 rows.*21/.test(e.message));
  await assert.rejects(m('cosine', B, randn(20, 5, 3)), (e: unknown) => e instanceof InputError && /20×4.*20×5/.test(e.message));
});

test('ties at the k-th neighbour are counted', async () => {
  // Rows 1..4 are identical, so for row 0 neighbours 2..5 tie; the ref engine sees the exact ties.
  const n = 8, d = 3;
  const X = randn(n, d, 5);
  for (let i = 2; i <= 4; i++) for (let c = 0; c < d; c++) X.data[i * d + c] = X.data[d + c]!;
  const r = await m('cknna', X, X, 2);
  assert.ok((r.tied_rows_a ?? 0) >= 1, `tied rows: ${r.tied_rows_a}`);
  const clean = await m('cknna', randn(30, 5, 6), randn(30, 5, 7), 3);
  assert.equal(clean.tied_rows_a, 0);
});

test('prh preprocessing clamps at the element of rank floor(q·N) of |x|, then L2-normalises rows', () => {
  // |x| sorted: 0.5 1 2 3 4 5 6 7 8 100; N = 10, q = 0.8 → index 8 → 8.
  const x = { rows: 2, cols: 5, data: Float64Array.from([1, -2, 3, 100, -0.5, 4, 5, -6, 7, 8]) };
  assert.equal(absQuantile(x.data, 0.8), 8);
  const p = preprocess(x, 'prh', { q: 0.8 });
  const r0 = [1, -2, 3, 8, -0.5];
  const n0 = Math.hypot(...r0);
  r0.forEach((v, c) => assert.ok(Math.abs(p.data[c]! - v / n0) < 1e-15));
  const l2 = preprocess(x, 'l2');
  assert.ok(Math.abs(Math.hypot(...l2.data.subarray(5, 10)) - 1) < 1e-15);
  assert.equal(preprocess(x, 'none').data[3], 100);
  // Quickselect on a large array equals the sort-based definition.
  const big = randn(1, 10007, 9).data;
  const sorted = Float64Array.from(big, Math.abs).sort();
  assert.equal(absQuantile(big, 0.95), sorted[Math.floor(0.95 * 10007)]);
});
