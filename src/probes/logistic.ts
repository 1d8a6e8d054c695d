import { lbfgs, type LbfgsOptions } from './lbfgs.js';

/**
 * Multinomial (softmax) logistic regression with an L2 penalty on the weights (not the intercepts):
 *   minimise (1/n)·Σ_i −log softmax(x_i·W + b)_{y_i} + (λ/2)·‖W‖²_F
 * Strictly convex for λ > 0, so L-BFGS reaches the unique optimum. X is row-major n×d (already standardised by the
 * caller), y holds class ids in [0, C). One model for all classes, not one-vs-rest: probabilities are coherent and
 * the decision is the arg-max.
 */
export interface LogisticModel {
  d: number;
  classes: number;
  /** d×C row-major. */
  W: Float64Array;
  b: Float64Array;
  iterations: number;
  converged: boolean;
  loss: number;
}

export function fitLogistic(
  X: Float64Array,
  n: number,
  d: number,
  y: Int32Array,
  classes: number,
  lambda: number,
  options: LbfgsOptions = {},
): LogisticModel {
  const C = classes;
  const logits = new Float64Array(n * C);
  const fg = (theta: Float64Array, grad: Float64Array): number => {
    grad.fill(0);
    const W = theta.subarray(0, d * C);
    const b = theta.subarray(d * C);
    // logits = X·W + b
    for (let i = 0; i < n; i++) {
      const row = i * d;
      const out = i * C;
      for (let c = 0; c < C; c++) logits[out + c] = b[c]!;
      for (let j = 0; j < d; j++) {
        const v = X[row + j]!;
        if (v === 0) continue;
        const w = j * C;
        for (let c = 0; c < C; c++) logits[out + c]! += v * W[w + c]!;
      }
    }
    let loss = 0;
    const gW = grad.subarray(0, d * C);
    const gb = grad.subarray(d * C);
    for (let i = 0; i < n; i++) {
      const out = i * C;
      let max = -Infinity;
      for (let c = 0; c < C; c++) max = Math.max(max, logits[out + c]!);
      let z = 0;
      for (let c = 0; c < C; c++) z += Math.exp(logits[out + c]! - max);
      const logZ = max + Math.log(z);
      loss += logZ - logits[out + y[i]!]!;
      // residual r_c = p_c − 1[c = y_i], reusing the logits buffer
      for (let c = 0; c < C; c++) logits[out + c] = Math.exp(logits[out + c]! - logZ) - (c === y[i] ? 1 : 0);
      const row = i * d;
      for (let c = 0; c < C; c++) gb[c]! += logits[out + c]!;
      for (let j = 0; j < d; j++) {
        const v = X[row + j]!;
        if (v === 0) continue;
        const w = j * C;
        for (let c = 0; c < C; c++) gW[w + c]! += v * logits[out + c]!;
      }
    }
    let penalty = 0;
    for (let t = 0; t < d * C; t++) {
      gW[t] = gW[t]! / n + lambda * W[t]!;
      penalty += W[t]! * W[t]!;
    }
    for (let c = 0; c < C; c++) gb[c] = gb[c]! / n;
    return loss / n + 0.5 * lambda * penalty;
  };
  const r = lbfgs(fg, new Float64Array(d * C + C), { maxIterations: 1000, ...options });
  return { d, classes: C, W: r.x.slice(0, d * C), b: r.x.slice(d * C), iterations: r.iterations, converged: r.converged, loss: r.f };
}

/** Arg-max class per row. */
export function predictLogistic(model: LogisticModel, X: Float64Array, n: number): Int32Array {
  const { d, classes: C, W, b } = model;
  const out = new Int32Array(n);
  const z = new Float64Array(C);
  for (let i = 0; i < n; i++) {
    z.set(b);
    for (let j = 0; j < d; j++) {
      const v = X[i * d + j]!;
      if (v === 0) continue;
      for (let c = 0; c < C; c++) z[c]! += v * W[j * C + c]!;
    }
    let best = 0;
    for (let c = 1; c < C; c++) if (z[c]! > z[best]!) best = c;
    out[i] = best;
  }
  return out;
}
