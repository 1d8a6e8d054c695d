import type { Engine } from '../engine/types.js';
import type { Matrix } from '../core/matrix.js';
import { rowDots } from '../engine/rows.js';
import { defineFeatureMetric, type PairStatistic } from './spec.js';

/** Mean over paired rows of cos(a_i, b_i), the view of VIRAL's alignment loss. Needs dA = dB. Rows of norm 0 count 0. */
export async function pairedCosine(engine: Engine, a: Matrix, b: Matrix): Promise<number> {
  const [ab, aa, bb] = await Promise.all([rowDots(engine, a, b), rowDots(engine, a, a), rowDots(engine, b, b)]);
  let total = 0;
  for (let i = 0; i < a.rows; i++) total += aa[i]! > 0 && bb[i]! > 0 ? ab[i]! / Math.sqrt(aa[i]! * bb[i]!) : 0;
  return total / a.rows;
}

export const cosine = defineFeatureMetric({
  name: 'cosine',
  title: 'paired cosine',
  definition: 'mean_i cos(a_i, b_i)',
  range: [-1, 1],
  symmetric: true,
  needsSameDim: true,
  minN: 1,
  minNReason: 'a mean over rows',
  invariantTo: { orthogonalEither: false, orthogonalBoth: true, isotropicScaling: true, rowScaling: true, translation: false, jointPermutation: true },
  fromFeatures: async (a, b) => ({ value: await pairedCosine(a.engine, a.x, b.x) }),
  statistic: async (a, b) => cosineStatistic(await a.heap(), await b.heap()),
});

/** Every cross-pair cosine is O(d) from the row norms, so a permutation costs O(n·d) and a subsample O(m). */
function cosineStatistic(a: Matrix, b: Matrix): PairStatistic {
  const { cosA, cosPaired } = cosineParts(a, b);
  return {
    permuted: async (perm) => {
      let total = 0;
      for (let i = 0; i < a.rows; i++) total += cosA(i, perm[i]!);
      return total / a.rows;
    },
    subsample: async (rows) => {
      let total = 0;
      for (const r of rows) total += cosPaired[r]!;
      return { value: total / rows.length, recomputed: false };
    },
  };
}

function cosineParts(a: Matrix, b: Matrix) {
  const d = a.cols;
  const norm = (x: Matrix) => {
    const out = new Float64Array(x.rows);
    for (let i = 0; i < x.rows; i++) {
      let s = 0;
      for (let c = 0; c < d; c++) s += x.data[i * d + c]! ** 2;
      out[i] = Math.sqrt(s);
    }
    return out;
  };
  const na = norm(a);
  const nb = norm(b);
  // Same convention as pairedCosine: a pair with a zero-norm row counts 0.
  const cosA = (i: number, j: number) => {
    if (!(na[i]! > 0 && nb[j]! > 0)) return 0;
    let s = 0;
    for (let c = 0; c < d; c++) s += a.data[i * d + c]! * b.data[j * d + c]!;
    return s / (na[i]! * nb[j]!);
  };
  const cosPaired = Float64Array.from({ length: a.rows }, (_, i) => cosA(i, i));
  return { cosA, cosPaired };
}
