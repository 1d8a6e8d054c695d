import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { EigenvalueDecomposition, Matrix as MlMatrix } from 'ml-matrix';
import { runPcaGrid, runUmap } from '../analysis/embeddings.js';
import {
  applyProcrustes,
  pca,
  pcaRgbGrid,
  procrustes,
  rgbHex,
  robustUnit,
  topEigen,
  umapEmbed,
} from '../src/embeddings/index.js';
import { createEngine } from '../src/engine/index.js';
import { InputError } from '../src/core/errors.js';
import type { Matrix } from '../src/core/matrix.js';
import { CaptureWriter } from '../src/store/capture.js';
import { randn, randomRotation } from './helpers.js';

const ref = await createEngine('ref');

/** Reference PCA: full eigendecomposition of the d×d covariance (ml-matrix), largest first. */
function densePca(x: Matrix, c: number): { values: number[]; scores: number[][] } {
  const { rows: n, cols: d } = x;
  const mean = Array.from({ length: d }, (_, j) => {
    let s = 0;
    for (let i = 0; i < n; i++) s += x.data[i * d + j]!;
    return s / n;
  });
  const xc = new MlMatrix(n, d);
  for (let i = 0; i < n; i++) for (let j = 0; j < d; j++) xc.set(i, j, x.data[i * d + j]! - mean[j]!);
  const evd = new EigenvalueDecomposition(xc.transpose().mmul(xc), { assumeSymmetric: true });
  const order = evd.realEigenvalues.map((v, i) => [v, i] as const).sort((a, b) => b[0] - a[0]).slice(0, c);
  const scores = xc.mmul(evd.eigenvectorMatrix).to2DArray().map((row) => order.map(([, i]) => row[i]!));
  return { values: order.map(([v]) => v / (n - 1)), scores };
}

/** Data with a clear spectrum: Gaussian scores with decreasing scales, rotated into d dims. */
function spectral(n: number, d: number, scales: number[], seed: number): Matrix {
  const z = randn(n, d, seed).data;
  const rot = randomRotation(d, seed + 1);
  const out = new Float64Array(n * d);
  for (let i = 0; i < n; i++)
    for (let j = 0; j < d; j++) {
      let s = 0;
      for (let k = 0; k < d; k++) s += z[i * d + k]! * (scales[k] ?? 0.05) * rot[k * d + j]!;
      out[i * d + j] = s + 3; // an offset that centring must remove
    }
  return { rows: n, cols: d, data: out };
}

test('pca matches a dense eigendecomposition on both the Gram side (n ≤ d) and the covariance side (n > d)', async () => {
  for (const [n, d] of [
    [60, 80],
    [120, 20],
  ] as const) {
    const x = spectral(n, d, [5, 3, 2, 1.2, 1], 7 + n);
    const want = densePca(x, 3);
    for (const engine of [undefined, ref]) {
      const got = await pca(x, 3, engine ? { engine } : {});
      assert.equal(got.components, 3);
      assert.ok(got.converged);
      for (let j = 0; j < 3; j++) {
        assert.ok(Math.abs(got.variance[j]! - want.values[j]!) < 1e-8 * want.values[0]!, `n=${n} d=${d} variance ${j}`);
        // Scores agree up to sign.
        const sign = Math.sign(got.scores[j]!) * Math.sign(want.scores[0]![j]!);
        for (let i = 0; i < n; i++) assert.ok(Math.abs(got.scores[i * 3 + j]! - sign * want.scores[i]![j]!) < 1e-6, `n=${n} d=${d} score ${i},${j}`);
      }
      const ratioSum = got.explainedRatio.reduce((a, b) => a + b, 0);
      assert.ok(ratioSum > 0.5 && ratioSum <= 1 + 1e-12);
    }
  }
});

test('pca signs: largest-magnitude score positive, or following alignTo', async () => {
  const x = spectral(50, 30, [4, 2, 1], 3);
  const a = await pca(x, 3);
  for (let j = 0; j < 3; j++) {
    let best = 0;
    for (let i = 0; i < 50; i++) if (Math.abs(a.scores[i * 3 + j]!) > Math.abs(best)) best = a.scores[i * 3 + j]!;
    assert.ok(best > 0);
  }
  const flipped = Float64Array.from(a.scores, (v, i) => (i % 3 === 1 ? -v : v));
  const b = await pca(x, 3, { alignTo: { scores: flipped, components: 3 } });
  for (let i = 0; i < 50; i++) {
    assert.equal(b.scores[i * 3]!, a.scores[i * 3]!);
    assert.equal(b.scores[i * 3 + 1]!, -a.scores[i * 3 + 1]!);
  }
});

test('topEigen (subspace iteration) finds the top eigenpairs of a 200×200 matrix with a known spectrum', () => {
  const m = 200;
  const q = randomRotation(m, 11);
  const lambda = Array.from({ length: m }, (_, i) => (i < 4 ? [10, 7, 5, 4][i]! : 3 * Math.exp(-i / 30)));
  const s = new Float64Array(m * m);
  for (let i = 0; i < m; i++)
    for (let j = 0; j < m; j++) {
      let acc = 0;
      for (let k = 0; k < m; k++) acc += q[k * m + i]! * lambda[k]! * q[k * m + j]!;
      s[i * m + j] = acc;
    }
  const r = topEigen(s, m, 4);
  assert.ok(r.converged && r.iterations > 0);
  for (let k = 0; k < 4; k++) {
    assert.ok(Math.abs(r.values[k]! - lambda[k]!) < 1e-6, `λ${k} = ${r.values[k]}`);
    let dot = 0;
    for (let i = 0; i < m; i++) dot += r.vectors[i * 4 + k]! * q[k * m + i]!;
    assert.ok(Math.abs(Math.abs(dot) - 1) < 1e-6, `eigenvector ${k}: |cos| = ${Math.abs(dot)}`);
  }
});

test('procrustes recovers a rotation + reflection + scale + shift exactly, and refuses reflections when asked', () => {
  const n = 40;
  const x = randn(n, 2, 5).data;
  const theta = 0.7;
  const y = new Float64Array(n * 2);
  for (let i = 0; i < n; i++) {
    // Rotate, mirror (x ↦ −x), scale by 2.5, shift.
    const a = x[i * 2]!;
    const b = x[i * 2 + 1]!;
    y[i * 2] = -2.5 * (a * Math.cos(theta) - b * Math.sin(theta)) + 4;
    y[i * 2 + 1] = 2.5 * (a * Math.sin(theta) + b * Math.cos(theta)) - 1;
  }
  const fit = procrustes(x, y, n, 2);
  assert.ok(fit.rmsd < 1e-10, `rmsd ${fit.rmsd}`);
  assert.ok(Math.abs(fit.scale - 2.5) < 1e-10);
  const aligned = applyProcrustes(fit, x, n, 2);
  for (let i = 0; i < n * 2; i++) assert.ok(Math.abs(aligned[i]! - y[i]!) < 1e-9);
  const proper = procrustes(x, y, n, 2, { reflection: false });
  const det = proper.rotation[0]! * proper.rotation[3]! - proper.rotation[1]! * proper.rotation[2]!;
  assert.ok(det > 0, 'a proper rotation');
  assert.ok(proper.relativeRmsd > 0.3, 'a mirror image cannot be matched without reflection');
  assert.throws(() => procrustes(x, y.subarray(2), n, 2), InputError);
});

test('robustUnit: median → ½, quartiles ↦ ½ ± ½·tanh(½), outliers saturate, flat channels are grey', () => {
  const v = [1, 2, 3, 4, 5, 1000];
  const u = robustUnit(v);
  // numpy-style quantiles of [1,2,3,4,5,1000]: q25 = 2.25, median = 3.5, q75 = 4.75 → IQR 2.5.
  assert.ok(Math.abs(u[2]! - (0.5 + 0.5 * Math.tanh((3 - 3.5) / 2.5))) < 1e-12);
  assert.ok(u[5]! > 0.999999, 'outlier saturates');
  for (let i = 1; i < v.length; i++) assert.ok(u[i]! > u[i - 1]!, 'monotone');
  assert.deepEqual(Array.from(robustUnit([2, 2, 2, 2])), [0.5, 0.5, 0.5, 0.5]);
  assert.equal(rgbHex(Float64Array.from([1, 0, 0.5]), 0), '#ff0080');
});

test('pcaRgbGrid: a token grid whose main variation runs down the rows gets a red channel that increases down the rows', async () => {
  const rows = 6;
  const cols = 5;
  const d = 12;
  const noise = randn(rows * cols, d, 9).data;
  const dir = randn(1, d, 10).data;
  const tokens = new Float64Array(rows * cols * d);
  for (let r = 0; r < rows; r++)
    for (let c = 0; c < cols; c++)
      for (let j = 0; j < d; j++) tokens[(r * cols + c) * d + j] = 3 * (r - 2.5) * dir[j]! + 0.05 * noise[(r * cols + c) * d + j]!;
  const g = await pcaRgbGrid({ rows: rows * cols, cols: d, data: tokens }, [rows, cols]);
  assert.equal(g.rgb.length, rows * cols * 3);
  assert.ok(g.explained[0]! > 0.95);
  const rowMeanRed = Array.from({ length: rows }, (_, r) => {
    let s = 0;
    for (let c = 0; c < cols; c++) s += g.rgb[(r * cols + c) * 3]!;
    return s / cols;
  });
  const increasing = rowMeanRed.every((v, i) => i === 0 || v > rowMeanRed[i - 1]!);
  const decreasing = rowMeanRed.every((v, i) => i === 0 || v < rowMeanRed[i - 1]!);
  assert.ok(increasing || decreasing, `red by row: ${rowMeanRed.map((v) => v.toFixed(2)).join(' ')}`);
  for (const v of g.rgb) assert.ok(v >= 0 && v <= 1);
  await assert.rejects(pcaRgbGrid({ rows: rows * cols, cols: d, data: tokens }, [4, 4]), /grid 4×4 = 16 cells but the image has 30 tokens/);
});

/** Three well-separated Gaussian clusters in 32 dims. */
function clusters(perCluster: number, seed: number): { x: Matrix; label: number[] } {
  const d = 32;
  const centres = randn(3, d, seed).data;
  const noise = randn(3 * perCluster, d, seed + 1).data;
  const data = new Float64Array(3 * perCluster * d);
  const label: number[] = [];
  for (let i = 0; i < 3 * perCluster; i++) {
    const c = Math.floor(i / perCluster);
    label.push(c);
    for (let j = 0; j < d; j++) data[i * d + j] = 4 * centres[c * d + j]! + 0.6 * noise[i * d + j]!;
  }
  return { x: { rows: 3 * perCluster, cols: d, data }, label };
}

test('umapEmbed: seeded (same seed → same map, other seed → another map), finite, and keeps clusters apart', async () => {
  const { x, label } = clusters(30, 21);
  const a = await umapEmbed(x, ref, { seed: 1, nEpochs: 120 });
  const b = await umapEmbed(x, ref, { seed: 1, nEpochs: 120 });
  const c = await umapEmbed(x, ref, { seed: 2, nEpochs: 120 });
  assert.deepEqual(a.coords, b.coords);
  assert.notDeepEqual(a.coords, c.coords);
  assert.ok(a.coords.every(Number.isFinite));
  // 5 nearest neighbours in the 2-D map share the cluster label.
  let same = 0;
  const n = x.rows;
  for (let i = 0; i < n; i++) {
    const dist = Array.from({ length: n }, (_, j) => [Math.hypot(a.coords[i * 2]! - a.coords[j * 2]!, a.coords[i * 2 + 1]! - a.coords[j * 2 + 1]!), j] as const)
      .filter(([, j]) => j !== i)
      .sort((p, q) => p[0] - q[0])
      .slice(0, 5);
    same += dist.filter(([, j]) => label[j] === label[i]).length;
  }
  assert.ok(same / (5 * n) > 0.95, `neighbour label agreement ${same / (5 * n)}`);
  const ac = new AbortController();
  ac.abort();
  await assert.rejects(umapEmbed(x, ref, { seed: 1, signal: ac.signal }), { name: 'AbortError' });
});

/**
 * Two tiny captures of the same samples: `b` is `a` with some feature axes negated, an orthogonal map that keeps
 * every inner product bit for bit (a general rotation would change the last bits, and UMAP's optimisation amplifies
 * any difference), so the same seed must give the same map up to the axes.
 */
async function twoCaptures(root: string): Promise<[string, string]> {
  const n = 24;
  const tokens = 4;
  const d = 8;
  const { x } = clusters(8, 31); // 24 × 32
  const flip = [1, -1, -1, 1, 1, -1, 1, -1];
  const dirs: string[] = [];
  for (const variant of ['baseline', 'viral'] as const) {
    const dir = join(root, variant, 'step-10');
    const w = await CaptureWriter.create(dir, {
      model: { name: 'test/tiny', aligned_layer: 1 },
      variant,
      checkpoint: { step: 10 },
      token_layout: { kind: 'image', tokens, source_tokens: tokens, grid: [2, 2], pooling: 'none' },
      layers: [
        { name: 'embed', index: 0, dim: d },
        { name: 'blocks.0.out', index: 1, dim: d },
      ],
    });
    const layer = new Float32Array(n * tokens * d);
    for (let i = 0; i < n; i++)
      for (let t = 0; t < tokens; t++)
        for (let j = 0; j < d; j++) {
          // Token t of sample i: the sample's cluster coordinates (8 of the 32) plus a token offset.
          const v = x.data[i * 32 + t * 8 + j]! + 0.1 * t;
          layer[(i * tokens + t) * d + j] = variant === 'viral' ? flip[j]! * v : v;
        }
    await w.appendBatch({
      ids: Array.from({ length: n }, (_, i) => `img-${i}`),
      labels: { cluster: Array.from({ length: n }, (_, i) => `c${Math.floor(i / 8)}`) },
      layers: { embed: layer, 'blocks.0.out': layer },
    });
    dirs.push(dir);
  }
  return dirs as [string, string];
}

test('runUmap: one seed for every capture, maps Procrustes-aligned to the first; an isometric copy lands on the reference', async () => {
  const root = await mkdtemp(join(tmpdir(), 'vl-emb-'));
  try {
    const [a, b] = await twoCaptures(root);
    const r = await runUmap([a, b], { engine: ref, layer: 1, tokenMode: 'mean', preprocess: 'l2', seed: 3, nEpochs: 100 });
    assert.equal(r.points.length, 48);
    assert.equal(r.meta.seed, 3);
    assert.equal(r.meta.metric, 'cosine');
    assert.equal(r.panels.length, 2);
    assert.equal(r.panels[0]!.alignment, null);
    // The same cosine geometry and seed give the same map, so the aligned points coincide with the reference.
    assert.ok(r.panels[1]!.alignment!.relativeRmsd < 1e-9, `relative rmsd ${r.panels[1]!.alignment!.relativeRmsd}`);
    const at = (variant: string, id: string) => r.points.find((q) => q.variant === variant && q.sample_id === id)!;
    assert.ok(Math.abs(at('viral', 'img-7').x - at('baseline', 'img-7').x) < 1e-6);
    // A different seed gives a different map (the seed is really used).
    const other = await runUmap([a], { engine: ref, layer: 1, tokenMode: 'mean', preprocess: 'l2', seed: 4, nEpochs: 100 });
    assert.notEqual(other.points[7]!.x, at('baseline', 'img-7').x);
    const p = r.points.find((q) => q.sample_id === 'img-5' && q.variant === 'viral')!;
    assert.equal(p.labels.cluster, 'c0');
    assert.equal(p.token, null);
    const perToken = await runUmap([a], { engine: ref, layer: 'embed', tokenMode: 'per-token', preprocess: 'l2', seed: 3, nEpochs: 50, maxRows: 40 });
    assert.equal(perToken.points.length, 40);
    assert.ok(perToken.points.every((q) => q.token !== null));
    await assert.rejects(runUmap([a], { engine: ref, layer: 7, tokenMode: 'mean', preprocess: 'l2', seed: 0 }), InputError);
  } finally {
    await rm(root, { recursive: true, force: true });
  }
});

test('runPcaGrid: one panel per layer and capture, hex colours on the grid, signs consistent across variants', async () => {
  const root = await mkdtemp(join(tmpdir(), 'vl-emb-'));
  try {
    const [a, b] = await twoCaptures(root);
    const r = await runPcaGrid([a, b], { engine: ref, sample: 'img-3' });
    assert.equal(r.panels.length, 4);
    for (const p of r.panels) {
      assert.equal(p.rows, 2);
      assert.equal(p.cols, 2);
      assert.equal(p.colors.length, 4);
      assert.ok(p.colors.every((c) => /^#[0-9a-f]{6}$/.test(c)));
    }
    // Negated axes do not change the tokens' PCs, so aligned signs give identical colours.
    const base = r.panels.find((p) => p.variant === 'baseline' && p.layer_index === 1)!;
    const viral = r.panels.find((p) => p.variant === 'viral' && p.layer_index === 1)!;
    assert.deepEqual(viral.colors, base.colors);
    assert.equal(r.meta.sample, 'img-3');
    await assert.rejects(runPcaGrid([a], { engine: ref, sample: 'nope' }), /no sample 'nope'/);
  } finally {
    await rm(root, { recursive: true, force: true });
  }
});
