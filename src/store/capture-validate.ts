/** Validating a capture directory completely: manifest, every shard's header (and values), stray files. */
import { readdir } from 'node:fs/promises';
import { join, relative, sep } from 'node:path';
import { boundMessage, InputError } from '../core/errors.js';
import { describeOsError, isTempFileName } from './atomic.js';
import { checkShardHeader, DATA_DIRS, firstNonFinite, listedFiles, loadManifest, MANIFEST, nonFiniteMessage, shardExpectations } from './capture-files.js';
import { withFile } from './io.js';
import { unsafePathReason, type Manifest } from './manifest.js';
import { parseSafetensorsHeader, readTensorInto } from './safetensors.js';

export interface ValidateOptions {
  /** Also read every shard and report the first NaN/Inf of each (slower: reads all data). */
  checkValues?: boolean;
}

/**
 * Checks every listed shard's header (and optionally its values); returns one message per bad shard. Shards whose
 * path is unsafe (absolute, '..') are skipped: the manifest rules already report them, and they must not be opened.
 */
export async function shardProblems(dir: string, m: Manifest, checkValues: boolean): Promise<string[]> {
  const problems: string[] = [];
  for (const e of shardExpectations(m)) {
    if (unsafePathReason(e.shard.file)) continue;
    const path = join(dir, e.shard.file);
    try {
      await withFile(path, async (fh, size) => {
        const header = await parseSafetensorsHeader(fh, size, path);
        const t = checkShardHeader(path, header, e);
        if (header.tensors.length > 1) {
          const names = header.tensors.map((x) => x.name).join(', ');
          problems.push(`${path}: holds ${header.tensors.length} tensors (${names}); a shard holds exactly one`);
        }
        if (checkValues) {
          const values = new Float32Array(e.shard.count * e.tokens * e.dim);
          await readTensorInto(fh, path, t, values, 0);
          const bad = firstNonFinite(values, 0, values.length);
          if (bad >= 0) problems.push(nonFiniteMessage(path, t.name, e.owner, values[bad]!, bad, 0, e.shard.start, e.tokens, e.dim));
        }
      });
    } catch (err) {
      if (!(err instanceof InputError)) throw err;
      problems.push(err.message);
    }
  }
  return problems;
}

/** Every file below `root` (paths relative to `dir`, with '/' separators); a missing root yields nothing. */
async function walkFiles(dir: string, root: string): Promise<string[]> {
  const out: string[] = [];
  const visit = async (abs: string): Promise<void> => {
    let entries;
    try {
      entries = await readdir(abs, { withFileTypes: true });
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return;
      throw new InputError(`${abs}: cannot list directory: ${describeOsError(err)}`);
    }
    for (const ent of entries) {
      const child = join(abs, ent.name);
      if (ent.isDirectory()) await visit(child);
      else out.push(relative(dir, child).split(sep).join('/'));
    }
  };
  await visit(join(dir, root));
  return out;
}

/**
 * Files the writer owns but the manifest does not list: anything under layers/ and targets/ that is not a listed
 * shard, and leftover temp files (`*.tmp-<pid>-<hex>`) at the top level. Other top-level files are left alone.
 */
export async function strayFiles(dir: string, m: Manifest): Promise<string[]> {
  const listed = new Set(listedFiles(m));
  const stray: string[] = [];
  for (const d of DATA_DIRS) for (const f of await walkFiles(dir, d)) if (!listed.has(f)) stray.push(f);
  let top: string[] = [];
  try {
    top = await readdir(dir);
  } catch (err) {
    throw new InputError(`${dir}: cannot list directory: ${describeOsError(err)}`);
  }
  for (const f of top) if (isTempFileName(f)) stray.push(f);
  return stray.sort();
}

/**
 * Validates a capture completely: manifest schema and rules, every shard (exists, readable header, tensor name,
 * dtype, shape), and stray files. Returns all problems, each naming its file and field; [] means valid.
 */
export async function validateCapture(dir: string, options: ValidateOptions = {}): Promise<string[]> {
  // Each problem is printed as one line, like an InputError's message (a JSON.parse message can quote line breaks).
  return (await collectProblems(dir, options)).map(boundMessage);
}

async function collectProblems(dir: string, options: ValidateOptions): Promise<string[]> {
  const { manifest: m, problems } = await loadManifest(dir);
  // Without a schema-valid manifest there is nothing to check the shards against.
  if (!m) return problems;
  // A writer that stopped before its first batch leaves a schema-valid manifest with nothing to analyse.
  if (m.samples.count === 0) problems.push(`${join(dir, MANIFEST)}: samples.count: the capture holds no samples`);
  problems.push(...(await shardProblems(dir, m, options.checkValues ?? false)));
  for (const f of await strayFiles(dir, m)) {
    problems.push(
      isTempFileName(f)
        ? `${join(dir, f)}: leftover temporary file from an interrupted write`
        : `${join(dir, f)}: stray file (not listed in ${MANIFEST})`,
    );
  }
  return problems;
}

// ---------------------------------------------------------------------------------------------------------------
// Writing
