/**
 * Uncertainty for every similarity score: a permutation null (is there any correspondence at all?) and a
 * confidence interval over images (how much would the score move with other images?). Usable from the CLI
 * (layerwise, compare) and the server: give it the two prepared `Features` and the observed `MetricResult`.
 *
 * Permutation null: B's rows are re-paired with A's by a random permutation π (image- or row-level, see
 * `RowPermuter`). kNN metrics never recompute a Gram product: B's lists are relabelled (`permuteKnn`). CKA uses the
 * two centred n×n Grams once (O(n²) per permutation) while n ≤ `gramLimit`, else recomputes A̅ᵀB̅π per permutation.
 * p = (1 + #{null ≥ observed}) / (1 + #finite nulls), one-sided (larger = more similar for every metric here).
 *
 * Confidence interval — why not the textbook bootstrap: resampling with replacement duplicates rows, and a
 * duplicated row is its own twin's nearest neighbour (kernel value = its squared norm), which rewrites every kNN
 * list it touches; unbiased HSIC's off-diagonal sums are distorted the same way. So the interval uses HALF-SAMPLING
 * (delete-d jackknife, Shao & Wu 1989; subsampling, Politis, Romano & Wolf 1999): each draw keeps m = ⌊f·G⌋ of the G
 * images WITHOUT replacement (every token of a kept image), k is rescaled to k_m = max(2, round(k·(n_m − 1)/(n − 1)))
 * so the neighbourhood covers the same fraction of the data, and the metric is recomputed on the subsample. kNN lists
 * of a subsample are read off the full-sample lists computed once with a larger K (`restrictKnn`, exact); a draw
 * where some row lacks enough cached neighbours is recomputed from the features (counted in `boot_recomputed`).
 * The spread of the draws around their own mean, scaled by √(m/(G − m)) (the finite-population factor that makes the
 * half-sample spread estimate the full-sample one; 1 at f = ½), is put around the full-sample value (basic interval):
 *   [θ̂ − s·(q_{1−α/2} − θ̄*), θ̂ − s·(q_{α/2} − θ̄*)].
 * Centring on the draws' mean θ̄* rather than θ̂ keeps the systematic effect of the smaller n out of the interval;
 * that shift is reported as `boot_shift` = θ̄* − θ̂.
 */
import type { Engine, KnnLists } from '../src/engine/index.js';
import { InputError } from '../src/core/errors.js';
import type { Matrix } from '../src/core/matrix.js';
import { computeMetric, Features, METRICS, type MetricName, type MetricResult } from '../src/metrics/index.js';
import { cknnaFromKnn } from '../src/metrics/cknna.js';
import { cycleKnnFromKnn } from '../src/metrics/cycle-knn.js';
import { mutualKnnFromKnn } from '../src/metrics/mutual-knn.js';
import {
  checkLevel,
  deriveSeed,
  meanSd,
  mulberry32,
  permutationPValue,
  permuteKnn,
  quantile,
  restrictKnn,
  RowPermuter,
  rowsByGroup,
  subsampleGroups,
  type PermutationUnit,
  type RowGroups,
} from '../src/stats/index.js';

export interface StatsOptions {
  /** Permutations for the null (0 = none). */
  permutations?: number;
  /** Half-sample draws for the confidence interval (0 = none). */
  bootstrap?: number;
  /** Confidence level, default 0.95. */
  ci?: number;
  seed?: number;
  /** Row → image / token position; default: every row is its own image. */
  groups?: RowGroups;
  /** `row` (default) or `image` (per-token rows: shuffle whole images, keep token positions). */
  permUnit?: PermutationUnit;
  /** Fraction of images kept per draw, in (0, 1); default 0.5 (half-sampling, scale factor 1). */
  subsampleFraction?: number;
  /** Largest n for which CKA statistics hold the two n×n centred Grams in memory (default 3000). */
  gramLimit?: number;
  signal?: AbortSignal;
}

/** Extra columns on a result row; absent fields = not requested. Every number says how it was made. */
export interface SimilarityStats {
  null_mean?: number;
  null_sd?: number;
  p_value?: number;
  n_perm?: number;
  perm_scheme?: string;
  perm_seed?: number;
  ci_low?: number;
  ci_high?: number;
  ci_level?: number;
  n_boot?: number;
  boot_scheme?: string;
  /** Images kept per draw, and the k used in each draw (kNN metrics). */
  boot_m?: number;
  boot_k?: number | null;
  boot_shift?: number;
  boot_recomputed?: number;
  boot_seed?: number;
}

/** Describes the stats options in one line, for table headings. */
export function describeStats(s: SimilarityStats): string {
  const parts: string[] = [];
  if (s.n_perm) parts.push(`permutation null: ${s.n_perm} permutations (${s.perm_scheme}), seed ${s.perm_seed}, p with +1 correction`);
  if (s.n_boot) parts.push(`${Math.round((s.ci_level ?? 0) * 100)}% CI: ${s.n_boot} draws, ${s.boot_scheme}, seed ${s.boot_seed}`);
  return parts.join('; ');
}

/** A metric as a function of a re-pairing (permutation) and of a subsample of rows. */
interface PairStatistic {
  permuted(perm: Int32Array): Promise<number>;
  subsample(rows: Int32Array, k: number): Promise<{ value: number; recomputed: boolean }>;
}

/**
 * Permutation null and/or half-sampling CI for one observed score. `observed` is the MetricResult that
 * `computeMetric(metric, a, b, k, …)` returned for the same features.
 */
export async function similarityStats(
  metric: MetricName,
  a: Features,
  b: Features,
  k: number,
  observed: MetricResult,
  options: StatsOptions,
): Promise<SimilarityStats> {
  const nPerm = options.permutations ?? 0;
  const nBoot = options.bootstrap ?? 0;
  const level = options.ci ?? 0.95;
  checkLevel(level);
  for (const [flag, v] of [['permutations', nPerm], ['bootstrap', nBoot]] as const) {
    if (!Number.isInteger(v) || v < 0) throw new InputError(`--${flag}: expected an integer ≥ 0, got ${v}`);
  }
  if (a.n !== b.n) throw new InputError(`${a.label} has ${a.n} rows, ${b.label} has ${b.n}`);
  const seed = options.seed ?? 0;
  const n = a.n;
  const groups = options.groups ?? { group: Int32Array.from({ length: n }, (_, i) => i), position: new Int32Array(n) };
  if (groups.group.length !== n) throw new InputError(`stats: ${groups.group.length} row groups for ${n} rows`);
  const out: SimilarityStats = {};
  // Nothing asked: no Grams, and the rows of a file-backed matrix stay in the engine.
  if (nPerm === 0 && nBoot === 0) return out;
  const stat = await pairStatistic(metric, a, b, k, options.gramLimit ?? 3000, options.subsampleFraction ?? 0.5);

  if (nPerm > 0) {
    const permuter = new RowPermuter(n, options.permUnit ?? 'row', groups);
    // The same permutations for every layer and target (seed depends on the metric only): common random numbers
    // make the nulls of neighbouring layers comparable.
    const permSeed = deriveSeed(seed, 'perm', metric);
    const rng = mulberry32(permSeed);
    const nulls = new Float64Array(nPerm);
    for (let t = 0; t < nPerm; t++) {
      options.signal?.throwIfAborted();
      nulls[t] = await stat.permuted(permuter.next(rng));
    }
    const { mean, sd } = meanSd(nulls);
    Object.assign(out, {
      null_mean: mean,
      null_sd: sd,
      p_value: permutationPValue(observed.value, nulls),
      n_perm: nPerm,
      perm_scheme: permuter.describe(),
      perm_seed: permSeed,
    });
  }

  if (nBoot > 0) {
    const f = options.subsampleFraction ?? 0.5;
    if (!(f > 0 && f < 1)) throw new InputError(`subsample fraction must be in (0, 1), got ${f}`);
    const byGroup = rowsByGroup(groups.group);
    const G = byGroup.rows.length;
    const m = Math.floor(f * G);
    if (m < 2 || G - m < 1) throw new InputError(`a confidence interval by half-sampling needs at least 4 images, got ${G}`);
    const bootSeed = deriveSeed(seed, 'boot', metric);
    const rng = mulberry32(bootSeed);
    const draws = new Float64Array(nBoot);
    let recomputed = 0;
    let kUsed: number | null = null;
    for (let t = 0; t < nBoot; t++) {
      options.signal?.throwIfAborted();
      const rows = subsampleGroups(byGroup, m, rng);
      const km = METRICS[metric].needsKnn ? scaledK(k, rows.length, n) : 0;
      kUsed = METRICS[metric].needsKnn ? km : null;
      const r = await stat.subsample(rows, km);
      draws[t] = r.value;
      if (r.recomputed) recomputed++;
    }
    const { mean } = meanSd(draws);
    const s = Math.sqrt(m / (G - m));
    const alpha = (1 - level) / 2;
    const theta = observed.value;
    // The basic interval can leave the metric's range (e.g. CKNNA > 1 near the top); it is clipped to the range.
    const [lo, hi] = METRICS[metric].range;
    const clip = (v: number) => Math.min(hi, Math.max(lo, v));
    Object.assign(out, {
      ci_low: clip(theta - s * (quantile(draws, 1 - alpha) - mean)),
      ci_high: clip(theta - s * (quantile(draws, alpha) - mean)),
      ci_level: level,
      n_boot: nBoot,
      boot_scheme:
        `half-sampling over images without replacement (${m} of ${G} images per draw` +
        (kUsed === null ? '' : `, k = ${kUsed} rescaled from ${k}`) +
        `), spread scaled by √(m/(G−m)) = ${s.toFixed(3)} around the full-sample value (basic interval, clipped to [${lo}, ${hi}])`,
      boot_m: m,
      boot_k: kUsed,
      boot_shift: mean - theta,
      boot_recomputed: recomputed,
      boot_seed: bootSeed,
    });
  }
  return out;
}

/** k for a subsample of `rows` out of `n` rows: the same neighbourhood fraction, at least 2, below the row count. */
export function scaledK(k: number, rows: number, n: number): number {
  return Math.min(rows - 1, Math.max(2, Math.round((k * (rows - 1)) / (n - 1))));
}

function knnMetric(metric: MetricName, a: KnnLists, b: KnnLists): number {
  if (metric === 'cknna') return cknnaFromKnn(a, b).value;
  if (metric === 'mutual_knn') return mutualKnnFromKnn(a, b);
  if (metric === 'cycle_knn') return cycleKnnFromKnn(a, b);
  throw new Error(`${metric} is not a kNN metric`);
}

export function subMatrix(x: Matrix, rows: Int32Array): Matrix {
  const d = x.cols;
  const out = x.data instanceof Float64Array ? new Float64Array(rows.length * d) : new Float32Array(rows.length * d);
  for (let r = 0; r < rows.length; r++) out.set(x.data.subarray(rows[r]! * d, (rows[r]! + 1) * d), r * d);
  return { rows: rows.length, cols: d, data: out };
}

/** K for the full-sample lists that subsample lists are read from: k_m + 1 hits expected ~3× over, plus slack. */
function cachedK(k: number, n: number, fraction: number): number {
  return Math.min(n - 1, Math.ceil((3 * (k + 1)) / fraction) + 10);
}

async function pairStatistic(metric: MetricName, a: Features, b: Features, k: number, gramLimit: number, fraction: number): Promise<PairStatistic> {
  const engine = a.engine;
  if (METRICS[metric].needsKnn) {
    const [ka, kb] = await Promise.all([a.knn(k), b.knn(k)]);
    let big: Promise<[KnnLists, KnnLists]> | undefined;
    return {
      permuted: async (perm) => knnMetric(metric, ka, permuteKnn(kb, perm)),
      subsample: async (rows, km) => {
        // Lists for the draws are read off one larger-K search per side (made on the first draw, then cached).
        big ??= (async () => {
          const K = cachedK(km, a.n, fraction);
          return Promise.all([a.knn(K), b.knn(K)]);
        })();
        const [ba, bb] = await big;
        let ra = restrictKnn(ba, rows, km);
        let rb = restrictKnn(bb, rows, km);
        const recomputed = !ra || !rb;
        ra ??= await engine.knn(subMatrix(await a.heap(), rows), km);
        rb ??= await engine.knn(subMatrix(await b.heap(), rows), km);
        return { value: knnMetric(metric, ra, rb), recomputed };
      },
    };
  }
  if (metric === 'cosine') {
    const { cosA, cosPaired } = cosineParts(await a.heap(), await b.heap());
    return {
      permuted: async (perm) => {
        let total = 0;
        for (let i = 0; i < a.n; i++) total += cosA(i, perm[i]!);
        return total / a.n;
      },
      subsample: async (rows) => {
        let total = 0;
        for (const r of rows) total += cosPaired[r]!;
        return { value: total / rows.length, recomputed: false };
      },
    };
  }
  // cka / unbiased_cka
  const unbiased = metric === 'unbiased_cka';
  if (a.n <= gramLimit) {
    const Kc = await centredGram(engine, a);
    const Lc = await centredGram(engine, b);
    const n = a.n;
    const kk = hsicFromCentredGrams(Kc, Kc, n, null);
    const ll = hsicFromCentredGrams(Lc, Lc, n, null);
    return {
      permuted: async (perm) => ckaFrom(hsicFromCentredGrams(Kc, Lc, n, perm), kk, ll, unbiased),
      subsample: async (rows) => {
        const Ks = recentre(Kc, n, rows);
        const Ls = recentre(Lc, n, rows);
        const m = rows.length;
        return {
          value: ckaFrom(hsicFromCentredGrams(Ks, Ls, m, null), hsicFromCentredGrams(Ks, Ks, m, null), hsicFromCentredGrams(Ls, Ls, m, null), unbiased),
          recomputed: false,
        };
      },
    };
  }
  // Too many rows for n×n Grams: recompute in feature space, O(n·dA·dB) per permutation or draw.
  const prep = 'stats';
  return {
    permuted: async (perm) => {
      const bp = new Features(subMatrix(await b.heap(), perm), engine, b.label);
      return (await computeMetric(metric, a, bp, k, prep)).value;
    },
    subsample: async (rows) => {
      const as = new Features(subMatrix(await a.heap(), rows), engine, a.label);
      const bs = new Features(subMatrix(await b.heap(), rows), engine, b.label);
      return { value: (await computeMetric(metric, as, bs, k, prep)).value, recomputed: true };
    },
  };
}

function cosineParts(a: Matrix, b: Matrix) {
  const d = a.cols;
  const norm = (x: Matrix) => {
    const out = new Float64Array(x.rows);
    for (let i = 0; i < x.rows; i++) {
      let s = 0;
      for (let c = 0; c < d; c++) s += x.data[i * d + c]! ** 2;
      out[i] = Math.sqrt(s);
    }
    return out;
  };
  const na = norm(a);
  const nb = norm(b);
  // Same convention as pairedCosine: a pair with a zero-norm row counts 0.
  const cosA = (i: number, j: number) => {
    if (!(na[i]! > 0 && nb[j]! > 0)) return 0;
    let s = 0;
    for (let c = 0; c < d; c++) s += a.data[i * d + c]! * b.data[j * d + c]!;
    return s / (na[i]! * nb[j]!);
  };
  const cosPaired = Float64Array.from({ length: a.rows }, (_, i) => cosA(i, i));
  return { cosA, cosPaired };
}

/** HKH for K = X·Xᵀ, from the column-centred features (Gram of the centred rows), float64. */
async function centredGram(engine: Engine, f: Features): Promise<Float64Array> {
  const c = f.centred();
  const g = await engine.gramTile(c, 0, c.rows, c);
  return g instanceof Float64Array ? g : Float64Array.from(g);
}

/** Doubly centres the restriction of an (already centred) Gram to `rows`: H_m·K_S·H_m. */
function recentre(K: Float64Array, n: number, rows: Int32Array): Float64Array {
  const m = rows.length;
  const out = new Float64Array(m * m);
  const rowMean = new Float64Array(m);
  let total = 0;
  for (let i = 0; i < m; i++) {
    let s = 0;
    for (let j = 0; j < m; j++) {
      const v = K[rows[i]! * n + rows[j]!]!;
      out[i * m + j] = v;
      s += v;
    }
    rowMean[i] = s / m;
    total += s;
  }
  const grand = total / (m * m);
  // The restricted Gram is symmetric, so row means = column means.
  for (let i = 0; i < m; i++) for (let j = 0; j < m; j++) out[i * m + j]! += grand - rowMean[i]! - rowMean[j]!;
  return out;
}

/**
 * Biased and unbiased HSIC from centred Grams, with B's rows re-paired by `perm` (null = identity). Same algebra as
 * src/metrics/cka.ts: trace(KHLH) = Σ_ij Kc_ij·Lc_ij, and HSIC_u from the centred features' squared norms (diagonals).
 */
function hsicFromCentredGrams(Kc: Float64Array, Lc: Float64Array, n: number, perm: Int32Array | null): { biased: number; unbiased: number } {
  let frob = 0;
  let sa = 0;
  let sb = 0;
  let sab = 0;
  for (let i = 0; i < n; i++) {
    const pi = perm ? perm[i]! : i;
    const kr = i * n;
    const lr = pi * n;
    if (perm) for (let j = 0; j < n; j++) frob += Kc[kr + j]! * Lc[lr + perm[j]!]!;
    else for (let j = 0; j < n; j++) frob += Kc[kr + j]! * Lc[lr + j]!;
    const na = Kc[i * n + i]!;
    const nb = Lc[pi * n + pi]!;
    sa += na;
    sb += nb;
    sab += na * nb;
  }
  const unbiased = (frob - sab + (sa * sb) / ((n - 1) * (n - 2)) - (2 * sab) / (n - 2)) / (n * (n - 3));
  return { biased: frob, unbiased };
}

function ckaFrom(kl: { biased: number; unbiased: number }, kk: { biased: number; unbiased: number }, ll: { biased: number; unbiased: number }, unbiased: boolean): number {
  if (!unbiased) return kl.biased / (Math.sqrt(kk.biased * ll.biased) + 1e-6);
  const prod = kk.unbiased * ll.unbiased;
  return prod >= 0 ? kl.unbiased / (Math.sqrt(prod) + 1e-6) : NaN;
}
