/**
 * The dashboard's view of RUNS_DIR: every capture under it (runs/<run>/step-<N>/ or single capture folders), a
 * summary of each read from its manifest only, and change notifications while runs are being written.
 *
 * - Capture ids are paths relative to RUNS_DIR with '/' separators (`demo-viral/step-300`); `.` when RUNS_DIR is
 *   itself a capture. Only ids found by the scan resolve, and every path handed to an analysis is re-checked with
 *   realpath to lie inside RUNS_DIR, shards included (a symlinked shard pointing elsewhere is an error, not a read).
 * - Watching: fs.watch (recursive) where the platform supports it, plus a poll every `pollMs` as the fallback (and to
 *   catch what inotify misses on network filesystems); bursts of events are debounced into one rescan. A rescan
 *   re-reads a manifest only when its size or mtime changed.
 * - Trained layers, read from the manifest's free-form `model` object (documented in server/README.md):
 *   `model.aligned_layer` (VIRAL: hidden_states index of the layer aligned to the target) and
 *   `model.residual_layers` (residual variant: indices where input embeddings are re-injected; a single number is
 *   accepted, and `model.residual_layer` as its alias).
 */
import { EventEmitter } from 'node:events';
import { watch, type FSWatcher } from 'node:fs';
import { readFile, realpath, stat } from 'node:fs/promises';
import { basename, isAbsolute, join, relative, sep } from 'node:path';
import { ATTENTION_FILE } from '../analysis/attention.js';
import { SHUFFLE_FILE } from '../analysis/shuffle.js';
import { InputError } from '../src/errors.js';
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
  if (real !== rootReal && !real.startsWith(rootReal + sep)) throw new InputError(`path '${rel}' resolves outside RUNS_DIR`);
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

  /** The run's folder (for results.json), when the run is a folder of step captures. */
  async runDir(run: string): Promise<string | null> {
    const c = this.captures().find((x) => x.run === run && x.id.includes('/'));
    if (!c) return null;
    const rel = c.id.split('/').slice(0, -1).join('/');
    return resolveInside(this.root, rel);
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
        summary = await this.summarise(rel, e.dir, e.run, e.step, e.error);
        this.cache.set(rel, { signature, summary });
        if (this.byId.has(rel)) change.changed.push(rel);
      }
      // probes.json can appear without the manifest changing.
      summary.has_probes = await stat(join(e.dir, 'probes.json')).then(
        (st) => st.isFile(),
        () => false,
      );
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
    let target: string;
    try {
      target = await realpath(join(real, file));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
      throw new InputError(`${dir === '.' ? '' : `${dir}/`}${file}: cannot read (${(err as NodeJS.ErrnoException).code ?? String(err)})`);
    }
    if (!target.startsWith(this.root + sep)) throw new InputError(`${dir === '.' ? '' : `${dir}/`}${file} resolves outside RUNS_DIR`);
    return real;
  }

  private async summarise(id: string, dir: string, run: string, step: number | null, listError?: string): Promise<CaptureSummary> {
    const base: CaptureSummary = {
      id,
      run: id === '.' ? basename(this.root) : run,
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
        if (real && real !== this.root && !real.startsWith(this.root + sep)) throw new InputError(`${join(dir, file)} resolves outside RUNS_DIR`);
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

/** Reads a JSON file if present; null when absent; an InputError naming the file when it is not JSON. */
export async function readJsonIfPresent(path: string): Promise<unknown> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return null;
    throw new InputError(`${basename(path)}: cannot read (${(err as NodeJS.ErrnoException).code ?? String(err)})`);
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new InputError(`${basename(path)}: invalid JSON (${(err as Error).message})`);
  }
}
