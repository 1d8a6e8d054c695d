/**
 * Linear probes per layer of a capture (and on its target feature sets, the ceiling a layer can reach), for one
 * per-image label of the manifest. Writes/merges `probes.json` in the capture folder, which the dashboard renders.
 *
 * probes.json (format "viral-lens.probes", version 1):
 *   { "format": "viral-lens.probes", "version": 1,
 *     "probes": [ ProbeReport, ... ] }        // one report per (label, task, token_mode, control_by); re-running
 *                                            // the same combination replaces its report, others are kept
 * ProbeReport: the run's parameters (capture, model, variant, step, label, task, classes, token_mode, max_tokens,
 *   folds, seed, l2, control_by, ci_level, created) and `rows`: one ProbeRow per layer and per target:
 *   { source: "layer"|"target", name, layer_index (null for targets), score (accuracy or R²), score_name,
 *     ci_low, ci_high, ci_method, control_score, selectivity, selectivity_ci_low, selectivity_ci_high, chance,
 *     majority, n_images, n_rows, dim, l2 (λ per fold), folds, folds_converged, confusion (classify) }
 * The TypeScript interfaces below are the contract.
 */
import { join } from 'node:path';
import { z } from 'zod';
import { InputError, ParamError } from '../src/core/errors.js';
import type { Matrix } from '../src/core/matrix.js';
import { inferTask, runProbe, type ControlBy, type ProbeScore, type ProbeTask } from '../src/probes/index.js';
import { captureProvenance, openCapture, type Capture, type Tensor3 } from '../src/store/capture.js';
import { readJsonFile, writeJsonFile, type TextReader } from '../src/store/json.js';
import { deriveSeed, mulberry32, shuffleInPlace } from '../src/stats/index.js';
import { tokensToMatrix, type TokenMode } from '../src/core/tokens.js';

export const PROBES_FILE = 'probes.json';

export interface ProbeRunOptions {
  label: string;
  /** Default 'auto': strings and small sets of integers → classify, other numbers → regress. */
  task?: ProbeTask | 'auto';
  tokenMode: TokenMode;
  /** per-token mode: a seeded random subset of this many token positions per image (default: all). */
  maxTokens?: number;
  folds?: number;
  seed?: number;
  /** λ of the L2 penalty (on standardised features, mean loss), or 'cv' for an inner split. Default 1e-2. */
  l2?: number | 'cv';
  /** Control task types: 'auto' (position for per-token, image otherwise), 'image', 'position', 'none' or a label name. */
  controlBy?: string;
  ci?: number;
  bootstrap?: number;
  layers?: (string | number)[];
  /** Also probe the target feature sets (default true). */
  targets?: boolean;
  onProgress?: (event: { stage: string; done: number; total: number }) => void;
  signal?: AbortSignal;
}

export interface ProbeRow extends ProbeScore {
  source: 'layer' | 'target';
  name: string;
  layer_index: number | null;
  /** Why a target was not probed (e.g. a different token count in per-token mode); score fields are then NaN. */
  skipped?: string;
}

export interface ProbeReport {
  capture: string;
  model: string;
  variant: string;
  step: number | null;
  label: string;
  task: ProbeTask;
  classes: (number | string)[] | null;
  token_mode: TokenMode;
  max_tokens: number | null;
  folds: number;
  seed: number;
  l2: number | 'cv';
  control_by: string;
  ci_level: number;
  bootstrap: number;
  created: string;
  rows: ProbeRow[];
}

export interface ProbesFile {
  format: 'viral-lens.probes';
  version: 1;
  probes: ProbeReport[];
}

export async function runProbes(captureOrDir: Capture | string, options: ProbeRunOptions): Promise<ProbeReport> {
  const capture = typeof captureOrDir === 'string' ? await openCapture(captureOrDir) : captureOrDir;
  const labels = capture.labels[options.label];
  if (!labels) {
    throw new InputError(`${capture.dir}: no label '${options.label}' in the manifest (labels: ${Object.keys(capture.labels).join(', ') || 'none'})`);
  }
  const task = !options.task || options.task === 'auto' ? inferTask(labels) : options.task;
  const folds = options.folds ?? 5;
  const seed = options.seed ?? 0;
  const l2 = options.l2 ?? 1e-2;
  const ci = options.ci ?? 0.95;
  const bootstrap = options.bootstrap ?? 1000;
  const perToken = options.tokenMode === 'per-token';
  const control = resolveControl(capture, options.controlBy ?? 'auto', perToken);
  const classes = task === 'classify' ? sortedDistinct(labels) : null;
  const layers = selectLayers(capture, options.layers);
  const targets = options.targets === false ? [] : capture.targets;
  const progress = options.onProgress ?? (() => {});
  const total = layers.length + targets.length;
  const rows: ProbeRow[] = [];

  const probe = (t: Tensor3): ProbeScore => {
    const { X, groups, positions } = flatten(t, options.tokenMode, options.maxTokens, seed);
    return runProbe(
      { X, groups, positions, labels },
      { task, folds, seed, l2, control: control.spec, ci, bootstrap, ...(classes ? { classes } : {}) },
    );
  };

  for (const [i, layer] of layers.entries()) {
    options.signal?.throwIfAborted();
    rows.push({ source: 'layer', name: layer.name, layer_index: layer.index, ...probe(await capture.readLayer(layer.name)) });
    progress({ stage: 'probes', done: i + 1, total });
  }
  for (const [i, target] of targets.entries()) {
    options.signal?.throwIfAborted();
    if (perToken && target.tokens !== capture.tokens) {
      rows.push({ ...skippedRow(task), source: 'target', name: target.name, layer_index: null, skipped: `${target.tokens} tokens per image, layers have ${capture.tokens}` });
    } else {
      rows.push({ source: 'target', name: target.name, layer_index: null, ...probe(await capture.readTarget(target.name)) });
    }
    progress({ stage: 'probes', done: layers.length + i + 1, total });
  }
  return {
    ...captureProvenance(capture),
    label: options.label,
    task,
    classes,
    token_mode: options.tokenMode,
    max_tokens: perToken ? (options.maxTokens ?? null) : null,
    folds,
    seed,
    l2,
    control_by: control.name,
    ci_level: ci,
    bootstrap,
    created: new Date().toISOString(),
    rows,
  };
}

/** Reads probes.json of a capture; an empty file structure when there is none. */
/** What readers of probes.json rely on; reports may carry more (they are written by runProbes). */
const ProbesFileSchema = z.object({
  format: z.literal('viral-lens.probes'),
  version: z.literal(1),
  probes: z.array(
    z.looseObject({
      label: z.string(),
      token_mode: z.string(),
      rows: z.array(z.looseObject({ source: z.enum(['layer', 'target']), name: z.string(), layer_index: z.number().int().nullable(), score: z.number().nullable() })),
    }),
  ),
});

/** Reads DIR/probes.json (empty when absent); `read` reads its text (the dashboard passes one confined to RUNS_DIR). */
export async function readProbes(dir: string, read?: TextReader): Promise<ProbesFile> {
  const file = await readJsonFile(join(dir, PROBES_FILE), ProbesFileSchema, () => ({ format: 'viral-lens.probes' as const, version: 1 as const, probes: [] }), read);
  return file as unknown as ProbesFile;
}

/** Merges a report into the capture's probes.json (atomically), replacing one with the same key. */
export async function writeProbes(dir: string, report: ProbeReport): Promise<string> {
  const file = await readProbes(dir);
  const key = (r: ProbeReport) => [r.label, r.task, r.token_mode, r.control_by].join('\u0000');
  file.probes = [...file.probes.filter((r) => key(r) !== key(report)), report];
  const path = join(dir, PROBES_FILE);
  // JSON has no NaN: undefined scores (e.g. R² with constant labels) become null.
  await writeJsonFile(path, file, 2);
  return path;
}

function sortedDistinct(labels: readonly (number | string)[]): (number | string)[] {
  return [...new Set(labels)].sort((a, b) => (typeof a === 'number' && typeof b === 'number' ? a - b : String(a).localeCompare(String(b))));
}

function resolveControl(capture: Capture, by: string, perToken: boolean): { spec: ControlBy | null; name: string } {
  if (by === 'none') return { spec: null, name: 'none' };
  const b = by === 'auto' ? (perToken ? 'position' : 'image') : by;
  if (b === 'image') return { spec: { by: 'image' }, name: 'image' };
  if (b === 'position') {
    if (!perToken) throw new ParamError('control_by', 'position needs tokens per-token (pooled rows have no position)');
    return { spec: { by: 'position' }, name: 'position' };
  }
  const values = capture.labels[b];
  if (!values) {
    throw new ParamError('control_by', `'${b}' is neither image, position, none nor a label (labels: ${Object.keys(capture.labels).join(', ') || 'none'})`);
  }
  return { spec: { by: 'label', name: b, values }, name: `label:${b}` };
}

function selectLayers(capture: Capture, wanted?: (string | number)[]) {
  if (!wanted?.length) return capture.layers;
  return wanted.map((w) => {
    const found = capture.layers.find((l) => l.name === String(w) || l.index === Number(w));
    if (!found) throw new InputError(`${capture.dir}: no layer '${w}' (layers: ${capture.layers.map((l) => `${l.index}:${l.name}`).join(', ')})`);
    return found;
  });
}

/** Rows for the probe with their image and position; per-token mode may keep a seeded subset of positions per image. */
function flatten(t: Tensor3, mode: TokenMode, maxTokens: number | undefined, seed: number): { X: Matrix; groups: Int32Array; positions: Int32Array } {
  if (mode !== 'per-token') {
    const X = tokensToMatrix(t, mode);
    return { X, groups: Int32Array.from({ length: t.samples }, (_, i) => i), positions: new Int32Array(t.samples) };
  }
  const keep = maxTokens === undefined || maxTokens >= t.tokens ? t.tokens : maxTokens;
  if (!(Number.isInteger(keep) && keep >= 1)) throw new ParamError('max_tokens', `expected an integer ≥ 1, got ${maxTokens}`);
  const rows = new Int32Array(t.samples * keep);
  const rng = mulberry32(deriveSeed(seed, 'probe-tokens'));
  const all = Int32Array.from({ length: t.tokens }, (_, i) => i);
  for (let s = 0; s < t.samples; s++) {
    const pick = keep === t.tokens ? all : shuffleInPlace(Int32Array.from(all), rng).subarray(0, keep).sort();
    for (let j = 0; j < keep; j++) rows[s * keep + j] = s * t.tokens + pick[j]!;
  }
  const X = tokensToMatrix(t, 'per-token', rows);
  return {
    X,
    groups: Int32Array.from(rows, (r) => Math.floor(r / t.tokens)),
    positions: Int32Array.from(rows, (r) => r % t.tokens),
  };
}

function skippedRow(task: ProbeTask): ProbeScore {
  return {
    task,
    score: NaN,
    score_name: task === 'classify' ? 'accuracy' : 'r2',
    ci_low: NaN,
    ci_high: NaN,
    ci_method: '',
    control_score: null,
    selectivity: null,
    selectivity_ci_low: null,
    selectivity_ci_high: null,
    chance: null,
    majority: null,
    n_images: 0,
    n_rows: 0,
    dim: 0,
    l2: [],
    folds: 0,
    folds_converged: 0,
    confusion: null,
  };
}
