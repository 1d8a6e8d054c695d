/**
 * `npm run demo -- --quick` end to end, as a subprocess into a temp dir: a complete run folder that openCapture /
 * validateCapture / listRuns / runLayerwise read, the printed report, and the figure data.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { clearPreviousDemo, demoEvalSettings, QUICK_SIZE } from '../demo/demo.js';
import { runLayerwise } from '../analysis/layerwise.js';
import { buildApp } from '../server/app.js';
import { createEngine } from '../src/engine/index.js';
import { InputError } from '../src/core/errors.js';
import { DEMO_MODEL_NAME } from '../demo/train-run.js';
import { generateScenes, splitByImage, VOCAB } from '../demo/model/scenes.js';
import { evalTurns, trainingTurns } from '../demo/model/train.js';
import { listRuns, openCapture, validateCapture } from '../src/store/capture.js';

/** The quick demo's capture steps: 0, every captureEvery, the last. */
const quickSteps = [0, QUICK_SIZE.captureEvery, QUICK_SIZE.steps];

const root = dirname(dirname(fileURLToPath(import.meta.url)));
const tmp = await mkdtemp(join(tmpdir(), 'vl-demo-'));
test.after(() => rm(tmp, { recursive: true, force: true }));
const exists = (p: string) => stat(p).then(
  () => true,
  () => false,
);

test('demo --quick: three variants trained, captured, analysed; the run folder is complete and readable', { timeout: 180_000 }, async () => {
  const out = join(tmp, 'demo');
  const t0 = performance.now();
  const { stdout, stderr } = await promisify(execFile)('npm', ['run', '-s', 'demo', '--', '--quick', '--out', out], {
    cwd: root,
    maxBuffer: 16 << 20,
    env: { ...process.env, FORCE_COLOR: '0' },
  });
  const seconds = (performance.now() - t0) / 1000;
  // The report says how every number was computed and on what.
  assert.match(stdout, new RegExp(`Layer-wise CKNNA at step ${QUICK_SIZE.steps} \\(A = image-token hidden states of the probe set, B = target; k = 10, preprocess prh\\(q=0\\.95\\), tokens per-token, n = 576, engine `));
  assert.match(stdout, /vs encoder — CLIP stand-in: MobileNetV2 from nsfwjs/);
  assert.match(stdout, /vs teacher — DINOv2 stand-in: CenterNet/);
  // No GPU here: the backend line must say CPU and must not claim a GPU.
  const backendLine = /backend: [^\n]*/.exec(stdout)?.[0] ?? '';
  assert.match(backendLine, /backend: tfjs (wasm \(SIMD|wasm \(no SIMD|pure-JS cpu)/);
  assert.doesNotMatch(backendLine, /GPU|gpu/);
  assert.match(stdout, /\n +overall +count +colour +shape +position *\n/);
  assert.match(stdout, /\nchance +\d+\.\d +\d+\.\d \(\w+\) /);
  assert.match(stdout, /\nviral shuffled +\d+\.\d +\d+\.\d +\d+\.\d +\d+\.\d +\d+\.\d/);
  assert.match(stderr, new RegExp(`baseline: ${QUICK_SIZE.steps} steps`));

  const runs = await listRuns(out);
  assert.deepEqual(
    runs.map((r) => `${r.run}@${r.step}:${r.variant}`),
    ['baseline', 'residual', 'viral'].flatMap((v) => quickSteps.map((s) => `${v}@${s}:${v}`)),
  );
  for (const r of runs) assert.deepEqual(await validateCapture(r.dir, { checkValues: true }), [], r.dir);

  const final = await openCapture(join(out, 'viral', `step-${QUICK_SIZE.steps}`));
  assert.equal(final.manifest.model.aligned_layer, 1);
  assert.deepEqual(final.manifest.token_layout.grid, [6, 6]);
  assert.deepEqual(final.targets.map((t) => [t.name, t.dim, t.tokens]), [
    ['encoder', 96, 36],
    ['teacher', 480, 36],
  ]);
  assert.equal(final.sampleIds.length, 16);
  assert.equal(final.labels.colour_r1c1?.length, 16);
  assert.equal((final.manifest.provenance as { backend: { name: string } }).backend.name.length > 0, true);
  // Every variant captured the same probe images with the same targets.
  const base = await openCapture(join(out, 'baseline', `step-${QUICK_SIZE.steps}`));
  assert.deepEqual(base.sampleIds, final.sampleIds);
  assert.deepEqual((await base.readTarget('teacher')).data, (await final.readTarget('teacher')).data);
  // Training changed the states, and VIRAL's differ from the baseline's.
  const l0 = await (await openCapture(join(out, 'viral', 'step-0'))).readLayer('blocks.0.out');
  const l120 = await final.readLayer('blocks.0.out');
  assert.notDeepEqual(l0.data, l120.data);

  const engine = await createEngine('ref');
  try {
    const rows = await runLayerwise(join(out, 'residual', `step-${QUICK_SIZE.steps}`), { engine, metrics: ['cknna'], k: 10, preprocess: 'prh', tokenMode: 'mean' });
    assert.equal(rows.length, 3 * 2);
    // Finite; CKNNA is not bounded by 1 on 16 mean-pooled rows (the unbiased masked estimator is no cosine).
    for (const r of rows) assert.ok(Number.isFinite(r.value), `${r.layer} vs ${r.target}: ${r.value}`);
  } finally {
    await engine.dispose();
  }

  const layerwise = await readFile(join(out, 'layerwise.csv'), 'utf8');
  assert.equal(layerwise.trim().split('\n').length, 1 + 3 * 3 * 2);
  const results = JSON.parse(await readFile(join(out, 'baseline', 'results.json'), 'utf8')) as { results: { benchmark: string; step: number }[] };
  assert.deepEqual([...new Set(results.results.map((r) => r.step))], quickSteps);
  for (const f of ['demo.json', 'dynamics.csv', 'accuracy.csv', 'shuffle.json', 'attention.json', 'figures/variants.vl.json', 'baseline/model.safetensors']) {
    assert.ok((await stat(join(out, f))).size > 0, f);
  }
  // Chance level, counted here: the majority answer per type over the questions the variants trained on (seed 0,
  // --quick sizes), scored on the held-out questions they were evaluated on.
  const scenes = generateScenes(0, QUICK_SIZE.images);
  const split = splitByImage(QUICK_SIZE.images, QUICK_SIZE.heldoutFraction, 0);
  const trained = trainingTurns(scenes, split.train, { steps: QUICK_SIZE.steps, batchSize: QUICK_SIZE.batchSize, turns: QUICK_SIZE.turns, seed: 0 });
  const e = demoEvalSettings(0, QUICK_SIZE);
  const heldout = evalTurns(scenes, split.heldout, { turns: QUICK_SIZE.turns, dialogues: e.dialogues, seed: e.seed });
  const guess = new Map<string, string>();
  for (const type of new Set(trained.map((t) => t.type))) {
    const n = new Map<string, number>();
    for (const t of trained) if (t.type === type) n.set(t.answer, (n.get(t.answer) ?? 0) + 1);
    const top = Math.max(...n.values());
    guess.set(type, VOCAB.find((w) => n.get(w) === top)!);
  }
  const right = (ts: typeof heldout) => ts.filter((t) => guess.get(t.type) === t.answer).length;
  const demo = JSON.parse(await readFile(join(out, 'demo.json'), 'utf8')) as { accuracy: { variant: string; question_type: string; total: number; chance: number }[] };
  assert.equal(demo.accuracy.length, 3 * 5);
  for (const a of demo.accuracy) {
    const asked = a.question_type === 'overall' ? heldout : heldout.filter((t) => t.type === a.question_type);
    assert.equal(a.total, asked.length, `${a.variant} ${a.question_type}: evaluated on the questions the chance level is scored on`);
    assert.equal(a.chance, right(asked) / asked.length, `${a.variant} ${a.question_type}`);
  }
  assert.match(await readFile(join(out, 'accuracy.csv'), 'utf8'), /^variant,question_type,correct,total,accuracy,accuracy_shuffled,chance\n/);
  // The dashboard opens on the readout's numbers: its default layer-wise view (no query parameters but the target)
  // gives demo.json's rows, same token mode and n.
  const dash = await buildApp({ runsDir: out, engine: 'ref', workers: 1, cacheDir: null, pollMs: 100_000 });
  try {
    const lw = (await dash.app.inject({ url: '/api/layerwise?target=teacher' })).json() as { provenance: { n: number; token_mode: string }; rows: { variant: string; layer_index: number; value: number }[] };
    const stored = (JSON.parse(await readFile(join(out, 'demo.json'), 'utf8')) as { layerwise: { variant: string; target: string; layer_index: number; value: number; n: number; token_mode: string }[] }).layerwise.filter((x) => x.target === 'teacher');
    assert.equal(lw.provenance.n, stored[0]!.n);
    assert.equal(lw.provenance.token_mode, stored[0]!.token_mode);
    assert.equal(lw.rows.length, stored.length);
    for (const x of stored) {
      const y = lw.rows.find((r) => r.variant === x.variant && r.layer_index === x.layer_index)!;
      assert.ok(Math.abs(y.value - x.value) < 1e-6, `${x.variant} ℓ=${x.layer_index}: dashboard ${y.value}, demo ${x.value}`);
    }
  } finally {
    await dash.close();
  }
  const spec = JSON.parse(await readFile(join(out, 'figures', 'variants.vl.json'), 'utf8')) as {
    hconcat: [unknown, { data: { values: { variant: string; benchmark: string; chance: number }[] }; spec: { layer: { mark: { type: string } }[] } }];
  };
  assert.equal(spec.hconcat.length, 2);
  // The accuracy bars carry the chance level (in %) as a dashed rule.
  assert.ok(spec.hconcat[1].spec.layer.some((l) => l.mark.type === 'rule'));
  for (const a of demo.accuracy) {
    const bar = spec.hconcat[1].data.values.find((x) => x.variant === a.variant && x.benchmark === a.question_type)!;
    assert.equal(bar.chance, Math.round(a.chance * 1e4) / 100, `${a.variant} ${a.question_type}`);
  }
  process.stderr.write(`# demo --quick took ${seconds.toFixed(1)} s\n`);
});

test('rerun into the same folder: earlier demo captures are replaced, foreign captures are never touched', async () => {
  const out = join(tmp, 'rerun');
  const manifest = (name: string) => JSON.stringify({ model: { name } });
  await mkdir(join(out, 'viral', 'step-10'), { recursive: true });
  await writeFile(join(out, 'viral', 'step-10', 'manifest.json'), manifest(DEMO_MODEL_NAME));
  await writeFile(join(out, 'viral', 'results.json'), '{}');
  await mkdir(join(out, 'features', 'abc'), { recursive: true });
  await writeFile(join(out, 'demo.json'), '{}');
  await writeFile(join(out, 'shuffle.json'), '{}');
  await clearPreviousDemo(out, ['baseline', 'viral']);
  assert.equal(await exists(join(out, 'viral', 'step-10')), false);
  assert.equal(await exists(join(out, 'viral', 'results.json')), false);
  assert.equal(await exists(join(out, 'shuffle.json')), false);
  assert.equal(await exists(join(out, 'features', 'abc')), true, 'the feature cache is kept');

  await mkdir(join(out, 'baseline', 'step-5'), { recursive: true });
  await writeFile(join(out, 'baseline', 'step-5', 'manifest.json'), manifest('llava-hf/llava-1.5-7b-hf'));
  await assert.rejects(clearPreviousDemo(out, ['baseline']), (err: unknown) => err instanceof InputError && /refusing to overwrite/.test(err.message));
  assert.equal(await exists(join(out, 'baseline', 'step-5', 'manifest.json')), true);
});
