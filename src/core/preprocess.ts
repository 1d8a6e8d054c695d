import { ParamError } from './errors.js';
import type { Matrix } from './matrix.js';

export const PREPROCESS_NAMES = ['none', 'l2', 'prh'] as const;
export type Preprocess = (typeof PREPROCESS_NAMES)[number];

export interface PreprocessOptions {
  /** Quantile of |x| for the outlier clamp of `prh` (default 0.95). */
  q?: number;
}

export function parsePreprocess(name: string): Preprocess {
  if ((PREPROCESS_NAMES as readonly string[]).includes(name)) return name as Preprocess;
  throw new ParamError('preprocess', `unknown value '${name}' (expected one of ${PREPROCESS_NAMES.join(', ')})`);
}

/** A short description recorded with every result, e.g. `prh(q=0.95)`. */
export function describePreprocess(p: Preprocess, options: PreprocessOptions = {}): string {
  return p === 'prh' ? `prh(q=${options.q ?? 0.95})` : p;
}

/**
 * Returns a preprocessed copy (same float type as the input):
 * - `l2`: every row scaled to unit Euclidean norm (rows of norm 0 stay 0);
 * - `prh`: the Platonic Representation Hypothesis pipeline: clamp every element to ±q_val, where q_val is the value at
 *   index floor(q·N) of the ascending sort of |x| over all N elements (no interpolation), then `l2`.
 */
export function preprocess(m: Matrix, p: Preprocess, options: PreprocessOptions = {}): Matrix {
  const data = m.data.slice();
  if (p === 'none') return { rows: m.rows, cols: m.cols, data };
  if (p === 'prh') {
    const q = prhQuantile(options);
    if (q < 1) {
      const qVal = absQuantile(m.data, q);
      for (let i = 0; i < data.length; i++) {
        const v = data[i]!;
        data[i] = v > qVal ? qVal : v < -qVal ? -qVal : v;
      }
    }
  }
  l2NormaliseRows(data, m.cols);
  return { rows: m.rows, cols: m.cols, data };
}

/** prh's q, checked: the clamp is at the value of rank floor(q·N), so q must lie in (0, 1]. */
export function prhQuantile(options: PreprocessOptions = {}): number {
  const q = options.q ?? 0.95;
  if (!(q > 0 && q <= 1)) throw new ParamError('q', `quantile must be in (0, 1], got ${q}`);
  return q;
}

function l2NormaliseRows(data: Float32Array | Float64Array, cols: number): void {
  for (let off = 0; off < data.length; off += cols) {
    let s = 0;
    for (let c = 0; c < cols; c++) s += data[off + c]! * data[off + c]!;
    if (s === 0) continue;
    const inv = 1 / Math.sqrt(s);
    for (let c = 0; c < cols; c++) data[off + c]! *= inv;
  }
}

/**
 * The element of rank floor(q·N) (0-based) of |x| in ascending order. Quickselect, O(N) expected: a full sort of
 * 80M values (20k tokens × 4096) would cost seconds and 2× the memory.
 */
export function absQuantile(values: Float32Array | Float64Array, q: number): number {
  const n = values.length;
  const a = values instanceof Float64Array ? new Float64Array(n) : new Float32Array(n);
  for (let i = 0; i < n; i++) a[i] = Math.abs(values[i]!);
  const target = Math.min(n - 1, Math.floor(q * n));
  let lo = 0;
  let hi = n - 1;
  while (lo < hi) {
    // Median of three as pivot keeps sorted and constant inputs from going quadratic.
    const mid = (lo + hi) >>> 1;
    const x = a[lo]!, y = a[mid]!, z = a[hi]!;
    const pivot = x < y ? (y < z ? y : x < z ? z : x) : x < z ? x : y < z ? z : y;
    let i = lo;
    let j = hi;
    while (i <= j) {
      while (a[i]! < pivot) i++;
      while (a[j]! > pivot) j--;
      if (i <= j) {
        const t = a[i]!;
        a[i] = a[j]!;
        a[j] = t;
        i++;
        j--;
      }
    }
    if (target <= j) hi = j;
    else if (target >= i) lo = i;
    else break;
  }
  return a[target]!;
}
