/** Small positioned-read helpers shared by the readers: they never load more of a file than asked for. */
import { open, type FileHandle } from 'node:fs/promises';
import { InputError } from '../core/errors.js';
import { describeOsError } from './atomic.js';

/** Largest single read; FileHandle.read takes at most 2^31-1 bytes, and smaller reads keep peaks in check. */
const MAX_READ = 1 << 30;

/** Opens a file for reading; a missing/unreadable file becomes an InputError naming it. */
export async function openRead(path: string): Promise<{ fh: FileHandle; size: number }> {
  let fh: FileHandle;
  try {
    fh = await open(path, 'r');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (code === 'ENOENT') throw new InputError(`${path}: file not found`);
    throw new InputError(`${path}: cannot open: ${describeOsError(err)}`);
  }
  try {
    const st = await fh.stat();
    if (st.isDirectory()) throw new InputError(`${path}: is a directory, expected a file`);
    return { fh, size: st.size };
  } catch (err) {
    await fh.close();
    throw err;
  }
}

/**
 * Fills `target` with the bytes at `position`. Returns how many bytes were read, which is less than
 * `target.byteLength` only at end of file (callers check sizes against the file length beforehand anyway).
 */
export async function readFully(fh: FileHandle, target: Uint8Array, position: number): Promise<number> {
  let done = 0;
  while (done < target.byteLength) {
    const len = Math.min(MAX_READ, target.byteLength - done);
    const { bytesRead } = await fh.read(target, done, len, position + done);
    if (bytesRead === 0) break;
    done += bytesRead;
  }
  return done;
}

/** Runs `fn` with an open handle and always closes it. */
export async function withFile<T>(path: string, fn: (fh: FileHandle, size: number) => Promise<T>): Promise<T> {
  const { fh, size } = await openRead(path);
  try {
    return await fn(fh, size);
  } finally {
    await fh.close();
  }
}

/** Product of a shape's dimensions (1 for a scalar shape []). */
export function shapeSize(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

/** `[3, 4]` — how shapes appear in messages. */
export function fmtShape(shape: readonly number[]): string {
  return `[${shape.join(', ')}]`;
}
