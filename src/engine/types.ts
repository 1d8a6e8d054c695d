import { InputError } from '../core/errors.js';
import type { Matrix } from '../core/matrix.js';

/**
 * The k nearest neighbours of every row of X under the inner-product kernel K = X·Xᵀ, self excluded.
 * Row i's neighbours are sorted by descending K_ij. `next` holds the (k+1)-th largest value of each row, so ties at
 * the k-th neighbour (which make the mask implementation-defined) can be detected.
 */
export interface KnnLists {
  readonly n: number;
  readonly k: number;
  readonly indices: Int32Array; // n·k
  readonly values: Float64Array; // n·k, K_ij for the listed neighbours
  readonly next: Float64Array; // n, the (k+1)-th largest K_ij (j ≠ i), −Infinity when k = n−1
  /** Half-width below which two kernel values are indistinguishable for the engine that produced them. */
  readonly tieTolerance: number;
}

/**
 * Arithmetic of the Gram products. `tf32` and `bf16` are the torch engine's opt-in fast modes (10 and 7 mantissa bits
 * in the products): their values do not equal `ref` to 2e-5, which is why the name travels with every result.
 */
export type EnginePrecision = 'float64' | 'float32' | 'tf32' | 'bf16';

export interface EngineInfo {
  /** `ref`, `cpu`, `webgpu`, `cuda`, `torch`. */
  readonly name: string;
  /** Arithmetic of the Gram products; sums over many terms always accumulate in float64. */
  readonly precision: EnginePrecision;
  /** What actually ran it, e.g. `onnxruntime-node 1.23.2 CPU EP, 2 threads`. Never claims a device it did not use. */
  readonly device: string;
}

export interface KnnOptions {
  onProgress?: (rowsDone: number, rowsTotal: number) => void;
  signal?: AbortSignal;
}

/**
 * The compute engine: the only place that touches O(n²·d) work. Everything downstream (metrics) works on the O(n·k)
 * neighbour lists or on d×d cross products, so no engine ever needs an n×n matrix in memory.
 */
export interface Engine extends EngineInfo {
  /** G[i − rowStart, j] = ⟨a_i, b_j⟩ for i ∈ [rowStart, rowEnd), j ∈ [0, b.rows): one tile of A·Bᵀ. */
  gramTile(a: Matrix, rowStart: number, rowEnd: number, b: Matrix): Promise<Float64Array | Float32Array>;
  /** Row top-k of X·Xᵀ with self excluded (tiled: memory O(n·(tile + k))). */
  knn(x: Matrix, k: number, options?: KnnOptions): Promise<KnnLists>;
  /** Aᵀ·B (dA × dB, row-major), partial sums over row blocks accumulated in float64. */
  crossProduct(a: Matrix, b: Matrix): Promise<Float64Array>;
  dispose(): Promise<void>;
  /**
   * Present on engines that read file-backed matrices (`Matrix.source`) themselves: pipelines then hand them
   * descriptions instead of values (src/engine/source.ts), and the few O(n·d) sums metrics need come from here.
   */
  readonly files?: FileRowsOps;
}

/** The O(n·d) work on file-backed matrices that metrics otherwise do over `Matrix.data` (src/engine/rows.ts). */
export interface FileRowsOps {
  /** Σ_c a_ic·b_ic per row, float64. */
  rowDots(a: Matrix, b: Matrix): Promise<Float64Array>;
  /** Σ_i x_ic² per column, float64. */
  columnSquaredNorms(x: Matrix): Promise<Float64Array>;
  /** The values into Node's heap, for the paths that need them there (permutations, half-sampling, HNSW). */
  read(x: Matrix): Promise<Matrix>;
}

export function describeEngine(e: EngineInfo): string {
  return `${e.name} (${e.precision}; ${e.device})`;
}

/**
 * The shapes every engine's entry points accept, checked before anything is allocated: an [n, 0] or [0, d] matrix
 * (a zero-width file, an empty capture) would otherwise reach allocations sized by n·k and fail with a RangeError
 * or run for hours on n = 10⁶ rows of nothing. Every engine calls these first.
 */
export function checkKnnInput(x: Matrix, k: number): void {
  checkMatrixShape(x, 'kNN input');
  if (x.rows < 2) throw new InputError(`kNN input has n = ${x.rows} rows; neighbours need n ≥ 2`);
  if (!Number.isInteger(k) || k < 1 || k >= x.rows) throw new InputError(`kNN: k = ${k} must be an integer in [1, n − 1] = [1, ${x.rows - 1}]`);
}

export function checkCrossInput(a: Matrix, b: Matrix): void {
  checkMatrixShape(a, 'cross product A');
  checkMatrixShape(b, 'cross product B');
  if (a.rows !== b.rows) throw new InputError(`cross product: A has ${a.rows} rows but B has ${b.rows}`);
}

function checkMatrixShape(m: Matrix, what: string): void {
  if (!(Number.isSafeInteger(m.rows) && Number.isSafeInteger(m.cols) && m.rows >= 1 && m.cols >= 1)) {
    throw new InputError(`${what} is ${m.rows}×${m.cols}: an empty or zero-width matrix has nothing to compare (n ≥ 1 rows and d ≥ 1 columns needed)`);
  }
  if (!m.source && m.data.length !== m.rows * m.cols) throw new InputError(`${what}: data has ${m.data.length} values, expected ${m.rows}×${m.cols}`);
}
