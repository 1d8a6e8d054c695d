import type { KnnLists } from '../engine/index.js';
import { defineKnnMetric } from './spec.js';

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

export const mutualKnn = defineKnnMetric({
  name: 'mutual_knn',
  title: 'mutual k-NN',
  definition: 'mean_i |knn_A(i) ∩ knn_B(i)| / k, inner-product neighbours, self excluded',
  range: [0, 1],
  symmetric: true,
  needsSameDim: false,
  // The floor (and its words) of the HSIC metrics, so that every metric refuses the same inputs.
  minN: 4,
  minNReason: 'HSIC divides by n(n−3)',
  invariantTo: { orthogonalEither: true, orthogonalBoth: true, isotropicScaling: true, rowScaling: false, translation: false, jointPermutation: true },
  fromKnn: (a, b) => ({ value: mutualKnnFromKnn(a, b) }),
});
