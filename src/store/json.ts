import { readFile } from 'node:fs/promises';
import type { z } from 'zod';
import { InputError } from '../errors.js';
import { describeOsError, writeFileAtomic } from './atomic.js';
import { parseWithSchema } from './manifest.js';

/**
 * Reads a JSON results file (probes.json, attention.json, shuffle.json, ...) and validates it against its schema.
 * A missing file gives `whenMissing()` when given; anything unreadable, not JSON or not of the schema is an
 * InputError naming the file and the first bad field, so every reader (CLI, dashboard, notebook) reports it the
 * same way instead of failing on a missing property later.
 */
export async function readJsonFile<T extends z.ZodType>(path: string, schema: T, whenMissing?: () => z.output<T>): Promise<z.output<T>> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    if (whenMissing && (err as NodeJS.ErrnoException).code === 'ENOENT') return whenMissing();
    throw new InputError(`${path}: cannot read (${describeOsError(err)})`);
  }
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new InputError(`${path}: invalid JSON (${(err as Error).message})`);
  }
  return parseWithSchema(schema, json, path);
}

/** Writes JSON atomically; non-finite numbers become null (JSON has no NaN; the rows carry the reason beside them). */
export async function writeJsonFile(path: string, value: unknown, indent?: number): Promise<void> {
  await writeFileAtomic(path, JSON.stringify(value, (_k, v) => (typeof v === 'number' && !Number.isFinite(v) ? null : v), indent) + '\n');
}
