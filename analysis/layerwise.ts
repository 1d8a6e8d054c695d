import type { Engine } from '../src/engine/index.js';
import { InputError } from '../src/core/errors.js';
import {
  computeMetric,
  describePreprocess,
  Features,
  METRICS,
  preprocess,
  type MetricName,
  type MetricResult,
  type Preprocess,
} from '../src/metrics/index.js';
import { checkKBelowN } from '../src/metrics/params.js';
import { readdir, stat } from 'node:fs/promises';
import { basename, dirname, join, relative, resolve, sep } from 'node:path';
import { layerProvenance, openCapture, type Capture, type LayerProvenance, type ShardRows, type Tensor3 } from '../src/store/capture.js';
import { shardDigest, shardFeatures } from '../src/engine/source.js';
import { readTensor } from '../src/store/safetensors.js';
import { readNpy } from '../src/store/npy.js';
import { locateArray, requireNonEmpty } from '../src/store/load.js';
import { rowGroups, type PermutationUnit } from '../src/stats/index.js';
import { rowsFor, subsampleRows, tokensToMatrix, type TokenMode } from '../src/core/tokens.js';
import { similarityStats, type SimilarityStats, type StatsOptions } from './stats.js';

/** A target feature set: one of the capture's own (`clip`) or a file given as NAME=PATH. */
export interface TargetSpec {
  name: string;
  path?: string;
  key?: string;
}

export interface LayerwiseOptions {
  engine: Engine;
  metrics: MetricName[];
  k: number;
  preprocess: Preprocess;
  q?: number;
  tokenMode: TokenMode;
  /** Targets to compare with; default: every target set in the capture. */
  targets?: TargetSpec[];
  /** Layers to include (names or hidden_states indices); default: all. */
  layers?: (string | number)[];
  /** Seeded subsample of rows (after token flattening) for large runs; the same rows on both sides. */
  maxRows?: number;
  seed?: number;
  /** Permutation null per score (0 = none); see analysis/stats.ts. */
  permutations?: number;
  /** Half-sampling draws for a confidence interval per score (0 = none); see analysis/stats.ts. */
  bootstrap?: number;
  /** Confidence level of the interval (default 0.95). */
  ci?: number;
  /** Permutation unit: `row` (default) or `image` (per-token: whole images shuffled, token positions kept). */
  permUnit?: PermutationUnit;
  onProgress?: (event: { stage: string; done: number; total: number }) => void;
  signal?: AbortSignal;
  /** Shared across the captures of one run: a target whose values are identical to the last one seen is reused. */
  targetCache?: TargetCache;
}

/**
 * Targets of a run's checkpoints are often the same tensor at every step (a frozen vision encoder on the same
 * images): the cache keeps the last prepared target per spec and hands it back, kNN lists included, when the next
 * capture's raw values are byte-identical (same shape and row selection); otherwise it is prepared anew.
 */
export class TargetCache {
  private readonly last = new Map<string, { t: Tensor3; rows: number; features: Features }>();
  /** File-backed targets (engines that read files): identified by the digest of their stored values. */
  private readonly lastFile = new Map<string, { digest: string; rows: number; features: Features }>();
  /** Targets prepared (and their kNN computed) vs handed back unchanged. */
  prepared = 0;
  reused = 0;

  private static key(spec: TargetSpec): string {
    return JSON.stringify([spec.name, spec.path ?? null, spec.key ?? null]);
  }

  lookup(spec: TargetSpec, t: Tensor3, rows: number): Features | undefined {
    const hit = this.last.get(TargetCache.key(spec));
    const same =
      hit !== undefined &&
      hit.rows === rows &&
      hit.t.samples === t.samples &&
      hit.t.tokens === t.tokens &&
      hit.t.dim === t.dim &&
      Buffer.from(hit.t.data.buffer, hit.t.data.byteOffset, hit.t.data.byteLength).equals(Buffer.from(t.data.buffer, t.data.byteOffset, t.data.byteLength));
    if (same) this.reused++;
    return same ? hit.features : undefined;
  }

  lookupFile(spec: TargetSpec, digest: string, rows: number): Features | undefined {
    const hit = this.lastFile.get(TargetCache.key(spec));
    const same = hit !== undefined && hit.rows === rows && hit.digest === digest;
    if (same) this.reused++;
    return same ? hit.features : undefined;
  }

  rememberFile(spec: TargetSpec, digest: string, rows: number, features: Features): void {
    const key = TargetCache.key(spec);
    if (this.lastFile.get(key)?.features === features) return;
    this.prepared++;
    this.lastFile.set(key, { digest, rows, features });
  }

  remember(spec: TargetSpec, t: Tensor3, rows: number, features: Features): void {
    const key = TargetCache.key(spec);
    if (this.last.get(key)?.features === features) return;
    this.prepared++;
    this.last.set(key, { t, rows, features });
  }
}

/** One long-form result row: the metric result plus every parameter that produced it (and its statistics, if asked). */
export interface LayerwiseRow extends MetricResult, SimilarityStats, LayerProvenance {
  target: string;
  token_mode: TokenMode;
  rows_sampled: number | null;
  seed: number | null;
}

/**
 * Layer sweep: one capture against one or more targets, every layer. A = the layer's image-token hidden states,
 * B = the target (CKNNA is asymmetric; this is the paper's orientation). Each target is loaded, flattened,
 * preprocessed and its kNN lists computed once; each layer costs one Gram product whatever the number of targets,
 * so L layers × T targets cost L + T Gram products.
 */
export async function runLayerwise(captureOrDir: Capture | string, options: LayerwiseOptions): Promise<LayerwiseRow[]> {
  const capture = typeof captureOrDir === 'string' ? await openCapture(captureOrDir) : captureOrDir;
  const plan = planSweep(capture, options);
  const targets = await prepareTargets(capture, plan, options);
  const progress = options.onProgress ?? (() => {});
  const rows: LayerwiseRow[] = [];
  for (const [li, layer] of plan.layers.entries()) {
    options.signal?.throwIfAborted();
    const a = plan.fromFiles ? plan.fileFeatures(await capture.layerRows(layer.name), `layer ${layer.name}`) : plan.prepare(await capture.readLayer(layer.name), `layer ${layer.name}`);
    for (const target of targets) {
      for (const metric of options.metrics) {
        const r = await computeMetric(metric, a, target.features, options.k, plan.prep);
        const stats = plan.groups ? await similarityStats(metric, a, target.features, options.k, r, { ...statsOf(options), seed: plan.seed, groups: plan.groups }) : {};
        rows.push({
          ...r,
          ...stats,
          ...layerProvenance(capture, layer),
          target: target.name,
          token_mode: options.tokenMode,
          rows_sampled: plan.pick ? plan.pick.length : null,
          seed: plan.pick ? plan.seed : null,
        });
      }
    }
    progress({ stage: 'layers', done: li + 1, total: plan.layers.length });
  }
  return rows;
}

/** The statistics' options among a sweep's options (only those given, so the statistics' defaults apply). */
function statsOf(o: LayerwiseOptions): StatsOptions {
  const out: StatsOptions = {};
  if (o.permutations !== undefined) out.permutations = o.permutations;
  if (o.bootstrap !== undefined) out.bootstrap = o.bootstrap;
  if (o.ci !== undefined) out.ci = o.ci;
  if (o.permUnit !== undefined) out.permUnit = o.permUnit;
  if (o.signal !== undefined) out.signal = o.signal;
  return out;
}

/** What a sweep of one capture will compute, from its manifest alone: layers, targets, rows, and how features are made. */
interface SweepPlan {
  prep: string;
  layers: ReturnType<typeof selectLayers>;
  targetSpecs: TargetSpec[];
  layerShape: { samples: number; tokens: number };
  /** Rows after token flattening, before subsampling. */
  total: number;
  seed: number;
  pick: Int32Array | null;
  needsKnn: boolean;
  /** Row → image groups when statistics are asked for, else undefined. */
  groups: ReturnType<typeof rowGroups> | undefined;
  fromFiles: boolean;
  prepare: (t: Tensor3, label: string) => Features;
  fileFeatures: (rows: ShardRows, label: string) => Features;
}

/**
 * Checks every parameter against the capture's shapes (k < n included) before any row is read or any kNN computed,
 * so a bad k on a large capture fails at once rather than after the targets' kNN.
 */
function planSweep(capture: Capture, options: LayerwiseOptions): SweepPlan {
  const m = capture.manifest;
  const q = options.q === undefined ? {} : { q: options.q };
  const layers = selectLayers(capture, options.layers);
  const targetSpecs: TargetSpec[] = options.targets?.length ? options.targets : capture.targets.map((t) => ({ name: t.name }));
  if (targetSpecs.length === 0) {
    throw new InputError(`${capture.dir}: the capture has no target feature sets; pass --target NAME=PATH`);
  }
  const tokens = m.token_layout.tokens;
  const layerShape = { samples: m.samples.count, tokens };
  const total = rowsFor(layerShape, options.tokenMode);
  const seed = options.seed ?? 0;
  const pick = subsampleRows(total, options.maxRows, seed);
  const needsKnn = options.metrics.some((x) => METRICS[x].needsKnn);
  if (needsKnn) checkKBelowN(options.k, pick ? pick.length : total);
  const wantStats = (options.permutations ?? 0) > 0 || (options.bootstrap ?? 0) > 0;
  // Resampling is over images: each row's image (and token position) after flattening and subsampling.
  const groups = wantStats ? rowGroups(m.samples.count, tokens, options.tokenMode === 'per-token', pick) : undefined;
  // An engine that reads files (torch) gets the layers and the targets (the capture's own, and --target files) as
  // descriptions of where their values lie: the values go from the files to its device without passing through Node.
  const prepOptions = { preprocess: options.preprocess, ...q };
  return {
    prep: describePreprocess(options.preprocess, q),
    layers,
    targetSpecs,
    layerShape,
    total,
    seed,
    pick,
    needsKnn,
    groups,
    fromFiles: options.engine.files !== undefined,
    prepare: (t, label) => new Features(preprocess(tokensToMatrix(t, options.tokenMode, pick ?? undefined), options.preprocess, q), options.engine, label),
    fileFeatures: (rows, label) => new Features(shardFeatures(rows, options.tokenMode, pick, prepOptions, label), options.engine, label),
  };
}

/** Each target loaded, flattened, preprocessed and its kNN computed once (or handed back by the target cache). */
async function prepareTargets(capture: Capture, plan: SweepPlan, options: LayerwiseOptions): Promise<{ name: string; features: Features }[]> {
  const progress = options.onProgress ?? (() => {});
  const targets: { name: string; features: Features }[] = [];
  for (const [i, spec] of plan.targetSpecs.entries()) {
    options.signal?.throwIfAborted();
    let features: Features;
    let rows: ShardRows | null = null;
    if (plan.fromFiles && spec.path) rows = await locateTarget({ ...spec, path: spec.path });
    else if (plan.fromFiles) {
      requireCaptureTarget(capture, spec.name);
      rows = await capture.targetRows(spec.name);
    }
    const cache = options.targetCache;
    if (rows) {
      checkTokens(rows, plan.layerShape, options.tokenMode, spec.name, capture.dir);
      const digest = cache ? await shardDigest(rows) : '';
      features = cache?.lookupFile(spec, digest, plan.total) ?? plan.fileFeatures(rows, `target ${spec.name}`);
      cache?.rememberFile(spec, digest, plan.total, features);
    } else {
      const t = await loadTarget(capture, spec);
      checkTokens(t, plan.layerShape, options.tokenMode, spec.name, capture.dir);
      features = cache?.lookup(spec, t, plan.total) ?? plan.prepare(t, `target ${spec.name}`);
      cache?.remember(spec, t, plan.total, features);
    }
    if (plan.needsKnn) await features.knn(options.k);
    targets.push({ name: spec.name, features });
    progress({ stage: 'targets', done: i + 1, total: plan.targetSpecs.length });
  }
  return targets;
}

/** A layer-sweep row of one checkpoint among several: `checkpoint` is its path relative to the captures' common parent. */
export interface CheckpointRow extends LayerwiseRow {
  checkpoint: string;
}

const STEP_DIR = /^step-(\d+)$/;

/**
 * The step-<N> captures of a run folder (as the demo and the dashboard lay them out: RUN/step-<N>/manifest.json), in
 * step order. A step folder without manifest.json yet (still being written) is listed in `pending`, not read.
 */
export async function findStepCaptures(runDir: string): Promise<{ dirs: string[]; pending: string[] }> {
  let entries;
  try {
    entries = await readdir(runDir, { withFileTypes: true });
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    throw new InputError(`${runDir}: ${code === 'ENOENT' ? 'not found' : code === 'ENOTDIR' ? 'not a directory' : `cannot read (${code})`}`);
  }
  const visible = entries.filter((e) => !e.name.startsWith('.'));
  if (visible.length === 0) throw new InputError(`${runDir}: empty folder; expected a capture directory or a run folder of step-<N>/ captures`);
  const steps = visible.filter((e) => e.isDirectory() && STEP_DIR.test(e.name)).sort((a, b) => Number(STEP_DIR.exec(a.name)![1]) - Number(STEP_DIR.exec(b.name)![1]));
  const dirs: string[] = [];
  const pending: string[] = [];
  for (const e of steps) {
    const has = await stat(join(runDir, e.name, 'manifest.json')).then(
      (st) => st.isFile(),
      () => false,
    );
    (has ? dirs : pending).push(join(runDir, e.name));
  }
  if (dirs.length === 0) {
    const folders = visible.filter((e) => e.isDirectory()).map((e) => e.name);
    const nested = [];
    for (const f of folders.slice(0, 50)) {
      const inner = await readdir(join(runDir, f)).catch(() => [] as string[]);
      if (inner.some((x) => STEP_DIR.test(x))) nested.push(f);
    }
    throw new InputError(
      `${runDir}: no step-<N>/ captures with a manifest.json${pending.length ? ` (${pending.length} step folder(s) without one yet)` : ''}` +
        (nested.length ? `; its subfolders ${nested.join(', ')} are runs: pass one of them` : folders.length ? ` (folders: ${folders.slice(0, 8).join(', ')}${folders.length > 8 ? ', …' : ''})` : ''),
    );
  }
  return { dirs, pending };
}

/** The longest common parent folder of absolute paths. */
function commonParent(paths: string[]): string {
  const split = paths.map((p) => dirname(resolve(p)).split(sep));
  const first = split[0]!;
  let n = first.length;
  for (const s of split) {
    let i = 0;
    while (i < n && s[i] === first[i]) i++;
    n = i;
  }
  return first.slice(0, n).join(sep) || sep;
}

/**
 * Several checkpoints side by side: the layer sweep of each capture, on the same samples (refused otherwise), each
 * row carrying `checkpoint` (the path relative to the common parent) and `step` (the manifest's step, else the
 * number of a step-<N> folder). A target whose values are identical in every capture has its kNN computed once.
 */
export async function runCheckpoints(dirs: readonly string[], options: LayerwiseOptions): Promise<{ rows: CheckpointRow[]; targetCache: TargetCache }> {
  if (dirs.length === 0) throw new InputError('no captures given');
  const seen = new Set<string>();
  for (const d of dirs) {
    if (seen.has(resolve(d))) throw new InputError(`capture '${d}' is given twice`);
    seen.add(resolve(d));
  }
  const captures: Capture[] = [];
  for (const d of dirs) captures.push(await openCapture(d));
  const first = captures[0]!;
  for (const c of captures.slice(1)) {
    const a = first.sampleIds;
    const b = c.sampleIds;
    if (a.length !== b.length) throw new InputError(`${c.dir}: ${b.length} samples, but ${first.dir} has ${a.length}; checkpoints are compared on the same samples`);
    const i = a.findIndex((id, j) => id !== b[j]);
    if (i >= 0) throw new InputError(`${c.dir}: sample ${i} is '${b[i]}', but in ${first.dir} it is '${a[i]}'; checkpoints are compared on the same samples in the same order`);
  }
  const parent = commonParent(captures.map((c) => c.dir));
  const targetCache = options.targetCache ?? new TargetCache();
  const rows: CheckpointRow[] = [];
  const report = options.onProgress;
  for (const [i, capture] of captures.entries()) {
    options.signal?.throwIfAborted();
    const checkpoint = relative(parent, resolve(capture.dir)).split(sep).join('/') || basename(capture.dir);
    const folderStep = STEP_DIR.exec(basename(capture.dir));
    const part = await runLayerwise(capture, {
      ...options,
      targetCache,
      ...(report ? { onProgress: (e) => report({ stage: `${checkpoint} ${e.stage}`, done: e.done, total: e.total }) } : {}),
    });
    for (const r of part) rows.push({ ...r, step: r.step ?? (folderStep ? Number(folderStep[1]) : null), checkpoint });
    report?.({ stage: 'checkpoints', done: i + 1, total: captures.length });
  }
  return { rows, targetCache };
}

/**
 * The distinct warnings of a set of result rows (e.g. CKNNA at small n), each once with where it applies; warnings
 * that differ only in the value (`CKNNA = 1.0213 > 1 …`) are counted together with their largest value. At most `max`
 * lines, then a count of the rest.
 */
export function summariseWarnings(rows: readonly { warning?: string; layer?: string; target?: string; capture?: string }[], max = 4): string[] {
  const groups = new Map<string, { at: string[]; top: number }>();
  for (const r of rows) {
    if (!r.warning) continue;
    const value = /CKNNA = ([\d.]+) > 1/.exec(r.warning);
    const key = value ? r.warning.replace(value[0], 'CKNNA > 1') : r.warning;
    const g = groups.get(key) ?? { at: [], top: -Infinity };
    g.at.push([r.capture, r.layer === undefined ? undefined : `layer ${r.layer}`, r.target === undefined ? undefined : `vs ${r.target}`].filter(Boolean).join(' '));
    if (value) g.top = Math.max(g.top, Number(value[1]));
    groups.set(key, g);
  }
  const lines = [...groups.entries()].map(([w, { at, top }]) => {
    const where = at.length === 1 ? (at[0] ? `${at[0]}: ` : '') : '';
    const text = Number.isFinite(top) ? w.replace('CKNNA > 1', at.length === 1 ? `CKNNA = ${top.toFixed(4)} > 1` : `CKNNA > 1 in ${at.length} scores (up to ${top.toFixed(4)})`) : w;
    return `${where}${text}${at.length > 1 && !Number.isFinite(top) ? ` (${at.length} scores)` : ''}`;
  });
  return lines.length > max ? [...lines.slice(0, max), `… and ${lines.length - max} more warning(s) (see the warning field of each row)`] : lines;
}

function selectLayers(capture: Capture, wanted?: (string | number)[]) {
  if (!wanted?.length) return capture.layers;
  return wanted.map((w) => {
    const found = capture.layers.find((l) => l.name === String(w) || l.index === Number(w));
    if (!found) {
      throw new InputError(`${capture.dir}: no layer '${w}' (layers: ${capture.layers.map((l) => `${l.index}:${l.name}`).join(', ')})`);
    }
    return found;
  });
}

/**
 * A --target NAME=PATH file as shard-like rows ([samples, dim] or [samples, tokens, dim], checked as loadTarget
 * checks them), or null where the worker cannot map it as rows (a 3-D Fortran-order .npy): that one is read in Node.
 */
async function locateTarget(spec: TargetSpec & { path: string }): Promise<ShardRows | null> {
  const at = await locateArray(spec.path, spec.key === undefined ? {} : { key: spec.key }, (_what, shape) => {
    requireNonEmpty(spec.path, `target ${spec.name}`, shape);
    if (shape.length !== 2 && shape.length !== 3) {
      throw new InputError(`${spec.path}: target must be [samples, dim] or [samples, tokens, dim], got [${shape.join(', ')}]`);
    }
  });
  const three = at.shape.length === 3;
  if (three && at.segment.order === 'F') return null;
  const [samples, tokens, dim] = three ? (at.shape as [number, number, number]) : [at.shape[0]!, 1, at.shape[1]!];
  const nonFinite = { kind: 'sample' as const, label: `${spec.path}: target ${spec.name}`, tokens: three };
  return { samples, tokens, dim, segments: [{ ...at.segment, samples, nonFinite }] };
}

function requireCaptureTarget(capture: Capture, name: string): void {
  if (!capture.targets.some((t) => t.name === name)) {
    throw new InputError(
      `${capture.dir}: no target '${name}' in the capture (has: ${capture.targets.map((t) => t.name).join(', ') || 'none'}); use --target ${name}=PATH for a file`,
    );
  }
}

async function loadTarget(capture: Capture, spec: TargetSpec): Promise<Tensor3> {
  if (!spec.path) {
    requireCaptureTarget(capture, spec.name);
    return capture.readTarget(spec.name);
  }
  const arr = /\.npy$/i.test(spec.path) ? await readNpy(spec.path) : await readTensor(spec.path, spec.key);
  const shape = arr.shape;
  requireNonEmpty(spec.path, `target ${spec.name}`, shape);
  const data = arr.data instanceof Float32Array ? arr.data : Float32Array.from(arr.data);
  const bad = data.findIndex((v) => !Number.isFinite(v));
  if (bad >= 0) {
    const dim = shape[shape.length - 1]!;
    const tokens = shape.length === 3 ? shape[1]! : 1;
    const where = `sample ${Math.floor(bad / (tokens * dim))}${shape.length === 3 ? `, token ${Math.floor(bad / dim) % tokens}` : ''}, dim ${bad % dim}`;
    throw new InputError(`${spec.path}: target ${spec.name}: non-finite value ${data[bad]} at ${where}; NaN/Inf values are not allowed`);
  }
  if (shape.length === 2) return { samples: shape[0]!, tokens: 1, dim: shape[1]!, data };
  if (shape.length === 3) return { samples: shape[0]!, tokens: shape[1]!, dim: shape[2]!, data };
  throw new InputError(`${spec.path}: target must be [samples, dim] or [samples, tokens, dim], got [${shape.join(', ')}]`);
}

function checkTokens(t: { samples: number; tokens: number }, layer: { samples: number; tokens: number }, mode: TokenMode, name: string, dir: string): void {
  if (t.samples !== layer.samples) {
    throw new InputError(`target ${name}: ${t.samples} samples, but capture ${dir} has ${layer.samples}`);
  }
  if (mode === 'per-token' && t.tokens !== layer.tokens) {
    throw new InputError(
      `target ${name}: ${t.tokens} tokens per sample, capture ${dir} has ${layer.tokens}; per-token mode pairs tokens one to one (use --tokens mean)`,
    );
  }
}
