/**
 * The analysis runner behind the dashboard: named analyses (layer-wise sweeps, UMAP maps, PCA-RGB grids, figure
 * renders) run off the caller's event loop in worker threads, are cached on disk keyed by what they read and how,
 * are computed once however many callers ask at the same time, and stop when the last caller stops waiting.
 *
 * - Key: sha256 over the analysis kind, its parameters (canonical JSON), a fingerprint of every capture it reads
 *   (manifest.json's bytes + size and a sampled-content hash of every listed shard, see contentSample),
 *   CACHE_VERSION and a fingerprint of the code
 *   (size + mtime of the sources under src/ and analysis/). A capture that gains a batch or is rewritten gets a new
 *   key, and so does every analysis after a code change; otherwise the cache holds across server restarts.
 * - De-duplication: one in-flight computation per key; later callers subscribe to it. Each caller may abort its own
 *   wait (an HTTP client that disconnects); the computation is cancelled only when no subscriber is left.
 * - Cancellation reaches the worker as a message and aborts the analysis between layers/epochs; a worker that does
 *   not stop within `killAfterMs` is terminated and replaced.
 * - Isolation: a worker that crashes or runs out of heap fails only its job; the pool starts a new worker.
 *
 * This file is also the worker's entry point (a worker is started on this module with workerData.viralLensJobs),
 * so the pool needs no separate script. Workers load TypeScript through tsx (registered by a bootstrap, see spawn).
 */
import { createHash, randomBytes } from 'node:crypto';
import { lstat, mkdir, open, readdir, readFile, rename, stat, unlink, writeFile } from 'node:fs/promises';
import { availableParallelism } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { isMainThread, parentPort, Worker, workerData } from 'node:worker_threads';
import type { Engine } from '../src/engine/index.js';
import { InputError } from '../src/core/errors.js';
import type { PcaGridResult, UmapRunOptions, UmapRunResult } from '../analysis/embeddings.js';
import type { ExportFormat, VlSpec } from '../analysis/figures.js';
import type { LayerwiseOptions, LayerwiseRow } from '../analysis/layerwise.js';

/** Bump when an analysis changes what it returns for the same inputs, so stale cache entries are not served. */
export const CACHE_VERSION = 'viral-lens-jobs/1';

/**
 * A layer-wise job: the layer-wise analysis's parameters (analysis/params.ts LAYERWISE, the options of runLayerwise)
 * for one capture, with the engine by name (auto | ref | cpu | webgpu | cuda) since jobs cross to worker threads.
 */
export type LayerwiseJobParams = Pick<LayerwiseOptions, 'metrics' | 'k' | 'preprocess' | 'q' | 'tokenMode' | 'maxRows' | 'seed' | 'bootstrap' | 'ci'> & {
  /** Absolute capture directory. */
  capture: string;
  engine: string;
};

/** A UMAP job: runUmap's options (analysis/params.ts UMAP) for some captures, with the engine by name. */
export type UmapJobParams = Omit<UmapRunOptions, 'engine' | 'onProgress' | 'signal'> & { captures: string[]; engine: string };

export interface PcaGridJobParams {
  captures: string[];
  sample: string | number;
  layers?: (string | number)[];
  engine: string;
}

export interface RenderJobParams {
  spec: VlSpec;
  format: ExportFormat;
  scale?: number;
}

/**
 * Results pass through JSON before they are cached or returned (NaN becomes null), so a fresh result and a cached
 * one look the same to callers.
 */
export interface JobTypes {
  layerwise: { params: LayerwiseJobParams; result: LayerwiseRow[] };
  umap: { params: UmapJobParams; result: UmapRunResult };
  'pca-grid': { params: PcaGridJobParams; result: PcaGridResult };
  render: { params: RenderJobParams; result: { body: Uint8Array | string; contentType: string } };
}
export type JobKind = keyof JobTypes;
const JOB_KINDS: readonly JobKind[] = ['layerwise', 'umap', 'pca-grid', 'render'];
/** Names of the files the cache writes (entries, and temporaries a crash may leave behind). */
const CACHE_ENTRY = /^[0-9a-f]{64}\.json(\.tmp-\d+-[0-9a-f]{8})?$/;

export interface JobProgress {
  stage: string;
  done: number;
  total: number;
}

/** Capture directories a job reads (fingerprinted into its key); null = not cached. */
function inputsOf(kind: JobKind, params: unknown): string[] | null {
  switch (kind) {
    case 'layerwise':
      return [(params as LayerwiseJobParams).capture];
    case 'umap':
    case 'pca-grid':
      return (params as UmapJobParams).captures;
    case 'render':
      return null;
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Executing one job (in a worker, or inline)

const engines = new Map<string, Promise<Engine>>();

function engineFor(name: string): Promise<Engine> {
  let e = engines.get(name);
  if (!e) {
    e = import('../src/engine/index.js').then((m) => m.createEngine(name));
    engines.set(name, e);
    e.catch(() => engines.delete(name));
  }
  return e;
}

async function execute(kind: JobKind, params: unknown, signal: AbortSignal, onProgress: (p: JobProgress) => void): Promise<unknown> {
  switch (kind) {
    case 'layerwise': {
      const { capture, engine, ...given } = params as LayerwiseJobParams;
      // Checked at the door of the worker too: a job reaches here from any caller of the pool, not only the pages.
      const { LAYERWISE } = await import('../analysis/params.js');
      const { engine: _engine, knn: _knn, ...checked } = LAYERWISE.schema.parse(given) as unknown as LayerwiseJobParams & { knn: string };
      const { runLayerwise } = await import('../analysis/layerwise.js');
      return runLayerwise(capture, { ...checked, engine: await engineFor(engine), onProgress, signal });
    }
    case 'umap': {
      const { captures, engine, ...options } = params as UmapJobParams;
      const { runUmap } = await import('../analysis/embeddings.js');
      return runUmap(captures, { ...options, engine: await engineFor(engine), onProgress, signal });
    }
    case 'pca-grid': {
      const p = params as PcaGridJobParams;
      const { runPcaGrid } = await import('../analysis/embeddings.js');
      return runPcaGrid(p.captures, {
        sample: p.sample,
        ...(p.layers ? { layers: p.layers } : {}),
        engine: await engineFor(p.engine),
        onProgress,
        signal,
      });
    }
    case 'render': {
      const p = params as RenderJobParams;
      const { renderFigure } = await import('../analysis/figures.js');
      return renderFigure(p.spec, p.format, p.scale === undefined ? {} : { scale: p.scale });
    }
  }
}

interface WireError {
  name: string;
  message: string;
  stack?: string;
}

function toWire(err: unknown): WireError {
  const e = err instanceof Error ? err : new Error(String(err));
  return { name: e.name, message: e.message, ...(e.stack ? { stack: e.stack } : {}) };
}

function fromWire(w: WireError): Error {
  if (w.name === 'InputError') return new InputError(w.message);
  if (w.name === 'AbortError') return abortError(w.message);
  const e = new Error(w.message);
  e.name = w.name;
  if (w.stack) e.stack = w.stack;
  return e;
}

export function abortError(message = 'the analysis was cancelled'): Error {
  const e = new Error(message);
  e.name = 'AbortError';
  return e;
}

type ToWorker = { type: 'run'; id: number; kind: JobKind; params: unknown } | { type: 'cancel'; id: number };
type FromWorker =
  | { type: 'progress'; id: number; progress: JobProgress }
  | { type: 'done'; id: number; result: unknown }
  | { type: 'error'; id: number; error: WireError };

function workerMain(): void {
  const port = parentPort!;
  const running = new Map<number, AbortController>();
  port.on('message', (msg: ToWorker) => {
    if (msg.type === 'cancel') {
      running.get(msg.id)?.abort(abortError());
      return;
    }
    const controller = new AbortController();
    running.set(msg.id, controller);
    let last = 0;
    const progress = (p: JobProgress) => {
      // Throttle: progress is for humans, not every layer of a fast sweep.
      const now = Date.now();
      if (now - last < 150 && p.done !== p.total) return;
      last = now;
      port.postMessage({ type: 'progress', id: msg.id, progress: p } satisfies FromWorker);
    };
    execute(msg.kind, msg.params, controller.signal, progress).then(
      (result) => {
        running.delete(msg.id);
        port.postMessage({ type: 'done', id: msg.id, result } satisfies FromWorker);
      },
      (err) => {
        running.delete(msg.id);
        port.postMessage({ type: 'error', id: msg.id, error: toWire(err) } satisfies FromWorker);
      },
    );
  });
}

if (!isMainThread && (workerData as { viralLensJobs?: boolean } | null)?.viralLensJobs) workerMain();

// ---------------------------------------------------------------------------------------------------------------
// Worker pool

interface Task {
  id: number;
  kind: JobKind;
  params: unknown;
  signal: AbortSignal;
  onProgress: (p: JobProgress) => void;
  resolve: (v: unknown) => void;
  reject: (e: Error) => void;
}

interface PoolWorker {
  worker: Worker;
  task: Task | null;
  killTimer: NodeJS.Timeout | null;
}

export interface PoolOptions {
  size: number;
  /** After a cancel, terminate a worker that has not stopped within this time (default 3000 ms). */
  killAfterMs?: number;
  /** Heap limit per worker (MB); an analysis that exceeds it fails alone (default 4096). */
  maxOldGenerationSizeMb?: number;
}

/** tsx's registration API, resolved here so workers find it whatever the process's working directory. */
const TSX_API = isMainThread ? import.meta.resolve('tsx/esm/api') : '';

class WorkerPool {
  private readonly workers: PoolWorker[] = [];
  private readonly queue: Task[] = [];
  private nextId = 1;
  private closed = false;
  /** Workers started so far (replacements included), for tests and diagnostics. */
  started = 0;

  constructor(private readonly options: PoolOptions) {}

  exec(kind: JobKind, params: unknown, signal: AbortSignal, onProgress: (p: JobProgress) => void): Promise<unknown> {
    if (this.closed) return Promise.reject(new Error('the analysis runner is closed'));
    return new Promise((resolve, reject) => {
      const task: Task = { id: this.nextId++, kind, params, signal, onProgress, resolve, reject };
      if (signal.aborted) return reject(abortError());
      signal.addEventListener(
        'abort',
        () => {
          const q = this.queue.indexOf(task);
          if (q >= 0) {
            this.queue.splice(q, 1);
            reject(abortError());
            return;
          }
          const w = this.workers.find((x) => x.task === task);
          if (!w) return;
          w.worker.postMessage({ type: 'cancel', id: task.id } satisfies ToWorker);
          w.killTimer = setTimeout(() => {
            // The analysis is stuck in a long synchronous step: stop the thread and start afresh.
            if (w.task === task) {
              w.task = null;
              reject(abortError());
              this.remove(w);
              void w.worker.terminate();
              this.pump();
            }
          }, this.options.killAfterMs ?? 3000);
        },
        { once: true },
      );
      this.queue.push(task);
      this.pump();
    });
  }

  private spawn(): PoolWorker {
    // On Node 20 a worker started on a .ts file with execArgv ['--import', 'tsx'] loads its entry before tsx's
    // hooks are registered ("Unknown file extension .ts"), so a tiny bootstrap registers tsx, then imports this file.
    // Compiled (dist/, bin/build.mjs): this file is JavaScript and the worker needs no tsx.
    const bootstrap = new URL(import.meta.url).pathname.endsWith('.js')
      ? `import(${JSON.stringify(import.meta.url)})`
      : `import(${JSON.stringify(TSX_API)}).then((m) => { m.register(); return import(${JSON.stringify(import.meta.url)}); })`;
    const worker = new Worker(bootstrap, {
      eval: true,
      workerData: { viralLensJobs: true },
      execArgv: [],
      resourceLimits: { maxOldGenerationSizeMb: this.options.maxOldGenerationSizeMb ?? 4096 },
    });
    this.started++;
    const w: PoolWorker = { worker, task: null, killTimer: null };
    worker.on('message', (msg: FromWorker) => {
      const task = w.task;
      if (!task || task.id !== msg.id) return;
      if (msg.type === 'progress') {
        task.onProgress(msg.progress);
        return;
      }
      this.finish(w);
      if (msg.type === 'done') task.resolve(msg.result);
      else task.reject(fromWire(msg.error));
      this.pump();
    });
    const fail = (err: Error) => {
      const task = w.task;
      this.finish(w);
      this.remove(w);
      task?.reject(err);
      this.pump();
    };
    worker.on('error', (err) => fail(new Error(`analysis worker failed: ${err.message}`)));
    worker.on('exit', (code) => {
      if (this.workers.includes(w)) fail(new Error(`analysis worker exited unexpectedly (code ${code})`));
    });
    // Idle workers must not keep a CLI process alive.
    worker.unref();
    this.workers.push(w);
    return w;
  }

  private finish(w: PoolWorker): void {
    if (w.killTimer) clearTimeout(w.killTimer);
    w.killTimer = null;
    w.task = null;
    w.worker.unref();
  }

  private remove(w: PoolWorker): void {
    const i = this.workers.indexOf(w);
    if (i >= 0) this.workers.splice(i, 1);
  }

  private pump(): void {
    while (this.queue.length && !this.closed) {
      let w = this.workers.find((x) => x.task === null);
      if (!w && this.workers.length < this.options.size) w = this.spawn();
      if (!w) return;
      const task = this.queue.shift()!;
      w.task = task;
      w.worker.ref();
      w.worker.postMessage({ type: 'run', id: task.id, kind: task.kind, params: task.params } satisfies ToWorker);
    }
  }

  get busy(): number {
    return this.workers.filter((w) => w.task).length;
  }

  async close(): Promise<void> {
    this.closed = true;
    for (const t of this.queue.splice(0)) t.reject(new Error('the analysis runner is closed'));
    const all = this.workers.splice(0);
    for (const w of all) {
      if (w.killTimer) clearTimeout(w.killTimer);
      w.task?.reject(new Error('the analysis runner is closed'));
    }
    await Promise.all(all.map((w) => w.worker.terminate()));
  }
}

// ---------------------------------------------------------------------------------------------------------------
// Fingerprints and the disk cache

/** Bytes hashed at each end of a file, and the blocks sampled evenly in between (contentSample). */
const EDGE_BYTES = 64 * 1024;
const SAMPLE_BLOCKS = 8;
const BLOCK_BYTES = 4096;

/**
 * A cheap hash of a file's content: its size, the first and last 64 KiB (a shard's header and its last rows) and
 * 8 blocks of 4 KiB spread evenly in between; files up to 128 KiB are hashed whole. Size and mtime alone keep a
 * stale result for a shard rewritten with the same size and its mtime restored (or within the mtime's resolution).
 */
export async function contentSample(path: string): Promise<string> {
  const fh = await open(path, 'r');
  try {
    const { size } = await fh.stat();
    const h = createHash('sha256').update(`${size}\0`);
    const take = async (position: number, length: number) => {
      const buf = Buffer.alloc(length);
      const { bytesRead } = await fh.read(buf, 0, length, position);
      h.update(buf.subarray(0, bytesRead));
    };
    if (size <= 2 * EDGE_BYTES) await take(0, size);
    else {
      await take(0, EDGE_BYTES);
      const span = size - 2 * EDGE_BYTES - BLOCK_BYTES;
      for (let i = 1; i <= SAMPLE_BLOCKS; i++) await take(EDGE_BYTES + Math.max(0, Math.floor((i * span) / (SAMPLE_BLOCKS + 1))), BLOCK_BYTES);
      await take(size - EDGE_BYTES, EDGE_BYTES);
    }
    return h.digest('hex');
  } finally {
    await fh.close();
  }
}

/**
 * contentSample per path, reused while the file's inode, size, mtime and ctime stay the same: every write changes
 * ctime (which, unlike mtime, utimes cannot set back), so a repeat request hashes nothing new.
 */
const samples = new Map<string, { stamp: string; hash: string }>();
const MAX_SAMPLES = 50_000;

async function shardPrint(path: string): Promise<string> {
  const st = await stat(path);
  const stamp = `${st.dev}:${st.ino}:${st.size}:${st.mtimeMs}:${st.ctimeMs}`;
  const known = samples.get(path);
  if (known?.stamp === stamp) return known.hash;
  const hash = await contentSample(path);
  samples.delete(path);
  samples.set(path, { stamp, hash });
  if (samples.size > MAX_SAMPLES) samples.delete(samples.keys().next().value!);
  return hash;
}

/** What identifies a capture's content: manifest bytes + size and sampled-content hash of each listed file. */
export async function fingerprintCapture(dir: string): Promise<string> {
  const manifestPath = join(dir, 'manifest.json');
  let text: string;
  try {
    text = await readFile(manifestPath, 'utf8');
  } catch (err) {
    throw new InputError(`${manifestPath}: cannot read (${(err as NodeJS.ErrnoException).code ?? String(err)})`);
  }
  const h = createHash('sha256').update(dir).update('\0').update(text);
  let files: string[] = [];
  try {
    const m = JSON.parse(text) as { layers?: { shards?: { file?: unknown }[] }[]; targets?: { shards?: { file?: unknown }[] }[] };
    files = [...(m.layers ?? []), ...(m.targets ?? [])].flatMap((x) => (x.shards ?? []).map((s) => String(s.file)));
  } catch {
    // Unparseable manifests are reported by the analysis itself; the bytes above still key them.
  }
  for (const f of files) {
    try {
      h.update(`\0${f}:${await shardPrint(join(dir, f))}`);
    } catch {
      h.update(`\0${f}:missing`);
    }
  }
  return h.digest('hex');
}

/**
 * Size and mtime of every source file under src/ and analysis/: an edited metric or analysis must not be answered
 * from results the old code cached (CACHE_VERSION alone relies on someone remembering to bump it).
 */
export async function codeFingerprint(): Promise<string> {
  const here = dirname(fileURLToPath(import.meta.url));
  const h = createHash('sha256');
  const visit = async (dir: string): Promise<void> => {
    const entries = await readdir(dir, { withFileTypes: true }).catch(() => []);
    for (const e of entries.sort((a, b) => (a.name < b.name ? -1 : 1))) {
      const p = join(dir, e.name);
      if (e.isDirectory()) await visit(p);
      else if (/\.(ts|js|mjs)$/.test(e.name)) {
        const st = await stat(p).catch(() => null);
        if (st) h.update(`${p}:${st.size}:${st.mtimeMs}\n`);
      }
    }
  };
  await visit(here);
  await visit(join(here, '..', 'src'));
  return h.digest('hex');
}

let processCode: Promise<string> | null = null;

/** Canonical JSON: object keys sorted, undefined dropped, so equal parameters give equal keys. */
export function canonicalJson(v: unknown): string {
  if (v === null || typeof v !== 'object') return JSON.stringify(v) ?? 'null';
  if (Array.isArray(v)) return `[${v.map(canonicalJson).join(',')}]`;
  const entries = Object.entries(v as Record<string, unknown>)
    .filter(([, x]) => x !== undefined)
    .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0));
  return `{${entries.map(([k, x]) => `${JSON.stringify(k)}:${canonicalJson(x)}`).join(',')}}`;
}

// ---------------------------------------------------------------------------------------------------------------
// The runner

export interface JobEvent {
  key: string;
  kind: JobKind;
  state: 'running' | 'progress' | 'done' | 'failed' | 'cancelled';
  progress?: JobProgress;
  error?: string;
  ms?: number;
}

export interface JobRunnerOptions {
  /** Directory of the disk cache (created on demand); null: memory only. */
  cacheDir: string | null;
  /** Worker threads (default: 2 to 4, by core count). */
  workers?: number;
  /** Run analyses in the calling thread instead (notebooks, tests of the analyses themselves). */
  inline?: boolean;
  /** Entries kept in memory (default 64). */
  memoryEntries?: number;
  /** Disk cache budget in bytes; the least recently written entries go first (default 512 MiB). */
  maxCacheBytes?: number;
  killAfterMs?: number;
  onEvent?: (e: JobEvent) => void;
}

export interface RunOptions {
  signal?: AbortSignal;
  onProgress?: (p: JobProgress) => void;
}

export interface JobOutcome<T> {
  result: T;
  key: string;
  /** Where it came from: 'memory' / 'disk' cache, 'shared' (joined an in-flight run), or 'computed'. */
  source: 'memory' | 'disk' | 'shared' | 'computed';
}

interface Flight {
  key: string;
  subscribers: number;
  controller: AbortController;
  listeners: Set<(p: JobProgress) => void>;
  promise: Promise<{ result: unknown; source: 'disk' | 'computed' }>;
}

export interface JobStats {
  computed: number;
  memoryHits: number;
  diskHits: number;
  shared: number;
  cancelled: number;
  failed: number;
}

export class JobRunner {
  readonly stats: JobStats = { computed: 0, memoryHits: 0, diskHits: 0, shared: 0, cancelled: 0, failed: 0 };
  private readonly pool: WorkerPool | null;
  private readonly inflight = new Map<string, Flight>();
  private readonly memory = new Map<string, unknown>();
  /** InputErrors by key: the same bytes fail the same way, so a corrupt capture is read once, not per request. */
  private readonly failures = new Map<string, InputError>();
  private writes = 0;

  constructor(private readonly options: JobRunnerOptions) {
    this.pool = options.inline
      ? null
      : new WorkerPool({
          size: options.workers ?? Math.max(2, Math.min(4, availableParallelism() - 1)),
          ...(options.killAfterMs === undefined ? {} : { killAfterMs: options.killAfterMs }),
        });
  }

  /** Workers started so far (0 inline). */
  get workersStarted(): number {
    return this.pool?.started ?? 0;
  }

  /** Jobs running now (keys), for status pages. */
  get running(): string[] {
    return [...this.inflight.keys()];
  }

  async keyFor<K extends JobKind>(kind: K, params: JobTypes[K]['params']): Promise<string | null> {
    const inputs = inputsOf(kind, params);
    if (!inputs) return null;
    // Once per process: the code that runs is the code loaded at start, whatever is edited on disk afterwards.
    processCode ??= codeFingerprint();
    const [code, prints] = await Promise.all([processCode, Promise.all(inputs.map(fingerprintCapture))]);
    return createHash('sha256').update(canonicalJson({ v: CACHE_VERSION, code, kind, params, inputs: prints })).digest('hex');
  }

  async run<K extends JobKind>(kind: K, params: JobTypes[K]['params'], options: RunOptions = {}): Promise<JobOutcome<JobTypes[K]['result']>> {
    options.signal?.throwIfAborted();
    const cacheable = inputsOf(kind, params) !== null;
    const key = (await this.keyFor(kind, params)) ?? `${kind}-${randomBytes(8).toString('hex')}`;
    if (cacheable && this.memory.has(key)) {
      this.stats.memoryHits++;
      const result = this.memory.get(key);
      // Refresh recency.
      this.memory.delete(key);
      this.memory.set(key, result);
      return { result: result as JobTypes[K]['result'], key, source: 'memory' };
    }
    const failed = this.failures.get(key);
    if (failed) throw new InputError(failed.message);
    let flight = this.inflight.get(key);
    let joined = false;
    if (flight) {
      joined = true;
      this.stats.shared++;
    } else {
      flight = this.start(kind, params, key, cacheable);
    }
    const out = await this.subscribe(flight, options);
    return { result: out.result as JobTypes[K]['result'], key, source: joined ? 'shared' : out.source };
  }

  private start(kind: JobKind, params: unknown, key: string, cacheable: boolean): Flight {
    const controller = new AbortController();
    const listeners = new Set<(p: JobProgress) => void>();
    const emit = (e: Omit<JobEvent, 'key' | 'kind'>) => this.options.onEvent?.({ key, kind, ...e });
    const flight: Flight = {
      key,
      subscribers: 0,
      controller,
      listeners,
      promise: (async () => {
        if (cacheable) {
          const cached = await this.readDisk(kind, key);
          if (cached !== undefined) {
            this.stats.diskHits++;
            this.remember(key, cached);
            return { result: cached, source: 'disk' as const };
          }
        }
        const t0 = Date.now();
        emit({ state: 'running' });
        const onProgress = (p: JobProgress) => {
          for (const l of listeners) l(p);
          emit({ state: 'progress', progress: p });
        };
        try {
          let result = this.pool
            ? await this.pool.exec(kind, params, controller.signal, onProgress)
            : await execute(kind, params, controller.signal, onProgress);
          this.stats.computed++;
          if (cacheable) {
            result = JSON.parse(JSON.stringify(result));
            this.remember(key, result);
            await this.writeDisk(kind, key, result);
          }
          emit({ state: 'done', ms: Date.now() - t0 });
          return { result, source: 'computed' as const };
        } catch (err) {
          if ((err as Error).name === 'AbortError') emit({ state: 'cancelled' });
          else {
            if (cacheable && err instanceof InputError) {
              this.failures.set(key, err);
              while (this.failures.size > 256) this.failures.delete(this.failures.keys().next().value!);
            }
            this.stats.failed++;
            emit({ state: 'failed', error: (err as Error).message });
          }
          throw err;
        }
      })().finally(() => {
        if (this.inflight.get(key) === flight) this.inflight.delete(key);
      }),
    };
    // Subscribers handle rejections; this keeps an abandoned flight's failure from being "unhandled".
    flight.promise.catch(() => {});
    this.inflight.set(key, flight);
    return flight;
  }

  private subscribe(flight: Flight, options: RunOptions): Promise<{ result: unknown; source: 'disk' | 'computed' }> {
    flight.subscribers++;
    if (options.onProgress) flight.listeners.add(options.onProgress);
    return new Promise((resolve, reject) => {
      let settled = false;
      const leave = () => {
        settled = true;
        flight.subscribers--;
        if (options.onProgress) flight.listeners.delete(options.onProgress);
        options.signal?.removeEventListener('abort', onAbort);
      };
      const onAbort = () => {
        if (settled) return;
        leave();
        if (flight.subscribers === 0) {
          // Nobody waits any more: stop the work, and let a new request start afresh rather than join a dying run.
          this.stats.cancelled++;
          if (this.inflight.get(flight.key) === flight) this.inflight.delete(flight.key);
          flight.controller.abort(abortError());
        }
        reject(abortError('the request was cancelled'));
      };
      if (options.signal?.aborted) return onAbort();
      options.signal?.addEventListener('abort', onAbort, { once: true });
      flight.promise.then(
        (v) => {
          if (settled) return;
          leave();
          resolve(v);
        },
        (err) => {
          if (settled) return;
          leave();
          reject(err);
        },
      );
    });
  }

  private remember(key: string, result: unknown): void {
    this.memory.set(key, result);
    const max = this.options.memoryEntries ?? 64;
    while (this.memory.size > max) this.memory.delete(this.memory.keys().next().value!);
  }

  private pathFor(kind: JobKind, key: string): string | null {
    return this.options.cacheDir ? join(this.options.cacheDir, kind, `${key}.json`) : null;
  }

  private async readDisk(kind: JobKind, key: string): Promise<unknown> {
    const path = this.pathFor(kind, key);
    if (!path) return undefined;
    try {
      const entry = JSON.parse(await readFile(path, 'utf8')) as { version?: string; result?: unknown };
      return entry.version === CACHE_VERSION ? entry.result : undefined;
    } catch {
      return undefined; // missing or torn: recompute
    }
  }

  private async writeDisk(kind: JobKind, key: string, result: unknown): Promise<void> {
    const path = this.pathFor(kind, key);
    if (!path) return;
    try {
      if (!(await this.realCacheFolder(kind, true))) return;
      const tmp = `${path}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
      await writeFile(tmp, JSON.stringify({ version: CACHE_VERSION, kind, created: new Date().toISOString(), result }));
      await rename(tmp, path);
      if (++this.writes % 25 === 1) await this.prune();
    } catch {
      // A read-only or full disk only costs recomputation later.
    }
  }

  /**
   * Whether the cache folder (or its `kind` subfolder, made when `create`) is a plain folder: one replaced by a
   * symlink would make the cache write, and the pruner delete, wherever it points.
   */
  private async realCacheFolder(kind: JobKind, create = false): Promise<boolean> {
    const dir = this.options.cacheDir;
    if (!dir) return false;
    const plain = async (path: string, recursive: boolean) => {
      if (create) await mkdir(path, { recursive }).catch(() => {});
      return (await lstat(path).catch(() => null))?.isDirectory() === true;
    };
    // The cache folder first: a subfolder made through a symlinked one would already be outside.
    return (await plain(dir, true)) && (await plain(join(dir, kind), false));
  }

  /** Deletes the oldest cache entries beyond the byte budget: only `<kind>/<sha256>.json` files (and torn temps). */
  async prune(): Promise<void> {
    const dir = this.options.cacheDir;
    if (!dir) return;
    const budget = this.options.maxCacheBytes ?? 512 * 2 ** 20;
    const entries: { path: string; size: number; mtime: number }[] = [];
    for (const kind of JOB_KINDS) {
      if (!(await this.realCacheFolder(kind))) continue;
      for (const e of await readdir(join(dir, kind), { withFileTypes: true }).catch(() => [])) {
        if (!e.isFile() || !CACHE_ENTRY.test(e.name)) continue;
        const path = join(dir, kind, e.name);
        const st = await lstat(path).catch(() => null);
        if (st?.isFile()) entries.push({ path, size: st.size, mtime: st.mtimeMs });
      }
    }
    let total = entries.reduce((a, e) => a + e.size, 0);
    for (const e of entries.sort((a, b) => a.mtime - b.mtime)) {
      if (total <= budget) break;
      await unlink(e.path).catch(() => {});
      total -= e.size;
    }
  }

  async close(): Promise<void> {
    for (const f of this.inflight.values()) f.controller.abort(abortError('the analysis runner is closed'));
    this.inflight.clear();
    await this.pool?.close();
  }
}
