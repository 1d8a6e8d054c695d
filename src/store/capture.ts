/**
 * Capture directories (docs/capture-format.md): a manifest.json plus safetensors shards holding, per layer and per
 * target feature set, a [samples, tokens, dim] tensor split along samples.
 *
 * - openCapture: validates the manifest (schema + cross-field rules) without reading any shard; shard problems
 *   surface when a layer is read, as InputErrors naming the shard file.
 * - validateCapture: collects every problem (manifest, each shard's header/shape/dtype, stray files).
 * - CaptureWriter: appends batches; every file is written atomically and manifest.json is rewritten only after a
 *   batch's shards exist, so a crash leaves at worst unlisted (stray) files, which `resume` deletes.
 * - listRuns: finds captures under a runs/<run>/step-<N>/ tree.
 */
import { mkdir, readdir, readFile, stat, unlink } from 'node:fs/promises';
import { basename, dirname, join, relative, sep } from 'node:path';
import { boundMessage, InputError, quoteName } from '../core/errors.js';
import type { SourceSegment } from '../core/matrix.js';
import { describeOsError, fsyncDir, isTempFileName, writeFileAtomic } from './atomic.js';
import { fmtShape, withFile } from './io.js';
import {
  manifestRuleProblems,
  parseManifestJson,
  type Manifest,
  type ManifestShard,
  type TokenLayout,
  type Variant,
  unsafePathReason,
} from './manifest.js';
import {
  floatDtypeOf,
  parseSafetensorsHeader,
  readTensorInto,
  writeSafetensors,
  type SafetensorsHeader,
  type SafetensorsTensorInfo,
} from './safetensors.js';

export type { Manifest, ManifestLayer, ManifestShard, ManifestTarget, TokenLayout, Variant } from './manifest.js';
export { ManifestSchema } from './manifest.js';

/** A [samples, tokens, dim] block of values, row-major. */
export type Tensor3 = { samples: number; tokens: number; dim: number; data: Float32Array };

/** A layer or target as file segments, one per shard in sample order: [samples, tokens, dim] without the values. */
export type ShardRows = { samples: number; tokens: number; dim: number; segments: SourceSegment[] };

/** Samples [start, start + count) of a layer or target; only the shards' bytes for those samples are read. */
export interface SampleRange {
  start: number;
  count: number;
}

export interface CaptureLayerInfo {
  name: string;
  /** Hugging Face hidden_states index (0 = input embeddings). */
  index: number;
  dim: number;
}

export interface CaptureTargetInfo {
  name: string;
  dim: number;
  tokens: number;
  description?: string;
}

export interface Capture {
  readonly dir: string;
  readonly manifest: Manifest;
  readonly layers: readonly CaptureLayerInfo[];
  readonly targets: readonly CaptureTargetInfo[];
  readonly sampleIds: readonly string[];
  readonly labels: Readonly<Record<string, readonly (number | string)[]>>;
  /** token_layout.tokens: tokens per sample in the layer tensors. */
  readonly tokens: number;
  /**
   * Reads one layer, all shards concatenated: by name, or by its hidden_states `index` (the manifest's `index`
   * field, not the position in the list).
   */
  readLayer(nameOrIndex: string | number, samples?: SampleRange): Promise<Tensor3>;
  /** Reads one target set (all samples, or the `samples` range only). */
  readTarget(name: string, samples?: SampleRange): Promise<Tensor3>;
  /** Where a layer's values lie in its shards (headers checked, nothing else read): for engines that map files. */
  layerRows(nameOrIndex: string | number): Promise<ShardRows>;
  targetRows(name: string): Promise<ShardRows>;
  /** Bytes on disk of manifest.json and every listed shard. */
  sizeBytes(): Promise<number>;
}

/** What identifies a result computed from one capture: the columns every long-form result row starts with. */
export interface CaptureProvenance {
  capture: string;
  model: string;
  variant: string;
  step: number | null;
}

export function captureProvenance(capture: Capture): CaptureProvenance {
  const m = capture.manifest;
  return { capture: capture.dir, model: String(m.model.name), variant: m.variant, step: m.checkpoint?.step ?? null };
}

/** The same for a result about one layer of a capture. */
export interface LayerProvenance extends CaptureProvenance {
  layer: string;
  layer_index: number;
}

export function layerProvenance(capture: Capture, layer: CaptureLayerInfo): LayerProvenance {
  return { ...captureProvenance(capture), layer: layer.name, layer_index: layer.index };
}

const MANIFEST = 'manifest.json';
/** Directories owned by the writer: anything in them that the manifest does not list is stray. */
const DATA_DIRS = ['layers', 'targets'];

function manifestPathOf(dir: string): string {
  return join(dir, MANIFEST);
}

function summarize(problems: readonly string[]): string {
  return problems.length === 1 ? problems[0]! : `${problems[0]} (and ${problems.length - 1} more problems; run validate)`;
}

/**
 * Reads, parses and checks manifest.json; never throws for bad content. `manifest` is present when the schema
 * passed (cross-field `problems` may still exist); absent when the file is missing, not JSON, or fails the schema.
 */
async function loadManifest(dir: string): Promise<{ manifest?: Manifest; problems: string[] }> {
  const mp = manifestPathOf(dir);
  let text: string;
  try {
    text = await readFile(mp, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') return { problems: [`${mp}: not found (${dir} is not a capture directory)`] };
    return { problems: [`${mp}: cannot read: ${describeOsError(err)}`] };
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    return { problems: [`${mp}: invalid JSON: ${(err as Error).message}`] };
  }
  const parsed = parseManifestJson(json, mp);
  if (!parsed.ok) return { problems: parsed.problems };
  return { manifest: parsed.manifest, problems: manifestRuleProblems(parsed.manifest, mp) };
}

/** loadManifest for readers and writers: any problem is fatal. */
async function requireManifest(dir: string, prefix = ''): Promise<Manifest> {
  const { manifest, problems } = await loadManifest(dir);
  if (!manifest || problems.length) throw new InputError(prefix + summarize(problems));
  return manifest;
}

/** What a shard must hold, with the manifest location used in messages. */
interface ShardExpectation {
  shard: ManifestShard;
  /** e.g. "layers[2] 'blocks.1.out'". */
  owner: string;
  tokens: number;
  dim: number;
}

/**
 * Checks a shard's parsed header against the manifest; returns the tensor to read. Throws an InputError naming the
 * shard file, the tensor and expected vs found.
 */
function checkShardHeader(path: string, header: SafetensorsHeader, e: ShardExpectation): SafetensorsTensorInfo {
  const t = header.tensors.find((x) => x.name === e.shard.tensor);
  if (!t) {
    const names = header.tensors.map((x) => x.name).join(', ') || 'none';
    throw new InputError(`${path}: no tensor '${e.shard.tensor}' (listed for ${e.owner}; the file holds: ${names})`);
  }
  floatDtypeOf(path, t);
  const expected = [e.shard.count, e.tokens, e.dim];
  if (t.shape.length !== 3 || t.shape.some((d, i) => d !== expected[i])) {
    throw new InputError(
      `${path}: tensor '${t.name}': expected shape ${fmtShape(expected)} (${e.owner}, samples [${e.shard.start}, ${e.shard.start + e.shard.count})), found ${fmtShape(t.shape)}`,
    );
  }
  return t;
}

interface ShardSet {
  /** For messages: "layer 'embed'" and its manifest location "layers[0] 'embed'". */
  what: string;
  owner: string;
  shards: readonly ManifestShard[];
  samples: number;
  tokens: number;
  dim: number;
}

function firstNonFinite(values: Float32Array, from: number, to: number): number {
  for (let i = from; i < to; i++) if (!Number.isFinite(values[i]!)) return i;
  return -1;
}

/** `index` counts values from shard row `firstRow`; names the file, the layer/target, sample, token and dim. */
function nonFiniteMessage(
  path: string,
  tensor: string,
  what: string,
  value: number,
  index: number,
  firstRow: number,
  shardStart: number,
  tokens: number,
  dim: number,
): string {
  const perSample = tokens * dim;
  const row = firstRow + Math.floor(index / perSample);
  const token = Math.floor((index % perSample) / dim);
  return `${path}: tensor ${quoteName(tensor)}: non-finite value ${value} at sample ${shardStart + row} (shard row ${row}), token ${token}, dim ${index % dim} of ${what}; NaN/Inf values are not allowed`;
}

/** Reads the shards of one layer/target into a single [samples, tokens, dim] tensor (all samples, or a range). */
async function readShards(dir: string, set: ShardSet, range?: SampleRange): Promise<Tensor3> {
  const { what, owner, shards, samples, tokens, dim } = set;
  const from = range?.start ?? 0;
  const count = range?.count ?? samples;
  if (!Number.isInteger(from) || !Number.isInteger(count) || from < 0 || count < 0 || from + count > samples) {
    throw new InputError(`${dir}: ${what}: samples [${from}, ${from + count}) are outside [0, ${samples})`);
  }
  if (count === 0) throw new InputError(`${dir}: ${what}: no samples to read (samples.count is ${samples}); an empty capture has nothing to analyse`);
  let data: Float32Array;
  try {
    data = new Float32Array(count * tokens * dim);
  } catch (err) {
    if (!(err instanceof RangeError)) throw err;
    const gib = (count * tokens * dim * 4) / 2 ** 30;
    throw new InputError(
      `${dir}: ${what} needs ${count}×${tokens}×${dim} values (${gib.toFixed(1)} GiB), more than fits in memory; capture pooled tokens or fewer samples`,
    );
  }
  for (const shard of shards) {
    const lo = Math.max(from, shard.start);
    const hi = Math.min(from + count, shard.start + shard.count);
    if (lo >= hi) continue;
    const path = join(dir, shard.file);
    await withFile(path, async (fh, size) => {
      const header = await parseSafetensorsHeader(fh, size, path);
      const t = checkShardHeader(path, header, { shard, owner, tokens, dim });
      const offset = (lo - from) * tokens * dim;
      await readTensorInto(fh, path, t, data, offset, { start: lo - shard.start, count: hi - lo });
      // Every analysis reads captures through here, so this one check keeps NaN/Inf out of all of them.
      const bad = firstNonFinite(data, offset, offset + (hi - lo) * tokens * dim);
      if (bad >= 0) throw new InputError(nonFiniteMessage(path, t.name, what, data[bad]!, bad - offset, lo - shard.start, shard.start, tokens, dim));
    });
  }
  return { samples: count, tokens, dim, data };
}

/** Where every shard of one layer/target lies (headers checked as readShards does; no values read). */
async function shardSegments(dir: string, set: ShardSet): Promise<ShardRows> {
  const { what, owner, shards, samples, tokens, dim } = set;
  if (samples === 0) throw new InputError(`${dir}: ${what}: no samples to read (samples.count is ${samples}); an empty capture has nothing to analyse`);
  const segments: SourceSegment[] = [];
  for (const shard of [...shards].sort((a, b) => a.start - b.start)) {
    const path = join(dir, shard.file);
    const t = await withFile(path, async (fh, size) => checkShardHeader(path, await parseSafetensorsHeader(fh, size, path), { shard, owner, tokens, dim }));
    segments.push({
      path,
      dtype: SEGMENT_DTYPE[floatDtypeOf(path, t)],
      littleEndian: true,
      offset: t.begin,
      samples: shard.count,
      order: 'C',
      nonFinite: { kind: 'shard', head: `${path}: tensor ${quoteName(t.name)}`, what, shardStart: shard.start },
    });
  }
  return { samples, tokens, dim, segments };
}

const SEGMENT_DTYPE = { F16: 'float16', BF16: 'bfloat16', F32: 'float32', F64: 'float64' } as const;

class OpenCapture implements Capture {
  readonly layers: readonly CaptureLayerInfo[];
  readonly targets: readonly CaptureTargetInfo[];
  readonly sampleIds: readonly string[];
  readonly labels: Readonly<Record<string, readonly (number | string)[]>>;
  readonly tokens: number;

  constructor(
    readonly dir: string,
    readonly manifest: Manifest,
  ) {
    this.layers = manifest.layers.map((l) => ({ name: l.name, index: l.index, dim: l.dim }));
    this.targets = manifest.targets.map((t) => ({
      name: t.name,
      dim: t.dim,
      tokens: t.tokens,
      ...(t.description === undefined ? {} : { description: t.description }),
    }));
    this.sampleIds = manifest.samples.ids;
    this.labels = manifest.labels ?? {};
    this.tokens = manifest.token_layout.tokens;
  }

  async readLayer(nameOrIndex: string | number, samples?: SampleRange): Promise<Tensor3> {
    return readShards(this.dir, this.layerSet(nameOrIndex), samples);
  }

  async readTarget(name: string, samples?: SampleRange): Promise<Tensor3> {
    return readShards(this.dir, this.targetSet(name), samples);
  }

  layerRows(nameOrIndex: string | number): Promise<ShardRows> {
    return shardSegments(this.dir, this.layerSet(nameOrIndex));
  }

  targetRows(name: string): Promise<ShardRows> {
    return shardSegments(this.dir, this.targetSet(name));
  }

  private layerSet(nameOrIndex: string | number): ShardSet {
    const m = this.manifest;
    const byIndex = typeof nameOrIndex === 'number';
    const i = m.layers.findIndex((l) => (byIndex ? l.index === nameOrIndex : l.name === nameOrIndex));
    const layer = m.layers[i];
    if (!layer) {
      const have = m.layers.map((l) => `${l.index}:${l.name}`).join(', ');
      const wanted = byIndex ? `with index ${nameOrIndex}` : `'${nameOrIndex}'`;
      throw new InputError(`${this.dir}: no layer ${wanted} (layers: ${have})`);
    }
    return {
      what: `layer '${layer.name}'`,
      owner: `layers[${i}] '${layer.name}'`,
      shards: layer.shards,
      samples: m.samples.count,
      tokens: this.tokens,
      dim: layer.dim,
    };
  }

  private targetSet(name: string): ShardSet {
    const m = this.manifest;
    const i = m.targets.findIndex((t) => t.name === name);
    const target = m.targets[i];
    if (!target) {
      throw new InputError(`${this.dir}: no target '${name}' (targets: ${m.targets.map((t) => t.name).join(', ') || 'none'})`);
    }
    return {
      what: `target '${name}'`,
      owner: `targets[${i}] '${name}'`,
      shards: target.shards,
      samples: m.samples.count,
      tokens: target.tokens,
      dim: target.dim,
    };
  }

  async sizeBytes(): Promise<number> {
    let total = 0;
    for (const file of [MANIFEST, ...listedFiles(this.manifest)]) {
      try {
        total += (await stat(join(this.dir, file))).size;
      } catch (err) {
        throw new InputError(`${join(this.dir, file)}: ${describeOsError(err)}`);
      }
    }
    return total;
  }
}

function listedFiles(m: Manifest): string[] {
  return [...m.layers.flatMap((l) => l.shards), ...m.targets.flatMap((t) => t.shards)].map((s) => s.file);
}

/** Opens a capture: validates manifest.json (schema and cross-field rules); no shard is read. */
export async function openCapture(dir: string): Promise<Capture> {
  return new OpenCapture(dir, await requireManifest(dir));
}

function shardExpectations(m: Manifest): ShardExpectation[] {
  return [
    ...m.layers.flatMap((l, i) =>
      l.shards.map((shard) => ({ shard, owner: `layers[${i}] '${l.name}'`, tokens: m.token_layout.tokens, dim: l.dim })),
    ),
    ...m.targets.flatMap((t, i) =>
      t.shards.map((shard) => ({ shard, owner: `targets[${i}] '${t.name}'`, tokens: t.tokens, dim: t.dim })),
    ),
  ];
}

export interface ValidateOptions {
  /** Also read every shard and report the first NaN/Inf of each (slower: reads all data). */
  checkValues?: boolean;
}

/**
 * Checks every listed shard's header (and optionally its values); returns one message per bad shard. Shards whose
 * path is unsafe (absolute, '..') are skipped: the manifest rules already report them, and they must not be opened.
 */
async function shardProblems(dir: string, m: Manifest, checkValues: boolean): Promise<string[]> {
  const problems: string[] = [];
  for (const e of shardExpectations(m)) {
    if (unsafePathReason(e.shard.file)) continue;
    const path = join(dir, e.shard.file);
    try {
      await withFile(path, async (fh, size) => {
        const header = await parseSafetensorsHeader(fh, size, path);
        const t = checkShardHeader(path, header, e);
        if (header.tensors.length > 1) {
          const names = header.tensors.map((x) => x.name).join(', ');
          problems.push(`${path}: holds ${header.tensors.length} tensors (${names}); a shard holds exactly one`);
        }
        if (checkValues) {
          const values = new Float32Array(e.shard.count * e.tokens * e.dim);
          await readTensorInto(fh, path, t, values, 0);
          const bad = firstNonFinite(values, 0, values.length);
          if (bad >= 0) problems.push(nonFiniteMessage(path, t.name, e.owner, values[bad]!, bad, 0, e.shard.start, e.tokens, e.dim));
        }
      });
    } catch (err) {
      if (!(err instanceof InputError)) throw err;
      problems.push(err.message);
    }
  }
  return problems;
}

/** Every file below `root` (paths relative to `dir`, with '/' separators); a missing root yields nothing. */
async function walkFiles(dir: string, root: string): Promise<string[]> {
  const out: string[] = [];
  const visit = async (abs: string): Promise<void> => {
    let entries;
    try {
      entries = await readdir(abs, { withFileTypes: true });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw new InputError(`${abs}: cannot list directory: ${describeOsError(err)}`);
    }
    for (const ent of entries) {
      const child = join(abs, ent.name);
      if (ent.isDirectory()) await visit(child);
      else out.push(relative(dir, child).split(sep).join('/'));
    }
  };
  await visit(join(dir, root));
  return out;
}

/**
 * Files the writer owns but the manifest does not list: anything under layers/ and targets/ that is not a listed
 * shard, and leftover temp files (`*.tmp-<pid>-<hex>`) at the top level. Other top-level files are left alone.
 */
async function strayFiles(dir: string, m: Manifest): Promise<string[]> {
  const listed = new Set(listedFiles(m));
  const stray: string[] = [];
  for (const d of DATA_DIRS) for (const f of await walkFiles(dir, d)) if (!listed.has(f)) stray.push(f);
  let top: string[] = [];
  try {
    top = await readdir(dir);
  } catch (err) {
    throw new InputError(`${dir}: cannot list directory: ${describeOsError(err)}`);
  }
  for (const f of top) if (isTempFileName(f)) stray.push(f);
  return stray.sort();
}

/**
 * Validates a capture completely: manifest schema and rules, every shard (exists, readable header, tensor name,
 * dtype, shape), and stray files. Returns all problems, each naming its file and field; [] means valid.
 */
export async function validateCapture(dir: string, options: ValidateOptions = {}): Promise<string[]> {
  // Each problem is printed as one line, like an InputError's message (a JSON.parse message can quote line breaks).
  return (await collectProblems(dir, options)).map(boundMessage);
}

async function collectProblems(dir: string, options: ValidateOptions): Promise<string[]> {
  const { manifest: m, problems } = await loadManifest(dir);
  // Without a schema-valid manifest there is nothing to check the shards against.
  if (!m) return problems;
  // A writer that stopped before its first batch leaves a schema-valid manifest with nothing to analyse.
  if (m.samples.count === 0) problems.push(`${join(dir, MANIFEST)}: samples.count: the capture holds no samples`);
  problems.push(...(await shardProblems(dir, m, options.checkValues ?? false)));
  for (const f of await strayFiles(dir, m)) {
    problems.push(
      isTempFileName(f)
        ? `${join(dir, f)}: leftover temporary file from an interrupted write`
        : `${join(dir, f)}: stray file (not listed in ${MANIFEST})`,
    );
  }
  return problems;
}

// ---------------------------------------------------------------------------------------------------------------
// Writing

/** Everything of a manifest except what the writer fills in (format, version, shards, samples, labels). */
export interface CaptureInit {
  model: { name: string; hidden_size?: number; num_layers?: number; [key: string]: unknown };
  variant: Variant;
  checkpoint?: { step?: number; path?: string } | null;
  token_layout: Omit<TokenLayout, 'grid'> & { grid?: [number, number] | null };
  layers: { name: string; index: number; dim: number }[];
  targets?: { name: string; dim: number; tokens: number; description?: string }[];
  provenance?: Record<string, unknown>;
}

/** Per-sample values, flat ([b·tokens·dim], row-major) or with explicit dimensions. */
export type BatchTensor = Float32Array | Tensor3;

export interface CaptureBatch {
  ids: string[];
  /** One value per sample of the batch; the first batch fixes the label names. */
  labels?: Record<string, (number | string)[]>;
  /** Every layer of the manifest, by name. */
  layers: Record<string, BatchTensor>;
  /** Every target of the manifest, by name. */
  targets?: Record<string, BatchTensor>;
}

export interface AppendOptions {
  /** Storage dtype of the shards (default F32). */
  dtype?: 'F16' | 'BF16' | 'F32';
}

const SAFE_NAME = /^[A-Za-z0-9_][A-Za-z0-9._-]*$/;

function layerDirName(index: number): string {
  return String(index).padStart(3, '0');
}

/** Checks one batch tensor's size; `what` is e.g. "layer 'blocks.0.out'". */
function batchValues(where: string, what: string, t: BatchTensor, b: number, tokens: number, dim: number): Float32Array {
  const expected = b * tokens * dim;
  if (t instanceof Float32Array) {
    if (t.length === expected) return t;
    // Say which dimension is off when the length allows it.
    let hint = '';
    if (t.length % (b * dim) === 0) hint = ` (= ${b} samples × ${t.length / (b * dim)} tokens × ${dim} dim)`;
    else if (t.length % (b * tokens) === 0) hint = ` (= ${b} samples × ${tokens} tokens × ${t.length / (b * tokens)} dim)`;
    throw new InputError(`${where}: ${what}: got ${t.length} values${hint}, expected ${b} samples × ${tokens} tokens × ${dim} dim = ${expected}`);
  }
  if (t.samples !== b) throw new InputError(`${where}: ${what}: has ${t.samples} samples, the batch has ${b} ids`);
  if (t.tokens !== tokens) throw new InputError(`${where}: ${what}: has ${t.tokens} tokens per sample, expected ${tokens}`);
  if (t.dim !== dim) throw new InputError(`${where}: ${what}: has dim ${t.dim}, expected ${dim}`);
  if (t.data.length !== expected) {
    throw new InputError(`${where}: ${what}: data has ${t.data.length} values, expected ${b}×${tokens}×${dim} = ${expected}`);
  }
  return t.data;
}

function checkKeys(where: string, kind: string, given: readonly string[], expected: readonly string[]): void {
  const missing = expected.filter((k) => !given.includes(k));
  const unknown = given.filter((k) => !expected.includes(k));
  if (missing.length) throw new InputError(`${where}: missing ${kind} ${missing.map((k) => `'${k}'`).join(', ')}`);
  if (unknown.length) {
    throw new InputError(`${where}: unknown ${kind} ${unknown.map((k) => `'${k}'`).join(', ')} (expected: ${expected.join(', ') || 'none'})`);
  }
}

/** Serializes in manifest key order, so manifests are stable and diffable. */
function manifestText(m: Manifest): string {
  const ordered: Record<string, unknown> = {
    format: m.format,
    version: m.version,
    model: m.model,
    variant: m.variant,
    ...(m.checkpoint === undefined ? {} : { checkpoint: m.checkpoint }),
    token_layout: m.token_layout,
    layers: m.layers,
    targets: m.targets,
    samples: m.samples,
    ...(m.labels === undefined ? {} : { labels: m.labels }),
    ...(m.provenance === undefined ? {} : { provenance: m.provenance }),
  };
  return `${JSON.stringify(ordered, null, 2)}\n`;
}

/** Creates subdirectories and makes their creation durable (fsync of the parent). */
async function ensureDir(path: string): Promise<void> {
  try {
    const made = await mkdir(path, { recursive: true });
    if (made !== undefined) await fsyncDir(dirname(path));
  } catch (err) {
    if (err instanceof InputError) throw err;
    throw new InputError(`${path}: cannot create directory: ${describeOsError(err)}`);
  }
}

/**
 * Appends batches of samples to a capture directory. Single writer per directory; calls to appendBatch are queued,
 * so an un-awaited second call cannot interleave with the first.
 */
export class CaptureWriter {
  private manifest: Manifest;
  private readonly ids: Set<string>;
  private queue: Promise<unknown> = Promise.resolve();

  private constructor(
    readonly dir: string,
    manifest: Manifest,
  ) {
    this.manifest = manifest;
    this.ids = new Set(manifest.samples.ids);
  }

  /** Number of samples written so far. */
  get count(): number {
    return this.manifest.samples.count;
  }

  /** A snapshot of the manifest as last written. */
  getManifest(): Manifest {
    return structuredClone(this.manifest);
  }

  /** Starts a new capture in `dir` (created if needed; it must not already hold a capture) and writes its manifest. */
  static async create(dir: string, init: CaptureInit): Promise<CaptureWriter> {
    const mp = manifestPathOf(dir);
    for (const p of [mp, ...DATA_DIRS.map((d) => join(dir, d))]) {
      const exists = await stat(p).then(
        () => true,
        () => false,
      );
      if (exists) throw new InputError(`${dir}: already holds a capture (${basename(p)} exists); use CaptureWriter.resume or another directory`);
    }
    for (const [i, t] of (init.targets ?? []).entries()) {
      if (!SAFE_NAME.test(t.name)) {
        throw new InputError(`${mp}: targets[${i}].name: ${JSON.stringify(t.name)} must be a plain file name (letters, digits, . _ -)`);
      }
    }
    const draft = {
      format: 'viral-lens.capture',
      version: 1,
      model: init.model,
      variant: init.variant,
      ...(init.checkpoint === undefined ? {} : { checkpoint: init.checkpoint }),
      token_layout: init.token_layout,
      layers: init.layers.map((l) => ({ name: l.name, index: l.index, dim: l.dim, shards: [] })),
      targets: (init.targets ?? []).map((t) => ({ ...t, shards: [] })),
      samples: { count: 0, ids: [] },
      ...(init.provenance === undefined ? {} : { provenance: init.provenance }),
    };
    const parsed = parseManifestJson(draft, mp);
    if (!parsed.ok) throw new InputError(summarize(parsed.problems));
    const rules = manifestRuleProblems(parsed.manifest, mp);
    if (rules.length) throw new InputError(summarize(rules));
    await ensureDir(dir);
    await writeFileAtomic(mp, manifestText(parsed.manifest));
    return new CaptureWriter(dir, parsed.manifest);
  }

  /**
   * Reopens a capture for appending after a crash or a stop: keeps exactly the samples manifest.json lists, checks
   * their shards' headers, and deletes stray files (unlisted files under layers/ and targets/, leftover temp files).
   */
  static async resume(dir: string): Promise<CaptureWriter> {
    const manifest = await requireManifest(dir, 'cannot resume: ');
    const problems = await shardProblems(dir, manifest, false);
    if (problems.length) throw new InputError(`cannot resume: ${summarize(problems)}`);
    for (const f of await strayFiles(dir, manifest)) {
      try {
        await unlink(join(dir, f));
      } catch (err) {
        if ((err as NodeJS.ErrnoException).code !== 'ENOENT') {
          throw new InputError(`${join(dir, f)}: cannot delete stray file: ${describeOsError(err)}`);
        }
      }
    }
    return new CaptureWriter(dir, manifest);
  }

  /**
   * Writes one shard per layer and per target for the batch (each atomically), then rewrites manifest.json
   * atomically. If anything fails, the manifest is untouched and the shards written so far are strays that the next
   * attempt overwrites (same names) or `resume` deletes.
   */
  appendBatch(batch: CaptureBatch, options: AppendOptions = {}): Promise<void> {
    const run = this.queue.then(() => this.append(batch, options));
    this.queue = run.catch(() => undefined);
    return run;
  }

  private async append(batch: CaptureBatch, options: AppendOptions): Promise<void> {
    const m = this.manifest;
    const start = m.samples.count;
    const where = `${this.dir}: batch at sample ${start}`;
    const dtype = options.dtype ?? 'F32';
    const b = batch.ids.length;
    if (b === 0) return;

    // Validate everything before touching the disk.
    const inBatch = new Map<string, number>();
    batch.ids.forEach((id, i) => {
      if (typeof id !== 'string') throw new InputError(`${where}: ids[${i}] is not a string`);
      if (this.ids.has(id)) throw new InputError(`${where}: duplicate sample id ${JSON.stringify(id)} (already at sample ${m.samples.ids.indexOf(id)})`);
      const prev = inBatch.get(id);
      if (prev !== undefined) throw new InputError(`${where}: duplicate sample id ${JSON.stringify(id)} (ids[${prev}] and ids[${i}])`);
      inBatch.set(id, i);
    });
    checkKeys(where, 'layer', Object.keys(batch.layers), m.layers.map((l) => l.name));
    checkKeys(where, 'target', Object.keys(batch.targets ?? {}), m.targets.map((t) => t.name));
    const labels = batch.labels ?? {};
    // The first batch fixes the label names; later batches must give the same ones.
    if (start > 0 || m.labels) checkKeys(where, 'label', Object.keys(labels), Object.keys(m.labels ?? {}));
    for (const [name, values] of Object.entries(labels)) {
      if (!name) throw new InputError(`${where}: label names must not be empty`);
      if (!Array.isArray(values) || values.length !== b) {
        throw new InputError(`${where}: label '${name}' has ${Array.isArray(values) ? values.length : 'no'} values, the batch has ${b} ids`);
      }
      values.forEach((v, i) => {
        if (!(typeof v === 'string' || (typeof v === 'number' && Number.isFinite(v)))) {
          throw new InputError(`${where}: label '${name}'[${i}] must be a finite number or a string, got ${String(v)}`);
        }
      });
    }
    const tokens = m.token_layout.tokens;
    const layerData = m.layers.map((l) => batchValues(where, `layer '${l.name}'`, batch.layers[l.name]!, b, tokens, l.dim));
    const targetData = m.targets.map((t) => batchValues(where, `target '${t.name}'`, batch.targets![t.name]!, b, t.tokens, t.dim));

    // Write the shards, then the manifest that lists them.
    const listed = new Set(listedFiles(m));
    const shardFile = (folder: string, k: number): string => {
      // Another tool may have named its files differently; never reuse a listed name.
      let name = `${folder}/${String(k).padStart(5, '0')}.safetensors`;
      while (listed.has(name)) name = `${folder}/${String(++k).padStart(5, '0')}.safetensors`;
      return name;
    };
    const next = structuredClone(m);
    const writeShard = async (folder: string, k: number, tensor: string, data: Float32Array, shape: number[]): Promise<ManifestShard> => {
      const file = shardFile(folder, k);
      await ensureDir(join(this.dir, folder));
      await writeSafetensors(join(this.dir, file), [{ name: tensor, dtype, shape, data }]);
      return { file, tensor, start, count: b };
    };
    for (const [i, l] of next.layers.entries()) {
      l.shards.push(await writeShard(`layers/${layerDirName(l.index)}`, l.shards.length, 'hidden', layerData[i]!, [b, tokens, l.dim]));
    }
    for (const [i, t] of next.targets.entries()) {
      t.shards.push(await writeShard(`targets/${t.name}`, t.shards.length, 'features', targetData[i]!, [b, t.tokens, t.dim]));
    }
    next.samples = { count: start + b, ids: [...m.samples.ids, ...batch.ids] };
    if (Object.keys(labels).length > 0) {
      next.labels = Object.fromEntries(Object.entries(labels).map(([k, v]) => [k, [...(m.labels?.[k] ?? []), ...v]]));
    }
    await writeFileAtomic(manifestPathOf(this.dir), manifestText(next));
    this.manifest = next;
    for (const id of batch.ids) this.ids.add(id);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Discovering runs

export interface RunEntry {
  /** Run name: the directory above step-<N>, or the capture directory's own name. */
  run: string;
  /** N of a step-<N> directory, else checkpoint.step from the manifest, else null. */
  step: number | null;
  dir: string;
  variant: string | null;
  /** Set when manifest.json could not be read or parsed (the entry is still listed). */
  error?: string;
}

const MAX_DEPTH = 4;

/**
 * Finds capture directories (directories with a manifest.json) under `root`, which may itself be a capture, a run
 * (holding step-<N>/ captures) or a runs/ tree. Only manifest.json's `variant` and `checkpoint.step` are read.
 * Sorted by run, then step.
 */
export async function listRuns(root: string): Promise<RunEntry[]> {
  try {
    if (!(await stat(root)).isDirectory()) throw new InputError(`${root}: not a directory`);
  } catch (err) {
    if (err instanceof InputError) throw err;
    throw new InputError(`${root}: ${(err as NodeJS.ErrnoException).code === 'ENOENT' ? 'not found' : describeOsError(err)}`);
  }
  const found: RunEntry[] = [];
  const visit = async (dir: string, depth: number): Promise<void> => {
    let entries;
    try {
      entries = await readdir(dir, { withFileTypes: true });
    } catch {
      return; // unreadable subdirectory: not ours to report
    }
    if (entries.some((e) => e.name === MANIFEST && e.isFile())) {
      found.push(await describeRun(dir));
      return; // a capture's own subdirectories are its data
    }
    if (depth >= MAX_DEPTH) return;
    for (const e of entries) {
      if (e.isDirectory() && !e.name.startsWith('.') && e.name !== 'node_modules') await visit(join(dir, e.name), depth + 1);
    }
  };
  await visit(root, 0);
  return found.sort((a, b) => (a.run < b.run ? -1 : a.run > b.run ? 1 : (a.step ?? -1) - (b.step ?? -1)));
}

async function describeRun(dir: string): Promise<RunEntry> {
  const stepMatch = /^step-(\d+)$/.exec(basename(dir));
  const entry: RunEntry = {
    run: stepMatch ? basename(dirname(dir)) : basename(dir),
    step: stepMatch ? Number(stepMatch[1]) : null,
    dir,
    variant: null,
  };
  try {
    const json = JSON.parse(await readFile(manifestPathOf(dir), 'utf8')) as Record<string, unknown>;
    if (typeof json.variant === 'string') entry.variant = json.variant;
    const step = (json.checkpoint as { step?: unknown } | null | undefined)?.step;
    if (entry.step === null && typeof step === 'number' && Number.isSafeInteger(step)) entry.step = step;
  } catch (err) {
    entry.error = `${manifestPathOf(dir)}: ${err instanceof SyntaxError ? `invalid JSON: ${err.message}` : describeOsError(err)}`;
  }
  return entry;
}
