/**
 * Limited-memory BFGS (Nocedal & Wright 2006, Alg. 7.4/7.5) with a backtracking Armijo line search, for smooth
 * convex objectives (the L2-penalised multinomial log-loss). Written here because no maintained npm package does it:
 * `ml-logistic-regression` is one-vs-rest by plain gradient descent with a fixed step count, `fmin` has no
 * quasi-Newton method and is unmaintained. On a strongly convex objective the curvature condition sᵀy > 0 holds, so
 * backtracking suffices; pairs that violate it are skipped rather than corrupting the inverse-Hessian estimate.
 */
export interface LbfgsOptions {
  /** History pairs kept (default 10). */
  memory?: number;
  maxIterations?: number;
  /** Stop when ‖g‖_∞ ≤ gradTol · max(1, |f|) (default 1e-6). */
  gradTol?: number;
  /** Stop when the objective improves by less than relTol · max(1, |f|) (default 1e-10). */
  relTol?: number;
}

export interface LbfgsResult {
  x: Float64Array;
  f: number;
  iterations: number;
  converged: boolean;
  reason: string;
}

/** `fg(x, grad)` returns f(x) and writes ∇f(x) into grad. */
export function lbfgs(fg: (x: Float64Array, grad: Float64Array) => number, x0: Float64Array, options: LbfgsOptions = {}): LbfgsResult {
  const m = options.memory ?? 10;
  const maxIter = options.maxIterations ?? 500;
  const gradTol = options.gradTol ?? 1e-6;
  const relTol = options.relTol ?? 1e-10;
  const n = x0.length;
  const x = Float64Array.from(x0);
  const g = new Float64Array(n);
  let f = fg(x, g);
  const S: Float64Array[] = [];
  const Y: Float64Array[] = [];
  const rho: number[] = [];
  const d = new Float64Array(n);
  const xNew = new Float64Array(n);
  const gNew = new Float64Array(n);
  const alpha = new Float64Array(m);
  for (let iter = 0; iter < maxIter; iter++) {
    if (infNorm(g) <= gradTol * Math.max(1, Math.abs(f))) return { x, f, iterations: iter, converged: true, reason: 'gradient' };
    twoLoopDirection(g, S, Y, rho, alpha, d);
    let slope = dot(g, d);
    if (!(slope < 0)) {
      // Not a descent direction (numerical trouble): restart from steepest descent.
      S.length = 0;
      Y.length = 0;
      rho.length = 0;
      for (let i = 0; i < n; i++) d[i] = -g[i]!;
      slope = dot(g, d);
    }
    const { fNew, accepted } = backtrack(fg, f, slope, x, d, xNew, gNew);
    if (!accepted) return { x, f, iterations: iter, converged: false, reason: 'line search failed' };
    const s = new Float64Array(n);
    const y = new Float64Array(n);
    for (let i = 0; i < n; i++) {
      s[i] = xNew[i]! - x[i]!;
      y[i] = gNew[i]! - g[i]!;
    }
    const sy = dot(s, y);
    if (sy > 1e-12 * Math.sqrt(dot(s, s) * dot(y, y))) {
      if (S.length === m) {
        S.shift();
        Y.shift();
        rho.shift();
      }
      S.push(s);
      Y.push(y);
      rho.push(1 / sy);
    }
    const improvement = f - fNew;
    x.set(xNew);
    g.set(gNew);
    f = fNew;
    if (improvement <= relTol * Math.max(1, Math.abs(f))) return { x, f, iterations: iter + 1, converged: true, reason: 'objective change' };
  }
  return { x, f, iterations: maxIter, converged: false, reason: 'iteration limit' };
}

function dot(a: Float64Array, b: Float64Array): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s += a[i]! * b[i]!;
  return s;
}

function infNorm(a: Float64Array): number {
  let s = 0;
  for (let i = 0; i < a.length; i++) s = Math.max(s, Math.abs(a[i]!));
  return s;
}

/** Two-loop recursion: d = −H·g from the stored pairs (`alpha` is scratch space of the history's length). */
function twoLoopDirection(g: Float64Array, S: Float64Array[], Y: Float64Array[], rho: number[], alpha: Float64Array, d: Float64Array): void {
  const n = g.length;
  for (let i = 0; i < n; i++) d[i] = -g[i]!;
  for (let j = S.length - 1; j >= 0; j--) {
    alpha[j] = rho[j]! * dot(S[j]!, d);
    const y = Y[j]!;
    for (let i = 0; i < n; i++) d[i]! -= alpha[j]! * y[i]!;
  }
  if (S.length) {
    const last = S.length - 1;
    const gamma = dot(S[last]!, Y[last]!) / dot(Y[last]!, Y[last]!);
    for (let i = 0; i < n; i++) d[i]! *= gamma;
  } else {
    // First step: scale so the step length is at most 1 in the ∞-norm, a safe first probe.
    const s = 1 / Math.max(1, infNorm(g));
    for (let i = 0; i < n; i++) d[i]! *= s;
  }
  for (let j = 0; j < S.length; j++) {
    const beta = rho[j]! * dot(Y[j]!, d);
    const s = S[j]!;
    for (let i = 0; i < n; i++) d[i]! += (alpha[j]! - beta) * s[i]!;
  }
}

/** Backtracking Armijo line search along d from x; leaves the accepted point and its gradient in xNew, gNew. */
function backtrack(
  fg: (x: Float64Array, grad: Float64Array) => number,
  f: number,
  slope: number,
  x: Float64Array,
  d: Float64Array,
  xNew: Float64Array,
  gNew: Float64Array,
): { fNew: number; accepted: boolean } {
  let step = 1;
  let fNew = NaN;
  for (let ls = 0; ls < 40; ls++) {
    for (let i = 0; i < x.length; i++) xNew[i] = x[i]! + step * d[i]!;
    fNew = fg(xNew, gNew);
    if (Number.isFinite(fNew) && fNew <= f + 1e-4 * step * slope) return { fNew, accepted: true };
    step *= 0.5;
  }
  return { fNew, accepted: false };
}
