import type { KnnLists } from '../engine/index.js';
import { defineKnnMetric } from './spec.js';

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

export const cycleKnn = defineKnnMetric({
  name: 'cycle_knn',
  title: 'cycle k-NN',
  definition: 'mean_i 1[i ∈ ∪_{j∈knn_B(i)} knn_A(j)]',
  range: [0, 1],
  symmetric: false,
  needsSameDim: false,
  // The floor (and its words) of the HSIC metrics, so that every metric refuses the same inputs.
  minN: 4,
  minNReason: 'HSIC divides by n(n−3)',
  invariantTo: { orthogonalEither: true, orthogonalBoth: true, isotropicScaling: true, rowScaling: false, translation: false, jointPermutation: true },
  fromKnn: (a, b) => ({ value: cycleKnnFromKnn(a, b) }),
});
