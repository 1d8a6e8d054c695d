import { ParamError } from './errors.js';
import type { Matrix } from './matrix.js';
import { mulberry32 } from './rng.js';

/**
 * The one place where per-token captures become per-row matrices (the shape contract):
 * - `per-token`: every token of every sample is a row (n = samples × tokens), sample-major;
 * - `mean`: one row per sample, the mean over its tokens (float64 accumulation);
 * - `first`: one row per sample, its first token.
 */
export const TOKEN_MODES = ['per-token', 'mean', 'first'] as const;
export type TokenMode = (typeof TOKEN_MODES)[number];

export interface TokenTensor {
  samples: number;
  tokens: number;
  dim: number;
  data: Float32Array | Float64Array;
}

export function parseTokenMode(name: string): TokenMode {
  if ((TOKEN_MODES as readonly string[]).includes(name)) return name as TokenMode;
  throw new ParamError('tokens', `unknown token mode '${name}' (expected one of ${TOKEN_MODES.join(', ')})`);
}

export function rowsFor(t: { samples: number; tokens: number }, mode: TokenMode): number {
  return mode === 'per-token' ? t.samples * t.tokens : t.samples;
}

/** Flattens a [samples, tokens, dim] tensor; `rows` (sorted indices into the flattened rows) subsamples. */
export function tokensToMatrix(t: TokenTensor, mode: TokenMode, rows?: Int32Array): Matrix {
  const { samples, tokens, dim, data } = t;
  const all = rowsFor(t, mode);
  const pick = rows ?? null;
  const n = pick ? pick.length : all;
  const out = new Float32Array(n * dim);
  for (let r = 0; r < n; r++) {
    const src = pick ? pick[r]! : r;
    if (mode === 'per-token') {
      out.set(data.subarray(src * dim, (src + 1) * dim), r * dim);
    } else if (mode === 'first') {
      out.set(data.subarray(src * tokens * dim, src * tokens * dim + dim), r * dim);
    } else {
      const acc = new Float64Array(dim);
      const base = src * tokens * dim;
      for (let tk = 0; tk < tokens; tk++) for (let c = 0; c < dim; c++) acc[c]! += data[base + tk * dim + c]!;
      for (let c = 0; c < dim; c++) out[r * dim + c] = acc[c]! / tokens;
    }
  }
  void samples;
  return { rows: n, cols: dim, data: out };
}

/**
 * A seeded uniform subsample of `max` of `total` rows, sorted, or null when no subsampling is needed (mulberry32:
 * the same stream in every engine and process).
 */
export function subsampleRows(total: number, max: number | undefined, seed: number): Int32Array | null {
  if (max === undefined || max >= total) return null;
  if (!Number.isInteger(max) || max < 4) throw new ParamError('max_rows', `max_rows must be an integer ≥ 4, got ${max}`);
  const rand = mulberry32(seed);
  // Partial Fisher–Yates over an index array: exact uniform sample without replacement.
  const idx = new Int32Array(total);
  for (let i = 0; i < total; i++) idx[i] = i;
  for (let i = 0; i < max; i++) {
    const j = i + Math.floor(rand() * (total - i));
    const t = idx[i]!;
    idx[i] = idx[j]!;
    idx[j] = t;
  }
  return idx.slice(0, max).sort();
}
