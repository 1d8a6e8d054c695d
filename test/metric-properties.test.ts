/**
 * Every flag a metric declares, checked on random data (repsim-style): a flag set to true must hold, and a flag set
 * to false must visibly fail on some seed, so a metric cannot claim an invariance it lacks nor hide one it has.
 *
 * Tolerances: every ratio here is x/(√p + 1e-6), so scaling the inputs moves a value by about 1e-6/√p relative (and
 * by rounding, ~1e-12, under rotations and permutations); HOLDS = 1e-5 absorbs that. A wrong flag moves a kNN metric
 * by at least one neighbour in n·k (1/350 here) and a feature-space metric by far more than BREAKS = 1e-3 on some seed
 * of near-aligned random pairs. Random continuous data has no ties, so a rotation cannot reorder neighbours.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { similarityStats } from '../analysis/stats.js';
import type { Matrix } from '../src/core/matrix.js';
import { createEngine } from '../src/engine/index.js';
import {
  computeMetric,
  defineFeatureMetric,
  defineKnnMetric,
  Features,
  METRICS,
  recomputedStatistic,
  type FeatureMetricSpec,
  type Invariances,
  type MetricSpec,
} from '../src/metrics/index.js';
import { matmul, randn, randomRotation, scale } from './helpers.js';

const ref = await createEngine('ref');
const N = 70;
const D = 6;
const K = 5;
const SEEDS = [11, 12, 13, 14];
const HOLDS = 1e-5;
const BREAKS = 1e-3;

async function value(spec: MetricSpec, A: Matrix, B: Matrix): Promise<number> {
  return (await computeMetric(spec, new Features(A, ref, 'A'), new Features(B, ref, 'B'), K, 'none')).value;
}

function map(x: Matrix, f: (v: number, row: number, col: number) => number): Matrix {
  return { rows: x.rows, cols: x.cols, data: Float64Array.from(x.data, (v, i) => f(v, Math.floor(i / x.cols), i % x.cols)) };
}

/** A near-aligned pair: B is a random linear map of A plus noise, so every metric sits well inside its range. */
function pair(seed: number): { A: Matrix; B: Matrix } {
  const A = randn(N, D, seed);
  const W = randn(D, D, seed + 1000).data;
  const noise = randn(N, D, seed + 2000);
  const B = map(matmul(A, W, D), (v, i, c) => v + 0.7 * noise.data[i * D + c]!);
  return { A, B };
}

/** What each flag does to (A, B); every transform is drawn from the seed. */
const TRANSFORMS: Record<keyof Invariances, (A: Matrix, B: Matrix, seed: number) => [Matrix, Matrix][]> = {
  orthogonalEither: (A, B, seed) => [
    [matmul(A, randomRotation(D, seed + 1), D), B],
    [A, matmul(B, randomRotation(D, seed + 2), D)],
  ],
  orthogonalBoth: (A, B, seed) => {
    const Q = randomRotation(D, seed + 3);
    return [[matmul(A, Q, D), matmul(B, Q, D)]];
  },
  isotropicScaling: (A, B) => [
    [scale(A, 3), B],
    [A, scale(B, 0.25)],
  ],
  rowScaling: (A, B, seed) => {
    const s = randn(N, 2, seed + 4).data.map((v) => Math.exp(0.5 * v));
    return [[map(A, (v, i) => v * s[2 * i]!), map(B, (v, i) => v * s[2 * i + 1]!)]];
  },
  translation: (A, B, seed) => {
    const t = randn(2, D, seed + 5).data.map((v) => 3 * v);
    return [
      [map(A, (v, _, c) => v + t[c]!), B],
      [A, map(B, (v, _, c) => v + t[D + c]!)],
    ];
  },
  jointPermutation: (A, B, seed) => {
    const key = randn(N, 1, seed + 6).data;
    const perm = Int32Array.from({ length: N }, (_, i) => i).sort((p, q) => key[p]! - key[q]!);
    const permute = (x: Matrix) => map(x, (_, i, c) => x.data[perm[i]! * D + c]!);
    return [[permute(A), permute(B)]];
  },
};

/** Largest change of the metric under each flag's transforms, over all seeds; plus the symmetry gap and the values. */
async function measure(spec: MetricSpec) {
  const change = Object.fromEntries(Object.keys(TRANSFORMS).map((f) => [f, 0])) as Record<keyof Invariances, number>;
  let asymmetry = 0;
  const values: number[] = [];
  for (const seed of SEEDS) {
    const { A, B } = pair(seed);
    const v = await value(spec, A, B);
    values.push(v, await value(spec, A, A));
    asymmetry = Math.max(asymmetry, Math.abs(v - (await value(spec, B, A))));
    for (const [flag, transform] of Object.entries(TRANSFORMS) as [keyof Invariances, (typeof TRANSFORMS)[keyof Invariances]][]) {
      for (const [Ta, Tb] of transform(A, B, seed)) change[flag] = Math.max(change[flag], Math.abs((await value(spec, Ta, Tb)) - v));
    }
  }
  return { change, asymmetry, values };
}

type Measured = Awaited<ReturnType<typeof measure>>;

function checkFlags(spec: MetricSpec, { change, asymmetry, values }: Measured): void {
  for (const flag of Object.keys(TRANSFORMS) as (keyof Invariances)[]) {
    if (spec.invariantTo[flag]) assert.ok(change[flag] <= HOLDS, `${spec.name} declares ${flag} but moves by ${change[flag]}`);
    else assert.ok(change[flag] > BREAKS, `${spec.name} declares no ${flag} yet moves by at most ${change[flag]}: the flag should be true`);
  }
  if (spec.symmetric) assert.ok(asymmetry <= HOLDS, `${spec.name} declares symmetry but m(A,B) − m(B,A) reaches ${asymmetry}`);
  else assert.ok(asymmetry > BREAKS, `${spec.name} declares no symmetry yet m(A,B) = m(B,A) on every seed`);
  const [lo, hi] = spec.range;
  for (const v of values) assert.ok(v >= lo && v <= hi, `${spec.name} = ${v} outside its range [${lo}, ${hi}]`);
  assert.deepEqual(spec.invariances.length, Object.values(spec.invariantTo).filter(Boolean).length);
}

async function checkDeclaredFlags(spec: MetricSpec): Promise<void> {
  checkFlags(spec, await measure(spec));
}

for (const spec of Object.values(METRICS)) {
  test(`${spec.name}: every declared flag holds, every undeclared one fails, values stay in range`, async () => {
    const measured = await measure(spec);
    checkFlags(spec, measured);
    // The check has teeth: the same measurements refuse the spec with any one flag flipped.
    for (const flag of Object.keys(spec.invariantTo) as (keyof Invariances)[]) {
      const flipped = { ...spec, invariantTo: { ...spec.invariantTo, [flag]: !spec.invariantTo[flag] } };
      assert.throws(() => checkFlags(flipped, measured), assert.AssertionError, `${spec.name} with ${flag} flipped still passes`);
    }
    assert.throws(() => checkFlags({ ...spec, symmetric: !spec.symmetric }, measured), assert.AssertionError, `${spec.name} with symmetric flipped still passes`);
  });
}

/**
 * "A new metric is one file plus one registry line": specs written here, outside the registry, go through
 * computeMetric, the property check and the statistics with no other file touched.
 */
const topNeighbour = defineKnnMetric({
  name: 'top_neighbour',
  title: 'nearest-neighbour agreement',
  definition: 'mean_i 1[nn_A(i) = nn_B(i)]',
  range: [0, 1],
  symmetric: true,
  needsSameDim: false,
  minN: 3,
  minNReason: 'a nearest neighbour other than the row itself',
  invariantTo: { orthogonalEither: true, orthogonalBoth: true, isotropicScaling: true, rowScaling: false, translation: false, jointPermutation: true },
  fromKnn: (a, b) => {
    let same = 0;
    for (let i = 0; i < a.n; i++) if (a.indices[i * a.k] === b.indices[i * b.k]) same++;
    return { value: same / a.n };
  },
});

const meanRowDot: FeatureMetricSpec = defineFeatureMetric({
  name: 'mean_row_dot',
  title: 'mean paired inner product',
  definition: 'Σ_i ⟨a_i, b_i⟩ / (‖A‖_F·‖B‖_F)',
  range: [-1, 1],
  symmetric: true,
  needsSameDim: true,
  minN: 1,
  minNReason: 'a mean over rows',
  invariantTo: { orthogonalEither: false, orthogonalBoth: true, isotropicScaling: true, rowScaling: false, translation: false, jointPermutation: true },
  fromFeatures: async (a, b) => {
    let ab = 0;
    let aa = 0;
    let bb = 0;
    for (let i = 0; i < a.x.data.length; i++) {
      ab += a.x.data[i]! * b.x.data[i]!;
      aa += a.x.data[i]! ** 2;
      bb += b.x.data[i]! ** 2;
    }
    return { value: ab / Math.sqrt(aa * bb) };
  },
  statistic: async (a, b, options) => recomputedStatistic(meanRowDot, a, b, options),
});

for (const spec of [topNeighbour, meanRowDot] as MetricSpec[]) {
  test(`a metric outside the registry (${spec.name}) runs through computeMetric, the flag check and the statistics`, async () => {
    await checkDeclaredFlags(spec);
    const { A, B } = pair(21);
    const [a, b] = [new Features(A, ref, 'A'), new Features(B, ref, 'B')];
    const observed = await computeMetric(spec, a, b, K, 'none');
    assert.equal(observed.metric, spec.name);
    assert.equal(observed.k, spec.needsKnn ? K : null);
    const stats = await similarityStats(spec, a, b, K, observed, { permutations: 20, bootstrap: 10, seed: 3 });
    assert.equal(stats.n_perm, 20);
    assert.equal(stats.n_boot, 10);
    assert.ok(stats.p_value! > 0 && stats.p_value! <= 1);
    assert.ok(stats.ci_low! <= stats.ci_high!);
    assert.ok(Number.isFinite(stats.null_mean));
  });
}
