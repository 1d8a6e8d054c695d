import { type ChildProcessWithoutNullStreams, spawn } from 'node:child_process';
import { accessSync, constants, existsSync, statfsSync, unlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { InputError, ParamError } from '../core/errors.js';
import type { FileRows, Matrix } from '../core/matrix.js';
import { checkCrossInput, checkKnnInput, type Engine, type EnginePrecision, type FileRowsOps, type KnnLists, type KnnOptions } from './types.js';

/**
 * `--engine torch`: the O(n²·d) work on a PyTorch device, run by a long-lived Python worker from the capture shim's
 * package (python/viral_lens_torch/engine.py), one per engine instance. Protocol: docs/torch-engine.md.
 * Matrices reach the worker as files it memory-maps, never as JSON: file-backed matrices (`Matrix.source`: .npy
 * payloads, safetensors tensors, capture shards) straight from their files, which the worker also reduces by token
 * mode and preprocesses; any other matrix via a shared-memory file written from the typed array's own buffer and
 * deleted once loaded. Results come back as raw little-endian arrays.
 */
export const TORCH_PRECISIONS = ['float32', 'tf32', 'bf16'] as const;
export type TorchPrecision = (typeof TORCH_PRECISIONS)[number];

export interface TorchEngineOptions {
  /** Interpreter; default VIRAL_LENS_PYTHON, else `python3`. */
  python?: string;
  /** `cuda:N`, `mps` or `cpu`; default the worker's first GPU, else cpu. */
  device?: string;
  precision?: TorchPrecision;
  /** Seconds to wait for the worker's hello (importing torch and starting CUDA). */
  startTimeoutS?: number;
  /**
   * Device bytes the matrices kept between requests may take; least recently used ones are freed to stay under it.
   * Default: half of the GPU's memory (the other half is for the tiles), unlimited on the CPU (where only the count
   * bound applies).
   */
  residentBytes?: number;
}

/** What the worker reports on start (docs/torch-engine.md, `hello`). */
export interface TorchWorkerInfo {
  python: string;
  python_version: string;
  torch: string;
  device: string;
  device_name: string;
  free_bytes: number | null;
  total_bytes: number | null;
  cuda?: string | null;
  precision: TorchPrecision;
  pid: number;
}

/**
 * The worker could not start: no interpreter, no torch, no such device. `missing` names what is missing. An
 * InputError, so the CLI prints its one line (and exits 2) instead of a stack trace: the fix is the user's setup.
 */
export class TorchUnavailableError extends InputError {
  constructor(
    message: string,
    readonly missing: 'python' | 'torch' | 'cuda' | 'mps' | 'device' | 'worker',
  ) {
    super(message);
  }
}

/** The worker died (killed, crashed, out of host memory): every request in flight fails with this one line. */
export class TorchWorkerDiedError extends InputError {}

const HERE = dirname(fileURLToPath(import.meta.url));
// The Python package is not compiled: from the built dist/src/engine/ it is the source tree's python/ (the
// npm package ships python/), so the worker never runs a stale copy of engine.py.
const SHIM_DIR = [join(HERE, '..', '..', 'python'), join(HERE, '..', '..', '..', 'python')].find((d) =>
  existsSync(join(d, 'viral_lens_torch', 'engine.py')),
) ?? join(HERE, '..', '..', 'python');
const ENGINE_PY = join(SHIM_DIR, 'viral_lens_torch', 'engine.py');
/** Loaded matrices kept in the worker's memory; older ones are freed (a layer sweep streams through its layers). */
const MAX_RESIDENT = 6;
/**
 * The most recently used matrices are never freed to make room: an operation loads its operands one after another
 * (a, then b, then a centred copy of one of them) and needs them all when it runs.
 */
const IN_USE = 3;
const INSTALL_HINT =
  'install PyTorch for it (`pip install torch`, see https://pytorch.org; Debian/Ubuntu: `apt-get install python3-torch`) or set VIRAL_LENS_PYTHON to a python that has it';

export function torchPython(options: TorchEngineOptions = {}): string {
  return options.python ?? process.env.VIRAL_LENS_PYTHON ?? 'python3';
}

function shmDir(bytes: number): string {
  // /dev/shm keeps the transfer in memory; where it is missing or too small (containers often give it 64 MB) the OS
  // temp folder (page cache) does nearly as well.
  try {
    accessSync('/dev/shm', constants.W_OK);
    const fs = statfsSync('/dev/shm');
    if (fs.bavail * fs.bsize > 1.1 * bytes) return '/dev/shm';
  } catch {
    // no /dev/shm
  }
  return tmpdir();
}

interface Pending {
  op: string;
  resolve: (r: Reply) => void;
  reject: (e: Error) => void;
  onProgress?: ((done: number, total: number) => void) | undefined;
}

interface Reply {
  header: Record<string, unknown>;
  blobs: Buffer[];
}

/** The framed connection to one worker process: requests in order, replies matched by id. */
class TorchWorker {
  readonly child: ChildProcessWithoutNullStreams;
  readonly hello: Promise<TorchWorkerInfo>;
  private chunks: Buffer[] = [];
  private avail = 0;
  private head: Record<string, unknown> | null = null;
  private headBlobs: number[] = [];
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private stderrTail = '';
  private dead: Error | null = null;
  private helloWaiter: { resolve: (i: TorchWorkerInfo) => void; reject: (e: Error) => void } | null = null;

  constructor(
    readonly python: string,
    args: string[],
    startTimeoutS: number,
  ) {
    const env = { ...process.env, PYTHONPATH: [SHIM_DIR, process.env.PYTHONPATH].filter(Boolean).join(delimiter), PYTHONUNBUFFERED: '1' };
    // engine.py is loaded by file rather than `-m viral_lens_torch.engine`: the package's __init__ imports torch, and
    // without torch the worker must still start far enough to say so in its hello.
    const boot =
      'import importlib.util, sys\n' +
      `spec = importlib.util.spec_from_file_location('viral_lens_torch_engine', ${JSON.stringify(ENGINE_PY)})\n` +
      'mod = importlib.util.module_from_spec(spec); spec.loader.exec_module(mod)\n' +
      'sys.exit(mod.main(sys.argv[1:]))\n';
    this.child = spawn(python, ['-c', boot, ...args], { env, stdio: ['pipe', 'pipe', 'pipe'] });
    this.hello = new Promise<TorchWorkerInfo>((resolve, reject) => {
      this.helloWaiter = { resolve, reject };
    });
    const timer = setTimeout(() => {
      this.fail(new TorchUnavailableError(`torch engine: ${python} did not start the worker within ${startTimeoutS} s${this.tail()}`, 'worker'));
      this.child.kill('SIGKILL');
    }, startTimeoutS * 1000);
    timer.unref();
    this.hello.then(
      () => clearTimeout(timer),
      () => clearTimeout(timer),
    );
    this.child.stdout.on('data', (b: Buffer) => this.onData(b));
    this.child.stderr.on('data', (b: Buffer) => {
      this.stderrTail = (this.stderrTail + b.toString('utf8')).slice(-2000);
    });
    this.child.stdin.on('error', () => {}); // a dead worker's EPIPE; 'exit' reports it
    this.child.on('error', (err: NodeJS.ErrnoException) => {
      this.fail(
        err.code === 'ENOENT'
          ? new TorchUnavailableError(`torch engine: no python interpreter '${python}' (${process.env.VIRAL_LENS_PYTHON ? 'from VIRAL_LENS_PYTHON' : 'not on PATH'}); install Python 3 and PyTorch (\`pip install torch\`, see https://pytorch.org), or set VIRAL_LENS_PYTHON to a python that has torch`, 'python')
          : new TorchUnavailableError(`torch engine: cannot start '${python}': ${err.message}`, 'python'),
      );
    });
    this.child.on('exit', (code, signal) => {
      const how = signal ? `was killed by ${signal}` : `exited with code ${code}`;
      this.fail(new TorchWorkerDiedError(`torch engine worker (pid ${this.child.pid}, ${python}) ${how}${this.tail()}`));
    });
    // An idle worker must not keep Node alive (a forgotten dispose must not hang the CLI); starting and requests in
    // flight keep it referenced.
    this.hello.then(
      () => {
        if (this.pending.size === 0) this.unref();
      },
      () => {},
    );
  }

  private tail(): string {
    const t = this.stderrTail.trim().split('\n').filter(Boolean).slice(-3).join(' | ');
    return t ? `; its last output: ${t}` : '';
  }

  private ref(): void {
    this.child.ref();
    (this.child.stdout as unknown as { ref?: () => void }).ref?.();
    (this.child.stderr as unknown as { ref?: () => void }).ref?.();
  }

  private unref(): void {
    this.child.unref();
    (this.child.stdout as unknown as { unref?: () => void }).unref?.();
    (this.child.stderr as unknown as { unref?: () => void }).unref?.();
  }

  get alive(): boolean {
    return this.dead === null;
  }

  private fail(err: Error): void {
    if (this.dead) return;
    this.dead = err;
    this.helloWaiter?.reject(err);
    this.helloWaiter = null;
    for (const p of this.pending.values()) {
      const msg = `${err.message} (during '${p.op}')`;
      p.reject(err instanceof TorchWorkerDiedError ? new TorchWorkerDiedError(msg) : new Error(msg));
    }
    this.pending.clear();
    this.unref();
  }

  private take(n: number): Buffer {
    const all = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks, this.avail);
    const out = all.subarray(0, n);
    const rest = all.subarray(n);
    this.chunks = rest.length ? [rest] : [];
    this.avail -= n;
    return out;
  }

  private onData(b: Buffer): void {
    this.chunks.push(b);
    this.avail += b.length;
    for (;;) {
      if (!this.head) {
        if (this.avail < 4) return;
        const len = this.take(4).readUInt32LE(0);
        if (this.avail < len) {
          // Put the length back and wait for the rest of the header.
          const lenBuf = Buffer.alloc(4);
          lenBuf.writeUInt32LE(len, 0);
          this.chunks.unshift(lenBuf);
          this.avail += 4;
          return;
        }
        this.head = JSON.parse(this.take(len).toString('utf8')) as Record<string, unknown>;
        this.headBlobs = (this.head.blobs as number[] | undefined) ?? [];
      }
      const need = this.headBlobs.reduce((s, x) => s + x, 0);
      if (this.avail < need) return;
      // Copies into fresh, aligned buffers: the typed arrays built on them need their element alignment.
      const blobs = this.headBlobs.map((len) => {
        const out = Buffer.from(new ArrayBuffer(len));
        this.take(len).copy(out);
        return out;
      });
      const header = this.head;
      this.head = null;
      this.headBlobs = [];
      this.dispatch(header, blobs);
    }
  }

  private dispatch(header: Record<string, unknown>, blobs: Buffer[]): void {
    if (header.event === 'hello') {
      const w = this.helloWaiter;
      this.helloWaiter = null;
      if (header.error) {
        const missing = (header.missing as TorchUnavailableError['missing']) ?? 'torch';
        const hint = missing === 'torch' ? `; ${INSTALL_HINT}` : '';
        w?.reject(new TorchUnavailableError(`torch engine: ${header.error as string}${hint}`, missing));
        this.child.kill();
      } else w?.resolve(header as unknown as TorchWorkerInfo);
      return;
    }
    const p = this.pending.get(header.id as number);
    if (!p) return;
    if (header.event === 'progress') {
      p.onProgress?.(header.done as number, header.total as number);
      return;
    }
    this.pending.delete(header.id as number);
    if (this.pending.size === 0) this.unref();
    if (header.ok) p.resolve({ header, blobs });
    else {
      const msg = `torch engine: ${header.error as string}`;
      p.reject(header.kind === 'input' ? new InputError(msg) : new Error(msg));
    }
  }

  request(op: string, body: Record<string, unknown> = {}, onProgress?: (done: number, total: number) => void): Promise<Reply> {
    if (this.dead) return Promise.reject(this.dead);
    const id = this.nextId++;
    const json = Buffer.from(JSON.stringify({ id, op, ...body }), 'utf8');
    const len = Buffer.alloc(4);
    len.writeUInt32LE(json.length, 0);
    return new Promise<Reply>((resolve, reject) => {
      this.pending.set(id, { op, resolve, reject, onProgress });
      this.ref();
      this.child.stdin.write(Buffer.concat([len, json]));
    });
  }

  async close(): Promise<void> {
    if (this.dead) return;
    const exited = new Promise<void>((resolve) => this.child.once('exit', () => resolve()));
    try {
      await Promise.race([this.request('shutdown'), exited]);
      this.child.stdin.end();
      const timer = setTimeout(() => this.child.kill('SIGKILL'), 5000);
      await exited;
      clearTimeout(timer);
    } catch {
      this.child.kill('SIGKILL');
    }
  }
}

/** Starts a worker and waits for its hello: resolves with the worker or rejects with one line saying what is missing. */
async function startWorker(options: TorchEngineOptions): Promise<{ worker: TorchWorker; info: TorchWorkerInfo }> {
  const python = torchPython(options);
  const args: string[] = [];
  if (options.device) args.push('--device', options.device);
  args.push('--precision', options.precision ?? 'float32');
  const worker = new TorchWorker(python, args, options.startTimeoutS ?? 180);
  const info = await worker.hello;
  return { worker, info };
}

function describeDevice(info: TorchWorkerInfo, precision: TorchPrecision): string {
  const mem = info.free_bytes != null ? `, ${(info.free_bytes / 2 ** 30).toFixed(1)} GiB free` : '';
  const math =
    precision === 'float32'
      ? info.device.startsWith('cuda')
        ? 'fp32, TF32 off'
        : 'fp32'
      : precision === 'tf32'
        ? info.device.startsWith('cuda')
          ? 'TF32 FAST MODE (10-bit mantissa products)'
          : 'TF32 FAST MODE requested (no TF32 on this device: fp32 products, tf32 tie tolerance)'
        : 'BF16 FAST MODE (8-bit mantissa products)';
  return `torch ${info.torch} (${info.python}, Python ${info.python_version}) on ${info.device} = ${info.device_name}${mem}, ${math}`;
}

export function parseTorchPrecision(value: string | undefined): TorchPrecision {
  if (value === undefined || value === 'fp32') return 'float32';
  if ((TORCH_PRECISIONS as readonly string[]).includes(value)) return value as TorchPrecision;
  throw new ParamError('precision', `unknown value '${value}' (expected float32, tf32 or bf16; tf32/bf16 are the torch engine's fast modes)`);
}

export class TorchEngine implements Engine {
  readonly name = 'torch';
  readonly precision: EnginePrecision;
  readonly device: string;
  /** True when the worker runs on a GPU (cuda or mps), which is when `auto` may choose this engine. */
  readonly onGpu: boolean;
  private worker: TorchWorker;
  private readonly loaded = new WeakMap<object, string>();
  private readonly loading = new WeakMap<object, Promise<{ w: TorchWorker; name: string }>>();
  private readonly resident: { name: string; key: WeakRef<object>; bytes: number }[] = [];
  private readonly residentBudget: number;
  private seq = 0;

  private constructor(
    worker: TorchWorker,
    readonly info: TorchWorkerInfo,
    private readonly options: TorchEngineOptions,
  ) {
    this.worker = worker;
    const precision = options.precision ?? 'float32';
    this.precision = precision;
    this.device = describeDevice(info, precision);
    this.onGpu = !info.device.startsWith('cpu');
    // 10⁶ rows × 4096 columns is 16 GB in float32: a count bound alone would keep ~100 GB of a sweep on the card.
    this.residentBudget = options.residentBytes ?? (this.onGpu && info.total_bytes ? Math.floor(info.total_bytes / 2) : Infinity);
  }

  /** `device`/`precision` default to VIRAL_LENS_DEVICE / VIRAL_LENS_PRECISION (how `serve` and `demo` pass them). */
  static async create(options: TorchEngineOptions = {}): Promise<TorchEngine> {
    const env = process.env;
    options = {
      ...options,
      ...(options.device ?? env.VIRAL_LENS_DEVICE ? { device: options.device ?? env.VIRAL_LENS_DEVICE } : {}),
      precision: options.precision ?? parseTorchPrecision(env.VIRAL_LENS_PRECISION || undefined),
    };
    const { worker, info } = await startWorker(options);
    // Pin the device the worker chose, so a restarted worker uses the same one.
    return new TorchEngine(worker, info, { ...options, device: info.device });
  }

  /** The worker's process id (the fault tests kill it). */
  get pid(): number | undefined {
    return this.worker.child.pid;
  }

  /** A worker that died fails the request it was serving; the next request starts a fresh one. */
  private async live(): Promise<TorchWorker> {
    if (!this.worker.alive) {
      const { worker } = await startWorker(this.options);
      this.worker = worker;
      this.resident.length = 0;
      this.seq++;
    }
    return this.worker;
  }

  /** Hands a matrix to the worker once (per worker); returns its name there. */
  private load(m: Matrix): Promise<{ w: TorchWorker; name: string }> {
    const key: object = m.source ?? m.data;
    // Concurrent requests for one matrix (Promise.all over its row sums) share one upload.
    let p = this.loading.get(key);
    if (!p) {
      p = this.loadOnce(m, key).finally(() => this.loading.delete(key));
      this.loading.set(key, p);
    }
    return p;
  }

  private async loadOnce(m: Matrix, key: object): Promise<{ w: TorchWorker; name: string }> {
    const w = await this.live();
    const known = this.loaded.get(key);
    const at = known === undefined ? -1 : this.resident.findIndex((r) => r.name === known);
    if (at >= 0) {
      // Least recently used goes first: a sweep's targets stay while its layers stream through.
      this.resident.push(...this.resident.splice(at, 1));
      return { w, name: known! };
    }
    const name = `w${this.seq}:m${this.resident.length}:${Math.random().toString(36).slice(2, 10)}`;
    // Room first (the new matrix at float32 at least), so the device never holds the old and the new at once.
    await this.evict(w, IN_USE - 1, m.rows * m.cols * 4);
    let bytes = m.rows * m.cols * 4;
    if (m.source?.kind === 'centred') {
      const base = await this.load(m.source.of);
      bytes = ((await base.w.request('centre', { x: base.name, out: name })).header.bytes as number | undefined) ?? bytes;
    } else if (m.source) {
      // The worker maps the files itself: the values never pass through Node.
      bytes = ((await w.request('load', { name, source: wireSource(m.source) })).header.bytes as number | undefined) ?? bytes;
    } else {
      const path = join(shmDir(m.data.byteLength), `viral-lens-torch-${process.pid}-${name.replace(/:/g, '-')}.bin`);
      const dtype = m.data instanceof Float64Array ? 'float64' : 'float32';
      // The typed array's own bytes: no conversion, no extra copy on Node's heap.
      writeFileSync(path, new Uint8Array(m.data.buffer, m.data.byteOffset, m.data.byteLength));
      try {
        bytes = ((await w.request('load', { name, path, dtype, rows: m.rows, cols: m.cols, offset: 0, unlink: true })).header.bytes as number | undefined) ?? bytes;
      } finally {
        if (existsSync(path)) unlinkSync(path);
      }
    }
    this.loaded.set(key, name);
    this.resident.push({ name, key: new WeakRef(key), bytes });
    await this.evict(w, IN_USE, 0);
    return { w, name };
  }

  /** Frees least recently used matrices (all but the newest `keep`) until the count and byte bounds hold with `extra` more. */
  private async evict(w: TorchWorker, keep: number, extra: number): Promise<void> {
    const total = () => this.resident.reduce((s, r) => s + r.bytes, 0);
    while (this.resident.length > keep && (this.resident.length > MAX_RESIDENT || total() + extra > this.residentBudget)) {
      const old = this.resident.shift()!;
      await w.request('free', { name: old.name });
    }
  }

  /** What the worker holds now (matrices, device bytes): for the tests of the residency bounds. */
  async residentInWorker(): Promise<{ count: number; bytes: number }> {
    const w = await this.live();
    return (await w.request('ping', {})).header.resident as { count: number; bytes: number };
  }

  async gramTile(a: Matrix, rowStart: number, rowEnd: number, b: Matrix): Promise<Float32Array> {
    const A = await this.load(a);
    const B = await this.load(b);
    const r = await B.w.request('gram', { a: A.name, b: B.name, row_start: rowStart, row_end: rowEnd });
    return f32(r.blobs[0]!);
  }

  async knn(x: Matrix, k: number, options: KnnOptions = {}): Promise<KnnLists> {
    checkKnnInput(x, k);
    options.signal?.throwIfAborted();
    const { w, name } = await this.load(x);
    options.signal?.throwIfAborted();
    const onAbort = () => w.child.kill('SIGKILL');
    options.signal?.addEventListener('abort', onAbort, { once: true });
    try {
      const r = await w.request('knn', { x: name, k }, options.onProgress);
      return {
        n: x.rows,
        k,
        indices: new Int32Array(r.blobs[0]!.buffer, r.blobs[0]!.byteOffset, x.rows * k),
        values: f64(r.blobs[1]!),
        next: f64(r.blobs[2]!),
        tieTolerance: r.header.tie_tolerance as number,
      };
    } catch (err) {
      options.signal?.throwIfAborted();
      throw err;
    } finally {
      options.signal?.removeEventListener('abort', onAbort);
    }
  }

  async crossProduct(a: Matrix, b: Matrix): Promise<Float64Array> {
    checkCrossInput(a, b);
    const A = await this.load(a);
    const B = await this.load(b);
    const r = await B.w.request('cross', { a: A.name, b: B.name });
    return f64(r.blobs[0]!);
  }

  /** The exact quantile of |x| (the prh clamp), computed by the worker's streamed radix selection. */
  async absQuantile(x: Matrix, q: number, chunk?: number): Promise<number> {
    const { w, name } = await this.load(x);
    const r = await w.request('quantile', { x: name, q, ...(chunk ? { chunk } : {}) });
    return r.header.value as number;
  }

  /** File-backed matrices (`Matrix.source`): the worker maps their files and does their O(n·d) sums on the device. */
  readonly files: FileRowsOps = {
    rowDots: async (a, b) => {
      const A = await this.load(a);
      const B = await this.load(b);
      return f64((await B.w.request('rowdots', { a: A.name, b: B.name })).blobs[0]!);
    },
    columnSquaredNorms: async (x) => {
      const { w, name } = await this.load(x);
      return f64((await w.request('colsq', { x: name })).blobs[0]!);
    },
    read: async (x) => {
      const { w, name } = await this.load(x);
      const r = await w.request('fetch', { x: name });
      const blob = r.blobs[0]!;
      return { rows: x.rows, cols: x.cols, data: r.header.dtype === 'float64' ? f64(blob) : f32(blob) };
    },
  };

  /** Diagnostics: a round trip (with an optional delay, used by the fault tests). */
  async ping(delayS = 0): Promise<void> {
    await (await this.live()).request('ping', { delay_s: delayS });
  }

  async dispose(): Promise<void> {
    await this.worker.close();
  }
}

/** The `source` of a `load` request (docs/torch-engine.md). */
function wireSource(s: FileRows): Record<string, unknown> {
  return {
    segments: s.segments.map((g) => ({
      path: resolve(g.path),
      dtype: g.dtype,
      little_endian: g.littleEndian,
      offset: g.offset,
      samples: g.samples,
      order: g.order,
      non_finite: g.nonFinite.kind === 'shard' ? { kind: 'shard', head: g.nonFinite.head, what: g.nonFinite.what, shard_start: g.nonFinite.shardStart } : g.nonFinite,
    })),
    tokens: s.tokens,
    cols: s.cols,
    mode: s.mode,
    pick: s.pick ? Array.from(s.pick) : null,
    float64: s.float64,
    preprocess: s.preprocess,
    q: s.q,
  };
}

function f32(b: Buffer): Float32Array {
  return new Float32Array(b.buffer, b.byteOffset, b.byteLength / 4);
}

function f64(b: Buffer): Float64Array {
  return new Float64Array(b.buffer, b.byteOffset, b.byteLength / 8);
}

/** For `doctor`: the worker's hello, or exactly why it does not start. */
export async function torchStatus(options: TorchEngineOptions = {}): Promise<{ python: string; info?: TorchWorkerInfo; error?: string }> {
  const python = torchPython(options);
  try {
    const { worker, info } = await startWorker(options);
    await worker.close();
    return { python, info };
  } catch (err) {
    return { python, error: (err as Error).message };
  }
}
