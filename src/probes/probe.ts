import { InputError } from '../core/errors.js';
import type { Matrix } from '../core/matrix.js';
import { deriveSeed, mulberry32, randInt, type Rng } from '../core/rng.js';
import { percentileInterval, wilsonInterval, checkLevel } from '../stats/summary.js';
import { applyStandardiser, fitStandardiser, groupFolds } from './cv.js';
import { fitLogistic, predictLogistic } from './logistic.js';
import { fitRidge, predictRidge } from './ridge.js';

/**
 * A linear probe: does a linear read-out of these features predict an image label, on images it was not trained on?
 * Cross-validated by image (`groupFolds`), features standardised on the training fold only, multinomial logistic
 * regression (classification) or ridge (continuous labels), plus a Hewitt & Liang (2019) control task: the same
 * probe on labels assigned at random per input TYPE (token position, image, or the value of another label), so
 * `selectivity = score − control score` says how much of the score needs the real label, not the probe's capacity
 * to memorise types.
 */
export type ProbeTask = 'classify' | 'regress';

export type ControlBy =
  /** Each image gets a random label. Images never recur across a split, so this control measures chance under the CV. */
  | { by: 'image' }
  /** Each token position gets a random label (per-token probes): can the probe read position? */
  | { by: 'position' }
  /** Each distinct value of another per-image label gets a random label. */
  | { by: 'label'; name: string; values: readonly (number | string)[] };

export interface ProbeInput {
  /** rows × d features (one row per image, or per token). */
  X: Matrix;
  /** Row → image index (an index into `labels`). */
  groups: Int32Array;
  /** Row → token position (0 for pooled rows). */
  positions: Int32Array;
  /** One label per image of the capture (indexed by image id). */
  labels: readonly (number | string)[];
}

export interface ProbeOptions {
  task: ProbeTask;
  folds: number;
  seed: number;
  /** L2 strength λ, or 'cv' to choose from `l2Grid` by an inner 3-fold split (by image) of each training fold. */
  l2: number | 'cv';
  l2Grid?: number[];
  control: ControlBy | null;
  /** Confidence level of the intervals (default 0.95). */
  ci?: number;
  /** Bootstrap resamples over images for intervals that need them (default 1000). */
  bootstrap?: number;
  /** Class order for classification (default: sorted distinct labels). */
  classes?: (number | string)[];
}

export interface ProbeScore {
  task: ProbeTask;
  /** Cross-validated accuracy (classify) or out-of-fold R² (regress). */
  score: number;
  score_name: 'accuracy' | 'r2';
  ci_low: number;
  ci_high: number;
  ci_method: string;
  control_score: number | null;
  selectivity: number | null;
  selectivity_ci_low: number | null;
  selectivity_ci_high: number | null;
  /** 1 / #classes (classify). */
  chance: number | null;
  /** Accuracy of predicting each training fold's most frequent class (classify). */
  majority: number | null;
  n_images: number;
  n_rows: number;
  dim: number;
  /** λ used in each fold. */
  l2: number[];
  folds: number;
  folds_converged: number;
  /** confusion[true][predicted], counts over rows (classify). */
  confusion: number[][] | null;
}

export const DEFAULT_L2_GRID = [1e-4, 1e-3, 1e-2, 1e-1, 1, 10];

/** Encodes labels as class ids (classify) or numbers (regress); throws on labels that do not fit the task. */
export function encodeLabels(labels: readonly (number | string)[], task: ProbeTask, classes?: (number | string)[]) {
  if (task === 'regress') {
    const y = labels.map((v, i) => {
      if (typeof v !== 'number') throw new InputError(`label value ${i} is '${v}': a continuous probe (--task regress) needs numbers`);
      return v;
    });
    return { y: Float64Array.from(y), classes: null };
  }
  const cls = classes ?? [...new Set(labels)].sort((a, b) => (typeof a === 'number' && typeof b === 'number' ? a - b : String(a).localeCompare(String(b))));
  const index = new Map(cls.map((c, i) => [c, i]));
  const y = Int32Array.from(labels, (v) => {
    const c = index.get(v);
    if (c === undefined) throw new InputError(`label value '${v}' is not one of the classes ${cls.join(', ')}`);
    return c;
  });
  if (cls.length < 2) throw new InputError(`a classification probe needs at least 2 classes, the label has ${cls.length}`);
  return { y, classes: cls };
}

/** Picks classify for strings and for integers with few distinct values (counts), regress otherwise. */
export function inferTask(labels: readonly (number | string)[]): ProbeTask {
  if (labels.some((v) => typeof v === 'string')) return 'classify';
  const distinct = new Set(labels);
  return labels.every((v) => Number.isInteger(v)) && distinct.size <= 20 ? 'classify' : 'regress';
}

interface FoldOutcome {
  /** Out-of-fold predictions per row (class id or value). */
  pred: Float64Array;
  l2: number[];
  converged: number;
}

export function runProbe(input: ProbeInput, options: ProbeOptions): ProbeScore {
  const { X, groups } = input;
  const n = X.rows;
  const d = X.cols;
  if (groups.length !== n || input.positions.length !== n) throw new InputError(`probe: ${n} rows but ${groups.length} group ids`);
  const level = options.ci ?? 0.95;
  checkLevel(level);
  const task = options.task;
  const enc = encodeLabels(input.labels, task, options.classes);
  const C = enc.classes?.length ?? 0;
  // Row labels
  const yRow = new Float64Array(n);
  for (let r = 0; r < n; r++) yRow[r] = enc.y[groups[r]!]!;
  const images = Int32Array.from(new Set(groups)).sort();
  const G = images.length;
  const foldRng = mulberry32(deriveSeed(options.seed, 'folds'));
  const strata = task === 'classify' ? Array.from(images, (g) => enc.y[g]!) : undefined;
  const foldOf = groupFolds(images, options.folds, foldRng, strata);
  // Per-image sums for the image bootstrap (and Wilson when there is one row per image).
  const imageIndex = new Map<number, number>();
  images.forEach((g, i) => imageIndex.set(g, i));
  const run: ProbeRun = { input, options, task, n, d, G, C, yRow, foldOf, imageIndex, level, bootN: options.bootstrap ?? 1000 };

  const real = outcome(run, yRow);
  const { score, ci, ciMethod } = scoreInterval(run, real);
  const control = options.control ? controlScores(run, real, score, options.control) : null;
  let majority: number | null = null;
  let confusion: number[][] | null = null;
  if (task === 'classify') {
    majority = majorityAccuracy(groups, foldOf, yRow, options.folds, C);
    confusion = Array.from({ length: C }, () => new Array<number>(C).fill(0));
    for (let r = 0; r < n; r++) confusion[yRow[r]!]![real.fold.pred[r]!]!++;
  }
  return {
    task,
    score,
    score_name: task === 'classify' ? 'accuracy' : 'r2',
    ci_low: ci.low,
    ci_high: ci.high,
    ci_method: ciMethod,
    control_score: control?.score ?? null,
    selectivity: control?.selectivity ?? null,
    selectivity_ci_low: control?.ci.low ?? null,
    selectivity_ci_high: control?.ci.high ?? null,
    chance: task === 'classify' ? 1 / C : null,
    majority,
    n_images: G,
    n_rows: n,
    dim: d,
    l2: real.fold.l2,
    folds: options.folds,
    folds_converged: real.fold.converged,
    confusion,
  };
}

/** What every step of one probe shares: the data, its image folds and the interval settings. */
interface ProbeRun {
  input: ProbeInput;
  options: ProbeOptions;
  task: ProbeTask;
  n: number;
  d: number;
  /** Images, and classes (0 for regression). */
  G: number;
  C: number;
  yRow: Float64Array;
  foldOf: Map<number, number>;
  imageIndex: Map<number, number>;
  level: number;
  bootN: number;
}

/** Cross-validated predictions for labels `y`, with their per-image sums. */
function outcome(run: ProbeRun, y: Float64Array): { fold: FoldOutcome; sums: ImageSums; correct: Float64Array | null } {
  const { input, n, d, task, C, options } = run;
  const fold = crossValidate(input.X.data, n, d, input.groups, run.foldOf, y, task, C, options);
  const correct = task === 'classify' ? Float64Array.from(fold.pred, (p, r) => (p === y[r] ? 1 : 0)) : null;
  return { fold, sums: perImageSums(input.groups, run.imageIndex, run.G, y, fold.pred, correct), correct };
}

/** The score statistic over images; `w` = bootstrap weights per image, null = every image once. */
function statistic(task: ProbeTask): (s: ImageSums, w: Float64Array | null) => number {
  return task === 'classify' ? (s, w) => weightedAccuracy(s, w) : r2;
}

/** Accuracy (Wilson interval with one row per image, else image bootstrap) or R² (image bootstrap). */
function scoreInterval(run: ProbeRun, real: ReturnType<typeof outcome>): { score: number; ci: { low: number; high: number }; ciMethod: string } {
  const { n, G, level, bootN, task } = run;
  const bootRng = mulberry32(deriveSeed(run.options.seed, 'probe-boot'));
  const pct = Math.round(level * 100);
  if (task !== 'classify') {
    const ci = percentileInterval(bootstrapImages(G, bootN, bootRng, (w) => r2(real.sums, w)), level);
    return { score: r2(real.sums, null), ci, ciMethod: `percentile bootstrap over images (${bootN} resamples), ${pct}%` };
  }
  const hits = real.correct!.reduce((s, v) => s + v, 0);
  if (n === G) return { score: hits / n, ci: wilsonInterval(hits, n, level), ciMethod: `Wilson score interval, ${pct}%, n = ${n} images` };
  return {
    score: hits / n,
    ci: percentileInterval(bootstrapImages(G, bootN, bootRng, (w) => weightedAccuracy(real.sums, w)), level),
    ciMethod: `percentile bootstrap over images (${bootN} resamples, tokens of a resampled image kept together), ${pct}%`,
  };
}

/** The control task's score, and the selectivity (real − control) with a paired image-bootstrap interval. */
function controlScores(run: ProbeRun, real: ReturnType<typeof outcome>, score: number, control: NonNullable<ProbeOptions['control']>) {
  const { options, G, bootN, level } = run;
  const yControl = controlLabels(run.input, control, run.yRow, mulberry32(deriveSeed(options.seed, 'control')));
  const ctrl = outcome(run, yControl);
  const stat = statistic(run.task);
  const controlScore = stat(ctrl.sums, null);
  // Paired: the same resampled images for the real and the control task.
  const selRng = mulberry32(deriveSeed(options.seed, 'selectivity-boot'));
  const ci = percentileInterval(bootstrapImages(G, bootN, selRng, (w) => stat(real.sums, w) - stat(ctrl.sums, w)), level);
  return { score: controlScore, selectivity: score - controlScore, ci };
}

function rowsWhere(groups: Int32Array, foldOf: Map<number, number>, test: (fold: number) => boolean): Int32Array {
  const out: number[] = [];
  for (let r = 0; r < groups.length; r++) if (test(foldOf.get(groups[r]!)!)) out.push(r);
  return Int32Array.from(out);
}

function crossValidate(
  data: Float32Array | Float64Array,
  n: number,
  d: number,
  groups: Int32Array,
  foldOf: Map<number, number>,
  y: Float64Array,
  task: ProbeTask,
  C: number,
  options: ProbeOptions,
): FoldOutcome {
  const pred = new Float64Array(n);
  const l2: number[] = [];
  let converged = 0;
  for (let f = 0; f < options.folds; f++) {
    const train = rowsWhere(groups, foldOf, (x) => x !== f);
    const test = rowsWhere(groups, foldOf, (x) => x === f);
    if (test.length === 0) continue;
    const lambda = options.l2 === 'cv' ? chooseLambda(data, d, groups, train, y, task, C, options, f) : options.l2;
    l2.push(lambda);
    const fit = fitAndPredict(data, d, train, test, y, task, C, lambda);
    if (fit.converged) converged++;
    test.forEach((r, i) => (pred[r] = fit.pred[i]!));
  }
  return { pred, l2, converged };
}

/** Standardise on `train`, fit, predict `test`. */
function fitAndPredict(data: Float32Array | Float64Array, d: number, train: Int32Array, test: Int32Array, y: Float64Array, task: ProbeTask, C: number, lambda: number) {
  const s = fitStandardiser(data, d, train);
  const Xtr = applyStandardiser(data, d, train, s);
  const Xte = applyStandardiser(data, d, test, s);
  if (task === 'classify') {
    const ytr = Int32Array.from(train, (r) => y[r]!);
    const model = fitLogistic(Xtr, train.length, d, ytr, C, lambda);
    return { pred: Float64Array.from(predictLogistic(model, Xte, test.length)), converged: model.converged };
  }
  const model = fitRidge(Xtr, train.length, d, Float64Array.from(train, (r) => y[r]!), lambda);
  return { pred: predictRidge(model, Xte, test.length), converged: true };
}

/** Inner 3-fold split by image of the training rows; the λ with the best inner score (ties: the larger λ). */
function chooseLambda(
  data: Float32Array | Float64Array,
  d: number,
  groups: Int32Array,
  train: Int32Array,
  y: Float64Array,
  task: ProbeTask,
  C: number,
  options: ProbeOptions,
  outerFold: number,
): number {
  const grid = options.l2Grid ?? DEFAULT_L2_GRID;
  const trainImages = Int32Array.from(new Set(Array.from(train, (r) => groups[r]!))).sort();
  const inner = Math.min(3, trainImages.length);
  const innerFold = groupFolds(trainImages, inner, mulberry32(deriveSeed(options.seed, 'inner', outerFold)));
  let best = grid[0]!;
  let bestScore = -Infinity;
  for (const lambda of grid) {
    let total = 0;
    for (let f = 0; f < inner; f++) {
      const tr = train.filter((r) => innerFold.get(groups[r]!) !== f);
      const te = train.filter((r) => innerFold.get(groups[r]!) === f);
      const p = fitAndPredict(data, d, tr, te, y, task, C, lambda).pred;
      if (task === 'classify') p.forEach((v, i) => (total += v === y[te[i]!] ? 1 : 0));
      else p.forEach((v, i) => (total -= (v - y[te[i]!]!) ** 2));
    }
    if (total >= bestScore) {
      bestScore = total;
      best = lambda;
    }
  }
  return best;
}

/**
 * Hewitt & Liang control labels: every distinct input type gets one label drawn from the empirical distribution of
 * the real row labels; every row of that type carries it.
 */
function controlLabels(input: ProbeInput, control: ControlBy, yRow: Float64Array, rng: Rng): Float64Array {
  const n = yRow.length;
  const typeOf = (r: number): string => {
    if (control.by === 'image') return `i${input.groups[r]}`;
    if (control.by === 'position') return `p${input.positions[r]}`;
    const v = control.values[input.groups[r]!];
    if (v === undefined) throw new InputError(`control label '${control.name}' has no value for image ${input.groups[r]}`);
    return `l${typeof v}:${v}`;
  };
  const assigned = new Map<string, number>();
  const out = new Float64Array(n);
  for (let r = 0; r < n; r++) {
    const t = typeOf(r);
    let v = assigned.get(t);
    if (v === undefined) {
      v = yRow[randInt(rng, n)]!;
      assigned.set(t, v);
    }
    out[r] = v;
  }
  return out;
}

interface ImageSums {
  rows: Float64Array;
  correct: Float64Array | null;
  sse: Float64Array;
  sy: Float64Array;
  syy: Float64Array;
}

function perImageSums(groups: Int32Array, index: Map<number, number>, G: number, y: Float64Array, pred: Float64Array, correct: Float64Array | null): ImageSums {
  const s: ImageSums = {
    rows: new Float64Array(G),
    correct: correct ? new Float64Array(G) : null,
    sse: new Float64Array(G),
    sy: new Float64Array(G),
    syy: new Float64Array(G),
  };
  for (let r = 0; r < groups.length; r++) {
    const g = index.get(groups[r]!)!;
    s.rows[g]!++;
    if (correct) s.correct![g]! += correct[r]!;
    s.sse[g]! += (y[r]! - pred[r]!) ** 2;
    s.sy[g]! += y[r]!;
    s.syy[g]! += y[r]! * y[r]!;
  }
  return s;
}

/** Accuracy over rows with image weights (bootstrap multiplicities; null = all 1). */
function weightedAccuracy(s: ImageSums, w: Float64Array | null): number {
  let c = 0;
  let n = 0;
  for (let g = 0; g < s.rows.length; g++) {
    const wg = w ? w[g]! : 1;
    c += wg * s.correct![g]!;
    n += wg * s.rows[g]!;
  }
  return c / n;
}

/** Out-of-fold R² = 1 − SSE/SST, SST around the (weighted) mean of all rows. */
function r2(s: ImageSums, w: Float64Array | null): number {
  let n = 0;
  let sse = 0;
  let sy = 0;
  let syy = 0;
  for (let g = 0; g < s.rows.length; g++) {
    const wg = w ? w[g]! : 1;
    n += wg * s.rows[g]!;
    sse += wg * s.sse[g]!;
    sy += wg * s.sy[g]!;
    syy += wg * s.syy[g]!;
  }
  const sst = syy - (sy * sy) / n;
  return sst > 0 ? 1 - sse / sst : NaN;
}

/** Resamples G images with replacement `B` times; `stat` sees each image's multiplicity. */
function bootstrapImages(G: number, B: number, rng: Rng, stat: (weights: Float64Array) => number): Float64Array {
  const out = new Float64Array(B);
  const w = new Float64Array(G);
  for (let b = 0; b < B; b++) {
    w.fill(0);
    for (let i = 0; i < G; i++) w[randInt(rng, G)]!++;
    out[b] = stat(w);
  }
  return out;
}

function majorityAccuracy(groups: Int32Array, foldOf: Map<number, number>, y: Float64Array, folds: number, C: number): number {
  let hits = 0;
  for (let f = 0; f < folds; f++) {
    const counts = new Float64Array(C);
    for (let r = 0; r < groups.length; r++) if (foldOf.get(groups[r]!) !== f) counts[y[r]!]!++;
    let best = 0;
    for (let c = 1; c < C; c++) if (counts[c]! > counts[best]!) best = c;
    for (let r = 0; r < groups.length; r++) if (foldOf.get(groups[r]!) === f && y[r] === best) hits++;
  }
  return hits / groups.length;
}
