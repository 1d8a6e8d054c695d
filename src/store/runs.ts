/** Discovering captures under a runs/<run>/step-<N>/ tree. */
import { readdir, readFile, stat } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';
import { InputError } from '../core/errors.js';
import { describeOsError } from './atomic.js';
import { MANIFEST, manifestPathOf } from './capture-files.js';
import { parseJsonText } from './json.js';

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
    const json = parseJsonText(await readFile(manifestPathOf(dir), 'utf8'), manifestPathOf(dir)) as Record<string, unknown>;
    if (typeof json.variant === 'string') entry.variant = json.variant;
    const step = (json.checkpoint as { step?: unknown } | null | undefined)?.step;
    if (entry.step === null && typeof step === 'number' && Number.isSafeInteger(step)) entry.step = step;
  } catch (err) {
    entry.error = err instanceof InputError ? err.message : `${manifestPathOf(dir)}: ${describeOsError(err)}`;
  }
  return entry;
}
