import { ParamError } from '../core/errors.js';

/** Mean and sample standard deviation (n − 1), ignoring NaN; `count` is the number of finite values used. */
export function meanSd(values: ArrayLike<number>): { mean: number; sd: number; count: number } {
  let n = 0;
  let mean = 0;
  let m2 = 0;
  // Welford: one pass, no cancellation when the values share a large offset.
  for (let i = 0; i < values.length; i++) {
    const v = values[i]!;
    if (!Number.isFinite(v)) continue;
    n++;
    const d = v - mean;
    mean += d / n;
    m2 += d * (v - mean);
  }
  return { mean: n ? mean : NaN, sd: n > 1 ? Math.sqrt(m2 / (n - 1)) : NaN, count: n };
}

/**
 * The p-quantile of values with linear interpolation between order statistics (Hyndman & Fan type 7, the default
 * of R and NumPy), so numbers match what users compute elsewhere. NaN values are dropped first.
 */
export function quantile(values: ArrayLike<number>, p: number): number {
  const sorted = Float64Array.from(values).filter((v) => Number.isFinite(v)).sort();
  return quantileSorted(sorted, p);
}

export function quantileSorted(sorted: ArrayLike<number>, p: number): number {
  const n = sorted.length;
  if (n === 0) return NaN;
  const h = (n - 1) * p;
  const lo = Math.floor(h);
  const hi = Math.min(n - 1, lo + 1);
  return sorted[lo]! + (h - lo) * (sorted[hi]! - sorted[lo]!);
}

export function checkLevel(level: number, param = 'ci'): void {
  if (!(level > 0 && level < 1)) throw new ParamError(param, `confidence level must be in (0, 1), got ${level}`);
}

/**
 * Inverse of the standard normal CDF (Acklam's rational approximation, relative error < 1.2e-9), used for the
 * Wilson interval's z. No dependency needed for one function.
 */
export function normalQuantile(p: number): number {
  if (!(p > 0 && p < 1)) return p === 0 ? -Infinity : p === 1 ? Infinity : NaN;
  const a = [-3.969683028665376e1, 2.209460984245205e2, -2.759285104469687e2, 1.38357751867269e2, -3.066479806614716e1, 2.506628277459239];
  const b = [-5.447609879822406e1, 1.615858368580409e2, -1.556989798598866e2, 6.680131188771972e1, -1.328068155288572e1];
  const c = [-7.784894002430293e-3, -3.223964580411365e-1, -2.400758277161838, -2.549732539343734, 4.374664141464968, 2.938163982698783];
  const d = [7.784695709041462e-3, 3.224671290700398e-1, 2.445134137142996, 3.754408661907416];
  const lowP = 0.02425;
  if (p < lowP) {
    const q = Math.sqrt(-2 * Math.log(p));
    return (((((c[0]! * q + c[1]!) * q + c[2]!) * q + c[3]!) * q + c[4]!) * q + c[5]!) / ((((d[0]! * q + d[1]!) * q + d[2]!) * q + d[3]!) * q + 1);
  }
  if (p > 1 - lowP) return -normalQuantile(1 - p);
  const q = p - 0.5;
  const r = q * q;
  return ((((((a[0]! * r + a[1]!) * r + a[2]!) * r + a[3]!) * r + a[4]!) * r + a[5]!) * q) /
    (((((b[0]! * r + b[1]!) * r + b[2]!) * r + b[3]!) * r + b[4]!) * r + 1);
}

/**
 * Wilson score interval for a binomial proportion (Wilson 1927): good coverage near 0 and 1 and for small n, where
 * the Wald interval fails. Assumes independent trials (e.g. one prediction per image).
 */
export function wilsonInterval(successes: number, n: number, level = 0.95): { low: number; high: number } {
  checkLevel(level);
  if (n === 0) return { low: NaN, high: NaN };
  const z = normalQuantile(1 - (1 - level) / 2);
  const p = successes / n;
  const z2 = z * z;
  const centre = (p + z2 / (2 * n)) / (1 + z2 / n);
  const half = (z / (1 + z2 / n)) * Math.sqrt((p * (1 - p)) / n + z2 / (4 * n * n));
  return { low: Math.max(0, centre - half), high: Math.min(1, centre + half) };
}

/** Percentile interval of resampled statistics. */
export function percentileInterval(stats: ArrayLike<number>, level: number): { low: number; high: number } {
  checkLevel(level);
  const sorted = Float64Array.from(stats).filter((v) => Number.isFinite(v)).sort();
  const alpha = (1 - level) / 2;
  return { low: quantileSorted(sorted, alpha), high: quantileSorted(sorted, 1 - alpha) };
}
