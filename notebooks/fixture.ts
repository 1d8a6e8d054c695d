/**
 * A small synthetic run folder with everything the figure notebooks read, written through the project's own
 * writers (CaptureWriter, writeAttention, writeShuffle), so the notebooks can be executed and tested before (and
 * independently of) the mini-LLaVA demo. NOT a model: the numbers are planted so every figure has structure
 * (CKNNA decays with depth, slower for `viral`; probes decode `count`; attention sharpens with depth).
 *
 *   ROOT/<variant>/step-<N>/   captures (manifest + shards), labels count / colour
 *   ROOT/attention.json        attention entropy per variant (analysis/attention.ts)
 *   ROOT/shuffle.json          patch-shuffle result (analysis/shuffle.ts)
 *
 * Usage: node --import tsx notebooks/fixture.ts OUT_DIR   (or import buildFixtureRun)
 */
import { attentionEntropy, writeAttention } from '../analysis/attention.js';
import { runShuffle, writeShuffle, type QuestionOutcome } from '../analysis/shuffle.js';
import { CaptureWriter } from '../src/store/capture.js';
import { deriveSeed, gaussian, mulberry32, type Rng } from '../src/stats/rng.js';

export interface FixtureOptions {
  images?: number;
  grid?: [number, number];
  /** Decoder blocks (layers are embed + blocks). */
  blocks?: number;
  steps?: number[];
  seed?: number;
}

const VARIANTS = ['baseline', 'residual', 'viral'] as const;
const COLOURS = ['red', 'green', 'blue'];

function gaussMatrix(rng: Rng, rows: number, cols: number, scale = 1): Float64Array {
  return Float64Array.from({ length: rows * cols }, () => scale * gaussian(rng));
}

/** y = x·P for each row of x (n×a) with P (a×b). */
function project(x: Float64Array, n: number, a: number, P: Float64Array, b: number): Float64Array {
  const out = new Float64Array(n * b);
  for (let i = 0; i < n; i++) for (let j = 0; j < a; j++) for (let c = 0; c < b; c++) out[i * b + c]! += x[i * a + j]! * P[j * b + c]!;
  return out;
}

/** How much of the visual signal survives in block ℓ of a variant at a training progress t ∈ [0, 1]. */
function retention(variant: string, layer: number, blocks: number, t: number): number {
  const depth = layer / blocks;
  const floor = variant === 'viral' ? 0.75 : variant === 'residual' ? 0.55 : 0.35;
  return 1 - (1 - (0.5 + 0.5 * t) * floor) * depth;
}

export async function buildFixtureRun(root: string, options: FixtureOptions = {}): Promise<void> {
  const G = options.images ?? 48;
  const [gr, gc] = options.grid ?? [4, 4];
  const T = gr * gc;
  const blocks = options.blocks ?? 5;
  const steps = options.steps ?? [0, 50, 100];
  const seed = options.seed ?? 7;
  const zDim = 8;
  const rng = mulberry32(seed);
  // Image latents, token position codes, and the two targets (CLIP-like and DINOv2-like token features).
  const z = gaussMatrix(rng, G, zDim);
  const pos = gaussMatrix(rng, T, zDim, 0.7);
  const latent = new Float64Array(G * T * zDim);
  for (let g = 0; g < G; g++)
    for (let t = 0; t < T; t++)
      for (let c = 0; c < zDim; c++) latent[(g * T + t) * zDim + c] = z[g * zDim + c]! + pos[t * zDim + c]! + 0.4 * gaussian(rng);
  const clip = project(latent, G * T, zDim, gaussMatrix(rng, zDim, 12), 12);
  const dino = project(latent, G * T, zDim, gaussMatrix(rng, zDim, 10), 10);
  const labels = {
    count: Array.from({ length: G }, (_, g) => Math.max(0, Math.min(3, Math.floor(z[g * zDim]! + 2)))),
    colour: Array.from({ length: G }, (_, g) => COLOURS[[1, 2, 3].reduce((b, c) => (z[g * zDim + c]! > z[g * zDim + b]! ? c : b), 1) - 1]!),
  };
  const d = 16;
  const lift = gaussMatrix(rng, 12, d, 0.5);
  for (const variant of VARIANTS) {
    for (const step of steps) {
      const dir = `${root}/${variant}/step-${step}`;
      const w = await CaptureWriter.create(dir, {
        model: { name: 'fixture-mini-llava', hidden_size: d, num_layers: blocks, align_layer: Math.ceil(blocks / 2) },
        variant,
        checkpoint: { step },
        token_layout: { kind: 'image', tokens: T, source_tokens: T, grid: [gr, gc], pooling: 'none' },
        layers: Array.from({ length: blocks + 1 }, (_, l) => ({ name: l === 0 ? 'embed' : `blocks.${l - 1}.out`, index: l, dim: d })),
        targets: [
          { name: 'clip', dim: 12, tokens: T, description: 'synthetic CLIP-like token features' },
          { name: 'dinov2', dim: 10, tokens: T, description: 'synthetic DINOv2-like token features' },
        ],
        provenance: { tool: 'notebooks/fixture.ts', note: 'synthetic fixture, not a trained model' },
      });
      const lr = mulberry32(deriveSeed(seed, variant, step));
      const base = project(clip, G * T, 12, lift, d);
      const layers: Record<string, Float32Array> = {};
      const t = steps.length > 1 ? step / steps[steps.length - 1]! : 1;
      for (let l = 0; l <= blocks; l++) {
        const a = retention(variant, l, blocks, t);
        // Drift: per-image (survives mean pooling) plus per-token noise, growing as the visual signal fades.
        const drift = gaussMatrix(lr, G, d, 1.2);
        layers[l === 0 ? 'embed' : `blocks.${l - 1}.out`] = Float32Array.from(base, (v, i) => {
          const g = Math.floor(i / (T * d));
          return a * v + (1 - a) * (drift[g * d + (i % d)]! + 1.2 * gaussian(lr));
        });
      }
      await w.appendBatch({
        ids: Array.from({ length: G }, (_, g) => `scene-${String(g).padStart(3, '0')}`),
        labels,
        layers,
        targets: { clip: Float32Array.from(clip), dinov2: Float32Array.from(dino) },
      });
    }
  }

  // Attention: a Gaussian bump per (sample, layer, head, query) whose width shrinks with depth (faster for viral).
  for (const variant of VARIANTS) {
    const ar = mulberry32(deriveSeed(seed, 'attention', variant));
    const S = 2, H = 4, Q = 2;
    const data = new Float32Array(S * blocks * H * Q * T);
    let o = 0;
    for (let s = 0; s < S; s++)
      for (let l = 0; l < blocks; l++)
        for (let h = 0; h < H; h++)
          for (let q = 0; q < Q; q++) {
            const cr = ar() * gr;
            const cc = ar() * gc;
            const width = Math.max(0.3, (variant === 'viral' ? 2.2 : 3) * (1 - l / (blocks + 1)) * (0.6 + 0.2 * h));
            for (let t = 0; t < T; t++) {
              const r = Math.floor(t / gc) - cr;
              const c = (t % gc) - cc;
              data[o++] = 0.6 * Math.exp(-(r * r + c * c) / (2 * width * width)) / T;
            }
          }
    const result = attentionEntropy(
      { samples: S, layers: blocks, heads: H, queries: Q, grid: [gr, gc], data, layerIndices: Array.from({ length: blocks }, (_, l) => l + 1), sampleIds: ['scene-000', 'scene-001'] },
      { model: 'fixture-mini-llava', variant, step: steps[steps.length - 1]! },
    );
    await writeAttention(root, result);
  }

  // Patch shuffle: 160 questions; shuffling costs relation/count questions, more for viral.
  const types = ['count', 'colour', 'shape', 'relation'];
  const evaluator = (variant: string) => (shuffleSeed: number | null): QuestionOutcome[] => {
    const qr = mulberry32(deriveSeed(seed, 'questions', variant));
    const sr = mulberry32(deriveSeed(seed, 'shuffle', variant, shuffleSeed ?? -1));
    return Array.from({ length: 160 }, (_, i) => {
      const type = types[i % 4]!;
      const base = qr() < (variant === 'viral' ? 0.8 : 0.7);
      const spatial = type === 'relation' || type === 'count';
      const loss = shuffleSeed === null ? 0 : spatial ? (variant === 'viral' ? 0.5 : 0.25) : 0.05;
      return { id: `q${i}`, type, correct: base && !(sr() < loss) };
    });
  };
  const shuffle = await runShuffle(
    VARIANTS.map((v) => ({ name: v, evaluate: evaluator(v) })),
    { seeds: [1, 2], model: 'fixture-mini-llava', step: steps[steps.length - 1]!, description: `${T} image tokens permuted before the projector (synthetic fixture)`, resamples: 500 },
  );
  await writeShuffle(root, shuffle);
}

const invokedAsScript = typeof process !== 'undefined' && process.argv[1] && /fixture\.ts$/.test(process.argv[1]);
if (invokedAsScript) {
  const out = process.argv[2];
  if (!out) {
    console.error('usage: node --import tsx notebooks/fixture.ts OUT_DIR');
    process.exit(2);
  }
  await buildFixtureRun(out);
  console.log(`fixture run written to ${out}`);
}
