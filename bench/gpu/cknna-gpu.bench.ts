/**
 * The GPU check's Node.js half (bench/gpu/run.sh runs it where Node.js and onnxruntime-node with the CUDA provider
 * exist; otherwise the PyTorch half, cknna_torch.py, measures the same things).
 *
 *   GEMM ceiling : one large float32 Gemm on the engine's execution provider, reduced to a scalar on the device
 *                  (so only the inputs cross the bus), TFLOP/s
 *   CKNNA        : viral-lens's CKNNA (prh preprocessing on the CPU, exact kNN on the engine, O(n·k) HSIC) at each
 *                  n, dA 4096, dB 1024; the Gram work 2·n²·(dA + dB) per second as a fraction of the ceiling
 *
 * Usage: node --import tsx bench/gpu/cknna-gpu.bench.ts [--engine cuda|webgpu|cpu] [--sizes 20000,100000]
 *          [--dA 4096] [--dB 1024] [--k 10] [--gemm 8192,4096,8192] [--json out.json]
 * (`--engine cpu --sizes 2000` runs the same code on the CPU EP, as a smoke test on machines without a GPU.)
 */
import { writeFileSync } from 'node:fs';
import { parseArgs } from 'node:util';
import onnxProto from 'onnx-proto';
import * as ort from 'onnxruntime-node';
import { createEngine, describeEngine } from '../../src/engine/index.js';
import { OnnxEngine } from '../../src/engine/onnx.js';
import { computeMetric, Features, preprocess } from '../../src/metrics/index.js';
import { mulberry32 } from '../../src/core/rng.js';

const { onnx } = onnxProto;

/** s = ReduceSum(Gemm(a, b, transB)): the whole product stays on the device; one float comes back. */
function gemmSumModel(): Uint8Array {
  const F = onnx.TensorProto.DataType.FLOAT;
  const vi = (name: string, dims: (string | number)[]) =>
    onnx.ValueInfoProto.create({ name, type: { tensorType: { elemType: F, shape: { dim: dims.map((d) => (typeof d === 'number' ? { dimValue: d } : { dimParam: d })) } } } });
  const graph = onnx.GraphProto.create({
    name: 'gemm_sum',
    node: [
      onnx.NodeProto.create({ opType: 'Gemm', input: ['a', 'b'], output: ['g'], attribute: [onnx.AttributeProto.create({ name: 'transB', type: onnx.AttributeProto.AttributeType.INT, i: 1 })] }),
      onnx.NodeProto.create({ opType: 'ReduceSum', input: ['g'], output: ['s'], attribute: [onnx.AttributeProto.create({ name: 'keepdims', type: onnx.AttributeProto.AttributeType.INT, i: 0 })] }),
    ],
    input: [vi('a', ['m', 'k']), vi('b', ['n', 'k'])],
    output: [vi('s', [])],
  });
  return onnx.ModelProto.encode(onnx.ModelProto.create({ irVersion: 8, opsetImport: [{ domain: '', version: 17 }], graph })).finish();
}

/** TFLOP/s of one large Gemm on an onnxruntime engine's provider (inputs uploaded per call). */
async function ortGemmCeiling(engine: OnnxEngine, m: number, kk: number, nn: number): Promise<number> {
  const session = await ort.InferenceSession.create(gemmSumModel(), { executionProviders: [engine.provider] });
  const a = new ort.Tensor('float32', Float32Array.from({ length: m * kk }, (_, i) => Math.sin(i)), [m, kk]);
  const b = new ort.Tensor('float32', Float32Array.from({ length: nn * kk }, (_, i) => Math.cos(i)), [nn, kk]);
  await session.run({ a, b });
  const times: number[] = [];
  for (let r = 0; r < 5; r++) {
    const t = performance.now();
    await session.run({ a, b });
    times.push((performance.now() - t) / 1000);
  }
  await session.release();
  const ceiling = (2 * m * kk * nn) / median(times) / 1e12;
  console.log(`GEMM ${m}x${kk}x${nn} (inputs uploaded per call): ${ceiling.toFixed(2)} TFLOP/s`);
  return ceiling;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.floor(s.length / 2)]!;
}

/** A and B see one 8-dimensional latent signal through random maps, plus noise (seeded; cheap to make at 100k). */
function synthetic(n: number, d: number, noise: number, seed: number, z: Float32Array, r: number): Float32Array {
  const uniform = mulberry32(seed);
  const rand = () => uniform() - 0.5;
  const p = Float32Array.from({ length: r * d }, rand);
  const out = new Float32Array(n * d);
  for (let i = 0; i < n; i++) {
    const row = out.subarray(i * d, (i + 1) * d);
    for (let q = 0; q < r; q++) {
      const zq = z[i * r + q]!;
      for (let c = 0; c < d; c++) row[c]! += zq * p[q * d + c]!;
    }
    for (let c = 0; c < d; c++) row[c]! += noise * rand();
  }
  return out;
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      engine: { type: 'string', default: 'cuda' },
      device: { type: 'string' },
      sizes: { type: 'string', default: '20000,100000' },
      dA: { type: 'string', default: '4096' },
      dB: { type: 'string', default: '1024' },
      k: { type: 'string', default: '10' },
      gemm: { type: 'string', default: '8192,4096,8192' },
      json: { type: 'string' },
    },
  });
  const engine = await createEngine(values.engine, values.device ? { device: values.device } : {});
  console.log(`engine: ${describeEngine(engine)} (self-check against ref passed)`);
  const report: Record<string, unknown> = { engine: describeEngine(engine), engine_name: engine.name };

  const [m, kk, nn] = values.gemm!.split(',').map(Number) as [number, number, number];
  // The torch engine's ceiling is cknna_torch.py's GEMM measurement in the same run.sh run (run.sh prints the ratio).
  const ceiling =
    engine instanceof OnnxEngine
      ? await ortGemmCeiling(engine, m, kk, nn).catch((err: Error) => {
          console.log(`GEMM ceiling not measured: ${String(err.message).split('\n')[0]}`);
          return NaN;
        })
      : NaN;
  report.gemm = { shape: [m, kk, nn], tflops: ceiling, includes_upload: true };

  const dA = Number(values.dA);
  const dB = Number(values.dB);
  const k = Number(values.k);
  const rows: Record<string, unknown>[] = [];
  for (const n of values.sizes!.split(',').map(Number)) {
    const r = 8;
    const z = Float32Array.from({ length: n * r }, (_, i) => Math.sin(12.9898 * i) * 0.5);
    const A = preprocess({ rows: n, cols: dA, data: synthetic(n, dA, 0.5, 1, z, r) }, 'prh');
    const B = preprocess({ rows: n, cols: dB, data: synthetic(n, dB, 0.8, 2, z, r) }, 'prh');
    const t0 = performance.now();
    const res = await computeMetric('cknna', new Features(A, engine, 'A'), new Features(B, engine, 'B'), k, 'prh(q=0.95)');
    const seconds = (performance.now() - t0) / 1000;
    const tflops = (2 * n * n * (dA + dB)) / seconds / 1e12;
    rows.push({ n, value: res.value, seconds, gram_tflops: tflops, fraction_of_gemm: tflops / ceiling, tied_rows: (res.tied_rows_a ?? 0) + (res.tied_rows_b ?? 0) });
    console.log(
      `CKNNA n=${n}: ${res.value.toFixed(6)} in ${seconds.toFixed(2)} s; Gram work ${tflops.toFixed(2)} TFLOP/s = ${((100 * tflops) / ceiling).toFixed(0)}% of the GEMM ceiling; tied rows ${(res.tied_rows_a ?? 0) + (res.tied_rows_b ?? 0)}`,
    );
  }
  report.cknna = rows;
  await engine.dispose();
  if (values.json) writeFileSync(values.json, JSON.stringify(report, null, 2) + '\n');
}

// An engine that does not start here (no CUDA provider, no torch) is one line, not a stack trace: run.sh goes on.
await main().catch((err: Error) => {
  console.log(`cknna-gpu: ${String(err?.message ?? err).split('\n')[0]}`);
  process.exitCode = 1;
});
