import type { KnnLists } from './index.js';

/**
 * kNN lists of a row-permuted matrix without a Gram product. With Bπ the matrix whose row i is B's row perm[i],
 * the inner products are only relabelled: knn_{Bπ}(i) = π⁻¹(knn_B(π(i))), same values, same (k+1)-th value. So a
 * permutation null of a kNN metric costs O(n·k) per permutation instead of a full kNN search.
 * (Ties at equal kernel values may be ordered differently than a fresh search would order them; the neighbour SET
 * is the same unless a tie straddles the k-th place, which `countTiedRows` reports.)
 */
export function permuteKnn(lists: KnnLists, perm: Int32Array): KnnLists {
  const { n, k } = lists;
  if (perm.length !== n) throw new Error(`permuteKnn: permutation of length ${perm.length} for ${n} rows`);
  const inv = new Int32Array(n);
  for (let i = 0; i < n; i++) inv[perm[i]!] = i;
  const indices = new Int32Array(n * k);
  const values = new Float64Array(n * k);
  const next = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    const src = perm[i]!;
    for (let r = 0; r < k; r++) {
      indices[i * k + r] = inv[lists.indices[src * k + r]!]!;
      values[i * k + r] = lists.values[src * k + r]!;
    }
    next[i] = lists.next[src]!;
  }
  return { n, k, indices, values, next, tieTolerance: lists.tieTolerance };
}

/**
 * The k-NN lists of the submatrix made of `rows` (distinct row indices; output row r = input row rows[r]), read off
 * lists computed on the full matrix with a larger K. Exact: a row's nearest neighbours inside the subset are the
 * first of its full-sample neighbours that lie in the subset, in the same order. Needs k + 1 of them (the extra one
 * for the tie-detection value `next`) among the K cached; returns null when some row has fewer, and the caller
 * recomputes that subsample from the features.
 */
export function restrictKnn(lists: KnnLists, rows: Int32Array, k: number): KnnLists | null {
  const { n, k: K } = lists;
  const m = rows.length;
  if (k >= m) throw new Error(`restrictKnn: k = ${k} must be smaller than the subset size ${m}`);
  const pos = new Int32Array(n).fill(-1);
  for (let r = 0; r < m; r++) {
    const src = rows[r]!;
    if (pos[src] !== -1) throw new Error(`restrictKnn: row ${src} listed twice (the subset must be drawn without replacement)`);
    pos[src] = r;
  }
  // With a complete list (K = n − 1) every other row is listed, so the subset lists are always complete too.
  const complete = K === n - 1;
  const indices = new Int32Array(m * k);
  const values = new Float64Array(m * k);
  const next = new Float64Array(m);
  for (let r = 0; r < m; r++) {
    const src = rows[r]!;
    let found = 0;
    let nextValue = -Infinity;
    for (let t = 0; t < K && found <= k; t++) {
      const j = lists.indices[src * K + t]!;
      const p = pos[j]!;
      if (p < 0) continue;
      if (found < k) {
        indices[r * k + found] = p;
        values[r * k + found] = lists.values[src * K + t]!;
      } else nextValue = lists.values[src * K + t]!;
      found++;
    }
    if (found <= k && !(complete && k === m - 1)) return null;
    next[r] = found > k ? nextValue : -Infinity;
  }
  return { n: m, k, indices, values, next, tieTolerance: lists.tieTolerance };
}
