import { createHash } from 'node:crypto';
import { readFile } from 'node:fs/promises';
import { InputError, ParamError } from '../src/core/errors.js';
import { openCapture } from '../src/store/capture.js';
import { runLayerwise, type LayerwiseOptions, type LayerwiseRow } from './layerwise.js';

/**
 * Sweeps beyond one machine. A sweep over checkpoints × layers is a list of independent (capture, layer) jobs; a
 * shard I/N runs a fixed, contiguous slice of that list (contiguous so each shard touches few captures and computes
 * each capture's target kNN once), and writes its long-form rows with the full parameter set and the whole job plan.
 * `mergeShards` accepts the parts only if they are the N shards of one plan with one parameter set, each holding
 * exactly its own jobs: the same checks a scheduler cannot make (a job array with a failed task, a rerun with other
 * flags, a part from another sweep). The scheduler itself is the user's (Slurm job arrays: docs/scale.md).
 */

export const SHARD_FORMAT = 'viral-lens.sweep-shard';
export const SWEEP_FORMAT = 'viral-lens.sweep';
export const SHARD_VERSION = 1;

export interface ShardSpec {
  index: number;
  count: number;
}

export interface SweepJob {
  capture: string;
  layer: string;
}

/** Every parameter that changes the numbers; shards merge only when these are identical. */
export interface SweepParams {
  metrics: string[];
  k: number;
  preprocess: string;
  tokens: string;
  targets: { name: string; path?: string; key?: string }[];
  layers: string[] | null;
  max_rows: number | null;
  seed: number;
  engine: string;
  precision: string;
  knn: string;
  [key: string]: unknown;
}

export interface ShardFile {
  format: typeof SHARD_FORMAT;
  version: typeof SHARD_VERSION;
  shard: ShardSpec;
  params: SweepParams;
  plan: { total_jobs: number; digest: string; jobs: SweepJob[] };
  jobs: SweepJob[];
  rows: LayerwiseRow[];
}

export interface MergedSweep {
  format: typeof SWEEP_FORMAT;
  version: typeof SHARD_VERSION;
  params: SweepParams;
  shards: { index: number; count: number; file: string }[];
  total_jobs: number;
  rows: LayerwiseRow[];
}

/** `I/N` with 0 ≤ I < N (Slurm's $SLURM_ARRAY_TASK_ID is 0-based with --array=0-(N−1)). */
export function parseShard(value: string): ShardSpec {
  const m = /^(\d+)\/(\d+)$/.exec(value.trim());
  if (!m) throw new ParamError('shard', `expected I/N (e.g. 3/16), got '${value}'`);
  const index = Number(m[1]);
  const count = Number(m[2]);
  if (count < 1 || index >= count) throw new ParamError('shard', `need 0 ≤ I < N, got ${index}/${count}`);
  return { index, count };
}

/**
 * The job list: captures in sorted path order (so the shell's argument order does not matter), each capture's layers
 * in its manifest order, or the `layers` asked for (by name or hidden_states index) in that order.
 */
export async function planJobs(captures: string[], layers: (string | number)[] = []): Promise<SweepJob[]> {
  const sorted = [...captures].sort();
  for (let i = 1; i < sorted.length; i++) {
    if (sorted[i] === sorted[i - 1]) throw new InputError(`capture '${sorted[i]}' is given twice`);
  }
  const jobs: SweepJob[] = [];
  for (const dir of sorted) {
    const capture = await openCapture(dir);
    const chosen = layers.length
      ? layers.map((w) => {
          const found = capture.layers.find((l) => l.name === String(w) || l.index === Number(w));
          if (!found) throw new InputError(`${dir}: no layer '${w}' (layers: ${capture.layers.map((l) => `${l.index}:${l.name}`).join(', ')})`);
          return found;
        })
      : capture.layers;
    for (const l of chosen) jobs.push({ capture: dir, layer: l.name });
  }
  return jobs;
}

/** Shard I of N: jobs [⌊I·J/N⌋, ⌊(I+1)·J/N⌋): contiguous, sizes differ by at most one, every job in exactly one. */
export function shardJobs<T>(jobs: readonly T[], shard: ShardSpec): T[] {
  const J = jobs.length;
  return jobs.slice(Math.floor((shard.index * J) / shard.count), Math.floor(((shard.index + 1) * J) / shard.count));
}

export function jobKey(j: SweepJob): string {
  return `${j.capture} :: ${j.layer}`;
}

export function planDigest(jobs: readonly SweepJob[]): string {
  return createHash('sha256').update(JSON.stringify(jobs.map((j) => [j.capture, j.layer]))).digest('hex');
}

/**
 * A sweep's parameters as a shard file records them (JSON keys as written since version 1): the layer-wise options
 * that change the numbers, and the engine that computed them.
 */
export function sweepParams(o: LayerwiseOptions, run: { preprocess: string; engine: string; precision: string; knn: string }): SweepParams {
  const stats = {
    permutations: o.permutations ?? 0,
    bootstrap: o.bootstrap ?? 0,
    ...(o.ci === undefined ? {} : { ci: o.ci }),
    ...(o.permUnit === undefined ? {} : { permUnit: o.permUnit }),
  };
  return {
    metrics: o.metrics,
    k: o.k,
    preprocess: run.preprocess,
    q: o.q ?? null,
    tokens: o.tokenMode,
    targets: o.targets ?? [],
    layers: o.layers?.length ? o.layers.map(String) : null,
    max_rows: o.maxRows ?? null,
    seed: o.seed ?? 0,
    stats,
    engine: run.engine,
    precision: run.precision,
    knn: run.knn,
  };
}

/** Runs one shard: one runLayerwise per capture touched, restricted to this shard's layers. */
export async function runShard(captures: string[], options: LayerwiseOptions, shard: ShardSpec, params: SweepParams): Promise<ShardFile> {
  const plan = await planJobs(captures, options.layers ?? []);
  const mine = shardJobs(plan, shard);
  const byCapture = new Map<string, string[]>();
  for (const j of mine) byCapture.set(j.capture, [...(byCapture.get(j.capture) ?? []), j.layer]);
  const rows: LayerwiseRow[] = [];
  for (const [dir, layers] of byCapture) rows.push(...(await runLayerwise(dir, { ...options, layers })));
  return {
    format: SHARD_FORMAT,
    version: SHARD_VERSION,
    shard,
    params,
    plan: { total_jobs: plan.length, digest: planDigest(plan), jobs: plan },
    jobs: mine,
    rows,
  };
}

export async function readShardFile(file: string): Promise<{ file: string; doc: unknown }> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (err) {
    throw new InputError(`${file}: cannot read (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
  try {
    return { file, doc: JSON.parse(text) };
  } catch (err) {
    throw new InputError(`${file}: not valid JSON (${(err as Error).message})`);
  }
}

/** Stable JSON (sorted keys) for comparing parameter sets. */
function canonical(v: unknown): string {
  if (Array.isArray(v)) return `[${v.map(canonical).join(',')}]`;
  if (v && typeof v === 'object') {
    return `{${Object.keys(v)
      .sort()
      .map((k) => `${JSON.stringify(k)}:${canonical((v as Record<string, unknown>)[k])}`)
      .join(',')}}`;
  }
  return JSON.stringify(v) ?? 'undefined';
}

function checkShape(file: string, doc: unknown): ShardFile {
  const d = doc as Partial<ShardFile> | null;
  if (!d || typeof d !== 'object' || d.format !== SHARD_FORMAT) {
    throw new InputError(`${file}: not a viral-lens sweep shard (format is ${JSON.stringify(d?.format)}, expected '${SHARD_FORMAT}'; write shards with layerwise --shard I/N)`);
  }
  if (d.version !== SHARD_VERSION) throw new InputError(`${file}: shard format version ${d.version}, this viral-lens reads version ${SHARD_VERSION}`);
  const s = d.shard;
  if (!s || !Number.isInteger(s.index) || !Number.isInteger(s.count) || s.index < 0 || s.index >= s.count) {
    throw new InputError(`${file}: field 'shard' must be {index, count} with 0 ≤ index < count, got ${JSON.stringify(s)}`);
  }
  if (!d.params || typeof d.params !== 'object') throw new InputError(`${file}: field 'params' is missing`);
  if (!d.plan || !Array.isArray(d.plan.jobs) || !Array.isArray(d.jobs) || !Array.isArray(d.rows)) {
    throw new InputError(`${file}: fields 'plan.jobs', 'jobs' and 'rows' must be arrays`);
  }
  if (d.plan.jobs.length !== d.plan.total_jobs || planDigest(d.plan.jobs) !== d.plan.digest) {
    throw new InputError(`${file}: field 'plan' is inconsistent (its job list does not match total_jobs/digest): the file was edited or truncated`);
  }
  return d as ShardFile;
}

/**
 * Merges the N shards of one sweep. Rejects, naming the files: a different shard count, a parameter that differs
 * (naming it), a different job plan, the same shard twice, a shard holding jobs it does not own or lacking rows for
 * one, and missing shards (naming their jobs). Rows come out in plan order.
 */
export function mergeShards(parts: { file: string; doc: unknown }[]): MergedSweep {
  if (parts.length === 0) throw new InputError('merge: no shard files given');
  const shards = parts.map((p) => ({ file: p.file, s: checkShape(p.file, p.doc) }));
  const first = shards[0]!;
  const count = first.s.shard.count;
  const byIndex = new Map<number, string>();
  for (const { file, s } of shards) {
    if (s.shard.count !== count) throw new InputError(`${file}: shard ${s.shard.index}/${s.shard.count}, but ${first.file} is one of ${count} shards`);
    const keys = new Set([...Object.keys(s.params), ...Object.keys(first.s.params)]);
    for (const key of [...keys].sort()) {
      const a = canonical(s.params[key]);
      const b = canonical(first.s.params[key]);
      if (a !== b) throw new InputError(`${file}: parameter '${key}' = ${a} differs from ${first.file} (${b}); shards of one sweep must use identical parameters`);
    }
    if (s.plan.digest !== first.s.plan.digest) {
      throw new InputError(`${file}: planned ${s.plan.total_jobs} jobs (digest ${s.plan.digest.slice(0, 12)}), ${first.file} planned ${first.s.plan.total_jobs} (digest ${first.s.plan.digest.slice(0, 12)}): shards of different sweeps (other captures or layers)`);
    }
    const seen = byIndex.get(s.shard.index);
    if (seen !== undefined) throw new InputError(`shard ${s.shard.index}/${count} given twice: ${seen} and ${file}`);
    byIndex.set(s.shard.index, file);
    const own = shardJobs(s.plan.jobs, s.shard).map(jobKey);
    const has = s.jobs.map(jobKey);
    if (own.join('\n') !== has.join('\n')) {
      const extra = has.filter((k) => !own.includes(k));
      throw new InputError(`${file}: holds jobs that shard ${s.shard.index}/${count} does not own${extra.length ? ` (${extra.slice(0, 3).join('; ')})` : ''} or lacks some of its own`);
    }
    const rowsPerJob = new Map(has.map((k) => [k, 0]));
    const rowKeys = new Set<string>();
    for (const [r, row] of s.rows.entries()) {
      const key = jobKey({ capture: row.capture, layer: row.layer });
      if (!rowsPerJob.has(key)) throw new InputError(`${file}: rows[${r}] is for job ${key}, which is not one of this shard's jobs`);
      rowsPerJob.set(key, rowsPerJob.get(key)! + 1);
      const rowKey = `${key} :: ${row.target} :: ${row.metric}`;
      if (rowKeys.has(rowKey)) throw new InputError(`${file}: rows[${r}] duplicates an earlier row (${rowKey})`);
      rowKeys.add(rowKey);
    }
    const empty = [...rowsPerJob].filter(([, n]) => n === 0).map(([k]) => k);
    if (empty.length) throw new InputError(`${file}: no rows for job(s) ${empty.slice(0, 3).join('; ')}${empty.length > 3 ? ` and ${empty.length - 3} more` : ''}`);
  }
  const missing = [...Array(count).keys()].filter((i) => !byIndex.has(i));
  if (missing.length) {
    const jobs = missing.flatMap((i) => shardJobs(first.s.plan.jobs, { index: i, count }).map(jobKey));
    throw new InputError(
      `missing shard(s) ${missing.join(', ')} of ${count}: ${jobs.length} job(s) without results` +
        (jobs.length ? ` (${jobs.slice(0, 3).join('; ')}${jobs.length > 3 ? '; …' : ''})` : '') +
        `; given: ${shards.map((s) => s.file).join(', ')}`,
    );
  }
  const ordered = [...shards].sort((a, b) => a.s.shard.index - b.s.shard.index);
  return {
    format: SWEEP_FORMAT,
    version: SHARD_VERSION,
    params: first.s.params,
    shards: ordered.map(({ file, s }) => ({ index: s.shard.index, count, file })),
    total_jobs: first.s.plan.total_jobs,
    rows: ordered.flatMap(({ s }) => s.rows),
  };
}
