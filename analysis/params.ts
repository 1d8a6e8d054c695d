/**
 * One schema per analysis: which of the shared parameters (src/metrics/params.ts) it takes, under which option key,
 * with which default. The CLI's flags and usage text, the server's query validation and job parameters, the shard
 * files' parameters and the page's selectors are all derived from these, so a default or a bound is written once.
 */
import { z } from 'zod';
import { ParamError } from '../src/core/errors.js';
import { ENGINE_NAMES } from '../src/engine/names.js';
import { DEMO_METRIC } from './demo-settings.js';
import { enumParam, intParam, K, KNN, MAX_ROWS, METRIC, numberParam, PREPROCESS, Q, SEED, TOKENS, type ParamDef } from '../src/metrics/params.js';

export const ENGINE = enumParam({
  name: 'engine',
  doc: 'compute engine',
  choices: ENGINE_NAMES,
  default: 'auto',
  // createEngine names the engine it could not start; reading the name is all that is checked here.
  parse: (raw) => raw as (typeof ENGINE_NAMES)[number],
});
export const PERMUTATIONS = intParam({ name: 'permutations', doc: 'permutation-null draws per score (0 = none)', default: 0, min: 0, max: 100_000, meta: 'N' });
export const BOOTSTRAP = intParam({ name: 'bootstrap', doc: 'half-sampling draws for a confidence interval (0 = none)', default: 0, min: 0, max: 5000, meta: 'N' });
export const CI = numberParam({ name: 'ci', doc: 'confidence level of the interval', default: 0.95, min: 0.5, max: 0.999, meta: 'LEVEL' });
export const PERM_UNIT = enumParam({
  name: 'perm_unit',
  doc: 'what a permutation shuffles',
  choices: ['row', 'image'] as const,
  parse: (raw) => {
    if (raw === 'row' || raw === 'image') return raw;
    throw new ParamError('perm_unit', `expected row or image, got '${raw}'`);
  },
});
export const N_NEIGHBORS = intParam({ name: 'n_neighbors', doc: "UMAP's neighbours per point", default: 15, min: 2, max: 200, meta: 'N' });
export const MIN_DIST = numberParam({ name: 'min_dist', doc: "UMAP's minimum distance", default: 0.1, min: 0, max: 1, meta: 'D' });
export const EPOCHS = intParam({ name: 'epochs', doc: "UMAP's optimisation epochs", min: 10, max: 2000, meta: 'N' });

/** One parameter of one analysis: the shared definition, the analysis's option key, and its default there. */
export interface AnalysisParam {
  def: ParamDef;
  /** The analysis's option key (`tokenMode` for `tokens`); default: the parameter's name. */
  key: string;
  /** This analysis's default (else the definition's; none: optional, or required when `required`). */
  default?: unknown;
  required?: boolean;
  /** Why a required parameter has no default (said when it is missing). */
  note?: string;
  /** A comma-separated list / repeated flag (`--metric cknna,cka`). */
  multiple?: boolean;
}

export interface AnalysisSchema {
  name: string;
  params: readonly AnalysisParam[];
  /** Validates (and fills in defaults of) the analysis's parameters as an object: job and shard parameters. */
  schema: z.ZodObject<z.ZodRawShape>;
}

type ParamUse = ParamDef | [ParamDef, Partial<Omit<AnalysisParam, 'def'>>];

function analysisSchema(name: string, uses: readonly ParamUse[]): AnalysisSchema {
  const params = uses.map((u): AnalysisParam => {
    const [def, extra] = Array.isArray(u) ? u : [u, {}];
    // `{ default: undefined }` says the analysis leaves the parameter out when it is not given (the library's own
    // default applies and the output records nothing).
    const inherit = !('default' in extra) && def.default !== undefined && !extra.required;
    return { def, key: extra.key ?? def.name, ...extra, ...(inherit ? { default: def.default } : {}) };
  });
  const shape: Record<string, z.ZodType> = {};
  for (const p of params) {
    const base = p.multiple ? z.array(p.def.schema).min(1) : p.def.schema;
    shape[p.key] = p.default !== undefined ? base.default(p.default as never) : p.required ? base : base.optional();
  }
  return { name, params, schema: z.object(shape) };
}

// ci is left out unless given: the statistics' own default applies, and shard parameters record only what was asked.
const STATS: readonly ParamUse[] = [PERMUTATIONS, BOOTSTRAP, [CI, { default: undefined }], [PERM_UNIT, { key: 'permUnit' }]];

export const COMPARE = analysisSchema('compare', [
  [METRIC, { required: true }],
  K,
  [PREPROCESS, { required: true, note: 'results depend on it, so there is no silent default' }],
  [Q, { default: undefined }],
  ENGINE,
  SEED,
  ...STATS,
]);

export const LAYERWISE = analysisSchema('layerwise', [
  [METRIC, { key: 'metrics', multiple: true, default: ['cknna'] }],
  K,
  [PREPROCESS, { default: 'prh' }],
  [Q, { default: undefined }],
  [TOKENS, { key: 'tokenMode', default: 'mean' }],
  [MAX_ROWS, { key: 'maxRows' }],
  SEED,
  ENGINE,
  KNN,
  ...STATS,
]);

/** The dashboard's curves: the layer-wise analysis with the demo readout's defaults (analysis/demo-settings.ts). */
export const CURVES = analysisSchema('curves', [
  [METRIC, { default: DEMO_METRIC.metric }],
  [K, { default: DEMO_METRIC.k }],
  [PREPROCESS, { default: DEMO_METRIC.preprocess }],
  [Q, { default: undefined }],
  [TOKENS, { default: DEMO_METRIC.tokenMode }],
  MAX_ROWS,
  SEED,
  BOOTSTRAP,
  CI,
]);

export const UMAP = analysisSchema('umap', [
  [TOKENS, { key: 'tokenMode', default: 'mean' }],
  [PREPROCESS, { default: 'l2' }],
  SEED,
  [N_NEIGHBORS, { key: 'nNeighbors', default: undefined }],
  [MIN_DIST, { key: 'minDist', default: undefined }],
  [EPOCHS, { key: 'nEpochs' }],
  [MAX_ROWS, { key: 'maxRows' }],
  ENGINE,
]);

export const FOLDS = intParam({ name: 'folds', doc: 'cross-validation folds (over images)', default: 5, min: 2, max: 100, meta: 'K' });
export const MAX_TOKENS = intParam({ name: 'max_tokens', doc: 'per token: a seeded subset of this many positions per image', min: 1, max: 1_000_000, meta: 'N' });

/** Linear probes per layer (analysis/probes.ts); its bootstrap is the probe score's interval, 1000 draws unless told. */
export const PROBE = analysisSchema('probe', [
  [TOKENS, { key: 'tokenMode', default: 'mean' }],
  [MAX_TOKENS, { key: 'maxTokens' }],
  FOLDS,
  SEED,
  [CI, { default: undefined }],
  [BOOTSTRAP, { default: 1000 }],
]);

export const ANALYSES = { compare: COMPARE, layerwise: LAYERWISE, curves: CURVES, umap: UMAP, probe: PROBE } as const;

/** Reads an analysis's parameters from text (flags, a query string): defaults filled in, bounds checked, in one place. */
export function readParams(a: AnalysisSchema, raw: Readonly<Record<string, string | string[] | undefined>>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const p of a.params) {
    const v = raw[p.def.name];
    if (v === undefined) {
      if (p.required) throw new ParamError(p.def.name, `${p.def.name} is required${p.def.choices ? ` (one of ${p.def.choices.join(', ')})` : ''}`);
      if (p.default !== undefined) out[p.key] = p.default;
      continue;
    }
    if (p.multiple) {
      const items = (Array.isArray(v) ? v : [v]).flatMap((s) => s.split(',')).map((s) => s.trim()).filter(Boolean);
      out[p.key] = items.length ? items.map((s) => p.def.parse(s)) : p.default;
    } else out[p.key] = p.def.parse(Array.isArray(v) ? v[v.length - 1]! : v);
  }
  return out;
}

/** Plain data for the page and for /api/runs: each parameter with this analysis's default, bounds and choices. */
export function describeAnalysis(a: AnalysisSchema): Record<string, unknown>[] {
  return a.params.map((p) => {
    const d: Record<string, unknown> = { name: p.def.name, kind: p.def.kind, doc: p.def.doc };
    if (p.default !== undefined) d.default = p.default;
    if (p.required) d.required = true;
    if (p.multiple) d.multiple = true;
    if (p.def.min !== undefined) d.min = p.def.min;
    if (p.def.minExclusive) d.min_exclusive = true;
    if (p.def.max !== undefined) d.max = p.def.max;
    if (p.def.choices) d.choices = p.def.choices.map((c) => [c, p.def.titles?.[c] ?? c]);
    return d;
  });
}

/** The parameter of an analysis by name (tests, the server's query fields). */
export function paramOf(a: AnalysisSchema, name: string): AnalysisParam {
  const p = a.params.find((x) => x.def.name === name);
  if (!p) throw new Error(`${a.name} has no parameter ${name}`);
  return p;
}
