import { ParamError } from '../core/errors.js';
import type { Matrix } from '../core/matrix.js';
import { cudaProviderFiles } from './cuda.js';
import { OnnxEngine } from './onnx.js';
import { RefEngine } from './ref.js';
import { TorchEngine, type TorchEngineOptions } from './torch.js';
import type { Engine } from './types.js';
import { webGpuAdapter } from './webgpu.js';

export type { Engine, EngineInfo, EnginePrecision, FileRowsOps, KnnLists, KnnOptions } from './types.js';
export { checkCrossInput, checkKnnInput, describeEngine } from './types.js';
export { parseTorchPrecision, TORCH_PRECISIONS, type TorchPrecision } from './torch.js';

import { ENGINE_NAMES } from './names.js';
export { ENGINE_NAMES, type EngineName } from './names.js';

/** Order in which `auto` tries engines: fastest first. */
export const AUTO_ORDER = ['torch', 'cuda', 'webgpu', 'cpu', 'ref'] as const;

/** Options that only the torch engine takes (`--device`, `--precision`); other engines reject them. */
export type EngineOptions = Pick<TorchEngineOptions, 'device' | 'precision'>;

/**
 * `auto` picks the first of torch (on a GPU) > cuda > webgpu > cpu > ref that starts here and passes `selfCheck`
 * against the ref engine; WebGPU only on a hardware GPU adapter (on a CPU software adapter it is slower than the CPU
 * engine), torch only on a GPU (on the CPU the onnxruntime engine is faster: bench/cknna.bench.ts). `webgpu`, `cuda`
 * and `torch` by name also run the self-check and fail with its finding (torch's fast modes tf32/bf16 skip it: they
 * are not meant to match ref to 2e-5). The returned engine's name/device/precision say what was used; callers print
 * them with every result.
 */
export async function createEngine(name: string = 'auto', options: EngineOptions = {}): Promise<Engine> {
  if (name !== 'torch' && name !== 'auto' && (options.device || (options.precision && options.precision !== 'float32'))) {
    throw new ParamError('device', `only the torch engine takes them (device and precision; got engine ${name})`);
  }
  switch (name) {
    case 'ref':
      return new RefEngine();
    case 'cpu':
      return OnnxEngine.create('cpu');
    case 'torch': {
      const engine = await TorchEngine.create(options);
      if (engine.precision !== 'float32') return engine;
      const check = await selfCheck(engine);
      if (!check.ok) {
        await engine.dispose();
        throw new Error(`torch engine started but failed its self-check against ref: ${check.detail}`);
      }
      return engine;
    }
    case 'webgpu':
    case 'cuda': {
      const engine = await OnnxEngine.create(name);
      const check = await selfCheck(engine);
      if (!check.ok) {
        await engine.dispose();
        throw new Error(`${name} engine started but failed its self-check against ref: ${check.detail}`);
      }
      return engine;
    }
    case 'auto': {
      if (options.device || (options.precision && options.precision !== 'float32')) return createEngine('torch', options);
      for await (const probe of probeEngines({ stopAtFirst: true })) if (probe.engine) return probe.engine;
      return new RefEngine();
    }
    default:
      throw new ParamError('engine', `unknown engine '${name}' (expected one of ${ENGINE_NAMES.join(', ')})`);
  }
}

export interface EngineProbe {
  name: (typeof AUTO_ORDER)[number];
  /** Started and passed the self-check. */
  available: boolean;
  /** Whether `auto` may choose it (WebGPU on a CPU adapter is available but not chosen). */
  autoEligible: boolean;
  device?: string;
  precision?: string;
  /** Why it is unavailable or not chosen, or what the self-check found. */
  detail: string;
  /** The started engine, when the caller asked to keep it (`auto`); otherwise disposed. */
  engine?: Engine;
}

/**
 * Tries every engine in `auto` order and reports what happened (doctor prints this). With `stopAtFirst`, stops at
 * the first engine `auto` may choose and hands it over started; the others are disposed.
 */
export async function* probeEngines(options: { stopAtFirst?: boolean } = {}): AsyncGenerator<EngineProbe> {
  for (const name of AUTO_ORDER) {
    const probe = await probeOne(name, options.stopAtFirst ?? false);
    yield probe;
    if (options.stopAtFirst && probe.engine) return;
  }
}

async function probeOne(name: (typeof AUTO_ORDER)[number], keep: boolean): Promise<EngineProbe> {
  if (name === 'cuda') {
    const files = cudaProviderFiles();
    // Without the provider libraries there is nothing to try; saying which file is missing is the useful answer.
    if (files.missing.length) {
      return { name, available: false, autoEligible: false, detail: `CUDA EP not installed: ${files.missing.join(', ')} not in ${files.dir} (docs/scale.md)` };
    }
  }
  if (name === 'torch') return probeTorch(keep);
  let autoEligible = true;
  let note = '';
  if (name === 'webgpu') {
    const adapter = await webGpuAdapter();
    if (adapter.kind !== 'gpu') {
      autoEligible = false;
      note =
        adapter.kind === 'cpu'
          ? `; not chosen by auto: ${adapter.name} is a CPU software adapter (slower than the cpu engine)`
          : `; not chosen by auto: the adapter could not be identified as a GPU (${adapter.source})`;
    }
  }
  // `auto` never chooses it, so it need not be started (that costs seconds on a software adapter).
  if (keep && !autoEligible) return { name, available: false, autoEligible, detail: `not tried${note}` };
  let engine: Engine;
  try {
    engine = name === 'ref' ? new RefEngine() : await OnnxEngine.create(name);
  } catch (err) {
    return { name, available: false, autoEligible: false, detail: `does not start: ${firstLine(err)}` };
  }
  const check = name === 'ref' ? { ok: true, detail: 'n/a (the reference itself)' } : await selfCheck(engine);
  const base = { name, device: engine.device, precision: engine.precision };
  if (!check.ok) {
    await engine.dispose();
    return { ...base, available: false, autoEligible: false, detail: `self-check failed: ${check.detail}` };
  }
  const probe: EngineProbe = { ...base, available: true, autoEligible, detail: `self-check ${check.detail}${note}` };
  if (keep && autoEligible) probe.engine = engine;
  else await engine.dispose();
  return probe;
}

/** torch: eligible for `auto` on a GPU only; a CPU-only torch is reported but not self-checked when `auto` probes. */
async function probeTorch(keep: boolean): Promise<EngineProbe> {
  let engine: TorchEngine;
  try {
    engine = await TorchEngine.create();
  } catch (err) {
    return { name: 'torch', available: false, autoEligible: false, detail: `does not start: ${firstLine(err)}` };
  }
  const base = { name: 'torch' as const, device: engine.device, precision: engine.precision };
  const note = engine.onGpu ? '' : '; not chosen by auto: torch runs on the CPU here (the cpu engine is faster there)';
  if (keep && !engine.onGpu) {
    await engine.dispose();
    return { ...base, available: true, autoEligible: false, detail: `not self-checked${note}` };
  }
  const check = await selfCheck(engine);
  if (!check.ok) {
    await engine.dispose();
    return { ...base, available: false, autoEligible: false, detail: `self-check failed: ${check.detail}` };
  }
  const probe: EngineProbe = { ...base, available: true, autoEligible: engine.onGpu, detail: `self-check ${check.detail}${note}` };
  if (keep && engine.onGpu) probe.engine = engine;
  else await engine.dispose();
  return probe;
}

/** The first line of an error, without onnxruntime's source-location prefix ("/onnxruntime_src/…cc:87 fn(…) cond was false."). */
function firstLine(err: unknown): string {
  const line = String((err as Error)?.message ?? err).split('\n')[0]!;
  return line.replace(/^\/onnxruntime_src\/\S+ .*? was false\.\s*/, '');
}

/** Largest |Δ| against the ref engine that a float32 engine may show on the self-check data (unit-norm rows). */
export const SELF_CHECK_TOLERANCE = 2e-5;

/**
 * A tiny end-to-end comparison with the ref engine: one Gram tile, the kNN lists (k = 5, exact same neighbour sets,
 * values within tolerance) and a cross product, on fixed data whose k-th/(k+1)-th gaps are far above float32 noise,
 * so a correct float32 engine always passes and TF32 (≈1e-3 relative error) or a broken provider never does.
 */
export async function selfCheck(engine: Engine): Promise<{ ok: boolean; detail: string; maxError: number }> {
  const ref = new RefEngine();
  const x = selfCheckData(48, 24);
  const y = selfCheckData(48, 8, 0.37);
  const k = 5;
  let maxError = 0;
  const err = (a: ArrayLike<number>, b: ArrayLike<number>) => {
    for (let i = 0; i < a.length; i++) maxError = Math.max(maxError, Math.abs(a[i]! - b[i]!));
  };
  try {
    err(await engine.gramTile(x, 5, 17, x), await ref.gramTile(x, 5, 17, x));
    const [got, want] = await Promise.all([engine.knn(x, k), ref.knn(x, k)]);
    for (let i = 0; i < x.rows; i++) {
      const a = [...got.indices.subarray(i * k, (i + 1) * k)].sort((p, q) => p - q);
      const b = [...want.indices.subarray(i * k, (i + 1) * k)].sort((p, q) => p - q);
      if (a.join() !== b.join()) return { ok: false, detail: `row ${i}: neighbours ${a} ≠ ref ${b}`, maxError };
    }
    err(got.values, want.values);
    err(await engine.crossProduct(x, y), await ref.crossProduct(x, y));
  } catch (e) {
    return { ok: false, detail: `error: ${firstLine(e)}`, maxError };
  }
  const ok = maxError <= SELF_CHECK_TOLERANCE;
  return { ok, detail: `${ok ? 'passed' : 'FAILED'}: max |Δ| vs ref = ${maxError.toExponential(2)} (tolerance ${SELF_CHECK_TOLERANCE})`, maxError };
}

/** Deterministic unit-norm rows (a fixed trigonometric pattern: no PRNG, the same everywhere). */
export function selfCheckData(n: number, d: number, phase = 0): Matrix {
  const data = new Float32Array(n * d);
  for (let i = 0; i < n; i++) {
    let s = 0;
    for (let c = 0; c < d; c++) {
      const v = Math.sin(0.91 * (i + 1) * (c + 1) + phase) + 0.3 * Math.cos(2.3 * i - 0.7 * c);
      data[i * d + c] = v;
      s += v * v;
    }
    const inv = 1 / Math.sqrt(s);
    for (let c = 0; c < d; c++) data[i * d + c]! *= inv;
  }
  return { rows: n, cols: d, data };
}
