import os from 'node:os';
import * as ort from 'onnxruntime-node';
import { type Matrix, toFloat32 } from '../matrix.js';
import { gemmModel, gramTopKModel } from './onnx-graphs.js';
import type { Engine, KnnLists, KnnOptions } from './types.js';

/** Execution providers of onnxruntime-node this engine can drive with the same graphs. */
export type OrtProvider = 'cpu' | 'webgpu' | 'cuda';

const FLOAT32_EPS = 2 ** -24;
/** Bytes of one Gram tile (t × n float32) that the runtime may hold at once. */
const TILE_BYTES = 64 * 1024 * 1024;
/** Rows per block of the cross product Aᵀ·B; partial sums across blocks are added in float64. */
const CROSS_BLOCK_ROWS = 2048;

/**
 * onnxruntime-node engine, float32 Gram products. kNN runs tile by tile: Gemm and TopK are fused in one graph, so
 * only t × (k+2) values and indices come back per tile and memory stays O(n·(tile + k)).
 */
export class OnnxEngine implements Engine {
  readonly name: string;
  readonly precision = 'float32' as const;
  readonly device: string;
  private readonly sessions = new Map<string, Promise<ort.InferenceSession>>();

  private constructor(
    readonly provider: OrtProvider,
    private readonly threads: number,
    device: string,
  ) {
    this.name = provider;
    this.device = device;
  }

  static async create(provider: OrtProvider = 'cpu', threads = os.availableParallelism()): Promise<OnnxEngine> {
    const version = ort.env.versions?.node ?? 'unknown';
    const where = provider === 'cpu' ? `CPU EP, ${threads} threads` : `${provider.toUpperCase()} EP`;
    const engine = new OnnxEngine(provider, threads, `onnxruntime-node ${version} ${where}`);
    // Fail here, not in the middle of a sweep, when the provider cannot run (e.g. no WebGPU adapter, no CUDA libs).
    await engine.session('topk');
    return engine;
  }

  private session(kind: 'topk' | 'transA' | 'transB'): Promise<ort.InferenceSession> {
    let s = this.sessions.get(kind);
    if (!s) {
      const bytes = kind === 'topk' ? gramTopKModel() : gemmModel(kind);
      s = ort.InferenceSession.create(bytes, {
        executionProviders: [this.provider],
        intraOpNumThreads: this.threads,
        interOpNumThreads: 1,
        graphOptimizationLevel: 'all',
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
    const X = toFloat32(x);
    const n = X.rows;
    const d = X.cols;
    // k+1 neighbours besides self are needed (the (k+1)-th for tie detection), and self may be among the top.
    const want = Math.min(k + 2, n);
    const indices = new Int32Array(n * k);
    const values = new Float64Array(n * k);
    const next = new Float64Array(n);
    const session = await this.session('topk');
    const xt = new ort.Tensor('float32', X.data, [n, d]);
    const kt = new ort.Tensor('int64', BigInt64Array.from([BigInt(want)]), [1]);
    const tileRows = Math.max(16, Math.min(n, Math.floor(TILE_BYTES / (4 * n))));
    let maxAbs = 0;
    for (let start = 0; start < n; start += tileRows) {
      options.signal?.throwIfAborted();
      const end = Math.min(n, start + tileRows);
      const tile = new ort.Tensor('float32', X.data.subarray(start * d, end * d), [end - start, d]);
      const out = await session.run({ tile, x: xt, k: kt });
      const v = out.values!.data as Float32Array;
      const idx = out.indices!.data as BigInt64Array;
      for (let r = 0; r < end - start; r++) {
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
        maxAbs = Math.max(maxAbs, Math.abs(v[r * want]!));
      }
      options.onProgress?.(end, n);
    }
    // A float32 dot product of length d carries a rounding error of roughly eps·√d·|a||b|; two values closer than
    // that cannot be ordered reliably, so such rows are reported as tied.
    const tieTolerance = 4 * FLOAT32_EPS * Math.sqrt(d) * maxAbs;
    return { n, k, indices, values, next, tieTolerance };
  }

  async crossProduct(a: Matrix, b: Matrix): Promise<Float64Array> {
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
