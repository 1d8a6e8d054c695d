/** Reading a capture directory: openCapture checks manifest.json only; shards are read (and checked) on demand. */
import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { InputError, quoteName } from '../core/errors.js';
import type { SourceSegment } from '../core/matrix.js';
import { describeOsError } from './atomic.js';
import { checkShardHeader, firstNonFinite, listedFiles, MANIFEST, nonFiniteMessage, requireManifest } from './capture-files.js';
import { withFile } from './io.js';
import type { Manifest, ManifestShard } from './manifest.js';
import { floatDtypeOf, parseSafetensorsHeader, readTensorInto } from './safetensors.js';

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

interface ShardSet {
  /** For messages: "layer 'embed'" and its manifest location "layers[0] 'embed'". */
  what: string;
  owner: string;
  shards: readonly ManifestShard[];
  samples: number;
  tokens: number;
  dim: number;
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

/** Opens a capture: validates manifest.json (schema and cross-field rules); no shard is read. */
export async function openCapture(dir: string): Promise<Capture> {
  return new OpenCapture(dir, await requireManifest(dir));
}
