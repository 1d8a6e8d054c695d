/**
 * TS capture hooks (demo/hooks/tfjs.ts): captured tensors equal a direct forward of the same layers at the image
 * positions, the capture directory is a valid capture with the run metadata, writes are queued (not awaited by the
 * caller), and attention capture matches the model's own attention weights.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { InputError } from '../src/core/errors.js';
import { blockOutputLayers, captureAttention, captureForward, capturableNames, TrainingCapture } from '../demo/hooks/tfjs.js';
import { initBackend } from '../demo/model/backend.js';
import { defaultConfig, MiniLlava } from '../demo/model/mini-llava.js';
import { TURN_LEN, VOCAB } from '../demo/model/scenes.js';
import { listRuns, openCapture, validateCapture } from '../src/store/capture.js';

await initBackend();
const tmp = await mkdtemp(join(tmpdir(), 'vl-hooks-'));
test.after(() => rm(tmp, { recursive: true, force: true }));

const N = 6; // 2×3 grid
const Dv = 5;
const B = 3;
const turns = 1;
const model = new MiniLlava(
  defaultConfig({ variant: 'residual', seed: 9, vocabSize: VOCAB.length, imageTokens: N, grid: [2, 3], visionDim: Dv, teacherDim: 4, width: 8, layers: 3, heads: 2 }),
);
test.after(() => model.dispose());
const features = Float32Array.from({ length: B * N * Dv }, (_, i) => Math.sin(i * 0.37) + 0.1 * (i % 7));
const ids = Int32Array.from({ length: B * turns * TURN_LEN }, (_, i) => 2 + (i % 9));
const inputs = { features, ids, batch: B };

/** hidden_states computed by calling the model's pieces one by one (no hooks), image positions only. */
function direct(): Float32Array[] {
  return tf.tidy(() => {
    const img = model.projector(tf.tensor3d(features, [B, N, Dv]));
    let h = tf.concat([img, model.embedText(ids, B)], 1) as tf.Tensor3D;
    const states = [h];
    for (let i = 0; i < model.config.layers; i++) {
      h = model.block(i, h).out;
      if (i + 1 === model.config.alignLayer) {
        // The residual variant re-injects the layer-0 image embeddings here.
        const T = h.shape[1];
        h = tf.concat([tf.add(tf.slice(h, [0, 0, 0], [B, N, -1]), img), tf.slice(h, [0, N, 0], [B, T - N, -1])], 1) as tf.Tensor3D;
      }
      states.push(h);
    }
    return states.map((s) => new Float32Array(tf.slice(s, [0, 0, 0], [B, N, -1]).dataSync() as Float32Array));
  });
}

test('names: embed = hidden_states 0, blocks.{i}.out = i+1; every name resolves to a reached hook', () => {
  assert.deepEqual(blockOutputLayers(3), [
    { name: 'embed', index: 0 },
    { name: 'blocks.0.out', index: 1 },
    { name: 'blocks.1.out', index: 2 },
    { name: 'blocks.2.out', index: 3 },
  ]);
  const all = captureForward(model, inputs, { names: capturableNames(model) });
  assert.deepEqual(Object.keys(all).sort(), ['blocks.0.out', 'blocks.1.out', 'blocks.2.out', 'embed', 'projector.out']);
  assert.throws(() => captureForward(model, inputs, { names: ['blocks.9.out'] }), InputError);
  assert.throws(() => captureForward(model, inputs, { positions: [0, 400] }), /outside/);
});

test('captureForward equals a direct forward of the same layers at the image positions, and positions select tokens', () => {
  const want = direct();
  const got = captureForward(model, inputs);
  blockOutputLayers(3).forEach((l, i) => {
    const t = got[l.name]!;
    assert.deepEqual([t.samples, t.tokens, t.dim], [B, N, 8]);
    for (let j = 0; j < t.data.length; j++) assert.ok(Math.abs(t.data[j]! - want[i]![j]!) < 1e-5, `${l.name}[${j}]: ${t.data[j]} vs ${want[i]![j]}`);
  });
  // Non-contiguous positions (two runs) pick exactly those tokens.
  const sub = captureForward(model, inputs, { names: ['blocks.1.out'], positions: [1, 2, 5] })['blocks.1.out']!;
  const full = got['blocks.1.out']!;
  for (let b = 0; b < B; b++) {
    [1, 2, 5].forEach((p, k) => {
      for (let d = 0; d < 8; d++) assert.equal(sub.data[(b * 3 + k) * 8 + d], full.data[(b * N + p) * 8 + d]);
    });
  }
});

test('TrainingCapture: step-<N> captures with variant, step, grid, labels and targets; values equal the direct forward', async () => {
  const runDir = join(tmp, 'run-a');
  const target = { samples: B, tokens: N, dim: 4, data: Float32Array.from({ length: B * N * 4 }, (_, i) => i / 10) };
  const written: number[] = [];
  const cap = new TrainingCapture(model, {
    runDir,
    every: 5,
    totalSteps: 12,
    probe: inputs,
    sampleIds: ['s0', 's1', 's2'],
    labels: { colour_r0c0: ['red', 'none', 'blue'], n_objects: [1, 0, 2] },
    targets: [{ name: 'teacher', description: 'test teacher', features: target }],
    variant: 'residual',
    model: { name: 'test mini-llava', hidden_size: 8, num_layers: 3, residual_layers: [2] },
    grid: [2, 3],
    provenance: { backend: 'test' },
    shardSize: 2,
    dtype: 'F32',
    onWritten: (_dir, step) => written.push(step),
  });
  assert.deepEqual([0, 1, 5, 10, 11, 12].map((s) => cap.isCaptureStep(s)), [true, false, true, true, false, true]);
  cap.onStep(0);
  // The write is queued, not done, when capture returns (the training loop is not blocked).
  assert.deepEqual(written, []);
  cap.onStep(3);
  cap.onStep(5);
  const dirs = await cap.flush();
  assert.deepEqual(dirs, [join(runDir, 'step-0'), join(runDir, 'step-5')]);
  assert.deepEqual(written, [0, 5]);
  for (const d of dirs) assert.deepEqual(await validateCapture(d), []);
  const runs = await listRuns(runDir);
  assert.deepEqual(runs.map((r) => [r.run, r.step, r.variant]), [
    ['run-a', 0, 'residual'],
    ['run-a', 5, 'residual'],
  ]);
  const c = await openCapture(join(runDir, 'step-0'));
  assert.equal(c.manifest.checkpoint?.step, 0);
  assert.deepEqual(c.manifest.token_layout, { kind: 'image', tokens: N, source_tokens: N, grid: [2, 3], pooling: 'none' });
  assert.deepEqual(c.labels.colour_r0c0, ['red', 'none', 'blue']);
  assert.deepEqual(c.layers.map((l) => [l.name, l.index]), blockOutputLayers(3).map((l) => [l.name, l.index]));
  assert.equal((await readdir(join(runDir, 'step-0', 'layers', '001'))).length, 2, 'two shards of ≤ 2 samples');
  const want = direct();
  for (const [i, l] of blockOutputLayers(3).entries()) {
    const t = await c.readLayer(l.name);
    for (let j = 0; j < t.data.length; j++) assert.ok(Math.abs(t.data[j]! - want[i]![j]!) < 1e-5);
  }
  assert.deepEqual((await c.readTarget('teacher')).data, target.data);
  assert.equal(c.targets[0]!.description, 'test teacher');
});

test('TrainingCapture: a write error surfaces from flush(), not from the training loop', async () => {
  const cap = new TrainingCapture(model, {
    runDir: join(tmp, 'run-a'), // step-0 already holds a capture there
    every: 1,
    totalSteps: 1,
    probe: inputs,
    sampleIds: ['s0', 's1', 's2'],
    targets: [],
    variant: 'residual',
    model: { name: 'test' },
    grid: [2, 3],
    provenance: {},
  });
  assert.doesNotThrow(() => cap.capture(0));
  await assert.rejects(cap.flush(), /already holds a capture/);
});

test('captureAttention: the text→image rows of the blocks.{i}.attn weights, [sample][layer][head][query][token]', () => {
  const queries = [N + 3, N + TURN_LEN - 2];
  const maps = captureAttention(model, inputs, queries);
  const { layers: L, heads: H } = model.config;
  assert.equal(maps.length, B * L * H * queries.length * N);
  const T = N + turns * TURN_LEN;
  const full = new Map<string, Float32Array>();
  tf.tidy(() => {
    model.forward(inputs, { attention: true, hook: (name, x) => name.endsWith('.attn') && full.set(name, new Float32Array(x.dataSync() as Float32Array)) });
  });
  for (let b = 0; b < B; b++) {
    for (let l = 0; l < L; l++) {
      const a = full.get(`blocks.${l}.attn`)!;
      for (let h = 0; h < H; h++) {
        queries.forEach((q, qi) => {
          for (let t = 0; t < N; t++) {
            assert.equal(maps[(((b * L + l) * H + h) * queries.length + qi) * N + t], a[((b * H + h) * T + q) * T + t]);
          }
        });
      }
    }
  }
});
