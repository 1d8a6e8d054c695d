import { InputError } from '../core/errors.js';

/** What each metric is, as data (ReSi-style), so callers and pages never hard-code a metric's behaviour. */
export interface MetricSpec {
  name: MetricName;
  title: string;
  /** metric(A, B) = metric(B, A) for all inputs. */
  symmetric: boolean;
  /** Uses k-nearest-neighbour lists (and so a k). */
  needsKnn: boolean;
  /** Requires dA = dB. */
  needsSameDim: boolean;
  /** Larger value = more similar, within [min, max] (NaN possible where `undefined_reason` is set). */
  range: [number, number];
  invariances: string[];
  definition: string;
}

export const METRIC_NAMES = ['cknna', 'mutual_knn', 'cycle_knn', 'cka', 'unbiased_cka', 'cosine'] as const;
export type MetricName = (typeof METRIC_NAMES)[number];

export const METRICS: Record<MetricName, MetricSpec> = {
  cknna: {
    name: 'cknna',
    title: 'CKNNA',
    symmetric: false,
    needsKnn: true,
    needsSameDim: false,
    range: [-1, 1],
    invariances: ['orthogonal transform of either side', 'isotropic scaling (up to the +1e-6)', 'joint permutation of samples'],
    definition: 'HSIC_u(M∘K, M∘L)/(√(HSIC_u(M_K∘K,M_K∘K)·HSIC_u(M_L∘L,M_L∘L))+1e-6), M_ij=1[j∈knn_K(i)∧j∈knn_L(i)], raw inner-product kernels',
  },
  mutual_knn: {
    name: 'mutual_knn',
    title: 'mutual k-NN',
    symmetric: true,
    needsKnn: true,
    needsSameDim: false,
    range: [0, 1],
    invariances: ['orthogonal transform of either side', 'any scaling', 'joint permutation of samples'],
    definition: 'mean_i |knn_A(i) ∩ knn_B(i)| / k, inner-product neighbours, self excluded',
  },
  cycle_knn: {
    name: 'cycle_knn',
    title: 'cycle k-NN',
    symmetric: false,
    needsKnn: true,
    needsSameDim: false,
    range: [0, 1],
    invariances: ['orthogonal transform of either side', 'any scaling', 'joint permutation of samples'],
    definition: 'mean_i 1[i ∈ ∪_{j∈knn_B(i)} knn_A(j)]',
  },
  cka: {
    name: 'cka',
    title: 'CKA (linear, biased HSIC)',
    symmetric: true,
    needsKnn: false,
    needsSameDim: false,
    range: [0, 1],
    invariances: ['orthogonal transform of either side', 'isotropic scaling (up to the +1e-6)', 'joint permutation of samples', 'translation'],
    definition: 'trace(KHLH)/(√(trace(KHKH)·trace(LHLH))+1e-6), K=A·Aᵀ, L=B·Bᵀ',
  },
  unbiased_cka: {
    name: 'unbiased_cka',
    title: 'CKA (linear, unbiased HSIC)',
    symmetric: true,
    needsKnn: false,
    needsSameDim: false,
    range: [-1, 1],
    invariances: ['orthogonal transform of either side', 'isotropic scaling (up to the +1e-6)', 'joint permutation of samples', 'translation'],
    definition: 'HSIC_u(K,L)/(√(HSIC_u(K,K)·HSIC_u(L,L))+1e-6)',
  },
  cosine: {
    name: 'cosine',
    title: 'paired cosine',
    symmetric: true,
    needsKnn: false,
    needsSameDim: true,
    range: [-1, 1],
    invariances: ['scaling of each row', 'the same orthogonal transform of both sides', 'joint permutation of samples'],
    definition: 'mean_i cos(a_i, b_i)',
  },
};

export function parseMetric(name: string): MetricName {
  if ((METRIC_NAMES as readonly string[]).includes(name)) return name as MetricName;
  throw new InputError(`--metric: unknown metric '${name}' (expected one of ${METRIC_NAMES.join(', ')})`);
}
