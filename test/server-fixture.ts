/**
 * A tiny runs folder for the dashboard tests: runs `baseline`, `residual`, `viral` with captures at steps 100 and
 * 200 (40 images × 4 tokens on a 2×2 grid, 5 layers of dim 8, targets clip and dinov2, labels class and count), a
 * results.json per run, a probes.json in one capture, and optionally broken captures; `writeAnalysesFixture` adds a
 * run-level attention.json and shuffle.json with planted, hand-computable numbers. The layers mix a shared
 * latent with noise; the VIRAL run's aligned layer (2) carries more of the latent, so its curve must bump there.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { attentionEntropy, writeAttention } from '../analysis/attention.js';
import { runShuffle, writeShuffle } from '../analysis/shuffle.js';
import { normal } from '../fixtures/make-fixtures.js';
import { mulberry32 } from '../src/core/rng.js';
import { CaptureWriter } from '../src/store/capture.js';

const SAMPLES = 40;
const TOKENS = 4;
const LATENT = 4;
const DIM = 8;
const LAYERS = 5;

/** Signal share of layer ℓ for a variant at a step (the rest is noise). */
function signal(variant: string, layer: number, step: number): number {
  const base = 0.9 - 0.12 * layer + step / 5000;
  if (variant === 'viral') return Math.min(0.97, base + (layer === 2 ? 0.25 : layer < 2 ? 0.06 : 0.1));
  if (variant === 'residual' && layer === 2) return base + 0.1;
  return base;
}

export async function writeFixtureCapture(dir: string, variant: 'baseline' | 'residual' | 'viral', step: number, seed = 7): Promise<void> {
  const rand = mulberry32(seed); // the same images (latents) in every capture
  const z = Array.from({ length: SAMPLES }, () => Array.from({ length: LATENT }, () => normal(rand)));
  const pos = Array.from({ length: TOKENS }, () => Array.from({ length: LATENT }, () => normal(rand)));
  // Layers share most of their read-out of the latent, so the curves change smoothly with depth.
  const shared = Array.from({ length: DIM * LATENT }, () => normal(rand) / 2);
  const proj = Array.from({ length: LAYERS }, () => shared.map((w) => w + 0.25 * normal(rand)));
  const wClip = Array.from({ length: 6 * LATENT }, () => normal(rand) / 2);
  const wDino = Array.from({ length: 5 * LATENT }, () => normal(rand) / 2);
  const noise = mulberry32(seed * 31 + step + variant.length * 1000);
  const u = (s: number, t: number) => z[s]!.map((x, k) => x + 0.4 * pos[t]![k]!);
  const apply = (w: number[], rows: number, v: number[]) => Array.from({ length: rows }, (_, r) => v.reduce((a, x, k) => a + w[r * LATENT + k]! * x, 0));
  const layers: Record<string, Float32Array> = {};
  const names = ['embed', ...Array.from({ length: LAYERS - 1 }, (_, i) => `blocks.${i}.out`)];
  names.forEach((name, l) => {
    const out = new Float32Array(SAMPLES * TOKENS * DIM);
    const s = signal(variant, l, step);
    for (let i = 0; i < SAMPLES; i++) {
      // Noise shared by an image's tokens survives mean pooling; per-token noise does not.
      const imageNoise = Array.from({ length: DIM }, () => normal(noise));
      for (let t = 0; t < TOKENS; t++) {
        const v = apply(proj[l]!, DIM, u(i, t));
        for (let d = 0; d < DIM; d++) out[(i * TOKENS + t) * DIM + d] = s * v[d]! + (1 - s) * 1.5 * (imageNoise[d]! + normal(noise));
      }
    }
    layers[name] = out;
  });
  const target = (w: number[], dim: number) => {
    const out = new Float32Array(SAMPLES * TOKENS * dim);
    for (let i = 0; i < SAMPLES; i++) for (let t = 0; t < TOKENS; t++) apply(w, dim, u(i, t)).forEach((x, d) => (out[(i * TOKENS + t) * dim + d] = x + 0.02 * normal(noise)));
    return out;
  };
  const model: { name: string; hidden_size: number; num_layers: number; aligned_layer?: number; residual_layers?: number[] } = {
    name: 'test/tiny-vlm',
    hidden_size: DIM,
    num_layers: LAYERS - 1,
  };
  if (variant === 'viral') model.aligned_layer = 2;
  if (variant === 'residual') model.residual_layers = [2];
  const w = await CaptureWriter.create(dir, {
    model,
    variant,
    checkpoint: { step },
    token_layout: { kind: 'image', tokens: TOKENS, source_tokens: TOKENS, grid: [2, 2], pooling: 'none' },
    layers: names.map((name, index) => ({ name, index, dim: DIM })),
    targets: [
      { name: 'clip', dim: 6, tokens: TOKENS, description: 'synthetic CLIP-like target' },
      { name: 'dinov2', dim: 5, tokens: TOKENS },
    ],
  });
  await w.appendBatch({
    ids: Array.from({ length: SAMPLES }, (_, i) => `img-${String(i).padStart(3, '0')}`),
    labels: {
      class: z.map((zi) => (zi[0]! > zi[1]! ? 'cat' : 'dog')),
      count: z.map((zi) => Math.floor(Math.abs(zi[2]!) * 2)),
    },
    layers,
    targets: { clip: target(wClip, 6), dinov2: target(wDino, 5) },
  });
}

export const FIXTURE_RUNS = ['baseline', 'residual', 'viral'] as const;
export const FIXTURE_STEPS = [100, 200] as const;

export async function makeRunsFixture(root: string): Promise<void> {
  for (const run of FIXTURE_RUNS) {
    for (const step of FIXTURE_STEPS) await writeFixtureCapture(join(root, run, `step-${step}`), run, step);
  }
  const acc = { baseline: { POPE: 85.7, MMVP: 28.2 }, residual: { POPE: 87.17, MMVP: 26.67 }, viral: { POPE: 88.32, MMVP: 33.33 } };
  for (const run of FIXTURE_RUNS) await writeFile(join(root, run, 'results.json'), JSON.stringify({ benchmarks: acc[run] }));
  // probes.json for the latest step of two runs.
  for (const [run, lift] of [
    ['baseline', 0],
    ['viral', 0.08],
  ] as const) {
    await writeFile(join(root, run, 'step-200', 'probes.json'), JSON.stringify(makeProbesFile(run, lift)));
  }
}

/** A probes.json in the analysis/probes.ts format (viral-lens.probes v1): accuracy per layer, `lift` added at layer 2. */
export function makeProbesFile(variant: string, lift: number) {
  const rows = Array.from({ length: LAYERS }, (_, l) => ({
      source: 'layer',
      name: l === 0 ? 'embed' : `blocks.${l - 1}.out`,
      layer_index: l,
      task: 'classify',
      score: 0.9 - 0.06 * l + (l === 2 ? lift : 0),
      score_name: 'accuracy',
      ci_low: 0.85 - 0.06 * l,
      ci_high: 0.95 - 0.06 * l,
      ci_method: 'bootstrap',
      chance: 0.5,
    }));
  return {
    format: 'viral-lens.probes',
    version: 1,
    probes: [{ capture: '', model: 'test/tiny-vlm', variant, step: 200, label: 'class', task: 'classify', token_mode: 'mean', rows }],
  };
}

/** A run whose capture has a manifest that is not JSON, and one whose shard is truncated. */
export async function addBrokenCaptures(root: string): Promise<void> {
  await mkdir(join(root, 'broken', 'step-1'), { recursive: true });
  await writeFile(join(root, 'broken', 'step-1', 'manifest.json'), '{"format": "viral-lens.capture", oops');
  const dir = join(root, 'truncated', 'step-1');
  await writeFixtureCapture(dir, 'baseline', 1);
  const { truncate } = await import('node:fs/promises');
  await truncate(join(dir, 'layers', '003', '00000.safetensors'), 200);
}

/**
 * Planted attention maps (1 sample × 1 query row on the fixture's 2×2 token grid, 2 layers × 2 heads) whose entropies
 * are known by hand: a uniform map has log2 4 = 2 bits, two equal tokens 1 bit, one token 0 bits, (2,1,1,0) 1.5 bits
 * and (3,1,0,0) −(¾·log2 ¾ + ¼·log2 ¼) ≈ 0.8113 bits. Raw weights are the map × 0.1, so the mass on the image is
 * 0.1 × the map's sum. Layout: ATTENTION_MAPS[variant][layer][head].
 */
export const ATTENTION_MAPS: Record<'baseline' | 'viral', number[][][]> = {
  baseline: [
    [
      [1, 1, 1, 1],
      [1, 1, 0, 0],
    ],
    [
      [0, 0, 0, 1],
      [2, 1, 1, 0],
    ],
  ],
  viral: [
    [
      [1, 0, 0, 0],
      [1, 1, 1, 1],
    ],
    [
      [3, 1, 0, 0],
      [0, 0, 1, 1],
    ],
  ],
};

/**
 * Patch-shuffle outcomes with counts known by hand (seed 1 only), 8 questions per type:
 *   baseline: count 8 → 8, relation 6 → 4 (2 lost);  viral: count 8 → 7 (1 lost), relation 8 → 2 (6 lost).
 * McNemar exact, two-sided, nothing gained: p = min(1, 2 · 2^−lost), so viral relation p = 2/64 = 0.03125.
 */
export const SHUFFLE_PLAN: Record<'baseline' | 'viral', Record<'count' | 'relation', { original: number; lost: number }>> = {
  baseline: { count: { original: 8, lost: 0 }, relation: { original: 6, lost: 2 } },
  viral: { count: { original: 8, lost: 1 }, relation: { original: 8, lost: 6 } },
};

/** RUNS_DIR/attention.json and RUNS_DIR/shuffle.json from the planted data above, through the library's writers. */
export async function writeAnalysesFixture(root: string, model = 'test/tiny-vlm', sample = 'img-000'): Promise<void> {
  for (const variant of ['baseline', 'viral'] as const) {
    const data = Float32Array.from(ATTENTION_MAPS[variant].flat(2), (v) => v * 0.1);
    const result = attentionEntropy({ samples: 1, layers: 2, heads: 2, queries: 1, grid: [2, 2], data, layerNames: ['blocks.0', 'blocks.1'], sampleIds: [sample] }, { model, variant, step: 200 });
    await writeAttention(root, result);
  }
  const outcomes = (variant: 'baseline' | 'viral', shuffled: boolean) =>
    (['count', 'relation'] as const).flatMap((type) => {
      const { original, lost } = SHUFFLE_PLAN[variant][type];
      return Array.from({ length: 8 }, (_, i) => ({ id: `${type}-${i}`, type, correct: i < original && !(shuffled && i < lost) }));
    });
  const result = await runShuffle(
    (['baseline', 'viral'] as const).map((v) => ({ name: v, evaluate: (seed: number | null) => outcomes(v, seed !== null) })),
    { seeds: [1], model, step: 200, description: '4 image tokens permuted before the projector (planted test outcomes)', resamples: 200 },
  );
  await writeShuffle(root, result);
}
