/**
 * The dashboard's view of RUNS_DIR: every capture under it (runs/<run>/step-<N>/ or single capture folders), a
 * summary of each read from its manifest only, and change notifications while runs are being written.
 *
 * - Capture ids are paths relative to RUNS_DIR with '/' separators (`demo-viral/step-300`); `.` when RUNS_DIR is
 *   itself a capture. A run id is likewise the path of the run's folder (`demo-viral`, `sweep-a/exp1`; runOf).
 *   Only ids found by the scan resolve, and every path handed to an analysis is re-checked with realpath to lie
 *   inside RUNS_DIR, shards included (a symlinked shard pointing elsewhere is an error, not a read).
 *   Side files (results.json, probes.json, attention.json, shuffle.json) are read only through readFileInside.
 * - Watching: fs.watch (recursive) where the platform supports it, plus a poll every `pollMs` as the fallback (and to
 *   catch what inotify misses on network filesystems); bursts of events are debounced into one rescan. A rescan
 *   re-reads a manifest only when its size or mtime changed.
 * - Trained layers, read from the manifest's free-form `model` object (documented in server/README.md):
 *   `model.aligned_layer` (VIRAL: hidden_states index of the layer aligned to the target) and
 *   `model.residual_layers` (residual variant: indices where input embeddings are re-injected; a single number is
 *   accepted, and `model.residual_layer` as its alias).
 */
import { EventEmitter } from 'node:events';
import { constants, watch, type FSWatcher } from 'node:fs';
import { lstat, open, realpath, stat, type FileHandle } from 'node:fs/promises';
import { basename, dirname, isAbsolute, join, relative, sep } from 'node:path';
import { ATTENTION_FILE } from '../analysis/attention.js';
import { SHUFFLE_FILE } from '../analysis/shuffle.js';
import { InputError } from '../src/core/errors.js';
import { z } from 'zod';
import { readJsonFile, type TextReader } from '../src/store/json.js';
import { listRuns, openCapture } from '../src/store/capture.js';

export const CACHE_DIR_NAME = '.viral-lens-cache';

export interface CaptureSummary {
  id: string;
  run: string;
  step: number | null;
  variant: string | null;
  model: string | null;
  samples: number | null;
  tokens: number | null;
  grid: [number, number] | null;
  pooling: string | null;
  layers: { name: string; index: number; dim: number }[];
  targets: { name: string; dim: number; tokens: number; description?: string }[];
  labels: string[];
  size_bytes: number | null;
  aligned_layer: number | null;
  residual_layers: number[];
  has_probes: boolean;
  /** mtime of manifest.json (ms since epoch). */
  updated: number | null;
  /** Why the capture cannot be used (unreadable manifest, schema problems, shard outside RUNS_DIR). */
  error?: string;
}

export interface RunSummary {
  run: string;
  models: string[];
  variants: string[];
  steps: number[];
  captures: string[];
  samples: number | null;
  targets: string[];
  size_bytes: number;
  errors: number;
  has_results: boolean;
  updated: number | null;
}

export interface RunsChange {
  added: string[];
  removed: string[];
  changed: string[];
  /** Analysis folders whose attention.json / shuffle.json appeared, changed or went away. */
  analyses: string[];
}

/** Files with the results of a whole run (every variant), which live next to the captures rather than inside one. */
export const ANALYSIS_FILES = [ATTENTION_FILE, SHUFFLE_FILE] as const;
export type AnalysisFileName = (typeof ANALYSIS_FILES)[number];

/** Why a relative id/path is not acceptable, or null. */
export function unsafeRelative(p: string): string | null {
  if (p.length === 0) return 'is empty';
  if (p.includes('\0')) return 'contains a NUL byte';
  if (p.includes('\\')) return 'must use forward slashes';
  if (p.startsWith('/') || isAbsolute(p) || /^[A-Za-z]:/.test(p)) return 'must be relative to RUNS_DIR';
  if (p === '.') return null;
  const parts = p.split('/');
  if (parts.includes('..')) return "must not contain '..'";
  if (parts.some((x) => x === '' || x === '.')) return "must not contain empty or '.' segments";
  return null;
}

function isInside(rootReal: string, real: string): boolean {
  return real === rootReal || real.startsWith(rootReal + sep);
}

/**
 * Resolves `rel` under `root` (both real paths checked): throws an InputError when it escapes, through '..' or
 * through a symlink anywhere on the way.
 */
export async function resolveInside(rootReal: string, rel: string): Promise<string> {
  const bad = unsafeRelative(rel);
  if (bad) throw new InputError(`path '${rel}' ${bad}`);
  const joined = rel === '.' ? rootReal : join(rootReal, ...rel.split('/'));
  let real: string;
  try {
    real = await realpath(joined);
  } catch {
    throw new InputError(`path '${rel}' does not exist under RUNS_DIR`);
  }
  if (!isInside(rootReal, real)) throw new InputError(`path '${rel}' resolves outside RUNS_DIR`);
  return real;
}

/** A path under RUNS_DIR as errors show it (relative; never the file's content). */
function shownPath(rootReal: string, path: string): string {
  const rel = relative(rootReal, path);
  return rel && !rel.startsWith('..') && !isAbsolute(rel) ? rel.split(sep).join('/') : basename(path);
}

/** Largest side file (results.json, probes.json, attention.json, shuffle.json) the dashboard reads. */
const MAX_SIDE_FILE_BYTES = 256 * 2 ** 20;

/**
 * The real path of file `path` when it lies inside the real RUNS_DIR; null when it does not exist (a dangling link
 * included); an InputError when it resolves outside (a symlinked results.json pointing elsewhere).
 */
export async function realFileInside(rootReal: string, path: string): Promise<string | null> {
  let real: string;
  try {
    real = await realpath(path);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new InputError(`${shownPath(rootReal, path)}: cannot read (${(err as NodeJS.ErrnoException).code ?? String(err)})`);
  }
  if (!isInside(rootReal, real)) throw new InputError(`${shownPath(rootReal, path)} resolves outside RUNS_DIR; not read`);
  return real;
}

/**
 * The one way the server reads a file under RUNS_DIR: through its real path (checked by realFileInside), opened
 * without following a link swapped in meanwhile, and only when it is a regular file. An absent file is an error
 * with code ENOENT (what readJsonFile's callers expect); every other refusal is an InputError naming the file.
 */
export async function readFileInside(rootReal: string, path: string): Promise<string> {
  const real = await realFileInside(rootReal, path);
  if (real === null) throw Object.assign(new Error(`${shownPath(rootReal, path)}: not found`), { code: 'ENOENT' });
  const shown = shownPath(rootReal, path);
  let fh: FileHandle;
  try {
    // O_NONBLOCK: a FIFO planted under RUNS_DIR must not hang the request before fstat refuses it.
    fh = await open(real, constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK);
  } catch (err) {
    throw new InputError(`${shown}: cannot read (${(err as NodeJS.ErrnoException).code ?? String(err)})`);
  }
  try {
    const st = await fh.stat();
    if (!st.isFile()) throw new InputError(`${shown}: not a regular file`);
    if (st.size > MAX_SIDE_FILE_BYTES) throw new InputError(`${shown}: ${st.size} bytes, more than the ${MAX_SIDE_FILE_BYTES} a side file may have`);
    return await fh.readFile('utf8');
  } finally {
    await fh.close();
  }
}

/**
 * A capture's run id: the folder of its step-<N> captures, or the capture's own folder, as a path relative to
 * RUNS_DIR ('.' = RUNS_DIR itself). Not the folder's name: `a/exp1` and `b/exp1` are two runs, whose captures,
 * series and results.json must never be merged.
 */
export function runOf(captureId: string): string {
  const parts = captureId === '.' ? [] : captureId.split('/');
  if (parts.length && /^step-\d+$/.test(parts.at(-1)!)) return parts.slice(0, -1).join('/') || '.';
  return captureId;
}

/**
 * The analysis cache folder, checked before the server writes and prunes in it: refused when it is a symlink or not
 * a folder, or (given `within`, RUNS_DIR for the default folder) when it lies outside. Returns its real path.
 */
export async function checkCacheDir(dir: string, within?: string): Promise<string> {
  const st = await lstat(dir).catch((err: NodeJS.ErrnoException) => {
    if (err.code === 'ENOENT') return null;
    throw new InputError(`cache folder ${dir}: ${err.code ?? String(err)}`);
  });
  const fix = 'remove it (or serve with --no-cache)';
  if (st?.isSymbolicLink()) throw new InputError(`cache folder ${dir} is a symlink: the analysis cache writes and deletes files there; ${fix}`);
  if (st && !st.isDirectory()) throw new InputError(`cache folder ${dir} is not a folder; ${fix}`);
  const parent = await realpath(dirname(dir)).catch(() => dirname(dir));
  const real = join(parent, basename(dir));
  if (within !== undefined && !isInside(within, real)) throw new InputError(`cache folder ${dir} resolves outside RUNS_DIR (${real}); ${fix}`);
  return real;
}

function intOrNull(v: unknown): number | null {
  return typeof v === 'number' && Number.isInteger(v) && v >= 0 ? v : null;
}

function trainedLayers(model: Record<string, unknown>): { aligned: number | null; residual: number[] } {
  const aligned = intOrNull(model.aligned_layer);
  const raw = model.residual_layers ?? model.residual_layer;
  const residual = (Array.isArray(raw) ? raw : raw === undefined ? [] : [raw]).map(intOrNull).filter((x): x is number => x !== null);
  return { aligned, residual };
}

interface Cached {
  signature: string;
  summary: CaptureSummary;
}

export class RunsIndex extends EventEmitter {
  private byId = new Map<string, CaptureSummary>();
  private readonly cache = new Map<string, Cached>();
  private watcher: FSWatcher | null = null;
  private poll: NodeJS.Timeout | null = null;
  private debounce: NodeJS.Timeout | null = null;
  private refreshing: Promise<RunsChange> | null = null;
  private again = false;
  /** size:mtime of every analysis file per folder, to notice when one is (re)written. */
  private analysisSignatures = new Map<string, string>();
  /** Scans so far (for tests and the health endpoint). */
  scans = 0;
  watching: 'fs.watch+poll' | 'poll' | 'off' = 'off';

  private constructor(
    readonly root: string,
    private readonly pollMs: number,
  ) {
    super();
  }

  static async open(runsDir: string, options: { pollMs?: number } = {}): Promise<RunsIndex> {
    let root: string;
    try {
      root = await realpath(runsDir);
      if (!(await stat(root)).isDirectory()) throw new Error('not a directory');
    } catch (err) {
      throw new InputError(`${runsDir}: ${(err as NodeJS.ErrnoException).code === 'ENOENT' ? 'not found' : (err as Error).message}; RUNS_DIR must be a directory`);
    }
    const index = new RunsIndex(root, options.pollMs ?? 2000);
    await index.refresh();
    return index;
  }

  captures(): CaptureSummary[] {
    return [...this.byId.values()];
  }

  get(id: string): CaptureSummary | undefined {
    return this.byId.get(id);
  }

  /** The capture's real directory after the id and its files have been checked to stay inside RUNS_DIR. */
  async dirOf(id: string): Promise<string> {
    const c = this.byId.get(id);
    if (!c) throw new InputError(`no capture '${id}' under RUNS_DIR`);
    if (c.error) throw new InputError(`capture '${id}': ${c.error}`);
    return resolveInside(this.root, id);
  }

  runs(): RunSummary[] {
    const groups = new Map<string, CaptureSummary[]>();
    for (const c of this.byId.values()) groups.set(c.run, [...(groups.get(c.run) ?? []), c]);
    return [...groups.entries()]
      .sort(([a], [b]) => a.localeCompare(b))
      .map(([run, cs]) => {
        const ok = cs.filter((c) => !c.error);
        const uniq = <T>(xs: T[]) => [...new Set(xs)];
        return {
          run,
          models: uniq(ok.map((c) => c.model!).filter(Boolean)),
          variants: uniq(ok.map((c) => c.variant!).filter(Boolean)),
          steps: uniq(cs.map((c) => c.step).filter((s): s is number => s !== null)).sort((a, b) => a - b),
          captures: cs.sort((a, b) => (a.step ?? -1) - (b.step ?? -1)).map((c) => c.id),
          samples: ok.length ? Math.max(...ok.map((c) => c.samples ?? 0)) : null,
          targets: uniq(ok.flatMap((c) => c.targets.map((t) => t.name))),
          size_bytes: ok.reduce((a, c) => a + (c.size_bytes ?? 0), 0),
          errors: cs.length - ok.length,
          has_results: false,
          updated: Math.max(0, ...cs.map((c) => c.updated ?? 0)) || null,
        };
      });
  }

  /** The real folder of a scanned run (for its results.json); null for a run the scan did not find. */
  async runDir(run: string): Promise<string | null> {
    if (!this.captures().some((x) => x.run === run)) return null;
    return resolveInside(this.root, run);
  }

  /** Rescans RUNS_DIR; concurrent calls share one scan (and one more runs after it if asked meanwhile). */
  refresh(): Promise<RunsChange> {
    if (this.refreshing) {
      this.again = true;
      return this.refreshing;
    }
    this.refreshing = this.scan().finally(() => {
      this.refreshing = null;
      if (this.again) {
        this.again = false;
        void this.refresh();
      }
    });
    return this.refreshing;
  }

  private async scan(): Promise<RunsChange> {
    this.scans++;
    const entries = await listRuns(this.root);
    const next = new Map<string, CaptureSummary>();
    const change: RunsChange = { added: [], removed: [], changed: [], analyses: [] };
    for (const e of entries) {
      const rel = relative(this.root, e.dir).split(sep).join('/') || '.';
      const signature = await stat(join(e.dir, 'manifest.json')).then(
        (st) => `${st.size}:${st.mtimeMs}`,
        () => 'missing',
      );
      const cached = this.cache.get(rel);
      let summary: CaptureSummary;
      if (cached && cached.signature === signature) summary = cached.summary;
      else {
        summary = await this.summarise(rel, e.dir, e.step, e.error);
        this.cache.set(rel, { signature, summary });
        if (this.byId.has(rel)) change.changed.push(rel);
      }
      // probes.json can appear without the manifest changing; one symlinked outside RUNS_DIR does not count.
      summary.has_probes = (await realFileInside(this.root, join(e.dir, 'probes.json')).catch(() => null)) !== null;
      next.set(rel, summary);
      if (!this.byId.has(rel)) change.added.push(rel);
    }
    for (const id of this.byId.keys()) {
      if (!next.has(id)) {
        change.removed.push(id);
        this.cache.delete(id);
      }
    }
    this.byId = next;
    const signatures = new Map<string, string>();
    for (const dir of this.analysisFolders()) {
      const parts = await Promise.all(
        ANALYSIS_FILES.map((f) =>
          stat(join(this.root, ...(dir === '.' ? [] : dir.split('/')), f)).then(
            (st) => `${st.size}:${st.mtimeMs}`,
            () => '-',
          ),
        ),
      );
      signatures.set(dir, parts.join('|'));
    }
    for (const dir of new Set([...signatures.keys(), ...this.analysisSignatures.keys()])) {
      if (signatures.get(dir) !== this.analysisSignatures.get(dir) && this.scans > 1) change.analyses.push(dir);
    }
    this.analysisSignatures = signatures;
    if (change.added.length || change.removed.length || change.changed.length || change.analyses.length) this.emit('change', change);
    return change;
  }

  /**
   * Folders that may hold a whole run's analysis files: RUNS_DIR ('.') and every folder above a capture, as ids
   * relative to RUNS_DIR (a demo's --out folder is the parent of its <variant>/step-<N>/ captures). Only these
   * resolve through `analysisDir`, as only scanned capture ids resolve through `dirOf`.
   */
  analysisFolders(): string[] {
    const out = new Set<string>(['.']);
    for (const id of this.byId.keys()) {
      const parts = id === '.' ? [] : id.split('/');
      for (let i = 1; i < parts.length; i++) out.add(parts.slice(0, i).join('/'));
    }
    return [...out].sort((a, b) => (a === '.' ? -1 : b === '.' ? 1 : a.localeCompare(b)));
  }

  /**
   * The real path of analysis folder `dir` when it holds `file`, after both were checked to stay inside RUNS_DIR (a
   * symlinked file pointing elsewhere is an error, not a read); null when the file does not exist.
   */
  async analysisDir(dir: string, file: AnalysisFileName): Promise<string | null> {
    if (!this.analysisFolders().includes(dir)) throw new InputError(`dir: '${dir}' is not RUNS_DIR or a folder above a capture under it`);
    const real = await resolveInside(this.root, dir);
    if ((await realFileInside(this.root, join(real, file))) === null) return null;
    return real;
  }

  private async summarise(id: string, dir: string, step: number | null, listError?: string): Promise<CaptureSummary> {
    const base: CaptureSummary = {
      id,
      run: runOf(id),
      step,
      variant: null,
      model: null,
      samples: null,
      tokens: null,
      grid: null,
      pooling: null,
      layers: [],
      targets: [],
      labels: [],
      size_bytes: null,
      aligned_layer: null,
      residual_layers: [],
      has_probes: false,
      updated: await stat(join(dir, 'manifest.json')).then(
        (s) => s.mtimeMs,
        () => null,
      ),
    };
    if (listError) return { ...base, error: listError.split(`${this.root}${sep}`).join('') };
    try {
      const capture = await openCapture(dir);
      const m = capture.manifest;
      // Every listed file must resolve inside RUNS_DIR (a shard may be a symlink).
      for (const file of [...m.layers.flatMap((l) => l.shards), ...m.targets.flatMap((t) => t.shards)].map((s) => s.file)) {
        const real = await realpath(join(dir, file)).catch(() => null);
        if (real && !isInside(this.root, real)) throw new InputError(`${join(dir, file)} resolves outside RUNS_DIR`);
      }
      const trained = trainedLayers(m.model);
      return {
        ...base,
        step: step ?? m.checkpoint?.step ?? null,
        variant: m.variant,
        model: String(m.model.name),
        samples: m.samples.count,
        tokens: m.token_layout.tokens,
        grid: m.token_layout.grid,
        pooling: m.token_layout.pooling,
        layers: capture.layers.map((l) => ({ ...l })),
        targets: capture.targets.map((t) => ({ ...t })),
        labels: Object.keys(capture.labels),
        size_bytes: await capture.sizeBytes().catch(() => null),
        aligned_layer: trained.aligned,
        residual_layers: trained.residual,
      };
    } catch (err) {
      if (!(err instanceof InputError)) throw err;
      return { ...base, error: err.message.split(`${this.root}${sep}`).join('') };
    }
  }

  /** Reads a file under RUNS_DIR (readFileInside): the reader handed to readProbes / readAttention / readShuffle. */
  readonly readText: TextReader = (path) => readFileInside(this.root, path);

  /**
   * A JSON side file under RUNS_DIR (results.json): null when absent, an InputError naming it (relative to RUNS_DIR,
   * the name the page shows) when it cannot be used. Its shape is checked by its reader (parseResults).
   */
  async readJson(path: string): Promise<unknown> {
    return readJsonFile(shownPath(this.root, path), z.unknown(), () => null, () => this.readText(path));
  }

  /** Sample ids of a capture (read on demand: they can be long). */
  async sampleIds(id: string): Promise<readonly string[]> {
    const capture = await openCapture(await this.dirOf(id));
    return capture.sampleIds;
  }

  /** Starts fs.watch (when available) and the poll; change events are emitted after a debounce. */
  watch(): void {
    if (this.poll) return;
    const kick = (file?: string | null) => {
      // The analysis cache lives inside RUNS_DIR; its writes are not run changes.
      if (file && (file.startsWith(CACHE_DIR_NAME) || /\.tmp-/.test(file))) return;
      if (this.debounce) clearTimeout(this.debounce);
      this.debounce = setTimeout(() => {
        this.debounce = null;
        this.refresh().catch((err) => this.emit('error', err));
      }, 200);
    };
    try {
      this.watcher = watch(this.root, { recursive: true, persistent: false }, (_event, file) => kick(file ? String(file) : null));
      this.watcher.on('error', () => {
        this.watcher?.close();
        this.watcher = null;
        this.watching = 'poll';
      });
      this.watching = 'fs.watch+poll';
    } catch {
      this.watching = 'poll';
    }
    this.poll = setInterval(() => kick(), this.pollMs);
    this.poll.unref();
  }

  close(): void {
    this.watcher?.close();
    this.watcher = null;
    if (this.poll) clearInterval(this.poll);
    if (this.debounce) clearTimeout(this.debounce);
    this.poll = null;
    this.debounce = null;
    this.watching = 'off';
  }
}

