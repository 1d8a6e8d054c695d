import { CholeskyDecomposition, Matrix as MlMatrix } from 'ml-matrix';

/**
 * Ridge regression for a continuous label on standardised features:
 *   minimise (1/n)·Σ_i (y_i − x_i·w − b)² + λ·‖w‖²
 * Closed form with ml-matrix's Cholesky: primal (XᵀX + nλI)w = Xᵀy when d ≤ n, dual w = Xᵀ(XXᵀ + nλI)⁻¹y when
 * d > n (hidden states are 4096-d, probes often see a few hundred images). X and y are centred first, so the
 * intercept is unpenalised: b = ȳ − x̄·w.
 */
export interface RidgeModel {
  d: number;
  w: Float64Array;
  b: number;
}

export function fitRidge(X: Float64Array, n: number, d: number, y: Float64Array, lambda: number): RidgeModel {
  const xMean = new Float64Array(d);
  let yMean = 0;
  for (let i = 0; i < n; i++) {
    yMean += y[i]!;
    for (let j = 0; j < d; j++) xMean[j]! += X[i * d + j]!;
  }
  yMean /= n;
  for (let j = 0; j < d; j++) xMean[j]! /= n;
  const Xc = new MlMatrix(n, d);
  for (let i = 0; i < n; i++) for (let j = 0; j < d; j++) Xc.set(i, j, X[i * d + j]! - xMean[j]!);
  const yc = MlMatrix.columnVector(Array.from(y, (v) => v - yMean));
  const reg = n * lambda;
  let w: MlMatrix;
  if (d <= n) {
    const A = Xc.transpose().mmul(Xc);
    for (let j = 0; j < d; j++) A.set(j, j, A.get(j, j) + reg);
    w = new CholeskyDecomposition(A).solve(Xc.transpose().mmul(yc));
  } else {
    const K = Xc.mmul(Xc.transpose());
    for (let i = 0; i < n; i++) K.set(i, i, K.get(i, i) + reg);
    w = Xc.transpose().mmul(new CholeskyDecomposition(K).solve(yc));
  }
  const wa = Float64Array.from(w.getColumn(0));
  let b = yMean;
  for (let j = 0; j < d; j++) b -= xMean[j]! * wa[j]!;
  return { d, w: wa, b };
}

export function predictRidge(model: RidgeModel, X: Float64Array, n: number): Float64Array {
  const out = new Float64Array(n);
  for (let i = 0; i < n; i++) {
    let s = model.b;
    for (let j = 0; j < model.d; j++) s += X[i * model.d + j]! * model.w[j]!;
    out[i] = s;
  }
  return out;
}
