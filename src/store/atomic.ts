/**
 * Atomic file writes: a reader never observes a half-written file under the final name.
 *
 * Protocol: write `<path>.tmp-<pid>-<random>` in the same directory, fsync it, rename it over `<path>` (atomic on
 * POSIX within one file system), then fsync the directory so the rename itself survives a crash. On any failure the
 * temp file is removed and an InputError names the destination and the OS reason (ENOSPC, EACCES, ...), because those
 * failures come from the user's environment (full disk, read-only directory), not from a bug.
 */
import { randomBytes } from 'node:crypto';
import { open, rename, unlink, type FileHandle } from 'node:fs/promises';
import { basename, dirname } from 'node:path';
import { InputError } from '../core/errors.js';

/** What can be written: one buffer, a string (UTF-8), or a (possibly lazy / async) sequence of chunks. */
export type AtomicData = string | Uint8Array | Iterable<Uint8Array> | AsyncIterable<Uint8Array>;

export interface WriteAtomicOptions {
  /** File mode for the new file (default 0o644, subject to the umask). */
  mode?: number;
  /** fsync the parent directory after the rename (default true). */
  syncDir?: boolean;
}

/** Matches the temp files of this module (and the older `name.tmp-<pid>` form of the capture format doc). */
const TEMP_RE = /\.tmp-\d+(-[0-9a-f]+)?$/;

export function isTempFileName(name: string): boolean {
  return TEMP_RE.test(basename(name));
}

export function tempPathFor(path: string): string {
  return `${path}.tmp-${process.pid}-${randomBytes(4).toString('hex')}`;
}

/** Turns a Node system error into "CODE (reason)", e.g. "ENOSPC (no space left on device)". */
export function describeOsError(err: unknown): string {
  const e = err as NodeJS.ErrnoException;
  if (e && typeof e.code === 'string') {
    // Node formats these as "ENOSPC: no space left on device, write '/x/y'"; keep only the reason.
    const m = /^[A-Z0-9_]+: ([^,]+)/.exec(e.message ?? '');
    return m ? `${e.code} (${m[1]})` : e.code;
  }
  return err instanceof Error ? err.message : String(err);
}

/** Writes every byte of `chunk` at the handle's current position (FileHandle.write may write less than asked). */
async function writeAll(fh: FileHandle, chunk: Uint8Array): Promise<void> {
  let done = 0;
  while (done < chunk.byteLength) {
    const { bytesWritten } = await fh.write(chunk, done, chunk.byteLength - done);
    done += bytesWritten;
  }
}

async function writeData(fh: FileHandle, data: AtomicData): Promise<void> {
  if (typeof data === 'string') return writeAll(fh, Buffer.from(data, 'utf8'));
  if (data instanceof Uint8Array) return writeAll(fh, data);
  if (Symbol.asyncIterator in data) {
    for await (const chunk of data) await writeAll(fh, chunk);
  } else {
    for (const chunk of data) await writeAll(fh, chunk);
  }
}

/**
 * fsync a directory so that a rename / create / unlink inside it is durable. Platforms that cannot open or fsync a
 * directory (Windows: EPERM/EISDIR, some file systems: EINVAL) are ignored: the rename is still atomic there.
 */
export async function fsyncDir(dir: string): Promise<void> {
  let fh: FileHandle | undefined;
  try {
    fh = await open(dir, 'r');
    await fh.sync();
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'EPERM' || code === 'EISDIR' || code === 'EINVAL' || code === 'EBADF' || code === 'ENOTSUP') return;
    throw new InputError(`${dir}: cannot sync directory: ${describeOsError(err)}`);
  } finally {
    await fh?.close().catch(() => undefined);
  }
}

/** Atomically replaces `path` with `data` (see the module comment). */
export async function writeFileAtomic(path: string, data: AtomicData, options: WriteAtomicOptions = {}): Promise<void> {
  const tmp = tempPathFor(path);
  let fh: FileHandle | undefined;
  try {
    fh = await open(tmp, 'wx', options.mode ?? 0o644);
    await writeData(fh, data);
    await fh.sync();
    await fh.close();
    fh = undefined;
    await rename(tmp, path);
  } catch (err) {
    await fh?.close().catch(() => undefined);
    await unlink(tmp).catch(() => undefined);
    if (err instanceof InputError) throw err;
    // An error thrown by a chunk generator (e.g. an encoder bug) is not an OS error: keep it as is.
    if (typeof (err as NodeJS.ErrnoException)?.code !== 'string') throw err;
    throw new InputError(`${path}: cannot write file: ${describeOsError(err)}`);
  }
  if (options.syncDir !== false) await fsyncDir(dirname(path));
}
