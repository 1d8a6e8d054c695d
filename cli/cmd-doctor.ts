import { createRequire } from 'node:module';
import os from 'node:os';
import { parseArgs } from 'node:util';
import * as ort from 'onnxruntime-node';
import { EXACT_MAX_ROWS } from '../src/engine/approx.js';
import { cudaProviderFiles } from '../src/engine/cuda.js';
import { probeEngines, type EngineProbe } from '../src/engine/index.js';
import { torchStatus } from '../src/engine/torch.js';
import { webGpuAdapter } from '../src/engine/webgpu.js';
import { table, toJson } from './format.js';

/**
 * `viral-lens doctor`: which engines start here and pass their self-check against the ref engine, which one `auto`
 * picks, and on what: the WebGPU adapter by name (a CPU software adapter is called one), the CUDA provider's files
 * and GPU, the precision (CUDA runs fp32 with TF32 switched off). Every engine is actually started; nothing is
 * inferred from what is installed alone.
 */
export async function run(argv: string[]): Promise<number> {
  const { values } = parseArgs({ args: argv, options: { json: { type: 'boolean', default: false } } });
  const report = await doctorReport();
  process.stdout.write(values.json ? toJson(report) : renderDoctor(report));
  return 0;
}

export interface DoctorReport {
  node: string;
  onnxruntime_node: string;
  platform: string;
  cpu_threads: number;
  engines: Omit<EngineProbe, 'engine'>[];
  /** The engine `--engine auto` uses here. */
  auto: string;
  webgpu_adapter: Awaited<ReturnType<typeof webGpuAdapter>>;
  cuda_provider: ReturnType<typeof cudaProviderFiles>;
  /** The torch engine's interpreter (VIRAL_LENS_PYTHON, else python3) and what its worker reported, or why it does not start. */
  torch: Awaited<ReturnType<typeof torchStatus>>;
  approximate_knn: { library: string; available: boolean; detail: string };
}

export async function doctorReport(): Promise<DoctorReport> {
  const engines: Omit<EngineProbe, 'engine'>[] = [];
  for await (const p of probeEngines()) engines.push(p);
  const auto = engines.find((e) => e.available && e.autoEligible)?.name ?? 'ref';
  let hnsw: DoctorReport['approximate_knn'];
  try {
    const req = createRequire(import.meta.url);
    const version = (req('hnswlib-node/package.json') as { version: string }).version;
    await import('hnswlib-node');
    hnsw = { library: `hnswlib-node ${version}`, available: true, detail: `used by --knn hnsw, and by --knn auto above ${EXACT_MAX_ROWS} rows` };
  } catch (err) {
    hnsw = { library: 'hnswlib-node', available: false, detail: String((err as Error).message).split('\n')[0]! };
  }
  return {
    node: process.version,
    onnxruntime_node: ort.env.versions?.node ?? 'unknown',
    platform: `${process.platform} ${process.arch}`,
    cpu_threads: os.availableParallelism(),
    engines,
    auto,
    webgpu_adapter: await webGpuAdapter(),
    cuda_provider: cudaProviderFiles(),
    torch: await torchStatus(),
    approximate_knn: hnsw,
  };
}

export function renderDoctor(r: DoctorReport): string {
  const rows = r.engines.map((e) => [e.name, e.available ? (e.autoEligible ? 'ok' : 'ok (not auto)') : 'unavailable', e.precision ?? '-', e.device ?? '-']);
  const autoEngine = r.engines.find((e) => e.name === r.auto);
  const a = r.webgpu_adapter;
  const lines = [
    `viral-lens doctor: node ${r.node}, onnxruntime-node ${r.onnxruntime_node}, ${r.platform}, ${r.cpu_threads} CPU threads`,
    '',
    table(['engine', 'status', 'precision', 'device'], rows).trimEnd(),
    '',
    ...r.engines.map((e) => `${e.name}: ${e.detail}`),
    '',
    `auto → ${r.auto}${autoEngine?.device ? `: ${autoEngine.device}` : ''}`,
    `WebGPU adapter: ${a.kind === 'gpu' ? a.name : a.kind === 'cpu' ? `${a.name} (a CPU software adapter, not a GPU)` : 'not identified'} — ${a.source}` +
      (a.devices.length ? `; Vulkan devices: ${a.devices.map((d) => `${d.name} [${d.type}]`).join(', ')}` : ''),
    `torch: ${renderTorch(r.torch)}`,
    `CUDA provider: ${r.cuda_provider.missing.length ? `missing ${r.cuda_provider.missing.join(', ')}` : 'libraries present'} in ${r.cuda_provider.dir}`,
    `approximate kNN: ${r.approximate_knn.library} ${r.approximate_knn.available ? 'available' : 'NOT available'} (${r.approximate_knn.detail})`,
  ];
  return lines.join('\n') + '\n';
}

function renderTorch(t: DoctorReport['torch']): string {
  if (!t.info) return `unavailable with ${t.python} — ${t.error}`;
  const i = t.info;
  const gib = (b: number | null) => (b == null ? '?' : `${(b / 2 ** 30).toFixed(1)} GiB`);
  const mem = i.total_bytes != null ? `${gib(i.free_bytes)} free of ${gib(i.total_bytes)}` : `${gib(i.free_bytes)} free host memory`;
  return `${i.python} (Python ${i.python_version}), torch ${i.torch}${i.cuda ? ` (CUDA ${i.cuda})` : ''}, device ${i.device} = ${i.device_name}, ${mem}`;
}
