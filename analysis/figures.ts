/**
 * Vega-Lite specs for every chart viral-lens draws, shared by the dashboard (rendered in the browser with vega-embed)
 * and by exports and notebooks (rendered headless: SVG by vega's View.toSVG, PNG by resvg, PDF by pdfkit +
 * svg-to-pdfkit). A figure is self-contained: the spec carries its data inline, a subtitle that says how the numbers
 * were computed (metric, k, preprocessing, token mode, n, engine) and the same facts as `usermeta`, so an exported
 * file keeps its provenance. `data` is the table behind the chart, for CSV/JSON export.
 *
 * Paper style: one sans font, 10–12 pt text, thin grid, Okabe–Ito colours (colour-blind safe) with a fixed colour per
 * variant (baseline black, residual orange, VIRAL blue), point shapes as a second cue for greyscale print, viridis for
 * sequential and blue–orange for diverging scales.
 */
import { METRICS, type MetricName } from '../src/metrics/index.js';

export type VlSpec = Record<string, unknown>;
export type Row = Record<string, unknown>;

export interface Figure {
  /** e.g. `layerwise`, used in export file names. */
  name: string;
  spec: VlSpec;
  /** The numbers behind the chart (long form). */
  data: Row[];
  /** How the numbers were computed (metric, k, preprocess, token mode, engine, n, ...). */
  provenance: Record<string, unknown>;
  /** Things a reader should know (missing inputs, skipped captures). */
  notes: string[];
}

export const OKABE_ITO = ['#000000', '#E69F00', '#56B4E9', '#009E73', '#F0E442', '#0072B2', '#D55E00', '#CC79A7'] as const;
export const VARIANT_COLORS: Record<string, string> = { baseline: '#000000', residual: '#E69F00', viral: '#0072B2', other: '#009E73' };
const VARIANT_ORDER = ['baseline', 'residual', 'viral', 'other'];
const SHAPES = ['circle', 'square', 'triangle-up', 'diamond', 'cross', 'triangle-down', 'triangle-right', 'triangle-left'];
/** Fallback colours for series beyond the fixed variant colours (Okabe–Ito without black and yellow). */
const EXTRA = ['#D55E00', '#009E73', '#CC79A7', '#56B4E9', '#E69F00', '#0072B2'];
/** viridis at 9 stops, for ordered series such as checkpoints. */
const VIRIDIS = ['#440154', '#472d7b', '#3b528b', '#2c728e', '#21918c', '#28ae80', '#5ec962', '#addc30', '#fde725'];

export const FONT = 'Helvetica, Arial, "Liberation Sans", "DejaVu Sans", sans-serif';

export const PAPER_CONFIG = {
  font: FONT,
  background: 'white',
  padding: 8,
  view: { stroke: '#bdbdbd', strokeWidth: 0.5 },
  axis: {
    labelFontSize: 10,
    titleFontSize: 11,
    titleFontWeight: 'normal',
    labelColor: '#222222',
    titleColor: '#222222',
    domainColor: '#444444',
    tickColor: '#444444',
    gridColor: '#e6e6e6',
    gridWidth: 0.6,
  },
  legend: { labelFontSize: 10, titleFontSize: 10, titleFontWeight: 'normal', symbolSize: 60, symbolOpacity: 1, labelLimit: 220 },
  header: { labelFontSize: 11, titleFontSize: 11, titleFontWeight: 'normal', labelFontWeight: 'bold' },
  title: { fontSize: 13, fontWeight: 'bold', anchor: 'start', subtitleFontSize: 10, subtitleColor: '#555555', offset: 8 },
  line: { strokeWidth: 1.8 },
  point: { size: 28, filled: true },
  range: { category: [...OKABE_ITO] },
} as const;

const SCHEMA = 'https://vega.github.io/schema/vega-lite/v6.json';

function viridisAt(t: number): string {
  const x = Math.min(1, Math.max(0, t)) * (VIRIDIS.length - 1);
  const i = Math.min(VIRIDIS.length - 2, Math.floor(x));
  const f = x - i;
  const a = VIRIDIS[i]!;
  const b = VIRIDIS[i + 1]!;
  const ch = (s: string, k: number) => parseInt(s.slice(1 + 2 * k, 3 + 2 * k), 16);
  return `#${[0, 1, 2].map((k) => Math.round(ch(a, k) + (ch(b, k) - ch(a, k)) * f).toString(16).padStart(2, '0')).join('')}`;
}

/** One line/colour of a chart: a capture's (run, variant, step) under a display label. */
export interface Series {
  label: string;
  variant: string;
  step: number | null;
  run?: string;
}

export type ColorBy = 'variant' | 'step';

/**
 * Colours for series: by variant → the fixed variant colour (a second series of the same variant gets the next
 * free Okabe–Ito colour); by step → viridis from the earliest (dark) to the latest (yellow) checkpoint.
 */
export function seriesColors(series: readonly Series[], by: ColorBy): { domain: string[]; range: string[] } {
  const ordered = sortSeries(series, by);
  if (by === 'step') {
    const n = ordered.length;
    return { domain: ordered.map((s) => s.label), range: ordered.map((_, i) => viridisAt(n === 1 ? 0.35 : (i / (n - 1)) * 0.92)) };
  }
  const used = new Set<string>();
  const range = ordered.map((s) => {
    let c = VARIANT_COLORS[s.variant] ?? EXTRA[0]!;
    if (used.has(c)) c = EXTRA.find((e) => !used.has(e)) ?? c;
    used.add(c);
    return c;
  });
  return { domain: ordered.map((s) => s.label), range };
}

export function sortSeries<T extends Series>(series: readonly T[], by: ColorBy): T[] {
  const v = (s: Series) => (VARIANT_ORDER.includes(s.variant) ? VARIANT_ORDER.indexOf(s.variant) : VARIANT_ORDER.length);
  return [...series].sort((a, b) =>
    by === 'step'
      ? (a.step ?? -1) - (b.step ?? -1) || v(a) - v(b) || a.label.localeCompare(b.label)
      : v(a) - v(b) || (a.run ?? '').localeCompare(b.run ?? '') || (a.step ?? -1) - (b.step ?? -1),
  );
}

/** The line under a chart title that says how the numbers were computed. */
export function describeProvenance(p: Record<string, unknown>): string {
  const parts: string[] = [];
  const metric = typeof p.metric === 'string' ? p.metric : null;
  if (metric) parts.push(`${metricTitle(metric)}${p.k ? `, k = ${p.k}` : ''}`);
  if (p.target) parts.push(`target ${String(p.target)}`);
  if (p.token_mode) parts.push(`tokens ${String(p.token_mode)}`);
  if (p.preprocess) parts.push(`preprocess ${String(p.preprocess)}`);
  if (p.n !== undefined && p.n !== null) parts.push(`n = ${Array.isArray(p.n) ? p.n.join('/') : String(p.n)}`);
  if (p.engine) parts.push(`engine ${String(p.engine)}`);
  return parts.join(' · ');
}

export function metricTitle(metric: string): string {
  return (METRICS as Record<string, { title: string } | undefined>)[metric]?.title ?? metric;
}

function axisTitleFor(metric: string, k: unknown): string {
  return `${metricTitle(metric)}${k ? ` (k = ${k})` : ''}`;
}

/** A layer the training touched: VIRAL's aligned layer or a residual re-injection layer. */
export interface LayerMark {
  layer_index: number;
  label: string;
  /** The series it belongs to (drawn in that series' colour), or null for every series. */
  series: string | null;
}

/** One point of a layer-wise curve. */
export interface CurvePoint {
  series: string;
  variant: string;
  step: number | null;
  run?: string;
  target: string;
  metric: string;
  layer: string;
  layer_index: number;
  value: number | null;
  ci_low?: number | null;
  ci_high?: number | null;
  k?: number | null;
  n?: number;
  preprocess?: string;
  token_mode?: string;
  engine?: string;
}

/** The fields of a layer-sweep row that a curve point carries (analysis/layerwise.ts LayerwiseRow has them all). */
export interface SweepRowFields {
  target: string;
  metric: string;
  layer: string;
  layer_index: number;
  value: number | null;
  ci_low?: number | null;
  ci_high?: number | null;
  k: number | null;
  n: number;
  preprocess: string;
  token_mode: string;
  engine: string;
}

/** One point of a layer-wise curve, from a sweep row and the series it belongs to (CLI figure and dashboard alike). */
export function curvePoint(r: SweepRowFields, series: Pick<CurvePoint, 'series' | 'variant' | 'step' | 'run'>): CurvePoint {
  return {
    ...series,
    target: r.target,
    metric: r.metric,
    layer: r.layer,
    layer_index: r.layer_index,
    value: r.value,
    ...(r.ci_low === undefined ? {} : { ci_low: r.ci_low, ci_high: r.ci_high ?? null }),
    k: r.k,
    n: r.n,
    preprocess: r.preprocess,
    token_mode: r.token_mode,
    engine: r.engine,
  };
}

function finiteOrNull(v: unknown): number | null {
  return typeof v === 'number' && Number.isFinite(v) ? v : null;
}

function cleanCurve(rows: readonly CurvePoint[]): CurvePoint[] {
  return rows.map((r) => ({
    ...r,
    value: finiteOrNull(r.value),
    ...(r.ci_low === undefined ? {} : { ci_low: finiteOrNull(r.ci_low) }),
    ...(r.ci_high === undefined ? {} : { ci_high: finiteOrNull(r.ci_high) }),
  }));
}

interface CurveLayersOptions {
  colors: { domain: string[]; range: string[] };
  shapes: boolean;
  hasCi: boolean;
  yTitle: string;
  legendTitle: string;
  xDomain: [number, number];
  marks: { color: string; slot: number }[];
}

/** Band + line + points + marked layers, over data whose rows carry `kind` ('curve' | 'mark'). */
function curveLayers(o: CurveLayersOptions): VlSpec[] {
  const x = {
    field: 'layer_index',
    type: 'quantitative',
    title: 'LLM layer ℓ (hidden_states index)',
    scale: { domain: o.xDomain, nice: false, zero: false },
    axis: { tickMinStep: 1, format: 'd' },
  };
  const color = { field: 'series', type: 'nominal', title: o.legendTitle, scale: o.colors, sort: o.colors.domain, legend: { orient: 'right' } };
  const tooltip = [
    { field: 'series', title: 'series' },
    { field: 'layer', title: 'layer' },
    { field: 'layer_index', title: 'ℓ' },
    { field: 'value', title: o.yTitle, format: '.4f' },
    ...(o.hasCi ? [{ field: 'ci_low', title: 'CI low', format: '.4f' }, { field: 'ci_high', title: 'CI high', format: '.4f' }] : []),
  ];
  const curve = { filter: "datum.kind === 'curve'" };
  const layers: VlSpec[] = [];
  if (o.hasCi) {
    layers.push({
      transform: [curve, { filter: 'isValid(datum.ci_low) && isValid(datum.ci_high)' }],
      mark: { type: 'area', opacity: 0.16, interpolate: 'linear' },
      encoding: { x, y: { field: 'ci_low', type: 'quantitative', title: o.yTitle }, y2: { field: 'ci_high' }, color },
    });
  }
  layers.push({
    transform: [curve],
    mark: { type: 'line', interpolate: 'linear' },
    encoding: { x, y: { field: 'value', type: 'quantitative', title: o.yTitle, scale: { zero: false } }, color, detail: { field: 'series' } },
  });
  layers.push({
    transform: [curve],
    mark: { type: 'point', filled: true, size: 26 },
    encoding: {
      x,
      y: { field: 'value', type: 'quantitative' },
      color,
      ...(o.shapes ? { shape: { field: 'series', type: 'nominal', sort: o.colors.domain, scale: { domain: o.colors.domain, range: SHAPES.slice(0, o.colors.domain.length) }, title: o.legendTitle } } : {}),
      tooltip,
    },
  });
  // One rule + label layer per marked layer, coloured by a mark property: a colour channel (even with scale null)
  // would take part in the shared colour legend of concatenated views.
  for (const [id, m] of o.marks.entries()) {
    const only = { filter: `datum.kind === 'mark' && datum.mark_id === ${id}` };
    layers.push({
      transform: [only],
      mark: { type: 'rule', strokeDash: [4, 3], strokeWidth: 1.2, opacity: 0.9, color: m.color },
      encoding: { x: { field: 'layer_index', type: 'quantitative' } },
    });
    // Labels sit above the plot frame (clear of the data), stacked when marks share a layer.
    layers.push({
      transform: [only],
      mark: { type: 'text', align: 'left', baseline: 'bottom', dx: 3, fontSize: 9, y: -3 - 11 * m.slot, color: m.color },
      encoding: { x: { field: 'layer_index', type: 'quantitative' }, text: { field: 'label' } },
    });
  }
  return layers;
}

export interface LayerwiseFigureOptions {
  metric: string;
  /** Only rows of these targets (default: all present); more than one → one panel per target. */
  targets?: string[];
  colorBy: ColorBy;
  series: Series[];
  marks?: LayerMark[];
  title?: string;
  provenance: Record<string, unknown>;
  notes?: string[];
  width?: number;
  height?: number;
}

/**
 * Layer-wise similarity curves: x = layer, y = metric, one line per series (variant or checkpoint), a band where
 * the rows carry `ci_low`/`ci_high`, dashed rules at marked layers (VIRAL's aligned layer, residual layers).
 */
export function layerwiseFigure(rows: readonly CurvePoint[], o: LayerwiseFigureOptions): Figure {
  const data = cleanCurve(rows.filter((r) => r.metric === o.metric && (!o.targets || o.targets.includes(r.target))));
  const targets = o.targets ?? [...new Set(data.map((r) => r.target))];
  const present = new Set(data.map((r) => r.series));
  const series = o.series.filter((s) => present.has(s.label));
  const colors = seriesColors(series, o.colorBy);
  const hasCi = data.some((r) => r.ci_low !== undefined && r.ci_low !== null);
  const k = data.find((r) => r.k)?.k ?? null;
  const yTitle = axisTitleFor(o.metric, k);
  const indices = data.map((r) => r.layer_index);
  const marks = (o.marks ?? []).filter((m) => m.series === null || present.has(m.series));
  const colorOf = (s: string | null) => (s === null ? '#555555' : colors.range[colors.domain.indexOf(s)] ?? '#555555');
  // Stack mark labels that share a layer so they do not overprint.
  const seen = new Map<number, number>();
  const markStyles = marks.map((m) => {
    const slot = seen.get(m.layer_index) ?? 0;
    seen.set(m.layer_index, slot + 1);
    return { color: colorOf(m.series), slot };
  });
  const markRows = marks.flatMap((m, mark_id) => targets.map((target) => ({ kind: 'mark', target, layer_index: m.layer_index, label: m.label, mark_id })));
  const xDomain: [number, number] = indices.length ? [Math.min(...indices), Math.max(...indices)] : [0, 1];
  const layers = curveLayers({
    colors,
    shapes: o.colorBy === 'variant' && series.length <= SHAPES.length,
    hasCi,
    yTitle,
    legendTitle: o.colorBy === 'step' ? 'checkpoint' : 'variant',
    xDomain,
    marks: markStyles,
  });
  const values = [...data.map((r) => ({ kind: 'curve', ...r })), ...markRows];
  const provenance = { ...o.provenance, metric: o.metric, k, targets, ci: hasCi ? 'ci_low/ci_high from the rows' : 'none' };
  const subtitle = describeProvenance({ ...provenance, target: targets.length === 1 ? targets[0] : undefined });
  const width = o.width ?? (targets.length > 1 ? 300 : 540);
  const height = o.height ?? 290;
  const top = {
    $schema: SCHEMA,
    title: { text: o.title ?? `${metricTitle(o.metric)} per layer${targets.length === 1 ? ` vs ${targets[0]}` : ''}`, subtitle },
    data: { values },
    config: PAPER_CONFIG,
    usermeta: { viralLens: { figure: 'layerwise', provenance } },
  };
  const spec: VlSpec =
    targets.length > 1
      ? {
          ...top,
          facet: { column: { field: 'target', type: 'nominal', title: null, sort: targets, header: { labelExpr: "'vs ' + datum.label" } } },
          spec: { width, height, layer: layers },
        }
      : { ...top, width, height, layer: layers };
  return { name: 'layerwise', spec, data: data as unknown as Row[], provenance, notes: o.notes ?? [] };
}

// ---------------------------------------------------------------------------------------------------------------
// Checkpoints

export interface CheckpointFigureOptions {
  metric: string;
  target: string;
  /** Series (one per run/variant; their rows hold several steps). */
  series: Series[];
  /** Label of the baseline series to subtract (same step, same layer), or null for no difference panel. */
  baseline: string | null;
  provenance: Record<string, unknown>;
  notes?: string[];
}

/**
 * Each row with its difference to the baseline series at the same step and layer (null for the baseline itself, and
 * where there is no baseline value); `missing` counts the rows with no baseline cell at all.
 */
function withBaselineDiff(data: readonly CurvePoint[], baseline: string | null): { rows: (CurvePoint & { diff: number | null })[]; missing: number } {
  const base = new Map<string, number | null>();
  if (baseline) for (const r of data) if (r.series === baseline) base.set(`${r.step}|${r.layer_index}`, r.value);
  let missing = 0;
  const rows = data.map((r) => {
    if (!baseline || r.series === baseline) return { ...r, diff: null as number | null };
    const b = base.get(`${r.step}|${r.layer_index}`);
    if (b === undefined) missing++;
    return { ...r, diff: b === undefined || b === null || r.value === null ? null : r.value - b };
  });
  return { rows, missing };
}

/** A row of layer × step heatmaps, one per series (faceted), in cells of the given size. */
function heatmapPanel(title: string, values: readonly unknown[], order: readonly string[], cell: { w: number; h: number; x: unknown; y: unknown }, color: unknown, tooltip: unknown[]): VlSpec {
  return {
    title: { text: title, fontSize: 11, fontWeight: 'normal' },
    data: { values },
    facet: { column: { field: 'series', type: 'nominal', sort: order, header: { title: null, labelAngle: 0 } } },
    spec: {
      width: { step: cell.w },
      height: { step: cell.h },
      mark: { type: 'rect' },
      encoding: { x: cell.x, y: cell.y, color, tooltip },
    },
  };
}

/**
 * Layer × step heatmaps, one per series, and below them the difference to the baseline series at the same step and
 * layer (cells without a baseline value at that exact step are left empty and counted in the notes).
 */
export function checkpointFigure(rows: readonly CurvePoint[], o: CheckpointFigureOptions): Figure {
  const data = cleanCurve(rows.filter((r) => r.metric === o.metric && r.target === o.target && r.step !== null));
  const order = o.series.map((s) => s.label);
  const notes = [...(o.notes ?? [])];
  const { rows: withDiff, missing } = withBaselineDiff(data, o.baseline);
  if (o.baseline && missing) notes.push(`${missing} cell(s) have no baseline value at the same step and layer; their difference is left empty`);
  const k = data.find((r) => r.k)?.k ?? null;
  const steps = [...new Set(data.map((r) => r.step as number))].sort((a, b) => a - b);
  const layers = [...new Set(data.map((r) => r.layer_index))].sort((a, b) => a - b);
  const cell = {
    w: Math.max(10, Math.min(44, Math.floor(320 / Math.max(1, steps.length)))),
    h: Math.max(6, Math.min(22, Math.floor(260 / Math.max(1, layers.length)))),
    x: { field: 'step', type: 'ordinal', title: 'training step', sort: steps, axis: { labelAngle: steps.length > 8 ? -45 : 0 } },
    y: { field: 'layer_index', type: 'ordinal', title: 'layer ℓ', sort: 'descending', axis: { labelExpr: layers.length > 16 ? 'datum.value % 4 === 0 ? datum.label : ""' : 'datum.label' } },
  };
  const tooltip = [{ field: 'series' }, { field: 'step' }, { field: 'layer_index', title: 'ℓ' }, { field: 'value', format: '.4f' }];
  const legend = { orient: 'right', gradientLength: 120 };
  const parts: VlSpec[] = [
    heatmapPanel(axisTitleFor(o.metric, k), withDiff, order, cell, { field: 'value', type: 'quantitative', scale: { scheme: 'viridis' }, title: metricTitle(o.metric), legend }, tooltip),
  ];
  const diffs = withDiff.filter((r) => r.diff !== null);
  const maxAbs = Math.max(1e-6, ...diffs.map((r) => Math.abs(r.diff!)));
  if (o.baseline && diffs.length) {
    const color = { field: 'diff', type: 'quantitative', scale: { scheme: 'blueorange', domain: [-maxAbs, maxAbs] }, title: `Δ ${metricTitle(o.metric)}`, legend };
    const others = order.filter((s) => s !== o.baseline);
    parts.push(heatmapPanel(`difference to ${o.baseline} (same step, same layer)`, diffs, others, cell, color, [...tooltip, { field: 'diff', title: 'Δ vs baseline', format: '+.4f' }]));
  }
  const provenance = { ...o.provenance, metric: o.metric, k, target: o.target, baseline: o.baseline };
  const spec: VlSpec = {
    $schema: SCHEMA,
    title: { text: `${metricTitle(o.metric)} across training vs ${o.target}`, subtitle: describeProvenance(provenance) },
    config: PAPER_CONFIG,
    usermeta: { viralLens: { figure: 'checkpoints', provenance } },
    vconcat: parts,
    spacing: 18,
    resolve: { scale: { color: 'independent' } },
  };
  return { name: 'checkpoints', spec, data: withDiff as unknown as Row[], provenance, notes };
}

export interface TrainingFigureOptions {
  metric: string;
  target: string;
  layer_index: number;
  series: Series[];
  provenance: Record<string, unknown>;
}

/** The metric at one layer over training steps, one line per series (the plot the paper does not have). */
export function trainingFigure(rows: readonly CurvePoint[], o: TrainingFigureOptions): Figure {
  const data = cleanCurve(rows.filter((r) => r.metric === o.metric && r.target === o.target && r.layer_index === o.layer_index && r.step !== null));
  const present = new Set(data.map((r) => r.series));
  const colors = seriesColors(o.series.filter((s) => present.has(s.label)), 'variant');
  const k = data.find((r) => r.k)?.k ?? null;
  const hasCi = data.some((r) => r.ci_low !== undefined && r.ci_low !== null);
  const x = { field: 'step', type: 'quantitative', title: 'training step' };
  const color = { field: 'series', type: 'nominal', title: 'variant', scale: colors, sort: colors.domain };
  const provenance = { ...o.provenance, metric: o.metric, k, target: o.target, layer_index: o.layer_index };
  const spec: VlSpec = {
    $schema: SCHEMA,
    title: { text: `${metricTitle(o.metric)} at layer ${o.layer_index} during training`, subtitle: describeProvenance(provenance) },
    config: PAPER_CONFIG,
    usermeta: { viralLens: { figure: 'training', provenance } },
    data: { values: data },
    width: 420,
    height: 220,
    layer: [
      ...(hasCi
        ? [{ transform: [{ filter: 'isValid(datum.ci_low)' }], mark: { type: 'area', opacity: 0.16 }, encoding: { x, y: { field: 'ci_low', type: 'quantitative' }, y2: { field: 'ci_high' }, color } }]
        : []),
      { mark: { type: 'line', point: { filled: true, size: 26 } }, encoding: { x, y: { field: 'value', type: 'quantitative', title: axisTitleFor(o.metric, k), scale: { zero: false } }, color, tooltip: [{ field: 'series' }, { field: 'step' }, { field: 'value', format: '.4f' }] } },
    ],
  };
  return { name: 'training', spec, data: data as unknown as Row[], provenance, notes: [] };
}

// ---------------------------------------------------------------------------------------------------------------
// Baseline vs residual vs VIRAL

export interface AccuracyRow {
  series: string;
  variant: string;
  run?: string;
  benchmark: string;
  value: number;
  step?: number | null;
  source?: string;
  /** The benchmark's chance level in the unit of `value`, drawn as a dashed rule (e.g. demo/model/chance.ts). */
  chance?: number | null;
}

export interface VariantsFigureOptions {
  metric: string;
  series: Series[];
  marks?: LayerMark[];
  provenance: Record<string, unknown>;
  notes?: string[];
}

/** Task/probe accuracy per variant, one small bar panel per benchmark with its own y scale and chance rule. */
function accuracyPanel(accuracy: readonly AccuracyRow[], colors: ReturnType<typeof seriesColors>): VlSpec {
  const benchmarks = [...new Set(accuracy.map((a) => a.benchmark))];
  const chanceLayers = [
    {
      transform: [{ filter: 'isValid(datum.chance)' }],
      mark: { type: 'rule', strokeDash: [4, 3], color: '#000000', strokeWidth: 1 },
      encoding: { y: { field: 'chance', type: 'quantitative', aggregate: 'mean' }, tooltip: [{ field: 'chance', aggregate: 'mean', format: '.1f', title: 'chance' }] },
    },
    {
      transform: [{ filter: 'isValid(datum.chance)' }, { aggregate: [{ op: 'mean', field: 'chance', as: 'chance' }] }],
      mark: { type: 'text', text: 'chance', align: 'right', baseline: 'bottom', dy: -2, fontSize: 7.5, color: '#000000' },
      encoding: { x: { value: 'width' }, y: { field: 'chance', type: 'quantitative' } },
    },
  ];
  return {
    data: { values: accuracy },
    facet: { column: { field: 'benchmark', type: 'nominal', sort: benchmarks, title: 'task / probe accuracy', header: { labelAngle: 0 } } },
    spec: {
      width: 22 * Math.max(2, new Set(accuracy.map((a) => a.series)).size),
      height: 230,
      layer: [
        {
          mark: { type: 'bar', width: { band: 0.75 } },
          encoding: {
            x: { field: 'series', type: 'nominal', sort: colors.domain, axis: { labels: false, ticks: false, title: null } },
            y: { field: 'value', type: 'quantitative', title: null },
            color: { field: 'series', type: 'nominal', scale: colors, sort: colors.domain, title: 'variant' },
            tooltip: [{ field: 'series' }, { field: 'benchmark' }, { field: 'value', format: '.2f' }, { field: 'source' }],
          },
        },
        {
          mark: { type: 'text', dy: -5, fontSize: 8.5, baseline: 'bottom' },
          encoding: {
            x: { field: 'series', type: 'nominal', sort: colors.domain },
            y: { field: 'value', type: 'quantitative' },
            text: { field: 'value', format: '.1f' },
          },
        },
        ...(accuracy.some((a) => typeof a.chance === 'number') ? chanceLayers : []),
      ],
    },
    resolve: { scale: { y: 'independent' } },
  };
}

/**
 * One panel per target with every variant's curve (band when CIs exist, trained layers marked), and next to it the
 * task/probe accuracy per variant, one small panel per benchmark (each with its own y scale: POPE ≈ 85, MME ≈ 1650).
 */
export function variantsFigure(rows: readonly CurvePoint[], accuracy: readonly AccuracyRow[], o: VariantsFigureOptions): Figure {
  const curves = layerwiseFigure(rows, {
    metric: o.metric,
    colorBy: 'variant',
    series: o.series,
    marks: o.marks ?? [],
    provenance: o.provenance,
    width: 280,
    height: 230,
  });
  const notes = [...(o.notes ?? [])];
  const curveSpec = { ...curves.spec };
  for (const key of ['$schema', 'config', 'usermeta', 'title']) delete curveSpec[key];
  const parts: VlSpec[] = [curveSpec];
  if (accuracy.length) parts.push(accuracyPanel(accuracy, seriesColors(o.series, 'variant')));
  else notes.push('no accuracy found (runs/<run>/results.json); showing the curves only');
  const provenance = { ...curves.provenance };
  const spec: VlSpec = {
    $schema: SCHEMA,
    title: { text: `Baseline vs residual vs VIRAL: ${metricTitle(o.metric)} per layer`, subtitle: describeProvenance(provenance) },
    config: PAPER_CONFIG,
    usermeta: { viralLens: { figure: 'variants', provenance } },
    hconcat: parts,
    spacing: 24,
    resolve: { scale: { color: 'shared' } },
  };
  const data = [...curves.data.map((r) => ({ table: 'curve', ...r })), ...accuracy.map((a) => ({ table: 'accuracy', ...a }))];
  return { name: 'variants', spec, data, provenance, notes: [...curves.notes, ...notes] };
}

// ---------------------------------------------------------------------------------------------------------------
// Embeddings

export interface MapPoint {
  series: string;
  sample_id: string;
  token: number | null;
  x: number;
  y: number;
  label: string | number | null;
}

export interface UmapFigureOptions {
  label: string | null;
  series: Series[];
  layer: string;
  provenance: Record<string, unknown>;
  notes?: string[];
}

/** Side-by-side UMAP maps (one panel per series) on shared, aligned axes, coloured by one manifest label. */
export function umapFigure(points: readonly MapPoint[], o: UmapFigureOptions): Figure {
  const order = o.series.map((s) => s.label);
  const numeric = points.length > 0 && points.every((p) => typeof p.label === 'number');
  const categories = numeric ? [] : [...new Set(points.map((p) => String(p.label)))].sort();
  const color = !o.label
    ? { value: '#0072B2' }
    : numeric
      ? { field: 'label', type: 'quantitative', title: o.label, scale: { scheme: 'viridis' } }
      : {
          field: 'label',
          type: 'nominal',
          title: o.label,
          scale: categories.length <= 8 ? { domain: categories, range: [...OKABE_ITO.slice(1), OKABE_ITO[0]].slice(0, categories.length) } : { scheme: 'category20' },
        };
  const axis = { labels: false, ticks: false, domain: false, titleFontSize: 10 };
  const provenance = { ...o.provenance, layer: o.layer, label: o.label };
  const spec: VlSpec = {
    $schema: SCHEMA,
    title: { text: `UMAP of layer ${o.layer}${o.label ? `, coloured by ${o.label}` : ''}`, subtitle: describeUmap(provenance) },
    config: PAPER_CONFIG,
    usermeta: { viralLens: { figure: 'umap', provenance } },
    data: { values: points },
    facet: { column: { field: 'series', type: 'nominal', sort: order, title: null } },
    spec: {
      width: 240,
      height: 240,
      mark: { type: 'point', filled: true, size: points.length > 2000 ? 8 : 24, opacity: 0.8 },
      encoding: {
        x: { field: 'x', type: 'quantitative', title: 'UMAP 1', axis, scale: { zero: false, nice: false } },
        y: { field: 'y', type: 'quantitative', title: 'UMAP 2', axis, scale: { zero: false, nice: false } },
        color,
        tooltip: [{ field: 'sample_id', title: 'sample' }, { field: 'token' }, { field: 'label', title: o.label ?? 'label' }, { field: 'series' }],
      },
    },
  };
  return { name: 'umap', spec, data: points as unknown as Row[], provenance, notes: o.notes ?? [] };
}

function describeUmap(p: Record<string, unknown>): string {
  return [
    `seed ${p.seed}`,
    `${p.n_neighbors} neighbours, min_dist ${p.min_dist}`,
    `cosine on ${p.preprocess}`,
    `tokens ${p.token_mode}`,
    `n = ${p.rows}`,
    `axes aligned by Procrustes`,
    `engine ${p.engine}`,
  ].join(' · ');
}

export interface GridPanel {
  series: string;
  layer: string;
  layer_index: number;
  rows: number;
  cols: number;
  colors: string[];
  explained: number[];
}

export interface PcaGridFigureOptions {
  sample: string;
  series: Series[];
  provenance: Record<string, unknown>;
  notes?: string[];
}

/** PCA-RGB token grids: one row per series, one column per layer, each cell a token coloured by PCs 1–3. */
export function pcaGridFigure(panels: readonly GridPanel[], o: PcaGridFigureOptions): Figure {
  const cells = panels.flatMap((p) =>
    p.colors.map((color, t) => ({
      series: p.series,
      layer_index: p.layer_index,
      layer: p.layer,
      row: Math.floor(t / p.cols),
      col: t % p.cols,
      token: t,
      color,
      explained: p.explained.map((e) => (100 * e).toFixed(1)).join('/'),
    })),
  );
  const cols = panels[0]?.cols ?? 1;
  const rows = panels[0]?.rows ?? 1;
  const step = Math.max(2, Math.min(24, Math.floor(84 / Math.max(rows, cols))));
  const provenance = { ...o.provenance, sample: o.sample };
  const layers = [...new Set(panels.map((p) => p.layer_index))].sort((a, b) => a - b);
  const spec: VlSpec = {
    $schema: SCHEMA,
    title: {
      text: `PCA-RGB token grids of ${o.sample}`,
      subtitle: `PCs 1–3 of this image's tokens per layer → R, G, B; ${String(o.provenance.normalisation ?? '')}`,
    },
    config: { ...PAPER_CONFIG, view: { stroke: null } },
    usermeta: { viralLens: { figure: 'pca-grid', provenance } },
    data: { values: cells },
    facet: {
      row: { field: 'series', type: 'nominal', sort: o.series.map((s) => s.label), title: null, header: { labelAngle: 0, labelAlign: 'left' } },
      column: { field: 'layer_index', type: 'ordinal', sort: layers, title: 'layer ℓ', header: { labelExpr: "'ℓ = ' + datum.label" } },
    },
    spacing: { row: 6, column: 4 },
    spec: {
      width: { step },
      height: { step },
      mark: { type: 'rect' },
      encoding: {
        x: { field: 'col', type: 'ordinal', axis: null },
        y: { field: 'row', type: 'ordinal', axis: null },
        color: { field: 'color', type: 'nominal', scale: null, legend: null },
        tooltip: [{ field: 'series' }, { field: 'layer' }, { field: 'token' }, { field: 'row' }, { field: 'col' }, { field: 'explained', title: 'variance % (PC1/2/3)' }],
      },
    },
  };
  return { name: 'pca-grid', spec, data: cells, provenance, notes: o.notes ?? [] };
}

// ---------------------------------------------------------------------------------------------------------------
// Probes

export interface ProbePoint {
  series: string;
  task: string;
  layer_index: number;
  accuracy: number;
  ci_low?: number | null;
  ci_high?: number | null;
  chance?: number | null;
}

export interface ProbeFigureOptions {
  series: Series[];
  marks?: LayerMark[];
  provenance: Record<string, unknown>;
  notes?: string[];
}

/** Probe accuracy per layer: one panel per probed label, one line per series, chance level as a grey rule. */
export function probeFigure(points: readonly ProbePoint[], o: ProbeFigureOptions): Figure {
  const present = new Set(points.map((p) => p.series));
  const series = o.series.filter((s) => present.has(s.label));
  const colors = seriesColors(series, 'variant');
  const tasks = [...new Set(points.map((p) => p.task))];
  const hasCi = points.some((p) => typeof p.ci_low === 'number');
  const hasChance = points.some((p) => typeof p.chance === 'number');
  const x = { field: 'layer_index', type: 'quantitative', title: 'LLM layer ℓ', axis: { tickMinStep: 1, format: 'd' } };
  const color = { field: 'series', type: 'nominal', title: 'variant', scale: colors, sort: colors.domain };
  const curve = { filter: "datum.kind === 'curve'" };
  // Trained layers as dashed rules in the series' colour, repeated in every task panel.
  const marks = (o.marks ?? []).filter((m) => m.series === null || present.has(m.series));
  const markRows = marks.flatMap((m, mark_id) => tasks.map((task) => ({ kind: 'mark', task, layer_index: m.layer_index, label: m.label, mark_id })));
  const values = [...points.map((p) => ({ kind: 'curve', ...p })), ...markRows];
  const layer: VlSpec[] = [
    ...(hasCi ? [{ transform: [curve, { filter: 'isValid(datum.ci_low)' }], mark: { type: 'area', opacity: 0.16 }, encoding: { x, y: { field: 'ci_low', type: 'quantitative' }, y2: { field: 'ci_high' }, color } }] : []),
    { transform: [curve], mark: { type: 'line' }, encoding: { x, y: { field: 'accuracy', type: 'quantitative', title: 'probe accuracy', scale: { zero: false } }, color } },
    {
      transform: [curve],
      mark: { type: 'point', filled: true, size: 22 },
      encoding: { x, y: { field: 'accuracy', type: 'quantitative' }, color, tooltip: [{ field: 'series' }, { field: 'task' }, { field: 'layer_index', title: 'ℓ' }, { field: 'accuracy', format: '.3f' }] },
    },
    ...(hasChance
      ? [
          { transform: [curve, { filter: 'isValid(datum.chance)' }], mark: { type: 'rule', color: '#888888', strokeDash: [2, 2] }, encoding: { y: { aggregate: 'mean', field: 'chance', type: 'quantitative' } } },
          {
            transform: [curve, { filter: 'isValid(datum.chance)' }],
            mark: { type: 'text', text: 'chance', align: 'right', baseline: 'bottom', dx: -2, dy: -2, fontSize: 9, color: '#666666' },
            encoding: { x: { value: 'width' }, y: { aggregate: 'mean', field: 'chance', type: 'quantitative' } },
          },
        ]
      : []),
    ...marks.map((m, id) => {
      const color = m.series === null ? '#555555' : (colors.range[colors.domain.indexOf(m.series)] ?? '#555555');
      return { transform: [{ filter: `datum.kind === 'mark' && datum.mark_id === ${id}` }], mark: { type: 'rule', strokeDash: [4, 3], strokeWidth: 1.2, color }, encoding: { x: { field: 'layer_index', type: 'quantitative' } } };
    }),
  ];
  const provenance = { ...o.provenance, tasks };
  const spec: VlSpec = {
    $schema: SCHEMA,
    title: { text: 'Linear probe accuracy per layer', subtitle: String(o.provenance.description ?? 'from probes.json in each capture') },
    config: PAPER_CONFIG,
    usermeta: { viralLens: { figure: 'probes', provenance } },
    data: { values },
    facet: { column: { field: 'task', type: 'nominal', sort: tasks, title: null } },
    spec: { width: 280, height: 220, layer },
  };
  return { name: 'probes', spec, data: points as unknown as Row[], provenance, notes: o.notes ?? [] };
}

// Tables and headless rendering live in analysis/render.ts (re-exported here).
export * from './render.js';

export function isMetric(name: string): name is MetricName {
  return name in METRICS;
}
