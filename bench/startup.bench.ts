/**
 * CLI start-up: the compiled entry (bin/viral-lens.mjs → dist/, built by `npm run build` / `prepare`) against the
 * tsx path (`node --import tsx cli/main.ts`, which compiles the TypeScript on every call), side by side in one run.
 *
 *   node                : `node -e 0`, the floor every variant pays
 *   --help              : `viral-lens --help`
 *   compare (cpu)       : `viral-lens compare A.npy B.npy --metric cknna --preprocess l2 --engine cpu --json`, n = 1000
 *   compare (auto)      : the same with the default `--engine auto` (includes auto's engine probe)
 *
 * Every call is a fresh process; variants are interleaved round-robin so machine load hits them alike. The compare
 * "work" is the same call made in this process after a warm-up (modules loaded, files cached), so
 * overhead = median wall of the fresh process − median in-process time: node's own start, module loading and exit.
 *
 * Usage: node --import tsx bench/startup.bench.ts [--runs 7] [--n 1000] [--json out.json]
 */
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { parseArgs, promisify } from 'node:util';
import { mulberry32 } from '../src/stats/rng.js';
import { writeNpy } from '../src/store/npy.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const { values } = parseArgs({ options: { runs: { type: 'string', default: '7' }, n: { type: 'string', default: '1000' }, json: { type: 'string' } } });
const runs = Number(values.runs);
const n = Number(values.n);
if (!Number.isInteger(runs) || runs < 1 || !Number.isInteger(n) || n < 20) {
  process.stderr.write('startup.bench: --runs must be an integer ≥ 1 and --n an integer ≥ 20\n');
  process.exit(2);
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
};

/** Wall seconds of one fresh process; fails loudly on a non-zero exit or a fallback to tsx. */
async function wall(args: string[]): Promise<number> {
  const t = performance.now();
  const { stderr } = await promisify(execFile)(process.execPath, args, { cwd: root, maxBuffer: 1 << 24 });
  const s = (performance.now() - t) / 1000;
  if (/running the TypeScript sources through tsx/.test(stderr)) throw new Error(`bin/viral-lens.mjs fell back to tsx (${stderr.trim()}); run npm run build first`);
  return s;
}

const dir = await mkdtemp(join(os.tmpdir(), 'viral-lens-startup-'));
try {
  const dA = 256;
  const dB = 128;
  const rand = mulberry32(7);
  const A = Float64Array.from({ length: n * dA }, () => rand() - 0.5);
  const B = Float64Array.from({ length: n * dB }, (_, i) => A[Math.floor(i / dB) * dA + (i % dB)]! + 0.5 * (rand() - 0.5));
  await writeNpy(join(dir, 'A.npy'), [n, dA], A);
  await writeNpy(join(dir, 'B.npy'), [n, dB], B);
  const compare = ['compare', join(dir, 'A.npy'), join(dir, 'B.npy'), '--metric', 'cknna', '--preprocess', 'l2', '--json'];
  const bin = join(root, 'bin', 'viral-lens.mjs');
  const tsx = ['--import', 'tsx', join(root, 'cli', 'main.ts')];

  const cases: { name: string; dist: string[]; tsx?: string[] }[] = [
    { name: 'node -e 0', dist: ['-e', '0'] },
    { name: '--help', dist: [bin, '--help'], tsx: [...tsx, '--help'] },
    { name: `compare n=${n} (cpu)`, dist: [bin, ...compare, '--engine', 'cpu'], tsx: [...tsx, ...compare, '--engine', 'cpu'] },
    { name: `compare n=${n} (auto)`, dist: [bin, ...compare], tsx: [...tsx, ...compare] },
  ];
  const times = new Map<string, number[]>();
  const add = (k: string, s: number) => times.set(k, [...(times.get(k) ?? []), s]);
  await wall([bin, '--help']); // refuses to measure a stale or missing build
  for (let r = 0; r < runs; r++) {
    for (const c of cases) {
      add(`${c.name}|dist`, await wall(c.dist));
      if (c.tsx) add(`${c.name}|tsx`, await wall(c.tsx));
    }
  }

  // The work: the same compare calls in this process (compiled modules, warmed up once), stdout discarded.
  const { main } = (await import(pathToFileURL(join(root, 'dist', 'cli', 'main.js')).href)) as { main: (argv: string[]) => Promise<number> };
  const inProcess = async (argv: string[]) => {
    const write = process.stdout.write;
    process.stdout.write = (() => true) as typeof process.stdout.write;
    try {
      const t = performance.now();
      const code = await main(argv);
      if (code !== 0) throw new Error(`in-process ${argv.join(' ')} exited ${code}`);
      return (performance.now() - t) / 1000;
    } finally {
      process.stdout.write = write;
    }
  };
  const work = new Map<string, number>();
  for (const [name, argv] of [[cases[2]!.name, [...compare, '--engine', 'cpu']], [cases[3]!.name, compare]] as const) {
    await inProcess([...argv]);
    const xs: number[] = [];
    for (let r = 0; r < runs; r++) xs.push(await inProcess([...argv]));
    work.set(name, median(xs));
  }

  const nodeFloor = median(times.get('node -e 0|dist')!);
  const rows = cases.map((c) => {
    const d = median(times.get(`${c.name}|dist`)!);
    const t = c.tsx ? median(times.get(`${c.name}|tsx`)!) : undefined;
    const w = work.get(c.name);
    return { case: c.name, dist_s: d, tsx_s: t, speedup: t === undefined ? undefined : t / d, work_s: w, overhead_dist_s: w === undefined ? undefined : d - w, overhead_tsx_s: w === undefined || t === undefined ? undefined : t - w };
  });
  const f = (x: number | undefined, digits = 2) => (x === undefined ? '—' : x.toFixed(digits));
  const version = (JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { version: string }).version;
  const load = os.loadavg().map((x) => x.toFixed(1)).join(' ');
  process.stdout.write(
    `viral-lens ${version} CLI start-up, median of ${runs} fresh processes per cell (interleaved), Node ${process.version}, ` +
      `${os.cpus().length} cores, load average ${load}; node's own start (node -e 0) = ${f(nodeFloor)} s\n\n` +
      '| call | compiled (dist) s | tsx s | tsx / dist | work s | overhead dist s | overhead tsx s |\n|---|---|---|---|---|---|---|\n' +
      rows.map((r) => `| ${r.case} | ${f(r.dist_s)} | ${f(r.tsx_s)} | ${r.speedup === undefined ? '—' : `${r.speedup.toFixed(1)}×`} | ${f(r.work_s)} | ${f(r.overhead_dist_s)} | ${f(r.overhead_tsx_s)} |`).join('\n') +
      '\n\nwork = the same call in-process after a warm-up; overhead = wall − work (node start + module loading + exit).\n',
  );
  if (values.json) await writeFile(values.json, JSON.stringify({ runs, n, node: process.version, loadavg: os.loadavg(), node_floor_s: nodeFloor, rows, raw: Object.fromEntries(times) }, null, 2) + '\n');
} finally {
  await rm(dir, { recursive: true, force: true });
}
