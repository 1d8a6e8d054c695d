/**
 * Writing a capture directory: every file is written atomically and manifest.json is rewritten only after a batch's
 * shards exist, so a crash leaves at worst unlisted (stray) files, which `resume` deletes.
 */
import { mkdir, stat, unlink } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { InputError } from '../core/errors.js';
import { describeOsError, fsyncDir, writeFileAtomic } from './atomic.js';
import { DATA_DIRS, listedFiles, manifestPathOf, requireManifest, summarize } from './capture-files.js';
import type { Tensor3 } from './capture-read.js';
import { shardProblems, strayFiles } from './capture-validate.js';
import { manifestRuleProblems, parseManifestJson, type Manifest, type ManifestShard, type TokenLayout, type Variant } from './manifest.js';
import { writeSafetensors } from './safetensors.js';

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

/** Ids must be strings, new to the capture and unique within the batch. */
function checkBatchIds(where: string, ids: readonly string[], known: ReadonlySet<string>, m: Manifest): void {
  const inBatch = new Map<string, number>();
  ids.forEach((id, i) => {
    if (typeof id !== 'string') throw new InputError(`${where}: ids[${i}] is not a string`);
    if (known.has(id)) throw new InputError(`${where}: duplicate sample id ${JSON.stringify(id)} (already at sample ${m.samples.ids.indexOf(id)})`);
    const prev = inBatch.get(id);
    if (prev !== undefined) throw new InputError(`${where}: duplicate sample id ${JSON.stringify(id)} (ids[${prev}] and ids[${i}])`);
    inBatch.set(id, i);
  });
}

/** One finite number or string per sample; the first batch fixes the label names, later batches give the same ones. */
function checkBatchLabels(where: string, labels: Record<string, (number | string)[]>, m: Manifest, b: number): void {
  if (m.samples.count > 0 || m.labels) checkKeys(where, 'label', Object.keys(labels), Object.keys(m.labels ?? {}));
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
}

/** Serializes in manifest key order, so manifests are stable and diffable (JSON.stringify drops an undefined field). */
function manifestText(m: Manifest): string {
  const ordered: Record<string, unknown> = {
    format: m.format,
    version: m.version,
    model: m.model,
    variant: m.variant,
    checkpoint: m.checkpoint,
    token_layout: m.token_layout,
    layers: m.layers,
    targets: m.targets,
    samples: m.samples,
    labels: m.labels,
    provenance: m.provenance,
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
    const b = batch.ids.length;
    if (b === 0) return;

    // Validate everything before touching the disk.
    checkBatchIds(where, batch.ids, this.ids, m);
    checkKeys(where, 'layer', Object.keys(batch.layers), m.layers.map((l) => l.name));
    checkKeys(where, 'target', Object.keys(batch.targets ?? {}), m.targets.map((t) => t.name));
    const labels = batch.labels ?? {};
    checkBatchLabels(where, labels, m, b);
    const tokens = m.token_layout.tokens;
    const layerData = m.layers.map((l) => batchValues(where, `layer '${l.name}'`, batch.layers[l.name]!, b, tokens, l.dim));
    const targetData = m.targets.map((t) => batchValues(where, `target '${t.name}'`, batch.targets![t.name]!, b, t.tokens, t.dim));

    // Write the shards, then the manifest that lists them.
    const next = structuredClone(m);
    const writeShard = this.shardWriter(m, options.dtype ?? 'F32', start, b);
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

  /** Writes one shard of the batch (atomically) under a name the manifest `m` does not list yet. */
  private shardWriter(m: Manifest, dtype: NonNullable<AppendOptions['dtype']>, start: number, count: number) {
    const listed = new Set(listedFiles(m));
    const shardFile = (folder: string, k: number): string => {
      // Another tool may have named its files differently; never reuse a listed name.
      let name = `${folder}/${String(k).padStart(5, '0')}.safetensors`;
      while (listed.has(name)) name = `${folder}/${String(++k).padStart(5, '0')}.safetensors`;
      return name;
    };
    return async (folder: string, k: number, tensor: string, data: Float32Array, shape: number[]): Promise<ManifestShard> => {
      const file = shardFile(folder, k);
      await ensureDir(join(this.dir, folder));
      await writeSafetensors(join(this.dir, file), [{ name: tensor, dtype, shape, data }]);
      return { file, tensor, start, count };
    };
  }
}

