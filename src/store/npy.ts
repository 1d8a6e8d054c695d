/**
 * NumPy `.npy` reader/writer for float arrays (format versions 1.0, 2.0, 3.0).
 *
 * Layout: magic "\x93NUMPY", major, minor, header length (u16 LE for 1.0, u32 LE for 2.0/3.0), then a Python dict
 * literal such as `{'descr': '<f4', 'fortran_order': False, 'shape': (3, 4), }` padded with spaces and a final
 * newline (latin-1 for 1.0/2.0, UTF-8 for 3.0), then the raw data. Reading only touches the header and the data range.
 */
import { InputError, listSome, quoteName } from '../core/errors.js';
import { writeFileAtomic } from './atomic.js';
import { decodeInto, encodeFloats, toHostOrderInPlace, type FloatDtype } from './dtype.js';
import { fmtShape, readFully, shapeSize, withFile } from './io.js';
import type { FileHandle } from 'node:fs/promises';

/** NumPy type code of the stored floats; byte order is dropped because data is always returned in host order. */
export type NpyDtype = 'f2' | 'f4' | 'f8';

export interface NpyHeader {
  /** "1.0", "2.0" or "3.0". */
  version: string;
  /** The raw dtype descriptor, e.g. "<f4". */
  descr: string;
  dtype: NpyDtype;
  littleEndian: boolean;
  fortranOrder: boolean;
  shape: number[];
  /** Absolute file offset of the first data byte. */
  dataOffset: number;
  itemSize: number;
}

export interface NpyArray {
  shape: number[];
  dtype: NpyDtype;
  /** Row-major (C order) values: Float32Array for f2/f4, Float64Array for f8. */
  data: Float32Array | Float64Array;
}

const MAGIC = Buffer.from([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]); // \x93NUMPY
const MAX_HEADER_BYTES = 1 << 20;
const ARRAY_ALIGN = 64;
/** numpy pads the header so the growth axis can later hold a 21-digit length without moving the data. */
const GROWTH_AXIS_MAX_DIGITS = 21;

const DTYPES: Record<string, { dtype: NpyDtype; float: FloatDtype; size: number }> = {
  f2: { dtype: 'f2', float: 'f16', size: 2 },
  f4: { dtype: 'f4', float: 'f32', size: 4 },
  f8: { dtype: 'f8', float: 'f64', size: 8 },
};

// ---------------------------------------------------------------------------------------------------------------
// A parser for the small subset of Python literals numpy headers use: dict, tuple, list, str, int, True/False/None.

type PyValue = string | number | boolean | null | PyValue[] | { [key: string]: PyValue };

class PyParseError extends Error {}

/** Arrays that were Python lists, not tuples: numpy's header check wants a tuple for 'shape'. */
const PY_LISTS = new WeakSet<PyValue[]>();

/** numpy headers are flat dicts; a structured dtype nests a few levels. Anything deeper is not a numpy header. */
const MAX_NESTING = 32;
/** numpy ≥ 2.0's NPY_MAXDIMS (1.x: 32). */
const MAX_DIMS = 64;

const PY_ESCAPES: Record<string, string> = {
  '\n': '', '\\': '\\', "'": "'", '"': '"', a: '\x07', b: '\b', f: '\f', n: '\n', r: '\r', t: '\t', v: '\v',
};

function parsePyLiteral(text: string, options: { longs: boolean }): PyValue {
  return new PyLiteralParser(text, options.longs).parse();
}

/**
 * Recursive descent over the literal subset numpy headers use (dict, tuple, list, str, int, True/False/None). Nesting
 * is bounded: a header of 5,000 '(' must be refused, not overflow the stack.
 */
class PyLiteralParser {
  private pos = 0;
  private depth = 0;
  /** Python 3 integers (no leading zeros), and Python 2's 3L, which numpy filters out of 1.0/2.0 headers only. */
  private readonly word: RegExp;

  constructor(
    private readonly text: string,
    longs: boolean,
  ) {
    this.word = longs ? /^(?:True|False|None|[-+]?(?:0+|[1-9]\d*)L?)(?![\w.])/ : /^(?:True|False|None|[-+]?(?:0+|[1-9]\d*))(?![\w.])/;
  }

  parse(): PyValue {
    const value = this.value();
    this.skipWs();
    if (this.pos < this.text.length) this.fail('unexpected trailing text');
    return value;
  }

  private fail(what: string): never {
    throw new PyParseError(`${what} at character ${this.pos}`);
  }

  private skipWs(): void {
    // Python's whitespace between tokens, not JavaScript's \s (which also takes U+00A0 and other spaces Python refuses).
    while (this.pos < this.text.length && ' \t\n\r\f'.includes(this.text[this.pos]!)) this.pos++;
  }

  private nested<T>(parse: () => T): T {
    if (++this.depth > MAX_NESTING) this.fail(`nesting deeper than ${MAX_NESTING} levels`);
    const v = parse();
    this.depth--;
    return v;
  }

  private value(): PyValue {
    this.skipWs();
    const c = this.text[this.pos];
    if (c === undefined) return this.fail('unexpected end of header');
    if (c === '{') return this.nested(() => this.dict());
    if (c === '(') return this.nested(() => this.seq(')'));
    if (c === '[') return this.nested(() => this.seq(']'));
    if (c === "'" || c === '"') return this.string();
    const word = this.word.exec(this.text.slice(this.pos, this.pos + 40));
    if (!word) return this.fail(`unexpected ${JSON.stringify(c)}`);
    this.pos += word[0].length;
    if (word[0] === 'True') return true;
    if (word[0] === 'False') return false;
    if (word[0] === 'None') return null;
    return Number(word[0].replace('L', '')); // Python 2 era headers write longs as 3L
  }

  /** Python's escapes, as ast.literal_eval (numpy's header reader) applies them: '<f\\4' is '<f' + chr(4), not '<f4'. */
  private string(): string {
    const { text } = this;
    const quote = text[this.pos++];
    let out = '';
    while (this.pos < text.length && text[this.pos] !== quote) {
      const c = text[this.pos++]!;
      if (c === '\n') this.fail('line break inside a string');
      if (c !== '\\') {
        out += c;
        continue;
      }
      const e = text[this.pos];
      if (e === undefined) break;
      out += this.escape(e);
    }
    if (this.pos >= text.length) this.fail('unterminated string');
    this.pos++;
    return out;
  }

  /** The character(s) an escape after a backslash stands for; `pos` is at `e` and moves past the escape. */
  private escape(e: string): string {
    const simple = PY_ESCAPES[e];
    if (simple !== undefined) {
      this.pos++;
      return simple;
    }
    if (/[0-7]/.test(e)) {
      const oct = /^[0-7]{1,3}/.exec(this.text.slice(this.pos, this.pos + 3))![0];
      this.pos += oct.length;
      return String.fromCharCode(parseInt(oct, 8));
    }
    if (e === 'x') {
      const hex = /^[0-9a-fA-F]{2}/.exec(this.text.slice(this.pos + 1, this.pos + 3));
      if (!hex) this.fail('invalid \\x escape');
      this.pos += 3;
      return String.fromCharCode(parseInt(hex[0], 16));
    }
    if (e === 'u' || e === 'U' || e === 'N') this.fail(`unsupported \\${e} escape`); // never in a float dtype or a dict key numpy writes
    return '\\'; // Python keeps an unknown escape as written: backslash and character
  }

  private seq(close: string): PyValue {
    this.pos++; // skip the opening bracket
    const items: PyValue[] = [];
    let comma = false;
    for (;;) {
      this.skipWs();
      if (this.text[this.pos] === close) {
        this.pos++;
        // Python: (3) is the number 3; only (3,) is a tuple.
        if (close === ']') PY_LISTS.add(items);
        return close === ')' && items.length === 1 && !comma ? items[0]! : items;
      }
      items.push(this.value());
      this.skipWs();
      if (this.text[this.pos] === ',') {
        this.pos++;
        comma = true;
      } else if (this.text[this.pos] !== close) this.fail(`expected ',' or '${close}'`);
    }
  }

  private dict(): { [key: string]: PyValue } {
    this.pos++;
    const out: { [key: string]: PyValue } = Object.create(null);
    for (;;) {
      this.skipWs();
      if (this.text[this.pos] === '}') {
        this.pos++;
        return out;
      }
      const key = this.value();
      if (typeof key !== 'string') this.fail('dict key is not a string');
      this.skipWs();
      if (this.text[this.pos] !== ':') this.fail("expected ':'");
      this.pos++;
      out[key] = this.value();
      this.skipWs();
      if (this.text[this.pos] === ',') this.pos++;
      else if (this.text[this.pos] !== '}') this.fail("expected ',' or '}'");
    }
  }
}

// ---------------------------------------------------------------------------------------------------------------

function parseDescr(path: string, descr: PyValue): { dtype: NpyDtype; littleEndian: boolean; size: number } {
  const supported = '<f2, >f2, <f4, >f4, <f8, >f8';
  if (typeof descr !== 'string') {
    throw new InputError(`${path}: unsupported dtype (structured/record dtype); only plain float arrays (${supported}) are supported`);
  }
  // '<' little, '>' big; '=' / '|' / none mean "native" of the writer. numpy always writes an explicit order for
  // floats, so those forms only come from other writers, which in practice are little-endian machines.
  const m = /^([<>=|]?)(f[248])$/.exec(descr);
  const info = m ? DTYPES[m[2]!] : undefined;
  if (!m || !info) throw new InputError(`${path}: unsupported dtype ${quoteName(descr, 40)} (supported: ${supported})`);
  return { dtype: info.dtype, littleEndian: m[1] !== '>', size: info.size };
}

async function readHeaderFrom(fh: FileHandle, fileSize: number, path: string): Promise<NpyHeader> {
  const { major, minor, headerStart, headerLen } = await readPreamble(fh, fileSize, path);
  const raw = Buffer.alloc(headerLen);
  await readFully(fh, raw, headerStart);
  let text: string;
  if (major === 3) {
    try {
      text = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(raw);
    } catch {
      throw new InputError(`${path}: header is not valid UTF-8 (format 3.0 headers are UTF-8)`);
    }
  } else text = raw.toString('latin1');
  const f = headerFields(path, text, major);
  return {
    version: `${major}.${minor}`,
    descr: f.descr,
    dtype: f.dtype,
    littleEndian: f.littleEndian,
    fortranOrder: f.fortranOrder,
    shape: f.shape,
    dataOffset: headerStart + headerLen,
    itemSize: f.itemSize,
  };
}

/** Magic bytes, format version and header length, each checked against the file's size. */
async function readPreamble(fh: FileHandle, fileSize: number, path: string): Promise<{ major: number; minor: number; headerStart: number; headerLen: number }> {
  const pre = Buffer.alloc(12);
  const got = await readFully(fh, pre, 0);
  if (got >= 6 && got < 10 && pre.subarray(0, 6).equals(MAGIC)) {
    throw new InputError(`${path}: truncated .npy header (file is ${fileSize} bytes)`);
  }
  if (got < 10 || !pre.subarray(0, 6).equals(MAGIC)) {
    throw new InputError(`${path}: not a .npy file (bad magic bytes; expected \\x93NUMPY)`);
  }
  const major = pre[6]!;
  const minor = pre[7]!;
  if (!((major === 1 || major === 2 || major === 3) && minor === 0)) {
    throw new InputError(`${path}: unsupported .npy format version ${major}.${minor} (supported: 1.0, 2.0, 3.0)`);
  }
  const lenBytes = major === 1 ? 2 : 4;
  if (got < 8 + lenBytes) throw new InputError(`${path}: truncated .npy header (file is ${fileSize} bytes)`);
  const headerLen = major === 1 ? pre.readUInt16LE(8) : pre.readUInt32LE(8);
  const headerStart = 8 + lenBytes;
  if (headerLen > MAX_HEADER_BYTES) {
    throw new InputError(`${path}: absurd header length ${headerLen} bytes (limit ${MAX_HEADER_BYTES}); the file is corrupt`);
  }
  if (headerStart + headerLen > fileSize) {
    throw new InputError(
      `${path}: header length ${headerLen} runs past the end of the file (header would end at byte ${headerStart + headerLen}, file is ${fileSize} bytes)`,
    );
  }
  return { major, minor, headerStart, headerLen };
}

/** The header dict's three keys, checked as numpy checks them (and nothing else allowed). */
function headerFields(path: string, text: string, major: number): Omit<NpyHeader, 'version' | 'dataOffset'> {
  let dict: PyValue;
  try {
    dict = parsePyLiteral(text, { longs: major < 3 });
  } catch (err) {
    if (!(err instanceof PyParseError)) throw err;
    throw new InputError(`${path}: unparseable header dict (${err.message}): ${JSON.stringify(text.trim().slice(0, 120))}`);
  }
  if (dict === null || typeof dict !== 'object' || Array.isArray(dict)) {
    throw new InputError(`${path}: unparseable header dict (not a dict): ${JSON.stringify(text.trim().slice(0, 120))}`);
  }
  for (const key of ['descr', 'fortran_order', 'shape']) {
    if (!(key in dict)) throw new InputError(`${path}: header dict has no '${key}' key`);
  }
  // numpy refuses any other key ("Header does not contain the correct keys").
  const extra = Object.keys(dict).filter((k) => !['descr', 'fortran_order', 'shape'].includes(k));
  if (extra.length) throw new InputError(`${path}: header dict has unexpected key(s) ${listSome(extra.map((k) => quoteName(k, 40)), 5)}`);
  const { dtype, littleEndian, size } = parseDescr(path, dict['descr']!);
  const fortranOrder = dict['fortran_order'];
  if (typeof fortranOrder !== 'boolean') {
    throw new InputError(`${path}: header 'fortran_order' must be True or False, got ${JSON.stringify(fortranOrder)}`);
  }
  const shape = dict['shape'];
  if (!Array.isArray(shape) || PY_LISTS.has(shape) || !shape.every((d) => typeof d === 'number' && Number.isSafeInteger(d) && d >= 0)) {
    throw new InputError(`${path}: header 'shape' must be a tuple of non-negative integers, got ${JSON.stringify(shape).slice(0, 120)}`);
  }
  if (shape.length > MAX_DIMS) throw new InputError(`${path}: header 'shape' has ${shape.length} dimensions (numpy allows at most ${MAX_DIMS})`);
  return { descr: dict['descr'] as string, dtype, littleEndian, fortranOrder, shape: shape as number[], itemSize: size };
}

/** Checks that the data area holds exactly shape × itemsize bytes. */
function checkDataLength(path: string, h: NpyHeader, fileSize: number): number {
  const expected = shapeSize(h.shape) * h.itemSize;
  const actual = fileSize - h.dataOffset;
  if (actual < expected) {
    throw new InputError(
      `${path}: truncated data: shape ${fmtShape(h.shape)} × itemsize ${h.itemSize} = ${expected} bytes expected, file has ${actual} bytes of data`,
    );
  }
  if (actual > expected) {
    throw new InputError(
      `${path}: data length mismatch: shape ${fmtShape(h.shape)} × itemsize ${h.itemSize} = ${expected} bytes, but the file has ${actual} bytes of data`,
    );
  }
  return expected;
}

/** Reads and validates the header (including the data length) without reading the data. */
export async function readNpyHeader(path: string): Promise<NpyHeader> {
  return withFile(path, async (fh, size) => {
    const h = await readHeaderFrom(fh, size, path);
    checkDataLength(path, h, size);
    return h;
  });
}

/** Reorders a column-major (Fortran) array of the given shape into row-major order. */
function fortranToC<T extends Float32Array | Float64Array>(src: T, shape: readonly number[]): T {
  const n = shape.length;
  // Nothing to reorder; also keeps a (10**15, 0) array from looping over its 10**15 empty rows.
  if (n < 2 || src.length === 0) return src;
  const out = new (src.constructor as { new (len: number): T })(src.length);
  if (n === 2) {
    const [r, c] = shape as [number, number];
    for (let i = 0; i < r; i++) for (let j = 0; j < c; j++) out[i * c + j] = src[j * r + i]!;
    return out;
  }
  // General case: walk the output in C order with an odometer, tracking the Fortran-order source index.
  const fStride = new Array<number>(n);
  let s = 1;
  for (let k = 0; k < n; k++) {
    fStride[k] = s;
    s *= shape[k]!;
  }
  const idx = new Array<number>(n).fill(0);
  let srcIndex = 0;
  for (let o = 0; o < out.length; o++) {
    out[o] = src[srcIndex]!;
    for (let k = n - 1; k >= 0; k--) {
      idx[k]!++;
      srcIndex += fStride[k]!;
      if (idx[k]! < shape[k]!) break;
      srcIndex -= fStride[k]! * shape[k]!;
      idx[k] = 0;
    }
  }
  return out;
}

/** Reads a whole .npy float array, converting big-endian data and Fortran order to host-order C-order arrays. */
export async function readNpy(path: string): Promise<NpyArray> {
  return withFile(path, async (fh, size) => {
    const h = await readHeaderFrom(fh, size, path);
    const nbytes = checkDataLength(path, h, size);
    const count = shapeSize(h.shape);
    let data: Float32Array | Float64Array;
    if (h.dtype === 'f2') {
      const raw = new Uint8Array(nbytes);
      if ((await readFully(fh, raw, h.dataOffset)) < nbytes) throw truncated(path);
      data = new Float32Array(count);
      decodeInto(raw, 'f16', h.littleEndian, data);
    } else {
      // f4/f8: read straight into the result's memory, then fix the byte order in place if needed.
      data = h.dtype === 'f4' ? new Float32Array(count) : new Float64Array(count);
      const view = new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
      if ((await readFully(fh, view, h.dataOffset)) < nbytes) throw truncated(path);
      toHostOrderInPlace(data, h.littleEndian);
    }
    if (h.fortranOrder) data = fortranToC(data, h.shape);
    return { shape: h.shape, dtype: h.dtype, data };
  });
}

function truncated(path: string): InputError {
  return new InputError(`${path}: truncated data (the file shrank while being read)`);
}

/** Python repr of a shape tuple: (), (5,), (3, 4). */
function pyTuple(shape: readonly number[]): string {
  if (shape.length === 1) return `(${shape[0]},)`;
  return `(${shape.join(', ')})`;
}

/** Builds the header exactly as numpy ≥ 1.24 does (growth-axis spaces, 64-byte alignment, 2.0 when it must). */
export function npyHeaderBytes(descr: string, shape: readonly number[], fortranOrder = false): Buffer {
  let dict = `{'descr': '${descr}', 'fortran_order': ${fortranOrder ? 'True' : 'False'}, 'shape': ${pyTuple(shape)}, }`;
  if (shape.length > 0) {
    const growth = shape[fortranOrder ? shape.length - 1 : 0]!;
    dict += ' '.repeat(GROWTH_AXIS_MAX_DIGITS - String(growth).length);
  }
  for (const major of [1, 2]) {
    const lenBytes = major === 1 ? 2 : 4;
    const hlen = dict.length + 1; // + newline
    const padlen = ARRAY_ALIGN - ((MAGIC.length + 2 + lenBytes + hlen) % ARRAY_ALIGN);
    const total = hlen + padlen;
    if (major === 1 && total > 0xffff) continue;
    const prefix = Buffer.alloc(8 + lenBytes);
    MAGIC.copy(prefix, 0);
    prefix[6] = major;
    prefix[7] = 0;
    if (major === 1) prefix.writeUInt16LE(total, 8);
    else prefix.writeUInt32LE(total, 8);
    return Buffer.concat([prefix, Buffer.from(dict + ' '.repeat(padlen) + '\n', 'latin1')]);
  }
  throw new Error('unreachable');
}

/**
 * Writes a C-order little-endian array atomically: Float32Array → '<f4', Float64Array → '<f8'. The result is
 * byte-identical to `numpy.save` of the same array.
 */
export async function writeNpy(path: string, shape: readonly number[], data: Float32Array | Float64Array): Promise<void> {
  if (!shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
    throw new Error(`writeNpy(${path}): invalid shape ${fmtShape(shape)}`);
  }
  if (shapeSize(shape) !== data.length) {
    throw new Error(`writeNpy(${path}): shape ${fmtShape(shape)} needs ${shapeSize(shape)} values, got ${data.length}`);
  }
  const f64 = data instanceof Float64Array;
  const header = npyHeaderBytes(f64 ? '<f8' : '<f4', shape);
  await writeFileAtomic(path, [header, encodeFloats(data, f64 ? 'f64' : 'f32', true)]);
}
