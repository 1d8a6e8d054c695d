import { InputError, ParamError } from '../core/errors.js';
import { shuffleInPlace, type Rng } from '../core/rng.js';

/**
 * K-fold assignment of IMAGES (not rows) to folds, so all tokens of one image fall on the same side of every split
 * (tokens of one image share its label and its content: splitting them would leak the answer into training).
 * With `strata` (one class per image), images of each class are shuffled and dealt round-robin, continuing the deal
 * across classes, so each fold gets each class in proportion and fold sizes differ by at most one.
 * Returns fold[g] for every image id g in `images` (a Map keyed by image id).
 */
export function groupFolds(images: Int32Array, folds: number, rng: Rng, strata?: ArrayLike<number>): Map<number, number> {
  if (!Number.isInteger(folds) || folds < 2) throw new ParamError('folds', `expected an integer ≥ 2, got ${folds}`);
  if (images.length < folds) throw new InputError(`--folds ${folds}: only ${images.length} images to split (each fold needs one)`);
  const order: number[][] = [];
  if (strata) {
    const byClass = new Map<number, number[]>();
    images.forEach((g, i) => {
      const c = strata[i]!;
      if (!byClass.has(c)) byClass.set(c, []);
      byClass.get(c)!.push(g);
    });
    for (const c of [...byClass.keys()].sort((a, b) => a - b)) order.push(shuffleInPlace(byClass.get(c)!, rng));
  } else order.push(shuffleInPlace(Array.from(images), rng));
  const out = new Map<number, number>();
  // Random starting fold so the remainder images do not always land in fold 0.
  let t = Math.floor(rng() * folds);
  for (const list of order) for (const g of list) out.set(g, t++ % folds);
  return out;
}

/** Column mean and sd of the rows `rows` of X (n×d); sd 0 becomes 1 so constant features stay 0, not NaN. */
export function fitStandardiser(X: Float64Array | Float32Array, d: number, rows: Int32Array): { mean: Float64Array; scale: Float64Array } {
  const mean = new Float64Array(d);
  const m2 = new Float64Array(d);
  for (const r of rows) for (let j = 0; j < d; j++) mean[j]! += X[r * d + j]!;
  for (let j = 0; j < d; j++) mean[j]! /= rows.length;
  for (const r of rows) {
    for (let j = 0; j < d; j++) {
      const v = X[r * d + j]! - mean[j]!;
      m2[j]! += v * v;
    }
  }
  const scale = new Float64Array(d);
  for (let j = 0; j < d; j++) {
    const sd = Math.sqrt(m2[j]! / rows.length);
    scale[j] = sd > 1e-12 ? 1 / sd : 1;
  }
  return { mean, scale };
}

/** The rows `rows` of X, standardised with a training fold's statistics, as a new n×d float64 block. */
export function applyStandardiser(X: Float64Array | Float32Array, d: number, rows: Int32Array, s: { mean: Float64Array; scale: Float64Array }): Float64Array {
  const out = new Float64Array(rows.length * d);
  rows.forEach((r, i) => {
    for (let j = 0; j < d; j++) out[i * d + j] = (X[r * d + j]! - s.mean[j]!) * s.scale[j]!;
  });
  return out;
}
