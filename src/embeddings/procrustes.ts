/**
 * Orthogonal Procrustes with translation and (optionally) one uniform scale: the similarity transform
 * y ≈ s·(x − x̄)·R + ȳ that best maps one point set onto another, rows paired. Used to put the UMAP maps of several
 * variants on common axes: each map is defined only up to rotation, reflection, translation and scale, so aligning
 * them to a reference removes exactly that freedom and nothing else.
 */
import { Matrix as MlMatrix, SVD } from 'ml-matrix';
import { InputError } from '../core/errors.js';

export interface ProcrustesOptions {
  /** Fit a uniform scale too (default true). */
  scale?: boolean;
  /** Allow reflections (default true: a UMAP map and its mirror image are the same map). */
  reflection?: boolean;
}

export interface ProcrustesResult {
  /** d×d, row-major: aligned = s·(x − x̄)·R + ȳ. */
  rotation: Float64Array;
  scale: number;
  sourceMean: Float64Array;
  targetMean: Float64Array;
  /** Root-mean-square distance between aligned source rows and target rows. */
  rmsd: number;
  /** rmsd divided by the RMS spread of the target around its mean: 0 = identical shapes, ~1 = unrelated. */
  relativeRmsd: number;
}

/** Fits the transform on paired rows of `source` and `target` (both n×d, row-major). */
export function procrustes(source: Float64Array, target: Float64Array, n: number, d: number, options: ProcrustesOptions = {}): ProcrustesResult {
  if (source.length !== n * d || target.length !== n * d) {
    throw new InputError(`procrustes: source has ${source.length} values and target ${target.length}, expected ${n}×${d} each`);
  }
  if (n < 2) throw new InputError(`procrustes: needs at least 2 paired rows, got ${n}`);
  const ms = columnMeans(source, n, d);
  const mt = columnMeans(target, n, d);
  // M = Xcᵀ·Yc (d×d).
  const m = new MlMatrix(d, d);
  let sx = 0;
  let sy = 0;
  for (let i = 0; i < n; i++) {
    for (let a = 0; a < d; a++) {
      const xa = source[i * d + a]! - ms[a]!;
      sx += xa * xa;
      sy += (target[i * d + a]! - mt[a]!) ** 2;
      for (let b = 0; b < d; b++) m.set(a, b, m.get(a, b) + xa * (target[i * d + b]! - mt[b]!));
    }
  }
  const svd = new SVD(m, { autoTranspose: false });
  const u = svd.leftSingularVectors;
  const v = svd.rightSingularVectors;
  const sigma = svd.diagonal.slice();
  if (options.reflection === false) {
    // Force det(R) = +1 by flipping the weakest direction (Kabsch).
    const det = u.mmul(v.transpose());
    if (determinant(det) < 0) {
      const last = d - 1;
      for (let r = 0; r < d; r++) v.set(r, last, -v.get(r, last));
      sigma[last] = -sigma[last]!;
    }
  }
  const r = u.mmul(v.transpose());
  const rotation = new Float64Array(d * d);
  for (let a = 0; a < d; a++) for (let b = 0; b < d; b++) rotation[a * d + b] = r.get(a, b);
  const trace = sigma.reduce((acc, x) => acc + x, 0);
  const s = options.scale === false || sx === 0 ? 1 : trace / sx;
  const result: ProcrustesResult = { rotation, scale: s, sourceMean: ms, targetMean: mt, rmsd: 0, relativeRmsd: 0 };
  const aligned = applyProcrustes(result, source, n, d);
  let err = 0;
  for (let i = 0; i < n * d; i++) err += (aligned[i]! - target[i]!) ** 2;
  result.rmsd = Math.sqrt(err / n);
  result.relativeRmsd = sy > 0 ? Math.sqrt(err / sy) : 0;
  return result;
}

/** Applies a fitted transform to any rows in the source's space (not only the ones it was fitted on). */
export function applyProcrustes(t: ProcrustesResult, x: Float64Array, n: number, d: number): Float64Array {
  const out = new Float64Array(n * d);
  for (let i = 0; i < n; i++) {
    for (let b = 0; b < d; b++) {
      let acc = 0;
      for (let a = 0; a < d; a++) acc += (x[i * d + a]! - t.sourceMean[a]!) * t.rotation[a * d + b]!;
      out[i * d + b] = t.scale * acc + t.targetMean[b]!;
    }
  }
  return out;
}

function columnMeans(x: Float64Array, n: number, d: number): Float64Array {
  const mean = new Float64Array(d);
  for (let i = 0; i < n; i++) for (let a = 0; a < d; a++) mean[a]! += x[i * d + a]!;
  for (let a = 0; a < d; a++) mean[a]! /= n;
  return mean;
}

function determinant(m: MlMatrix): number {
  // LU-free: the matrices here are tiny (d = 2 for maps); Gaussian elimination with partial pivoting.
  const n = m.rows;
  const a = m.to2DArray();
  let det = 1;
  for (let c = 0; c < n; c++) {
    let p = c;
    for (let r = c + 1; r < n; r++) if (Math.abs(a[r]![c]!) > Math.abs(a[p]![c]!)) p = r;
    if (a[p]![c] === 0) return 0;
    if (p !== c) {
      [a[p], a[c]] = [a[c]!, a[p]!];
      det = -det;
    }
    det *= a[c]![c]!;
    for (let r = c + 1; r < n; r++) {
      const f = a[r]![c]! / a[c]![c]!;
      for (let k = c; k < n; k++) a[r]![k]! -= f * a[c]![k]!;
    }
  }
  return det;
}
