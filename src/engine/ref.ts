import { type Matrix, toFloat64 } from '../core/matrix.js';
import { checkCrossInput, checkKnnInput, type Engine, type KnnLists, type KnnOptions } from './types.js';

/**
 * The reference engine: float64, plain loops, meant to be read as the definition and used as the test oracle.
 * O(n²·d) time, O(n) extra memory per row.
 */
export class RefEngine implements Engine {
  readonly name = 'ref';
  readonly precision = 'float64' as const;
  readonly device = 'TypeScript float64 loops (CPU, 1 thread)';

  async gramTile(a: Matrix, rowStart: number, rowEnd: number, b: Matrix): Promise<Float64Array> {
    const A = toFloat64(a).data;
    const B = toFloat64(b).data;
    const d = a.cols;
    const out = new Float64Array((rowEnd - rowStart) * b.rows);
    for (let i = rowStart; i < rowEnd; i++) {
      for (let j = 0; j < b.rows; j++) {
        let s = 0;
        for (let c = 0; c < d; c++) s += A[i * d + c]! * B[j * d + c]!;
        out[(i - rowStart) * b.rows + j] = s;
      }
    }
    return out;
  }

  async knn(x: Matrix, k: number, options: KnnOptions = {}): Promise<KnnLists> {
    checkKnnInput(x, k);
    const n = x.rows;
    const X = toFloat64(x);
    const indices = new Int32Array(n * k);
    const values = new Float64Array(n * k);
    const next = new Float64Array(n);
    const order = new Int32Array(n - 1);
    for (let i = 0; i < n; i++) {
      options.signal?.throwIfAborted();
      const rowK = await this.gramTile(X, i, i + 1, X);
      let m = 0;
      for (let j = 0; j < n; j++) if (j !== i) order[m++] = j;
      // Full sort is O(n log n) per row: fine for an oracle. Ties broken by the smaller index.
      const sorted = Array.from(order).sort((p, q) => rowK[q]! - rowK[p]! || p - q);
      for (let r = 0; r < k; r++) {
        indices[i * k + r] = sorted[r]!;
        values[i * k + r] = rowK[sorted[r]!]!;
      }
      next[i] = k < n - 1 ? rowK[sorted[k]!]! : -Infinity;
      options.onProgress?.(i + 1, n);
    }
    return { n, k, indices, values, next, tieTolerance: 0 };
  }

  async crossProduct(a: Matrix, b: Matrix): Promise<Float64Array> {
    checkCrossInput(a, b);
    const A = toFloat64(a).data;
    const B = toFloat64(b).data;
    const p = a.cols;
    const q = b.cols;
    const out = new Float64Array(p * q);
    for (let i = 0; i < a.rows; i++) {
      for (let r = 0; r < p; r++) {
        const v = A[i * p + r]!;
        if (v === 0) continue;
        for (let c = 0; c < q; c++) out[r * q + c]! += v * B[i * q + c]!;
      }
    }
    return out;
  }

  async dispose(): Promise<void> {}
}
