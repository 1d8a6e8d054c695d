import type { KnnLists } from '../engine/index.js';

/** cycle_knn(A, B, k) = mean over i of 1[i ∈ ∪_{j ∈ knn_B(i)} knn_A(j)]: go to B's neighbours, come back through A's. */
export function cycleKnnFromKnn(a: KnnLists, b: KnnLists): number {
  const { n, k } = a;
  let hits = 0;
  for (let i = 0; i < n; i++) {
    let found = false;
    for (let r = 0; r < k && !found; r++) {
      const j = b.indices[i * k + r]!;
      for (let s = 0; s < k; s++) {
        if (a.indices[j * k + s] === i) {
          found = true;
          break;
        }
      }
    }
    if (found) hits++;
  }
  return hits / n;
}
