import type { KnnLists } from '../engine/index.js';
import { permuteKnn, restrictKnn } from '../engine/knn-lists.js';
import type { Matrix } from '../core/matrix.js';
import { computeSpec } from './compute.js';
import { Features } from './features.js';
import type { KnnMetricSpec, MetricSpec, PairStatistic, StatisticOptions } from './spec.js';

/** The rows `rows` of `x`, in that order (a subsample, or a re-pairing when `rows` is a permutation). */
export function subMatrix(x: Matrix, rows: Int32Array): Matrix {
  const d = x.cols;
  const out = x.data instanceof Float64Array ? new Float64Array(rows.length * d) : new Float32Array(rows.length * d);
  for (let r = 0; r < rows.length; r++) out.set(x.data.subarray(rows[r]! * d, (rows[r]! + 1) * d), r * d);
  return { rows: rows.length, cols: d, data: out };
}

/** K for the full-sample lists that subsample lists are read from: k_m + 1 hits expected ~3× over, plus slack. */
function cachedK(k: number, n: number, fraction: number): number {
  return Math.min(n - 1, Math.ceil((3 * (k + 1)) / fraction) + 10);
}

/**
 * Any kNN metric's statistics, without a Gram product per draw: B's lists are relabelled for the null
 * (`permuteKnn`), and a subsample's lists are read off one larger-K search per side (`restrictKnn`), recomputed from
 * the features only for a draw where some row lacks enough cached neighbours.
 */
export async function knnStatistic(spec: KnnMetricSpec, a: Features, b: Features, options: StatisticOptions): Promise<PairStatistic> {
  const engine = a.engine;
  const [ka, kb] = await Promise.all([a.knn(options.k), b.knn(options.k)]);
  let big: Promise<[KnnLists, KnnLists]> | undefined;
  return {
    permuted: async (perm) => spec.fromKnn(ka, permuteKnn(kb, perm)).value,
    subsample: async (rows, km) => {
      // Made on the first draw, then cached.
      big ??= (async () => {
        const K = cachedK(km, a.n, options.fraction);
        return Promise.all([a.knn(K), b.knn(K)]);
      })();
      const [ba, bb] = await big;
      let ra = restrictKnn(ba, rows, km);
      let rb = restrictKnn(bb, rows, km);
      const recomputed = !ra || !rb;
      ra ??= await engine.knn(subMatrix(await a.heap(), rows), km);
      rb ??= await engine.knn(subMatrix(await b.heap(), rows), km);
      return { value: spec.fromKnn(ra, rb).value, recomputed };
    },
  };
}

/**
 * Any metric's statistics by recomputing it on re-paired or subsampled copies of the features: no extra memory,
 * one full computation per permutation or draw (the fallback where a metric's own forms would not fit).
 */
export function recomputedStatistic(spec: MetricSpec, a: Features, b: Features, options: StatisticOptions): PairStatistic {
  const engine = a.engine;
  const prep = 'stats';
  return {
    permuted: async (perm) => {
      const bp = new Features(subMatrix(await b.heap(), perm), engine, b.label);
      return (await computeSpec(spec, a, bp, options.k, prep)).value;
    },
    subsample: async (rows) => {
      const as = new Features(subMatrix(await a.heap(), rows), engine, a.label);
      const bs = new Features(subMatrix(await b.heap(), rows), engine, b.label);
      return { value: (await computeSpec(spec, as, bs, options.k, prep)).value, recomputed: true };
    },
  };
}
