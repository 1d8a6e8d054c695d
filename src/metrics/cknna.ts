import type { KnnLists } from '../engine/index.js';
import { hsicUnbiasedSparse } from './hsic.js';
import { maskedKernels } from './knn-mask.js';
import { defineKnnMetric, type MetricValue } from './spec.js';

/**
 * CKNNA (Huh et al. 2024, arXiv 2405.07987), with the reference code's semantics:
 *   sim(K, L) = HSIC_u(M∘K, M∘L), M_ij = 1[j ∈ knn_K(i) ∧ j ∈ knn_L(i)]   (raw, uncentred kernels)
 *   CKNNA    = sim(K, L) / (√(sim(K, K)·sim(L, L)) + 1e-6)
 * Asymmetric (M is not symmetric and the first HSIC term transposes L). Works from the two kNN lists only.
 */
export function cknnaFromKnn(a: KnnLists, b: KnnLists): MetricValue {
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
  const value = simKL / (Math.sqrt(product) + 1e-6);
  const warning = cknnaWarning(a.n, a.k, value);
  return warning ? { value, warning } : { value };
}

/**
 * Why CKNNA can exceed 1, and when to say so. Write HSIC_u(X, Y)·m(m−3) = T1 + T2 − T3 with T1 = Σ X̃_ij·Ỹ_ji (the
 * leading term), T2 = (ΣX̃)(ΣỸ)/((m−1)(m−2)) and T3 = (2/(m−2))·(1ᵀX̃)·(Ỹ1) (the centring terms). With T1 alone the
 * ratio is ≤ 1 by Cauchy–Schwarz: the numerator sums K_ij·L_ij over pairs mutual in both masks, a subset of the pairs
 * each denominator sums over. Rows of a kNN-masked kernel hold k entries of size ~κ, so T1 ~ m·k·κ² while T2 and T3 ~
 * k²·κ²: the centring terms are O(k/n) of the leading one, and once they are not negligible nothing bounds the ratio
 * by 1. platonic-rep's own `cknna` gives the same values (1.0212 at n = 8, k = 5 on the same inputs); over 200 random
 * near-aligned pairs per (n, k) both exceeded 1 at k/n ≥ 0.156 (up to 1.03 at n = 8, k = 5) and never at k/n ≤ 0.1.
 * Hence the warning whenever n < 10·k, and whenever a value above 1 comes out.
 */
export const CKNNA_MIN_N_PER_K = 10;

export function cknnaWarning(n: number, k: number, value: number): string | undefined {
  const small = n < CKNNA_MIN_N_PER_K * k;
  if (!small && !(value > 1)) return undefined;
  return (
    `${value > 1 ? `CKNNA = ${value.toFixed(4)} > 1` : 'CKNNA'} at small n = ${n} for k = ${k}${small ? ` (n < ${CKNNA_MIN_N_PER_K}·k)` : ''}: ` +
    'the centring terms of the unbiased HSIC are O(k/n) of the leading term, so the score is not bounded by 1 ' +
    '(platonic-rep computes the same); use more samples or a smaller k'
  );
}

export const cknna = defineKnnMetric({
  name: 'cknna',
  title: 'CKNNA',
  definition: 'HSIC_u(M∘K, M∘L)/(√(HSIC_u(M_K∘K,M_K∘K)·HSIC_u(M_L∘L,M_L∘L))+1e-6), M_ij=1[j∈knn_K(i)∧j∈knn_L(i)], raw inner-product kernels',
  range: [-1, 1],
  symmetric: false,
  needsSameDim: false,
  minN: 4,
  minNReason: 'HSIC divides by n(n−3)',
  // Raw (uncentred) kernels: a translation moves both the neighbours and the kernel values.
  invariantTo: { orthogonalEither: true, orthogonalBoth: true, isotropicScaling: true, rowScaling: false, translation: false, jointPermutation: true },
  fromKnn: cknnaFromKnn,
});
