/**
 * Float decoding/encoding for the storage formats: IEEE float16, bfloat16, float32, float64, either byte order.
 *
 * Decoders are exact (every f16/bf16 value is representable in f32, including subnormals, ±Inf and NaN).
 * Encoders round to nearest, ties to even, overflow to ±Inf, and keep NaN a (quiet) NaN. A float64 input that is not
 * exactly a float32 is rounded once, directly to the target format, to avoid double-rounding errors.
 */

export type FloatDtype = 'f16' | 'bf16' | 'f32' | 'f64';

export const ITEM_SIZE: Readonly<Record<FloatDtype, number>> = { f16: 2, bf16: 2, f32: 4, f64: 8 };

/** True when this machine stores numbers little-endian (every platform Node ships on, but we do not assume it). */
export const HOST_LITTLE_ENDIAN = new Uint8Array(new Uint16Array([1]).buffer)[0] === 1;

// Shared scratch views for bit-casting a single float32.
const f32Scratch = new Float32Array(1);
const u32Scratch = new Uint32Array(f32Scratch.buffer);

function f32Bits(v: number): number {
  f32Scratch[0] = v;
  return u32Scratch[0]!;
}

function bitsToF32(bits: number): number {
  u32Scratch[0] = bits >>> 0;
  return f32Scratch[0]!;
}

/** Decodes one IEEE binary16 bit pattern. */
export function halfToFloat(bits: number): number {
  const sign = bits & 0x8000 ? -1 : 1;
  const exp = (bits >>> 10) & 0x1f;
  const mant = bits & 0x3ff;
  if (exp === 0) return sign * mant * 2 ** -24; // zero and subnormals
  if (exp === 0x1f) return mant === 0 ? sign * Infinity : NaN;
  return sign * (1 + mant / 1024) * 2 ** (exp - 15);
}

/** Decodes one bfloat16 bit pattern (the top half of a float32). */
export function bf16ToFloat(bits: number): number {
  return bitsToF32((bits & 0xffff) << 16);
}

/** Round half to even for a non-negative value. */
function roundHalfEven(x: number): number {
  const f = Math.floor(x);
  const d = x - f;
  if (d > 0.5) return f + 1;
  if (d < 0.5) return f;
  return f % 2 === 0 ? f : f + 1;
}

/**
 * Exact round-to-nearest-even encoding of any JS number into a binary float with `expBits` exponent bits and
 * `mantBits` mantissa bits (no implicit bit). Slow but exact; used for float64 inputs and as the test oracle.
 */
export function encodeSmallFloat(v: number, expBits: number, mantBits: number): number {
  const signBit = 1 << (expBits + mantBits);
  const expMask = (1 << expBits) - 1;
  if (Number.isNaN(v)) return (expMask << mantBits) | (1 << (mantBits - 1)); // canonical quiet NaN
  const sign = v < 0 || Object.is(v, -0) ? signBit : 0;
  const a = Math.abs(v);
  const bias = (1 << (expBits - 1)) - 1;
  const emin = 1 - bias;
  // Halfway between the largest finite value and the next power of two: ties go to even, i.e. up to infinity.
  const overflow = (2 - 2 ** -(mantBits + 1)) * 2 ** bias;
  if (a >= overflow) return sign | (expMask << mantBits);
  if (a < 2 ** emin) {
    // Subnormal range: units of 2^(emin - mantBits). A result of 2^mantBits is the smallest normal, as it should be.
    return sign | roundHalfEven(a * 2 ** (mantBits - emin));
  }
  let e = Math.floor(Math.log2(a));
  if (2 ** e > a) e--; // Math.log2 may be off by one ulp near powers of two
  else if (2 ** (e + 1) <= a) e++;
  let q = roundHalfEven((a / 2 ** e - 1) * 2 ** mantBits); // exact: scaling by powers of two, Sterbenz for -1
  if (q === 2 ** mantBits) {
    q = 0;
    e++;
  }
  if (e > bias) return sign | (expMask << mantBits);
  return sign | ((e + bias) << mantBits) | q;
}

/** float32 bit pattern → binary16, round to nearest even. */
function f32BitsToHalf(x: number): number {
  const sign = (x >>> 16) & 0x8000;
  const a = x & 0x7fffffff;
  if (a >= 0x7f800000) return sign | (a > 0x7f800000 ? 0x7e00 : 0x7c00); // NaN → quiet NaN, Inf → Inf
  if (a >= 0x477ff000) return sign | 0x7c00; // ≥ 65520 rounds to infinity
  if (a < 0x38800000) {
    // Below 2^-14: subnormal half (or zero). value = m · 2^(e-150); in units of 2^-24 that is m >> (126 - e).
    if (a <= 0x33000000) return sign; // ≤ 2^-25: rounds to zero (2^-25 itself is a tie, and 0 is even)
    const e = a >>> 23;
    const m = (a & 0x7fffff) | 0x800000;
    const shift = 126 - e;
    let q = m >>> shift;
    const rem = m & ((1 << shift) - 1);
    const half = 1 << (shift - 1);
    if (rem > half || (rem === half && q & 1)) q++;
    return sign | q;
  }
  // Normal: rebias the exponent (127 → 15) and drop 13 mantissa bits; a carry correctly bumps the exponent.
  let h = (a >>> 13) - ((127 - 15) << 10);
  const rem = a & 0x1fff;
  if (rem > 0x1000 || (rem === 0x1000 && h & 1)) h++;
  return sign | h;
}

/** Encodes a number as binary16 bits (round to nearest even). */
export function floatToHalf(v: number): number {
  const f = Math.fround(v);
  if (f === v || Number.isNaN(v)) return f32BitsToHalf(f32Bits(f));
  return encodeSmallFloat(v, 5, 10);
}

/** Encodes a number as bfloat16 bits (round to nearest even). */
export function floatToBf16(v: number): number {
  const f = Math.fround(v);
  if (Number.isNaN(v)) return ((f32Bits(f) >>> 16) | 0x0040) & 0xffff; // keep sign, force quiet
  if (f !== v) return encodeSmallFloat(v, 8, 7);
  const x = f32Bits(f);
  // Classic trick: add 0x7fff plus the lowest kept bit, then truncate. Overflow carries into Inf correctly.
  return ((x + 0x7fff + ((x >>> 16) & 1)) >>> 16) & 0xffff;
}

let halfTable: Float32Array | undefined;

/** All 65536 half values as float32, built on first use (256 KB): decoding becomes one table lookup. */
function getHalfTable(): Float32Array {
  if (!halfTable) {
    halfTable = new Float32Array(65536);
    for (let i = 0; i < 65536; i++) halfTable[i] = halfToFloat(i);
  }
  return halfTable;
}

function swapBytesInPlace(bytes: Uint8Array, size: number): void {
  for (let i = 0; i + size <= bytes.length; i += size) {
    for (let a = i, b = i + size - 1; a < b; a++, b--) {
      const t = bytes[a]!;
      bytes[a] = bytes[b]!;
      bytes[b] = t;
    }
  }
}

/**
 * Decodes `count` values of `dtype` from `src` into `out` starting at `outOffset`. f16/bf16/f32 need a Float32Array
 * or Float64Array target; f64 into a Float32Array rounds to float32.
 */
export function decodeInto(
  src: Uint8Array,
  dtype: FloatDtype,
  littleEndian: boolean,
  out: Float32Array | Float64Array,
  outOffset = 0,
): void {
  const size = ITEM_SIZE[dtype];
  const count = Math.floor(src.byteLength / size);
  if (outOffset + count > out.length) throw new RangeError(`decodeInto: ${count} values do not fit at ${outOffset}`);
  const dv = new DataView(src.buffer, src.byteOffset, src.byteLength);
  switch (dtype) {
    case 'f16': {
      const table = getHalfTable();
      for (let i = 0; i < count; i++) out[outOffset + i] = table[dv.getUint16(2 * i, littleEndian)]!;
      return;
    }
    case 'bf16':
      for (let i = 0; i < count; i++) out[outOffset + i] = bitsToF32(dv.getUint16(2 * i, littleEndian) << 16);
      return;
    case 'f32':
      if (out instanceof Float32Array && littleEndian === HOST_LITTLE_ENDIAN) {
        out.set(alignedView(src, 4, count) as Float32Array, outOffset);
        return;
      }
      for (let i = 0; i < count; i++) out[outOffset + i] = dv.getFloat32(4 * i, littleEndian);
      return;
    case 'f64':
      if (out instanceof Float64Array && littleEndian === HOST_LITTLE_ENDIAN) {
        out.set(alignedView(src, 8, count) as Float64Array, outOffset);
        return;
      }
      for (let i = 0; i < count; i++) out[outOffset + i] = dv.getFloat64(8 * i, littleEndian);
      return;
  }
}

/** A typed-array view of `count` items of `src` (copied first only when `src` is not aligned to the item size). */
function alignedView(src: Uint8Array, size: 4 | 8, count: number): Float32Array | Float64Array {
  let buf = src.buffer as ArrayBuffer;
  let offset = src.byteOffset;
  if (offset % size !== 0) {
    buf = src.slice(0, count * size).buffer as ArrayBuffer;
    offset = 0;
  }
  return size === 4 ? new Float32Array(buf, offset, count) : new Float64Array(buf, offset, count);
}

/** Decodes a whole buffer: f16/bf16/f32 → Float32Array, f64 → Float64Array. */
export function decodeFloats(src: Uint8Array, dtype: FloatDtype, littleEndian: boolean): Float32Array | Float64Array {
  const count = Math.floor(src.byteLength / ITEM_SIZE[dtype]);
  const out = dtype === 'f64' ? new Float64Array(count) : new Float32Array(count);
  decodeInto(src, dtype, littleEndian, out);
  return out;
}

/**
 * Converts, in place, the raw bytes read into a typed array's own buffer from file byte order to host order.
 * Lets readers fread straight into a Float32Array/Float64Array and fix the order afterwards without a copy.
 */
export function toHostOrderInPlace(arr: Float32Array | Float64Array, littleEndian: boolean): void {
  if (littleEndian === HOST_LITTLE_ENDIAN) return;
  swapBytesInPlace(new Uint8Array(arr.buffer, arr.byteOffset, arr.byteLength), arr.BYTES_PER_ELEMENT);
}

/**
 * Encodes values as `dtype` bytes. When the host order matches and the input already has the right element type the
 * result is a view on the input's memory (no copy), so do not mutate the input until the bytes have been consumed.
 */
export function encodeFloats(data: ArrayLike<number>, dtype: FloatDtype, littleEndian = true): Uint8Array {
  const n = data.length;
  const hostOrder = littleEndian === HOST_LITTLE_ENDIAN;
  if (dtype === 'f32' && data instanceof Float32Array && hostOrder) {
    return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  }
  if (dtype === 'f64' && data instanceof Float64Array && hostOrder) {
    return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  }
  const out = new Uint8Array(n * ITEM_SIZE[dtype]);
  const dv = new DataView(out.buffer);
  switch (dtype) {
    case 'f16':
      for (let i = 0; i < n; i++) dv.setUint16(2 * i, floatToHalf(data[i]!), littleEndian);
      break;
    case 'bf16':
      for (let i = 0; i < n; i++) dv.setUint16(2 * i, floatToBf16(data[i]!), littleEndian);
      break;
    case 'f32':
      for (let i = 0; i < n; i++) dv.setFloat32(4 * i, data[i]!, littleEndian);
      break;
    case 'f64':
      for (let i = 0; i < n; i++) dv.setFloat64(8 * i, data[i]!, littleEndian);
      break;
  }
  return out;
}
