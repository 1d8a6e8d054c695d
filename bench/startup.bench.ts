/**
 * CLI start-up: the compiled entry (bin/viral-lens.mjs → dist/, built by `npm run build` / `prepare`) against the
 * tsx path (`node --import tsx cli/main.ts`, which compiles the TypeScript on every call), side by side in one run.
 *
 *   node                : `node -e 0`, the floor every variant pays
 *   --help              : `viral-lens --help`
 *   compare (cpu)       : `viral-lens compare A.npy B.npy --metric cknna --preprocess l2 --engine cpu --json`, n = 1000
 *   compare (auto)      : the same with the default `--engine auto` (includes auto's engine probe)
 *
 * Every call is a fresh process; variants are interleaved round-robin so machine load hits them alike. Each compare
 * call reports its own split (VIRAL_LENS_TIMING=1, cli/main.ts): node's start until main, module loading, and the
 * command's run (reading the files, starting the engine, the metric), so overhead = wall − run.
 *
 * Usage: node --import tsx bench/startup.bench.ts [--runs 7] [--n 1000] [--json out.json]
 */
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import os from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs, promisify } from 'node:util';
import { mulberry32 } from '../src/core/rng.js';
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

interface Call {
  wall: number;
  /** The child's own split (seconds), when it printed one. */
  start?: number;
  load?: number;
  run?: number;
}

/** One fresh process; fails loudly on a non-zero exit or a fallback to tsx. */
async function call(args: string[]): Promise<Call> {
  const t = performance.now();
  const { stderr } = await promisify(execFile)(process.execPath, args, { cwd: root, maxBuffer: 1 << 24, env: { ...process.env, VIRAL_LENS_TIMING: '1' } });
  const wall = (performance.now() - t) / 1000;
  if (/running the TypeScript sources through tsx/.test(stderr)) throw new Error(`bin/viral-lens.mjs fell back to tsx (${stderr.trim()}); run npm run build first`);
  const m = /viral-lens timing: start ([\d.]+) ms, load ([\d.]+) ms, run ([\d.]+) ms/.exec(stderr);
  return m ? { wall, start: Number(m[1]) / 1000, load: Number(m[2]) / 1000, run: Number(m[3]) / 1000 } : { wall };
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
  const calls = new Map<string, Call[]>();
  const add = (k: string, c: Call) => calls.set(k, [...(calls.get(k) ?? []), c]);
  await call([bin, '--help']); // refuses to measure a stale or missing build
  for (let r = 0; r < runs; r++) {
    for (const c of cases) {
      add(`${c.name}|dist`, await call(c.dist));
      if (c.tsx) add(`${c.name}|tsx`, await call(c.tsx));
    }
  }

  const med = (k: string, f: (c: Call) => number | undefined) => {
    const xs = (calls.get(k) ?? []).map(f).filter((x): x is number => x !== undefined);
    return xs.length ? median(xs) : undefined;
  };
  const nodeFloor = med('node -e 0|dist', (c) => c.wall)!;
  const rows = cases.flatMap((c) =>
    (c.tsx ? (['dist', 'tsx'] as const) : (['dist'] as const)).map((path) => {
      const k = `${c.name}|${path}`;
      const wall = med(k, (x) => x.wall)!;
      const run = med(k, (x) => x.run);
      return {
        case: c.name,
        path: c.tsx ? (path === 'dist' ? 'compiled (bin → dist/)' : 'tsx (node --import tsx cli/main.ts)') : 'node',
        wall_s: wall,
        wall_min_s: Math.min(...calls.get(k)!.map((x) => x.wall)),
        start_s: med(k, (x) => x.start),
        load_s: med(k, (x) => x.load),
        run_s: run,
        overhead_s: run === undefined ? undefined : med(k, (x) => (x.run === undefined ? undefined : x.wall - x.run)),
        tsx_over_dist: path === 'tsx' ? wall / med(`${c.name}|dist`, (x) => x.wall)! : undefined,
      };
    }),
  );
  const f = (x: number | undefined, digits = 2) => (x === undefined ? '—' : x.toFixed(digits));
  const version = (JSON.parse(readFileSync(join(root, 'package.json'), 'utf8')) as { version: string }).version;
  const load = os.loadavg().map((x) => x.toFixed(1)).join(' ');
  process.stdout.write(
    `viral-lens ${version} CLI start-up, median of ${runs} fresh processes per cell (interleaved), Node ${process.version}, ` +
      `${os.cpus().length} cores, load average ${load}; node's own start (node -e 0) = ${f(nodeFloor)} s (fastest ${f(Math.min(...calls.get('node -e 0|dist')!.map((x) => x.wall)))} s)\n\n` +
      '| call | entry | wall s (min) | node start s | module load s | run s | overhead (wall − run) s | tsx / compiled |\n|---|---|---|---|---|---|---|---|\n' +
      rows
        .map((r) => `| ${r.case} | ${r.path} | ${f(r.wall_s)} (${f(r.wall_min_s)}) | ${f(r.start_s)} | ${f(r.load_s)} | ${f(r.run_s)} | ${f(r.overhead_s)} | ${r.tsx_over_dist === undefined ? '' : `${r.tsx_over_dist.toFixed(1)}×`} |`)
        .join('\n') +
      '\n\nwall = median (fastest in brackets: the least disturbed by other load); run = the command itself (read files, start the engine, compute), reported by the child; node start = until main().\n',
  );
  if (values.json) await writeFile(values.json, JSON.stringify({ runs, n, node: process.version, loadavg: os.loadavg(), node_floor_s: nodeFloor, rows, raw: Object.fromEntries(calls) }, null, 2) + '\n');
} finally {
  await rm(dir, { recursive: true, force: true });
}
