import { checkSpecInputs, computeSpec } from './compute.js';
import type { Features } from './features.js';
import { K } from './params.js';
import { resolveMetric, type MetricName, type MetricSpec } from './registry.js';
import type { MetricResult } from './result.js';

export { Features } from './features.js';
export {
  METRICS,
  METRIC_NAMES,
  parseMetric,
  resolveMetric,
  type MetricName,
  type MetricSpec,
  type KnnMetricSpec,
  type FeatureMetricSpec,
  type Invariances,
  type MetricValue,
  type PairStatistic,
} from './registry.js';
export { defineKnnMetric, defineFeatureMetric, describeInvariances, type StatisticOptions } from './spec.js';
export { subMatrix, knnStatistic, recomputedStatistic } from './statistic.js';
export { preprocess, parsePreprocess, describePreprocess, PREPROCESS_NAMES, type Preprocess } from '../core/preprocess.js';
export type { MetricResult } from './result.js';

export const DEFAULT_K = K.default!;

/** Checks the inputs a metric is defined for; messages name both sides' shapes. */
export function checkMetricInputs(metric: MetricName | MetricSpec, nA: number, nB: number, dA: number, dB: number, k: number, labels = ['A', 'B']): void {
  checkSpecInputs(resolveMetric(metric), nA, nB, dA, dB, k, labels);
}

/** Computes one metric between two prepared representations (A first, B second), dispatching through its spec. */
export function computeMetric(metric: MetricName | MetricSpec, a: Features, b: Features, k: number, preprocess: string): Promise<MetricResult> {
  return computeSpec(resolveMetric(metric), a, b, k, preprocess);
}
