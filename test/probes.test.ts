import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { readProbes, runProbes, writeProbes } from '../analysis/probes.js';
import { InputError } from '../src/core/errors.js';
import type { Matrix } from '../src/core/matrix.js';
import { fitLogistic, fitRidge, fitStandardiser, groupFolds, predictRidge, runProbe } from '../src/probes/index.js';
import { CaptureWriter } from '../src/store/capture.js';
import { mulberry32 } from '../src/stats/index.js';
import { randn } from './helpers.js';

/** n images, d features, C classes: label = argmax of a random linear map (a planted linear signal). */
function plantedClasses(n: number, d: number, C: number, seed: number) {
  const X = randn(n, d, seed);
  const W = randn(d, C, seed + 1).data;
  const labels = Array.from({ length: n }, (_, i) => {
    let best = 0;
    let bestV = -Infinity;
    for (let c = 0; c < C; c++) {
      let s = 0;
      for (let j = 0; j < d; j++) s += X.data[i * d + j]! * W[j * C + c]!;
      if (s > bestV) [best, bestV] = [c, s];
    }
    return best;
  });
  return { X, labels };
}

const pooled = (n: number) => ({ groups: Int32Array.from({ length: n }, (_, i) => i), positions: new Int32Array(n) });

test('logistic regression reaches the penalised optimum (gradient ≈ 0, computed independently)', () => {
  const { X, labels } = plantedClasses(80, 5, 3, 1);
  const y = Int32Array.from(labels);
  const lambda = 0.05;
  const model = fitLogistic(Float64Array.from(X.data), 80, 5, y, 3, lambda);
  assert.ok(model.converged);
  const gW = new Float64Array(15);
  const gb = new Float64Array(3);
  for (let i = 0; i < 80; i++) {
    const z = [0, 1, 2].map((c) => model.b[c]! + [0, 1, 2, 3, 4].reduce((s, j) => s + X.data[i * 5 + j]! * model.W[j * 3 + c]!, 0));
    const mx = Math.max(...z);
    const e = z.map((v) => Math.exp(v - mx));
    const sum = e.reduce((a, b) => a + b, 0);
    for (let c = 0; c < 3; c++) {
      const r = e[c]! / sum - (c === y[i] ? 1 : 0);
      gb[c]! += r / 80;
      for (let j = 0; j < 5; j++) gW[j * 3 + c]! += (r * X.data[i * 5 + j]!) / 80;
    }
  }
  for (let t = 0; t < 15; t++) gW[t]! += lambda * model.W[t]!;
  const maxGrad = Math.max(...gW.map(Math.abs), ...gb.map(Math.abs));
  assert.ok(maxGrad < 1e-5, `max |gradient| ${maxGrad}`);
});

test('ridge solves its normal equations in both the primal (d ≤ n) and dual (d > n) forms', () => {
  for (const [n, d] of [
    [40, 6],
    [12, 30],
  ] as const) {
    const X = randn(n, d, n + d).data;
    const y = randn(n, 1, 7).data;
    const lambda = 0.1;
    const model = fitRidge(X, n, d, y, lambda);
    const pred = predictRidge(model, X, n);
    // Stationarity: Xᵀ(ŷ − y)/n + λw = 0 and Σ(ŷ − y) = 0 (unpenalised intercept).
    let resSum = 0;
    for (let i = 0; i < n; i++) resSum += pred[i]! - y[i]!;
    assert.ok(Math.abs(resSum) < 1e-8, `intercept condition ${resSum}`);
    for (let j = 0; j < d; j++) {
      let g = 0;
      for (let i = 0; i < n; i++) g += (X[i * d + j]! * (pred[i]! - y[i]!)) / n;
      assert.ok(Math.abs(g + lambda * model.w[j]!) < 1e-8, `d = ${d}, feature ${j}: ${g + lambda * model.w[j]!}`);
    }
  }
});

test('planted linear signal: high cross-validated accuracy, CI above chance, positive selectivity', () => {
  const { X, labels } = plantedClasses(240, 10, 3, 5);
  const r = runProbe({ X, ...pooled(240), labels }, { task: 'classify', folds: 5, seed: 1, l2: 1e-2, control: { by: 'image' }, bootstrap: 300 });
  assert.ok(r.score > 0.85, `accuracy ${r.score}`);
  assert.ok(r.ci_low > 0.75 && r.ci_low < r.score && r.score < r.ci_high, JSON.stringify([r.ci_low, r.score, r.ci_high]));
  assert.match(r.ci_method, /Wilson/);
  assert.ok(r.selectivity! > 0.3 && r.selectivity_ci_low! > 0, `selectivity ${r.selectivity} [${r.selectivity_ci_low}, ${r.selectivity_ci_high}]`);
  assert.equal(r.confusion!.flat().reduce((a, b) => a + b, 0), 240);
  assert.equal(r.folds_converged, 5);
});

test('pure noise: accuracy at chance, inside its CI', () => {
  const X = randn(240, 10, 77);
  const rng = mulberry32(3);
  const labels = Array.from({ length: 240 }, () => Math.floor(rng() * 3));
  const r = runProbe({ X, ...pooled(240), labels }, { task: 'classify', folds: 5, seed: 2, l2: 1e-2, control: null });
  assert.ok(r.ci_low <= 1 / 3 && 1 / 3 <= r.ci_high, `accuracy ${r.score} [${r.ci_low}, ${r.ci_high}]`);
  assert.ok(r.ci_high - r.ci_low < 0.15);
});

test('CV split never puts two tokens of one image on both sides: memorising an image does not help', () => {
  // 60 images × 8 tokens. Each image has a random fingerprint shared by all its tokens (plus token noise) and a
  // random label. If tokens of one image were split across train and test, the probe would recognise the
  // fingerprint and score far above chance.
  const G = 60;
  const T = 8;
  // d > G: any labelling of the fingerprints is linearly separable, so a leaky split would be memorised (≈ 100%).
  const d = 64;
  const fp = randn(G, d, 9).data;
  const noise = randn(G * T, d, 10).data;
  const X: Matrix = { rows: G * T, cols: d, data: Float64Array.from({ length: G * T * d }, (_, t) => fp[Math.floor(t / (T * d)) * d + (t % d)]! + 0.05 * noise[t]!) };
  const groups = Int32Array.from({ length: G * T }, (_, r) => Math.floor(r / T));
  const positions = Int32Array.from({ length: G * T }, (_, r) => r % T);
  const rng = mulberry32(4);
  const labels = Array.from({ length: G }, () => (rng() < 0.5 ? 'a' : 'b'));
  const r = runProbe({ X, groups, positions, labels }, { task: 'classify', folds: 5, seed: 3, l2: 1e-4, control: null, bootstrap: 300 });
  assert.ok(r.score < 0.68, `accuracy ${r.score}: tokens of one image leaked across the split`);
  assert.match(r.ci_method, /bootstrap over images/);
  // Direct check of the folds: every image in exactly one fold, each fold non-empty, strata balanced.
  const images = Int32Array.from({ length: G }, (_, i) => i);
  const strata = labels.map((l) => (l === 'a' ? 0 : 1));
  const folds = groupFolds(images, 5, mulberry32(1), strata);
  assert.equal(folds.size, G);
  for (let f = 0; f < 5; f++) {
    const members = [...folds.entries()].filter(([, v]) => v === f).map(([g]) => g);
    assert.ok(members.length === 12, `fold ${f} has ${members.length}`);
    const a = members.filter((g) => strata[g] === 0).length;
    const totalA = strata.filter((s) => s === 0).length;
    assert.ok(Math.abs(a - totalA / 5) <= 1, `fold ${f}: ${a} of class a (expected ≈ ${totalA / 5})`);
  }
});

test('standardiser statistics come from the training rows only', () => {
  const X = Float64Array.from([1, 2, 3, 1000]);
  const s = fitStandardiser(X, 1, Int32Array.from([0, 1, 2]));
  assert.equal(s.mean[0], 2);
  assert.ok(Math.abs(s.scale[0]! - 1 / Math.sqrt(2 / 3)) < 1e-12);
});

test('position control: a probe that can read token position scores high on the control task', () => {
  // Features = one-hot of token position + noise; labels random per image: the real task is at chance, while the
  // control (a random label per position) is learnable, so selectivity is strongly negative.
  const G = 40;
  const T = 6;
  const noise = randn(G * T, T, 12).data;
  const X: Matrix = { rows: G * T, cols: T, data: Float64Array.from({ length: G * T * T }, (_, t) => (Math.floor(t / T) % T === t % T ? 1 : 0) + 0.1 * noise[t]!) };
  const groups = Int32Array.from({ length: G * T }, (_, r) => Math.floor(r / T));
  const positions = Int32Array.from({ length: G * T }, (_, r) => r % T);
  const rng = mulberry32(8);
  const labels = Array.from({ length: G }, () => Math.floor(rng() * 3));
  const r = runProbe({ X, groups, positions, labels }, { task: 'classify', folds: 4, seed: 5, l2: 1e-3, control: { by: 'position' }, bootstrap: 200 });
  assert.ok(r.control_score! > 0.9, `control accuracy ${r.control_score}`);
  assert.ok(r.selectivity! < -0.3, `selectivity ${r.selectivity}`);
});

test('ridge probe on a continuous planted signal: high R², noise near 0', () => {
  const X = randn(150, 8, 21);
  const w = [0.5, -1, 2, 0, 0, 1, 0, -0.5];
  const e = randn(150, 1, 22).data;
  const labels = Array.from({ length: 150 }, (_, i) => w.reduce((s, v, j) => s + v * X.data[i * 8 + j]!, 0) + 0.2 * e[i]!);
  const r = runProbe({ X, ...pooled(150), labels }, { task: 'regress', folds: 5, seed: 1, l2: 1e-3, control: { by: 'image' }, bootstrap: 200 });
  assert.equal(r.score_name, 'r2');
  assert.ok(r.score > 0.9 && r.ci_low > 0.8, `R² ${r.score} [${r.ci_low}, ${r.ci_high}]`);
  assert.ok(r.control_score! < 0.1, `control R² ${r.control_score}`);
  const noise = runProbe({ X, ...pooled(150), labels: Array.from(e) }, { task: 'regress', folds: 5, seed: 1, l2: 1, control: null, bootstrap: 200 });
  assert.ok(noise.score < 0.05 && noise.ci_low < 0, `noise R² ${noise.score}`);
});

test('runProbes on a capture: a row per layer and per target, probes.json written and merged', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'vl-probes-'));
  try {
    const n = 40;
    const T = 4;
    const { X, labels } = plantedClasses(n * T, 6, 2, 31);
    // Layer 0 carries the label's signal in every token; layer 1 is noise; the target carries it too.
    const imageLabel = Array.from({ length: n }, (_, i) => labels[i * T]!);
    const signal = Float32Array.from({ length: n * T * 6 }, (_, t) => X.data[Math.floor(t / (T * 6)) * T * 6 + (t % 6)]!);
    const noise = Float32Array.from(randn(n * T, 6, 32).data);
    const w = await CaptureWriter.create(dir, {
      model: { name: 'test' },
      variant: 'baseline',
      token_layout: { kind: 'image', tokens: T, source_tokens: T, grid: [2, 2], pooling: 'none' },
      layers: [
        { name: 'embed', index: 0, dim: 6 },
        { name: 'blocks.0.out', index: 1, dim: 6 },
      ],
      targets: [{ name: 'clip', dim: 6, tokens: T }],
    });
    await w.appendBatch({
      ids: Array.from({ length: n }, (_, i) => `img-${i}`),
      labels: { cls: imageLabel.map((c) => (c ? 'yes' : 'no')), count: imageLabel },
      layers: { embed: { samples: n, tokens: T, dim: 6, data: signal }, 'blocks.0.out': { samples: n, tokens: T, dim: 6, data: noise } },
      targets: { clip: { samples: n, tokens: T, dim: 6, data: signal } },
    });
    const report = await runProbes(dir, { label: 'cls', tokenMode: 'mean', folds: 4, seed: 1, bootstrap: 100 });
    assert.deepEqual(report.rows.map((r) => `${r.source}:${r.name}`), ['layer:embed', 'layer:blocks.0.out', 'target:clip']);
    assert.deepEqual(report.classes, ['no', 'yes']);
    assert.ok(report.rows[0]!.score > report.rows[1]!.score + 0.2, `signal ${report.rows[0]!.score} vs noise ${report.rows[1]!.score}`);
    assert.equal(report.control_by, 'image');
    await writeProbes(dir, report);
    const perToken = await runProbes(dir, { label: 'cls', tokenMode: 'per-token', maxTokens: 2, folds: 4, seed: 1, bootstrap: 50, targets: false });
    assert.equal(perToken.control_by, 'position');
    assert.equal(perToken.rows[0]!.n_rows, n * 2);
    await writeProbes(dir, perToken);
    await writeProbes(dir, report); // same key: replaced, not duplicated
    const file = await readProbes(dir);
    assert.equal(file.probes.length, 2);
    assert.equal(JSON.parse(await readFile(join(dir, 'probes.json'), 'utf8')).format, 'viral-lens.probes');
    await assert.rejects(runProbes(dir, { label: 'nope', tokenMode: 'mean' }), /no label 'nope'/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('probes.json: a corrupt or foreign file is a one-line InputError naming the file, a missing one is empty', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'viral-lens-probes-'));
  try {
    assert.deepEqual((await readProbes(dir)).probes, []);
    await writeFile(join(dir, 'probes.json'), '{"format": "viral-lens.probes", "version": 1, "probes": [');
    await assert.rejects(readProbes(dir), (e: unknown) => e instanceof InputError && /probes\.json: invalid JSON/.test(e.message));
    await writeFile(join(dir, 'probes.json'), JSON.stringify({ format: 'viral-lens.probes', version: 1, probes: [{ label: 'count', token_mode: 'mean', rows: [{ source: 'layer', name: 'embed', layer_index: 'zero', score: 0.5 }] }] }));
    await assert.rejects(readProbes(dir), (e: unknown) => e instanceof InputError && /probes\.json: probes\[0\]\.rows\[0\]\.layer_index/.test(e.message));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
