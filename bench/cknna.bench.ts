/**
 * CKNNA engine benchmark (`npm run bench`). Each configuration runs in its own child process so that peak RSS is
 * that configuration's alone; figures are medians over repeats, and the ratios compare timings taken in the same
 * child on the same data.
 *
 *   tiled   : the engine's CKNNA (fused Gemm+TopK tiles, O(n·k) metric) — what `compare`/`layerwise` run
 *   gemm    : the same engine's raw Gram products A·Aᵀ and B·Bᵀ (tile by tile, outputs discarded): the floor
 *   dense   : n×n Gram matrices materialised, then TopK and the masked HSIC over them (skipped where 2 n×n float32
 *             matrices would not fit in the memory budget)
 *   sweep   : L layers against one target, counting the Gram products actually computed
 *   torch   : the torch engine on the CPU (its Python worker, VIRAL_LENS_PYTHON), side by side with the onnxruntime
 *             CPU engine at n = --torch-n (default 8000; 0 skips): which one `auto` should prefer on a CPU
 *   files   : `compare A.npy B.npy --metric M --preprocess prh` with the torch engine on the CPU at
 *             n × d = --files-n × --files-d (default 20000 × 1024; 0 skips), M = --files-metric (default cka: its
 *             O(n·d²) arithmetic leaves the loading visible; cknna's O(n²·d) kNN is the same work either way), before (Node reads both files, preprocesses
 *             them and writes them to /dev/shm for the worker) and after (the worker maps the .npy payloads itself):
 *             Node's peak RSS and the wall time from the file names to the score, medians over --repeats children
 *
 * Usage: npm run bench [-- --sizes 2000,8000,20000 --dA 4096 --dB 1024 --repeats 3 --json out.json]
 */
import { execFileSync } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import onnxProto from 'onnx-proto';
import * as ort from 'onnxruntime-node';
import { runLayerwise } from '../analysis/layerwise.js';
import { OnnxEngine } from '../src/engine/onnx.js';
import { TorchEngine } from '../src/engine/torch.js';
import type { Engine, KnnLists } from '../src/engine/types.js';
import type { Matrix } from '../src/core/matrix.js';
import { computeMetric, Features, METRICS, parseMetric, type MetricName } from '../src/metrics/index.js';
import { cknnaFromKnn } from '../src/metrics/cknna.js';
import { CaptureWriter } from '../src/store/capture.js';
import { writeNpy } from '../src/store/npy.js';
import { fileFeatures } from '../src/engine/source.js';
import { mulberry32 } from '../src/core/rng.js';

const K = 10;
const DENSE_BUDGET_BYTES = 4 * 1024 ** 3;

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
}

/** Correlated synthetic features: B sees a random projection of A's low-rank signal plus noise. */
function synthetic(n: number, dA: number, dB: number, seed: number): { A: Matrix; B: Matrix } {
  const uniform = mulberry32(seed);
  const rand = () => uniform() - 0.5;
  const r = 32;
  const z = Float32Array.from({ length: n * r }, rand);
  const pa = Float32Array.from({ length: r * dA }, rand);
  const pb = Float32Array.from({ length: r * dB }, rand);
  const make = (d: number, p: Float32Array) => {
    const out = new Float32Array(n * d);
    for (let i = 0; i < n; i++) {
      for (let c = 0; c < d; c++) {
        let v = 0.3 * rand();
        for (let q = 0; q < r; q++) v += z[i * r + q]! * p[q * d + c]!;
        out[i * d + c] = v;
      }
    }
    // Unit rows, as after the l2 step of preprocessing.
    for (let i = 0; i < n; i++) {
      let ss = 0;
      for (let c = 0; c < d; c++) ss += out[i * d + c]! ** 2;
      const inv = 1 / Math.sqrt(ss);
      for (let c = 0; c < d; c++) out[i * d + c]! *= inv;
    }
    return { rows: n, cols: d, data: out };
  };
  return { A: make(dA, pa), B: make(dB, pb) };
}

async function timeIt<T>(f: () => Promise<T>): Promise<[number, T]> {
  const t = performance.now();
  const v = await f();
  return [(performance.now() - t) / 1000, v];
}

/** Raw Gram products through the same runtime and tiling as the engine, outputs discarded. */
async function rawGemm(engine: OnnxEngine, X: Matrix): Promise<void> {
  const tile = Math.max(16, Math.min(X.rows, Math.floor((64 * 1024 * 1024) / (4 * X.rows))));
  for (let s = 0; s < X.rows; s += tile) await engine.gramTile(X, s, Math.min(X.rows, s + tile), X);
}

/** Dense: full n×n Gram matrices in memory, TopK over them, then the same O(n·k) HSIC. */
async function denseCknna(A: Matrix, B: Matrix): Promise<number> {
  const topk = await ort.InferenceSession.create(denseTopKModel(), { intraOpNumThreads: 2 });
  const engine = await OnnxEngine.create('cpu');
  const lists = async (X: Matrix): Promise<KnnLists> => {
    const gram = await engine.gramTile(X, 0, X.rows, X); // n×n float32 in memory
    const out = await topk.run({
      g: new ort.Tensor('float32', gram, [X.rows, X.rows]),
      k: new ort.Tensor('int64', BigInt64Array.from([BigInt(K + 2)]), [1]),
    });
    const v = out.v!.data as Float32Array;
    const idx = out.i!.data as BigInt64Array;
    const n = X.rows;
    const indices = new Int32Array(n * K);
    const values = new Float64Array(n * K);
    const next = new Float64Array(n);
    for (let i = 0; i < n; i++) {
      let m = 0;
      for (let c = 0; c < K + 2 && m <= K; c++) {
        const j = Number(idx[i * (K + 2) + c]);
        if (j === i) continue;
        if (m < K) {
          indices[i * K + m] = j;
          values[i * K + m] = v[i * (K + 2) + c]!;
        } else next[i] = v[i * (K + 2) + c]!;
        m++;
      }
    }
    return { n, k: K, indices, values, next, tieTolerance: 0 };
  };
  const a = await lists(A);
  const b = await lists(B);
  return cknnaFromKnn(a, b).value;
}

/** TopK over a whole n×n matrix, built with the same onnx-proto route as the engine's graphs. */
function denseTopKModel(): Uint8Array {
  const { onnx } = onnxProto;
  const vi = (name: string, t: number, dims: string[]) =>
    onnx.ValueInfoProto.create({ name, type: { tensorType: { elemType: t, shape: { dim: dims.map((d) => ({ dimParam: d })) } } } });
  const F = onnx.TensorProto.DataType.FLOAT;
  const I = onnx.TensorProto.DataType.INT64;
  const graph = onnx.GraphProto.create({
    name: 'topk',
    node: [
      onnx.NodeProto.create({
        opType: 'TopK',
        input: ['g', 'k'],
        output: ['v', 'i'],
        attribute: [{ name: 'axis', type: onnx.AttributeProto.AttributeType.INT, i: 1 }],
      }),
    ],
    input: [vi('g', F, ['n', 'm']), vi('k', I, ['one'])],
    output: [vi('v', F, ['n', 'kk']), vi('i', I, ['n', 'kk'])],
  });
  return onnx.ModelProto.encode(onnx.ModelProto.create({ irVersion: 8, opsetImport: [{ domain: '', version: 17 }], graph })).finish();
}

/** Counts Gram-product work: every knn() call is one n×n Gram product of its input. */
class CountingEngine implements Engine {
  calls = 0;
  constructor(private readonly inner: Engine) {}
  get name() {
    return this.inner.name;
  }
  get precision() {
    return this.inner.precision;
  }
  get device() {
    return this.inner.device;
  }
  gramTile(a: Matrix, s: number, e: number, b: Matrix) {
    return this.inner.gramTile(a, s, e, b);
  }
  knn(x: Matrix, k: number) {
    this.calls++;
    return this.inner.knn(x, k);
  }
  crossProduct(a: Matrix, b: Matrix) {
    return this.inner.crossProduct(a, b);
  }
  dispose() {
    return this.inner.dispose();
  }
}

async function child(mode: string, n: number, dA: number, dB: number, repeats: number): Promise<Record<string, number>> {
  const { A, B } = synthetic(n, dA, dB, 7);
  const engine = await OnnxEngine.create('cpu');
  const out: Record<string, number> = { n, dA, dB };
  if (mode === 'torch') {
    const torch = await TorchEngine.create({ device: 'cpu' });
    const times: number[] = [];
    let value = NaN;
    for (let r = 0; r < repeats; r++) {
      const [t, res] = await timeIt(() => computeMetric('cknna', new Features(A, torch), new Features(B, torch), K, 'l2'));
      times.push(t);
      value = res.value;
    }
    await torch.dispose();
    Object.assign(out, { value, seconds: median(times) });
  } else if (mode === 'tiled') {
    const times: number[] = [];
    const gemm: number[] = [];
    let value = NaN;
    for (let r = 0; r < repeats; r++) {
      const [t, res] = await timeIt(() => computeMetric('cknna', new Features(A, engine), new Features(B, engine), K, 'l2'));
      times.push(t);
      value = res.value;
      const [tg] = await timeIt(async () => {
        await rawGemm(engine, A);
        await rawGemm(engine, B);
      });
      gemm.push(tg);
    }
    Object.assign(out, { value, seconds: median(times), gemm_seconds: median(gemm) });
  } else if (mode === 'dense') {
    const times: number[] = [];
    let value = NaN;
    for (let r = 0; r < repeats; r++) {
      const [t, v] = await timeIt(() => denseCknna(A, B));
      times.push(t);
      value = v;
    }
    Object.assign(out, { value, seconds: median(times) });
  } else if (mode === 'sweep') {
    const layers = 4;
    const dir = `/tmp/viral-lens-bench-sweep-${process.pid}`;
    const w = await CaptureWriter.create(dir, {
      model: { name: 'synthetic' },
      variant: 'other',
      token_layout: { kind: 'image', tokens: 1, source_tokens: 1, grid: null, pooling: 'mean' },
      layers: Array.from({ length: layers }, (_, i) => ({ name: i === 0 ? 'embed' : `blocks.${i - 1}.out`, index: i, dim: dA })),
      targets: [{ name: 'clip', dim: dB, tokens: 1 }],
    } as never);
    await w.appendBatch(
      {
        ids: Array.from({ length: n }, (_, i) => `s${i}`),
        layers: Object.fromEntries(Array.from({ length: layers }, (_, i) => [i === 0 ? 'embed' : `blocks.${i - 1}.out`, A.data as Float32Array])),
        targets: { clip: B.data as Float32Array },
      },
      { dtype: 'F32' },
    );
    const counting = new CountingEngine(engine);
    const [t] = await timeIt(() => runLayerwise(dir, { engine: counting, metrics: ['cknna', 'mutual_knn'], k: K, preprocess: 'none', tokenMode: 'mean' }));
    Object.assign(out, { layers, gram_products: counting.calls, seconds: t });
    execFileSync('rm', ['-rf', dir]);
  }
  out.peak_rss_mb = process.resourceUsage().maxRSS / 1024;
  await engine.dispose();
  return out;
}

/** One `compare` of two .npy files through the torch engine: by path (`files`) or through Node's heap (`heap`). */
async function filesChild(mode: 'files' | 'heap', pathA: string, pathB: string, metric: MetricName): Promise<Record<string, number>> {
  const torch = await TorchEngine.create({ device: 'cpu' });
  // The same worker without its file capability is exactly the path every matrix took before it.
  const engine: Engine =
    mode === 'files'
      ? torch
      : { name: torch.name, precision: torch.precision, device: torch.device, gramTile: (a, s, e, b) => torch.gramTile(a, s, e, b), knn: (x, k) => torch.knn(x, k), crossProduct: (a, b) => torch.crossProduct(a, b), dispose: () => torch.dispose() };
  const rssBefore = process.memoryUsage().rss / 2 ** 20;
  const [seconds, r] = await timeIt(async () => {
    const a = new Features(await fileFeatures(pathA, {}, { preprocess: 'prh' }, engine), engine, pathA);
    const b = new Features(await fileFeatures(pathB, {}, { preprocess: 'prh' }, engine), engine, pathB);
    return computeMetric(metric, a, b, K, 'prh');
  });
  const out = { seconds, value: r.value, rss_start_mb: rssBefore, peak_rss_mb: process.resourceUsage().maxRSS / 1024 };
  await torch.dispose();
  return out;
}

async function main() {
  const { values } = parseArgs({
    options: {
      child: { type: 'string' },
      n: { type: 'string' },
      sizes: { type: 'string', default: '2000,8000,20000' },
      dA: { type: 'string', default: '4096' },
      dB: { type: 'string', default: '1024' },
      repeats: { type: 'string', default: '3' },
      'torch-n': { type: 'string', default: '8000' },
      'files-n': { type: 'string', default: '20000' },
      'files-d': { type: 'string', default: '1024' },
      'files-metric': { type: 'string', default: 'cka' },
      'files-only': { type: 'boolean', default: false },
      a: { type: 'string' },
      b: { type: 'string' },
      json: { type: 'string' },
    },
  });
  const dA = Number(values.dA);
  const dB = Number(values.dB);
  const repeats = Number(values.repeats);
  if (values.child === 'files' || values.child === 'heap') {
    process.stdout.write(JSON.stringify(await filesChild(values.child, values.a!, values.b!, parseMetric(values['files-metric']!))) + '\n');
    return;
  }
  if (values.child) {
    process.stdout.write(JSON.stringify(await child(values.child, Number(values.n), dA, dB, repeats)) + '\n');
    return;
  }
  const self = fileURLToPath(import.meta.url);
  const run = (mode: string, n: number, reps: number) => {
    const args = ['--import', 'tsx', '--expose-gc', self, '--child', mode, '--n', String(n), '--dA', String(dA), '--dB', String(dB), '--repeats', String(reps)];
    return JSON.parse(execFileSync(process.execPath, args, { encoding: 'utf8', maxBuffer: 1 << 20 }).trim().split('\n').pop()!);
  };
  const results: Record<string, unknown>[] = [];
  const filesN = Number(values['files-n']);
  if (filesN > 0) results.push({ files: await filesBench(self, filesN, Number(values['files-d']), parseMetric(values['files-metric']!), repeats) });
  if (values['files-only']) {
    if (values.json) writeFileSync(values.json, JSON.stringify(results, null, 2));
    return;
  }
  const sizes = values.sizes!.split(',').map(Number);
  console.log(`CKNNA benchmark: k = ${K}, dA = ${dA}, dB = ${dB}, float32 onnxruntime CPU engine, ${repeats} repeats (medians)`);
  console.log('n       tiled s  GFLOP/s  peak RSS MB  raw GEMM s  tiled/GEMM  dense s  dense RSS MB  dense/tiled  |Δ value|');
  for (const n of sizes) {
    const reps = n >= 20000 ? 1 : repeats;
    const tiled = run('tiled', n, reps);
    const flops = 2 * n * n * (dA + dB);
    const denseFits = 2 * n * n * 4 < DENSE_BUDGET_BYTES;
    const dense = denseFits ? run('dense', n, reps) : null;
    const row = {
      n,
      tiled_seconds: tiled.seconds,
      gflops: flops / tiled.seconds / 1e9,
      peak_rss_mb: tiled.peak_rss_mb,
      gemm_seconds: tiled.gemm_seconds,
      tiled_over_gemm: tiled.seconds / tiled.gemm_seconds,
      dense_seconds: dense?.seconds ?? null,
      dense_rss_mb: dense?.peak_rss_mb ?? null,
      dense_over_tiled: dense ? dense.seconds / tiled.seconds : null,
      value: tiled.value,
      value_diff: dense ? Math.abs(dense.value - tiled.value) : null,
    };
    results.push(row);
    const f = (v: number | null, d = 2) => (v === null ? '   -' : v.toFixed(d));
    console.log(
      `${String(n).padEnd(7)} ${f(row.tiled_seconds).padStart(7)}  ${f(row.gflops, 0).padStart(7)}  ${f(row.peak_rss_mb, 0).padStart(11)}  ${f(row.gemm_seconds).padStart(10)}  ${f(row.tiled_over_gemm).padStart(10)}  ${f(row.dense_seconds).padStart(7)}  ${f(row.dense_rss_mb, 0).padStart(12)}  ${f(row.dense_over_tiled).padStart(11)}  ${row.value_diff === null ? '-' : row.value_diff.toExponential(1)}`,
    );
  }
  const sweepN = Math.min(...sizes);
  const sweep = run('sweep', sweepN, 1);
  console.log(
    `sweep: ${sweep.layers} layers × 1 target × 2 metrics at n = ${sweepN}: ${sweep.gram_products} Gram products (L+1 = ${sweep.layers + 1}; naive 2L = ${2 * sweep.layers}), ${sweep.seconds.toFixed(2)} s`,
  );
  results.push({ sweep });
  const torchN = Number(values['torch-n']);
  if (torchN > 0) {
    // One repeat each: on a 2-core machine these take minutes, and the ratio is far from 1 either way.
    const ort = run('tiled', torchN, 1);
    let torch: Record<string, number> | null = null;
    try {
      torch = run('torch', torchN, 1);
    } catch (err) {
      console.log(`torch engine on the CPU: not run (${String((err as Error).message).split('\n').find((l) => /torch engine/.test(l)) ?? 'worker did not start'})`);
    }
    if (torch) {
      const ratio = torch.seconds! / ort.seconds!;
      console.log(
        `CPU side by side at n = ${torchN} (dA ${dA}, dB ${dB}, l2, k ${K}): onnxruntime cpu ${ort.seconds!.toFixed(2)} s, torch on CPU ${torch.seconds!.toFixed(2)} s ` +
          `(torch/cpu = ${ratio.toFixed(2)}, |Δ value| = ${Math.abs(torch.value! - ort.value!).toExponential(1)}); auto should prefer ${ratio < 1 ? 'torch' : 'cpu'} on a CPU-only machine`,
      );
      results.push({ cpu_side_by_side: { n: torchN, ort_seconds: ort.seconds, torch_seconds: torch.seconds, torch_over_ort: ratio } });
    }
  }
  if (values.json) writeFileSync(values.json, JSON.stringify(results, null, 2));
}

/** Before/after of the file-backed path: the same compare, `repeats` children each, medians. */
async function filesBench(self: string, n: number, d: number, metric: MetricName, repeats: number): Promise<Record<string, unknown> | null> {
  const dir = mkdtempSync(join(tmpdir(), 'viral-lens-bench-files-'));
  try {
    const paths = [join(dir, 'A.npy'), join(dir, 'B.npy')] as const;
    const { A, B } = synthetic(n, d, d, 11);
    await writeNpy(paths[0], [n, d], A.data);
    await writeNpy(paths[1], [n, d], B.data);
    const run = (mode: string) => {
      const args = ['--import', 'tsx', self, '--child', mode, '--a', paths[0], '--b', paths[1], '--files-metric', metric];
      return JSON.parse(execFileSync(process.execPath, args, { encoding: 'utf8', maxBuffer: 1 << 20 }).trim().split('\n').pop()!) as Record<string, number>;
    };
    const runs: Record<'heap' | 'files', Record<string, number>[]> = { heap: [], files: [] };
    try {
      for (let r = 0; r < repeats; r++) for (const mode of ['heap', 'files'] as const) runs[mode].push(run(mode));
    } catch (err) {
      console.log(`compare by path (torch engine on the CPU): not run (${String((err as Error).message).split('\n').find((l) => /torch engine/.test(l)) ?? 'worker did not start'})`);
      return null;
    }
    const med = (mode: 'heap' | 'files', key: string) => median(runs[mode].map((x) => x[key]!));
    const row = {
      n,
      d,
      metric,
      repeats,
      before_seconds: med('heap', 'seconds'),
      after_seconds: med('files', 'seconds'),
      before_peak_rss_mb: med('heap', 'peak_rss_mb'),
      after_peak_rss_mb: med('files', 'peak_rss_mb'),
      value_diff: Math.abs(runs.heap[0]!.value! - runs.files[0]!.value!),
    };
    console.log(
      `compare A.npy B.npy (${metric}, prh${METRICS[metric].needsKnn ? `, k ${K}` : ''}) with the torch engine on the CPU at n = ${n}, d = ${d} (2 × ${((n * d * 4) / 2 ** 20).toFixed(0)} MiB float32), median of ${repeats}: ` +
        `before (through Node) ${row.before_seconds.toFixed(2)} s, Node peak RSS ${row.before_peak_rss_mb.toFixed(0)} MB; ` +
        `after (worker maps the files) ${row.after_seconds.toFixed(2)} s, Node peak RSS ${row.after_peak_rss_mb.toFixed(0)} MB; |Δ value| = ${row.value_diff.toExponential(1)}`,
    );
    return row;
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

await main();
