import { ParamError } from '../core/errors.js';
import { cka } from './cka.js';
import { cknna } from './cknna.js';
import { cosine } from './cosine.js';
import { cycleKnn } from './cycle-knn.js';
import { mutualKnn } from './mutual-knn.js';
import type { MetricSpec } from './spec.js';
import { unbiasedCka } from './unbiased-cka.js';

export type { MetricSpec, KnnMetricSpec, FeatureMetricSpec, Invariances, MetricValue, PairStatistic } from './spec.js';

/** Every metric the toolkit offers, in the order outputs list them: one import and one line per metric. */
const SPECS = [cknna, mutualKnn, cycleKnn, cka, unbiasedCka, cosine] as const;

type Names<T extends readonly { name: string }[]> = { readonly [I in keyof T]: T[I]['name'] };

export const METRIC_NAMES = SPECS.map((s) => s.name) as unknown as Names<typeof SPECS>;
export type MetricName = (typeof METRIC_NAMES)[number];

export const METRICS = Object.fromEntries(SPECS.map((s) => [s.name, s])) as Record<MetricName, MetricSpec>;

export function parseMetric(name: string): MetricName {
  if ((METRIC_NAMES as readonly string[]).includes(name)) return name as MetricName;
  throw new ParamError('metric', `unknown metric '${name}' (expected one of ${METRIC_NAMES.join(', ')})`);
}

/** A registered metric by name, or a spec given directly (a metric defined outside the registry, e.g. in a test). */
export function resolveMetric(metric: MetricName | MetricSpec): MetricSpec {
  return typeof metric === 'string' ? METRICS[metric] : metric;
}
