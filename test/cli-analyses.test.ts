/**
 * `viral-lens attention` and `viral-lens shuffle` on a real `npm run demo -- --quick` run built once here: the
 * recomputation from the saved weights must reproduce what the demo recorded while training (attention.json,
 * shuffle.json, and the independently written accuracy.csv), extra seeds extend it, and a run that cannot be
 * recomputed prints its stored file and says why.
 */
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { cp, mkdir, mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { QUICK_SIZE } from '../demo/demo.js';

const root = dirname(dirname(fileURLToPath(import.meta.url)));
let tmp = '';
let run = '';

async function cli(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await promisify(execFile)(process.execPath, ['--import', 'tsx', join(root, 'cli', 'main.ts'), ...args], { cwd: root, maxBuffer: 16 << 20 });
    return { code: 0, stdout, stderr };
  } catch (e) {
    const err = e as { code: number; stdout: string; stderr: string };
    return { code: err.code, stdout: err.stdout, stderr: err.stderr };
  }
}

async function json(...args: string[]) {
  const r = await cli(...args, '--json');
  assert.equal(r.code, 0, r.stderr);
  return JSON.parse(r.stdout);
}

/** Exit 2, one line on stderr matching `what`, nothing on stdout. */
async function rejects(args: string[], what: RegExp) {
  const r = await cli(...args);
  assert.equal(r.code, 2, `${args.join(' ')}: ${r.stderr}`);
  assert.match(r.stderr, what);
  assert.equal(r.stderr.trim().split('\n').length, 1, r.stderr);
  assert.equal(r.stdout, '');
}

/** accuracy.csv of the demo: written from the training-time evaluation, not from shuffle.json. */
async function accuracyCsv(dir: string): Promise<Map<string, Record<string, string>>> {
  const [head, ...lines] = (await readFile(join(dir, 'accuracy.csv'), 'utf8')).trim().split('\n');
  const keys = head!.split(',');
  return new Map(lines.map((l) => {
    const row = Object.fromEntries(l.split(',').map((v, i) => [keys[i]!, v]));
    return [`${row.variant}/${row.question_type}`, row];
  }));
}

before(async () => {
  tmp = await mkdtemp(join(tmpdir(), 'vl-cli-analyses-'));
  run = join(tmp, 'demo');
  await promisify(execFile)('npm', ['run', '-s', 'demo', '--', '--quick', '--out', run, '--quiet'], { cwd: root, maxBuffer: 16 << 20, env: { ...process.env, FORCE_COLOR: '0' } });
});
after(() => rm(tmp, { recursive: true, force: true }));

test('attention: recomputed from the saved weights, equal to the attention.json the demo recorded', { timeout: 120_000 }, async () => {
  const stored = JSON.parse(await readFile(join(run, 'attention.json'), 'utf8'));
  const r = await json('attention', run);
  assert.equal(r.source, 'recomputed');
  assert.equal(r.reason, null);
  assert.match(r.backend, /^tfjs /);
  assert.match(r.how, /rebuilt from <variant>\/model\.safetensors.*first 4 probe images.*4 answers/);
  assert.match(r.check, /^matches the stored attention\.json: max \|Δ entropy\| = .* over 24 layer × head cells/);
  assert.deepEqual(r.results.map((x: { variant: string }) => x.variant), ['baseline', 'residual', 'viral']);
  for (const res of r.results) {
    const s = stored.results.find((x: { variant: string }) => x.variant === res.variant);
    assert.equal(res.cells.length, 2 * 4, 'quick demo: 2 layers × 4 heads');
    res.cells.forEach((c: { entropy: number; component_entropy: number; image_mass: number }, i: number) => {
      assert.ok(Math.abs(c.entropy - s.cells[i].entropy) < 1e-6, `${res.variant} cell ${i}: ${c.entropy} vs ${s.cells[i].entropy}`);
      assert.ok(Math.abs(c.image_mass - s.cells[i].image_mass) < 1e-6);
      assert.ok(c.entropy > 0 && c.entropy <= Math.log2(36) + 1e-9, 'between 0 and log2 N');
    });
    assert.equal(res.overlay.sample, s.overlay.sample);
  }
  const text = await cli('attention', run);
  assert.equal(text.code, 0, text.stderr);
  assert.match(text.stdout, /^run .* — text→image attention entropy/);
  assert.match(text.stdout, /source: recomputed: /);
  assert.match(text.stdout, /definition: Shannon entropy \(bits\) of each query's attention over the 36 image tokens/);
  const first = r.results[0].cells[0];
  assert.match(text.stdout, new RegExp(`baseline @ step ${QUICK_SIZE.steps} — [^\\n]*4 sample\\(s\\) × 4 query row\\(s\\), grid 6×6 \\(N = 36\\)`));
  assert.match(text.stdout, new RegExp(`\\n +1 +blocks\\.0 +0 +${first.entropy.toFixed(3)} `));
  assert.match(text.stdout, /most focused: layer \d \(blocks\.\d\), head \d/);
});

test('shuffle: recomputed rows equal shuffle.json and the accuracy the demo logged; --seeds extends them', { timeout: 120_000 }, async () => {
  const stored = JSON.parse(await readFile(join(run, 'shuffle.json'), 'utf8')).results[0];
  const r = await json('shuffle', run);
  assert.equal(r.source, 'recomputed');
  assert.match(r.check, /^matches the stored shuffle\.json: identical correct counts in all 15 /);
  assert.deepEqual(r.result.seeds, [1]);
  assert.deepEqual(r.result.rows, stored.rows);
  assert.deepEqual(r.result.comparisons, stored.comparisons);
  // accuracy.csv is written from the demo's own evaluation results (correct/total per type, shuffled accuracy).
  const acc = await accuracyCsv(run);
  for (const row of r.result.rows as { variant: string; question_type: string; n: number; correct_original: number; acc_shuffled: number }[]) {
    const a = acc.get(`${row.variant}/${row.question_type === 'all' ? 'overall' : row.question_type}`)!;
    assert.equal(row.correct_original, Number(a.correct), `${row.variant}/${row.question_type}`);
    assert.equal(row.n, Number(a.total));
    assert.ok(Math.abs(row.acc_shuffled - Number(a.accuracy_shuffled)) < 1e-12);
  }
  const two = await json('shuffle', run, '--seeds', '2');
  assert.deepEqual(two.result.seeds, [1, 2]);
  for (const v of ['baseline', 'viral']) {
    const rows = (two.result.rows as { variant: string; question_type: string; shuffle_seed: number | null; correct_shuffled: number; correct_original: number; drop: number }[]).filter((x) => x.variant === v && x.question_type === 'all');
    const [s1, s2, mean] = [1, 2, null].map((seed) => rows.find((x) => x.shuffle_seed === seed)!);
    assert.equal(s1!.correct_shuffled, stored.rows.find((x: { variant: string; question_type: string }) => x.variant === v && x.question_type === 'all').correct_shuffled, 'seed 1 as before');
    assert.equal(mean!.correct_shuffled, (s1!.correct_shuffled + s2!.correct_shuffled) / 2);
    assert.equal(mean!.drop, mean!.correct_original - mean!.correct_shuffled);
  }
  const text = await cli('shuffle', run, '--seeds', '2');
  assert.match(text.stdout, /shuffled with seed\(s\) 1, 2/);
  assert.match(text.stdout, /p: McNemar exact test \(two-sided\) on the paired answers, per seed; "mean" rows average the seeds/);
  assert.match(text.stdout, /\nviral\ntype +seed +n +correct +correct shuf\. +acc % +acc shuf\. % +drop +lost +gained +McNemar p\n/);
  assert.match(text.stdout, /\nall +mean +96 /);
  assert.match(text.stdout, /Between variants: difference of drop rates/);
});

test('a run that cannot be recomputed prints its stored files and says why; asking for more is exit 2', { timeout: 120_000 }, async () => {
  const copy = join(tmp, 'no-weights');
  await cp(run, copy, { recursive: true });
  await rm(join(copy, 'viral', 'model.safetensors'));
  const a = await json('attention', copy);
  assert.equal(a.source, 'stored');
  assert.match(a.reason, /viral\/model\.safetensors is missing/);
  assert.equal(a.check, null);
  const stored = JSON.parse(await readFile(join(run, 'attention.json'), 'utf8'));
  assert.deepEqual(a.results.map((x: { cells: unknown[] }) => x.cells), stored.results.map((x: { cells: unknown[] }) => x.cells));
  const text = await cli('shuffle', copy);
  assert.equal(text.code, 0, text.stderr);
  assert.match(text.stdout, /source: stored result from shuffle\.json \(not recomputed\); why: viral\/model\.safetensors is missing/);
  await rejects(['shuffle', copy, '--seeds', '3'], /--seeds: .*cannot be recomputed \(viral\/model\.safetensors is missing\); its stored shuffle\.json has seeds 1/);
  await rejects(['attention', copy, '--write'], /--write: .*cannot be recomputed/);
  await rejects(['shuffle', run, '--stored', '--seeds', '2'], /cannot be combined with --stored/);
  const st = await cli('attention', run, '--stored');
  assert.match(st.stdout, /source: stored results from attention\.json \(not recomputed\); why: not requested \(--stored\)/);

  const empty = join(tmp, 'empty');
  await mkdir(empty);
  await rejects(['attention', empty], /cannot recompute attention \(no demo\.json .*\) and there is no attention\.json with results to print/);
  await rejects(['shuffle', empty], /cannot recompute the patch-shuffle test \(no demo\.json .*\) and there is no shuffle\.json/);
  await rejects(['shuffle', run, '--seeds', '0'], /--seeds: expected a number of shuffle seeds in 1\.\.1000, got 0/);
  await rejects(['attention'], /expected one run directory/);
});

test('without the feature cache the recorded encoders recompute the features, with the same result', { timeout: 180_000 }, async () => {
  const copy = join(tmp, 'no-features');
  await cp(run, copy, { recursive: true });
  await rm(join(copy, 'features'), { recursive: true });
  const r = await json('attention', copy);
  assert.equal(r.source, 'recomputed');
  assert.match(r.how, /frozen-encoder features recomputed \(no cache in the run folder\)/);
  assert.match(r.check, /^matches the stored attention\.json/);
});

test('--write stores the recomputed result in the run folder (what the dashboard and notebooks read)', { timeout: 120_000 }, async () => {
  const copy = join(tmp, 'write');
  await cp(run, copy, { recursive: true });
  const r = await cli('shuffle', copy, '--seeds', '2', '--write');
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stdout, /written: .*shuffle\.json/);
  const file = JSON.parse(await readFile(join(copy, 'shuffle.json'), 'utf8'));
  assert.equal(file.results.length, 1, 'replaces the result of the same model and step');
  assert.deepEqual(file.results[0].seeds, [1, 2]);
});
