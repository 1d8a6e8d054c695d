import type { Engine, KnnLists } from '../engine/index.js';
import { InputError } from '../core/errors.js';
import { sourcedMatrix, type Matrix } from '../core/matrix.js';
import { columnSquaredNorms, heapMatrix, rowDots } from '../engine/rows.js';

/**
 * Largest magnitude a float32 engine's sums may reach here: half of float32's maximum (3.4e38), so rounding in a
 * sum that the bound below allows can never tip it over into Infinity.
 */
export const FLOAT32_SAFE_MAX = 2 ** 127;

function what(engine: Engine): string {
  return `the ${engine.name} engine computes in ${engine.precision} (float32 range: largest value ≈ 3.4e38)`;
}

/**
 * One representation after preprocessing, with the expensive per-representation work cached: its kNN lists (one
 * Gram product per k) and its centred second moments for CKA. A target compared with 33 layers is prepared once.
 */
export class Features {
  private readonly knnCache = new Map<number, Promise<KnnLists>>();
  private centredCache?: Matrix;
  private heapCache?: Promise<Matrix>;
  private columnNormCache?: Promise<number>;
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
      p = this.checkGramRange()
        .then(() => this.engine.knn(this.x, k, onProgress ? { onProgress } : {}))
        .then((lists) => this.checkLists(lists));
      this.knnCache.set(k, p);
    }
    return p;
  }

  /** The values in Node's heap: `x` itself, or read back from the engine once when `x` is file-backed. */
  heap(): Promise<Matrix> {
    this.heapCache ??= heapMatrix(this.engine, this.x);
    return this.heapCache;
  }

  /**
   * Every partial sum of ⟨x_i, x_j⟩ is at most ‖x_i‖·‖x_j‖ (Cauchy–Schwarz), so max‖x_i‖² within range rules out
   * overflow in a float32 Gram product; beyond it, an Inf or NaN kernel value would silently reorder the neighbours.
   */
  private async checkGramRange(): Promise<void> {
    // tf32 and bf16 keep float32's exponent range, so the same bound holds for them.
    if (this.engine.precision === 'float64') return;
    const norms = await rowDots(this.engine, this.x, this.x);
    let max = 0;
    for (let i = 0; i < norms.length; i++) if (norms[i]! > max) max = norms[i]!;
    if (!(max <= FLOAT32_SAFE_MAX)) {
      throw new InputError(
        `${this.label}: squared row norms reach ${max.toPrecision(3)}, and ${what(this.engine)}: its kernel values would overflow; use --preprocess l2 or prh, or --engine ref`,
      );
    }
  }

  /** A non-finite kernel value in the lists (any engine, any precision) would make every metric from them wrong. */
  private checkLists(lists: KnnLists): KnnLists {
    const bad = lists.values.findIndex((v) => !Number.isFinite(v));
    const badNext = lists.next.findIndex((v) => Number.isNaN(v) || v === Infinity);
    if (bad >= 0 || badNext >= 0) {
      const row = bad >= 0 ? Math.floor(bad / lists.k) : badNext;
      throw new InputError(
        `${this.label}: the ${this.engine.name} engine (${this.engine.precision}) returned a non-finite kernel value for row ${row}: the values overflow its arithmetic; use --preprocess l2 or prh${this.engine.precision !== 'float64' ? ', or --engine ref' : ''}`,
      );
    }
    return lists;
  }

  /**
   * The same guarantee for the cross product ÃᵀB̃: each entry's partial sums are at most ‖Ã_:r‖·‖B̃_:c‖, so the
   * largest column norms bound them. Called by CKA before a float32 engine multiplies the two sides.
   */
  static async checkCrossRange(a: Features, b: Features): Promise<void> {
    if (a.engine.precision === 'float64') return;
    const prod = (await a.maxCentredColumnNorm()) * (await b.maxCentredColumnNorm());
    if (!(prod <= FLOAT32_SAFE_MAX)) {
      throw new InputError(
        `${a.label} vs ${b.label}: centred column norms multiply to ${prod.toPrecision(3)}, and ${what(a.engine)}: the cross product would overflow; use --preprocess l2 or prh, or --engine ref`,
      );
    }
  }

  /** From the stored copy: a value beyond float32's range is Infinity there, which the check then refuses. */
  private maxCentredColumnNorm(): Promise<number> {
    // Once per representation: CKA checks each side for each of its three HSIC terms.
    this.columnNormCache ??= columnSquaredNorms(this.engine, this.centred()).then((sq) => {
      let max = 0;
      for (let c = 0; c < sq.length; c++) max = Math.max(max, sq[c]!);
      return Math.sqrt(max);
    });
    return this.columnNormCache;
  }

  /** Column-centred copy, centred in float64 then stored in the engine's precision (by the engine when file-backed). */
  centred(): Matrix {
    if (!this.centredCache && this.x.source) {
      this.centredCache = sourcedMatrix(this.x.rows, this.x.cols, { kind: 'centred', of: this.x }, `${this.label} (centred)`);
    }
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
  centredSquaredNorms(): Promise<Float64Array> {
    const c = this.centred();
    return rowDots(this.engine, c, c);
  }

  /** Cached HSIC(K, K), biased and unbiased, for CKA's denominator. */
  selfHsic(compute: () => Promise<{ biased: number; unbiased: number }>): Promise<{ biased: number; unbiased: number }> {
    this.selfHsicCache ??= compute();
    return this.selfHsicCache;
  }
}
