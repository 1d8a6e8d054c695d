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
  precision: 'float32' | 'float64';
  device: string;
  /** Rows whose k-th neighbour is tied with the (k+1)-th (mask implementation-defined), per side; kNN metrics only. */
  tied_rows_a?: number;
  tied_rows_b?: number;
  undefined_reason?: string;
}
