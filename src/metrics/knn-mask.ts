import type { KnnLists } from '../engine/index.js';
import type { SparseKernelPair } from './hsic.js';

/**
 * The CKNNA mask as a sparse kernel pair. With `b` given: M_ij = 1 iff j ∈ knn_a(i) and j ∈ knn_b(i), carrying
 * K_ij from `a`'s lists and L_ij from `b`'s. Without: the kNN mask of `a` alone, carrying K_ij twice (sim(K, K)).
 */
export function maskedKernels(a: KnnLists, b?: KnnLists): SparseKernelPair {
  const { n, k } = a;
  const rowPtr = new Int32Array(n + 1);
  const cols: number[] = [];
  const kv: number[] = [];
  const lv: number[] = [];
  // stamp[j] = i+1 marks j as a neighbour of row i in b; slot[j] is its position in b's list.
  const stamp = new Int32Array(n);
  const slot = new Int32Array(n);
  const rowEntries: number[] = [];
  for (let i = 0; i < n; i++) {
    if (b) {
      for (let r = 0; r < k; r++) {
        const j = b.indices[i * k + r]!;
        stamp[j] = i + 1;
        slot[j] = r;
      }
    }
    rowEntries.length = 0;
    for (let r = 0; r < k; r++) {
      const j = a.indices[i * k + r]!;
      if (!b || stamp[j] === i + 1) rowEntries.push(r);
    }
    rowEntries.sort((p, q) => a.indices[i * k + p]! - a.indices[i * k + q]!);
    for (const r of rowEntries) {
      const j = a.indices[i * k + r]!;
      cols.push(j);
      kv.push(a.values[i * k + r]!);
      lv.push(b ? b.values[i * k + slot[j]!]! : a.values[i * k + r]!);
    }
    rowPtr[i + 1] = cols.length;
  }
  return { n, rowPtr, cols: Int32Array.from(cols), kv: Float64Array.from(kv), lv: Float64Array.from(lv) };
}

/** Rows whose k-th and (k+1)-th neighbour values are within the engine's tolerance: their mask is ambiguous. */
export function countTiedRows(lists: KnnLists): number {
  const { n, k, values, next, tieTolerance } = lists;
  let tied = 0;
  for (let i = 0; i < n; i++) if (values[i * k + k - 1]! - next[i]! <= tieTolerance) tied++;
  return tied;
}
