/**
 * From a request's query to a figure: which captures (runs × steps), which analysis jobs (cached, shared, cancelled
 * with the request), and which spec builder of analysis/figures.ts. The same function serves the page (spec as
 * JSON) and the exports (SVG/PNG/PDF rendered in a worker, CSV/JSON of the numbers), so an export is exactly what
 * the page shows.
 */
import { join } from 'node:path';
import { attentionOverlayFigure, entropyHeatmapFigure, readAttention, type AttentionEntropyResult } from '../analysis/attention.js';
import type { PcaGridResult, UmapRunResult } from '../analysis/embeddings.js';
import {
  checkpointFigure,
  curvePoint,
  layerwiseFigure,
  pcaGridFigure,
  probeFigure,
  trainingFigure,
  umapFigure,
  variantsFigure,
  type AccuracyRow,
  type ColorBy,
  type CurvePoint,
  type Figure,
  type LayerMark,
  type ProbePoint,
  type Series,
} from '../analysis/figures.js';
import type { JobProgress, JobRunner, LayerwiseJobParams } from './jobs.js';
import { BOOTSTRAP, CI, CURVES, describeAnalysis, EPOCHS, MIN_DIST, N_NEIGHBORS, paramOf, UMAP } from '../analysis/params.js';
import { summariseWarnings } from '../analysis/layerwise.js';
import { readProbes } from '../analysis/probes.js';
import { readShuffle, shuffleFigure, type ShuffleResult } from '../analysis/shuffle.js';
import { PCA_RGB_NORMALISATION } from '../src/embeddings/index.js';
import { InputError } from '../src/core/errors.js';
import type { MetricName, Preprocess } from '../src/metrics/index.js';
import { jsonSchemaOf, K, MAX_ROWS, METRIC, PREPROCESS, Q, SEED, TOKENS, type ParamDef } from '../src/metrics/params.js';
import { DEMO_MODEL_NAME, sceneImageDataUrl } from '../demo/model/scenes.js';
import type { TokenMode } from '../src/core/tokens.js';
import { ANALYSIS_FILES, type AnalysisFileName, type CaptureSummary, type RunsIndex } from './runs.js';

/** Figures drawn from a run's analysis files (attention.json, shuffle.json) rather than from captures. */
export const FILE_FIGURES = ['attention-entropy', 'attention-overlay', 'patch-shuffle'] as const;
export type FileFigureName = (typeof FILE_FIGURES)[number];
export const FIGURES = ['layerwise', 'checkpoints', 'training', 'variants', 'umap', 'pca-grid', 'probes', ...FILE_FIGURES] as const;
export type FigureName = (typeof FIGURES)[number];

function isFileFigure(name: FigureName): name is FileFigureName {
  return (FILE_FIGURES as readonly string[]).includes(name);
}

/** The analysis parameters' query fields, from their one definition (analysis/params.ts): bounds and choices. */
function querySchemaOf(defs: readonly ParamDef[]): Record<string, Record<string, unknown>> {
  return Object.fromEntries(defs.map((d) => [d.name, jsonSchemaOf(d)]));
}

/** Query parameters every figure endpoint accepts (JSON schema; unknown parameters are refused). */
export const figureQuerySchema = {
  type: 'object',
  additionalProperties: false,
  properties: {
    runs: { type: 'string', maxLength: 4000, description: 'comma-separated run names (default: all)' },
    captures: { type: 'string', maxLength: 8000, description: 'comma-separated capture ids (overrides runs/step)' },
    step: { type: 'string', pattern: '^(latest|all|[0-9]{1,12})$' },
    ...querySchemaOf([K, METRIC, PREPROCESS, Q, TOKENS, MAX_ROWS, SEED, BOOTSTRAP, CI]),
    target: { type: 'string', maxLength: 200 },
    color: { type: 'string', enum: ['variant', 'step'] },
    baseline: { type: 'string', maxLength: 400 },
    layer: { type: 'integer', minimum: 0, maximum: 100000 },
    label: { type: 'string', maxLength: 200 },
    sample: { type: 'string', maxLength: 400 },
    layers: { type: 'string', pattern: '^[0-9]{1,6}(,[0-9]{1,6}){0,63}$' },
    ...querySchemaOf([N_NEIGHBORS, MIN_DIST, EPOCHS]),
    format: { type: 'string', enum: ['svg', 'png', 'pdf', 'csv', 'json'] },
    dir: { type: 'string', minLength: 1, maxLength: 1024, description: 'analysis folder relative to RUNS_DIR (default: the first that has the file)' },
    variant: { type: 'string', minLength: 1, maxLength: 200 },
    head: { type: 'integer', minimum: 0, maximum: 100000 },
    field: { type: 'string', enum: ['entropy', 'normalised_entropy', 'component_entropy'] },
  },
};

export interface FigureQuery {
  runs?: string;
  captures?: string;
  step?: string;
  metric?: MetricName;
  target?: string;
  tokens?: TokenMode;
  k?: number;
  preprocess?: Preprocess;
  q?: number;
  max_rows?: number;
  seed?: number;
  bootstrap?: number;
  ci?: number;
  color?: ColorBy;
  baseline?: string;
  layer?: number;
  label?: string;
  sample?: string;
  layers?: string;
  n_neighbors?: number;
  min_dist?: number;
  epochs?: number;
  format?: 'svg' | 'png' | 'pdf' | 'csv' | 'json';
  dir?: string;
  variant?: string;
  head?: number;
  field?: 'entropy' | 'normalised_entropy' | 'component_entropy';
}

export interface FigureContext {
  index: RunsIndex;
  runner: JobRunner;
  engine: string;
}

export interface CaptureError {
  capture: string;
  error: string;
}

export interface FigureResponse {
  figure: FigureName;
  spec: Record<string, unknown>;
  provenance: Record<string, unknown>;
  notes: string[];
  errors: CaptureError[];
  captures: string[];
  rows: number;
  data: Figure['data'];
}

/** A selected capture and the series (line/panel) it belongs to. */
interface Selected {
  capture: CaptureSummary;
  series: Series;
}

const list = (s: string | undefined) => (s ?? '').split(',').map((x) => x.trim()).filter(Boolean);

/** Picks captures: explicit ids, or runs × step ('latest' per run, 'all', or one step number). */
function selectCaptures(index: RunsIndex, q: FigureQuery, defaultStep: 'latest' | 'all'): { chosen: CaptureSummary[]; errors: CaptureError[]; notes: string[] } {
  const all = index.captures();
  const errors: CaptureError[] = [];
  const notes: string[] = [];
  let chosen: CaptureSummary[];
  if (q.captures) {
    chosen = list(q.captures).map((id) => {
      const c = index.get(id);
      if (!c) throw new InputError(`captures: no capture '${id}' under RUNS_DIR`);
      return c;
    });
  } else {
    const known = new Set(all.map((c) => c.run));
    const runs = q.runs ? list(q.runs) : [...known].sort();
    for (const r of runs) if (!known.has(r)) throw new InputError(`runs: no run '${r}' under RUNS_DIR (runs: ${[...known].sort().join(', ') || 'none'})`);
    const step = q.step ?? defaultStep;
    chosen = [];
    for (const run of runs) {
      const caps = all.filter((c) => c.run === run).sort((a, b) => (a.step ?? -1) - (b.step ?? -1));
      const usable = caps.filter((c) => !c.error);
      if (step === 'all') chosen.push(...caps);
      else if (step === 'latest') {
        // The latest usable step; a corrupt newer one is reported, not silently skipped.
        const latest = usable.at(-1);
        for (const c of caps) if (c.error && (latest === undefined || (c.step ?? -1) > (latest.step ?? -1))) chosen.push(c);
        if (latest) chosen.push(latest);
      } else {
        const found = caps.filter((c) => c.step === Number(step));
        if (!found.length) notes.push(`run ${run} has no step ${step}`);
        chosen.push(...found);
      }
    }
  }
  const ok = chosen.filter((c) => {
    if (c.error) errors.push({ capture: c.id, error: c.error });
    else if (c.samples !== null && c.samples < 4) notes.push(`${c.id} has ${c.samples} sample(s) so far (still being written?); left out`);
    else return true;
    return false;
  });
  return { chosen: ok, errors, notes };
}

/** Display labels: variant (+ run when two runs share a variant) (+ step when a run contributes several steps). */
function labelSeries(caps: CaptureSummary[], by: ColorBy): Selected[] {
  const runsOfVariant = new Map<string, Set<string>>();
  const stepsOfRun = new Map<string, Set<number | null>>();
  for (const c of caps) {
    runsOfVariant.set(c.variant!, (runsOfVariant.get(c.variant!) ?? new Set()).add(c.run));
    stepsOfRun.set(c.run, (stepsOfRun.get(c.run) ?? new Set()).add(c.step));
  }
  const manyRuns = new Set(caps.map((c) => c.run)).size > 1;
  return caps.map((c) => {
    let label: string;
    if (by === 'step') label = `${c.step === null ? 'no step' : `step ${c.step}`}${manyRuns ? ` · ${c.run}` : ''}`;
    else {
      label = c.variant!;
      if ((runsOfVariant.get(c.variant!)?.size ?? 0) > 1) label += ` · ${c.run}`;
      if ((stepsOfRun.get(c.run)?.size ?? 0) > 1) label += ` · step ${c.step ?? '-'}`;
    }
    return { capture: c, series: { label, variant: c.variant!, step: c.step, run: c.run } };
  });
}

/** One series per run (all its steps): for heatmaps and training curves. */
function labelRuns(caps: CaptureSummary[]): Selected[] {
  const runsOfVariant = new Map<string, Set<string>>();
  for (const c of caps) runsOfVariant.set(c.variant!, (runsOfVariant.get(c.variant!) ?? new Set()).add(c.run));
  return caps.map((c) => {
    const label = (runsOfVariant.get(c.variant!)?.size ?? 0) > 1 ? `${c.variant} · ${c.run}` : c.variant!;
    return { capture: c, series: { label, variant: c.variant!, step: null, run: c.run } };
  });
}

function uniqueSeries(sel: Selected[]): Series[] {
  const m = new Map<string, Series>();
  for (const s of sel) if (!m.has(s.series.label)) m.set(s.series.label, s.series);
  return [...m.values()];
}

/** Dashed-rule marks for the layers a variant trained (aligned / residual), one per series. */
function marksFor(sel: Selected[]): LayerMark[] {
  const out = new Map<string, LayerMark>();
  for (const { capture: c, series } of sel) {
    if (c.aligned_layer !== null) {
      const label = `${c.variant === 'viral' ? 'VIRAL' : c.variant} aligned ℓ=${c.aligned_layer}`;
      out.set(`${series.label}|a`, { layer_index: c.aligned_layer, label, series: series.label });
    }
    for (const r of c.residual_layers) out.set(`${series.label}|r${r}`, { layer_index: r, label: `${c.variant} re-injects ℓ=${r}`, series: series.label });
  }
  // One rule per (layer, label): several checkpoints of one run share it.
  const seen = new Set<string>();
  return [...out.values()].filter((m) => {
    const key = `${m.layer_index}|${m.label}`;
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  });
}

function describeError(err: unknown, root?: string): string {
  const message = err instanceof Error ? err.message : String(err);
  // Paths inside RUNS_DIR read better relative to it (the page shows RUNS_DIR once, in its header).
  return root ? message.split(`${root}/`).join('') : message;
}

interface CurveRequest {
  metric: MetricName;
  k: number;
  preprocess: Preprocess;
  tokens: TokenMode;
}

/**
 * The similarity defaults of every curve page: the demo readout's settings (analysis/demo-settings.ts), so the page
 * that opens shows the numbers the README and `npm run demo` print (per-token, n = 1728 on the default demo).
 */
export const CURVE_DEFAULTS = Object.fromEntries(['metric', 'k', 'preprocess', 'tokens'].map((name) => [name, paramOf(CURVES, name).default])) as unknown as CurveRequest;

/** Every analysis parameter the pages offer, with default, bounds and choices (titles included): the page's selectors. */
export const PAGE_PARAMS = { curves: describeAnalysis(CURVES), umap: describeAnalysis(UMAP) };

/**
 * Per token, n = samples × tokens grows fast on real models (500 images × 576 tokens = 288 000 rows: minutes of kNN
 * per layer). Without an explicit max_rows, a per-token curve over more rows than this takes a seeded subsample of
 * this many, and the page says so; the demo's 1728 stay whole.
 */
export const PER_TOKEN_DEFAULT_MAX_ROWS = 10_000;

function curveParams(q: FigureQuery): CurveRequest {
  return { metric: q.metric ?? CURVE_DEFAULTS.metric, k: q.k ?? CURVE_DEFAULTS.k, preprocess: q.preprocess ?? CURVE_DEFAULTS.preprocess, tokens: q.tokens ?? CURVE_DEFAULTS.tokens };
}

/** The row cap of one capture's curve: max_rows when given, else PER_TOKEN_DEFAULT_MAX_ROWS for a larger per-token n. */
export function curveMaxRows(capture: CaptureSummary, tokens: TokenMode, q: FigureQuery): number | undefined {
  if (q.max_rows !== undefined) return q.max_rows;
  const rows = (capture.samples ?? 0) * (tokens === 'per-token' ? (capture.tokens ?? 1) : 1);
  return tokens === 'per-token' && rows > PER_TOKEN_DEFAULT_MAX_ROWS ? PER_TOKEN_DEFAULT_MAX_ROWS : undefined;
}

/** The layer-wise job of one capture for a curve page: the query's parameters, with the page's defaults. */
function curveJob(dir: string, p: CurveRequest, q: FigureQuery, maxRows: number | undefined, engine: string): LayerwiseJobParams {
  // Conditional spreads keep absent parameters out of the job's key, so equal requests share one cache entry.
  return {
    capture: dir,
    metrics: [p.metric],
    k: p.k,
    preprocess: p.preprocess,
    ...(q.q === undefined ? {} : { q: q.q }),
    tokenMode: p.tokens,
    ...(maxRows === undefined ? {} : { maxRows }),
    seed: q.seed ?? 0,
    ...(q.bootstrap ? { bootstrap: q.bootstrap } : {}),
    ...(q.bootstrap && q.ci !== undefined ? { ci: q.ci } : {}),
    engine,
  };
}

/** Runs (or fetches) the layer-wise job of every selected capture; failures become per-capture errors. */
async function curves(ctx: FigureContext, sel: Selected[], q: FigureQuery, signal: AbortSignal, onProgress?: (p: JobProgress) => void) {
  const p = curveParams(q);
  const errors: CaptureError[] = [];
  const points: CurvePoint[] = [];
  const provenance: Record<string, unknown> = { metric: p.metric, k: p.k, preprocess: p.preprocess, token_mode: p.tokens };
  const ns = new Set<number>();
  const engines = new Set<string>();
  const warned: { warning?: string; capture: string; layer: string; target: string }[] = [];
  const capped: string[] = [];
  let done = 0;
  await Promise.all(
    sel.map(async ({ capture, series }) => {
      try {
        const maxRows = curveMaxRows(capture, p.tokens, q);
        if (maxRows !== undefined && q.max_rows === undefined) capped.push(capture.id);
        const job = curveJob(await ctx.index.dirOf(capture.id), p, q, maxRows, ctx.engine);
        const { result } = await ctx.runner.run('layerwise', job, { signal, ...progressOption(onProgress) });
        for (const r of result) {
          if (r.warning) warned.push({ warning: r.warning, capture: capture.id, layer: r.layer, target: r.target });
          ns.add(r.n);
          engines.add(`${r.engine} (${r.precision})`);
          if (typeof r.preprocess === 'string') provenance.preprocess = r.preprocess;
          points.push(curvePoint(r, { series: series.label, variant: capture.variant!, step: capture.step, run: capture.run }));
        }
      } catch (err) {
        if ((err as Error).name === 'AbortError') throw err;
        errors.push({ capture: capture.id, error: describeError(err, ctx.index.root) });
      }
      done++;
      onProgress?.({ stage: 'captures', done, total: sel.length });
    }),
  );
  // Jobs finish in any order; rows come back in selection order, then target, then layer.
  const order = new Map(sel.map((s, i) => [s.series.label, i]));
  points.sort((a, b) => order.get(a.series)! - order.get(b.series)! || (a.step ?? -1) - (b.step ?? -1) || a.target.localeCompare(b.target) || a.layer_index - b.layer_index);
  errors.sort((a, b) => a.capture.localeCompare(b.capture));
  finishProvenance(provenance, { ns, engines, capped, q, engine: ctx.engine });
  return { points, errors, provenance, warnings: curveWarnings(warned, capped, q) };
}

/** n, engines, bootstrap and row cap of the curves, as every exported figure records them. */
function finishProvenance(provenance: Record<string, unknown>, run: { ns: Set<number>; engines: Set<string>; capped: string[]; q: FigureQuery; engine: string }): void {
  const ns = [...run.ns].sort((a, b) => a - b);
  provenance.n = ns.length === 1 ? ns[0] : ns;
  provenance.engine = [...run.engines].join(', ') || run.engine;
  if (run.q.bootstrap) provenance.bootstrap = { draws: run.q.bootstrap, ci: run.q.ci ?? 0.95 };
  if (run.q.max_rows) provenance.max_rows = run.q.max_rows;
  else if (run.capped.length) provenance.max_rows = PER_TOKEN_DEFAULT_MAX_ROWS;
}

/** Caveats on the numbers (e.g. CKNNA at small n relative to k) and the default row cap, shown in the page's notes. */
function curveWarnings(warned: { warning?: string; capture: string; layer: string; target: string }[], capped: string[], q: FigureQuery): string[] {
  const warnings = summariseWarnings(warned).map((w) => `warning: ${w}`);
  if (capped.length) {
    capped.sort();
    warnings.push(
      `per-token rows subsampled to ${PER_TOKEN_DEFAULT_MAX_ROWS} (seed ${q.seed ?? 0}) in ${capped.length === 1 ? capped[0] : `${capped.length} captures`}: more rows than the default view computes; set max_rows to change`,
    );
  }
  return warnings;
}

function pickTarget(points: CurvePoint[], wanted: string | undefined): string {
  const targets = [...new Set(points.map((p) => p.target))];
  if (wanted) {
    if (!targets.includes(wanted) && points.length) throw new InputError(`target: no target '${wanted}' in the selected captures (targets: ${targets.join(', ')})`);
    return wanted;
  }
  return targets.includes('clip') ? 'clip' : (targets[0] ?? 'clip');
}

/** Accuracy per series from RUNS_DIR/<run>/results.json (shapes in server/README.md). */
async function accuracyFor(ctx: FigureContext, sel: Selected[], notes: string[]): Promise<AccuracyRow[]> {
  const rows: AccuracyRow[] = [];
  const seen = new Set<string>();
  for (const { capture, series } of sel) {
    if (seen.has(series.label)) continue;
    seen.add(series.label);
    const dir = await ctx.index.runDir(capture.run).catch(() => null);
    if (!dir) continue;
    let json: unknown;
    try {
      json = await ctx.index.readJson(join(dir, 'results.json'));
    } catch (err) {
      notes.push(describeError(err));
      continue;
    }
    if (json === null) continue;
    const parsed = parseResults(json, capture.step);
    if (parsed.problem) notes.push(`${capture.run}/results.json: ${parsed.problem}`);
    for (const [benchmark, value] of parsed.values) {
      rows.push({ series: series.label, variant: capture.variant!, run: capture.run, benchmark, value, step: capture.step, source: `${capture.run}/results.json` });
    }
  }
  return rows;
}

/**
 * results.json: `{"benchmarks": {"POPE": 85.7, ...}}` (or `"accuracy"` as the key), or `{"results": [{"benchmark":
 * "POPE", "value": 85.7, "step": 1000}, ...]}`; with steps, the entry at the capture's step wins, else the latest
 * one at or before it, else an entry without a step.
 */
export function parseResults(json: unknown, step: number | null): { values: [string, number][]; problem?: string } {
  if (!json || typeof json !== 'object') return { values: [], problem: 'expected a JSON object' };
  const o = json as Record<string, unknown>;
  const table = (o.benchmarks ?? o.accuracy) as unknown;
  if (table && typeof table === 'object' && !Array.isArray(table)) {
    const values = Object.entries(table as Record<string, unknown>).filter((e): e is [string, number] => typeof e[1] === 'number' && Number.isFinite(e[1]));
    return values.length ? { values } : { values, problem: 'benchmarks has no numeric values' };
  }
  if (Array.isArray(o.results)) {
    const best = new Map<string, { value: number; step: number | null }>();
    for (const r of o.results as Record<string, unknown>[]) {
      const name = r?.benchmark ?? r?.name ?? r?.task;
      const value = r?.value ?? r?.accuracy ?? r?.score;
      const s = typeof r?.step === 'number' ? r.step : null;
      if (typeof name !== 'string' || typeof value !== 'number' || !Number.isFinite(value)) continue;
      if (s !== null && step !== null && s > step) continue;
      const prev = best.get(name);
      const rank = (x: number | null) => (x === null ? -1 : x);
      if (!prev || rank(s) > rank(prev.step)) best.set(name, { value, step: s });
    }
    return best.size ? { values: [...best.entries()].map(([k, v]) => [k, v.value]) } : { values: [], problem: 'results has no usable {benchmark, value} entries' };
  }
  return { values: [], problem: 'expected "benchmarks": {name: number} or "results": [{benchmark, value, step?}]' };
}

function evenlySpaced(indices: number[], count: number, must: number[]): number[] {
  if (indices.length <= count) return indices;
  const out = new Set<number>();
  for (let i = 0; i < count; i++) out.add(indices[Math.round((i * (indices.length - 1)) / (count - 1))]!);
  for (const m of must) if (indices.includes(m)) out.add(m);
  return [...out].sort((a, b) => a - b);
}

/** What every figure builder gets: the query, the chosen captures, and the errors and notes it adds to. */
interface FigureRequest {
  name: FigureName;
  q: FigureQuery;
  picked: { chosen: CaptureSummary[] };
  errors: CaptureError[];
  notes: string[];
  signal: AbortSignal;
  onProgress: ((p: JobProgress) => void) | undefined;
}

type FigureBuilder = (ctx: FigureContext, req: FigureRequest) => Promise<Figure>;

const progressOption = (onProgress: FigureRequest['onProgress']) => (onProgress ? { onProgress } : {});

/** layerwise and variants: one curve per series; variants adds the accuracy panel. */
async function curvesFigure(ctx: FigureContext, { name, q, picked, errors, notes, signal, onProgress }: FigureRequest): Promise<Figure> {
  const by: ColorBy = name === 'variants' ? 'variant' : (q.color ?? 'variant');
  const sel = labelSeries(picked.chosen, by);
  const c = await curves(ctx, sel, q, signal, onProgress);
  errors.push(...c.errors);
  notes.push(...c.warnings);
  const series = uniqueSeries(sel);
  if (name === 'layerwise') {
    const target = pickTarget(c.points, q.target);
    return layerwiseFigure(c.points, { metric: curveParams(q).metric, targets: [target], colorBy: by, series, marks: marksFor(sel), provenance: c.provenance, notes });
  } else {
    const accuracy = await accuracyFor(ctx, sel, notes);
    return variantsFigure(c.points, accuracy, { metric: curveParams(q).metric, series, marks: marksFor(sel), provenance: c.provenance, notes });
  }
}

/** checkpoints (differences to a baseline series) and training (one layer over steps): one series per run. */
async function runsFigure(ctx: FigureContext, { name, q, picked, errors, notes, signal, onProgress }: FigureRequest): Promise<Figure> {
  const sel = labelRuns(picked.chosen);
  const c = await curves(ctx, sel, q, signal, onProgress);
  errors.push(...c.errors);
  notes.push(...c.warnings);
  const series = uniqueSeries(sel);
  const target = pickTarget(c.points, q.target);
  if (name === 'checkpoints') {
    let baseline: string | null = null;
    if (q.baseline) {
      const s = series.find((x) => x.label === q.baseline || x.run === q.baseline || x.variant === q.baseline);
      if (!s) throw new InputError(`baseline: '${q.baseline}' is none of the selected series (${series.map((x) => x.label).join(', ')})`);
      baseline = s.label;
    } else baseline = series.find((s) => s.variant === 'baseline')?.label ?? null;
    if (!baseline) notes.push('no baseline series selected: showing values only');
    return checkpointFigure(c.points, { metric: curveParams(q).metric, target, series, baseline, provenance: c.provenance, notes });
  } else {
    const aligned = picked.chosen.find((x) => x.aligned_layer !== null)?.aligned_layer;
    const layers = [...new Set(c.points.map((p) => p.layer_index))].sort((a, b) => a - b);
    const layer = q.layer ?? aligned ?? layers[Math.floor(layers.length / 2)] ?? 0;
    const figure = trainingFigure(c.points, { metric: curveParams(q).metric, target, layer_index: layer, series, provenance: c.provenance });
    figure.notes.push(...notes);
    return figure;
  }
}

/** The dashboard's UMAP: more epochs than the library's default, and per token a 2000-row subsample unless max_rows says otherwise. */
const PAGE_UMAP_EPOCHS = 200;
const PAGE_UMAP_PER_TOKEN_ROWS = 2000;

async function umapPageFigure(ctx: FigureContext, { q, picked, errors, notes, signal, onProgress }: FigureRequest): Promise<Figure> {
  const sel = labelSeries(picked.chosen, 'variant');
  const first = picked.chosen[0]!;
  const tokens = q.tokens ?? (paramOf(UMAP, 'tokens').default as TokenMode);
  const layerIndices = first.layers.map((l) => l.index);
  const layer = q.layer ?? first.aligned_layer ?? layerIndices[Math.floor(layerIndices.length / 2)] ?? 0;
  const dirs = await Promise.all(sel.map((s) => ctx.index.dirOf(s.capture.id)));
  const maxRows = q.max_rows ?? (tokens === 'per-token' ? PAGE_UMAP_PER_TOKEN_ROWS : undefined);
  const { result } = await ctx.runner.run(
    'umap',
    {
      captures: dirs,
      layer,
      tokenMode: tokens,
      preprocess: q.preprocess ?? (paramOf(UMAP, 'preprocess').default as Preprocess),
      seed: q.seed ?? 0,
      ...(q.n_neighbors === undefined ? {} : { nNeighbors: q.n_neighbors }),
      ...(q.min_dist === undefined ? {} : { minDist: q.min_dist }),
      nEpochs: q.epochs ?? PAGE_UMAP_EPOCHS,
      ...(maxRows === undefined ? {} : { maxRows }),
      engine: ctx.engine,
    },
    { signal, ...progressOption(onProgress) },
  );
  const r = result as UmapRunResult;
  const idOf = new Map(sel.map((s, i) => [dirs[i]!, s.capture.id]));
  for (const e of r.errors) errors.push({ capture: idOf.get(e.capture) ?? e.capture, error: describeError(new Error(e.error), ctx.index.root) });
  const labelNames = r.meta.labels;
  if (q.label && !labelNames.includes(q.label)) throw new InputError(`label: no label '${q.label}' in the manifest (labels: ${labelNames.join(', ') || 'none'})`);
  const label = q.label ?? labelNames[0] ?? null;
  const seriesOf = new Map(sel.map((s, i) => [dirs[i]!, s.series.label]));
  const points = r.points.map((p) => ({
    series: seriesOf.get(p.capture) ?? p.variant,
    sample_id: p.sample_id,
    token: p.token,
    x: p.x,
    y: p.y,
    label: label === null ? null : (p.labels[label] ?? null),
  }));
  const panel = r.panels[0]!;
  // How well each map lines up with the reference after alignment (0 = same shape), for the exported provenance.
  const alignment = Object.fromEntries(r.panels.filter((p) => p.alignment).map((p) => [seriesOf.get(p.capture) ?? p.capture, Number(p.alignment!.relativeRmsd.toFixed(4))]));
  return umapFigure(points, {
    label,
    series: uniqueSeries(sel),
    layer: `${panel.layer} (ℓ = ${panel.layer_index})`,
    provenance: { ...r.meta, layer_index: panel.layer_index, procrustes_relative_rmsd: alignment },
    notes,
  });
}

async function pcaGridPageFigure(ctx: FigureContext, { q, picked, errors, notes, signal, onProgress }: FigureRequest): Promise<Figure> {
  const sel = labelSeries(picked.chosen, 'variant');
  const first = picked.chosen[0]!;
  if (!first.grid) throw new InputError(`${first.id}: token_layout.grid is null; PCA-RGB grids need the token grid`);
  const indices = first.layers.map((l) => l.index);
  const layers = q.layers ? list(q.layers).map(Number) : evenlySpaced(indices, 8, first.aligned_layer === null ? [] : [first.aligned_layer]);
  const dirs = await Promise.all(sel.map((s) => ctx.index.dirOf(s.capture.id)));
  const sample = q.sample ?? (await ctx.index.sampleIds(first.id))[0];
  if (sample === undefined) throw new InputError(`${first.id}: the capture has no samples yet`);
  const { result } = await ctx.runner.run('pca-grid', { captures: dirs, sample, layers, engine: ctx.engine }, { signal, ...progressOption(onProgress) });
  const r = result as PcaGridResult;
  const idOf = new Map(sel.map((s, i) => [dirs[i]!, s.capture.id]));
  for (const e of r.errors) errors.push({ capture: idOf.get(e.capture) ?? e.capture, error: describeError(new Error(e.error), ctx.index.root) });
  const seriesOf = new Map(sel.map((s, i) => [dirs[i]!, s.series.label]));
  return pcaGridFigure(
    r.panels.map((p) => ({ series: seriesOf.get(p.capture) ?? p.variant, layer: p.layer, layer_index: p.layer_index, rows: p.rows, cols: p.cols, colors: p.colors, explained: p.explained })),
    { sample: r.meta.sample, series: uniqueSeries(sel), provenance: { ...r.meta, normalisation: PCA_RGB_NORMALISATION, engine: ctx.engine }, notes },
  );
}

async function probesPageFigure(ctx: FigureContext, { picked, errors, notes }: FigureRequest): Promise<Figure> {
  const sel = labelSeries(picked.chosen, 'variant');
  const points: ProbePoint[] = [];
  for (const { capture, series } of sel) {
    try {
      const file = await readProbes(await ctx.index.dirOf(capture.id), ctx.index.readText);
      for (const report of file.probes) {
        const task = `${report.label} · ${report.rows[0]?.score_name ?? 'score'} · ${report.token_mode}`;
        for (const row of report.rows) {
          if (row.source !== 'layer' || row.layer_index === null || typeof row.score !== 'number') continue;
          points.push({ series: series.label, task, layer_index: row.layer_index, accuracy: row.score, ci_low: row.ci_low ?? null, ci_high: row.ci_high ?? null, chance: row.chance ?? null });
        }
      }
    } catch (err) {
      errors.push({ capture: capture.id, error: describeError(err, ctx.index.root) });
    }
  }
  if (!points.length) notes.push('no probes.json with layer rows in the selected captures (run `viral-lens probe` to make one)');
  return probeFigure(points, { series: uniqueSeries(sel), marks: marksFor(sel), provenance: { description: 'cross-validated linear probes from probes.json (analysis/probes.ts)' }, notes });
}

const BUILDERS: Record<Exclude<FigureName, FileFigureName>, FigureBuilder> = {
  layerwise: curvesFigure,
  variants: curvesFigure,
  checkpoints: runsFigure,
  training: runsFigure,
  umap: umapPageFigure,
  'pca-grid': pcaGridPageFigure,
  probes: probesPageFigure,
};

/** Builds one figure for a query. Throws InputError for requests that cannot produce any chart. */
export async function buildFigure(ctx: FigureContext, name: FigureName, q: FigureQuery, signal: AbortSignal, onProgress?: (p: JobProgress) => void): Promise<FigureResponse> {
  if (isFileFigure(name)) return buildFileFigure(ctx.index, name, q);
  const defaultStep = name === 'checkpoints' || name === 'training' || (name === 'layerwise' && q.color === 'step') ? 'all' : 'latest';
  const picked = selectCaptures(ctx.index, q, defaultStep);
  const errors = [...picked.errors];
  const notes = [...picked.notes];
  if (picked.chosen.length === 0) {
    if (errors.length) throw new InputError(`no usable capture: ${errors.map((e) => `${e.capture}: ${e.error}`).join('; ')}`);
    throw new InputError('no captures match this selection (runs/step/captures)');
  }
  const figure = await BUILDERS[name](ctx, { name, q, picked, errors, notes, signal, onProgress });
  if (errors.length && figure.data.length === 0 && name !== 'probes') {
    throw new InputError(`every selected capture failed: ${errors.map((e) => `${e.capture}: ${e.error}`).join('; ')}`);
  }
  return {
    figure: name,
    spec: figure.spec,
    provenance: figure.provenance,
    notes: figure.notes,
    errors,
    captures: picked.chosen.map((c) => c.id),
    rows: figure.data.length,
    data: figure.data,
  };
}

// ---------------------------------------------------------------------------------------------------------------
// Analyses of a whole run: attention.json and shuffle.json (analysis/attention.ts, analysis/shuffle.ts)

/** A request for an analysis file that is not there: 404, with how to produce it. */
export class MissingAnalysisError extends InputError {
  readonly statusCode = 404;
}

/** How to produce each analysis file (shown by the API and on the pages when a run folder has none). */
export const HOW_TO: Record<AnalysisFileName, string> = {
  'attention.json':
    'The embedded demo writes it next to its captures (npm run demo -- --out RUNS_DIR); `viral-lens attention RUN_DIR --write` recomputes it from a demo run\'s saved weights; ' +
    'for another model compute attentionEntropy(...) and call writeAttention(RUN_DIR, result) (analysis/attention.ts, notebooks/README.md).',
  'shuffle.json':
    'The embedded demo writes it next to its captures (npm run demo -- --out RUNS_DIR); `viral-lens shuffle RUN_DIR --seeds N --write` recomputes it from a demo run\'s saved weights; ' +
    'for another model run runShuffle(...) with an evaluator and call writeShuffle(RUN_DIR, result) (analysis/shuffle.ts, notebooks/README.md).',
};

const shown = (dir: string, file: string) => (dir === '.' ? file : `${dir}/${file}`);

export interface AttentionSummary {
  model: string;
  variant: string;
  step: number | null;
  grid: [number, number];
  samples: number;
  queries: number;
  layers: { index: number; name: string }[];
  heads: number[];
  overlay_sample: string | null;
  has_components: boolean;
}

export interface ShuffleSummary {
  model: string;
  step: number | null;
  seeds: number[];
  variants: string[];
  question_types: string[];
  description: string;
}

export interface AnalysisFolder {
  dir: string;
  /** null: no such file in the folder; `error`: the file is there but cannot be used. */
  attention: { file: string; error: string | null; results: AttentionSummary[] } | null;
  shuffle: { file: string; error: string | null; results: ShuffleSummary[] } | null;
}

function summariseAttention(r: AttentionEntropyResult): AttentionSummary {
  const layers = new Map<number, string>();
  for (const c of r.cells) if (!layers.has(c.layer_index)) layers.set(c.layer_index, c.layer);
  return {
    model: r.model,
    variant: r.variant,
    step: r.step,
    grid: r.grid,
    samples: r.samples,
    queries: r.queries,
    layers: [...layers.entries()].map(([index, name]) => ({ index, name })),
    heads: [...new Set(r.cells.map((c) => c.head))].sort((a, b) => a - b),
    overlay_sample: r.overlay?.sample ?? null,
    has_components: r.component_definition !== null,
  };
}

function summariseShuffle(r: ShuffleResult): ShuffleSummary {
  return {
    model: r.model,
    step: r.step,
    seeds: r.seeds,
    variants: r.variants,
    question_types: [...new Set(r.rows.map((x) => x.question_type))],
    description: r.description,
  };
}

/** Every analysis folder under RUNS_DIR that holds an analysis file (or RUNS_DIR alone), with what each holds. */
export async function analysisFolders(index: RunsIndex): Promise<AnalysisFolder[]> {
  const out: AnalysisFolder[] = [];
  for (const dir of index.analysisFolders()) {
    const entry: AnalysisFolder = { dir, attention: null, shuffle: null };
    for (const file of ANALYSIS_FILES) {
      const key = file === 'attention.json' ? 'attention' : 'shuffle';
      let real: string | null;
      try {
        real = await index.analysisDir(dir, file);
      } catch (err) {
        entry[key] = { file: shown(dir, file), error: describeError(err, index.root), results: [] };
        continue;
      }
      if (real === null) continue;
      try {
        if (key === 'attention') entry.attention = { file: shown(dir, file), error: null, results: (await readAttention(real, index.readText)).results.map(summariseAttention) };
        else entry.shuffle = { file: shown(dir, file), error: null, results: (await readShuffle(real, index.readText)).results.map(summariseShuffle) };
      } catch (err) {
        if (!(err instanceof InputError)) throw err;
        entry[key] = { file: shown(dir, file), error: describeError(err, index.root), results: [] };
      }
    }
    if (dir === '.' || entry.attention || entry.shuffle) out.push(entry);
  }
  return out;
}

/**
 * The folder and parsed contents of an analysis file: `dir` when given (it must be RUNS_DIR or a folder above a
 * capture), else the first such folder that has the file. MissingAnalysisError when there is none, InputError
 * (naming the file and field) when it cannot be used.
 */
export async function readAnalysis(index: RunsIndex, file: 'attention.json', dir?: string): Promise<{ dir: string; file: string; results: AttentionEntropyResult[] }>;
export async function readAnalysis(index: RunsIndex, file: 'shuffle.json', dir?: string): Promise<{ dir: string; file: string; results: ShuffleResult[] }>;
export async function readAnalysis(index: RunsIndex, file: AnalysisFileName, dir?: string): Promise<{ dir: string; file: string; results: (AttentionEntropyResult | ShuffleResult)[] }> {
  let chosen: { dir: string; real: string } | null = null;
  if (dir !== undefined) {
    const real = await index.analysisDir(dir, file);
    if (real) chosen = { dir, real };
    else throw new MissingAnalysisError(`no ${file} in ${dir === '.' ? 'RUNS_DIR' : `RUNS_DIR/${dir}`}. ${HOW_TO[file]}`);
  } else {
    for (const d of index.analysisFolders()) {
      const real = await index.analysisDir(d, file).catch(() => null);
      if (real) {
        chosen = { dir: d, real };
        break;
      }
    }
    if (!chosen) throw new MissingAnalysisError(`no ${file} in RUNS_DIR or any run folder under it. ${HOW_TO[file]}`);
  }
  try {
    const results = file === 'attention.json' ? (await readAttention(chosen.real, index.readText)).results : (await readShuffle(chosen.real, index.readText)).results;
    if (results.length === 0) throw new MissingAnalysisError(`${shown(chosen.dir, file)} holds no results. ${HOW_TO[file]}`);
    return { dir: chosen.dir, file: shown(chosen.dir, file), results };
  } catch (err) {
    if (err instanceof MissingAnalysisError || !(err instanceof InputError)) throw err;
    throw new InputError(describeError(err, index.root));
  }
}

/** Results of the requested step: a number, 'all', or 'latest' (default: per key, the result with the highest step). */
function pickSteps<T extends { step: number | null }>(results: readonly T[], step: string | undefined, key: (r: T) => string, what: string): T[] {
  if (step === 'all') return [...results];
  if (step !== undefined && step !== 'latest') {
    const found = results.filter((r) => r.step === Number(step));
    if (!found.length) throw new InputError(`step: no ${what} result at step ${step} (steps: ${[...new Set(results.map((r) => r.step ?? 'none'))].join(', ')})`);
    return found;
  }
  const best = new Map<string, T>();
  for (const r of results) {
    const prev = best.get(key(r));
    if (!prev || (r.step ?? -1) >= (prev.step ?? -1)) best.set(key(r), r);
  }
  return [...best.values()];
}

async function buildFileFigure(index: RunsIndex, name: FileFigureName, q: FigureQuery): Promise<FigureResponse> {
  let figure: Figure;
  let source: string;
  if (name === 'patch-shuffle') {
    const file = await readAnalysis(index, 'shuffle.json', q.dir);
    source = file.file;
    // One result per model: the latest step (or the requested one); several models → the last written.
    const picked = pickSteps(file.results, q.step, (r) => r.model, 'patch-shuffle');
    const result = picked[picked.length - 1]!;
    figure = shuffleFigure(result);
  } else {
    const file = await readAnalysis(index, 'attention.json', q.dir);
    source = file.file;
    const variants = [...new Set(file.results.map((r) => r.variant))];
    if (q.variant !== undefined && !variants.includes(q.variant)) throw new InputError(`variant: no variant '${q.variant}' in ${file.file} (variants: ${variants.join(', ')})`);
    const results = pickSteps(
      file.results.filter((r) => q.variant === undefined || r.variant === q.variant),
      q.step,
      (r) => `${r.model}\u0000${r.variant}`,
      'attention',
    );
    if (name === 'attention-entropy') {
      const field = q.field ?? 'entropy';
      if (field === 'component_entropy' && !results.some((r) => r.component_definition !== null)) throw new InputError(`field: ${file.file} has no component entropy (computed with components: null)`);
      figure = entropyHeatmapFigure(results, field);
      const undefinedMaps = results.reduce((a, r) => a + (r.undefined_components ?? 0), 0);
      if (field === 'component_entropy' && undefinedMaps) figure.notes.push(`${undefinedMaps} map(s) had nothing above the threshold: component entropy is undefined there and left out of the means`);
    } else {
      const result = results[0]!;
      // The demo's sample ids name scenes it can redraw; other runs' overlays stay on the bare token grid.
      const imageUrl = result.model === DEMO_MODEL_NAME && result.overlay ? sceneImageDataUrl(result.overlay.sample) : null;
      figure = attentionOverlayFigure(result, { ...(q.layer === undefined ? {} : { layer_index: q.layer }), ...(q.head === undefined ? {} : { head: q.head }), imageUrl });
      if (!imageUrl) figure.notes.push('no image under the map: only the demo\'s scene ids can be redrawn');
    }
  }
  figure.provenance = { ...figure.provenance, source };
  return { figure: name, spec: figure.spec, provenance: figure.provenance, notes: figure.notes, errors: [], captures: [], rows: figure.data.length, data: figure.data };
}
