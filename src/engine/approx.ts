import { InputError, ParamError } from '../core/errors.js';
import { type Matrix, toFloat32 } from '../core/matrix.js';
import { heapMatrix } from './rows.js';
import { subsampleRows } from '../core/tokens.js';
import { checkKnnInput, type Engine, type KnnLists, type KnnOptions } from './types.js';

/**
 * Approximate kNN for point counts where the exact O(n²·d) Gram pass no longer fits the time budget, with its quality
 * measured, never assumed:
 *
 * - Candidates come from an HNSW graph (hnswlib-node) in inner-product space (`ip`) on the features as given, i.e.
 *   after preprocessing: the same kernel K = X·Xᵀ the exact engines rank by.
 * - The values of the returned neighbours are recomputed exactly (float64 dot products of the stored float32 rows),
 *   because CKNNA uses K_ij itself, not only the neighbour sets; the lists are re-sorted by these values.
 * - recall@k is measured against exact kNN on a seeded sample of query rows (their exact Gram rows from the
 *   engine's `gramTile`) and travels with the lists (`provenance`), so every score computed from them can print it.
 */
export const KNN_MODES = ['auto', 'exact', 'hnsw'] as const;
export type KnnMode = (typeof KNN_MODES)[number];

/**
 * `auto` stays exact up to this many rows. Exact kNN is tiled, so memory never decides (50k rows × 4096 dims:
 * 2.8 GB peak, mostly the features); time does. Measured on the 2-core test machine at n = 20 000, d = 1024: exact
 * 3.5 s, HNSW with the defaults below 21 s at recall 0.97 (hnswlib-node builds single-threaded). Exact grows as n²,
 * HNSW as n·log n, so they cross near 1.5·10⁵ rows; below that HNSW would be slower *and* approximate.
 */
export const EXACT_MAX_ROWS = 150_000;

export interface HnswParams {
  /** Graph degree (hnswlib `M`). */
  m: number;
  efConstruction: number;
  /** Search beam; at least k + 2 is used. */
  efSearch: number;
  /** hnswlib's random seed (level assignment): the same seed and insertion order give the same graph. */
  seed: number;
  /** Query rows on which recall is measured against exact kNN. */
  recallRows: number;
}

/** Build parameters chosen for speed at recall ≈ 0.95 on hard (noise-dominated) data; the recall is measured anyway. */
export const DEFAULT_HNSW: HnswParams = { m: 12, efConstruction: 64, efSearch: 64, seed: 100, recallRows: 256 };

/** How a set of kNN lists was obtained. `recall` is null for exact lists (it is 1 by construction). */
export interface KnnProvenance {
  method: 'exact' | 'hnsw';
  recall: number | null;
  recall_rows: number | null;
  params: string;
}

export interface ApproxKnnLists extends KnnLists {
  provenance: KnnProvenance;
}

/** The provenance carried by lists from this module; exact lists (any engine) have none and are reported as exact. */
export function knnProvenance(lists: KnnLists): KnnProvenance {
  return (lists as Partial<ApproxKnnLists>).provenance ?? { method: 'exact', recall: null, recall_rows: null, params: 'exact' };
}

export function parseKnnMode(name: string): KnnMode {
  if ((KNN_MODES as readonly string[]).includes(name)) return name as KnnMode;
  throw new ParamError('knn', `unknown value '${name}' (expected one of ${KNN_MODES.join(', ')})`);
}

export function describeHnsw(p: HnswParams): string {
  return `hnsw(ip, M=${p.m}, efConstruction=${p.efConstruction}, ef=${p.efSearch}, seed=${p.seed})`;
}

/**
 * Approximate lists with the KnnLists contract: row i's k neighbours (self excluded) sorted by descending exact K_ij,
 * `next[i]` the (k+1)-th candidate's exact value. `engine` supplies the exact Gram rows for the recall sample.
 */
export async function hnswKnn(x: Matrix, k: number, engine: Engine, params: Partial<HnswParams> = {}, options: KnnOptions = {}): Promise<ApproxKnnLists> {
  checkKnnInput(x, k);
  const p = { ...DEFAULT_HNSW, ...params };
  // HNSW runs in Node: a file-backed matrix is read back from the engine that holds it.
  const X = toFloat32(await heapMatrix(engine, x));
  const { rows: n, cols: d } = X;
  if (!Number.isInteger(k) || k < 1 || k >= n) throw new InputError(`hnsw kNN: k = ${k} must be in [1, n − 1] with n = ${n}`);
  const want = Math.min(n, k + 2); // self may or may not be returned; k + 1 others are needed
  // Loaded on first use: metrics import this module for `knnProvenance`, and most runs never build an index.
  const { HierarchicalNSW } = (await import('hnswlib-node')).default;
  const index = new HierarchicalNSW('ip', d);
  index.initIndex({ maxElements: n, m: p.m, efConstruction: p.efConstruction, randomSeed: p.seed });
  const rowArray = (i: number) => Array.from(X.data.subarray(i * d, (i + 1) * d));
  for (let i = 0; i < n; i++) {
    if ((i & 1023) === 0) {
      options.signal?.throwIfAborted();
      options.onProgress?.(Math.floor(i / 2), n);
      // Building is synchronous native work: yield now and then so progress bars and signals get a turn.
      await new Promise((r) => setImmediate(r));
    }
    index.addPoint(rowArray(i), i);
  }
  index.setEf(Math.max(p.efSearch, want));

  const indices = new Int32Array(n * k);
  const values = new Float64Array(n * k);
  const next = new Float64Array(n);
  let maxAbs = 0;
  const cand: { j: number; v: number }[] = [];
  for (let i = 0; i < n; i++) {
    if ((i & 1023) === 0) {
      options.signal?.throwIfAborted();
      options.onProgress?.(Math.floor((n + i) / 2), n);
      await new Promise((r) => setImmediate(r));
    }
    const found = index.searchKnn(rowArray(i), want).neighbors;
    cand.length = 0;
    for (const j of found) if (j !== i) cand.push({ j, v: dot(X.data, i, j, d) });
    if (cand.length < k) throw new Error(`hnsw kNN: row ${i} got ${cand.length} neighbours, fewer than k = ${k} (raise ef)`);
    // Exact values decide the order; equal values go to the smaller index, as in the exact engines.
    cand.sort((a, b) => b.v - a.v || a.j - b.j);
    for (let r = 0; r < k; r++) {
      indices[i * k + r] = cand[r]!.j;
      values[i * k + r] = cand[r]!.v;
    }
    next[i] = cand.length > k ? cand[k]!.v : -Infinity;
    maxAbs = Math.max(maxAbs, Math.abs(cand[0]!.v), Math.abs(dot(X.data, i, i, d)));
  }
  options.onProgress?.(n, n);
  // hnswlib ranks candidates in float32, so two values closer than float32 noise may be in either order.
  const tieTolerance = 4 * 2 ** -24 * Math.sqrt(d) * maxAbs;
  const lists: KnnLists = { n, k, indices, values, next, tieTolerance };
  const recall = await measureRecall(X, lists, engine, { rows: p.recallRows, seed: p.seed });
  return { ...lists, provenance: { method: 'hnsw', recall: recall.recall, recall_rows: recall.rows.length, params: describeHnsw(p) } };
}

function dot(data: Float32Array, i: number, j: number, d: number): number {
  let s = 0;
  const a = i * d;
  const b = j * d;
  for (let c = 0; c < d; c++) s += data[a + c]! * data[b + c]!;
  return s;
}

/**
 * recall@k of `lists` on a seeded sample of rows (all rows when `rows` ≥ n): the mean over sampled rows i of
 * |{j ∈ lists(i) : K_ij ≥ κ_i − τ}| / k, where κ_i is the exact k-th largest K_ij (j ≠ i) and τ the engine's float
 * noise. Without ties this is the usual |approx ∩ exact| / k; with ties at the k-th place any of the tied
 * neighbours counts as correct, since exact kNN itself may list either.
 */
export async function measureRecall(x: Matrix, lists: KnnLists, engine: Engine, options: { rows?: number; seed?: number } = {}): Promise<{ recall: number; rows: Int32Array }> {
  const X = toFloat32(x);
  const { rows: n, cols: d } = X;
  const k = lists.k;
  const sample = subsampleRows(n, Math.max(4, options.rows ?? DEFAULT_HNSW.recallRows), options.seed ?? 0) ?? Int32Array.from({ length: n }, (_, i) => i);
  // Exact Gram rows for the sample, a block at a time (block × n float32 ≤ 64 MiB).
  const block = Math.max(1, Math.min(sample.length, Math.floor((64 * 2 ** 20) / (4 * n))));
  const tau = engine.precision === 'float64' ? 0 : 4 * 2 ** -24 * Math.sqrt(d);
  let hits = 0;
  for (let b0 = 0; b0 < sample.length; b0 += block) {
    const rows = sample.subarray(b0, Math.min(sample.length, b0 + block));
    const q = new Float32Array(rows.length * d);
    rows.forEach((i, r) => q.set(X.data.subarray(i * d, (i + 1) * d), r * d));
    const g = await engine.gramTile({ rows: rows.length, cols: d, data: q }, 0, rows.length, X);
    const kth = new Float64Array(k);
    for (let r = 0; r < rows.length; r++) {
      const i = rows[r]!;
      const row = g.subarray(r * n, (r + 1) * n);
      // k-th largest off-diagonal value by a running sorted buffer of size k (k ≪ n).
      kth.fill(-Infinity);
      let scale = 0;
      for (let j = 0; j < n; j++) {
        const v = row[j]!;
        if (j === i) {
          scale = Math.abs(v);
          continue;
        }
        if (v <= kth[k - 1]!) continue;
        let p = k - 1;
        while (p > 0 && kth[p - 1]! < v) {
          kth[p] = kth[p - 1]!;
          p--;
        }
        kth[p] = v;
      }
      const threshold = kth[k - 1]! - tau * Math.max(scale, Math.abs(kth[0]!));
      for (let r2 = 0; r2 < k; r2++) if (row[lists.indices[i * k + r2]!]! >= threshold) hits++;
    }
  }
  return { recall: hits / (sample.length * k), rows: sample };
}

export interface KnnPolicy {
  mode: KnnMode;
  /** `auto`: exact up to this many rows (default EXACT_MAX_ROWS). */
  exactMaxRows?: number;
  hnsw?: Partial<HnswParams>;
}

/**
 * An engine whose `knn` follows a policy: exact (the wrapped engine) or HNSW, or `auto` = exact up to
 * `exactMaxRows` rows and HNSW above, on CPU engines (a GPU computes exact kNN of 10⁶ rows faster than a CPU builds
 * the graph, so `auto` on `cuda`/`webgpu`, and on `torch` running on a GPU, is always exact). Everything else is the wrapped engine's. The device string
 * states the policy; lists from HNSW carry their measured recall (`knnProvenance`).
 */
export function withKnnPolicy(engine: Engine, policy: KnnPolicy): Engine {
  const rule = describeKnnPolicy(engine, policy);
  if (rule === 'exact') return engine;
  const limit = policy.exactMaxRows ?? EXACT_MAX_ROWS;
  const params = { ...DEFAULT_HNSW, ...policy.hnsw };
  return {
    name: engine.name,
    precision: engine.precision,
    device: `${engine.device}; ${rule}`,
    gramTile: (a, s, e, b) => engine.gramTile(a, s, e, b),
    crossProduct: (a, b) => engine.crossProduct(a, b),
    dispose: () => engine.dispose(),
    ...(engine.files ? { files: engine.files } : {}),
    knn: (x, k, options) => (policy.mode === 'hnsw' || x.rows > limit ? hnswKnn(x, k, engine, params, options) : engine.knn(x, k, options)),
  };
}

/** What `withKnnPolicy` does on an engine of this name, in words (`exact` when it changes nothing). */
export function describeKnnPolicy(engine: string | (Pick<Engine, 'name'> & { onGpu?: boolean }), policy: KnnPolicy): string {
  const name = typeof engine === 'string' ? engine : engine.name;
  // torch counts as a GPU engine where it runs on one: HNSW would also pull its file-backed matrices into Node.
  const gpu = name === 'cuda' || name === 'webgpu' || (typeof engine !== 'string' && name === 'torch' && engine.onGpu === true);
  if (policy.mode === 'exact' || (policy.mode === 'auto' && gpu)) return 'exact';
  const params = describeHnsw({ ...DEFAULT_HNSW, ...policy.hnsw });
  return policy.mode === 'hnsw' ? `kNN ${params}` : `kNN exact up to ${policy.exactMaxRows ?? EXACT_MAX_ROWS} rows, ${params} above`;
}
