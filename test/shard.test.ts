import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { runLayerwise, type LayerwiseRow } from '../analysis/layerwise.js';
import { mergeShards, parseShard, planJobs, readShardFile, shardJobs, type MergedSweep, type ShardFile } from '../analysis/shard.js';
import { createEngine } from '../src/engine/index.js';
import { InputError } from '../src/core/errors.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const fixture = join(root, 'fixtures', 'capture-small');
let dir = '';
let capA = '';
let capB = '';
const N = 3;
const parts: string[] = [];

async function cli(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await promisify(execFile)(process.execPath, ['--import', 'tsx', join(root, 'cli', 'main.ts'), ...args], { cwd: root, timeout: 120_000 });
    return { code: 0, stdout, stderr };
  } catch (e) {
    const err = e as { code: number; stdout: string; stderr: string };
    return { code: err.code, stdout: err.stdout, stderr: err.stderr };
  }
}

const sweepArgs = ['--engine', 'cpu', '--metric', 'cknna,cka', '--topk', '5', '--quiet'];

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'viral-lens-shard-'));
  // Two checkpoints of one run: the fixture twice (5 layers each → 10 jobs).
  capA = join(dir, 'runs', 'step-100');
  capB = join(dir, 'runs', 'step-200');
  await cp(fixture, capA, { recursive: true });
  await cp(fixture, capB, { recursive: true });
  for (let i = 0; i < N; i++) {
    const out = join(dir, `part-${i}.json`);
    // Arguments in reverse order on purpose: the plan must not depend on the shell's order.
    const r = await cli('layerwise', capB, capA, '--shard', `${i}/${N}`, ...sweepArgs, '--out', out);
    assert.equal(r.code, 0, r.stderr);
    parts.push(out);
  }
});

after(async () => {
  if (dir) await rm(dir, { recursive: true, force: true });
});

test('parseShard accepts I/N with 0 ≤ I < N and rejects the rest', () => {
  assert.deepEqual(parseShard('3/16'), { index: 3, count: 16 });
  assert.deepEqual(parseShard('0/1'), { index: 0, count: 1 });
  for (const bad of ['16/16', '1/0', '-1/4', '1/4/2', 'a/b', '3']) assert.throws(() => parseShard(bad), InputError, bad);
});

test('shardJobs: every job in exactly one shard, contiguous, sizes within one, for many J and N', () => {
  for (let J = 0; J <= 40; J++) {
    const jobs = Array.from({ length: J }, (_, i) => i);
    for (let n = 1; n <= 12; n++) {
      const shards = Array.from({ length: n }, (_, i) => shardJobs(jobs, { index: i, count: n }));
      assert.deepEqual(shards.flat(), jobs, `J=${J} N=${n}`);
      const sizes = shards.map((s) => s.length);
      assert.ok(Math.max(...sizes) - Math.min(...sizes) <= 1, `J=${J} N=${n} sizes ${sizes}`);
    }
  }
});

test('planJobs sorts captures, keeps layer order, selects layers and rejects a capture given twice', async () => {
  const plan = await planJobs([capB, capA]);
  assert.equal(plan.length, 10);
  assert.deepEqual([...new Set(plan.map((j) => j.capture))], [capA, capB]);
  const some = await planJobs([capA], ['2', 'embed']);
  assert.equal(some.length, 2);
  assert.equal(some[1]!.layer, 'embed');
  await assert.rejects(planJobs([capA, capA]), /given twice/);
  await assert.rejects(planJobs([capA], ['nope']), /no layer 'nope'/);
});

test('the merged shards equal the unsharded sweep, row for row, with the full parameter set', async () => {
  const out = join(dir, 'merged.json');
  const r = await cli('merge', out, ...parts.slice().reverse());
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, /merged 3 shard\(s\): 10 job\(s\), 40 row\(s\)/);
  const merged = JSON.parse(await readFile(out, 'utf8')) as MergedSweep;
  assert.equal(merged.total_jobs, 10);
  assert.deepEqual(merged.shards.map((s) => s.index), [0, 1, 2]);
  assert.deepEqual(merged.params.metrics, ['cknna', 'cka']);
  assert.equal(merged.params.k, 5);
  assert.equal(merged.params.engine, 'cpu');
  const engine = await createEngine('cpu');
  try {
    const direct: LayerwiseRow[] = [];
    for (const cap of [capA, capB]) {
      direct.push(...(await runLayerwise(cap, { engine, metrics: ['cknna', 'cka'], k: 5, preprocess: 'prh', tokenMode: 'mean', seed: 0 })));
    }
    assert.equal(merged.rows.length, direct.length);
    for (const [i, row] of merged.rows.entries()) {
      const expected = direct[i]!;
      assert.deepEqual([row.capture, row.layer, row.target, row.metric], [expected.capture, expected.layer, expected.target, expected.metric], `row ${i}`);
      assert.equal(row.value, expected.value, `row ${i} value`);
    }
  } finally {
    await engine.dispose();
  }
  const csv = join(dir, 'merged.csv');
  assert.equal((await cli('merge', csv, ...parts)).code, 0);
  const lines = (await readFile(csv, 'utf8')).trim().split('\n');
  assert.equal(lines.length, 41);
  assert.match(lines[0]!, /metric,value/);
});

async function load(): Promise<{ file: string; doc: ShardFile }[]> {
  return (await Promise.all(parts.map(readShardFile))) as { file: string; doc: ShardFile }[];
}

test('merge rejects a shard given twice, naming both files', async () => {
  const docs = await load();
  const copy = join(dir, 'copy-of-1.json');
  await writeFile(copy, JSON.stringify(docs[1]!.doc));
  assert.throws(() => mergeShards([...docs, { file: copy, doc: docs[1]!.doc }]), (e: Error) => e instanceof InputError && /shard 1\/3 given twice/.test(e.message) && e.message.includes(parts[1]!) && e.message.includes(copy));
  const r = await cli('merge', join(dir, 'x.json'), ...parts, copy);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /given twice/);
});

test('merge rejects missing shards, naming them and their jobs', async () => {
  const docs = await load();
  assert.throws(() => mergeShards([docs[0]!, docs[2]!]), (e: Error) => /missing shard\(s\) 1 of 3: \d+ job\(s\) without results \(.*step-1/.test(e.message));
});

test('merge rejects shards run with different parameters, naming the parameter and the file', async () => {
  const odd = join(dir, 'odd-k.json');
  const r = await cli('layerwise', capA, capB, '--shard', '2/3', ...sweepArgs.map((a) => (a === '5' ? '7' : a)), '--out', odd);
  assert.equal(r.code, 0, r.stderr);
  const docs = await load();
  const oddDoc = await readShardFile(odd);
  assert.throws(() => mergeShards([docs[0]!, docs[1]!, oddDoc]), (e: Error) => /parameter 'k' = 7 differs/.test(e.message) && e.message.startsWith(odd));
});

test('merge rejects shards of another plan, a foreign job and missing or duplicated rows', async () => {
  const docs = await load();
  const other = join(dir, 'other-plan.json');
  assert.equal((await cli('layerwise', capA, '--shard', '2/3', ...sweepArgs, '--out', other)).code, 0);
  const otherDoc = await readShardFile(other);
  assert.throws(() => mergeShards([docs[0]!, docs[1]!, otherDoc]), /shards of different sweeps/);

  const clone = () => JSON.parse(JSON.stringify(docs[2]!.doc)) as ShardFile;
  const noRows = clone();
  const lost = noRows.jobs[0]!;
  noRows.rows = noRows.rows.filter((r) => !(r.capture === lost.capture && r.layer === lost.layer));
  assert.throws(() => mergeShards([docs[0]!, docs[1]!, { file: 'tampered.json', doc: noRows }]), /tampered\.json: no rows for job/);

  const dupRows = clone();
  dupRows.rows.push(dupRows.rows[0]!);
  assert.throws(() => mergeShards([docs[0]!, docs[1]!, { file: 'dup.json', doc: dupRows }]), /dup\.json: rows\[\d+\] duplicates/);

  const stolen = clone();
  stolen.jobs.push(docs[0]!.doc.jobs[0]!);
  assert.throws(() => mergeShards([docs[0]!, docs[1]!, { file: 'stolen.json', doc: stolen }]), /stolen\.json: holds jobs that shard 2\/3 does not own/);

  const edited = clone();
  edited.plan.jobs.pop();
  assert.throws(() => mergeShards([docs[0]!, docs[1]!, { file: 'edited.json', doc: edited }]), /edited\.json: field 'plan' is inconsistent/);

  assert.throws(() => mergeShards([{ file: 'rows.json', doc: { rows: [] } }]), /rows\.json: not a viral-lens sweep shard/);
});
