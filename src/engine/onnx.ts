import { execFile } from 'node:child_process';
import os from 'node:os';
import * as ort from 'onnxruntime-node';
import { type Matrix, toFloat32 } from '../core/matrix.js';
import { cudaProviderFiles, disableTf32 } from './cuda.js';
import { deviceTopKModel, loopTopKModel, MAX_DEVICE_ROWS, pairTopKModel, uploadModel } from './gpu-graphs.js';
import { gemmModel, gramTopKModel } from './onnx-graphs.js';
import { checkCrossInput, checkKnnInput, type Engine, type KnnLists, type KnnOptions } from './types.js';
import { describeAdapter, webGpuAdapter, type WebGpuAdapterInfo } from './webgpu.js';

/** Execution providers of onnxruntime-node this engine can drive with the same graphs. */
export type OrtProvider = 'cpu' | 'webgpu' | 'cuda';

const FLOAT32_EPS = 2 ** -24;
/**
 * Bytes of one Gram tile (t × n float32) that the runtime may hold at once. CPU: keeps the working set in cache-
 * friendly pieces. WebGPU: each tile is one storage buffer, and WebGPU's default maxStorageBufferBindingSize is
 * 128 MiB. CUDA: device memory is plentiful and larger tiles mean fewer, better-shaped Gemm calls.
 */
const TILE_BYTES: Record<OrtProvider, number> = { cpu: 64 * 2 ** 20, webgpu: 64 * 2 ** 20, cuda: 2 ** 30 };
/**
 * CUDA: rows per inference call. Each call uploads X once (4·n·d bytes); with ≥ 65536 rows per call the upload is
 * below ~5% of the call's Gemm time on current GPUs, and calls stay short enough for progress and cancellation.
 */
const CUDA_CALL_ROWS = 65536;
/** Rows per block of the cross product Aᵀ·B; partial sums across blocks are added in float64. */
const CROSS_BLOCK_ROWS = 2048;

type SessionKind = 'topk' | 'transA' | 'transB' | 'upload' | 'loop' | 'pair' | `device:${number}`;

/**
 * The graph family a kNN runs on: `symmetric` (the upper triangle of X·Xᵀ only, in row bands whose products give
 * candidates to the band's rows and, transposed, to the rows below: ~55% of the Gram work), `tiles` (one fused
 * Gemm+TopK call per row tile against all of X),
 * `device` (X uploaded once, selection built from WebGPU-supported ops), `loop` (all tiles in one ONNX Loop). Each
 * provider has its default; all run on the CPU EP, which is how the GPU paths are tested on machines without a GPU.
 * The GPU paths keep row tiles because host-side merging would cost them more than the halved Gemm saves.
 */
export type KnnGraph = 'symmetric' | 'tiles' | 'device' | 'loop';
const DEFAULT_GRAPH: Record<OrtProvider, KnnGraph> = { cpu: 'symmetric', webgpu: 'device', cuda: 'loop' };

export interface OnnxEngineOptions {
  /** Overrides the Gram tile budget in bytes (tests use it to force many tiles). */
  tileBytes?: number;
  knnGraph?: KnnGraph;
}

/**
 * onnxruntime-node engine, float32 Gram products. kNN runs tile by tile: Gemm and TopK are fused in one graph, so
 * only t × (k+2) values and indices come back per tile and memory stays O(n·(tile + k)). On the GPU providers X stays
 * on the device for the whole kNN (see gpu-graphs.ts).
 */
export class OnnxEngine implements Engine {
  readonly name: string;
  readonly precision = 'float32' as const;
  readonly device: string;
  /** WebGPU only: the adapter the EP runs on, as far as it can be determined (webgpu.ts). */
  adapter?: WebGpuAdapterInfo;
  private readonly sessions = new Map<string, Promise<ort.InferenceSession>>();
  private readonly tileBytes: number;
  readonly knnGraph: KnnGraph;

  private constructor(
    readonly provider: OrtProvider,
    private readonly threads: number,
    device: string,
    options: OnnxEngineOptions,
  ) {
    this.name = provider;
    this.device = device;
    this.tileBytes = options.tileBytes ?? TILE_BYTES[provider];
    this.knnGraph = options.knnGraph ?? DEFAULT_GRAPH[provider];
  }

  /** Starts the provider and fails here, not in the middle of a sweep, when it cannot run (no WebGPU adapter, no CUDA libraries). */
  static async create(provider: OrtProvider = 'cpu', threads = os.availableParallelism(), options: OnnxEngineOptions = {}): Promise<OnnxEngine> {
    const version = ort.env.versions?.node ?? 'unknown';
    let where: string;
    let adapter: WebGpuAdapterInfo | undefined;
    if (provider === 'cpu') where = `CPU EP, ${threads} threads`;
    else if (provider === 'webgpu') {
      adapter = await webGpuAdapter();
      where = `WebGPU EP (Dawn, Vulkan), ${describeAdapter(adapter)}`;
    } else {
      const files = cudaProviderFiles();
      if (files.missing.length) {
        throw new Error(`CUDA EP not installed: ${files.missing.join(', ')} not found in ${files.dir} (see docs/scale.md, "CUDA provider")`);
      }
      const precision = disableTf32();
      where = `CUDA EP, ${await cudaDeviceName()}, ${precision}`;
    }
    const graph = options.knnGraph ?? DEFAULT_GRAPH[provider];
    if (graph !== DEFAULT_GRAPH[provider]) where += `, kNN graph '${graph}'`;
    const engine = new OnnxEngine(provider, threads, `onnxruntime-node ${version} ${where}`, options);
    if (adapter) engine.adapter = adapter;
    await engine.session(({ tiles: 'topk', symmetric: 'pair', loop: 'loop', device: 'upload' } as const)[graph]);
    return engine;
  }

  private session(kind: SessionKind): Promise<ort.InferenceSession> {
    let s = this.sessions.get(kind);
    if (!s) {
      const bytes = graphBytes(kind);
      s = ort.InferenceSession.create(bytes, {
        executionProviders: [this.provider],
        intraOpNumThreads: this.threads,
        interOpNumThreads: 1,
        graphOptimizationLevel: 'all',
        // The upload session's only job is to leave its output on the device for the kNN session to read.
        ...(kind === 'upload' && this.provider === 'webgpu' ? { preferredOutputLocation: 'gpu-buffer' as const } : {}),
      });
      this.sessions.set(kind, s);
    }
    return s;
  }

  async gramTile(a: Matrix, rowStart: number, rowEnd: number, b: Matrix): Promise<Float32Array> {
    const A = toFloat32(a);
    const B = toFloat32(b);
    const t = rowEnd - rowStart;
    const tile = new ort.Tensor('float32', A.data.subarray(rowStart * A.cols, rowEnd * A.cols), [t, A.cols]);
    const x = new ort.Tensor('float32', B.data, [B.rows, B.cols]);
    const out = await (await this.session('transB')).run({ a: tile, b: x });
    return out.y!.data as Float32Array;
  }

  async knn(x: Matrix, k: number, options: KnnOptions = {}): Promise<KnnLists> {
    checkKnnInput(x, k);
    const X = toFloat32(x);
    const n = X.rows;
    // k+1 neighbours besides self are needed (the (k+1)-th for tie detection), and self may be among the top.
    const lists = new ListBuilder(n, k, Math.min(k + 2, n));
    const tileRows = Math.max(16, Math.min(n, Math.floor(this.tileBytes / (4 * n))));
    if (this.knnGraph === 'symmetric') await this.knnSymmetric(X, lists, options);
    else if (this.knnGraph === 'device') await this.knnDevice(X, lists, tileRows, options);
    else if (this.knnGraph === 'loop') await this.knnLoop(X, lists, tileRows, options);
    else await this.knnTiles(X, lists, tileRows, options);
    return lists.finish(X.cols);
  }

  /** CPU: one fused Gemm+TopK call per tile; the runtime reads X from our buffer, so nothing is copied. */
  private async knnTiles(X: Matrix & { data: Float32Array }, lists: ListBuilder, tileRows: number, options: KnnOptions): Promise<void> {
    const { rows: n, cols: d } = X;
    const session = await this.session('topk');
    const xt = new ort.Tensor('float32', X.data, [n, d]);
    const kt = new ort.Tensor('int64', BigInt64Array.from([BigInt(lists.want)]), [1]);
    for (let start = 0; start < n; start += tileRows) {
      options.signal?.throwIfAborted();
      const end = Math.min(n, start + tileRows);
      const tile = new ort.Tensor('float32', X.data.subarray(start * d, end * d), [end - start, d]);
      const out = await session.run({ tile, x: xt, k: kt });
      lists.addTile(start, end - start, out.values!.data as Float32Array, out.indices!.data as BigInt64Array);
      options.onProgress?.(end, n);
    }
  }

  /**
   * CPU: the upper triangle of X·Xᵀ only. Row block I (rows s…e) is multiplied with the contiguous rows s…n−1; the
   * product's row TopK gives rows s…e their candidates among columns ≥ s, and the TopK of its transpose gives every
   * row j ≥ e its candidates among rows s…e. Each row keeps a running top-(k+2) merged across blocks in (value desc,
   * index asc) order, the order of TopK and of the ref engine, so the lists equal the row-tile graph's. With ≥ 8
   * blocks this is ~55% of the full Gram work, in wide Gemm calls that run as fast as the row tiles'.
   */
  private async knnSymmetric(X: Matrix & { data: Float32Array }, lists: ListBuilder, options: KnnOptions): Promise<void> {
    const { rows: n, cols: d } = X;
    const want = lists.want;
    // Each call holds the t × (n − s) product and its transpose, 8·t·n bytes: within the tile budget, except that
    // bands keep ≥ 256 rows so the Gemm stays efficient (at n = 10⁶ that is 2 GB, next to 16 GB of features).
    const t = Math.max(16, Math.min(n, Math.ceil(n / 8), Math.max(256, Math.floor(this.tileBytes / (8 * n)))));
    const best = new RunningTop(n, want);
    const session = await this.session('pair');
    let work = 0;
    const total = n * n;
    for (let s = 0; s < n; s += t) {
      options.signal?.throwIfAborted();
      const e = Math.min(n, s + t);
      const ta = e - s;
      const nb = n - s;
      const a = new ort.Tensor('float32', X.data.subarray(s * d, e * d), [ta, d]);
      const b = new ort.Tensor('float32', X.data.subarray(s * d), [nb, d]);
      const kr = Math.min(want, nb);
      const kc = Math.min(want, ta);
      const out = await session.run({ a, b, kr: int64([kr]), kc: int64([kc]) });
      best.addRows(s, ta, kr, out.rowValues!.data as Float32Array, out.rowIndices!.data as BigInt64Array, s);
      // Rows s…e of the transpose repeat pairs the row TopK already gave; rows e… are the new ones.
      const cv = out.colValues!.data as Float32Array;
      const ci = out.colIndices!.data as BigInt64Array;
      best.addRows(e, nb - ta, kc, cv.subarray(ta * kc), ci.subarray(ta * kc), s);
      work += 2 * ta * nb - ta * ta;
      // Progress in rows-equivalent units of Gram work, so bars move evenly.
      options.onProgress?.(e === n ? n : Math.min(n - 1, Math.round((n * work) / total)), n);
    }
    lists.addTile(0, n, best.values, best.indices);
  }

  /** WebGPU: X and the column numbers uploaded once as GPU buffers; each call slices its tile on the device. */
  private async knnDevice(X: Matrix & { data: Float32Array }, lists: ListBuilder, tileRows: number, options: KnnOptions): Promise<void> {
    const { rows: n, cols: d } = X;
    if (n > MAX_DEVICE_ROWS) throw new Error(`device kNN graph: n = ${n} rows exceeds ${MAX_DEVICE_ROWS} (indices travel as float32)`);
    const upload = await this.session('upload');
    const session = await this.session(`device:${lists.want}`);
    const xg = (await upload.run({ x: new ort.Tensor('float32', X.data, [n, d]) })).y!;
    const iota = (await upload.run({ x: new ort.Tensor('float32', Float32Array.from({ length: n }, (_, i) => i), [1, n]) })).y!;
    try {
      for (let start = 0; start < n; start += tileRows) {
        options.signal?.throwIfAborted();
        const end = Math.min(n, start + tileRows);
        const out = await session.run({ x: xg, iota, start: int64([start]), end: int64([end]) });
        lists.addTile(start, end - start, out.values!.data as Float32Array, out.indices!.data as Float32Array);
        options.onProgress?.(end, n);
      }
    } finally {
      // Frees the device buffers now rather than at garbage collection (a no-op for CPU tensors).
      if (xg.location === 'gpu-buffer') xg.dispose();
      if (iota.location === 'gpu-buffer') iota.dispose();
    }
  }

  /** CUDA: an ONNX Loop over tiles inside one call, so X is uploaded once per ≥ CUDA_CALL_ROWS rows. */
  private async knnLoop(X: Matrix & { data: Float32Array }, lists: ListBuilder, tileRows: number, options: KnnOptions): Promise<void> {
    const { rows: n, cols: d } = X;
    const t = Math.min(n, tileRows);
    const tiles = Math.ceil(n / t);
    const perCall = Math.max(1, Math.floor(CUDA_CALL_ROWS / t));
    const session = await this.session('loop');
    const xt = new ort.Tensor('float32', X.data, [n, d]);
    for (let first = 0; first < tiles; first += perCall) {
      options.signal?.throwIfAborted();
      const m = Math.min(perCall, tiles - first);
      const out = await session.run({ x: xt, k: int64([lists.want]), t: int64([t]), m: int64([m], []), last: int64([n - t]), first: int64([first]) });
      const v = out.values!.data as Float32Array;
      const idx = out.indices!.data as BigInt64Array;
      const per = t * lists.want;
      for (let it = 0; it < m; it++) {
        // The graph's tile i starts at min(i·t, n − t): the last tile overlaps its predecessor, rows agree.
        const start = Math.min((first + it) * t, n - t);
        lists.addTile(start, t, v.subarray(it * per, (it + 1) * per), idx.subarray(it * per, (it + 1) * per));
      }
      options.onProgress?.(Math.min(n, (first + m) * t), n);
    }
  }

  async crossProduct(a: Matrix, b: Matrix): Promise<Float64Array> {
    checkCrossInput(a, b);
    const A = toFloat32(a);
    const B = toFloat32(b);
    const p = A.cols;
    const q = B.cols;
    const out = new Float64Array(p * q);
    const session = await this.session('transA');
    for (let start = 0; start < A.rows; start += CROSS_BLOCK_ROWS) {
      const end = Math.min(A.rows, start + CROSS_BLOCK_ROWS);
      const ta = new ort.Tensor('float32', A.data.subarray(start * p, end * p), [end - start, p]);
      const tb = new ort.Tensor('float32', B.data.subarray(start * q, end * q), [end - start, q]);
      const y = (await session.run({ a: ta, b: tb })).y!.data as Float32Array;
      for (let i = 0; i < y.length; i++) out[i]! += y[i]!;
    }
    return out;
  }

  async dispose(): Promise<void> {
    for (const s of this.sessions.values()) await (await s).release();
    this.sessions.clear();
  }
}

function graphBytes(kind: SessionKind): Uint8Array {
  if (kind.startsWith('device:')) return deviceTopKModel(Number(kind.slice('device:'.length)));
  switch (kind) {
    case 'topk':
      return gramTopKModel();
    case 'pair':
      return pairTopKModel();
    case 'loop':
      return loopTopKModel();
    case 'upload':
      return uploadModel();
    default:
      return gemmModel(kind as 'transA' | 'transB');
  }
}

function int64(values: number[], dims: number[] = [values.length]): ort.Tensor {
  return new ort.Tensor('int64', BigInt64Array.from(values, (v) => BigInt(v)), dims);
}

/** Turns per-tile top-(k+2) rows (self possibly among them) into KnnLists with self removed. */
class ListBuilder {
  readonly indices: Int32Array;
  readonly values: Float64Array;
  readonly next: Float64Array;
  private maxAbs = 0;

  constructor(
    readonly n: number,
    readonly k: number,
    readonly want: number,
  ) {
    this.indices = new Int32Array(n * k);
    this.values = new Float64Array(n * k);
    this.next = new Float64Array(n);
  }

  /** `rows` rows starting at row `start`, each `want` (value, column) pairs in descending order. */
  addTile(start: number, rows: number, v: Float32Array, idx: BigInt64Array | Float32Array | Int32Array): void {
    const { k, want, indices, values, next } = this;
    for (let r = 0; r < rows; r++) {
      const i = start + r;
      let m = 0;
      for (let c = 0; c < want && m <= k; c++) {
        const j = Number(idx[r * want + c]);
        if (j === i) continue;
        const val = v[r * want + c]!;
        if (m < k) {
          indices[i * k + m] = j;
          values[i * k + m] = val;
        } else next[i] = val;
        m++;
      }
      if (m === k) next[i] = -Infinity; // k = n−1: there is no (k+1)-th neighbour
      this.maxAbs = Math.max(this.maxAbs, Math.abs(v[r * want]!));
    }
  }

  finish(d: number): KnnLists {
    // A float32 dot product of length d carries a rounding error of roughly eps·√d·|a||b|; two values closer than
    // that cannot be ordered reliably, so such rows are reported as tied.
    const tieTolerance = 4 * FLOAT32_EPS * Math.sqrt(d) * this.maxAbs;
    return { n: this.n, k: this.k, indices: this.indices, values: this.values, next: this.next, tieTolerance };
  }
}

/**
 * Per row, the `want` best (value, column) pairs seen so far in (value desc, column asc) order. Candidates arrive
 * block by block as sorted runs, each merged in O(want).
 */
class RunningTop {
  readonly values: Float32Array;
  readonly indices: Int32Array;
  private readonly count: Int32Array;
  private readonly tv: Float32Array;
  private readonly ti: Int32Array;

  constructor(
    n: number,
    private readonly want: number,
  ) {
    this.values = new Float32Array(n * want);
    this.indices = new Int32Array(n * want);
    this.count = new Int32Array(n);
    this.tv = new Float32Array(want);
    this.ti = new Int32Array(want);
  }

  /** Row-major [rows, kk] results for rows start…; column numbers are offset by `colOffset`. */
  addRows(start: number, rows: number, kk: number, v: Float32Array, idx: BigInt64Array, colOffset: number): void {
    for (let r = 0; r < rows; r++) this.merge(start + r, kk, v, idx, r * kk, colOffset);
  }

  private merge(row: number, kk: number, v: Float32Array, idx: BigInt64Array, off: number, offset: number): void {
    const { want, values, indices, count, tv, ti } = this;
    const base = row * want;
    const have = count[row]!;
    let p = 0;
    let q = 0;
    let m = 0;
    while (m < want && (p < have || q < kk)) {
      let takeOld: boolean;
      if (q >= kk) takeOld = true;
      else if (p >= have) takeOld = false;
      else {
        const a = values[base + p]!;
        const b = v[off + q]!;
        takeOld = a > b || (a === b && indices[base + p]! < Number(idx[off + q]) + offset);
      }
      if (takeOld) {
        tv[m] = values[base + p]!;
        ti[m] = indices[base + p]!;
        p++;
      } else {
        tv[m] = v[off + q]!;
        ti[m] = Number(idx[off + q]) + offset;
        q++;
      }
      m++;
    }
    values.set(tv.subarray(0, m), base);
    indices.set(ti.subarray(0, m), base);
    count[row] = m;
  }
}

/**
 * The GPU's name from nvidia-smi, never guessed. The CUDA EP's device 0 is the first entry of CUDA_VISIBLE_DEVICES
 * when that is set (nvidia-smi itself ignores the variable but accepts the same index or UUID).
 */
function cudaDeviceName(): Promise<string> {
  const visible = process.env.CUDA_VISIBLE_DEVICES?.split(',')[0]?.trim() || '0';
  return new Promise((resolve) => {
    execFile('nvidia-smi', ['--query-gpu=name,memory.total', '--format=csv,noheader', '-i', visible], { timeout: 15_000 }, (err, stdout) => {
      const line = stdout?.trim().split('\n')[0];
      resolve(err || !line ? 'device 0 (name unknown: nvidia-smi not available)' : `device 0 = ${line}`);
    });
  });
}
