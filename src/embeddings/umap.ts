/**
 * Seeded 2-D UMAP (umap-js) on cosine geometry, with the neighbour graph from the engine.
 *
 * Rows are L2-normalised first, so the engine's inner-product kNN (the same tiled Gram product the kNN metrics use)
 * gives exactly the cosine neighbours, and the Euclidean distance between unit rows, √(2 − 2·cos), is what UMAP's
 * fuzzy graph sees. umap-js's own NN-descent would cost O(n·k·d) per sweep in plain JS at d = 4096; "bring your own
 * kNN" keeps the expensive part in one place and reuses it. Every random draw (umap-js's initial layout and negative
 * sampling) comes from one seeded mulberry32 stream (src/core/rng.ts), so the same input and seed give the same map,
 * in any process.
 */
import { UMAP } from 'umap-js';
import type { Engine } from '../engine/index.js';
import { InputError } from '../core/errors.js';
import type { Matrix } from '../core/matrix.js';
import { mulberry32 } from '../core/rng.js';

export interface UmapOptions {
  seed: number;
  /** Neighbours including the point itself, as in umap-learn (default 15; lowered to n − 1 for tiny inputs). */
  nNeighbors?: number;
  minDist?: number;
  spread?: number;
  /** Optimisation epochs (default: umap-js's choice, 500 for n ≤ 10 000, else 200). */
  nEpochs?: number;
  signal?: AbortSignal;
  onProgress?: (epoch: number, total: number) => void;
}

export interface UmapEmbedding {
  n: number;
  /** n×2 row-major coordinates. */
  coords: Float64Array;
  nNeighbors: number;
  minDist: number;
  nEpochs: number;
  seed: number;
}

/** Copies rows to unit norm in the engine's precision (zero rows stay zero). */
export function unitRows(x: Matrix, precision: string): Matrix {
  const out = precision === 'float64' ? new Float64Array(x.rows * x.cols) : new Float32Array(x.rows * x.cols);
  for (let i = 0; i < x.rows; i++) {
    let s = 0;
    for (let c = 0; c < x.cols; c++) s += x.data[i * x.cols + c]! ** 2;
    const inv = s > 0 ? 1 / Math.sqrt(s) : 0;
    for (let c = 0; c < x.cols; c++) out[i * x.cols + c] = x.data[i * x.cols + c]! * inv;
  }
  return { rows: x.rows, cols: x.cols, data: out };
}

export async function umapEmbed(x: Matrix, engine: Engine, options: UmapOptions): Promise<UmapEmbedding> {
  const n = x.rows;
  if (n < 4) throw new InputError(`umap: needs at least 4 rows, got ${n}`);
  const nNeighbors = Math.max(2, Math.min(options.nNeighbors ?? 15, n - 1));
  const minDist = options.minDist ?? 0.1;
  const unit = unitRows(x, engine.precision);
  const knn = await engine.knn(unit, nNeighbors - 1, options.signal ? { signal: options.signal } : {});
  options.signal?.throwIfAborted();
  // umap-js expects each list to start with the point itself at distance 0 (as its NN-descent returns it).
  const indices: number[][] = [];
  const distances: number[][] = [];
  for (let i = 0; i < n; i++) {
    const idx = [i];
    const dist = [0];
    for (let j = 0; j < knn.k; j++) {
      idx.push(knn.indices[i * knn.k + j]!);
      dist.push(Math.sqrt(Math.max(0, 2 - 2 * knn.values[i * knn.k + j]!)));
    }
    indices.push(idx);
    distances.push(dist);
  }
  const umap = new UMAP({
    nComponents: 2,
    nNeighbors,
    minDist,
    spread: options.spread ?? 1,
    random: mulberry32(options.seed),
    ...(options.nEpochs === undefined ? {} : { nEpochs: options.nEpochs }),
  });
  umap.setPrecomputedKNN(indices, distances);
  // With precomputed neighbours umap-js reads only X.length (no distances are evaluated), so placeholders avoid
  // copying n × d values into nested JS arrays.
  const placeholders = Array.from({ length: n }, () => [] as number[]);
  const nEpochs = umap.initializeFit(placeholders);
  for (let epoch = 0; epoch < nEpochs; ) {
    epoch = umap.step();
    if (epoch % 25 === 0 || epoch === nEpochs) {
      options.onProgress?.(epoch, nEpochs);
      // Yield so a cancel message can arrive, then stop between epochs.
      await new Promise((resolve) => setImmediate(resolve));
      options.signal?.throwIfAborted();
    }
  }
  const emb = umap.getEmbedding();
  const coords = new Float64Array(n * 2);
  for (let i = 0; i < n; i++) {
    coords[i * 2] = emb[i]![0]!;
    coords[i * 2 + 1] = emb[i]![1]!;
  }
  return { n, coords, nNeighbors, minDist, nEpochs, seed: options.seed };
}
