import type { Engine } from './types.js';
import type { Matrix } from '../core/matrix.js';

/**
 * The O(n·d) sums metrics take over whole matrices, in one place: over `Matrix.data` in Node, or by the engine where
 * the matrix is file-backed (its rows live in the engine's worker, `Engine.files`). Both accumulate in float64.
 */
function files(engine: Engine, what: string) {
  if (!engine.files) throw new Error(`internal: ${what} of a file-backed matrix needs an engine that reads files (the ${engine.name} engine does not)`);
  return engine.files;
}

/** Σ_c a_ic·b_ic per row. */
export async function rowDots(engine: Engine, a: Matrix, b: Matrix): Promise<Float64Array> {
  if (a.source || b.source) return files(engine, 'row dot products').rowDots(a, b);
  const { rows, cols } = a;
  const x = a.data;
  const y = b.data;
  const out = new Float64Array(rows);
  for (let i = 0; i < rows; i++) {
    let s = 0;
    for (let c = 0; c < cols; c++) s += x[i * cols + c]! * y[i * cols + c]!;
    out[i] = s;
  }
  return out;
}

/** Σ_i x_ic² per column. */
export async function columnSquaredNorms(engine: Engine, x: Matrix): Promise<Float64Array> {
  if (x.source) return files(engine, 'column norms').columnSquaredNorms(x);
  const { rows, cols, data } = x;
  const sq = new Float64Array(cols);
  for (let i = 0; i < rows; i++) for (let c = 0; c < cols; c++) sq[c]! += data[i * cols + c]! * data[i * cols + c]!;
  return sq;
}

/** The values in Node's heap (read back from the engine for a file-backed matrix). */
export async function heapMatrix(engine: Engine, x: Matrix): Promise<Matrix> {
  return x.source ? files(engine, 'reading').read(x) : x;
}
