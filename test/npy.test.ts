/**
 * Float decoding (src/store/dtype.ts), .npy reading/writing (src/store/npy.ts) and loadMatrix on .npy files.
 * Test files are assembled by hand with Buffer, independently of the writer.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { InputError } from '../src/core/errors.js';
import {
  bf16ToFloat,
  decodeFloats,
  encodeFloats,
  encodeSmallFloat,
  floatToBf16,
  floatToHalf,
  halfToFloat,
} from '../src/store/dtype.js';
import { readNpy, readNpyHeader, writeNpy } from '../src/store/npy.js';
import { describeFile, loadMatrix } from '../src/store/load.js';

const tmp = await mkdtemp(join(tmpdir(), 'vl-npy-'));
test.after(() => rm(tmp, { recursive: true, force: true }));
let counter = 0;

/** Assembles a .npy file: magic, version, header length (u16 for 1.x, u32 otherwise), header text, data. */
function npyBytes(header: string, data: Buffer, major = 1, minor = 0): Buffer {
  const lenBytes = major === 1 ? 2 : 4;
  const encoding = major === 3 ? 'utf8' : 'latin1';
  // Pad like numpy so the data starts on a 64-byte boundary (readers must not depend on it, but be realistic).
  let text = header;
  while ((8 + lenBytes + Buffer.byteLength(text + '\n', encoding)) % 64 !== 0) text += ' ';
  text += '\n';
  const prefix = Buffer.alloc(8 + lenBytes);
  Buffer.from([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]).copy(prefix);
  prefix[6] = major;
  prefix[7] = minor;
  const hlen = Buffer.byteLength(text, encoding);
  if (major === 1) prefix.writeUInt16LE(hlen, 8);
  else prefix.writeUInt32LE(hlen, 8);
  return Buffer.concat([prefix, Buffer.from(text, encoding), data]);
}

async function file(bytes: Buffer | string, ext = '.npy'): Promise<string> {
  const p = join(tmp, `f${counter++}${ext}`);
  await writeFile(p, bytes);
  return p;
}

function f32le(values: number[]): Buffer {
  const b = Buffer.alloc(values.length * 4);
  values.forEach((v, i) => b.writeFloatLE(v, i * 4));
  return b;
}

function u16(values: number[], le: boolean): Buffer {
  const b = Buffer.alloc(values.length * 2);
  values.forEach((v, i) => (le ? b.writeUInt16LE(v, i * 2) : b.writeUInt16BE(v, i * 2)));
  return b;
}

/** Asserts that `fn` rejects with an InputError whose message names `path` and matches `pattern`. */
async function rejectsInput(fn: () => Promise<unknown>, path: string, pattern: RegExp): Promise<void> {
  await assert.rejects(fn, (err: unknown) => {
    assert.ok(err instanceof InputError, `expected InputError, got ${String(err)}`);
    assert.ok(err.message.includes(path), `message does not name the file: ${err.message}`);
    assert.match(err.message, pattern);
    assert.ok(!err.message.includes('\n'), 'message must be one line');
    return true;
  });
}

// ---------------------------------------------------------------------------------------------------------------
// dtype.ts

test('float16 decoding of known bit patterns', () => {
  const cases: [number, number][] = [
    [0x3c00, 1],
    [0xc000, -2],
    [0x7bff, 65504],
    [0x0001, 2 ** -24],
    [0x03ff, (1023 / 1024) * 2 ** -14],
    [0x0400, 2 ** -14],
    [0x3555, 0.333251953125],
    [0x0000, 0],
    [0x7c00, Infinity],
    [0xfc00, -Infinity],
  ];
  for (const [bits, value] of cases) assert.equal(halfToFloat(bits), value, `0x${bits.toString(16)}`);
  assert.ok(Object.is(halfToFloat(0x8000), -0));
  assert.ok(Number.isNaN(halfToFloat(0x7e00)));
  assert.ok(Number.isNaN(halfToFloat(0x7c01)));
});

test('bfloat16 decoding of known bit patterns', () => {
  assert.equal(bf16ToFloat(0x3f80), 1);
  assert.equal(bf16ToFloat(0xc000), -2);
  assert.equal(bf16ToFloat(0x7f80), Infinity);
  assert.equal(bf16ToFloat(0xff80), -Infinity);
  assert.equal(bf16ToFloat(0x0001), 2 ** -133); // smallest subnormal
  assert.equal(bf16ToFloat(0x7f7f), 3.3895313892515355e38); // largest finite
  assert.ok(Number.isNaN(bf16ToFloat(0x7fc0)));
});

test('float16 and bfloat16 encoders invert the decoders for all 65536 patterns', () => {
  for (let h = 0; h < 65536; h++) {
    const v = halfToFloat(h);
    if (Number.isNaN(v)) assert.ok(Number.isNaN(halfToFloat(floatToHalf(v))));
    else assert.equal(floatToHalf(v), h, `half 0x${h.toString(16)}`);
    const w = bf16ToFloat(h);
    if (Number.isNaN(w)) assert.ok(Number.isNaN(bf16ToFloat(floatToBf16(w))));
    else assert.equal(floatToBf16(w), h, `bf16 0x${h.toString(16)}`);
  }
});

test('float16 encoding rounds to nearest even, overflows to infinity, handles subnormals', () => {
  assert.equal(floatToHalf(1 + 2 ** -11), 0x3c00); // tie → even (mantissa 0)
  assert.equal(floatToHalf(1 + 3 * 2 ** -11), 0x3c02); // tie → even (mantissa 2)
  assert.equal(floatToHalf(1 + 2 ** -11 + 2 ** -20), 0x3c01); // just above the tie
  assert.equal(floatToHalf(65519), 0x7bff);
  assert.equal(floatToHalf(65520), 0x7c00); // halfway to 2^16 → infinity
  assert.equal(floatToHalf(-1e6), 0xfc00);
  assert.equal(floatToHalf(2 ** -25), 0x0000); // tie between 0 and the smallest subnormal → 0
  assert.equal(floatToHalf(2 ** -25 * 1.5), 0x0001);
  assert.equal(floatToHalf(3 * 2 ** -25), 0x0002); // tie between 1 and 2 units → 2
  assert.equal(floatToHalf(2 ** -14 - 2 ** -25), 0x0400); // rounds up into the normal range
  assert.equal(floatToHalf(-0), 0x8000);
  assert.equal(floatToHalf(NaN) & 0x7e00, 0x7e00);
  // A float64 that is not a float32 is rounded once: via float32 it would land exactly on a tie and go to 0x3c00.
  assert.equal(floatToHalf(1 + 2 ** -11 + 2 ** -40), 0x3c01);
  assert.equal(floatToBf16(1 + 2 ** -8 + 2 ** -40), 0x3f81);
  assert.equal(floatToBf16(1 + 2 ** -8), 0x3f80); // tie → even
  assert.equal(floatToBf16(3.4e38), 0x7f80); // above the largest finite bf16's halfway point → infinity
});

test('fast float32 encoders agree with the exact reference encoder on random values', () => {
  const bits = new Uint32Array(1);
  const f = new Float32Array(bits.buffer);
  let seed = 42;
  for (let i = 0; i < 200_000; i++) {
    seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0;
    bits[0] = seed;
    const v = f[0]!;
    if (Number.isNaN(v)) continue;
    assert.equal(floatToHalf(v), encodeSmallFloat(v, 5, 10), `half of ${v}`);
    assert.equal(floatToBf16(v), encodeSmallFloat(v, 8, 7), `bf16 of ${v}`);
  }
});

test('encodeFloats / decodeFloats round trip in both byte orders', () => {
  const values = [0, 1, -2, 0.5, 65504, 2 ** -24, Infinity, -Infinity];
  for (const le of [true, false]) {
    for (const dtype of ['f16', 'bf16', 'f32', 'f64'] as const) {
      const back = decodeFloats(encodeFloats(values, dtype, le), dtype, le);
      assert.deepEqual(Array.from(back), dtype === 'bf16' ? values.map((v) => bf16ToFloat(floatToBf16(v))) : values, `${dtype} le=${le}`);
      assert.equal(back instanceof Float64Array, dtype === 'f64');
    }
  }
  // Big-endian bytes are really big-endian.
  assert.deepEqual([...encodeFloats([1], 'f16', false)], [0x3c, 0x00]);
  assert.deepEqual([...encodeFloats([1], 'f16', true)], [0x00, 0x3c]);
});

// ---------------------------------------------------------------------------------------------------------------
// Reading hand-built files

test('reads v1.0 <f4 (C order)', async () => {
  const p = await file(npyBytes("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }", f32le([1, 2, 3, 4, 5, 6])));
  const h = await readNpyHeader(p);
  assert.equal(h.version, '1.0');
  assert.equal(h.descr, '<f4');
  assert.equal(h.fortranOrder, false);
  assert.deepEqual(h.shape, [2, 3]);
  assert.equal(h.dataOffset, 128); // 10-byte prefix + 59-character dict + newline, padded to the next multiple of 64
  assert.equal(h.itemSize, 4);
  const a = await readNpy(p);
  assert.equal(a.dtype, 'f4');
  assert.ok(a.data instanceof Float32Array);
  assert.deepEqual(Array.from(a.data), [1, 2, 3, 4, 5, 6]);
});

test('reads a hand-assembled v2.0 big-endian f8 file', async () => {
  const values = [Math.PI, -1e300, 2 ** -1074, 0.1];
  const data = Buffer.alloc(32);
  values.forEach((v, i) => data.writeDoubleBE(v, i * 8));
  const p = await file(npyBytes("{'descr': '>f8', 'fortran_order': False, 'shape': (2, 2), }", data, 2));
  const h = await readNpyHeader(p);
  assert.equal(h.version, '2.0');
  assert.equal(h.dataOffset, 128);
  const a = await readNpy(p);
  assert.equal(a.dtype, 'f8');
  assert.ok(a.data instanceof Float64Array);
  assert.deepEqual(Array.from(a.data), values);
});

test('reads f2 in both byte orders from known bit patterns, and v3.0 UTF-8 headers', async () => {
  const bits = [0x3c00, 0xc000, 0x7bff, 0x0001];
  const expected = [1, -2, 65504, 2 ** -24];
  const le = await file(npyBytes("{'descr': '<f2', 'fortran_order': False, 'shape': (4,), }", u16(bits, true)));
  const be = await file(npyBytes("{'descr': '>f2', 'fortran_order': False, 'shape': (4,), }", u16(bits, false), 2));
  // numpy writes 3.0 when the header needs UTF-8 (e.g. unicode field names); a comment-free plain header works too.
  const v3 = await file(npyBytes("{'descr': '<f2', 'fortran_order': False, 'shape': (2, 2), }", u16(bits, true), 3));
  for (const p of [le, be, v3]) {
    const a = await readNpy(p);
    assert.equal(a.dtype, 'f2');
    assert.ok(a.data instanceof Float32Array);
    assert.deepEqual(Array.from(a.data), expected);
  }
  assert.equal((await readNpyHeader(v3)).version, '3.0');
});

test('reads >f4, <f8, and descr without a byte-order mark', async () => {
  const be = Buffer.alloc(8);
  be.writeFloatBE(1.5, 0);
  be.writeFloatBE(-3, 4);
  assert.deepEqual(Array.from((await readNpy(await file(npyBytes("{'descr': '>f4', 'fortran_order': False, 'shape': (2,), }", be)))).data), [1.5, -3]);
  const le8 = Buffer.alloc(16);
  le8.writeDoubleLE(1e-310, 0);
  le8.writeDoubleLE(7, 8);
  assert.deepEqual(Array.from((await readNpy(await file(npyBytes("{'descr': '<f8', 'fortran_order': False, 'shape': (2,), }", le8)))).data), [1e-310, 7]);
  for (const descr of ['f4', '=f4', '|f4']) {
    const a = await readNpy(await file(npyBytes(`{'descr': '${descr}', 'fortran_order': False, 'shape': (2,), }`, f32le([1, 2]))));
    assert.deepEqual(Array.from(a.data), [1, 2], descr);
  }
});

test('scalars, empty arrays, double quotes, Python 2 longs and key order are accepted', async () => {
  const s = await readNpy(await file(npyBytes("{'descr': '<f4', 'fortran_order': False, 'shape': (), }", f32le([3.5]))));
  assert.deepEqual(s.shape, []);
  assert.deepEqual(Array.from(s.data), [3.5]);
  const e = await readNpy(await file(npyBytes("{'descr': '<f4', 'fortran_order': False, 'shape': (0, 7), }", Buffer.alloc(0))));
  assert.deepEqual(e.shape, [0, 7]);
  assert.equal(e.data.length, 0);
  const odd = await readNpy(await file(npyBytes('{"shape": (1L, 2L), "fortran_order": False, "descr": "<f4"}', f32le([1, 2]))));
  assert.deepEqual(odd.shape, [1, 2]);
});

test('fortran_order: True 2-D arrays are transposed into row-major order', async () => {
  // Logical matrix [[1, 2, 3], [4, 5, 6]] stored column by column.
  const p = await file(npyBytes("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3), }", f32le([1, 4, 2, 5, 3, 6])));
  assert.equal((await readNpyHeader(p)).fortranOrder, true);
  const a = await readNpy(p);
  assert.deepEqual(a.shape, [2, 3]);
  assert.deepEqual(Array.from(a.data), [1, 2, 3, 4, 5, 6]);
  const m = await loadMatrix(p);
  assert.equal(m.rows, 2);
  assert.equal(m.cols, 3);
  assert.deepEqual(Array.from(m.data), [1, 2, 3, 4, 5, 6]);
});

test('fortran_order: True 3-D arrays are reordered too', async () => {
  const shape = [2, 3, 4];
  // Element (i, j, k) has value 100i + 10j + k; Fortran order puts i fastest.
  const fortran: number[] = [];
  for (let k = 0; k < 4; k++) for (let j = 0; j < 3; j++) for (let i = 0; i < 2; i++) fortran.push(100 * i + 10 * j + k);
  const expected: number[] = [];
  for (let i = 0; i < 2; i++) for (let j = 0; j < 3; j++) for (let k = 0; k < 4; k++) expected.push(100 * i + 10 * j + k);
  const a = await readNpy(await file(npyBytes("{'descr': '<f4', 'fortran_order': True, 'shape': (2, 3, 4), }", f32le(fortran))));
  assert.deepEqual(a.shape, shape);
  assert.deepEqual(Array.from(a.data), expected);
});

// ---------------------------------------------------------------------------------------------------------------
// Writing

test('writeNpy output is byte-identical to numpy.save (v1.0, growth-axis padding, 64-byte alignment)', async () => {
  const p = join(tmp, 'w32.npy');
  await writeNpy(p, [2, 3], new Float32Array([0, 1, 2, 3, 4, 5]));
  const bytes = await readFile(p);
  // numpy 2.x: np.save(p, np.arange(6, dtype=np.float32).reshape(2, 3))
  const dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
  const header = dict + ' '.repeat(128 - 10 - dict.length - 1) + '\n';
  const expected = Buffer.concat([
    Buffer.from([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 1, 0, 118, 0]),
    Buffer.from(header, 'latin1'),
    f32le([0, 1, 2, 3, 4, 5]),
  ]);
  assert.deepEqual(bytes, expected);
  assert.ok(header.startsWith(dict + ' '.repeat(20)), 'growth-axis padding of 21 - len("2") spaces');
});

test('writeNpy round trips f4 and f8 of any rank, and writes atomically', async () => {
  const p32 = join(tmp, 'rt32.npy');
  const p64 = join(tmp, 'rt64.npy');
  const v32 = new Float32Array([1.5, -2, NaN, Infinity, 1e-40, 0]);
  const v64 = new Float64Array([Math.PI, -1e300, 2 ** -1074, 0.1, 7, 8, 9, 10]);
  await writeNpy(p32, [3, 2], v32);
  await writeNpy(p64, [2, 2, 2], v64);
  const a = await readNpy(p32);
  assert.equal(a.dtype, 'f4');
  assert.deepEqual(a.shape, [3, 2]);
  assert.deepEqual(Array.from(a.data), Array.from(v32));
  const b = await readNpy(p64);
  assert.equal(b.dtype, 'f8');
  assert.deepEqual(Array.from(b.data), Array.from(v64));
  const h = await readNpyHeader(p64);
  assert.equal(h.descr, '<f8');
  assert.equal(h.dataOffset % 64, 0);
  const one = join(tmp, 'rt1.npy');
  await writeNpy(one, [5], new Float32Array(5));
  assert.deepEqual((await readNpyHeader(one)).shape, [5]);
  assert.ok(!(await readFile(one, 'latin1')).includes('.tmp-'));
  await assert.rejects(() => writeNpy(join(tmp, 'bad.npy'), [2, 2], new Float32Array(3)), /needs 4 values, got 3/);
});

// ---------------------------------------------------------------------------------------------------------------
// Corrupt files: each must fail with an InputError naming the file and the problem.

test('corrupt .npy files are rejected with specific messages', async () => {
  const good = "{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3), }";
  const data = f32le([1, 2, 3, 4, 5, 6]);
  const cases: [string, Buffer, RegExp][] = [
    ['empty file', Buffer.alloc(0), /not a \.npy file \(bad magic/],
    ['bad magic', Buffer.concat([Buffer.from('\x93NUMPZ', 'latin1'), npyBytes(good, data).subarray(6)]), /bad magic/],
    ['text file', Buffer.from('hello world, this is not numpy\n'), /bad magic/],
    ['unknown version', npyBytes(good, data, 4), /unsupported \.npy format version 4\.0 \(supported: 1\.0, 2\.0, 3\.0\)/],
    ['unknown minor version', npyBytes(good, data, 1, 1), /version 1\.1/],
    ['truncated prefix', npyBytes(good, data).subarray(0, 9), /truncated \.npy header/],
    [
      'header length past end of file',
      (() => {
        const b = npyBytes(good, data);
        b.writeUInt16LE(60000, 8);
        return b;
      })(),
      /header length 60000 runs past the end of the file \(header would end at byte 60010, file is 152 bytes\)/,
    ],
    [
      'absurd header length',
      (() => {
        const b = npyBytes(good, data, 2);
        b.writeUInt32LE(0x7fffffff, 8);
        return b;
      })(),
      /absurd header length 2147483647 bytes \(limit 1048576\)/,
    ],
    ['unparseable header dict', npyBytes("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 3}", data), /unparseable header dict \(expected ',' or '\)'/],
    ['header is not a dict', npyBytes("['descr', '<f4']", data), /unparseable header dict \(not a dict\)/],
    ['garbage header', npyBytes('{descr: <f4}', data), /unparseable header dict/],
    ['missing shape', npyBytes("{'descr': '<f4', 'fortran_order': False, }", data), /header dict has no 'shape' key/],
    ['unknown dtype', npyBytes("{'descr': '<i4', 'fortran_order': False, 'shape': (2, 3), }", data), /unsupported dtype '<i4' \(supported: <f2, >f2, <f4, >f4, <f8, >f8\)/],
    ['complex dtype', npyBytes("{'descr': '<c8', 'fortran_order': False, 'shape': (2, 3), }", data), /unsupported dtype '<c8'/],
    ['structured dtype', npyBytes("{'descr': [('a', '<f4')], 'fortran_order': False, 'shape': (2, 3), }", data), /structured\/record dtype/],
    ['bad fortran_order', npyBytes("{'descr': '<f4', 'fortran_order': 0, 'shape': (2, 3), }", data), /'fortran_order' must be True or False/],
    ['negative shape', npyBytes("{'descr': '<f4', 'fortran_order': False, 'shape': (-2, 3), }", data), /'shape' must be a tuple of non-negative integers/],
    [
      'extra data',
      npyBytes(good, Buffer.concat([data, Buffer.alloc(4)])),
      /data length mismatch: shape \[2, 3\] × itemsize 4 = 24 bytes, but the file has 28 bytes of data/,
    ],
    ['truncated data', npyBytes(good, data.subarray(0, 20)), /truncated data: shape \[2, 3\] × itemsize 4 = 24 bytes expected, file has 20 bytes of data/],
  ];
  for (const [name, bytes, pattern] of cases) {
    const p = await file(bytes);
    await rejectsInput(() => readNpy(p), p, pattern).catch((err: Error) => {
      throw new Error(`case '${name}': ${err.message}`);
    });
    // The header-only API catches the same problems without reading the data.
    await rejectsInput(() => readNpyHeader(p), p, pattern);
  }
  const missing = join(tmp, 'missing.npy');
  await rejectsInput(() => readNpy(missing), missing, /file not found/);
  await rejectsInput(() => readNpy(tmp), tmp, /is a directory/);
});

// ---------------------------------------------------------------------------------------------------------------
// loadMatrix / describeFile on .npy

test('loadMatrix requires a 2-D array and reads it as a Matrix', async () => {
  const p2 = await file(npyBytes("{'descr': '<f8', 'fortran_order': False, 'shape': (2, 2), }", Buffer.from(new Float64Array([1, 2, 3, 4]).buffer)));
  const m = await loadMatrix(p2);
  assert.equal(m.rows, 2);
  assert.equal(m.cols, 2);
  assert.ok(m.data instanceof Float64Array);
  assert.deepEqual(Array.from(m.data), [1, 2, 3, 4]);

  const p3 = await file(npyBytes("{'descr': '<f4', 'fortran_order': False, 'shape': (2, 1, 3), }", f32le([1, 2, 3, 4, 5, 6])));
  await rejectsInput(() => loadMatrix(p3), p3, /is 3-D \[2, 1, 3\].*capture directory with a token mode.*reshape it to \[n, d\]/);
  const p1 = await file(npyBytes("{'descr': '<f4', 'fortran_order': False, 'shape': (6,), }", f32le([1, 2, 3, 4, 5, 6])));
  await rejectsInput(() => loadMatrix(p1), p1, /has shape \[6\]; expected a 2-D \[n, d\] matrix/);
  await rejectsInput(() => loadMatrix(p2, { key: 'x' }), p2, /only applies to \.safetensors/);

  // Unknown extension: the format is sniffed from the magic bytes.
  const sniffed = await file(npyBytes("{'descr': '<f4', 'fortran_order': False, 'shape': (1, 2), }", f32le([7, 8])), '.bin');
  assert.deepEqual(Array.from((await loadMatrix(sniffed)).data), [7, 8]);
  const junk = await file('definitely not an array', '.dat');
  await rejectsInput(() => loadMatrix(junk), junk, /unrecognized file format/);
});

test('describeFile describes a .npy file from its header', async () => {
  const p = await file(npyBytes("{'descr': '>f8', 'fortran_order': True, 'shape': (2, 2), }", Buffer.alloc(32), 2));
  const d = await describeFile(p);
  assert.deepEqual(d, {
    path: p,
    format: 'npy',
    version: '2.0',
    fortranOrder: true,
    bytes: 160,
    tensors: [{ name: null, dtype: '>f8', shape: [2, 2], bytes: 32 }],
  });
  assert.doesNotThrow(() => JSON.stringify(d));
});
