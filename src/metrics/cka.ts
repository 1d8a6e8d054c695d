import { InputError } from '../core/errors.js';
import { ckaStatistic } from './cka-grams.js';
import { Features } from './features.js';
import { defineFeatureMetric, type FeatureMetricSpec } from './spec.js';

/**
 * Linear CKA, biased and unbiased, matching the reference code's kernels (K = A·Aᵀ on the preprocessed features):
 *   cka          = HSIC_b(K,L) / (√(HSIC_b(K,K)·HSIC_b(L,L)) + 1e-6),  HSIC_b = trace(K·H·L·H)  (no 1/(n−1)² factor)
 *   unbiased_cka = the same with HSIC_u.
 * Computed in feature space, O(n·dA·dB) and no n×n matrix:
 *   trace(KHLH) = ‖ÃᵀB̃‖²_F with Ã, B̃ column-centred; HSIC_u is invariant to K → K + u1ᵀ + 1vᵀ (U-centring), so it
 *   may also use the centred features, where ΣK̃ = −Σ‖ã_i‖² and (1ᵀK̃)_j = −‖ã_j‖²:
 *   HSIC_u = [‖ÃᵀB̃‖² − Σ‖ã_i‖²‖b̃_i‖² + (Σ‖ã_i‖²)(Σ‖b̃_i‖²)/((n−1)(n−2)) − 2Σ‖ã_i‖²‖b̃_i‖²/(n−2)] / (n(n−3)).
 * Centring first also avoids the cancellation that a large common mean (typical of LLM hidden states) causes in
 * float32.
 */
export async function hsicPair(a: Features, b: Features): Promise<{ biased: number; unbiased: number }> {
  const n = a.n;
  await Features.checkCrossRange(a, b);
  const cross = await a.engine.crossProduct(a.centred(), b.centred());
  let frob = 0;
  for (let i = 0; i < cross.length; i++) frob += cross[i]! * cross[i]!;
  // Whatever the engine and its precision: an overflowed entry must not become a printed number.
  if (!Number.isFinite(frob)) {
    throw new InputError(
      `${a.label} vs ${b.label}: the ${a.engine.name} engine's (${a.engine.precision}) cross product overflowed (‖ÃᵀB̃‖² = ${frob}); use --preprocess l2 or prh${a.engine.precision !== 'float64' ? ', or --engine ref' : ''}`,
    );
  }
  const na = await a.centredSquaredNorms();
  const nb = a === b ? na : await b.centredSquaredNorms();
  let sa = 0;
  let sb = 0;
  let sab = 0;
  for (let i = 0; i < n; i++) {
    sa += na[i]!;
    sb += nb[i]!;
    sab += na[i]! * nb[i]!;
  }
  const unbiased = (frob - sab + (sa * sb) / ((n - 1) * (n - 2)) - (2 * sab) / (n - 2)) / (n * (n - 3));
  return { biased: frob, unbiased };
}

export async function ckaValues(a: Features, b: Features): Promise<{ cka: number; unbiasedCka: number; undefinedReason?: string }> {
  const kl = await hsicPair(a, b);
  const kk = await a.selfHsic(() => hsicPair(a, a));
  const ll = await b.selfHsic(() => hsicPair(b, b));
  const cka = kl.biased / (Math.sqrt(kk.biased * ll.biased) + 1e-6);
  const prod = kk.unbiased * ll.unbiased;
  if (!(prod >= 0)) {
    return {
      cka,
      unbiasedCka: NaN,
      undefinedReason: `HSIC_u(K,K)·HSIC_u(L,L) = ${kk.unbiased.toPrecision(6)}·${ll.unbiased.toPrecision(6)} < 0: square root undefined`,
    };
  }
  return { cka, unbiasedCka: kl.unbiased / (Math.sqrt(prod) + 1e-6) };
}

/** Linear CKA and unbiased CKA share their algebra; their only difference in data is the estimator and its range. */
export const CKA_INVARIANCES = { orthogonalEither: true, orthogonalBoth: true, isotropicScaling: true, rowScaling: false, translation: true, jointPermutation: true };

export const cka: FeatureMetricSpec<'cka'> = defineFeatureMetric({
  name: 'cka',
  title: 'CKA (linear, biased HSIC)',
  definition: 'trace(KHLH)/(√(trace(KHKH)·trace(LHLH))+1e-6), K=A·Aᵀ, L=B·Bᵀ',
  range: [0, 1],
  symmetric: true,
  needsSameDim: false,
  minN: 4,
  minNReason: 'HSIC divides by n(n−3)',
  invariantTo: CKA_INVARIANCES,
  fromFeatures: async (a, b) => ({ value: (await ckaValues(a, b)).cka }),
  statistic: (a, b, options) => ckaStatistic(cka, a, b, options, false),
});
