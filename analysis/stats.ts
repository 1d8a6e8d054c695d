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
import { InputError, ParamError } from '../src/core/errors.js';
import { resolveMetric, type Features, type MetricName, type MetricResult, type MetricSpec, type PairStatistic } from '../src/metrics/index.js';
import {
  checkLevel,
  deriveSeed,
  meanSd,
  mulberry32,
  permutationPValue,
  quantile,
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

/**
 * Permutation null and/or half-sampling CI for one observed score. `observed` is the MetricResult that
 * `computeMetric(metric, a, b, k, …)` returned for the same features. `metric` may be a spec outside the registry.
 */
export async function similarityStats(
  metric: MetricName | MetricSpec,
  a: Features,
  b: Features,
  k: number,
  observed: MetricResult,
  options: StatsOptions,
): Promise<SimilarityStats> {
  const spec = resolveMetric(metric);
  const nPerm = options.permutations ?? 0;
  const nBoot = options.bootstrap ?? 0;
  checkLevel(options.ci ?? 0.95);
  for (const [param, v] of [['permutations', nPerm], ['bootstrap', nBoot]] as const) {
    if (!Number.isInteger(v) || v < 0) throw new ParamError(param, `expected an integer ≥ 0, got ${v}`);
  }
  if (a.n !== b.n) throw new InputError(`${a.label} has ${a.n} rows, ${b.label} has ${b.n}`);
  const n = a.n;
  const groups = options.groups ?? { group: Int32Array.from({ length: n }, (_, i) => i), position: new Int32Array(n) };
  if (groups.group.length !== n) throw new InputError(`stats: ${groups.group.length} row groups for ${n} rows`);
  // Nothing asked: no Grams, and the rows of a file-backed matrix stay in the engine.
  if (nPerm === 0 && nBoot === 0) return {};
  const fraction = options.subsampleFraction ?? 0.5;
  const stat = await spec.statistic(a, b, { k, gramLimit: options.gramLimit ?? 3000, fraction });
  const run: StatsRun = { spec, stat, n, k, groups, seed: options.seed ?? 0, observed: observed.value, options };
  return {
    ...(nPerm > 0 ? await permutationNull(run, nPerm) : {}),
    ...(nBoot > 0 ? await halfSampleInterval(run, nBoot, fraction) : {}),
  };
}

/** What both halves of the statistics share for one score. */
interface StatsRun {
  spec: MetricSpec;
  stat: PairStatistic;
  n: number;
  k: number;
  groups: RowGroups;
  seed: number;
  observed: number;
  options: StatsOptions;
}

async function permutationNull(run: StatsRun, nPerm: number): Promise<SimilarityStats> {
  const permuter = new RowPermuter(run.n, run.options.permUnit ?? 'row', run.groups);
  // The same permutations for every layer and target (seed depends on the metric only): common random numbers
  // make the nulls of neighbouring layers comparable.
  const permSeed = deriveSeed(run.seed, 'perm', run.spec.name);
  const rng = mulberry32(permSeed);
  const nulls = new Float64Array(nPerm);
  for (let t = 0; t < nPerm; t++) {
    run.options.signal?.throwIfAborted();
    nulls[t] = await run.stat.permuted(permuter.next(rng));
  }
  const { mean, sd } = meanSd(nulls);
  return {
    null_mean: mean,
    null_sd: sd,
    p_value: permutationPValue(run.observed, nulls),
    n_perm: nPerm,
    perm_scheme: permuter.describe(),
    perm_seed: permSeed,
  };
}

async function halfSampleInterval(run: StatsRun, nBoot: number, f: number): Promise<SimilarityStats> {
  const { spec, k, n } = run;
  const level = run.options.ci ?? 0.95;
  if (!(f > 0 && f < 1)) throw new InputError(`subsample fraction must be in (0, 1), got ${f}`);
  const byGroup = rowsByGroup(run.groups.group);
  const G = byGroup.rows.length;
  const m = Math.floor(f * G);
  if (m < 2 || G - m < 1) throw new InputError(`a confidence interval by half-sampling needs at least 4 images, got ${G}`);
  const bootSeed = deriveSeed(run.seed, 'boot', spec.name);
  const rng = mulberry32(bootSeed);
  const draws = new Float64Array(nBoot);
  let recomputed = 0;
  let kUsed: number | null = null;
  for (let t = 0; t < nBoot; t++) {
    run.options.signal?.throwIfAborted();
    const rows = subsampleGroups(byGroup, m, rng);
    const km = spec.needsKnn ? scaledK(k, rows.length, n) : 0;
    kUsed = spec.needsKnn ? km : null;
    const r = await run.stat.subsample(rows, km);
    draws[t] = r.value;
    if (r.recomputed) recomputed++;
  }
  const { mean } = meanSd(draws);
  const s = Math.sqrt(m / (G - m));
  const alpha = (1 - level) / 2;
  const theta = run.observed;
  // The basic interval can leave the metric's range (e.g. CKNNA > 1 near the top); it is clipped to the range.
  const [lo, hi] = spec.range;
  const clip = (v: number) => Math.min(hi, Math.max(lo, v));
  return {
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
  };
}

/** k for a subsample of `rows` out of `n` rows: the same neighbourhood fraction, at least 2, below the row count. */
export function scaledK(k: number, rows: number, n: number): number {
  return Math.min(rows - 1, Math.max(2, Math.round((k * (rows - 1)) / (n - 1))));
}

/** Re-exported for the tests and callers that built re-paired copies with it before it moved beside the metrics. */
export { subMatrix } from '../src/metrics/index.js';
