import type { Engine } from '../engine/types.js';
import type { Features } from './features.js';
import type { FeatureMetricSpec, PairStatistic, StatisticOptions } from './spec.js';
import { recomputedStatistic } from './statistic.js';

/**
 * Linear CKA's statistics. While n ≤ `gramLimit` the two centred n×n Grams are made once, and each permutation or
 * subsample costs O(n²) (a permutation re-pairs B's Gram, a subsample re-centres the restricted Grams); beyond it the
 * metric is recomputed in feature space, O(n·dA·dB) per permutation or draw.
 */
export async function ckaStatistic(spec: FeatureMetricSpec, a: Features, b: Features, options: StatisticOptions, unbiased: boolean): Promise<PairStatistic> {
  if (a.n > options.gramLimit) return recomputedStatistic(spec, a, b, options);
  const Kc = await centredGram(a.engine, a);
  const Lc = await centredGram(a.engine, b);
  const n = a.n;
  const kk = hsicFromCentredGrams(Kc, Kc, n, null);
  const ll = hsicFromCentredGrams(Lc, Lc, n, null);
  return {
    permuted: async (perm) => ckaFrom(hsicFromCentredGrams(Kc, Lc, n, perm), kk, ll, unbiased),
    subsample: async (rows) => {
      const Ks = recentre(Kc, n, rows);
      const Ls = recentre(Lc, n, rows);
      const m = rows.length;
      return {
        value: ckaFrom(hsicFromCentredGrams(Ks, Ls, m, null), hsicFromCentredGrams(Ks, Ks, m, null), hsicFromCentredGrams(Ls, Ls, m, null), unbiased),
        recomputed: false,
      };
    },
  };
}

/** HKH for K = X·Xᵀ, from the column-centred features (Gram of the centred rows), float64. */
async function centredGram(engine: Engine, f: Features): Promise<Float64Array> {
  const c = f.centred();
  const g = await engine.gramTile(c, 0, c.rows, c);
  return g instanceof Float64Array ? g : Float64Array.from(g);
}

/** Doubly centres the restriction of an (already centred) Gram to `rows`: H_m·K_S·H_m. */
function recentre(K: Float64Array, n: number, rows: Int32Array): Float64Array {
  const m = rows.length;
  const out = new Float64Array(m * m);
  const rowMean = new Float64Array(m);
  let total = 0;
  for (let i = 0; i < m; i++) {
    let s = 0;
    for (let j = 0; j < m; j++) {
      const v = K[rows[i]! * n + rows[j]!]!;
      out[i * m + j] = v;
      s += v;
    }
    rowMean[i] = s / m;
    total += s;
  }
  const grand = total / (m * m);
  // The restricted Gram is symmetric, so row means = column means.
  for (let i = 0; i < m; i++) for (let j = 0; j < m; j++) out[i * m + j]! += grand - rowMean[i]! - rowMean[j]!;
  return out;
}

/**
 * Biased and unbiased HSIC from centred Grams, with B's rows re-paired by `perm` (null = identity). Same algebra as
 * cka.ts: trace(KHLH) = Σ_ij Kc_ij·Lc_ij, and HSIC_u from the centred features' squared norms (diagonals).
 */
function hsicFromCentredGrams(Kc: Float64Array, Lc: Float64Array, n: number, perm: Int32Array | null): { biased: number; unbiased: number } {
  let frob = 0;
  let sa = 0;
  let sb = 0;
  let sab = 0;
  for (let i = 0; i < n; i++) {
    const pi = perm ? perm[i]! : i;
    const kr = i * n;
    const lr = pi * n;
    if (perm) for (let j = 0; j < n; j++) frob += Kc[kr + j]! * Lc[lr + perm[j]!]!;
    else for (let j = 0; j < n; j++) frob += Kc[kr + j]! * Lc[lr + j]!;
    const na = Kc[i * n + i]!;
    const nb = Lc[pi * n + pi]!;
    sa += na;
    sb += nb;
    sab += na * nb;
  }
  const unbiased = (frob - sab + (sa * sb) / ((n - 1) * (n - 2)) - (2 * sab) / (n - 2)) / (n * (n - 3));
  return { biased: frob, unbiased };
}

function ckaFrom(kl: { biased: number; unbiased: number }, kk: { biased: number; unbiased: number }, ll: { biased: number; unbiased: number }, unbiased: boolean): number {
  if (!unbiased) return kl.biased / (Math.sqrt(kk.biased * ll.biased) + 1e-6);
  const prod = kk.unbiased * ll.unbiased;
  return prod >= 0 ? kl.unbiased / (Math.sqrt(prod) + 1e-6) : NaN;
}
