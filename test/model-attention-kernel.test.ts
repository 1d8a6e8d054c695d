/**
 * The fused causal attention kernel (demo/model/attention-kernel.ts) against tfjs's own ops and autodiff:
 * softmax(scale·q·kᵀ + mask)·v and the gradients of a loss through it, on random inputs.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs';
import { initBackend } from '../demo/model/backend.js';
import { causalAttention, causalAttentionWeights } from '../demo/model/attention-kernel.js';
import { mulberry32 } from '../demo/model/scenes.js';

await initBackend();

function random(shape: [number, number, number], seed: number): tf.Tensor3D {
  const rng = mulberry32(seed);
  return tf.tensor3d(Float32Array.from({ length: shape[0] * shape[1] * shape[2] }, () => rng() * 4 - 2), shape);
}

/** The reference: tfjs ops with an additive −∞-like mask, as the model computes attention on other backends. */
function reference(q: tf.Tensor3D, k: tf.Tensor3D, v: tf.Tensor3D, scale: number): { ctx: tf.Tensor3D; p: tf.Tensor3D } {
  const T = q.shape[1];
  const mask = tf.tensor2d(Float32Array.from({ length: T * T }, (_, i) => (i % T > Math.floor(i / T) ? -1e9 : 0)), [T, T]);
  const p = tf.softmax(tf.add(tf.mul(tf.matMul(q, k, false, true), scale), mask)) as tf.Tensor3D;
  return { ctx: tf.matMul(p, v), p };
}

function maxAbsDiff(a: tf.Tensor, b: tf.Tensor): number {
  return tf.tidy(() => tf.max(tf.abs(tf.sub(a, b))).dataSync()[0]!);
}

test('fused causal attention: forward, weights and gradients match tfjs ops and autodiff', () => {
  for (const [shape, scale] of [
    [[3, 5, 4], 0.5],
    [[8, 17, 16], 0.25],
  ] as const) {
    tf.tidy(() => {
      const q = random([...shape], 1);
      const k = random([...shape], 2);
      const v = random([...shape], 3);
      // A loss that weights every output differently, so a wrong index in any gradient shows.
      const w = random([...shape], 4);
      const loss = (f: (a: tf.Tensor3D, b: tf.Tensor3D, c: tf.Tensor3D) => tf.Tensor3D) => (a: tf.Tensor, b: tf.Tensor, c: tf.Tensor) =>
        tf.sum(tf.mul(f(a as tf.Tensor3D, b as tf.Tensor3D, c as tf.Tensor3D), w)) as tf.Scalar;
      const fused = causalAttention(q, k, v, scale);
      const ref = reference(q, k, v, scale);
      assert.ok(maxAbsDiff(fused, ref.ctx) < 1e-5, `ctx ${shape}: ${maxAbsDiff(fused, ref.ctx)}`);
      const p = causalAttentionWeights(q, k, v, scale);
      assert.ok(maxAbsDiff(p, ref.p) < 1e-6, `weights ${shape}`);
      // Rows are distributions over the keys at or before the query.
      const pa = p.dataSync();
      const T = shape[1];
      for (let r = 0; r < shape[0] * T; r++) {
        let s = 0;
        for (let j = 0; j < T; j++) {
          if (j > r % T) assert.equal(pa[r * T + j], 0);
          s += pa[r * T + j]!;
        }
        assert.ok(Math.abs(s - 1) < 1e-5);
      }
      const gFused = tf.grads(loss((a, b, c) => causalAttention(a, b, c, scale)))([q, k, v]);
      const gRef = tf.grads(loss((a, b, c) => reference(a, b, c, scale).ctx))([q, k, v]);
      ['q', 'k', 'v'].forEach((name, i) => {
        const d = maxAbsDiff(gFused[i]!, gRef[i]!);
        assert.ok(d < 1e-4, `d${name} ${shape}: max |diff| ${d}`);
        assert.ok(maxAbsDiff(gRef[i]!, tf.zerosLike(gRef[i]!)) > 1e-2, `d${name} is not trivially zero`);
      });
    });
  }
});
