/** Loading a feature matrix from a single .npy / .safetensors file, and describing such files for `info`. */
import { stat } from 'node:fs/promises';
import { extname, join } from 'node:path';
import { InputError } from '../core/errors.js';
import { matrix, type Matrix, type SourceSegment } from '../core/matrix.js';
import { describeOsError } from './atomic.js';
import { fmtShape, readFully, withFile } from './io.js';
import { readNpy, readNpyHeader } from './npy.js';
import { findTensor, floatDtypeOf, readSafetensorsHeader, readTensor } from './safetensors.js';

export type FileFormat = 'npy' | 'safetensors';

/** Picks the format from the extension, else from the first bytes. */
export async function detectFormat(path: string): Promise<FileFormat> {
  const ext = extname(path).toLowerCase();
  if (ext === '.npy') return 'npy';
  if (ext === '.safetensors') return 'safetensors';
  return withFile(path, async (fh, size) => {
    const head = Buffer.alloc(9);
    const got = await readFully(fh, head, 0);
    if (got >= 6 && head.subarray(0, 6).equals(Buffer.from([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]))) return 'npy';
    // safetensors: a plausible u64 header length followed by the JSON object's opening brace.
    if (got === 9 && head[8] === 0x7b && head.readBigUInt64LE(0) <= BigInt(size - 8)) return 'safetensors';
    throw new InputError(`${path}: unrecognized file format (expected a .npy or .safetensors file)`);
  });
}

export interface LoadMatrixOptions {
  /** Tensor name inside a .safetensors file (optional when the file holds one tensor). */
  key?: string;
}

/**
 * Refuses a zero dimension anywhere in a feature array's shape, from the header alone: [10¹⁵, 0] holds no bytes, yet
 * every later step would size its work and memory by the 10¹⁵ rows.
 */
export function requireNonEmpty(path: string, what: string, shape: readonly number[]): void {
  const zero = shape.indexOf(0);
  if (zero >= 0) {
    throw new InputError(`${path}: ${what} has shape ${fmtShape(shape)} with a zero dimension (axis ${zero}): an empty or zero-width array has no features to compare`);
  }
}

function requireTwoD(path: string, what: string, shape: readonly number[]): void {
  requireNonEmpty(path, what, shape);
  if (shape.length === 2) return;
  if (shape.length === 3) {
    throw new InputError(
      `${path}: ${what} is 3-D ${fmtShape(shape)}; expected a 2-D [n, d] matrix — use a capture directory with a token mode (pooled or per-token), or reshape it to [n, d]`,
    );
  }
  throw new InputError(`${path}: ${what} has shape ${fmtShape(shape)}; expected a 2-D [n, d] matrix (reshape it to [n, d])`);
}

/** Where a 2-D [n, d] array's values lie in its file, from the header alone (the checks of loadMatrix). */
export interface LocatedMatrix {
  rows: number;
  cols: number;
  format: FileFormat;
  /** The tensor's name in a .safetensors file. */
  name: string | null;
  segment: SourceSegment;
  /** The in-heap reader returns float64 values (f8 / F64); every other dtype becomes float32. */
  float64: boolean;
}

const SEGMENT_DTYPE = { f2: 'float16', f4: 'float32', f8: 'float64', F16: 'float16', BF16: 'bfloat16', F32: 'float32', F64: 'float64' } as const;

/** Where any float array's values lie in a .npy / .safetensors file, from the header; `check` vets the shape. */
export async function locateArray(
  path: string,
  options: LoadMatrixOptions,
  check: (what: string, shape: readonly number[]) => void,
): Promise<{ shape: number[]; format: FileFormat; name: string | null; float64: boolean; segment: Omit<SourceSegment, 'samples' | 'nonFinite'> }> {
  const format = await detectFormat(path);
  if (format === 'npy') {
    if (options.key !== undefined) throw new InputError(`${path}: a tensor key ('${options.key}') only applies to .safetensors files`);
    const h = await readNpyHeader(path);
    check('the array', h.shape);
    const segment = { path, dtype: SEGMENT_DTYPE[h.dtype], littleEndian: h.littleEndian, offset: h.dataOffset, order: h.fortranOrder ? ('F' as const) : ('C' as const) };
    return { shape: h.shape, format, name: null, float64: h.dtype === 'f8', segment };
  }
  const header = await readSafetensorsHeader(path);
  const t = findTensor(path, header, options.key);
  check(`tensor '${t.name}'`, t.shape);
  const dtype = floatDtypeOf(path, t);
  return { shape: t.shape, format, name: t.name, float64: dtype === 'F64', segment: { path, dtype: SEGMENT_DTYPE[dtype], littleEndian: true, offset: t.begin, order: 'C' } };
}

export async function locateMatrix(path: string, options: LoadMatrixOptions = {}): Promise<LocatedMatrix> {
  const at = await locateArray(path, options, (what, shape) => requireTwoD(path, what, shape));
  const [rows, cols] = at.shape as [number, number];
  return { rows, cols, format: at.format, name: at.name, float64: at.float64, segment: { ...at.segment, samples: rows, nonFinite: { kind: 'matrix', label: path } } };
}

/** Loads a 2-D [n, d] array as a Matrix; the shape is checked from the header before any data is read. */
export async function loadMatrix(path: string, options: LoadMatrixOptions = {}): Promise<Matrix> {
  const at = await locateMatrix(path, options);
  const a = at.format === 'npy' ? await readNpy(path) : await readTensor(path, at.name!);
  return matrix(a.shape[0]!, a.shape[1]!, a.data);
}

export interface TensorDescription {
  /** null for .npy (one unnamed array). */
  name: string | null;
  dtype: string;
  shape: number[];
  bytes: number;
}

export type FileDescription =
  | { path: string; format: 'npy'; version: string; fortranOrder: boolean; bytes: number; tensors: TensorDescription[] }
  | { path: string; format: 'safetensors'; bytes: number; metadata: Record<string, string> | null; tensors: TensorDescription[] }
  | {
      path: string;
      format: 'capture';
      bytes: number;
      variant: string;
      model: string;
      samples: number;
      tokens: number;
      layers: { name: string; index: number; dim: number; shards: number }[];
      targets: { name: string; dim: number; tokens: number; shards: number }[];
      labels: string[];
    };

/**
 * A plain JSON-able description of a .npy / .safetensors file or a capture directory (headers and manifest only;
 * no tensor data is read).
 */
export async function describeFile(path: string): Promise<FileDescription> {
  let st;
  try {
    st = await stat(path);
  } catch (err) {
    throw new InputError(`${path}: ${(err as NodeJS.ErrnoException).code === 'ENOENT' ? 'not found' : describeOsError(err)}`);
  }
  if (st.isDirectory()) {
    try {
      await stat(join(path, 'manifest.json'));
    } catch {
      throw new InputError(`${path}: is a directory without manifest.json (not a capture)`);
    }
    // Loaded here, not at the top: capture.js brings zod (~0.1 s), which `compare` on two plain files never needs.
    const { openCapture } = await import('./capture.js');
    const c = await openCapture(path);
    const m = c.manifest;
    return {
      path,
      format: 'capture',
      bytes: await c.sizeBytes(),
      variant: m.variant,
      model: m.model.name,
      samples: m.samples.count,
      tokens: m.token_layout.tokens,
      layers: m.layers.map((l) => ({ name: l.name, index: l.index, dim: l.dim, shards: l.shards.length })),
      targets: m.targets.map((t) => ({ name: t.name, dim: t.dim, tokens: t.tokens, shards: t.shards.length })),
      labels: Object.keys(m.labels ?? {}),
    };
  }
  const format = await detectFormat(path);
  if (format === 'npy') {
    const h = await readNpyHeader(path);
    return {
      path,
      format,
      version: h.version,
      fortranOrder: h.fortranOrder,
      bytes: st.size,
      tensors: [{ name: null, dtype: h.descr, shape: h.shape, bytes: st.size - h.dataOffset }],
    };
  }
  const h = await readSafetensorsHeader(path);
  return {
    path,
    format,
    bytes: st.size,
    metadata: h.metadata,
    tensors: h.tensors.map((t) => ({ name: t.name, dtype: t.dtype, shape: t.shape, bytes: t.end - t.begin })),
  };
}
