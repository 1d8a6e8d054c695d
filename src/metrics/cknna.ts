import type { KnnLists } from '../engine/index.js';
import { hsicUnbiasedSparse } from './hsic.js';
import { maskedKernels } from './knn-mask.js';

/**
 * CKNNA (Huh et al. 2024, arXiv 2405.07987), with the reference code's semantics:
 *   sim(K, L) = HSIC_u(M∘K, M∘L), M_ij = 1[j ∈ knn_K(i) ∧ j ∈ knn_L(i)]   (raw, uncentred kernels)
 *   CKNNA    = sim(K, L) / (√(sim(K, K)·sim(L, L)) + 1e-6)
 * Asymmetric (M is not symmetric and the first HSIC term transposes L). Works from the two kNN lists only.
 */
export function cknnaFromKnn(a: KnnLists, b: KnnLists): { value: number; undefinedReason?: string } {
  const simKL = hsicUnbiasedSparse(maskedKernels(a, b));
  const simKK = hsicUnbiasedSparse(maskedKernels(a));
  const simLL = hsicUnbiasedSparse(maskedKernels(b));
  const product = simKK * simLL;
  if (!(product >= 0)) {
    return {
      value: NaN,
      undefinedReason: `sim(K,K)·sim(L,L) = ${simKK.toPrecision(6)}·${simLL.toPrecision(6)} < 0: the unbiased HSIC of a kNN-masked kernel is negative, so its square root is undefined`,
    };
  }
  return { value: simKL / (Math.sqrt(product) + 1e-6) };
}
