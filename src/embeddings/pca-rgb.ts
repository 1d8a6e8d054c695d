/**
 * PCA-RGB token grids (VIRAL paper Fig. 5, 10, 11): one image's tokens at one layer → first 3 principal components →
 * red, green, blue on the token grid. The paper does not state its normalisation; this uses a robust one per channel:
 * z = (x − median)/IQR, then c = ½ + ½·tanh(z) ∈ (0, 1). The median maps to mid-grey, the quartiles to ≈ 0.27/0.73,
 * and a few outlier tokens (LLMs have massive-activation tokens) saturate instead of washing out the rest, which a
 * min–max scaling would do. A channel with IQR 0 is flat grey.
 */
import type { Engine } from '../engine/index.js';
import { InputError } from '../core/errors.js';
import type { Matrix } from '../core/matrix.js';
import { pca } from './pca.js';

export const PCA_RGB_NORMALISATION = 'per channel (x − median)/IQR, squashed by ½ + ½·tanh';

/** Quantile with linear interpolation between order statistics (numpy's default), of an already sorted array. */
function sortedQuantile(sorted: Float64Array, q: number): number {
  const pos = (sorted.length - 1) * q;
  const lo = Math.floor(pos);
  const hi = Math.ceil(pos);
  return sorted[lo]! + (sorted[hi]! - sorted[lo]!) * (pos - lo);
}

/** The robust squash of one channel: ½ + ½·tanh((x − median)/IQR). */
export function robustUnit(values: ArrayLike<number>): Float64Array {
  const sorted = Float64Array.from(values).sort();
  const out = new Float64Array(values.length);
  if (sorted.length === 0) return out;
  const median = sortedQuantile(sorted, 0.5);
  const iqr = sortedQuantile(sorted, 0.75) - sortedQuantile(sorted, 0.25);
  for (let i = 0; i < values.length; i++) out[i] = iqr > 0 ? 0.5 + 0.5 * Math.tanh((values[i]! - median) / iqr) : 0.5;
  return out;
}

export interface PcaRgbGrid {
  rows: number;
  cols: number;
  /** tokens × 3 in [0, 1], row-major over the grid (token t = row·cols + col). */
  rgb: Float64Array;
  /** The raw PC scores (tokens × 3) before normalisation, for sign alignment of the next panel. */
  scores: Float64Array;
  /** Share of the tokens' variance on each of the 3 components. */
  explained: number[];
}

export interface PcaRgbOptions {
  engine?: Engine;
  /** Scores of a panel over the same tokens (e.g. the previous layer) whose signs this one follows. */
  alignTo?: Float64Array;
}

/** `tokens` is one image's [tokens, dim] matrix; `grid` its [rows, cols] layout (row-major). */
export async function pcaRgbGrid(tokens: Matrix, grid: readonly [number, number], options: PcaRgbOptions = {}): Promise<PcaRgbGrid> {
  const [rows, cols] = grid;
  if (rows * cols !== tokens.rows) {
    throw new InputError(`PCA-RGB: grid ${rows}×${cols} = ${rows * cols} cells but the image has ${tokens.rows} tokens`);
  }
  if (tokens.rows < 4) throw new InputError(`PCA-RGB: needs at least 4 tokens, got ${tokens.rows}`);
  const fit = await pca(tokens, 3, {
    ...(options.engine ? { engine: options.engine } : {}),
    ...(options.alignTo ? { alignTo: { scores: options.alignTo, components: 3 } } : {}),
  });
  const n = tokens.rows;
  const c = fit.components;
  // Fewer than 3 components (dim < 3) leave the missing channels flat.
  const scores = new Float64Array(n * 3);
  for (let i = 0; i < n; i++) for (let j = 0; j < c; j++) scores[i * 3 + j] = fit.scores[i * c + j]!;
  const rgb = new Float64Array(n * 3);
  for (let ch = 0; ch < 3; ch++) {
    const unit = robustUnit(Array.from({ length: n }, (_, i) => scores[i * 3 + ch]!));
    for (let i = 0; i < n; i++) rgb[i * 3 + ch] = unit[i]!;
  }
  return { rows, cols, rgb, scores, explained: [0, 1, 2].map((j) => fit.explainedRatio[j] ?? 0) };
}

/** '#rrggbb' of token t. */
export function rgbHex(rgb: Float64Array, t: number): string {
  let s = '#';
  for (let ch = 0; ch < 3; ch++) s += Math.round(Math.min(1, Math.max(0, rgb[t * 3 + ch]!)) * 255).toString(16).padStart(2, '0');
  return s;
}
