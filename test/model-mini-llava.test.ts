/**
 * The mini-LLaVA (demo/model/mini-llava.ts, ops.ts, train.ts): shapes, causal masking, the VIRAL loss against a
 * hand-computed value, the residual path, one training step, and the custom matMul gradient against references.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { initBackend } from '../demo/model/backend.js';
import { defaultConfig, hookPoints, MiniLlava, shufflePatches, viralLoss, type MiniLlavaConfig, type ModelVariant } from '../demo/model/mini-llava.js';
import { matMul2d } from '../demo/model/ops.js';
import { TURN_LEN, VOCAB } from '../demo/model/scenes.js';
import { trainStep } from '../demo/model/train.js';

const backend = await initBackend();
const N = 4; // 2×2 image grid
const Dv = 6;
const Dt = 5;

function small(variant: ModelVariant, extra: Partial<MiniLlavaConfig> = {}): MiniLlava {
  return new MiniLlava(
    defaultConfig({ variant, seed: 3, vocabSize: VOCAB.length, imageTokens: N, grid: [2, 2], visionDim: Dv, teacherDim: Dt, width: 16, layers: 4, heads: 2, viralHidden: 8, ...extra }),
  );
}

function seeded(n: number, seed: number): Float32Array {
  let s = seed >>> 0;
  return Float32Array.from({ length: n }, () => {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    return s / 2 ** 31 - 1;
  });
}

const B = 2;
const turns = 2;
const ids = Int32Array.from({ length: B * turns * TURN_LEN }, (_, i) => 1 + ((i * 7) % (VOCAB.length - 1)));
const features = seeded(B * N * Dv, 11);

/** Every hook tensor of one forward pass, as host arrays. */
function hooked(model: MiniLlava, feats: Float32Array, tokens: Int32Array, attention = false): Map<string, { shape: number[]; data: Float32Array }> {
  const out = new Map<string, { shape: number[]; data: Float32Array }>();
  tf.tidy(() => {
    model.forward(
      { features: feats, ids: tokens, batch: B },
      { attention, hook: (name, x) => out.set(name, { shape: x.shape, data: new Float32Array(x.dataSync() as Float32Array) }) },
    );
  });
  return out;
}

test(`backend: reports what ran (${backend.description})`, () => {
  assert.ok(['wasm', 'cpu', 'tensorflow'].includes(backend.name));
  assert.equal(backend.device === 'gpu', backend.name === 'tensorflow', 'only the tfjs-node-gpu binding may claim a GPU');
  assert.equal(tf.getBackend(), backend.name);
});

test('shapes: hidden states [B, N+T, W], answer logits [B·turns, V], every hook point is reached', () => {
  const model = small('viral');
  try {
    const h = hooked(model, features, ids, true);
    const T = N + turns * TURN_LEN;
    assert.deepEqual(h.get('projector.out')!.shape, [B, N, 16]);
    assert.deepEqual(h.get('embed')!.shape, [B, T, 16]);
    for (let i = 0; i < 4; i++) {
      assert.deepEqual(h.get(`blocks.${i}.out`)!.shape, [B, T, 16]);
      assert.deepEqual(h.get(`blocks.${i}.attn`)!.shape, [B, 2, T, T]);
    }
    // viral.pred is a loss-time hook: reached through losses().
    tf.tidy(() => {
      model.losses({ features, ids, batch: B, answers: new Int32Array(B * turns), teacher: seeded(B * N * Dt, 5) }, TURN_LEN, {
        hook: (name, x) => h.set(name, { shape: x.shape, data: new Float32Array(0) }),
      });
    });
    for (const name of hookPoints(model.config)) assert.ok(h.has(name), `hook ${name} not reached`);
    assert.deepEqual(h.get('viral.pred')!.shape, [B, N, Dt]);
    const logits = tf.tidy(() => model.answerLogits(model.forward({ features, ids, batch: B }).last, TURN_LEN).shape);
    assert.deepEqual(logits, [B * turns, VOCAB.length]);
    // The image positions of `embed` are exactly the projector output (positions enter only through RoPE there).
    const p = h.get('projector.out')!.data;
    const e = h.get('embed')!.data;
    for (let b = 0; b < B; b++) for (let i = 0; i < N * 16; i++) assert.equal(e[b * T * 16 + i], p[b * N * 16 + i]);
  } finally {
    model.dispose();
  }
});

test('causal: changing a later token leaves every earlier position of every layer unchanged; attention above the diagonal is 0', () => {
  const model = small('baseline');
  try {
    const T = N + turns * TURN_LEN;
    const j = 5; // text position 5 → sequence position N + 5
    const changed = new Int32Array(ids);
    for (let b = 0; b < B; b++) changed[b * turns * TURN_LEN + j] = (ids[b * turns * TURN_LEN + j]! + 3) % VOCAB.length;
    const a = hooked(model, features, ids, true);
    const c = hooked(model, features, changed);
    const W = 16;
    for (const name of ['embed', 'blocks.0.out', 'blocks.1.out', 'blocks.2.out', 'blocks.3.out']) {
      const x = a.get(name)!.data;
      const y = c.get(name)!.data;
      let laterDiff = 0;
      for (let b = 0; b < B; b++) {
        for (let t = 0; t < T; t++) {
          for (let d = 0; d < W; d++) {
            const i = (b * T + t) * W + d;
            if (t < N + j) assert.equal(y[i], x[i], `${name}: position ${t} changed when a later token changed`);
            else laterDiff = Math.max(laterDiff, Math.abs(y[i]! - x[i]!));
          }
        }
      }
      assert.ok(laterDiff > 1e-4, `${name}: positions from ${N + j} on should change (max diff ${laterDiff})`);
    }
    const attn = a.get('blocks.2.attn')!.data; // [B, H, T, T]
    for (let bh = 0; bh < B * 2; bh++) {
      for (let q = 0; q < T; q++) {
        let sum = 0;
        for (let k = 0; k < T; k++) {
          const w = attn[(bh * T + q) * T + k]!;
          if (k > q) assert.equal(w, 0, `query ${q} attends to future key ${k}`);
          sum += w;
        }
        assert.ok(Math.abs(sum - 1) < 1e-5);
      }
    }
  } finally {
    model.dispose();
  }
});

test('VIRAL loss: −mean cosine, against hand-computed values', () => {
  // Token 1: pred (3, 4) vs target (6, 8) → cos 1. Token 2: (1, 0) vs (1, 1) → 1/√2. Token 3: (0, 2) vs (0, −5) → −1.
  const pred = tf.tensor3d([3, 4, 1, 0, 0, 2], [1, 3, 2]);
  const target = tf.tensor3d([6, 8, 1, 1, 0, -5], [1, 3, 2]);
  const v = viralLoss(pred, target).dataSync()[0]!;
  assert.ok(Math.abs(v - -(1 + Math.SQRT1_2 - 1) / 3) < 1e-6, `got ${v}`);
  // Scale invariance in both arguments, and the total = LM + λ·L_VRA with λ = 0.5.
  const v2 = viralLoss(tf.mul(pred, 7), tf.mul(target, 0.1)).dataSync()[0]!;
  assert.ok(Math.abs(v2 - v) < 1e-6);
  tf.dispose([pred, target]);
  const model = small('viral');
  try {
    const teacher = seeded(B * N * Dt, 5);
    const answers = Int32Array.from({ length: B * turns }, (_, i) => i + 2);
    const [total, lm, vra] = tf.tidy(() => {
      const l = model.losses({ features, ids, batch: B, answers, teacher }, TURN_LEN);
      return [l.total.dataSync()[0]!, l.lm.dataSync()[0]!, l.vra!.dataSync()[0]!];
    });
    assert.ok(Math.abs(total! - (lm! + 0.5 * vra!)) < 1e-5);
    assert.ok(vra! >= -1 && vra! <= 1);
  } finally {
    model.dispose();
  }
});

test('residual: layers before the injection point are identical to the baseline, layers from it on differ (image positions only at ℓ)', () => {
  const base = small('baseline');
  const res = small('residual');
  try {
    const l = res.config.alignLayer;
    assert.equal(l, 2);
    const a = hooked(base, features, ids);
    const r = hooked(res, features, ids);
    const T = N + turns * TURN_LEN;
    const W = 16;
    const names = ['embed', 'blocks.0.out', 'blocks.1.out', 'blocks.2.out', 'blocks.3.out'];
    names.forEach((name, index) => {
      const x = a.get(name)!.data;
      const y = r.get(name)!.data;
      let imgDiff = 0;
      let textDiff = 0;
      for (let b = 0; b < B; b++) {
        for (let t = 0; t < T; t++) {
          for (let d = 0; d < W; d++) {
            const i = (b * T + t) * W + d;
            if (t < N) imgDiff = Math.max(imgDiff, Math.abs(x[i]! - y[i]!));
            else textDiff = Math.max(textDiff, Math.abs(x[i]! - y[i]!));
          }
        }
      }
      if (index < l) {
        assert.equal(imgDiff + textDiff, 0, `${name} (hidden_states ${index}) must equal the baseline`);
      } else if (index === l) {
        assert.ok(imgDiff > 1e-3, `${name}: image positions must include the re-injected embeddings`);
        assert.equal(textDiff, 0, `${name}: text positions are not touched at the injection point`);
        // Exactly baseline + embed at the image positions.
        const e = a.get('embed')!.data;
        for (let b = 0; b < B; b++) for (let i = 0; i < N * W; i++) assert.ok(Math.abs(y[b * T * W + i]! - (x[b * T * W + i]! + e[b * T * W + i]!)) < 1e-5);
      } else {
        assert.ok(imgDiff > 1e-3 && textDiff > 1e-4, `${name}: everything after the injection point changes`);
      }
    });
  } finally {
    base.dispose();
    res.dispose();
  }
});

test('training: one step lowers the loss on a fixed batch, for every variant; no tensors leak', () => {
  for (const variant of ['baseline', 'residual', 'viral'] as const) {
    const model = small(variant);
    const opt = tf.train.adam(3e-3);
    try {
      const batch = { batch: B, features, teacher: seeded(B * N * Dt, 5), ids, answers: Int32Array.from({ length: B * turns }, (_, i) => 10 + i), types: [], images: [] };
      const before = tf.memory().numTensors;
      const first = trainStep(model, opt, batch, 1);
      const afterFirst = tf.memory().numTensors;
      const second = trainStep(model, opt, batch, 1);
      assert.ok(second.loss < first.loss, `${variant}: loss ${first.loss} → ${second.loss}`);
      assert.equal(tf.memory().numTensors, afterFirst, `${variant}: a training step leaks tensors`);
      // New after the first step: Adam's two slots per variable, its two beta powers, RoPE tables and the mask (cached).
      assert.ok(afterFirst - before <= 2 * model.params.size + 5, `${afterFirst - before} new tensors after the first step`);
      if (variant === 'viral') assert.ok(first.vra !== null && second.vra! < first.vra!);
      else assert.equal(first.vra, null);
    } finally {
      opt.dispose();
      model.dispose();
    }
  }
});

test('same seed: the variants start from identical shared weights', () => {
  const a = small('baseline');
  const v = small('viral');
  try {
    for (const [name, p] of a.params) assert.deepEqual(p.dataSync(), v.param(name).dataSync(), name);
    assert.ok(v.params.has('viral.fc3.w') && !a.params.has('viral.fc3.w'));
  } finally {
    a.dispose();
    v.dispose();
  }
});

test('matMul2d: custom gradient equals hand-computed and tfjs built-in gradients', () => {
  // L = Σ W ∘ (A·B) → dL/dA = W·Bᵀ, dL/dB = Aᵀ·W, computed here with plain loops.
  const m = 3;
  const k = 4;
  const n = 2;
  const A = seeded(m * k, 1);
  const Bm = seeded(k * n, 2);
  const Wm = seeded(m * n, 3);
  const dA = new Float64Array(m * k);
  const dB = new Float64Array(k * n);
  for (let i = 0; i < m; i++) for (let p = 0; p < k; p++) for (let j = 0; j < n; j++) dA[i * k + p]! += Wm[i * n + j]! * Bm[p * n + j]!;
  for (let p = 0; p < k; p++) for (let j = 0; j < n; j++) for (let i = 0; i < m; i++) dB[p * n + j]! += A[i * k + p]! * Wm[i * n + j]!;
  const w = tf.tensor2d(Wm, [m, n]);
  const f = (mm: (a: tf.Tensor, b: tf.Tensor) => tf.Tensor) => tf.grads((a: tf.Tensor, b: tf.Tensor) => tf.sum(tf.mul(mm(a, b), w)));
  const [ga, gb] = f(matMul2d)([tf.tensor2d(A, [m, k]), tf.tensor2d(Bm, [k, n])]);
  const [ra, rb] = f((a, b) => tf.matMul(a as tf.Tensor2D, b as tf.Tensor2D))([tf.tensor2d(A, [m, k]), tf.tensor2d(Bm, [k, n])]);
  const close = (x: ArrayLike<number>, y: ArrayLike<number>, what: string) => {
    assert.equal(x.length, y.length);
    for (let i = 0; i < x.length; i++) assert.ok(Math.abs(x[i]! - y[i]!) < 1e-5, `${what}[${i}]: ${x[i]} vs ${y[i]}`);
  };
  close(ga!.dataSync(), dA, 'dA vs hand');
  close(gb!.dataSync(), dB, 'dB vs hand');
  close(ga!.dataSync(), ra!.dataSync(), 'dA vs tfjs');
  close(gb!.dataSync(), rb!.dataSync(), 'dB vs tfjs');
  // The forward value too.
  close(matMul2d(tf.tensor2d(A, [m, k]), tf.tensor2d(Bm, [k, n])).dataSync(), tf.matMul(tf.tensor2d(A, [m, k]), tf.tensor2d(Bm, [k, n])).dataSync(), 'value');
});

test('shufflePatches: a seeded per-sample permutation of whole tokens', () => {
  const tokens = 5;
  const dim = 3;
  const x = Float32Array.from({ length: 2 * tokens * dim }, (_, i) => i);
  const a = shufflePatches(x, 2, tokens, dim, 7);
  assert.deepEqual(a, shufflePatches(x, 2, tokens, dim, 7));
  assert.notDeepEqual(a, x);
  for (let b = 0; b < 2; b++) {
    const rows = Array.from({ length: tokens }, (_, t) => Array.from(a.subarray((b * tokens + t) * dim, (b * tokens + t + 1) * dim)));
    // Each row is an original row of the same sample (first value a multiple of dim within the sample).
    const starts = rows.map((r) => r[0]!).sort((p, q) => p - q);
    assert.deepEqual(starts, Array.from({ length: tokens }, (_, t) => (b * tokens + t) * dim));
    for (const r of rows) assert.deepEqual(r, [r[0]!, r[0]! + 1, r[0]! + 2]);
  }
});
