/**
 * Side-by-side benchmark against the reference pipeline: the same CKNNA on the same .npy files, computed
 *
 *   ours      : viral-lens (prh preprocessing, tiled fused Gemm+TopK kNN on the chosen engine, O(n·k) HSIC)
 *   reference : bench/reference/cknna_reference.py (dense n×n float32 kernels in torch, topk masks, the O(n³)
 *               torch.mm(K̃, L̃) of the unbiased HSIC), the way the Platonic Representation Hypothesis code does it
 *
 * Each side runs in its own fresh process that loads the files, so wall time and peak RSS are that computation's
 * alone (ours: VmHWM of the process; reference: ru_maxrss of the Python process). Both get the same thread count.
 * torch's speed is its BLAS's: Debian's python3-torch links the generic libblas.so.3, which is the slow reference
 * BLAS unless an optimised one is selected, so OpenBLAS is put on LD_LIBRARY_PATH when installed
 * (apt-get install libopenblas0-pthread) and the BLAS actually loaded is printed.
 *
 * Usage: node --import tsx bench/reference.bench.ts [--sizes 1000,4000,8000] [--dA 4096] [--dB 1024] [--k 10]
 *          [--engine cpu] [--no-reference] [--json out.json]
 *        (--sizes 50000 --no-reference: per-token scale, ours only: the dense reference would need ~10 GB per n×n
 *         float32 matrix and several of them.)
 */
import { execFile } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs, promisify } from 'node:util';
import { createEngine, describeEngine } from '../src/engine/index.js';
import { computeMetric, Features, preprocess } from '../src/metrics/index.js';
import { readNpy, writeNpy } from '../src/store/npy.js';
import { mulberry32 } from '../src/core/rng.js';

const here = fileURLToPath(new URL('.', import.meta.url));
const OPENBLAS_DIRS = ['/usr/lib/x86_64-linux-gnu/openblas-pthread', '/usr/lib/x86_64-linux-gnu/openblas-openmp', '/usr/lib/x86_64-linux-gnu/openblas'];

interface SideResult {
  value: number;
  total_s: number;
  peak_rss_bytes: number;
  detail: string;
}

/** Peak resident set of this process (VmHWM), in bytes. */
function vmHwm(): number {
  const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'));
  return m ? Number(m[1]) * 1024 : NaN;
}

/** Child mode: ours on two .npy files; prints one JSON line. */
async function child(a: string, b: string, k: number, engineName: string): Promise<void> {
  const [A, B] = await Promise.all([readNpy(a), readNpy(b)]);
  const toMatrix = (x: Awaited<ReturnType<typeof readNpy>>) => ({ rows: x.shape[0]!, cols: x.shape[1]!, data: x.data instanceof Float32Array ? x.data : Float32Array.from(x.data) });
  const engine = await createEngine(engineName);
  const t0 = performance.now();
  const fa = new Features(preprocess(toMatrix(A), 'prh'), engine, 'A');
  const fb = new Features(preprocess(toMatrix(B), 'prh'), engine, 'B');
  const t1 = performance.now();
  const r = await computeMetric('cknna', fa, fb, k, 'prh(q=0.95)');
  const t2 = performance.now();
  const out: SideResult & { tied: number } = {
    value: r.value,
    total_s: (t2 - t0) / 1000,
    peak_rss_bytes: vmHwm(),
    detail: `${describeEngine(engine)}; preprocess ${((t1 - t0) / 1000).toFixed(2)} s, kNN+HSIC ${((t2 - t1) / 1000).toFixed(2)} s`,
    tied: (r.tied_rows_a ?? 0) + (r.tied_rows_b ?? 0),
  };
  await engine.dispose();
  process.stdout.write(JSON.stringify(out) + '\n');
}

/** Correlated synthetic features: A and B see one 32-dimensional latent signal through random maps, plus noise. */
function synthetic(n: number, dA: number, dB: number, seed: number): { A: Float32Array; B: Float32Array } {
  const uniform = mulberry32(seed);
  const rand = () => uniform() - 0.5;
  const r = 32;
  const z = Float32Array.from({ length: n * r }, rand);
  const make = (d: number, noise: number) => {
    const p = Float32Array.from({ length: r * d }, rand);
    const out = new Float32Array(n * d);
    for (let i = 0; i < n; i++) {
      const row = out.subarray(i * d, (i + 1) * d);
      for (let q = 0; q < r; q++) {
        const zq = z[i * r + q]!;
        const pq = p.subarray(q * d, (q + 1) * d);
        for (let c = 0; c < d; c++) row[c]! += zq * pq[c]!;
      }
      for (let c = 0; c < d; c++) row[c]! += noise * rand();
    }
    return out;
  };
  return { A: make(dA, 0.5), B: make(dB, 0.8) };
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
}

async function findTorchPython(): Promise<string | null> {
  for (const py of ['/usr/bin/python3', 'python3']) {
    try {
      await promisify(execFile)(py, ['-c', 'import torch, numpy']);
      return py;
    } catch {
      // next candidate
    }
  }
  return null;
}

async function runJson<T>(cmd: string, args: string[], env: NodeJS.ProcessEnv = {}): Promise<T> {
  const { stdout } = await promisify(execFile)(cmd, args, { env: { ...process.env, ...env }, maxBuffer: 1 << 24, timeout: 3_600_000 });
  return JSON.parse(stdout.trim().split('\n').pop()!) as T;
}

const gb = (b: number) => `${(b / 2 ** 30).toFixed(2)} GiB`;

async function main(): Promise<void> {
  const { values, positionals } = parseArgs({
    allowPositionals: true,
    options: {
      child: { type: 'boolean', default: false },
      sizes: { type: 'string', default: '1000,4000,8000' },
      dA: { type: 'string', default: '4096' },
      dB: { type: 'string', default: '1024' },
      k: { type: 'string', default: '10' },
      engine: { type: 'string', default: 'cpu' },
      repeats: { type: 'string', default: '1' },
      'no-reference': { type: 'boolean', default: false },
      json: { type: 'string' },
    },
  });
  const k = Number(values.k);
  if (values.child) return child(positionals[0]!, positionals[1]!, k, values.engine!);
  const sizes = values.sizes!.split(',').map(Number);
  const dA = Number(values.dA);
  const dB = Number(values.dB);
  const repeats = Number(values.repeats);
  const threads = os.availableParallelism();
  const python = values['no-reference'] ? null : await findTorchPython();
  if (!values['no-reference'] && !python) throw new Error('no python3 with torch found (apt-get install python3-torch), or pass --no-reference');
  const blasDir = OPENBLAS_DIRS.find((d) => existsSync(join(d, 'libblas.so.3')));
  const pyEnv = blasDir ? { LD_LIBRARY_PATH: [blasDir, process.env.LD_LIBRARY_PATH].filter(Boolean).join(':') } : {};
  const dir = await mkdtemp(join(os.tmpdir(), 'viral-lens-refbench-'));
  const results: Record<string, unknown>[] = [];
  console.log(`CKNNA, k = ${k}, prh preprocessing, dA = ${dA}, dB = ${dB}, ${threads} threads each side (${os.cpus()[0]?.model ?? 'cpu'})`);
  try {
    for (const n of sizes) {
      const { A, B } = synthetic(n, dA, dB, 1234 + n);
      const fa = join(dir, `A-${n}.npy`);
      const fb = join(dir, `B-${n}.npy`);
      await writeNpy(fa, [n, dA], A);
      await writeNpy(fb, [n, dB], B);
      const ours: (SideResult & { tied: number })[] = [];
      const theirs: (SideResult & { blas: string; timings: Record<string, number> })[] = [];
      for (let r = 0; r < repeats; r++) {
        ours.push(await runJson(process.execPath, ['--import', 'tsx', join(here, 'reference.bench.ts'), '--child', '--k', String(k), '--engine', values.engine!, fa, fb]));
        if (python) {
          const p = await runJson<{ value: number; maxrss_bytes: number; blas: string; timings: Record<string, number> }>(
            python,
            [join(here, 'reference', 'cknna_reference.py'), fa, fb, '--k', String(k), '--preprocess', 'prh', '--threads', String(threads)],
            pyEnv,
          );
          theirs.push({ value: p.value, total_s: p.timings.total_s!, peak_rss_bytes: p.maxrss_bytes, detail: '', blas: p.blas, timings: p.timings });
        }
      }
      const o = { value: ours[0]!.value, s: median(ours.map((x) => x.total_s)), rss: Math.max(...ours.map((x) => x.peak_rss_bytes)) };
      const row: Record<string, unknown> = { n, dA, dB, k, ours_value: o.value, ours_s: o.s, ours_peak_rss_bytes: o.rss, ours_engine: ours[0]!.detail, tied_rows: ours[0]!.tied };
      console.log(`\nn = ${n}`);
      console.log(`  ours      ${o.value.toFixed(8)}  ${o.s.toFixed(2)} s  peak RSS ${gb(o.rss)}  (${ours[0]!.detail}; tied rows ${ours[0]!.tied})`);
      if (theirs.length) {
        const t = { value: theirs[0]!.value, s: median(theirs.map((x) => x.total_s)), rss: Math.max(...theirs.map((x) => x.peak_rss_bytes)) };
        const diff = Math.abs(o.value - t.value);
        const tm = theirs[0]!.timings;
        console.log(
          `  reference ${t.value.toFixed(8)}  ${t.s.toFixed(2)} s  peak RSS ${gb(t.rss)}  (gram ${tm.gram_s!.toFixed(2)} s, masks ${tm.masks_s!.toFixed(2)} s, hsic ${tm.hsic_s!.toFixed(2)} s; BLAS ${theirs[0]!.blas})`,
        );
        console.log(`  |Δvalue| = ${diff.toExponential(2)} (${diff <= 2e-5 ? 'equal within 2e-5' : 'DIFFERENT beyond 2e-5'}), speed-up ${(t.s / o.s).toFixed(1)}×, memory ${(t.rss / o.rss).toFixed(1)}× less`);
        Object.assign(row, { reference_value: t.value, reference_s: t.s, reference_peak_rss_bytes: t.rss, reference_blas: theirs[0]!.blas, reference_timings: tm, abs_diff: diff, speedup: t.s / o.s });
      }
      results.push(row);
      await rm(fa);
      await rm(fb);
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
  if (values.json) writeFileSync(values.json, JSON.stringify(results, null, 2) + '\n');
}

await main();
