/**
 * The few tensor ops the mini-LLaVA needs, written so that training is fast on tfjs's wasm backend:
 *
 * - The wasm backend sends only a plain matMul (no transpose flags, batch 1) to XNNPACK's fully-connected kernel;
 *   anything else takes a scalar loop. tfjs's built-in matMul gradient uses the transpose flags, so every backward
 *   matmul would take the slow path. `matMul2d` carries a custom gradient that transposes explicitly and then
 *   calls a flag-free matMul (measured here: an MLP step 50 → 10 ms). Batched matMuls (attention) have no fast
 *   path either way; there the built-in gradient measured faster than explicit transposes, so attention uses it.
 * - `gather` has no gradient on wasm (its UnsortedSegmentSum is missing), so embeddings are one-hot × matrix.
 */
import * as tf from '@tensorflow/tfjs';

/** a [m, k] · b [k, n] with a gradient made of flag-free matMuls. */
export const matMul2d: (a: tf.Tensor, b: tf.Tensor) => tf.Tensor2D = tf.customGrad(
  // customGrad's typing is variadic over Tensor | GradSaveFunc; the call site below always passes (a, b, save).
  ((a: tf.Tensor2D, b: tf.Tensor2D, save: tf.GradSaveFunc) => {
    save([a, b]);
    return {
      value: tf.matMul(a, b),
      gradFunc: (dy: tf.Tensor, saved: tf.Tensor[]) => {
        const [sa, sb] = saved as [tf.Tensor2D, tf.Tensor2D];
        return [tf.matMul(dy as tf.Tensor2D, tf.transpose(sb)), tf.matMul(tf.transpose(sa), dy as tf.Tensor2D)];
      },
    };
  }) as unknown as Parameters<typeof tf.customGrad<tf.Tensor2D>>[0],
);

/** x [..., k] · w [k, n] (+ bias): flattens the leading axes so the product is one 2-D matMul. */
export function linear(x: tf.Tensor, w: tf.Tensor, bias?: tf.Tensor): tf.Tensor {
  const k = x.shape[x.shape.length - 1]!;
  const lead = x.shape.slice(0, -1);
  let y: tf.Tensor = matMul2d(tf.reshape(x, [-1, k]), w);
  if (bias) y = tf.add(y, bias);
  return tf.reshape(y, [...lead, w.shape[1]!]);
}

/** RMSNorm (Zhang & Sennrich 2019) over the last axis with a learned gain, as in Llama/Vicuna. */
export function rmsNorm(x: tf.Tensor, gain: tf.Tensor, eps = 1e-6): tf.Tensor {
  const ms = tf.mean(tf.square(x), -1, true);
  return tf.mul(tf.mul(x, tf.rsqrt(tf.add(ms, eps))), gain);
}

export function silu(x: tf.Tensor): tf.Tensor {
  return tf.mul(x, tf.sigmoid(x));
}

/** Row-wise cosine similarity of two [..., d] tensors → [...]. */
export function rowCosine(a: tf.Tensor, b: tf.Tensor, eps = 1e-8): tf.Tensor {
  const dot = tf.sum(tf.mul(a, b), -1);
  const na = tf.sqrt(tf.add(tf.sum(tf.square(a), -1), eps));
  const nb = tf.sqrt(tf.add(tf.sum(tf.square(b), -1), eps));
  return tf.div(dot, tf.mul(na, nb));
}
