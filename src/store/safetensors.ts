/**
 * safetensors reader/writer (https://github.com/huggingface/safetensors).
 *
 * Layout: u64 little-endian header length N, N bytes of JSON
 * `{ "<name>": { "dtype": "F32", "shape": [..], "data_offsets": [begin, end] }, "__metadata__"?: { str: str } }`
 * (offsets relative to the data area, which starts right after the header), then the data, little-endian, C order.
 * Readers here parse the header once and read only the byte range of the tensor asked for.
 */
import type { FileHandle } from 'node:fs/promises';
import { clip, InputError, listSome, quoteName } from '../core/errors.js';
import { writeFileAtomic } from './atomic.js';
import { decodeInto, encodeFloats, toHostOrderInPlace, type FloatDtype } from './dtype.js';
import { fmtShape, readFully, shapeSize, withFile } from './io.js';

/** dtypes this module decodes and encodes. */
export type SafetensorsFloatDtype = 'F16' | 'BF16' | 'F32' | 'F64';
export const SUPPORTED_DTYPES: readonly SafetensorsFloatDtype[] = ['F16', 'BF16', 'F32', 'F64'];

const FLOAT_OF: Record<SafetensorsFloatDtype, FloatDtype> = { F16: 'f16', BF16: 'bf16', F32: 'f32', F64: 'f64' };

/** Item sizes of every byte-sized dtype the format defines, so headers of files we cannot decode still validate. */
const ITEM_SIZES: Record<string, number> = {
  BOOL: 1, U8: 1, I8: 1, F8_E5M2: 1, F8_E4M3: 1, F8_E8M0: 1,
  I16: 2, U16: 2, F16: 2, BF16: 2,
  I32: 4, U32: 4, F32: 4, C64: 8,
  I64: 8, U64: 8, F64: 8,
};

/**
 * Bounds on what a header may declare, checked before the JSON is parsed (size) and right after (count). The
 * reference implementation allows 100 MB; real headers are far smaller (a shard of a 70B-parameter checkpoint lists
 * a few hundred tensors in ~50 kB), and a 64 MB header of a million empty tensors costs a second of parsing and a
 * gigabyte of memory before any check can run. Documented in docs/capture-format.md ("Limits").
 */
export const MAX_HEADER_BYTES = 16 * 2 ** 20;
export const MAX_TENSORS = 65_536;

export interface SafetensorsTensorInfo {
  name: string;
  /** As written in the file (may be a dtype this module cannot decode, e.g. "I64"). */
  dtype: string;
  shape: number[];
  /** Absolute file offsets of the tensor's bytes: [begin, end). */
  begin: number;
  end: number;
}

export interface SafetensorsHeader {
  /** Tensors in file-offset order. */
  tensors: SafetensorsTensorInfo[];
  metadata: Record<string, string> | null;
  /** Absolute file offset of the data area (8 + header length). */
  dataStart: number;
  fileSize: number;
}

export interface SafetensorsTensor {
  name: string;
  shape: number[];
  dtype: SafetensorsFloatDtype;
  /** Float32Array for F16/BF16/F32, Float64Array for F64; C order. */
  data: Float32Array | Float64Array;
}

export interface TensorToWrite {
  name: string;
  dtype: SafetensorsFloatDtype;
  shape: readonly number[];
  data: Float32Array | Float64Array;
}

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function isCount(v: unknown): v is number {
  return typeof v === 'number' && Number.isSafeInteger(v) && v >= 0;
}

/** Lower-level: parses and validates the header from an open file. */
export async function parseSafetensorsHeader(fh: FileHandle, fileSize: number, path: string): Promise<SafetensorsHeader> {
  const { json, n } = await readHeaderJson(fh, fileSize, path);
  const entries = Object.entries(json);
  if (entries.length > MAX_TENSORS + 1) {
    throw new InputError(`${path}: header lists ${entries.length} entries, more than the ${MAX_TENSORS} tensors this reader accepts`);
  }
  const dataStart = 8 + n;
  const dataSize = fileSize - dataStart;
  let metadata: Record<string, string> | null = null;
  const tensors: SafetensorsTensorInfo[] = [];
  for (const [name, entry] of entries) {
    if (name === '__metadata__') {
      if (entry === null) continue;
      if (!isObject(entry) || !Object.values(entry).every((v) => typeof v === 'string')) {
        throw new InputError(`${path}: invalid header: __metadata__ must map strings to strings`);
      }
      metadata = entry as Record<string, string>;
      continue;
    }
    tensors.push(tensorEntry(path, name, entry, dataStart, dataSize));
  }
  tensors.sort((x, y) => x.begin - y.begin || x.end - y.end);
  checkTiling(path, tensors, dataStart, dataSize, n);
  return { tensors, metadata, dataStart, fileSize };
}

/** The length prefix and the JSON object it announces (UTF-8, starting at byte 8); `n` is its length in bytes. */
async function readHeaderJson(fh: FileHandle, fileSize: number, path: string): Promise<{ json: Record<string, unknown>; n: number }> {
  if (fileSize < 8) throw new InputError(`${path}: too short to be a safetensors file (${fileSize} bytes)`);
  const lenBuf = Buffer.alloc(8);
  await readFully(fh, lenBuf, 0);
  const n64 = lenBuf.readBigUInt64LE(0);
  if (n64 > BigInt(MAX_HEADER_BYTES)) {
    throw new InputError(`${path}: absurd header length ${n64} bytes (limit ${MAX_HEADER_BYTES}); not a safetensors file or corrupt`);
  }
  const n = Number(n64);
  if (8 + n > fileSize) {
    throw new InputError(`${path}: header length ${n} runs past the end of the file (file is ${fileSize} bytes)`);
  }
  const raw = Buffer.alloc(n);
  await readFully(fh, raw, 8);
  let text: string;
  try {
    // The format says UTF-8; a lenient decode would turn bad bytes into U+FFFD and accept names nobody wrote.
    text = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(raw);
  } catch {
    throw new InputError(`${path}: header is not valid UTF-8`);
  }
  // As the reference implementation: the header is a JSON object from its first byte (padding is trailing only).
  if (!text.startsWith('{')) throw new InputError(`${path}: invalid header: expected a JSON object starting at byte 8`);
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch (err) {
    throw new InputError(`${path}: invalid JSON header: ${(err as Error).message}`);
  }
  if (!isObject(json)) throw new InputError(`${path}: invalid header: expected a JSON object`);
  return { json, n };
}

/** One tensor's header entry: dtype, shape, and offsets that lie in the data area and match shape × itemsize. */
function tensorEntry(path: string, name: string, entry: unknown, dataStart: number, dataSize: number): SafetensorsTensorInfo {
  const where = `${path}: tensor ${quoteName(name)}`;
  if (!isObject(entry)) throw new InputError(`${where}: header entry is not an object`);
  const { dtype, shape, data_offsets: offsets } = entry;
  if (typeof dtype !== 'string') throw new InputError(`${where}: missing or non-string dtype`);
  if (!Array.isArray(shape) || !shape.every(isCount)) {
    throw new InputError(`${where}: shape must be an array of non-negative integers, got ${String(JSON.stringify(shape)).slice(0, 120)}`);
  }
  if (!Array.isArray(offsets) || offsets.length !== 2 || !offsets.every(isCount) || offsets[0]! > offsets[1]!) {
    throw new InputError(`${where}: data_offsets must be [begin, end] with 0 ≤ begin ≤ end, got ${String(JSON.stringify(offsets)).slice(0, 120)}`);
  }
  const [b, e] = offsets as [number, number];
  if (e > dataSize) {
    throw new InputError(
      `${where}: data_offsets [${b}, ${e}] run past the end of the data area (${dataSize} bytes): the file is truncated or the offsets are wrong`,
    );
  }
  const itemSize = ITEM_SIZES[dtype];
  if (itemSize !== undefined) {
    const expected = shapeSize(shape) * itemSize;
    if (e - b !== expected) {
      throw new InputError(
        `${where}: data_offsets span ${e - b} bytes but shape ${fmtShape(shape)} × ${dtype} itemsize ${itemSize} = ${Number.isSafeInteger(expected) ? expected : 'more than 2^53'} bytes`,
      );
    }
  }
  return { name, dtype, shape, begin: dataStart + b, end: dataStart + e };
}

/**
 * As the reference implementation: the tensors (sorted by offset) tile the data area exactly, from its first byte to
 * the end of the file. A gap or a tail means the header length or the offsets are wrong, e.g. a length one byte short
 * shifts every tensor by one byte and leaves one byte over.
 */
function checkTiling(path: string, tensors: readonly SafetensorsTensorInfo[], dataStart: number, dataSize: number, n: number): void {
  let covered = 0;
  for (let i = 0; i < tensors.length; i++) {
    const prev = tensors[i - 1];
    const cur = tensors[i]!;
    const b = cur.begin - dataStart;
    if (prev && b < covered) {
      throw new InputError(
        `${path}: tensors ${quoteName(prev.name)} and ${quoteName(cur.name)} overlap (data_offsets [${prev.begin - dataStart}, ${prev.end - dataStart}] and [${b}, ${cur.end - dataStart}])`,
      );
    }
    if (b > covered) {
      throw new InputError(
        `${path}: bytes [${covered}, ${b}) of the data area belong to no tensor (tensor ${quoteName(cur.name)} starts at ${b}); the offsets are wrong`,
      );
    }
    covered = cur.end - dataStart;
  }
  if (covered !== dataSize) {
    throw new InputError(
      `${path}: the tensors' data_offsets end at byte ${covered} of the data area but it holds ${dataSize} bytes (header length ${n}): the header length or the offsets are wrong, or the file has trailing data`,
    );
  }
}

/** Reads and validates a file's header (no tensor data is read). */
export async function readSafetensorsHeader(path: string): Promise<SafetensorsHeader> {
  return withFile(path, (fh, size) => parseSafetensorsHeader(fh, size, path));
}

/** Picks a tensor by name, or the only one when no name is given. */
export function findTensor(path: string, header: SafetensorsHeader, name?: string): SafetensorsTensorInfo {
  const names = header.tensors.map((t) => t.name);
  if (name === undefined) {
    if (header.tensors.length === 1) return header.tensors[0]!;
    if (header.tensors.length === 0) throw new InputError(`${path}: the file holds no tensors`);
    throw new InputError(`${path}: holds ${names.length} tensors, name one of: ${listSome(names.map((x) => clip(x, 60)))}`);
  }
  const t = header.tensors.find((x) => x.name === name);
  if (!t) throw new InputError(`${path}: no tensor named ${quoteName(name)} (tensors: ${listSome(names.map((x) => clip(x, 60))) || 'none'})`);
  return t;
}

/** Narrows a tensor's dtype to one this module decodes, or throws naming the tensor and the dtype. */
export function floatDtypeOf(path: string, t: SafetensorsTensorInfo): SafetensorsFloatDtype {
  if ((SUPPORTED_DTYPES as readonly string[]).includes(t.dtype)) return t.dtype as SafetensorsFloatDtype;
  throw new InputError(`${path}: tensor ${quoteName(t.name)} has dtype ${clip(t.dtype, 40)}, which is not supported (supported: ${SUPPORTED_DTYPES.join(', ')})`);
}

/**
 * Lower-level: reads tensor `t` from an open file and decodes it into `out` at `outOffset` (values, not bytes).
 * F32 into a Float32Array (and F64 into a Float64Array) is read straight into `out`'s memory.
 */
export async function readTensorInto(
  fh: FileHandle,
  path: string,
  t: SafetensorsTensorInfo,
  out: Float32Array | Float64Array,
  outOffset = 0,
  rows?: { start: number; count: number },
): Promise<void> {
  const dtype = floatDtypeOf(path, t);
  const float = FLOAT_OF[dtype];
  const total = shapeSize(t.shape);
  // `rows` selects a slice along the first dimension, so one sample of a large shard costs only its own bytes.
  const perRow = t.shape.length ? total / Math.max(1, t.shape[0]!) : total;
  const first = rows ? rows.start : 0;
  const count = rows ? rows.count * perRow : total;
  if (rows && (first < 0 || rows.count < 0 || first + rows.count > (t.shape[0] ?? 1))) {
    throw new RangeError(`readTensorInto: rows [${first}, ${first + rows.count}) outside tensor '${t.name}' ${fmtShape(t.shape)}`);
  }
  const itemSize = (t.end - t.begin) / Math.max(1, total);
  const begin = t.begin + first * perRow * itemSize;
  const nbytes = count * itemSize;
  if (outOffset + count > out.length) throw new RangeError(`readTensorInto: tensor '${t.name}' does not fit the output`);
  const direct = (float === 'f32' && out instanceof Float32Array) || (float === 'f64' && out instanceof Float64Array);
  if (direct) {
    const slot = out.subarray(outOffset, outOffset + count);
    const got = await readFully(fh, new Uint8Array(slot.buffer, slot.byteOffset, slot.byteLength), begin);
    if (got < nbytes) throw new InputError(`${path}: tensor '${t.name}': truncated data (read ${got} of ${nbytes} bytes)`);
    toHostOrderInPlace(slot, true);
    return;
  }
  const raw = new Uint8Array(nbytes);
  const got = await readFully(fh, raw, begin);
  if (got < nbytes) throw new InputError(`${path}: tensor '${t.name}': truncated data (read ${got} of ${nbytes} bytes)`);
  decodeInto(raw, float, true, out, outOffset);
}

/** Reads one tensor (only its byte range). `name` may be omitted when the file holds exactly one tensor. */
export async function readTensor(path: string, name?: string): Promise<SafetensorsTensor> {
  return withFile(path, async (fh, size) => {
    const header = await parseSafetensorsHeader(fh, size, path);
    const t = findTensor(path, header, name);
    const dtype = floatDtypeOf(path, t);
    const count = shapeSize(t.shape);
    const data = dtype === 'F64' ? new Float64Array(count) : new Float32Array(count);
    await readTensorInto(fh, path, t, data, 0);
    return { name: t.name, shape: t.shape, dtype, data };
  });
}

/**
 * Writes tensors atomically. Data is laid out by decreasing item size (as the reference writer does, so every
 * tensor stays aligned to its item size) and encoded one tensor at a time; the header is padded with spaces to a
 * multiple of 8 bytes.
 */
export async function writeSafetensors(
  path: string,
  tensors: readonly TensorToWrite[],
  metadata?: Record<string, string>,
): Promise<void> {
  const seen = new Set<string>();
  for (const t of tensors) {
    if (!t.name || t.name === '__metadata__' || seen.has(t.name)) {
      throw new Error(`writeSafetensors(${path}): invalid or duplicate tensor name '${t.name}'`);
    }
    seen.add(t.name);
    if (!SUPPORTED_DTYPES.includes(t.dtype)) throw new Error(`writeSafetensors(${path}): unsupported dtype ${t.dtype}`);
    if (!t.shape.every(isCount) || shapeSize(t.shape) !== t.data.length) {
      throw new Error(`writeSafetensors(${path}): tensor '${t.name}' shape ${fmtShape(t.shape)} does not match ${t.data.length} values`);
    }
  }
  const itemSize = (t: TensorToWrite): number => ITEM_SIZES[t.dtype]!;
  const layout = tensors.map((t, i) => ({ t, i })).sort((a, b) => itemSize(b.t) - itemSize(a.t) || a.i - b.i);
  const offsets = new Map<string, [number, number]>();
  let cursor = 0;
  for (const { t } of layout) {
    const bytes = t.data.length * itemSize(t);
    offsets.set(t.name, [cursor, cursor + bytes]);
    cursor += bytes;
  }
  const header: Record<string, unknown> = {};
  if (metadata && Object.keys(metadata).length > 0) header['__metadata__'] = metadata;
  for (const t of tensors) header[t.name] = { dtype: t.dtype, shape: [...t.shape], data_offsets: offsets.get(t.name) };
  let json = Buffer.from(JSON.stringify(header), 'utf8');
  const pad = (8 - (json.length % 8)) % 8;
  if (pad) json = Buffer.concat([json, Buffer.alloc(pad, 0x20)]);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(json.length));

  function* chunks(): Generator<Uint8Array> {
    yield len;
    yield json;
    for (const { t } of layout) yield encodeFloats(t.data, FLOAT_OF[t.dtype], true);
  }
  await writeFileAtomic(path, chunks());
}
