/**
 * `viral-lens layerwise RUN_DIR` and `layerwise CAPTURE…`: checkpoints side by side in one command. The numbers must
 * be the dashboard's (the same run through the checkpoints page's JSON export, two captures through the layerwise
 * page's), a target identical across steps must have its kNN computed once (counted on the engine),
 * and a folder that is not a run gets a one-line error.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { cp, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { runCheckpoints } from '../analysis/layerwise.js';
import { buildApp, type Dashboard } from '../server/app.js';
import { createEngine } from '../src/engine/index.js';
import type { Engine } from '../src/engine/index.js';
import { writeFixtureCapture } from './server-fixture.js';

const repo = dirname(dirname(fileURLToPath(import.meta.url)));
let root = '';
let d: Dashboard;

async function cli(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await promisify(execFile)(process.execPath, ['--import', 'tsx', join(repo, 'cli', 'main.ts'), ...args], { cwd: repo, maxBuffer: 16 << 20 });
    return { code: 0, stdout, stderr };
  } catch (e) {
    const err = e as { code: number; stdout: string; stderr: string };
    return { code: err.code, stdout: err.stdout, stderr: err.stderr };
  }
}

async function rejects(args: string[], what: RegExp) {
  const r = await cli(...args);
  assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
  assert.match(r.stderr, what);
  assert.equal(r.stderr.trim().split('\n').length, 1, `one line: ${r.stderr}`);
  assert.doesNotMatch(r.stderr, /\n\s+at /);
  assert.equal(r.stdout, '');
}

interface Row {
  checkpoint: string;
  step: number | null;
  target: string;
  layer_index: number;
  value: number;
  metric: string;
  k: number;
}

before(async () => {
  root = await mkdtemp(join(tmpdir(), 'vl-ckpt-'));
  for (const step of [100, 200]) {
    await writeFixtureCapture(join(root, 'viral', `step-${step}`), 'viral', step);
    await writeFixtureCapture(join(root, 'baseline', `step-${step}`), 'baseline', step);
  }
  d = await buildApp({ runsDir: root, engine: 'ref', workers: 1, cacheDir: null, pollMs: 100000 });
});

after(async () => {
  await d?.close();
  await rm(root, { recursive: true, force: true });
});

test('layerwise RUN_DIR gives the dashboard checkpoints page numbers, step by layer, with --csv FILE and --figure FILE', async () => {
  const csvFile = join(root, 'table.csv');
  const svgFile = join(root, 'fig.svg');
  const r = await cli('layerwise', join(root, 'viral'), '--engine', 'ref', '--quiet', '--csv', csvFile, '--figure', svgFile);
  assert.equal(r.code, 0, r.stderr);
  // The table: layers down, one column per checkpoint, a section per target.
  assert.match(r.stdout, /2 checkpoint\(s\): step-100 \(step 100\), step-200 \(step 200\)/);
  assert.match(r.stdout, /cknna \(k = 10\) vs clip\nidx +layer +step 100 +step 200/);
  assert.match(r.stdout, /n = 40/);
  const rows = JSON.parse((await cli('layerwise', join(root, 'viral'), '--engine', 'ref', '--quiet', '--json')).stdout) as Row[];
  assert.equal(rows.length, 2 * 5 * 2);
  // The CLI's token mode is mean; the dashboard's default is per-token (the demo readout's): ask it for mean.
  const api = await d.app.inject({ url: '/api/export/checkpoints?runs=viral&target=clip&tokens=mean&format=json' });
  assert.equal(api.statusCode, 200, api.body);
  const served = api.json().rows as { step: number; layer_index: number; value: number; k: number; target: string }[];
  assert.equal(served.length, 10);
  for (const s of served) {
    const mine = rows.find((x) => x.target === 'clip' && x.step === s.step && x.layer_index === s.layer_index);
    assert.ok(mine, `step ${s.step} layer ${s.layer_index}`);
    assert.equal(mine.checkpoint, `step-${s.step}`);
    assert.equal(mine.k, s.k);
    assert.ok(Math.abs(mine.value - s.value) < 1e-12, `step ${s.step} ℓ=${s.layer_index}: CLI ${mine.value}, dashboard ${s.value}`);
  }
  // The steps really differ (the comparison is not of one number with itself).
  assert.ok(served.some((s) => Math.abs(s.value - served.find((t) => t.layer_index === s.layer_index && t.step !== s.step)!.value) > 1e-3));
  // n = 40 < 10·k: the small-n CKNNA caveat goes to stderr and into the rows, and into the page's notes.
  assert.match(r.stderr, /warning: CKNNA at small n = 40 for k = 10/);
  assert.ok(api.json().notes.some((n: string) => /CKNNA at small n = 40 for k = 10/.test(n)));
  const csv = (await readFile(csvFile, 'utf8')).trim().split('\n');
  assert.equal(csv.length, 1 + 20);
  assert.ok(csv[0]!.split(',').includes('checkpoint'));
  const svg = await readFile(svgFile, 'utf8');
  assert.match(svg, /^<svg/);
  assert.match(svg, /step 100/);
  assert.match(svg, /step 200/);
});

test('layerwise CAPTURE_A CAPTURE_B puts captures side by side: rows carry checkpoint and step, values as on the dashboard', async () => {
  const r = await cli('layerwise', join(root, 'viral', 'step-200'), join(root, 'baseline', 'step-200'), '--engine', 'ref', '--target', 'clip', '--quiet', '--json');
  assert.equal(r.code, 0, r.stderr);
  const rows = JSON.parse(r.stdout) as Row[];
  assert.deepEqual([...new Set(rows.map((x) => x.checkpoint))], ['viral/step-200', 'baseline/step-200']);
  assert.ok(rows.every((x) => x.step === 200));
  const api = await d.app.inject({ url: '/api/export/layerwise?captures=viral/step-200,baseline/step-200&target=clip&tokens=mean&format=json' });
  assert.equal(api.statusCode, 200, api.body);
  const served = api.json().rows as { variant: string; layer_index: number; value: number }[];
  assert.equal(served.length, 10);
  for (const s of served) {
    const mine = rows.find((x) => x.checkpoint === `${s.variant}/step-200` && x.layer_index === s.layer_index)!;
    assert.ok(Math.abs(mine.value - s.value) < 1e-12, `${s.variant} ℓ=${s.layer_index}`);
  }
  const table = await cli('layerwise', join(root, 'viral', 'step-200'), join(root, 'baseline', 'step-200'), '--engine', 'ref', '--quiet');
  // Two checkpoints at the same step are told apart by their paths.
  assert.match(table.stdout, /idx +layer +viral\/step-200 +baseline\/step-200/);
});

test("a target identical at every step is prepared once: its kNN is computed once for the run, not once per step", async () => {
  const same = join(root, 'frozen');
  await mkdir(same);
  await cp(join(root, 'viral', 'step-100'), join(same, 'step-0'), { recursive: true });
  await cp(join(root, 'viral', 'step-100'), join(same, 'step-10'), { recursive: true });
  const base = await createEngine('ref');
  let calls = 0;
  const counting = new Proxy(base, {
    get(t, p, r) {
      if (p === 'knn') return (...a: Parameters<Engine['knn']>) => (calls++, t.knn(...a));
      return Reflect.get(t, p, r);
    },
  });
  const options = { engine: counting, metrics: ['cknna' as const], k: 5, preprocess: 'prh' as const, tokenMode: 'mean' as const };
  try {
    // 2 steps × 5 layers + 2 targets once (clip, dinov2).
    const frozen = await runCheckpoints([join(same, 'step-0'), join(same, 'step-10')], options);
    assert.equal(calls, 10 + 2);
    assert.deepEqual([frozen.targetCache.prepared, frozen.targetCache.reused], [2, 2]);
    // The fixture's targets carry step-dependent noise: different values, prepared per step.
    calls = 0;
    const moving = await runCheckpoints([join(root, 'viral', 'step-100'), join(root, 'viral', 'step-200')], options);
    assert.equal(calls, 10 + 4);
    assert.equal(moving.targetCache.reused, 0);
    // Sharing changes nothing in the numbers: the same steps twice give identical values per step.
    const byStep = (rows: typeof frozen.rows, cp: string) => rows.filter((x) => x.checkpoint === cp).map((x) => x.value);
    assert.deepEqual(byStep(frozen.rows, 'step-0'), byStep(frozen.rows, 'step-10'));
  } finally {
    await base.dispose();
  }
});

test('not a run: an empty folder, a folder without step-<N> captures, a folder of runs, mismatched samples: one-line errors', async () => {
  const empty = join(root, 'empty');
  await mkdir(empty);
  await rejects(['layerwise', empty], /empty: empty folder; expected a capture directory or a run folder of step-<N>\/ captures/);
  const other = join(root, 'other');
  await mkdir(join(other, 'checkpoint-5'), { recursive: true });
  await writeFile(join(other, 'notes.txt'), 'x');
  await rejects(['layerwise', other], /other: no step-<N>\/ captures with a manifest.json \(folders: checkpoint-5\)/);
  const runsRoot = join(root, 'runs-of-runs');
  await mkdir(runsRoot);
  await cp(join(root, 'viral'), join(runsRoot, 'viral'), { recursive: true });
  await rejects(['layerwise', runsRoot], /no step-<N>\/ captures.*its subfolders viral are runs: pass one of them/);
  await rejects(['layerwise', join(root, 'missing')], /missing: not found/);
  // The same run with one image replaced in the second checkpoint.
  const odd = join(root, 'odd');
  await cp(join(root, 'viral'), odd, { recursive: true });
  const mf = join(odd, 'step-200', 'manifest.json');
  const manifest = JSON.parse(await readFile(mf, 'utf8'));
  manifest.samples.ids[3] = 'img-999';
  await writeFile(mf, JSON.stringify(manifest));
  await rejects(['layerwise', odd, '--quiet'], /step-200: sample 3 is 'img-999', but in .*step-100 it is 'img-003'; checkpoints are compared on the same samples/);
  await rejects(['layerwise', join(root, 'viral'), '--figure', join(root, 'f.gif')], /--figure .*f\.gif: expected a \.svg, \.png or \.pdf file/);
});
