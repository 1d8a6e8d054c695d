import { InputError } from './errors.js';
import type { Preprocess } from './preprocess.js';
import type { TokenMode } from './tokens.js';

/** A dense row-major matrix: row i = one sample (or one token, in per-token mode). */
export interface Matrix {
  readonly rows: number;
  readonly cols: number;
  /** The values in Node's heap; a file-backed matrix (`source` set) has none, and reading this throws. */
  readonly data: Float32Array | Float64Array;
  /** Where the rows come from when an engine that reads files itself (`Engine.files`) computes with them. */
  readonly source?: MatrixSource;
}

/**
 * One stretch of rows in a file, as the engine's worker maps it: `samples × tokens` rows of `cols` values of `dtype`
 * at byte `offset` (a .npy payload, a safetensors tensor, one capture shard).
 */
export interface SourceSegment {
  path: string;
  dtype: 'float16' | 'bfloat16' | 'float32' | 'float64';
  littleEndian: boolean;
  offset: number;
  samples: number;
  /** Fortran order (.npy `fortran_order: True`): column-major [rows, cols]. */
  order: 'C' | 'F';
  /** How a NaN/Inf in this stretch is reported: the words of the in-heap readers (assertFinite, capture shards). */
  nonFinite:
    | { kind: 'matrix'; label: string }
    | { kind: 'shard'; head: string; what: string; shardStart: number }
    | { kind: 'sample'; label: string; tokens: boolean };
}

/**
 * A matrix described rather than held: the rows of its segments concatenated along samples, reduced by the token mode
 * (tokensToMatrix), subset by `pick` (sorted row indices after the token mode), then preprocessed (preprocess()).
 * Values are float64 only where the in-heap pipeline keeps float64 (f8 files compared as they are).
 */
export interface FileRows {
  kind: 'file';
  segments: SourceSegment[];
  tokens: number;
  cols: number;
  mode: TokenMode;
  pick: Int32Array | null;
  float64: boolean;
  preprocess: Preprocess;
  q: number;
}

/** Features.centred() of a file-backed matrix: column means in float64, stored in float32. */
export interface CentredRows {
  kind: 'centred';
  of: Matrix;
}

export type MatrixSource = FileRows | CentredRows;

/** A matrix whose rows stay where `source` says; `label` names it if Node code reads its data by mistake. */
export function sourcedMatrix(rows: number, cols: number, source: MatrixSource, label: string): Matrix {
  return {
    rows,
    cols,
    source,
    get data(): Float32Array | Float64Array {
      throw new Error(`internal: ${label} is file-backed (its rows live in the engine's worker); read it through the engine (Features.heap, metrics/rows.ts)`);
    },
  };
}

/** The row count of a FileRows source: after the token mode and the pick. */
export function fileRowCount(src: Pick<FileRows, 'segments' | 'tokens' | 'mode' | 'pick'>): number {
  if (src.pick) return src.pick.length;
  const samples = src.segments.reduce((s, g) => s + g.samples, 0);
  return src.mode === 'per-token' ? samples * src.tokens : samples;
}

export function matrix(rows: number, cols: number, data: Float32Array | Float64Array): Matrix {
  if (data.length !== rows * cols) {
    throw new Error(`matrix: data has ${data.length} values, expected ${rows}×${cols} = ${rows * cols}`);
  }
  return { rows, cols, data };
}

export function toFloat64(m: Matrix): Matrix & { data: Float64Array } {
  if (m.data instanceof Float64Array) return m as Matrix & { data: Float64Array };
  return { rows: m.rows, cols: m.cols, data: Float64Array.from(m.data) };
}

export function toFloat32(m: Matrix): Matrix & { data: Float32Array } {
  if (m.data instanceof Float32Array) return m as Matrix & { data: Float32Array };
  return { rows: m.rows, cols: m.cols, data: Float32Array.from(m.data) };
}

export function row(m: Matrix, i: number): Float32Array | Float64Array {
  return m.data.subarray(i * m.cols, (i + 1) * m.cols);
}

/** Rejects NaN/Inf with the source and the first offending row, since one bad value silently poisons every metric. */
export function assertFinite(m: Matrix, source: string): void {
  const { data, cols } = m;
  for (let i = 0; i < data.length; i++) {
    const v = data[i]!;
    if (!Number.isFinite(v)) {
      const r = Math.floor(i / cols);
      throw new InputError(`${source}: row ${r}, column ${i - r * cols} is ${v} (NaN/Inf values are not allowed)`);
    }
  }
}
