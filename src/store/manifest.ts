/**
 * manifest.json of a capture directory (docs/capture-format.md): the zod schema, the cross-field rules, and the
 * conversion of every problem into a one-line message naming the manifest path and the field path, e.g.
 * `runs/x/manifest.json: layers[3].shards[0].count: expected a non-negative integer`.
 */
import { z } from 'zod';
import { InputError } from '../core/errors.js';

const nonNegInt = (): z.ZodNumber => {
  const msg = 'expected a non-negative integer';
  return z.number({ error: msg }).int({ error: msg }).min(0, { error: msg });
};
const posInt = (): z.ZodNumber => {
  const msg = 'expected a positive integer';
  return z.number({ error: msg }).int({ error: msg }).min(1, { error: msg });
};
const nonEmptyString = (): z.ZodString =>
  z.string({ error: 'expected a non-empty string' }).min(1, { error: 'expected a non-empty string' });

export const ShardSchema = z.strictObject({
  /** Path of the safetensors file, relative to the capture directory. */
  file: nonEmptyString(),
  /** Name of the tensor inside the file. */
  tensor: nonEmptyString(),
  /** First sample (position in samples.ids) the shard holds. */
  start: nonNegInt(),
  count: nonNegInt(),
});

export const LayerSchema = z.strictObject({
  name: nonEmptyString(),
  /** Hugging Face hidden_states index: 0 = input embeddings, ℓ = output of decoder layer ℓ. */
  index: nonNegInt(),
  dim: posInt(),
  shards: z.array(ShardSchema),
});

export const TargetSchema = z.strictObject({
  name: nonEmptyString(),
  description: z.string().optional(),
  dim: posInt(),
  tokens: posInt(),
  shards: z.array(ShardSchema),
  /** How the features were computed (the PyTorch shim: the vision tower's run inside the model's forward). */
  compute: z
    .strictObject({
      source: z.string().optional(),
      /** dtype of the features before they were cast to the shard dtype, e.g. "bfloat16". */
      dtype: z.string().optional(),
      /** Autocast regions active then, e.g. "cuda:bfloat16"; null = none. */
      autocast: z.string().nullable().optional(),
    })
    .optional(),
});

export const TokenLayoutSchema = z.strictObject({
  kind: nonEmptyString(),
  tokens: posInt(),
  source_tokens: posInt(),
  grid: z.tuple([posInt(), posInt()], { error: 'expected [rows, cols] or null' }).nullable().default(null),
  pooling: z.enum(['none', 'mean']),
});

export const VARIANTS = ['baseline', 'residual', 'viral', 'other'] as const;

export const ManifestSchema = z.strictObject({
  format: z.literal('viral-lens.capture'),
  version: z.literal(1, { error: 'unsupported capture format version (this reader supports 1)' }),
  model: z.looseObject({
    name: nonEmptyString(),
    hidden_size: posInt().optional(),
    num_layers: posInt().optional(),
  }),
  variant: z.enum(VARIANTS),
  checkpoint: z.strictObject({ step: nonNegInt().optional(), path: z.string().optional() }).nullable().optional(),
  token_layout: TokenLayoutSchema,
  layers: z.array(LayerSchema).min(1, { error: 'expected at least one layer' }),
  targets: z.array(TargetSchema).default([]),
  samples: z.strictObject({ count: nonNegInt(), ids: z.array(z.string()) }),
  labels: z
    .record(z.string(), z.array(z.union([z.number(), z.string()], { error: 'expected a number or a string' })))
    .optional(),
  provenance: z.looseObject({}).optional(),
});

export type Manifest = z.output<typeof ManifestSchema>;
export type ManifestShard = z.output<typeof ShardSchema>;
export type ManifestLayer = z.output<typeof LayerSchema>;
export type ManifestTarget = z.output<typeof TargetSchema>;
export type TokenLayout = z.output<typeof TokenLayoutSchema>;
export type Variant = (typeof VARIANTS)[number];

function describeValue(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'string') return JSON.stringify(v.length > 40 ? `${v.slice(0, 40)}…` : v);
  if (typeof v === 'object') return 'an object';
  return String(v);
}

/** Messages for the issues the schema does not word itself. */
function errorMap(iss: z.core.$ZodRawIssue): string | undefined {
  switch (iss.code) {
    case 'invalid_type':
      return iss.input === undefined ? `missing (expected ${iss.expected})` : `expected ${iss.expected}, got ${describeValue(iss.input)}`;
    case 'invalid_value':
      return `expected ${iss.values.map((v) => JSON.stringify(v)).join(' or ')}, got ${describeValue(iss.input)}`;
    case 'unrecognized_keys':
      return `unknown key${iss.keys.length > 1 ? 's' : ''} ${iss.keys.map((k) => JSON.stringify(k)).join(', ')}`;
    default:
      return undefined;
  }
}

/** `layers[3].shards[0].count`; odd record keys are quoted: `labels["my label"]`. */
export function formatFieldPath(path: readonly PropertyKey[]): string {
  let out = '';
  for (const p of path) {
    if (typeof p === 'number') out += `[${p}]`;
    else if (typeof p === 'string' && /^[A-Za-z_][A-Za-z0-9_]*$/.test(p)) out += out ? `.${p}` : p;
    else out += `[${JSON.stringify(String(p))}]`;
  }
  return out;
}

export type ManifestParse = { ok: true; manifest: Manifest } | { ok: false; problems: string[] };

/** Schema-checks parsed JSON; every problem is "<manifestPath>: <field>: <message>". */
export function parseManifestJson(json: unknown, manifestPath: string): ManifestParse {
  const r = ManifestSchema.safeParse(json, { error: errorMap });
  if (r.success) return { ok: true, manifest: r.data };
  return {
    ok: false,
    problems: r.error.issues.map((iss) => {
      const field = formatFieldPath(iss.path);
      return `${manifestPath}: ${field ? `${field}: ` : ''}${iss.message}`;
    }),
  };
}

/**
 * Schema-checks the parsed JSON of any other viral-lens file (attention.json, shuffle.json, ...) with the same
 * wording as manifests: the parsed value, or an InputError "<file>: <field>: <message>" for the first problem.
 */
export function parseWithSchema<T extends z.ZodType>(schema: T, json: unknown, file: string): z.output<T> {
  const r = schema.safeParse(json, { error: errorMap });
  if (r.success) return r.data;
  const [first, ...rest] = r.error.issues;
  const field = formatFieldPath(first!.path);
  throw new InputError(`${file}: ${field ? `${field}: ` : ''}${first!.message}${rest.length ? ` (and ${rest.length} more problem${rest.length > 1 ? 's' : ''})` : ''}`);
}

/** Why a manifest path is unsafe, or null when it is a plain relative path inside the capture directory. */
export function unsafePathReason(p: string): string | null {
  if (p.includes('\\')) return 'must use forward slashes';
  if (p.startsWith('/') || /^[A-Za-z]:/.test(p)) return 'must be a relative path inside the capture directory (not absolute)';
  const parts = p.split('/');
  if (parts.includes('..')) return "must stay inside the capture directory (no '..')";
  if (parts.some((x) => x === '' || x === '.')) return "must be a normalized relative path (no empty or '.' segments)";
  if (p === 'manifest.json') return 'must not be manifest.json';
  return null;
}

/** Canonical hook names and the hidden_states index they imply. */
function canonicalIndex(name: string): number | null {
  if (name === 'embed') return 0;
  const m = /^blocks\.(\d+)\.out$/.exec(name);
  return m ? Number(m[1]) + 1 : null;
}

/** Adds one problem: "<field>: <message>" (the manifest path is prefixed by the caller). */
type AddProblem = (field: string, msg: string) => void;

/**
 * The rules of docs/capture-format.md the schema cannot express. Cheap: no file is touched.
 * Returns every problem, each "<manifestPath>: <field>: <message>".
 */
export function manifestRuleProblems(m: Manifest, manifestPath: string): string[] {
  const problems: string[] = [];
  const add: AddProblem = (field, msg) => {
    problems.push(`${manifestPath}: ${field}: ${msg}`);
  };
  tokenLayoutProblems(m.token_layout, add);
  sampleProblems(m, add);
  layerProblems(m, add);
  const targetNames = new Map<string, number>();
  m.targets.forEach((t, i) => {
    const prev = targetNames.get(t.name);
    if (prev !== undefined) add(`targets[${i}].name`, `duplicate target name ${JSON.stringify(t.name)} (also targets[${prev}])`);
    else targetNames.set(t.name, i);
  });
  // Shards: safe paths, each file used once (across layers and targets), consecutive coverage of [0, n).
  const fileUse = new Map<string, string>();
  m.layers.forEach((l, i) => shardRuleProblems(`layers[${i}]`, l.shards, m.samples.count, fileUse, add));
  m.targets.forEach((t, i) => shardRuleProblems(`targets[${i}]`, t.shards, m.samples.count, fileUse, add));
  return problems;
}

function tokenLayoutProblems(tl: Manifest['token_layout'], add: AddProblem): void {
  if (tl.pooling === 'mean' && tl.tokens !== 1) add('token_layout.tokens', `is ${tl.tokens} but pooling "mean" stores 1 token per sample`);
  if (tl.pooling === 'none' && tl.tokens !== tl.source_tokens) {
    add('token_layout.tokens', `is ${tl.tokens} but pooling "none" stores all ${tl.source_tokens} source_tokens`);
  }
  if (tl.grid && tl.grid[0] * tl.grid[1] !== tl.source_tokens) {
    add('token_layout.grid', `${tl.grid[0]}×${tl.grid[1]} = ${tl.grid[0] * tl.grid[1]} cells but source_tokens is ${tl.source_tokens}`);
  }
}

/** Sample ids: as many as samples.count, unique; every label has one value per sample. */
function sampleProblems(m: Manifest, add: AddProblem): void {
  const n = m.samples.count;
  if (m.samples.ids.length !== n) add('samples.ids', `has ${m.samples.ids.length} entries but samples.count is ${n}`);
  const firstSeen = new Map<string, number>();
  m.samples.ids.forEach((id, i) => {
    const prev = firstSeen.get(id);
    if (prev !== undefined) add(`samples.ids[${i}]`, `duplicate sample id ${JSON.stringify(id)} (also at [${prev}])`);
    else firstSeen.set(id, i);
  });
  for (const [name, values] of Object.entries(m.labels ?? {})) {
    const field = formatFieldPath(['labels', name]);
    if (!name) add(field, 'label name must not be empty');
    if (values.length !== n) add(field, `has ${values.length} entries but samples.count is ${n}`);
  }
}

/** Layers: unique names, model order, canonical names consistent with their index. */
function layerProblems(m: Manifest, add: AddProblem): void {
  const layerNames = new Map<string, number>();
  m.layers.forEach((l, i) => {
    const prevName = layerNames.get(l.name);
    if (prevName !== undefined) add(`layers[${i}].name`, `duplicate layer name ${JSON.stringify(l.name)} (also layers[${prevName}])`);
    else layerNames.set(l.name, i);
    const prev = m.layers[i - 1];
    if (prev && l.index <= prev.index) {
      add(`layers[${i}].index`, `${l.index} is not greater than the previous layer's index ${prev.index} (layers must be listed in model order)`);
    }
    const canon = canonicalIndex(l.name);
    if (canon !== null && canon !== l.index) add(`layers[${i}].index`, `is ${l.index} but layer ${JSON.stringify(l.name)} has hidden_states index ${canon}`);
    if (m.model.num_layers !== undefined && l.index > m.model.num_layers) {
      add(`layers[${i}].index`, `${l.index} exceeds model.num_layers ${m.model.num_layers}`);
    }
  });
}

/** One layer's or target's shards; `fileUse` maps each file seen so far to the field that listed it. */
function shardRuleProblems(owner: string, shards: readonly ManifestShard[], n: number, fileUse: Map<string, string>, add: AddProblem): void {
  let covered = 0;
  shards.forEach((s, k) => {
    const field = `${owner}.shards[${k}]`;
    const reason = unsafePathReason(s.file);
    if (reason) add(`${field}.file`, `${JSON.stringify(s.file)} ${reason}`);
    const other = fileUse.get(s.file);
    if (other) add(`${field}.file`, `${JSON.stringify(s.file)} is also listed as ${other}`);
    else fileUse.set(s.file, field);
    if (s.start > covered) add(`${field}.start`, `is ${s.start} but the previous shards end at ${covered}: samples [${covered}, ${s.start}) are not covered`);
    if (s.start < covered) add(`${field}.start`, `is ${s.start} but the previous shards already cover up to ${covered}: overlap`);
    covered = s.start + s.count;
  });
  if (covered !== n) add(`${owner}.shards`, `cover samples [0, ${covered}) but samples.count is ${n}`);
}
