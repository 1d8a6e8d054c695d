import { knnProvenance } from '../engine/approx.js';
import { InputError } from '../core/errors.js';
import type { Features } from './features.js';
import { checkKBelowN } from './params.js';
import { countTiedRows } from './knn-mask.js';
import type { MetricResult } from './result.js';
import type { MetricSpec } from './spec.js';

/** Checks the inputs a metric is defined for; messages name both sides' shapes. */
export function checkSpecInputs(spec: MetricSpec, nA: number, nB: number, dA: number, dB: number, k: number, labels = ['A', 'B']): void {
  const metric = spec.name;
  // Zero-width or empty inputs first: every later check and every engine allocation assumes n, d ≥ 1.
  for (const [label, n, d] of [[labels[0], nA, dA], [labels[1], nB, dB]] as const) {
    if (n < 1 || d < 1) throw new InputError(`${label} is ${n}×${d}: ${metric} needs n ≥ 1 rows and d ≥ 1 feature columns (an empty or zero-width matrix)`);
  }
  if (nA !== nB) throw new InputError(`${labels[0]} has ${nA} rows but ${labels[1]} has ${nB}: metrics compare the same samples row by row`);
  if (spec.needsSameDim && dA !== dB) {
    throw new InputError(`${metric} needs features of the same width: ${labels[0]} is ${nA}×${dA}, ${labels[1]} is ${nB}×${dB}`);
  }
  if (nA < spec.minN) throw new InputError(`${metric} is undefined for n = ${nA} ≤ ${spec.minN - 1} samples (${spec.minNReason})`);
  if (spec.needsKnn) {
    checkKBelowN(k, nA);
  }
}

/** Computes one metric between two prepared representations (A first, B second), through its spec. */
export async function computeSpec(spec: MetricSpec, a: Features, b: Features, k: number, preprocess: string): Promise<MetricResult> {
  checkSpecInputs(spec, a.n, b.n, a.d, b.d, k, [a.label, b.label]);
  const base: MetricResult = {
    metric: spec.name,
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
  const r = spec.needsKnn ? spec.fromKnn(...(await knnWithProvenance(a, b, k, base))) : await spec.fromFeatures(a, b);
  base.value = r.value;
  if (r.undefinedReason) base.undefined_reason = r.undefinedReason;
  if (r.warning) base.warning = r.warning;
  return base;
}

/** Both sides' lists, recording on `base` how they were obtained (ties, exact or approximate, recall). */
async function knnWithProvenance(a: Features, b: Features, k: number, base: MetricResult) {
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
  return [ka, kb] as const;
}
