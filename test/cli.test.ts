import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { cp, mkdir, mkdtemp, readFile, rm, symlink, truncate, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { writeNpy } from '../src/store/npy.js';
import { writeSafetensors } from '../src/store/safetensors.js';
import { goldenInputs } from './helpers.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const golden = JSON.parse(await readFile(join(root, 'fixtures', 'golden', 'golden.json'), 'utf8'));
const fixture = join(root, 'fixtures', 'capture-small');
let dir = '';

async function cli(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await promisify(execFile)(process.execPath, ['--import', 'tsx', join(root, 'cli', 'main.ts'), ...args], { cwd: root });
    return { code: 0, stdout, stderr };
  } catch (e) {
    const err = e as { code: number; stdout: string; stderr: string };
    return { code: err.code, stdout: err.stdout, stderr: err.stderr };
  }
}

/** The installed entry point (bin/viral-lens.mjs, as `npx viral-lens` runs it) from a given root. */
async function bin(binPath: string, env: NodeJS.ProcessEnv, ...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await promisify(execFile)(process.execPath, [binPath, ...args], { cwd: root, env: { ...process.env, ...env } });
    return { code: 0, stdout, stderr };
  } catch (e) {
    const err = e as { code: number; stdout: string; stderr: string };
    return { code: err.code, stdout: err.stdout, stderr: err.stderr };
  }
}

const FALLBACK_NOTE = /running the TypeScript sources through tsx/;

/** A bad-input run: exit 2, one line on stderr naming `what`, no stack trace, nothing on stdout. */
async function rejects(args: string[], what: RegExp) {
  const r = await cli(...args);
  assert.equal(r.code, 2, `exit code for ${args.join(' ')}: ${r.stderr}`);
  assert.match(r.stderr, what);
  assert.equal(r.stderr.trim().split('\n').length, 1, `one line: ${r.stderr}`);
  assert.doesNotMatch(r.stderr, /\n\s+at /);
  assert.equal(r.stdout, '');
}

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'viral-lens-cli-'));
  const c = golden.cases[0];
  const { A, B } = goldenInputs(c.n, c.dA, c.dB);
  await writeNpy(join(dir, 'A.npy'), [c.n, c.dA], A.data);
  await writeNpy(join(dir, 'B.npy'), [c.n, c.dB], B.data);
  await writeSafetensors(join(dir, 'AB.safetensors'), [
    { name: 'a', dtype: 'F64', shape: [c.n, c.dA], data: A.data },
    { name: 'b', dtype: 'F64', shape: [c.n, c.dB], data: B.data },
  ]);
  await writeNpy(join(dir, 'short.npy'), [c.n - 1, c.dB], B.data.subarray(0, (c.n - 1) * c.dB));
  const withNaN = Float64Array.from(B.data);
  withNaN[17 * c.dB + 3] = NaN;
  await writeNpy(join(dir, 'nan.npy'), [c.n, c.dB], withNaN);
  await writeNpy(join(dir, 'tiny.npy'), [3, 4], new Float64Array(12).fill(1));
  await writeNpy(join(dir, 'trunc.npy'), [c.n, c.dB], B.data);
  await truncate(join(dir, 'trunc.npy'), 500);
});
after(() => rm(dir, { recursive: true, force: true }));

test('compare prints one JSON object matching the golden values (ref ≤ 1e-9, auto ≤ 2e-5)', async () => {
  const e = golden.cases[0].expected;
  const A = join(dir, 'A.npy');
  const B = join(dir, 'B.npy');
  const ref = await cli('compare', A, B, '--metric', 'cknna', '--preprocess', 'l2', '--engine', 'ref', '--json');
  assert.equal(ref.code, 0, ref.stderr);
  const r = JSON.parse(ref.stdout);
  assert.equal(r.metric, 'cknna');
  assert.equal(r.n, 64);
  assert.equal(r.k, 10);
  assert.equal(r.engine, 'ref');
  assert.equal(r.preprocess, 'l2');
  assert.ok(Math.abs(r.value - e['cknna(A,B,k)']) <= 1e-9, `${r.value}`);
  const auto = JSON.parse((await cli('compare', B, A, '--metric', 'cknna', '--preprocess', 'l2', '--json')).stdout);
  assert.equal(auto.engine, 'cpu');
  assert.ok(Math.abs(auto.value - e['cknna(B,A,k)']) <= 2e-5);
  const kAll = JSON.parse((await cli('compare', A, B, '--metric', 'cknna', '--topk', '63', '--preprocess', 'l2', '--json')).stdout);
  assert.ok(Math.abs(kAll.value - e['cknna(A,B,k=n-1)']) <= 2e-5);
  const cka = JSON.parse((await cli('compare', A, B, '--metric', 'cka', '--preprocess', 'l2', '--json')).stdout);
  assert.equal(cka.k, null, 'k is ignored by metrics without neighbours');
  assert.ok(Math.abs(cka.value - e['cka(A,B) biased, inner-product kernel']) <= 2e-5);
});

test('compare reads safetensors tensors by key and refuses an ambiguous file without one', async () => {
  const f = join(dir, 'AB.safetensors');
  const r = await cli('compare', f, f, '--key-a', 'a', '--key-b', 'b', '--metric', 'mutual_knn', '--preprocess', 'l2', '--json');
  assert.equal(r.code, 0, r.stderr);
  assert.ok(Math.abs(JSON.parse(r.stdout).value - golden.cases[0].expected['mutual_knn(A,B,k)']) < 1e-6);
  await rejects(['compare', f, f, '--metric', 'cka', '--preprocess', 'l2'], /AB\.safetensors.*\ba\b.*\bb\b/);
});

test('bad input: one-line errors naming the file/field/row, exit 2', async () => {
  const A = join(dir, 'A.npy');
  await rejects(['compare', A, join(dir, 'short.npy'), '--metric', 'cknna', '--preprocess', 'l2'], /64 rows.*63/);
  await rejects(['compare', A, join(dir, 'nan.npy'), '--metric', 'cknna', '--preprocess', 'l2'], /nan\.npy.*row 17/);
  await rejects(['compare', A, A, '--metric', 'cknna', '--topk', '1', '--preprocess', 'l2'], /k must be an integer ≥ 2/);
  await rejects(['compare', A, A, '--metric', 'cknna', '--topk', '64', '--preprocess', 'l2'], /k = 64.*n = 64/);
  await rejects(['compare', join(dir, 'tiny.npy'), join(dir, 'tiny.npy'), '--metric', 'cka', '--preprocess', 'none'], /n = 3/);
  await rejects(['compare', A, A, '--metric', 'cknnaa', '--preprocess', 'l2'], /unknown metric 'cknnaa'/);
  await rejects(['compare', A, A, '--metric', 'cknna'], /--preprocess is required/);
  await rejects(['compare', A, join(dir, 'trunc.npy'), '--metric', 'cknna', '--preprocess', 'l2'], /trunc\.npy/);
  await rejects(['compare', A, join(dir, 'missing.npy'), '--metric', 'cknna', '--preprocess', 'l2'], /missing\.npy/);
  await rejects(['compare', A, A, '--metric', 'cknna', '--preprocess', 'l2', '--engine', 'tpu'], /unknown engine 'tpu'/);
  await rejects(['frobnicate'], /unknown command 'frobnicate'|frobnicate/);
});

test('layerwise: every row says how it was computed; JSON and CSV; target files; bad targets', async () => {
  const r = await cli('layerwise', fixture, '--metric', 'cknna,mutual_knn', '--tokens', 'per-token', '--preprocess', 'prh', '--json', '--quiet');
  assert.equal(r.code, 0, r.stderr);
  const rows = JSON.parse(r.stdout);
  assert.equal(rows.length, 5 * 2 * 2, '5 layers × 2 targets × 2 metrics');
  for (const row of rows) {
    for (const key of ['metric', 'value', 'k', 'preprocess', 'token_mode', 'engine', 'n', 'layer', 'layer_index', 'target', 'variant']) {
      assert.ok(key in row, `row lacks ${key}`);
    }
    assert.equal(row.n, 40 * 4, 'per-token: samples × tokens rows');
    assert.equal(row.preprocess, 'prh(q=0.95)');
  }
  const csv = await cli('layerwise', fixture, '--target', 'clip', '--tokens', 'mean', '--csv', '--quiet');
  const lines = csv.stdout.trim().split('\n');
  assert.equal(lines.length, 1 + 5);
  assert.match(lines[0]!, /metric.*value.*n.*k/);
  await rejects(['layerwise', fixture, '--target', 'siglip', '--quiet'], /no target 'siglip'.*clip, dinov2/);
  await rejects(['layerwise', fixture, '--layers', '9', '--quiet'], /no layer '9'/);
  await rejects(['layerwise', fixture, '--target', `x=${join(dir, 'A.npy')}`, '--quiet'], /64 samples.*40/);
});

test('info describes npy, safetensors and captures; validate reports every problem', async () => {
  assert.match((await cli('info', join(dir, 'A.npy'))).stdout, /npy v1\.0.*\n[\s\S]*<f8|float64|f8/);
  assert.match((await cli('info', join(dir, 'AB.safetensors'))).stdout, /\ba\b.*F64.*\[64, 32\]/);
  const info = JSON.parse((await cli('info', fixture, '--json')).stdout);
  assert.equal(info.format, 'capture');
  assert.equal(info.layers.length, 5);
  assert.equal((await cli('validate', fixture)).code, 0);
  const broken = join(dir, 'broken');
  await cp(fixture, broken, { recursive: true });
  const m = JSON.parse(await readFile(join(broken, 'manifest.json'), 'utf8'));
  await rm(join(broken, m.layers[2].shards[0].file));
  m.labels[Object.keys(m.labels)[0]!].pop();
  await writeFile(join(broken, 'manifest.json'), JSON.stringify(m));
  const v = await cli('validate', broken);
  assert.equal(v.code, 1);
  assert.match(v.stdout, /INVALID/);
  assert.ok(v.stdout.split('\n').filter((l) => l.startsWith('  - ')).length >= 2, v.stdout);
});

test('bin/viral-lens.mjs runs the compiled build (npm install / npm ci build dist/) and answers exactly as the sources do', async (t) => {
  const A = join(dir, 'A.npy');
  const B = join(dir, 'B.npy');
  const args = ['compare', A, B, '--metric', 'cknna', '--preprocess', 'l2', '--engine', 'ref', '--json'];
  const compiled = await bin(join(root, 'bin', 'viral-lens.mjs'), { VIRAL_LENS_TSX: '' }, ...args);
  const sources = await bin(join(root, 'bin', 'viral-lens.mjs'), { VIRAL_LENS_TSX: '1' }, ...args);
  assert.equal(compiled.code, 0, compiled.stderr);
  assert.equal(sources.code, 0, sources.stderr);
  // A = 64 samples at k = 10 is below the n ≥ 10·k rule, so both builds print the CKNNA small-n warning; nothing else.
  const notes = (stderr: string) => stderr.split('\n').filter((l) => l !== '' && !l.startsWith('warning: CKNNA at small n'));
  assert.match(sources.stderr, /^warning: CKNNA at small n = 64 for k = 10/);
  assert.deepEqual(notes(sources.stderr), [], 'VIRAL_LENS_TSX=1 runs the sources without a note');
  assert.ok(Math.abs(JSON.parse(compiled.stdout).value - golden.cases[0].expected['cknna(A,B,k)']) <= 1e-9);
  assert.equal(compiled.stdout, sources.stdout, 'the compiled build and the sources print the same bytes');
  if (FALLBACK_NOTE.test(compiled.stderr)) {
    // An edited checkout: the note is the designed behaviour, but then this run did not exercise dist/.
    if (process.env.CI === 'true') assert.fail(`under CI, npm ci must have built dist/ (prepare): ${compiled.stderr.trim()}`);
    t.skip(`dist/ is missing or stale here (${compiled.stderr.trim()}); npm run build refreshes it`);
    return;
  }
  assert.equal(compiled.stderr, sources.stderr);
  const help = await bin(join(root, 'bin', 'viral-lens.mjs'), {}, '--help');
  assert.equal(help.code, 0);
  assert.match(help.stdout, /^viral-lens — .*\n\nusage: viral-lens <command>/);
});

test('bin/viral-lens.mjs without dist/ says so in one line and still answers through tsx', async () => {
  // A copy of the entry point in a root whose sources are links to ours and which has no dist/.
  const fake = join(dir, 'no-dist');
  await mkdir(join(fake, 'bin'), { recursive: true });
  await cp(join(root, 'bin', 'viral-lens.mjs'), join(fake, 'bin', 'viral-lens.mjs'));
  for (const d of ['src', 'analysis', 'server', 'cli', 'node_modules', 'package.json']) await symlink(join(root, d), join(fake, d));
  const r = await bin(join(fake, 'bin', 'viral-lens.mjs'), { VIRAL_LENS_TSX: '' }, 'compare', join(dir, 'A.npy'), join(dir, 'B.npy'), '--metric', 'cknna', '--preprocess', 'l2', '--engine', 'ref', '--json');
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, /^viral-lens: dist\/ is missing; running the TypeScript sources through tsx .*npm run build/);
  // The fallback note, then the CKNNA small-n warning (A has 64 samples, k = 10): the note is one line.
  assert.deepEqual(r.stderr.trim().split('\n').filter((l) => !l.startsWith('warning: CKNNA at small n')).length, 1, r.stderr);
  assert.ok(Math.abs(JSON.parse(r.stdout).value - golden.cases[0].expected['cknna(A,B,k)']) <= 1e-9);
});
