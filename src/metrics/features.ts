import type { Engine, KnnLists } from '../engine/index.js';
import type { Matrix } from '../matrix.js';

/**
 * One representation after preprocessing, with the expensive per-representation work cached: its kNN lists (one
 * Gram product per k) and its centred second moments for CKA. A target compared with 33 layers is prepared once.
 */
export class Features {
  private readonly knnCache = new Map<number, Promise<KnnLists>>();
  private centredCache?: Matrix;
  private selfHsicCache?: Promise<{ biased: number; unbiased: number }>;

  constructor(
    readonly x: Matrix,
    readonly engine: Engine,
    readonly label = 'features',
  ) {}

  get n(): number {
    return this.x.rows;
  }
  get d(): number {
    return this.x.cols;
  }

  knn(k: number, onProgress?: (done: number, total: number) => void): Promise<KnnLists> {
    // A larger k's lists contain every smaller k's lists as a prefix, but only exact-k lists carry the right
    // (k+1)-th value for tie detection, so each k is its own entry.
    let p = this.knnCache.get(k);
    if (!p) {
      p = this.engine.knn(this.x, k, onProgress ? { onProgress } : {});
      this.knnCache.set(k, p);
    }
    return p;
  }

  /** Column-centred copy, centred in float64 then stored in the engine's precision. */
  centred(): Matrix {
    if (!this.centredCache) {
      const { rows, cols, data } = this.x;
      const mean = new Float64Array(cols);
      for (let i = 0; i < rows; i++) for (let c = 0; c < cols; c++) mean[c]! += data[i * cols + c]!;
      for (let c = 0; c < cols; c++) mean[c]! /= rows;
      const out = this.engine.precision === 'float64' ? new Float64Array(rows * cols) : new Float32Array(rows * cols);
      for (let i = 0; i < rows; i++) for (let c = 0; c < cols; c++) out[i * cols + c] = data[i * cols + c]! - mean[c]!;
      this.centredCache = { rows, cols, data: out };
    }
    return this.centredCache;
  }

  /** Squared row norms of the centred features, float64. */
  centredSquaredNorms(): Float64Array {
    const { rows, cols, data } = this.centred();
    const out = new Float64Array(rows);
    for (let i = 0; i < rows; i++) {
      let s = 0;
      for (let c = 0; c < cols; c++) s += data[i * cols + c]! * data[i * cols + c]!;
      out[i] = s;
    }
    return out;
  }

  /** Cached HSIC(K, K), biased and unbiased, for CKA's denominator. */
  selfHsic(compute: () => Promise<{ biased: number; unbiased: number }>): Promise<{ biased: number; unbiased: number }> {
    this.selfHsicCache ??= compute();
    return this.selfHsicCache;
  }
}
