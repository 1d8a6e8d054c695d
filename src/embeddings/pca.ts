/**
 * Principal components of a set of rows (samples or tokens), top few only.
 *
 * The scatter matrix is formed once, on whichever side is smaller: the n×n Gram matrix of the centred rows when
 * n ≤ d (one image's 576 tokens × 4096 dims), else the d×d cross product. With an engine that product runs there
 * (the engine is the only place for O(n²·d) work); without one it runs in float64 loops here. The top components
 * of the symmetric m×m matrix come from block subspace iteration with Rayleigh–Ritz steps, the small b×b
 * eigenproblems solved by ml-matrix: a full m×m eigendecomposition in ml-matrix takes ~1 s at m = 576, and a PCA-RGB
 * panel needs only 3 components.
 */
import { EigenvalueDecomposition, Matrix as MlMatrix } from 'ml-matrix';
import type { Engine } from '../engine/index.js';
import { InputError } from '../core/errors.js';
import type { Matrix } from '../core/matrix.js';
import { gaussian, mulberry32 } from '../core/rng.js';

export interface PcaOptions {
  /** Computes the scatter product (Gram or cross product) of the centred rows; default: float64 loops here. */
  engine?: Engine;
  /**
   * Scores of an earlier fit on the same rows (n × `components`, row-major). Each component's sign is chosen so that
   * its scores correlate positively with the same component there (e.g. the previous layer, or another variant's
   * same layer), so colours stay comparable across panels. Without it: the score of largest magnitude is positive.
   */
  alignTo?: { scores: Float64Array; components: number };
  /** Seed of the random start subspace (the result does not depend on it beyond the convergence tolerance). */
  seed?: number;
  /** Relative residual ‖Sv − λv‖ / λ₁ at which a component counts as converged (default 1e-7). */
  tol?: number;
  maxIter?: number;
}

export interface PcaResult {
  n: number;
  d: number;
  components: number;
  /** n × components, row-major: the centred rows projected on the principal axes. */
  scores: Float64Array;
  /** Sample variance along each axis (eigenvalue of the scatter matrix / (n − 1)). */
  variance: Float64Array;
  /** variance / total variance (sum over all d dimensions). */
  explainedRatio: Float64Array;
  totalVariance: number;
  /** Subspace iterations used (0 when solved directly). */
  iterations: number;
  converged: boolean;
}

/** Problems no larger than this are solved by one dense eigendecomposition. */
const DIRECT_LIMIT = 48;

export async function pca(x: Matrix, components: number, options: PcaOptions = {}): Promise<PcaResult> {
  const { rows: n, cols: d } = x;
  if (!Number.isInteger(components) || components < 1) throw new InputError(`pca: components must be a positive integer, got ${components}`);
  if (n < 2) throw new InputError(`pca: needs at least 2 rows, got ${n}`);
  const c = Math.min(components, n - 1, d);

  // Centre in float64.
  const mean = new Float64Array(d);
  for (let i = 0; i < n; i++) for (let j = 0; j < d; j++) mean[j]! += x.data[i * d + j]!;
  for (let j = 0; j < d; j++) mean[j]! /= n;
  const xc = new Float64Array(n * d);
  for (let i = 0; i < n; i++) for (let j = 0; j < d; j++) xc[i * d + j] = x.data[i * d + j]! - mean[j]!;

  const gramSide = n <= d;
  const m = gramSide ? n : d;
  const s = gramSide ? await gram(xc, n, d, options.engine) : await crossProduct(xc, n, d, options.engine);
  let total = 0;
  for (let i = 0; i < m; i++) total += s[i * m + i]!;

  const eig = topEigen(s, m, c, options);
  const scores = new Float64Array(n * c);
  if (gramSide) {
    // S = Xc·Xcᵀ = U Λ Uᵀ ⇒ scores = U·√Λ.
    for (let j = 0; j < c; j++) {
      const root = Math.sqrt(Math.max(0, eig.values[j]!));
      for (let i = 0; i < n; i++) scores[i * c + j] = eig.vectors[i * c + j]! * root;
    }
  } else {
    // S = Xcᵀ·Xc = V Λ Vᵀ ⇒ scores = Xc·V.
    for (let i = 0; i < n; i++) {
      for (let j = 0; j < c; j++) {
        let acc = 0;
        for (let k = 0; k < d; k++) acc += xc[i * d + k]! * eig.vectors[k * c + j]!;
        scores[i * c + j] = acc;
      }
    }
  }
  fixSigns(scores, n, c, options.alignTo);

  const variance = new Float64Array(c);
  const explainedRatio = new Float64Array(c);
  for (let j = 0; j < c; j++) {
    const lambda = Math.max(0, eig.values[j]!);
    variance[j] = lambda / (n - 1);
    explainedRatio[j] = total > 0 ? lambda / total : 0;
  }
  return {
    n,
    d,
    components: c,
    scores,
    variance,
    explainedRatio,
    totalVariance: total / (n - 1),
    iterations: eig.iterations,
    converged: eig.converged,
  };
}

/** Deterministic signs: correlate with `alignTo`, else make the largest-magnitude score positive. */
function fixSigns(scores: Float64Array, n: number, c: number, alignTo?: { scores: Float64Array; components: number }): void {
  if (alignTo && alignTo.scores.length !== n * alignTo.components) {
    throw new InputError(`pca: alignTo has ${alignTo.scores.length} values, expected ${n} rows × ${alignTo.components}`);
  }
  for (let j = 0; j < c; j++) {
    let flip = false;
    if (alignTo && j < alignTo.components) {
      let dot = 0;
      for (let i = 0; i < n; i++) dot += scores[i * c + j]! * alignTo.scores[i * alignTo.components + j]!;
      flip = dot < 0;
    } else {
      let best = 0;
      for (let i = 0; i < n; i++) if (Math.abs(scores[i * c + j]!) > Math.abs(best)) best = scores[i * c + j]!;
      flip = best < 0;
    }
    if (flip) for (let i = 0; i < n; i++) scores[i * c + j] = -scores[i * c + j]!;
  }
}

function toEngineMatrix(xc: Float64Array, n: number, d: number, engine: Engine): Matrix {
  return { rows: n, cols: d, data: engine.precision === 'float64' ? xc : Float32Array.from(xc) };
}

async function gram(xc: Float64Array, n: number, d: number, engine?: Engine): Promise<Float64Array> {
  if (engine) {
    const a = toEngineMatrix(xc, n, d, engine);
    const tile = await engine.gramTile(a, 0, n, a);
    const g = Float64Array.from(tile);
    // Float32 products are not exactly symmetric; the eigen solver assumes symmetry.
    for (let i = 0; i < n; i++) for (let j = i + 1; j < n; j++) g[i * n + j] = g[j * n + i] = 0.5 * (g[i * n + j]! + g[j * n + i]!);
    return g;
  }
  const g = new Float64Array(n * n);
  for (let i = 0; i < n; i++) {
    for (let j = i; j < n; j++) {
      let acc = 0;
      for (let k = 0; k < d; k++) acc += xc[i * d + k]! * xc[j * d + k]!;
      g[i * n + j] = acc;
      g[j * n + i] = acc;
    }
  }
  return g;
}

async function crossProduct(xc: Float64Array, n: number, d: number, engine?: Engine): Promise<Float64Array> {
  if (engine) {
    const a = toEngineMatrix(xc, n, d, engine);
    const s = Float64Array.from(await engine.crossProduct(a, a));
    for (let i = 0; i < d; i++) for (let j = i + 1; j < d; j++) s[i * d + j] = s[j * d + i] = 0.5 * (s[i * d + j]! + s[j * d + i]!);
    return s;
  }
  const s = new Float64Array(d * d);
  for (let r = 0; r < n; r++) {
    const off = r * d;
    for (let i = 0; i < d; i++) {
      const v = xc[off + i]!;
      if (v === 0) continue;
      for (let j = i; j < d; j++) s[i * d + j]! += v * xc[off + j]!;
    }
  }
  for (let i = 0; i < d; i++) for (let j = 0; j < i; j++) s[i * d + j] = s[j * d + i]!;
  return s;
}

export interface EigenResult {
  /** Largest first. */
  values: Float64Array;
  /** m × c, row-major; column j is the unit eigenvector of values[j]. */
  vectors: Float64Array;
  iterations: number;
  converged: boolean;
}

/** The c largest eigenpairs of a symmetric m×m matrix (row-major). */
export function topEigen(s: Float64Array, m: number, c: number, options: { seed?: number; tol?: number; maxIter?: number } = {}): EigenResult {
  if (s.length !== m * m) throw new Error(`topEigen: matrix has ${s.length} values, expected ${m}×${m}`);
  if (m <= DIRECT_LIMIT) return directEigen(s, m, c);
  const tol = options.tol ?? 1e-7;
  const maxIter = options.maxIter ?? 500;
  // Oversampling speeds convergence to (λ_{b+1}/λ_c)^t and protects against near-ties at the c-th value.
  const b = Math.min(m, c + Math.max(8, c));
  const rand = mulberry32(options.seed ?? 0x5eed);
  let q = new Float64Array(m * b);
  for (let i = 0; i < q.length; i++) q[i] = gaussian(rand);
  orthonormalise(q, m, b);

  let values = new Float64Array(b);
  let ritz = new Float64Array(m * b);
  for (let it = 1; it <= maxIter; it++) {
    const z = symMul(s, m, q, b);
    // Rayleigh–Ritz: T = Qᵀ S Q, eigenvectors W; Ritz vectors V = Q·W, and S·V = Z·W.
    const t = new MlMatrix(b, b);
    for (let i = 0; i < b; i++) {
      for (let j = i; j < b; j++) {
        let acc = 0;
        for (let r = 0; r < m; r++) acc += q[r * b + i]! * z[r * b + j]!;
        t.set(i, j, acc);
        t.set(j, i, acc);
      }
    }
    const evd = new EigenvalueDecomposition(t, { assumeSymmetric: true });
    const order = evd.realEigenvalues.map((v, i) => [v, i] as const).sort((a, bb) => bb[0] - a[0]);
    const w = evd.eigenvectorMatrix;
    values = Float64Array.from(order, ([v]) => v);
    ritz = new Float64Array(m * b);
    const sv = new Float64Array(m * b);
    for (let r = 0; r < m; r++) {
      for (let k = 0; k < b; k++) {
        const col = order[k]![1];
        let a1 = 0;
        let a2 = 0;
        for (let i = 0; i < b; i++) {
          const wv = w.get(i, col);
          a1 += q[r * b + i]! * wv;
          a2 += z[r * b + i]! * wv;
        }
        ritz[r * b + k] = a1;
        sv[r * b + k] = a2;
      }
    }
    const scale = Math.max(Math.abs(values[0]!), Number.MIN_VALUE);
    let worst = 0;
    for (let k = 0; k < c; k++) {
      let res = 0;
      for (let r = 0; r < m; r++) res += (sv[r * b + k]! - values[k]! * ritz[r * b + k]!) ** 2;
      worst = Math.max(worst, Math.sqrt(res) / scale);
    }
    if (worst <= tol || values[0] === 0) return pick(values, ritz, m, b, c, it, true);
    q = sv;
    orthonormalise(q, m, b);
  }
  return pick(values, ritz, m, b, c, maxIter, false);
}

function pick(values: Float64Array, vectors: Float64Array, m: number, b: number, c: number, iterations: number, converged: boolean): EigenResult {
  const out = new Float64Array(m * c);
  for (let r = 0; r < m; r++) for (let k = 0; k < c; k++) out[r * c + k] = vectors[r * b + k]!;
  return { values: values.slice(0, c), vectors: out, iterations, converged };
}

function directEigen(s: Float64Array, m: number, c: number): EigenResult {
  const a = new MlMatrix(m, m);
  for (let i = 0; i < m; i++) for (let j = 0; j < m; j++) a.set(i, j, 0.5 * (s[i * m + j]! + s[j * m + i]!));
  const evd = new EigenvalueDecomposition(a, { assumeSymmetric: true });
  const order = evd.realEigenvalues.map((v, i) => [v, i] as const).sort((x, y) => y[0] - x[0]);
  const v = evd.eigenvectorMatrix;
  const vectors = new Float64Array(m * c);
  for (let r = 0; r < m; r++) for (let k = 0; k < c; k++) vectors[r * c + k] = v.get(r, order[k]![1]);
  return { values: Float64Array.from(order.slice(0, c), ([x]) => x), vectors, iterations: 0, converged: true };
}

/** S·Q for symmetric S (m×m) and Q (m×b), both row-major. */
function symMul(s: Float64Array, m: number, q: Float64Array, b: number): Float64Array {
  const out = new Float64Array(m * b);
  for (let i = 0; i < m; i++) {
    const oi = i * b;
    for (let j = 0; j < m; j++) {
      const v = s[i * m + j]!;
      if (v === 0) continue;
      const qj = j * b;
      for (let k = 0; k < b; k++) out[oi + k]! += v * q[qj + k]!;
    }
  }
  return out;
}

/** Modified Gram–Schmidt on the columns of an m×b row-major matrix (two passes per column, for orthogonality). */
function orthonormalise(q: Float64Array, m: number, b: number): void {
  for (let k = 0; k < b; k++) {
    for (let attempt = 0; attempt <= m; attempt++) {
      let before = 0;
      for (let r = 0; r < m; r++) before += q[r * b + k]! ** 2;
      for (let pass = 0; pass < 2; pass++) {
        for (let p = 0; p < k; p++) {
          let dot = 0;
          for (let r = 0; r < m; r++) dot += q[r * b + k]! * q[r * b + p]!;
          for (let r = 0; r < m; r++) q[r * b + k]! -= dot * q[r * b + p]!;
        }
      }
      let norm = 0;
      for (let r = 0; r < m; r++) norm += q[r * b + k]! ** 2;
      if (norm > 1e-20 * before && norm > 0) {
        const inv = 1 / Math.sqrt(norm);
        for (let r = 0; r < m; r++) q[r * b + k]! *= inv;
        break;
      }
      // The column lies in the span of the previous ones (rank-deficient S): restart it from a coordinate vector.
      for (let r = 0; r < m; r++) q[r * b + k] = r === (k + attempt) % m ? 1 : 0;
    }
  }
}
