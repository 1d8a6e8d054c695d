import type { KnnLists } from '../engine/index.js';
import type { Features } from './features.js';
import { knnStatistic } from './statistic.js';

/**
 * What a metric is invariant to, as flags a test can check (test/metric-properties.test.ts checks every one, true and
 * false, on random data). "Invariant" means m(T(A), T'(B)) = m(A, B) up to the metrics' +1e-6 denominators.
 */
export interface Invariances {
  /** An orthogonal transform of either side alone (A → A·Q, B unchanged, and vice versa). */
  orthogonalEither: boolean;
  /** The same orthogonal transform of both sides (needs dA = dB to be meaningful). */
  orthogonalBoth: boolean;
  /** Multiplying either side by a positive scalar. */
  isotropicScaling: boolean;
  /** Multiplying each row by its own positive scalar. */
  rowScaling: boolean;
  /** Adding a constant vector to every row of either side. */
  translation: boolean;
  /** Reordering the samples of both sides by the same permutation. */
  jointPermutation: boolean;
}

/** The words outputs print for each flag, in this order. */
const INVARIANCE_WORDS: [keyof Invariances, string][] = [
  ['orthogonalEither', 'orthogonal transform of either side'],
  ['orthogonalBoth', 'the same orthogonal transform of both sides'],
  ['isotropicScaling', 'isotropic scaling'],
  ['rowScaling', 'scaling of each row'],
  ['translation', 'translation'],
  ['jointPermutation', 'joint permutation of samples'],
];

/** One value of a metric; NaN with `undefinedReason` where the metric is undefined for the input. */
export interface MetricValue {
  value: number;
  undefinedReason?: string;
  warning?: string;
}

/** A metric as a function of a re-pairing of B's rows (permutation null) and of a subsample of rows (CI draws). */
export interface PairStatistic {
  permuted(perm: Int32Array): Promise<number>;
  subsample(rows: Int32Array, k: number): Promise<{ value: number; recomputed: boolean }>;
}

export interface StatisticOptions {
  /** k of the observed score (kNN metrics; otherwise unused except by recomputation). */
  k: number;
  /** Largest n for which the statistic may hold n×n matrices in memory. */
  gramLimit: number;
  /** Fraction of images kept per subsample draw, in (0, 1). */
  fraction: number;
}

/** What every metric declares, whatever it computes from. */
interface SpecCommon<N extends string> {
  name: N;
  title: string;
  /** The formula, as printed next to results. */
  definition: string;
  /** Larger value = more similar, within [min, max] (NaN possible where `undefinedReason` is set). */
  range: [number, number];
  /** m(A, B) = m(B, A) for all inputs. */
  symmetric: boolean;
  /** Requires dA = dB. */
  needsSameDim: boolean;
  /** Fewest samples the metric is defined for, and why (the refusal's words). */
  minN: number;
  minNReason: string;
  invariantTo: Invariances;
  /** Human-readable list derived from `invariantTo`. */
  readonly invariances: string[];
  /** Permuted and subsampled forms for the statistics (analysis/stats.ts). */
  statistic(a: Features, b: Features, options: StatisticOptions): Promise<PairStatistic>;
}

/** A metric read off the two sides' k-nearest-neighbour lists (and so needing a k). */
export interface KnnMetricSpec<N extends string = string> extends SpecCommon<N> {
  needsKnn: true;
  fromKnn(a: KnnLists, b: KnnLists): MetricValue;
}

/** A metric computed from the two prepared feature matrices. */
export interface FeatureMetricSpec<N extends string = string> extends SpecCommon<N> {
  needsKnn: false;
  fromFeatures(a: Features, b: Features): Promise<MetricValue>;
}

/** What each metric is, as data (ReSi-style), so callers and pages never hard-code a metric's behaviour. */
export type MetricSpec<N extends string = string> = KnnMetricSpec<N> | FeatureMetricSpec<N>;

export function describeInvariances(flags: Invariances): string[] {
  return INVARIANCE_WORDS.filter(([key]) => flags[key]).map(([, words]) => words);
}

/**
 * A kNN metric from its definition: the invariance words come from the flags, and the statistics' forms from
 * `fromKnn` (relabelled lists for the null, lists restricted to the subsample for the CI), the same for every kNN metric.
 */
export function defineKnnMetric<const N extends string>(def: Omit<KnnMetricSpec<N>, 'needsKnn' | 'invariances' | 'statistic'>): KnnMetricSpec<N> {
  const spec: KnnMetricSpec<N> = {
    ...def,
    needsKnn: true,
    invariances: describeInvariances(def.invariantTo),
    statistic: (a, b, options) => knnStatistic(spec, a, b, options),
  };
  return spec;
}

/** A feature-space metric from its definition (its statistics' forms are its own: they depend on the algebra). */
export function defineFeatureMetric<const N extends string>(def: Omit<FeatureMetricSpec<N>, 'needsKnn' | 'invariances'>): FeatureMetricSpec<N> {
  return { ...def, needsKnn: false, invariances: describeInvariances(def.invariantTo) };
}
