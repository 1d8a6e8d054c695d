import assert from 'node:assert/strict';
import { test } from 'node:test';
import { scaledK, similarityStats, subMatrix } from '../analysis/stats.js';
import { createEngine } from '../src/engine/index.js';
import type { Matrix } from '../src/core/matrix.js';
import { computeMetric, Features, preprocess, type MetricName } from '../src/metrics/index.js';
import {
  mcnemarExact,
  mulberry32,
  normalQuantile,
  permutationPValue,
  permuteKnn,
  quantile,
  randomPermutation,
  restrictKnn,
  RowPermuter,
  rowGroups,
  rowsByGroup,
  subsampleGroups,
  wilsonInterval,
} from '../src/stats/index.js';
import { matmul, randn } from './helpers.js';

const ref = await createEngine('ref');

function feats(x: Matrix, label: string): Features {
  return new Features(preprocess(x, 'l2'), ref, label);
}

/** B = A·W + noise·E: a planted relation whose strength `noise` sets. */
function planted(n: number, d: number, noise: number, seed: number): { A: Matrix; B: Matrix } {
  const A = randn(n, d, seed);
  const W = randn(d, d, seed + 1).data;
  const AW = matmul(A, W, d);
  const E = randn(n, d, seed + 2).data;
  return { A, B: { rows: n, cols: d, data: AW.data.map((v, i) => v + noise * E[i]!) } };
}

async function score(metric: MetricName, a: Features, b: Features, k: number) {
  return computeMetric(metric, a, b, k, 'l2');
}

test('summary statistics match known values', () => {
  assert.ok(Math.abs(normalQuantile(0.975) - 1.959963985) < 1e-8);
  assert.ok(Math.abs(normalQuantile(0.01) + 2.326347874) < 1e-8);
  // Wilson 95% for 8/10 (Newcombe 1998, table I): 0.4902 – 0.9433.
  const w = wilsonInterval(8, 10, 0.95);
  assert.ok(Math.abs(w.low - 0.4902) < 1e-4 && Math.abs(w.high - 0.9433) < 1e-4, JSON.stringify(w));
  assert.equal(quantile([1, 2, 3, 4], 0.5), 2.5);
  assert.equal(quantile([3, 1, 2, NaN], 1), 3);
  // p-value +1 correction: never 0.
  assert.equal(permutationPValue(10, [1, 2, 3]), 0.25);
  assert.equal(permutationPValue(2, [1, 2, 3]), 0.75);
});

test('McNemar exact: known binomial values', () => {
  // b = 10, c = 2: p = 2·P(Bin(12, ½) ≤ 2) = 2·79/4096.
  const first = [...Array(10).fill(true), ...Array(2).fill(false), ...Array(5).fill(true)];
  const second = [...Array(10).fill(false), ...Array(2).fill(true), ...Array(5).fill(true)];
  const r = mcnemarExact(first, second);
  assert.equal(r.b, 10);
  assert.equal(r.c, 2);
  assert.ok(Math.abs(r.p_value - (2 * 79) / 4096) < 1e-12);
  assert.equal(mcnemarExact([true, false], [true, false]).p_value, 1);
});

test('relabelled kNN lists of a permuted matrix equal a fresh kNN search on it', async () => {
  const B = randn(50, 6, 11);
  const perm = randomPermutation(50, mulberry32(3));
  const permuted = subMatrix(B, perm);
  for (const k of [2, 7, 49]) {
    const fresh = await ref.knn(permuted, k);
    const relabelled = permuteKnn(await ref.knn(B, k), perm);
    assert.deepEqual(relabelled.indices, fresh.indices, `k = ${k}`);
    assert.deepEqual(relabelled.values, fresh.values);
    assert.deepEqual(relabelled.next, fresh.next);
  }
});

test('restricted kNN lists equal a fresh search on the subset, and say when the cache is too short', async () => {
  const X = randn(80, 5, 21);
  const rows = subsampleGroups(rowsByGroup(Int32Array.from({ length: 80 }, (_, i) => i)), 40, mulberry32(9));
  const sub = subMatrix(X, rows);
  const big = await ref.knn(X, 40);
  const restricted = restrictKnn(big, rows, 5);
  assert.ok(restricted);
  const fresh = await ref.knn(sub, 5);
  assert.deepEqual(restricted.indices, fresh.indices);
  assert.deepEqual(restricted.values, fresh.values);
  assert.deepEqual(restricted.next, fresh.next);
  // A complete list (K = n − 1) always suffices, even for k = m − 1.
  const complete = restrictKnn(await ref.knn(X, 79), rows, 39);
  assert.deepEqual(complete!.indices, (await ref.knn(sub, 39)).indices);
  // Too few cached neighbours: null, never a silently wrong list.
  assert.equal(restrictKnn(await ref.knn(X, 3), rows, 5), null);
});

test('image-level permutation moves whole images and keeps token positions', () => {
  const groups = rowGroups(5, 3, true);
  const p = new RowPermuter(15, 'image', groups);
  const perm = p.next(mulberry32(1));
  for (let r = 0; r < 15; r++) {
    assert.equal(groups.position[perm[r]!], groups.position[r]);
    // all tokens of image g go to the same image
    const g = groups.group[r]!;
    assert.equal(groups.group[perm[r]!], groups.group[perm[g * 3]!]);
  }
  assert.deepEqual([...perm].sort((a, b) => a - b), Array.from({ length: 15 }, (_, i) => i));
  // A per-token subsample with different positions per image cannot be permuted image-wise.
  assert.throws(() => new RowPermuter(4, 'image', rowGroups(5, 3, true, Int32Array.from([0, 1, 4, 9]))), /same token positions/);
});

test('half-samples keep every token of a drawn image', () => {
  const groups = rowGroups(10, 4, true);
  const rows = subsampleGroups(rowsByGroup(groups.group), 5, mulberry32(2));
  assert.equal(rows.length, 20);
  const images = new Set(Array.from(rows, (r) => groups.group[r]!));
  assert.equal(images.size, 5);
});

test('permutation null of independent data: centred on the observed values, p roughly uniform; planted relation p < 0.01', async () => {
  const pvalues: number[] = [];
  const observed: number[] = [];
  const nullMeans: number[] = [];
  const nullSds: number[] = [];
  for (let rep = 0; rep < 40; rep++) {
    const a = feats(randn(60, 5, 1000 + rep), 'A');
    const b = feats(randn(60, 5, 5000 + rep), 'B');
    const r = await score('cknna', a, b, 8);
    const s = await similarityStats('cknna', a, b, 8, r, { permutations: 99, seed: rep });
    assert.equal(s.n_perm, 99);
    pvalues.push(s.p_value!);
    observed.push(r.value);
    nullMeans.push(s.null_mean!);
    nullSds.push(s.null_sd!);
  }
  // Kolmogorov–Smirnov distance of the 40 p-values from U(0, 1). The 1% critical value at n = 40 is 0.252; the
  // p-values are discrete (multiples of 1/100), so allow a little more.
  const sorted = [...pvalues].sort((x, y) => x - y);
  let D = 0;
  sorted.forEach((p, i) => (D = Math.max(D, Math.abs(p - i / 40), Math.abs(p - (i + 1) / 40))));
  assert.ok(D < 0.28, `KS distance ${D.toFixed(3)}; p-values ${sorted.map((p) => p.toFixed(2)).join(' ')}`);
  // Under independence the observed score is a draw from the null: their averages agree within a few null sds/√40.
  const mean = (x: number[]) => x.reduce((s, v) => s + v, 0) / x.length;
  const se = mean(nullSds) / Math.sqrt(40);
  assert.ok(Math.abs(mean(observed) - mean(nullMeans)) < 4 * se, `observed ${mean(observed)} vs null ${mean(nullMeans)} (se ${se})`);

  const { A, B } = planted(60, 5, 0.3, 7);
  const a = feats(A, 'A');
  const bw = feats(B, 'B');
  // Paired cosine needs the same coordinates on both sides: B = A + noise rather than a mixed A·W.
  const near = feats({ rows: 60, cols: 5, data: A.data.map((v, i) => v + 0.3 * randn(60, 5, 8).data[i]!) }, 'A+E');
  for (const metric of ['cknna', 'mutual_knn', 'cycle_knn', 'cka', 'unbiased_cka', 'cosine'] as const) {
    const b = metric === 'cosine' ? near : bw;
    const r = await score(metric, a, b, 8);
    const s = await similarityStats(metric, a, b, 8, r, { permutations: 199, seed: 1 });
    assert.ok(s.p_value! < 0.01, `${metric}: p = ${s.p_value}`);
    assert.ok(r.value > s.null_mean! + 3 * s.null_sd!, metric);
  }
});

test('CKA statistics from centred Grams equal recomputing the metric on permuted and subsampled rows', async () => {
  const { A, B } = planted(30, 4, 1, 3);
  const a = feats(A, 'A');
  const b = feats(B, 'B');
  for (const metric of ['cka', 'unbiased_cka'] as const) {
    const r = await score(metric, a, b, 10);
    // One permutation, same seed: the Gram path (default) vs the feature path (gramLimit 0).
    const viaGram = await similarityStats(metric, a, b, 10, r, { permutations: 3, bootstrap: 3, seed: 5 });
    const viaFeatures = await similarityStats(metric, a, b, 10, r, { permutations: 3, bootstrap: 3, seed: 5, gramLimit: 0 });
    for (const key of ['null_mean', 'null_sd', 'ci_low', 'ci_high'] as const) {
      assert.ok(Math.abs(viaGram[key]! - viaFeatures[key]!) < 1e-9, `${metric} ${key}: ${viaGram[key]} vs ${viaFeatures[key]}`);
    }
  }
});

test('kNN subsample statistics equal recomputing kNN on every subsample', async () => {
  const { A, B } = planted(40, 4, 1, 13);
  const a = feats(A, 'A');
  const b = feats(B, 'B');
  const r = await score('cknna', a, b, 6);
  const s = await similarityStats('cknna', a, b, 6, r, { bootstrap: 5, seed: 2 });
  // Reproduce the draws by hand with fresh searches.
  const { deriveSeed } = await import('../src/stats/index.js');
  const rng = mulberry32(deriveSeed(2, 'boot', 'cknna'));
  const byGroup = rowsByGroup(Int32Array.from({ length: 40 }, (_, i) => i));
  const draws: number[] = [];
  for (let t = 0; t < 5; t++) {
    const rows = subsampleGroups(byGroup, 20, rng);
    const km = scaledK(6, 20, 40);
    const v = await score('cknna', new Features(subMatrix(a.x, rows), ref, 'a'), new Features(subMatrix(b.x, rows), ref, 'b'), km);
    draws.push(v.value);
  }
  const mean = draws.reduce((x, y) => x + y, 0) / 5;
  const expectedLow = r.value - (quantile(draws, 0.975) - mean);
  assert.ok(Math.abs(s.ci_low! - expectedLow) < 1e-12, `${s.ci_low} vs ${expectedLow}`);
  assert.equal(s.boot_k, 3);
  assert.equal(s.boot_m, 20);
});

test('half-sampling CI covers the expected score of a planted relation, with about the right width', async () => {
  const n = 80;
  const k = 10;
  const gen = (seed: number) => planted(n, 6, 1.5, seed);
  // The estimand: the expected CKNNA at this n and k, from independent datasets of the same model.
  const truth: number[] = [];
  for (let rep = 0; rep < 40; rep++) {
    const { A, B } = gen(50_000 + rep * 7);
    truth.push((await score('cknna', feats(A, 'A'), feats(B, 'B'), k)).value);
  }
  const mu = truth.reduce((x, y) => x + y, 0) / truth.length;
  const sd = Math.sqrt(truth.reduce((s, v) => s + (v - mu) ** 2, 0) / (truth.length - 1));
  let covered = 0;
  const halfWidths: number[] = [];
  for (let rep = 0; rep < 20; rep++) {
    const { A, B } = gen(90_000 + rep * 7);
    const a = feats(A, 'A');
    const b = feats(B, 'B');
    const r = await score('cknna', a, b, k);
    const s = await similarityStats('cknna', a, b, k, r, { bootstrap: 60, ci: 0.95, seed: rep });
    if (s.ci_low! <= mu && mu <= s.ci_high!) covered++;
    halfWidths.push((s.ci_high! - s.ci_low!) / 2);
    assert.ok(s.boot_scheme!.includes('half-sampling'));
  }
  assert.ok(covered >= 15, `covered ${covered}/20 (expected ≈ 19), truth ${mu.toFixed(4)} ± ${sd.toFixed(4)}`);
  // A trivially wide interval would also cover: the half-width must be close to 1.96 × the estimator's real sd.
  const ratio = halfWidths.reduce((x, y) => x + y, 0) / halfWidths.length / (1.96 * sd);
  assert.ok(ratio > 0.5 && ratio < 2, `mean half-width / (1.96·sd) = ${ratio.toFixed(2)}`);
});
