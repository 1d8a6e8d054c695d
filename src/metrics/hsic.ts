/**
 * Unbiased HSIC (Song et al. 2012) of two kernels that are zero outside a sparse set of entries, exactly as the
 * Platonic Representation Hypothesis code evaluates it on masked dense matrices:
 *
 *   HSIC_u(K, L) = [ Σ_ij K̃_ij·L̃_ji + (ΣK̃)(ΣL̃)/((m−1)(m−2)) − (2/(m−2))·(1ᵀK̃)·(L̃1) ] / (m(m−3))
 *
 * with K̃, L̃ the kernels with zeroed diagonal. Note the transpose of L̃ in the first term: masks are not symmetric.
 * Every term needs only the listed entries, so the cost is O(nnz·log k) and no n×n matrix exists.
 */
export interface SparseKernelPair {
  n: number;
  /** CSR rows: entries of row i are cols[rowPtr[i] .. rowPtr[i+1]), sorted ascending, never the diagonal. */
  rowPtr: Int32Array;
  cols: Int32Array;
  kv: Float64Array;
  lv: Float64Array;
}

export function hsicUnbiasedSparse(p: SparseKernelPair): number {
  const { n, rowPtr, cols, kv, lv } = p;
  const m = n;
  let sumK = 0;
  let sumL = 0;
  let term1 = 0;
  const colSumK = new Float64Array(n);
  const rowSumL = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    for (let e = rowPtr[i]!; e < rowPtr[i + 1]!; e++) {
      const j = cols[e]!;
      sumK += kv[e]!;
      sumL += lv[e]!;
      colSumK[j]! += kv[e]!;
      rowSumL[i]! += lv[e]!;
      // K̃_ij·L̃_ji: the transposed entry (j, i) exists only if i is listed in row j.
      const t = findInRow(rowPtr, cols, j, i);
      if (t >= 0) term1 += kv[e]! * lv[t]!;
    }
  }
  let term3 = 0;
  for (let j = 0; j < n; j++) term3 += colSumK[j]! * rowSumL[j]!;
  return (term1 + (sumK * sumL) / ((m - 1) * (m - 2)) - (2 * term3) / (m - 2)) / (m * (m - 3));
}

function findInRow(rowPtr: Int32Array, cols: Int32Array, row: number, col: number): number {
  let lo = rowPtr[row]!;
  let hi = rowPtr[row + 1]! - 1;
  while (lo <= hi) {
    const mid = (lo + hi) >>> 1;
    const c = cols[mid]!;
    if (c === col) return mid;
    if (c < col) lo = mid + 1;
    else hi = mid - 1;
  }
  return -1;
}
