/**
 * Paired tests on binary outcomes (the same questions answered under two conditions).
 */

/** log of n choose k, via lgamma-free summation of logs (exact enough for n up to millions; O(min(k, n−k))). */
function logChoose(n: number, k: number): number {
  k = Math.min(k, n - k);
  let s = 0;
  for (let i = 1; i <= k; i++) s += Math.log(n - k + i) - Math.log(i);
  return s;
}

/** P(X ≤ x) for X ~ Binomial(n, 1/2), summed in log space so large n does not underflow term by term. */
export function binomialHalfCdf(x: number, n: number): number {
  if (x < 0) return 0;
  if (x >= n) return 1;
  let total = 0;
  let logTerm = logChoose(n, 0) - n * Math.LN2;
  for (let i = 0; i <= x; i++) {
    if (i > 0) logTerm += Math.log(n - i + 1) - Math.log(i);
    total += Math.exp(logTerm);
  }
  return Math.min(1, total);
}

export interface McNemarResult {
  /** Pairs correct under the first condition and wrong under the second (e.g. lost by shuffling). */
  b: number;
  /** Pairs wrong under the first condition and correct under the second (gained). */
  c: number;
  /** Two-sided exact p-value: 2·P(Binomial(b + c, ½) ≤ min(b, c)), capped at 1 (1 when b + c = 0). */
  p_value: number;
  method: 'mcnemar exact binomial, two-sided';
}

/**
 * McNemar's test for paired binary outcomes. Only discordant pairs carry information; under H0 each is equally
 * likely to go either way. The exact binomial form is used at every size: the χ² approximation needs b + c ≳ 25
 * and the exact one is cheap.
 */
export function mcnemarExact(first: ArrayLike<boolean>, second: ArrayLike<boolean>): McNemarResult {
  if (first.length !== second.length) throw new Error(`mcnemar: ${first.length} vs ${second.length} paired outcomes`);
  let b = 0;
  let c = 0;
  for (let i = 0; i < first.length; i++) {
    if (first[i] && !second[i]) b++;
    else if (!first[i] && second[i]) c++;
  }
  return { b, c, p_value: mcnemarP(b, c), method: 'mcnemar exact binomial, two-sided' };
}

export function mcnemarP(b: number, c: number): number {
  const n = b + c;
  if (n === 0) return 1;
  return Math.min(1, 2 * binomialHalfCdf(Math.min(b, c), n));
}
