import { knnProvenance } from '../engine/approx.js';
import { InputError } from '../core/errors.js';
import { checkKBelowN, K } from './params.js';
import { cknnaFromKnn } from './cknna.js';
import { cycleKnnFromKnn } from './cycle-knn.js';
import { ckaValues } from './cka.js';
import { pairedCosine } from './cosine.js';
import type { Features } from './features.js';
import { countTiedRows } from './knn-mask.js';
import { mutualKnnFromKnn } from './mutual-knn.js';
import { METRICS, type MetricName } from './registry.js';
import type { MetricResult } from './result.js';

export { Features } from './features.js';
export { METRICS, METRIC_NAMES, parseMetric, type MetricName, type MetricSpec } from './registry.js';
export { preprocess, parsePreprocess, describePreprocess, PREPROCESS_NAMES, type Preprocess } from '../core/preprocess.js';
export type { MetricResult } from './result.js';

export const DEFAULT_K = K.default!;

/** Checks the inputs a metric is defined for; messages name both sides' shapes. */
export function checkMetricInputs(metric: MetricName, nA: number, nB: number, dA: number, dB: number, k: number, labels = ['A', 'B']): void {
  const spec = METRICS[metric];
  // Zero-width or empty inputs first: every later check and every engine allocation assumes n, d ≥ 1.
  for (const [label, n, d] of [[labels[0], nA, dA], [labels[1], nB, dB]] as const) {
    if (n < 1 || d < 1) throw new InputError(`${label} is ${n}×${d}: ${metric} needs n ≥ 1 rows and d ≥ 1 feature columns (an empty or zero-width matrix)`);
  }
  if (nA !== nB) throw new InputError(`${labels[0]} has ${nA} rows but ${labels[1]} has ${nB}: metrics compare the same samples row by row`);
  if (spec.needsSameDim && dA !== dB) {
    throw new InputError(`${metric} needs features of the same width: ${labels[0]} is ${nA}×${dA}, ${labels[1]} is ${nB}×${dB}`);
  }
  if (metric !== 'cosine' && nA <= 3) throw new InputError(`${metric} is undefined for n = ${nA} ≤ 3 samples (HSIC divides by n(n−3))`);
  if (spec.needsKnn) {
    checkKBelowN(k, nA);
  }
}

/** Computes one metric between two prepared representations (A first, B second). */
export async function computeMetric(metric: MetricName, a: Features, b: Features, k: number, preprocess: string): Promise<MetricResult> {
  const spec = METRICS[metric];
  checkMetricInputs(metric, a.n, b.n, a.d, b.d, k, [a.label, b.label]);
  const base: MetricResult = {
    metric,
    value: NaN,
    n: a.n,
    k: spec.needsKnn ? k : null,
    dA: a.d,
    dB: b.d,
    preprocess,
    engine: a.engine.name,
    precision: a.engine.precision,
    device: a.engine.device,
  };
  if (spec.needsKnn) {
    const [ka, kb] = await Promise.all([a.knn(k), b.knn(k)]);
    base.tied_rows_a = countTiedRows(ka);
    base.tied_rows_b = countTiedRows(kb);
    const [pa, pb] = [knnProvenance(ka), knnProvenance(kb)];
    base.knn = pa.method === 'hnsw' || pb.method === 'hnsw' ? 'hnsw' : 'exact';
    if (base.knn === 'hnsw') {
      base.knn_recall_a = pa.recall;
      base.knn_recall_b = pb.recall;
      const approx = pa.method === 'hnsw' ? pa : pb;
      base.knn_params = `${approx.params}, recall on ${approx.recall_rows} rows`;
    }
    if (metric === 'cknna') {
      const r = cknnaFromKnn(ka, kb);
      base.value = r.value;
      if (r.undefinedReason) base.undefined_reason = r.undefinedReason;
      if (r.warning) base.warning = r.warning;
    } else if (metric === 'mutual_knn') base.value = mutualKnnFromKnn(ka, kb);
    else base.value = cycleKnnFromKnn(ka, kb);
  } else if (metric === 'cosine') {
    base.value = await pairedCosine(a.engine, a.x, b.x);
  } else {
    const r = await ckaValues(a, b);
    base.value = metric === 'cka' ? r.cka : r.unbiasedCka;
    if (metric === 'unbiased_cka' && r.undefinedReason) base.undefined_reason = r.undefinedReason;
  }
  return base;
}
