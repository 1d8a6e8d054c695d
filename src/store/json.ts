import { readFile } from 'node:fs/promises';
import type { z } from 'zod';
import { InputError } from '../core/errors.js';
import { describeOsError, writeFileAtomic } from './atomic.js';
import { parseWithSchema } from './manifest.js';

/**
 * Reads a JSON results file (probes.json, attention.json, shuffle.json, ...) and validates it against its schema.
 * A missing file gives `whenMissing()` when given; anything unreadable, not JSON or not of the schema is an
 * InputError naming the file and the first bad field, so every reader (CLI, dashboard, notebook) reports it the
 * same way instead of failing on a missing property later.
 */
export async function readJsonFile<T extends z.ZodType>(path: string, schema: T, whenMissing?: () => z.output<T>, read: TextReader = readUtf8): Promise<z.output<T>> {
  let text: string;
  try {
    text = await read(path);
  } catch (err) {
    if (whenMissing && (err as NodeJS.ErrnoException).code === 'ENOENT') return whenMissing();
    if (err instanceof InputError) throw err;
    throw new InputError(`${path}: cannot read (${describeOsError(err)})`);
  }
  return parseWithSchema(schema, parseJsonText(text, path), path);
}

/**
 * How a JSON file's text is read: the dashboard passes one that refuses paths resolving outside RUNS_DIR. Throws an
 * error with code ENOENT when the file is absent, an InputError when it must not be read.
 */
export type TextReader = (path: string) => Promise<string>;

const readUtf8: TextReader = (path) => readFile(path, 'utf8');

/**
 * JSON.parse with an error that names the file and the position only: V8's message quotes the text's first
 * characters, which would leak a file that is not JSON (say, a symlink to a key file) into an HTTP response.
 */
export function parseJsonText(text: string, name: string): unknown {
  try {
    return JSON.parse(text);
  } catch (err) {
    const at = /at position (\d+)/.exec((err as Error).message);
    throw new InputError(`${name}: invalid JSON${at ? ` (at character ${at[1]})` : text.trim() === '' ? ' (empty file)' : ''}`);
  }
}

/** Writes JSON atomically; non-finite numbers become null (JSON has no NaN; the rows carry the reason beside them). */
export async function writeJsonFile(path: string, value: unknown, indent?: number): Promise<void> {
  await writeFileAtomic(path, JSON.stringify(value, (_k, v) => (typeof v === 'number' && !Number.isFinite(v) ? null : v), indent) + '\n');
}
