import { ckaStatistic } from './cka-grams.js';
import { CKA_INVARIANCES, ckaValues } from './cka.js';
import { defineFeatureMetric, type FeatureMetricSpec } from './spec.js';

/** Linear CKA with the unbiased HSIC estimator (Song et al. 2012); the algebra is in cka.ts. Can be negative. */
export const unbiasedCka: FeatureMetricSpec<'unbiased_cka'> = defineFeatureMetric({
  name: 'unbiased_cka',
  title: 'CKA (linear, unbiased HSIC)',
  definition: 'HSIC_u(K,L)/(√(HSIC_u(K,K)·HSIC_u(L,L))+1e-6)',
  range: [-1, 1],
  symmetric: true,
  needsSameDim: false,
  minN: 4,
  minNReason: 'HSIC divides by n(n−3)',
  invariantTo: CKA_INVARIANCES,
  fromFeatures: async (a, b) => {
    const r = await ckaValues(a, b);
    return r.undefinedReason ? { value: r.unbiasedCka, undefinedReason: r.undefinedReason } : { value: r.unbiasedCka };
  },
  statistic: (a, b, options) => ckaStatistic(unbiasedCka, a, b, options, true),
});
