/**
 * The similarity parameters, each defined once: its default, its bounds or its choices (taken from the registries),
 * and how it is read from text. Every front end derives from these definitions: the CLI's flags and usage text, the
 * server's query validation, the job and shard parameters and the dashboard's selectors (netrep's validation at the
 * door). Errors are ParamErrors that name the parameter as the library calls it; each front end words it its own way.
 */
import { z } from 'zod';
import { ParamError } from '../core/errors.js';
import { parsePreprocess, PREPROCESS_NAMES } from '../core/preprocess.js';
import { parseTokenMode, TOKEN_MODES } from '../core/tokens.js';
import { KNN_MODES, parseKnnMode } from '../engine/approx.js';
import { METRIC_NAMES, METRICS, parseMetric } from './registry.js';

/** One parameter: what it is, its default, its bounds or its choices, its zod schema and its reader from text. */
export interface ParamDef<T = unknown> {
  /** The library's name (ParamError's `param`, the server's query field, the JSON key). */
  name: string;
  doc: string;
  kind: 'int' | 'number' | 'enum';
  default?: T;
  min?: number;
  /** `min` itself is excluded (q ∈ (0, 1]). */
  minExclusive?: boolean;
  max?: number;
  choices?: readonly string[];
  /** Display titles of the choices (the page's selectors). */
  titles?: Readonly<Record<string, string>>;
  /** A placeholder for usage text (`K`, `N`). */
  meta?: string;
  schema: z.ZodType<T>;
  /** Reads the value from text (a flag, a query string) and checks it; throws ParamError. */
  parse(raw: string): T;
}

function boundsText(d: Pick<ParamDef, 'min' | 'max' | 'minExclusive'>): string {
  const lo = d.min === undefined ? '' : `${d.minExclusive ? '>' : '≥'} ${d.min}`;
  const hi = d.max === undefined ? '' : `≤ ${d.max}`;
  return [lo, hi].filter(Boolean).join(' and ');
}

/** Checks a number against a definition's bounds (the one range check for every front end). */
export function checkRange(d: Pick<ParamDef, 'name' | 'kind' | 'min' | 'max' | 'minExclusive'>, v: number): number {
  const low = d.min !== undefined && (d.minExclusive ? !(v > d.min) : !(v >= d.min));
  const high = d.max !== undefined && !(v <= d.max);
  const notInt = d.kind === 'int' && !Number.isInteger(v);
  if (low || high || notInt || Number.isNaN(v)) {
    throw new ParamError(d.name, `${d.name} must be ${d.kind === 'int' ? 'an integer' : 'a number'} ${boundsText(d)}, got ${v}`);
  }
  return v;
}

interface NumberSpec {
  name: string;
  doc: string;
  default?: number;
  min?: number;
  minExclusive?: boolean;
  max?: number;
  meta?: string;
}

function numberSchema(s: NumberSpec, int: boolean): z.ZodNumber {
  let schema = int ? z.number().int() : z.number();
  if (s.min !== undefined) schema = s.minExclusive ? schema.gt(s.min) : schema.min(s.min);
  if (s.max !== undefined) schema = schema.max(s.max);
  return schema;
}

export function intParam(s: NumberSpec): ParamDef<number> {
  const def: ParamDef<number> = {
    ...s,
    kind: 'int',
    schema: numberSchema(s, true),
    parse(raw) {
      const n = Number(raw);
      if (raw.trim() === '' || !Number.isInteger(n)) throw new ParamError(s.name, `expected an integer, got '${raw}'`);
      return checkRange(def, n);
    },
  };
  return def;
}

export function numberParam(s: NumberSpec): ParamDef<number> {
  const def: ParamDef<number> = {
    ...s,
    kind: 'number',
    schema: numberSchema(s, false),
    parse(raw) {
      const n = Number(raw);
      if (raw.trim() === '' || !Number.isFinite(n)) throw new ParamError(s.name, `expected a number, got '${raw}'`);
      return checkRange(def, n);
    },
  };
  return def;
}

export function enumParam<T extends string>(s: {
  name: string;
  doc: string;
  choices: readonly T[];
  default?: NoInfer<T>;
  titles?: Readonly<Record<string, string>>;
  parse: (raw: string) => T;
}): ParamDef<T> {
  return { ...s, kind: 'enum', schema: z.enum(s.choices as [T, ...T[]]) as unknown as z.ZodType<T> };
}

/** The kNN size; its default is the one used wherever none is given (CLI, pages, demo readout). */
export const K = intParam({ name: 'k', doc: 'neighbours per row for the kNN metrics', default: 10, min: 2, max: 1000, meta: 'K' });
export const METRIC = enumParam({
  name: 'metric',
  doc: 'similarity metric',
  choices: METRIC_NAMES,
  titles: Object.fromEntries(METRIC_NAMES.map((m) => [m, METRICS[m].title])),
  parse: parseMetric,
});
export const PREPROCESS = enumParam({
  name: 'preprocess',
  doc: 'row preprocessing before the metric',
  choices: PREPROCESS_NAMES,
  titles: { none: 'none', l2: 'L2 rows', prh: 'prh (clamp q=0.95, L2)' },
  parse: parsePreprocess,
});
export const Q = numberParam({ name: 'q', doc: "quantile of |x| for prh's clamp", default: 0.95, min: 0, minExclusive: true, max: 1, meta: 'Q' });
export const TOKENS = enumParam({
  name: 'tokens',
  doc: 'how per-token captures become rows',
  choices: TOKEN_MODES,
  titles: { mean: 'mean per image', 'per-token': 'per token', first: 'first token' },
  parse: parseTokenMode,
});
export const MAX_ROWS = intParam({ name: 'max_rows', doc: 'seeded subsample of rows (after token flattening)', min: 4, max: 1_000_000, meta: 'N' });
export const SEED = intParam({ name: 'seed', doc: 'seed of every subsample and resample', default: 0, min: 0, max: 2147483647, meta: 'S' });
export const KNN = enumParam({ name: 'knn', doc: 'exact or approximate (HNSW) kNN lists', choices: KNN_MODES, default: 'auto', parse: parseKnnMode });

/** A definition with a default, as a zod schema that fills it in. */
export function withDefault<T>(d: ParamDef<T>): z.ZodDefault<z.ZodType<T>> {
  if (d.default === undefined) throw new Error(`parameter ${d.name} has no default`);
  return (d.schema as z.ZodType<T>).default(d.default as never) as z.ZodDefault<z.ZodType<T>>;
}

/** The definition as a JSON schema property (Fastify's query validation). */
export function jsonSchemaOf(d: ParamDef): Record<string, unknown> {
  if (d.kind === 'enum') return { type: 'string', enum: [...d.choices!] };
  const out: Record<string, unknown> = { type: d.kind === 'int' ? 'integer' : 'number' };
  if (d.min !== undefined) out[d.minExclusive ? 'exclusiveMinimum' : 'minimum'] = d.min;
  if (d.max !== undefined) out.maximum = d.max;
  return out;
}

/**
 * k against the n rows it ranks, the one place this is checked: callers call it as soon as n is known (from file
 * headers or a manifest), before any rows are read or kNN lists computed.
 */
export function checkKBelowN(k: number, n: number): void {
  checkRange(K, k);
  if (k >= n) throw new ParamError('k', `k = ${k} must be smaller than n = ${n}`);
}
