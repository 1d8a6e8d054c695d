import type { KnnLists } from '../engine/index.js';

/** mutual_knn(A, B, k) = mean over i of |knn_A(i) ∩ knn_B(i)| / k. Symmetric. */
export function mutualKnnFromKnn(a: KnnLists, b: KnnLists): number {
  const { n, k } = a;
  const stamp = new Int32Array(n);
  let total = 0;
  for (let i = 0; i < n; i++) {
    for (let r = 0; r < k; r++) stamp[b.indices[i * k + r]!] = i + 1;
    let hits = 0;
    for (let r = 0; r < k; r++) if (stamp[a.indices[i * k + r]!] === i + 1) hits++;
    total += hits / k;
  }
  return total / n;
}
