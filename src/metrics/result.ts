import type { EnginePrecision } from '../engine/types.js';

/** One similarity score with everything that produced it (ReSi-style: results are self-describing rows). */
export interface MetricResult {
  metric: string;
  /** NaN when the metric is undefined for this input; `undefined_reason` then says why. */
  value: number;
  n: number;
  k: number | null;
  dA: number;
  dB: number;
  preprocess: string;
  engine: string;
  precision: EnginePrecision;
  device: string;
  /** Rows whose k-th neighbour is tied with the (k+1)-th (mask implementation-defined), per side; kNN metrics only. */
  tied_rows_a?: number;
  tied_rows_b?: number;
  /** kNN metrics: how the neighbour lists were obtained (`exact`, or `hnsw`: approximate, see knn_recall_*). */
  knn?: 'exact' | 'hnsw';
  /** Approximate lists only: recall@k against exact kNN on a seeded row sample, per side (null = that side exact). */
  knn_recall_a?: number | null;
  knn_recall_b?: number | null;
  /** Approximate lists only: the index parameters and the recall sample size. */
  knn_params?: string;
  undefined_reason?: string;
  /** The value is defined but needs a caveat (e.g. CKNNA at small n relative to k can exceed 1). */
  warning?: string;
}
