import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import {
  attentionEntropy,
  attentionOverlaySpec,
  componentEntropy,
  entropyHeatmapFigure,
  readAttention,
  shannonEntropy,
  textToImageAttention,
  writeAttention,
} from '../analysis/attention.js';
import { renderSvg } from '../analysis/figures.js';

const close = (a: number, b: number, tol = 1e-12) => assert.ok(Math.abs(a - b) < tol, `${a} vs ${b}`);

test('Shannon entropy: uniform = log2 N, one-hot = 0, invariant to the total mass', () => {
  for (const N of [4, 49, 576]) {
    close(shannonEntropy(new Float64Array(N).fill(0.3)), Math.log2(N));
    const one = new Float64Array(N);
    one[N - 1] = 0.2;
    close(shannonEntropy(one), 0);
  }
  close(shannonEntropy([1, 1, 2]), 1.5);
  close(shannonEntropy([10, 10, 20]), 1.5);
  assert.ok(Number.isNaN(shannonEntropy([0, 0])));
  assert.throws(() => shannonEntropy([1, -1]), /≥ 0/);
});

test('component entropy: one blob 0 bits, two equal blobs 1 bit, connectivity matters, uniform undefined', () => {
  const grid: [number, number] = [4, 4];
  const blob = new Float64Array(16);
  blob[5] = blob[6] = blob[9] = 1;
  assert.deepEqual(componentEntropy(blob, grid), { entropy: 0, components: 1 });
  const two = new Float64Array(16);
  two[0] = two[1] = 1;
  two[14] = two[15] = 1;
  assert.deepEqual(componentEntropy(two, grid), { entropy: 1, components: 2 });
  // Diagonal neighbours: one component with 8-connectivity, two with 4-connectivity.
  const diag = new Float64Array(16);
  diag[0] = diag[5] = 1;
  assert.equal(componentEntropy(diag, grid, { kind: 'mean' }, 8).components, 1);
  assert.equal(componentEntropy(diag, grid, { kind: 'mean' }, 4).components, 2);
  // Unequal masses: P = (3/4, 1/4).
  const uneven = new Float64Array(16);
  uneven[0] = 3;
  uneven[15] = 1;
  close(componentEntropy(uneven, grid).entropy, -(0.75 * Math.log2(0.75) + 0.25 * Math.log2(0.25)));
  const uniform = componentEntropy(new Float64Array(16).fill(1), grid);
  assert.ok(Number.isNaN(uniform.entropy));
  assert.equal(uniform.components, 0);
  // Absolute threshold above everything: no component either.
  assert.equal(componentEntropy(two, grid, { kind: 'absolute', value: 0.9 }).components, 0);
});

test('attentionEntropy: one cell per layer × head, both aggregations, mass on the image recorded', () => {
  // 1 sample, 2 layers, 2 heads, 2 queries, 2×2 grid. Layer 0 head 0: two one-hot queries on different tokens.
  const S = 1, L = 2, H = 2, Q = 2, N = 4;
  const data = new Float64Array(S * L * H * Q * N).fill(0.125); // uniform maps with mass 0.5 on the image
  const at = (l: number, h: number, q: number) => ((l * H + h) * Q + q) * N;
  data.fill(0, at(0, 0, 0), at(0, 0, 0) + 2 * N);
  data[at(0, 0, 0) + 0] = 1;
  data[at(0, 0, 1) + 3] = 1;
  const maps = { samples: S, layers: L, heads: H, queries: Q, grid: [2, 2] as [number, number], data };
  const mean = attentionEntropy(maps, { variant: 'baseline' });
  assert.equal(mean.cells.length, 4);
  const c00 = mean.cells.find((c) => c.layer_index === 1 && c.head === 0)!;
  close(c00.entropy, 0);
  close(c00.image_mass, 1);
  const c11 = mean.cells.find((c) => c.layer_index === 2 && c.head === 1)!;
  close(c11.entropy, 2);
  close(c11.normalised_entropy, 1);
  close(c11.image_mass, 0.5);
  // Entropy of the query-averaged map: two tokens with ½ each → 1 bit.
  const ofMean = attentionEntropy(maps, { aggregate: 'entropy-of-mean' });
  close(ofMean.cells.find((c) => c.layer_index === 1 && c.head === 0)!.entropy, 1);
  assert.deepEqual(ofMean.overlay!.maps[0]![0], [0.5, 0, 0, 0.5]);
  // Uniform maps (layer 1 head 1, layer 2 heads 0 and 1; two queries each) have nothing above the mean.
  assert.equal(mean.undefined_components, 3 * Q);
  assert.throws(() => attentionEntropy({ ...maps, data: new Float64Array(3) }), /expected samples×layers/);
});

test('textToImageAttention keeps the image keys of the chosen query rows', () => {
  const H = 2, T = 5;
  const attn = Float32Array.from({ length: H * T * T }, (_, i) => i);
  const out = textToImageAttention(attn, H, T, 1, 3, [4]);
  assert.deepEqual(Array.from(out), [21, 22, 23, 46, 47, 48]);
  assert.throws(() => textToImageAttention(attn, H, T, 3, 3, [4]), /outside/);
});

test('attention.json round trip and the heatmap / overlay specs render to SVG', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'vl-attn-'));
  try {
    const data = Float32Array.from({ length: 2 * 3 * 9 }, (_, i) => ((i * 7) % 5) + 0.1);
    const r = attentionEntropy({ samples: 1, layers: 2, heads: 3, queries: 1, grid: [3, 3], data }, { variant: 'viral', step: 10 });
    await writeAttention(dir, r);
    await writeAttention(dir, r);
    const file = await readAttention(dir);
    assert.equal(file.results.length, 1);
    const fig = entropyHeatmapFigure(file.results);
    const svg = await renderSvg(fig.spec);
    assert.match(svg, /^<svg/);
    assert.match(svg, /mark-rect/);
    assert.match(svg, />head</);
    const overlay = await renderSvg(attentionOverlaySpec(r.overlay!.maps[1]![2]!, [3, 3], { title: 'layer 2 head 2' }));
    assert.match(overlay, /layer 2 head 2/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
