/**
 * Capture directories (src/store/capture.ts, manifest.ts), atomic writes (atomic.ts), and the committed fixture
 * fixtures/capture-small (regenerated here byte for byte).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { chmod, cp, mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { InputError } from '../src/core/errors.js';
import { writeFileAtomic } from '../src/store/atomic.js';
import { CaptureWriter, listRuns, openCapture, validateCapture, type CaptureInit } from '../src/store/capture.js';
import { floatToHalf, halfToFloat } from '../src/store/dtype.js';
import { describeFile } from '../src/store/load.js';
import { writeSafetensors } from '../src/store/safetensors.js';
import { makeSmallCapture } from '../fixtures/make-fixtures.js';

const root = dirname(dirname(fileURLToPath(import.meta.url)));
const FIXTURE = join(root, 'fixtures', 'capture-small');
const tmp = await mkdtemp(join(tmpdir(), 'vl-cap-'));
test.after(() => rm(tmp, { recursive: true, force: true }));
let counter = 0;
const fresh = (): string => join(tmp, `c${counter++}`);
const isRoot = typeof process.getuid === 'function' && process.getuid() === 0;

async function rejectsInput(fn: () => Promise<unknown>, pattern: RegExp): Promise<InputError> {
  let caught: InputError | undefined;
  await assert.rejects(fn, (err: unknown) => {
    assert.ok(err instanceof InputError, `expected InputError, got ${String(err)}`);
    assert.match(err.message, pattern);
    assert.ok(!err.message.includes('\n'), 'message must be one line');
    caught = err;
    return true;
  });
  return caught!;
}

/** All files under dir, relative, sorted. */
async function listFiles(dir: string): Promise<string[]> {
  const out: string[] = [];
  for (const e of await readdir(dir, { withFileTypes: true, recursive: true })) {
    if (e.isFile()) out.push(relative(dir, join(e.parentPath ?? (e as unknown as { path: string }).path, e.name)));
  }
  return out.sort();
}

const INIT: CaptureInit = {
  model: { name: 'test/model', hidden_size: 3, num_layers: 2, revision: 'abc' },
  variant: 'viral',
  checkpoint: { step: 7 },
  token_layout: { kind: 'image', tokens: 2, source_tokens: 2, grid: [1, 2], pooling: 'none' },
  layers: [
    { name: 'embed', index: 0, dim: 3 },
    { name: 'blocks.1.out', index: 2, dim: 3 },
  ],
  targets: [{ name: 'clip', dim: 2, tokens: 1 }],
};

/** Deterministic values for samples [start, start+b): sample s, token t, dim d ↦ a distinct number. */
function values(start: number, b: number, tokens: number, dim: number, salt: number): Float32Array {
  const out = new Float32Array(b * tokens * dim);
  for (let s = 0; s < b; s++) {
    for (let t = 0; t < tokens; t++) for (let d = 0; d < dim; d++) out[(s * tokens + t) * dim + d] = salt + (start + s) * 1.25 + t * 0.5 + d * 0.0625;
  }
  return out;
}

function batch(start: number, b: number, extra: Partial<{ labels: Record<string, (number | string)[]> }> = {}) {
  return {
    ids: Array.from({ length: b }, (_, i) => `s${start + i}`),
    labels: extra.labels ?? { n: Array.from({ length: b }, (_, i) => start + i), tag: Array.from({ length: b }, (_, i) => `t${(start + i) % 3}`) },
    layers: { embed: values(start, b, 2, 3, 0), 'blocks.1.out': values(start, b, 2, 3, 100) },
    targets: { clip: values(start, b, 1, 2, -50) },
  };
}

// ---------------------------------------------------------------------------------------------------------------
// Atomic writes

test('writeFileAtomic writes buffers, strings and chunk sequences, leaving no temp files', async () => {
  const dir = fresh();
  await mkdir(dir);
  await writeFileAtomic(join(dir, 'a.bin'), new Uint8Array([1, 2, 3]));
  await writeFileAtomic(join(dir, 'b.txt'), 'héllo');
  await writeFileAtomic(join(dir, 'c.bin'), [Buffer.from('ab'), Buffer.from('cd')]);
  async function* gen() {
    yield Buffer.from('x');
    yield Buffer.from('y');
  }
  await writeFileAtomic(join(dir, 'd.bin'), gen());
  await writeFileAtomic(join(dir, 'a.bin'), 'replaced');
  assert.deepEqual(await readdir(dir), ['a.bin', 'b.txt', 'c.bin', 'd.bin']);
  assert.equal(await readFile(join(dir, 'a.bin'), 'utf8'), 'replaced');
  assert.equal(await readFile(join(dir, 'b.txt'), 'utf8'), 'héllo');
  assert.equal(await readFile(join(dir, 'c.bin'), 'utf8'), 'abcd');
  assert.equal(await readFile(join(dir, 'd.bin'), 'utf8'), 'xy');
});

test('writeFileAtomic failures are InputErrors naming the path and the OS reason, and remove the temp file', async () => {
  const dir = fresh();
  await mkdir(dir);
  // The rename fails because the destination is a non-empty directory (works even as root).
  const target = join(dir, 'occupied');
  await mkdir(target);
  await writeFile(join(target, 'keep'), 'x');
  await rejectsInput(() => writeFileAtomic(target, 'data'), new RegExp(`^${target}: cannot write file: E(ISDIR|NOTEMPTY|EXIST)`));
  assert.deepEqual((await readdir(dir)).sort(), ['occupied']);
  const noParent = join(dir, 'missing', 'f.bin');
  await rejectsInput(() => writeFileAtomic(noParent, 'data'), /missing\/f\.bin: cannot write file: ENOENT \(no such file or directory\)/);
  // A chunk producer that throws: the error passes through unchanged, nothing is left behind.
  function* broken(): Generator<Uint8Array> {
    yield Buffer.from('partial');
    throw new Error('encoder bug');
  }
  await assert.rejects(() => writeFileAtomic(join(dir, 'partial.bin'), broken()), /encoder bug/);
  assert.deepEqual((await readdir(dir)).sort(), ['occupied']);
});

test('writeFileAtomic into a read-only directory leaves no partial file', { skip: isRoot ? 'running as root: permissions are not enforced' : false }, async () => {
  const dir = fresh();
  await mkdir(dir);
  await writeFile(join(dir, 'old.txt'), 'old');
  await chmod(dir, 0o555);
  try {
    await rejectsInput(() => writeFileAtomic(join(dir, 'old.txt'), 'new'), /old\.txt: cannot write file: EACCES \(permission denied\)/);
    assert.deepEqual(await readdir(dir), ['old.txt']);
    assert.equal(await readFile(join(dir, 'old.txt'), 'utf8'), 'old');
  } finally {
    await chmod(dir, 0o755);
  }
});

// ---------------------------------------------------------------------------------------------------------------
// Writing and reading captures

test('CaptureWriter writes batches that read back exactly, concatenated across shards', async () => {
  const dir = fresh();
  const w = await CaptureWriter.create(dir, INIT);
  assert.equal(w.count, 0);
  await w.appendBatch(batch(0, 3));
  await w.appendBatch(batch(3, 2));
  assert.equal(w.count, 5);

  const c = await openCapture(dir);
  assert.equal(c.dir, dir);
  assert.deepEqual(c.layers, [
    { name: 'embed', index: 0, dim: 3 },
    { name: 'blocks.1.out', index: 2, dim: 3 },
  ]);
  assert.deepEqual(c.targets, [{ name: 'clip', dim: 2, tokens: 1 }]);
  assert.deepEqual(c.sampleIds, ['s0', 's1', 's2', 's3', 's4']);
  assert.deepEqual(c.labels, { n: [0, 1, 2, 3, 4], tag: ['t0', 't1', 't2', 't0', 't1'] });
  assert.equal(c.tokens, 2);
  assert.equal(c.manifest.model.revision, 'abc');
  assert.equal(c.manifest.checkpoint?.step, 7);
  assert.equal(c.manifest.layers[0]!.shards.length, 2);
  assert.deepEqual(c.manifest.layers[1]!.shards[1], { file: 'layers/002/00001.safetensors', tensor: 'hidden', start: 3, count: 2 });
  assert.deepEqual(c.manifest.targets[0]!.shards[0], { file: 'targets/clip/00000.safetensors', tensor: 'features', start: 0, count: 3 });

  const embed = await c.readLayer('embed');
  assert.deepEqual([embed.samples, embed.tokens, embed.dim], [5, 2, 3]);
  assert.deepEqual(Array.from(embed.data), Array.from(values(0, 5, 2, 3, 0)));
  const byIndex = await c.readLayer(2);
  assert.deepEqual(Array.from(byIndex.data), Array.from(values(0, 5, 2, 3, 100)));
  const clip = await c.readTarget('clip');
  assert.deepEqual([clip.samples, clip.tokens, clip.dim], [5, 1, 2]);
  assert.deepEqual(Array.from(clip.data), Array.from(values(0, 5, 1, 2, -50)));

  await rejectsInput(() => c.readLayer(1), /no layer with index 1 \(layers: 0:embed, 2:blocks\.1\.out\)/);
  await rejectsInput(() => c.readLayer('blocks.9.out'), /no layer 'blocks\.9\.out'/);
  await rejectsInput(() => c.readTarget('dinov2'), /no target 'dinov2' \(targets: clip\)/);

  const files = await listFiles(dir);
  let total = 0;
  for (const f of files) total += (await stat(join(dir, f))).size;
  assert.equal(await c.sizeBytes(), total);
  assert.deepEqual(await validateCapture(dir), []);
  assert.ok(!files.some((f) => f.includes('.tmp-')));

  const d = await describeFile(dir);
  assert.equal(d.format, 'capture');
  if (d.format === 'capture') {
    assert.equal(d.samples, 5);
    assert.deepEqual(d.layers, [
      { name: 'embed', index: 0, dim: 3, shards: 2 },
      { name: 'blocks.1.out', index: 2, dim: 3, shards: 2 },
    ]);
    assert.deepEqual(d.labels, ['n', 'tag']);
  }
});

test('validateCapture flags a capture with 0 samples (a writer that stopped before its first batch)', async () => {
  const dir = fresh();
  await CaptureWriter.create(dir, INIT);
  assert.deepEqual(await validateCapture(dir), [`${join(dir, 'manifest.json')}: samples.count: the capture holds no samples`]);
});

test('un-awaited appendBatch calls are queued, not interleaved', async () => {
  const dir = fresh();
  const w = await CaptureWriter.create(dir, INIT);
  const failing = { ...batch(3, 1), ids: ['s0'] }; // duplicate of the first batch's id: rejected when its turn comes
  const results = await Promise.allSettled([w.appendBatch(batch(0, 3)), w.appendBatch(failing), w.appendBatch(batch(3, 2))]);
  assert.deepEqual(results.map((r) => r.status), ['fulfilled', 'rejected', 'fulfilled']);
  const c = await openCapture(dir);
  assert.deepEqual(c.sampleIds, ['s0', 's1', 's2', 's3', 's4']);
  assert.deepEqual(Array.from((await c.readLayer('embed')).data), Array.from(values(0, 5, 2, 3, 0)));
});

test('F16 and BF16 shards read back as the rounded values; Tensor3 batch entries are accepted', async () => {
  const dir = fresh();
  const w = await CaptureWriter.create(dir, INIT);
  const b0 = batch(0, 2);
  const third = new Float32Array(12).map((_, i) => i / 3);
  await w.appendBatch({ ...b0, layers: { ...b0.layers, embed: third } }, { dtype: 'F16' });
  const b1 = batch(2, 1);
  await w.appendBatch({ ...b1, layers: { ...b1.layers, embed: { samples: 1, tokens: 2, dim: 3, data: values(2, 1, 2, 3, 0) } } }, { dtype: 'BF16' });
  const embed = await (await openCapture(dir)).readLayer('embed');
  assert.deepEqual(Array.from(embed.data.subarray(0, 12)), Array.from(third, (v) => halfToFloat(floatToHalf(v))));
  assert.deepEqual(Array.from(embed.data.subarray(12)), Array.from(values(2, 1, 2, 3, 0))); // exactly representable in bf16
  assert.deepEqual(await validateCapture(dir), []);
});

test('appendBatch rejects bad batches with both numbers, and leaves the capture unchanged', async () => {
  const dir = fresh();
  const w = await CaptureWriter.create(dir, INIT);
  await w.appendBatch(batch(0, 2));
  const before = await readFile(join(dir, 'manifest.json'), 'utf8');
  const b = batch(2, 2);
  await rejectsInput(() => w.appendBatch({ ...b, ids: ['s9', 's1'] }), /duplicate sample id "s1" \(already at sample 1\)/);
  await rejectsInput(() => w.appendBatch({ ...b, ids: ['s9', 's9'] }), /duplicate sample id "s9" \(ids\[0\] and ids\[1\]\)/);
  await rejectsInput(
    () => w.appendBatch({ ...b, layers: { ...b.layers, embed: new Float32Array(2 * 5 * 3) } }),
    /batch at sample 2: layer 'embed': got 30 values \(= 2 samples × 5 tokens × 3 dim\), expected 2 samples × 2 tokens × 3 dim = 12/,
  );
  await rejectsInput(
    () => w.appendBatch({ ...b, layers: { ...b.layers, embed: new Float32Array(2 * 2 * 4) } }),
    /layer 'embed': got 16 values \(= 2 samples × 2 tokens × 4 dim\), expected 2 samples × 2 tokens × 3 dim = 12/,
  );
  await rejectsInput(
    () => w.appendBatch({ ...b, layers: { ...b.layers, embed: { samples: 2, tokens: 3, dim: 3, data: new Float32Array(18) } } }),
    /layer 'embed': has 3 tokens per sample, expected 2/,
  );
  await rejectsInput(
    () => w.appendBatch({ ...b, targets: { clip: { samples: 2, tokens: 1, dim: 5, data: new Float32Array(10) } } }),
    /target 'clip': has dim 5, expected 2/,
  );
  await rejectsInput(() => w.appendBatch({ ...b, layers: { embed: b.layers.embed } }), /missing layer 'blocks\.1\.out'/);
  await rejectsInput(() => w.appendBatch({ ...b, targets: {} }), /missing target 'clip'/);
  await rejectsInput(() => w.appendBatch({ ...b, labels: { n: [1, 2] } }), /missing label 'tag'/);
  await rejectsInput(() => w.appendBatch({ ...b, labels: { n: [1], tag: ['a', 'b'] } }), /label 'n' has 1 values, the batch has 2 ids/);
  await rejectsInput(() => w.appendBatch({ ...b, labels: { n: [1, NaN], tag: ['a', 'b'] } }), /label 'n'\[1\] must be a finite number or a string/);
  assert.equal(await readFile(join(dir, 'manifest.json'), 'utf8'), before);
  assert.deepEqual(await validateCapture(dir), []);
  await w.appendBatch(b);
  assert.equal((await openCapture(dir)).sampleIds.length, 4);
});

test('CaptureWriter.create validates the init and refuses to overwrite a capture', async () => {
  const dir = fresh();
  await CaptureWriter.create(dir, INIT);
  await rejectsInput(() => CaptureWriter.create(dir, INIT), /already holds a capture \(manifest\.json exists\)/);
  await rejectsInput(
    () => CaptureWriter.create(fresh(), { ...INIT, layers: [{ name: 'embed', index: 0, dim: 0 }] }),
    /manifest\.json: layers\[0\]\.dim: expected a positive integer/,
  );
  await rejectsInput(
    () => CaptureWriter.create(fresh(), { ...INIT, token_layout: { ...INIT.token_layout, pooling: 'mean' } }),
    /token_layout\.tokens: is 2 but pooling "mean" stores 1 token per sample/,
  );
  await rejectsInput(() => CaptureWriter.create(fresh(), { ...INIT, targets: [{ name: '../x', dim: 1, tokens: 1 }] }), /targets\[0\]\.name: "\.\.\/x" must be a plain file name/);
});

// ---------------------------------------------------------------------------------------------------------------
// Validation

async function copyFixture(): Promise<string> {
  const dir = fresh();
  await cp(FIXTURE, dir, { recursive: true });
  return dir;
}

async function editManifest(dir: string, edit: (m: any) => void): Promise<void> {
  const p = join(dir, 'manifest.json');
  const m = JSON.parse(await readFile(p, 'utf8'));
  edit(m);
  await writeFile(p, JSON.stringify(m, null, 2));
}

test('schema errors name the manifest path and the field path', async () => {
  const dir = await copyFixture();
  await editManifest(dir, (m) => {
    m.layers[3].shards[0].count = -1;
    m.variant = 'fancy';
    m.token_layout.extra = true;
    delete m.samples.ids;
  });
  const mp = join(dir, 'manifest.json');
  const problems = await validateCapture(dir);
  assert.deepEqual(problems.sort(), [
    `${mp}: layers[3].shards[0].count: expected a non-negative integer`,
    `${mp}: samples.ids: missing (expected array)`,
    `${mp}: token_layout: unknown key "extra"`,
    `${mp}: variant: expected "baseline" or "residual" or "viral" or "other", got "fancy"`,
  ]);
  const err = await rejectsInput(() => openCapture(dir), /manifest\.json: /);
  assert.ok(err.message.includes(mp));
  assert.match(err.message, /\(and 3 more problems; run validate\)/);

  const bad = fresh();
  await mkdir(bad);
  await writeFile(join(bad, 'manifest.json'), '{"format": ');
  assert.match((await validateCapture(bad))[0]!, /manifest\.json: invalid JSON/);
  await rejectsInput(() => openCapture(fresh()), /manifest\.json: not found/);
});

test('validateCapture finds every planted problem, each naming its file and field', async () => {
  const dir = await copyFixture();
  const mp = join(dir, 'manifest.json');
  // 1. Missing shard.
  await rm(join(dir, 'layers/001/00001.safetensors'));
  // 2. Wrong shape: a shard of layer 2 rewritten with dim 15.
  await writeSafetensors(join(dir, 'layers/002/00000.safetensors'), [{ name: 'hidden', dtype: 'F32', shape: [20, 4, 15], data: new Float32Array(20 * 4 * 15) }]);
  // 3. Wrong tensor name in a target shard.
  await writeSafetensors(join(dir, 'targets/clip/00001.safetensors'), [{ name: 'feats', dtype: 'F32', shape: [20, 4, 12], data: new Float32Array(20 * 4 * 12) }]);
  // 4. Stray files.
  await writeFile(join(dir, 'layers/000/00002.safetensors'), 'junk');
  await writeFile(join(dir, 'manifest.json.tmp-123-abcd'), '{');
  // 5.–7. Manifest edits: label length, '..' path, coverage gap.
  await editManifest(dir, (m) => {
    m.labels.class.pop();
    m.layers[4].shards[1].file = '../outside.safetensors';
    m.targets[1].shards[1].start = 21;
  });
  const problems = await validateCapture(dir);
  const expectOne = (pattern: RegExp): void => {
    const hits = problems.filter((p) => pattern.test(p));
    assert.equal(hits.length, 1, `expected one problem matching ${pattern}, got:\n${problems.join('\n')}`);
  };
  expectOne(new RegExp(`^${mp}: labels\\.class: has 39 entries but samples\\.count is 40$`));
  expectOne(new RegExp(`^${mp}: layers\\[4\\]\\.shards\\[1\\]\\.file: "\\.\\./outside\\.safetensors" must stay inside the capture directory \\(no '\\.\\.'\\)$`));
  expectOne(/targets\[1\]\.shards\[1\]\.start: is 21 but the previous shards end at 20: samples \[20, 21\) are not covered/);
  expectOne(/targets\[1\]\.shards: cover samples \[0, 41\) but samples\.count is 40/);
  expectOne(new RegExp(`^${join(dir, 'layers/001/00001.safetensors')}: file not found$`));
  expectOne(
    new RegExp(
      `^${join(dir, 'layers/002/00000.safetensors')}: tensor 'hidden': expected shape \\[20, 4, 16\\] \\(layers\\[2\\] 'blocks\\.1\\.out', samples \\[0, 20\\)\\), found \\[20, 4, 15\\]$`,
    ),
  );
  expectOne(/targets\/clip\/00001\.safetensors: no tensor 'features' \(listed for targets\[0\] 'clip'; the file holds: feats\)/);
  // The '..' shard is not opened, and the real file it replaced in the listing is now stray.
  expectOne(new RegExp(`^${join(dir, 'layers/004/00001.safetensors')}: stray file \\(not listed in manifest\\.json\\)$`));
  expectOne(new RegExp(`^${join(dir, 'layers/000/00002.safetensors')}: stray file \\(not listed in manifest\\.json\\)$`));
  expectOne(/manifest\.json\.tmp-123-abcd: leftover temporary file from an interrupted write/);
  assert.equal(problems.length, 10, problems.join('\n'));
  await rejectsInput(() => openCapture(dir), /labels\.class: has 39 entries.*\(and 3 more problems; run validate\)/);

  await editManifest(dir, (m) => {
    m.labels.class.push('cat');
    m.layers[4].shards[1].file = 'layers/004/00001.safetensors';
    m.targets[1].shards[1].start = 20;
  });
  assert.equal((await validateCapture(dir)).length, 5);
  // Reading surfaces the same shard problems, naming the shard file.
  const c = await openCapture(dir);
  await rejectsInput(() => c.readLayer('blocks.1.out'), /layers\/002\/00000\.safetensors: tensor 'hidden': expected shape \[20, 4, 16\].*found \[20, 4, 15\]/);
  await rejectsInput(() => c.readLayer('blocks.0.out'), /layers\/001\/00001\.safetensors: file not found/);
});

test('validateCapture checkValues reports non-finite values with their location', async () => {
  const dir = fresh();
  const w = await CaptureWriter.create(dir, INIT);
  const b = batch(0, 2);
  b.layers.embed[1 * 6 + 1 * 3 + 2] = NaN; // sample 1, token 1, dim 2
  await w.appendBatch(b);
  assert.deepEqual(await validateCapture(dir), []);
  const problems = await validateCapture(dir, { checkValues: true });
  assert.equal(problems.length, 1);
  assert.match(problems[0]!, /layers\/000\/00000\.safetensors: tensor 'hidden': non-finite value NaN at sample 1 \(shard row 1\), token 1, dim 2/);
});

// ---------------------------------------------------------------------------------------------------------------
// Resume

test('resume after a crash keeps exactly the listed samples and deletes stray files', async () => {
  const dir = fresh();
  const w = await CaptureWriter.create(dir, INIT);
  await w.appendBatch(batch(0, 3));
  // Simulated crash during the second batch: one shard renamed into place, one still a temp file, and a half
  // written manifest temp file; manifest.json itself still lists only the first batch.
  await writeSafetensors(join(dir, 'layers/000/00001.safetensors'), [{ name: 'hidden', dtype: 'F32', shape: [2, 2, 3], data: values(3, 2, 2, 3, 0) }]);
  await writeFile(join(dir, 'layers/002/00001.safetensors.tmp-999-0badc0de'), 'partial');
  await writeFile(join(dir, 'manifest.json.tmp-999-12345678'), '{"format": "viral');
  await writeFile(join(dir, 'NOTES.md'), 'user file, not ours');
  assert.equal((await validateCapture(dir)).length, 3);

  const r = await CaptureWriter.resume(dir);
  assert.equal(r.count, 3);
  assert.deepEqual(await listFiles(dir), [
    'NOTES.md',
    'layers/000/00000.safetensors',
    'layers/002/00000.safetensors',
    'manifest.json',
    'targets/clip/00000.safetensors',
  ]);
  await rejectsInput(() => r.appendBatch(batch(2, 2)), /duplicate sample id "s2" \(already at sample 2\)/);
  await r.appendBatch(batch(3, 2));
  const c = await openCapture(dir);
  assert.deepEqual(c.sampleIds, ['s0', 's1', 's2', 's3', 's4']);
  assert.deepEqual(Array.from((await c.readLayer('embed')).data), Array.from(values(0, 5, 2, 3, 0)));
  assert.deepEqual(Array.from((await c.readLayer('blocks.1.out')).data), Array.from(values(0, 5, 2, 3, 100)));
  assert.deepEqual(c.labels.n, [0, 1, 2, 3, 4]);
  assert.deepEqual(await validateCapture(dir), []);
});

test('resume refuses a capture whose listed shards are broken', async () => {
  const dir = fresh();
  const w = await CaptureWriter.create(dir, INIT);
  await w.appendBatch(batch(0, 2));
  await rm(join(dir, 'targets/clip/00000.safetensors'));
  await rejectsInput(() => CaptureWriter.resume(dir), /^cannot resume: .*targets\/clip\/00000\.safetensors: file not found$/);
});

// ---------------------------------------------------------------------------------------------------------------
// Runs and the fixture

test('listRuns discovers runs/<run>/step-<N>/ captures, sorted by run and numeric step', async () => {
  const runs = join(fresh(), 'runs');
  const manifest = await readFile(join(FIXTURE, 'manifest.json'), 'utf8');
  const put = async (rel: string, text = manifest): Promise<void> => {
    await mkdir(join(runs, rel), { recursive: true });
    await writeFile(join(runs, rel, 'manifest.json'), text);
  };
  await put('b/step-5');
  await put('a/step-100');
  await put('a/step-20', manifest.replace('"baseline"', '"viral"'));
  await put('loose', manifest.replace('"variant"', '"checkpoint": {"step": 3}, "variant"'));
  await put('broken/step-1', '{');
  await mkdir(join(runs, 'a', 'step-20', 'layers', 'nested-not-a-run'), { recursive: true });
  const found = await listRuns(runs);
  assert.deepEqual(
    found.map((r) => [r.run, r.step, relative(runs, r.dir), r.variant, r.error === undefined]),
    [
      ['a', 20, 'a/step-20', 'viral', true],
      ['a', 100, 'a/step-100', 'baseline', true],
      ['b', 5, 'b/step-5', 'baseline', true],
      ['broken', 1, 'broken/step-1', null, false],
      ['loose', 3, 'loose', 'baseline', true],
    ],
  );
  assert.match(found[3]!.error!, /broken\/step-1\/manifest\.json: invalid JSON/);
  assert.deepEqual((await listRuns(FIXTURE)).map((r) => [r.run, r.step, r.variant]), [['capture-small', null, 'baseline']]);
  await rejectsInput(() => listRuns(join(runs, 'nope')), /nope: not found/);
});

test('the fixture capture is valid, matches its description, and regenerates byte for byte', async () => {
  assert.deepEqual(await validateCapture(FIXTURE, { checkValues: true }), []);
  const c = await openCapture(FIXTURE);
  assert.equal(c.sampleIds.length, 40);
  assert.equal(c.tokens, 4);
  assert.deepEqual(c.manifest.token_layout.grid, [2, 2]);
  assert.deepEqual(c.layers.map((l) => [l.name, l.index, l.dim]), [
    ['embed', 0, 16],
    ['blocks.0.out', 1, 16],
    ['blocks.1.out', 2, 16],
    ['blocks.2.out', 3, 16],
    ['blocks.3.out', 4, 16],
  ]);
  assert.deepEqual(c.targets.map((t) => [t.name, t.dim, t.tokens]), [
    ['clip', 12, 4],
    ['dinov2', 10, 4],
  ]);
  assert.deepEqual(Object.keys(c.labels), ['class', 'count']);
  assert.ok((await c.sizeBytes()) < 200_000);

  // The planted signal: linear CKA with each target is clearly higher at the first layer than at the last.
  const cka = (a: { data: Float32Array; dim: number }, b: { data: Float32Array; dim: number }): number => {
    const center = (t: { data: Float32Array; dim: number }) => {
      const n = t.data.length / t.dim;
      const x = Float64Array.from(t.data);
      for (let j = 0; j < t.dim; j++) {
        let mean = 0;
        for (let i = 0; i < n; i++) mean += x[i * t.dim + j]!;
        mean /= n;
        for (let i = 0; i < n; i++) x[i * t.dim + j]! -= mean;
      }
      return { x, n, d: t.dim };
    };
    const cross = (p: ReturnType<typeof center>, q: ReturnType<typeof center>): number => {
      let s = 0;
      for (let i = 0; i < p.d; i++) {
        for (let j = 0; j < q.d; j++) {
          let v = 0;
          for (let r = 0; r < p.n; r++) v += p.x[r * p.d + i]! * q.x[r * q.d + j]!;
          s += v * v;
        }
      }
      return s;
    };
    const p = center(a);
    const q = center(b);
    return cross(p, q) / Math.sqrt(cross(p, p) * cross(q, q));
  };
  for (const target of ['clip', 'dinov2']) {
    const t = await c.readTarget(target);
    const first = cka(await c.readLayer('embed'), t);
    const last = cka(await c.readLayer('blocks.3.out'), t);
    assert.ok(first > 0.6 && last < 0.2, `${target}: CKA ${first} at embed vs ${last} at blocks.3.out`);
  }

  const regen = fresh();
  await makeSmallCapture(regen);
  const files = await listFiles(FIXTURE);
  assert.deepEqual(await listFiles(regen), files);
  for (const f of files) assert.deepEqual(await readFile(join(regen, f)), await readFile(join(FIXTURE, f)), `${f} differs: rerun fixtures/make-fixtures.ts`);
});

test('readLayer/readTarget with a sample range read exactly those samples, across shard boundaries', async () => {
  const { openCapture } = await import('../src/store/capture.js');
  const { fileURLToPath } = await import('node:url');
  const fixtureDir = fileURLToPath(new URL('../fixtures/capture-small', import.meta.url));
  const cap = await openCapture(fixtureDir);
  const full = await cap.readLayer('blocks.1.out');
  const per = full.tokens * full.dim;
  // The fixture's shards hold samples [0, 20) and [20, 40): 18..22 spans both.
  for (const [start, count] of [[0, 1], [18, 4], [39, 1], [0, 40]] as const) {
    const part = await cap.readLayer('blocks.1.out', { start, count });
    assert.equal(part.samples, count);
    assert.deepEqual(Array.from(part.data), Array.from(full.data.subarray(start * per, (start + count) * per)));
  }
  const t = await cap.readTarget('clip', { start: 19, count: 2 });
  const tf = await cap.readTarget('clip');
  assert.deepEqual(Array.from(t.data), Array.from(tf.data.subarray(19 * tf.tokens * tf.dim, 21 * tf.tokens * tf.dim)));
  await assert.rejects(cap.readLayer('embed', { start: 39, count: 2 }), /samples \[39, 41\) are outside \[0, 40\)/);
});
