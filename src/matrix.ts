import { InputError } from './errors.js';

/** A dense row-major matrix: row i = one sample (or one token, in per-token mode). */
export interface Matrix {
  readonly rows: number;
  readonly cols: number;
  readonly data: Float32Array | Float64Array;
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
