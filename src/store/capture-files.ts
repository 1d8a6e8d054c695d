/**
 * What the reader, the validator and the writer of a capture directory share: where manifest.json lives, how it is
 * loaded and checked, and what each listed shard must hold.
 */
import { readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { InputError, quoteName } from '../core/errors.js';
import { describeOsError } from './atomic.js';
import { fmtShape } from './io.js';
import { parseJsonText } from './json.js';
import { manifestRuleProblems, parseManifestJson, type Manifest, type ManifestShard } from './manifest.js';
import { floatDtypeOf, type SafetensorsHeader, type SafetensorsTensorInfo } from './safetensors.js';

export const MANIFEST = 'manifest.json';
/** Directories owned by the writer: anything in them that the manifest does not list is stray. */
export const DATA_DIRS = ['layers', 'targets'];

export function manifestPathOf(dir: string): string {
  return join(dir, MANIFEST);
}

export function summarize(problems: readonly string[]): string {
  return problems.length === 1 ? problems[0]! : `${problems[0]} (and ${problems.length - 1} more problems; run validate)`;
}

/**
 * Reads, parses and checks manifest.json; never throws for bad content. `manifest` is present when the schema
 * passed (cross-field `problems` may still exist); absent when the file is missing, not JSON, or fails the schema.
 */
export async function loadManifest(dir: string): Promise<{ manifest?: Manifest; problems: string[] }> {
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
    json = parseJsonText(text, mp);
  } catch (err) {
    return { problems: [(err as InputError).message] };
  }
  const parsed = parseManifestJson(json, mp);
  if (!parsed.ok) return { problems: parsed.problems };
  return { manifest: parsed.manifest, problems: manifestRuleProblems(parsed.manifest, mp) };
}

/** loadManifest for readers and writers: any problem is fatal. */
export async function requireManifest(dir: string, prefix = ''): Promise<Manifest> {
  const { manifest, problems } = await loadManifest(dir);
  if (!manifest || problems.length) throw new InputError(prefix + summarize(problems));
  return manifest;
}

/** What a shard must hold, with the manifest location used in messages. */
export interface ShardExpectation {
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
export function checkShardHeader(path: string, header: SafetensorsHeader, e: ShardExpectation): SafetensorsTensorInfo {
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

export function firstNonFinite(values: Float32Array, from: number, to: number): number {
  for (let i = from; i < to; i++) if (!Number.isFinite(values[i]!)) return i;
  return -1;
}

/** `index` counts values from shard row `firstRow`; names the file, the layer/target, sample, token and dim. */
export function nonFiniteMessage(
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

export function listedFiles(m: Manifest): string[] {
  return [...m.layers.flatMap((l) => l.shards), ...m.targets.flatMap((t) => t.shards)].map((s) => s.file);
}

export function shardExpectations(m: Manifest): ShardExpectation[] {
  return [
    ...m.layers.flatMap((l, i) =>
      l.shards.map((shard) => ({ shard, owner: `layers[${i}] '${l.name}'`, tokens: m.token_layout.tokens, dim: l.dim })),
    ),
    ...m.targets.flatMap((t, i) =>
      t.shards.map((shard) => ({ shard, owner: `targets[${i}] '${t.name}'`, tokens: t.tokens, dim: t.dim })),
    ),
  ];
}
