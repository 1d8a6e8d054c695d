/**
 * safetensors reading/writing (src/store/safetensors.ts) and loadMatrix / describeFile on safetensors files.
 * Test files are assembled by hand with Buffer, independently of the writer.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { InputError } from '../src/core/errors.js';
import { bf16ToFloat, floatToBf16, floatToHalf, halfToFloat } from '../src/store/dtype.js';
import { readSafetensorsHeader, readTensor, writeSafetensors } from '../src/store/safetensors.js';
import { describeFile, loadMatrix } from '../src/store/load.js';

const tmp = await mkdtemp(join(tmpdir(), 'vl-st-'));
test.after(() => rm(tmp, { recursive: true, force: true }));
let counter = 0;

/** Assembles a safetensors file from a header object (or raw header text) and the data area. */
function stBytes(header: object | string, data: Buffer, pad = true): Buffer {
  let text = typeof header === 'string' ? header : JSON.stringify(header);
  if (pad) while (Buffer.byteLength(text) % 8 !== 0) text += ' ';
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(Buffer.byteLength(text)));
  return Buffer.concat([len, Buffer.from(text), data]);
}

async function file(bytes: Buffer | string, ext = '.safetensors'): Promise<string> {
  const p = join(tmp, `f${counter++}${ext}`);
  await writeFile(p, bytes);
  return p;
}

function f32le(values: number[]): Buffer {
  const b = Buffer.alloc(values.length * 4);
  values.forEach((v, i) => b.writeFloatLE(v, i * 4));
  return b;
}

function u16le(values: number[]): Buffer {
  const b = Buffer.alloc(values.length * 2);
  values.forEach((v, i) => b.writeUInt16LE(v, i * 2));
  return b;
}

async function rejectsInput(fn: () => Promise<unknown>, path: string, pattern: RegExp): Promise<void> {
  await assert.rejects(fn, (err: unknown) => {
    assert.ok(err instanceof InputError, `expected InputError, got ${String(err)}`);
    assert.ok(err.message.includes(path), `message does not name the file: ${err.message}`);
    assert.match(err.message, pattern);
    assert.ok(!err.message.includes('\n'), 'message must be one line');
    return true;
  });
}

test('reads F16, BF16, F32 and F64 tensors from a hand-built file', async () => {
  const f64 = Buffer.alloc(16);
  f64.writeDoubleLE(Math.PI, 0);
  f64.writeDoubleLE(-1e300, 8);
  const f16 = u16le([0x3c00, 0xc000, 0x7bff, 0x0001]);
  const bf16 = u16le([0x3f80, 0xc000, 0x7f80, 0x0001]);
  const f32 = f32le([1.5, -2.25, 1e-40]);
  // Data laid out f64 | f16 | bf16 | f32 with the header listing them in another order.
  const data = Buffer.concat([f64, f16, bf16, f32]);
  const header = {
    __metadata__: { format: 'pt', note: 'hand-built' },
    c: { dtype: 'F32', shape: [3], data_offsets: [32, 44] },
    a: { dtype: 'F16', shape: [2, 2], data_offsets: [16, 24] },
    d: { dtype: 'F64', shape: [2, 1], data_offsets: [0, 16] },
    b: { dtype: 'BF16', shape: [4], data_offsets: [24, 32] },
  };
  const p = await file(stBytes(header, data));
  const h = await readSafetensorsHeader(p);
  const headerLen = Number((await readFile(p)).readBigUInt64LE(0));
  assert.equal(h.dataStart, 8 + headerLen);
  assert.deepEqual(h.metadata, { format: 'pt', note: 'hand-built' });
  assert.deepEqual(
    h.tensors.map((t) => [t.name, t.dtype, t.shape, t.begin - h.dataStart, t.end - h.dataStart]),
    [
      ['d', 'F64', [2, 1], 0, 16],
      ['a', 'F16', [2, 2], 16, 24],
      ['b', 'BF16', [4], 24, 32],
      ['c', 'F32', [3], 32, 44],
    ],
  );

  const a = await readTensor(p, 'a');
  assert.equal(a.dtype, 'F16');
  assert.deepEqual(a.shape, [2, 2]);
  assert.ok(a.data instanceof Float32Array);
  assert.deepEqual(Array.from(a.data), [1, -2, 65504, 2 ** -24]);
  const b = await readTensor(p, 'b');
  assert.ok(b.data instanceof Float32Array);
  assert.deepEqual(Array.from(b.data), [1, -2, Infinity, 2 ** -133]);
  const c = await readTensor(p, 'c');
  assert.deepEqual(Array.from(c.data), [1.5, -2.25, Math.fround(1e-40)]);
  const d = await readTensor(p, 'd');
  assert.ok(d.data instanceof Float64Array);
  assert.deepEqual(Array.from(d.data), [Math.PI, -1e300]);

  await rejectsInput(() => readTensor(p), p, /holds 4 tensors, name one of: d, a, b, c/);
  await rejectsInput(() => readTensor(p, 'zz'), p, /no tensor named 'zz' \(tensors: d, a, b, c\)/);
});

test('a single tensor can be read without a name; unsupported dtypes are refused by name', async () => {
  const p = await file(stBytes({ only: { dtype: 'F32', shape: [2], data_offsets: [0, 8] } }, f32le([3, 4])));
  const t = await readTensor(p);
  assert.equal(t.name, 'only');
  assert.deepEqual(Array.from(t.data), [3, 4]);

  // An I64 tensor next to a float one: the header is still valid, the float tensor reads, the I64 one is refused.
  const q = await file(
    stBytes({ ids: { dtype: 'I64', shape: [2], data_offsets: [0, 16] }, x: { dtype: 'F32', shape: [1], data_offsets: [16, 20] } }, Buffer.concat([Buffer.alloc(16), f32le([9])])),
  );
  assert.deepEqual(Array.from((await readTensor(q, 'x')).data), [9]);
  await rejectsInput(() => readTensor(q, 'ids'), q, /tensor 'ids' has dtype I64, which is not supported \(supported: F16, BF16, F32, F64\)/);
  const d = await describeFile(q);
  assert.equal(d.format, 'safetensors');
  assert.deepEqual(d.tensors, [
    { name: 'ids', dtype: 'I64', shape: [2], bytes: 16 },
    { name: 'x', dtype: 'F32', shape: [1], bytes: 4 },
  ]);
});

test('writeSafetensors round trips every dtype, pads the header with spaces to a multiple of 8', async () => {
  const values = [1, -2, 0.1, 65504, 2 ** -24, 1e-3, Infinity, -0];
  const p = join(tmp, 'w.safetensors');
  await writeSafetensors(
    p,
    [
      { name: 'half', dtype: 'F16', shape: [2, 4], data: new Float32Array(values) },
      { name: 'brain', dtype: 'BF16', shape: [8], data: new Float32Array(values) },
      { name: 'single', dtype: 'F32', shape: [4, 2], data: new Float64Array(values) },
      { name: 'double', dtype: 'F64', shape: [8], data: new Float64Array(values) },
    ],
    { source: 'test' },
  );
  const bytes = await readFile(p);
  const n = Number(bytes.readBigUInt64LE(0));
  assert.equal(n % 8, 0);
  const text = bytes.subarray(8, 8 + n).toString('utf8');
  assert.match(text, /^\{.*\} *$/);
  // Independent parse of the header: offsets are contiguous, larger items first so everything stays aligned.
  const header = JSON.parse(text);
  assert.deepEqual(header.__metadata__, { source: 'test' });
  assert.deepEqual(header.double, { dtype: 'F64', shape: [8], data_offsets: [0, 64] });
  assert.deepEqual(header.single, { dtype: 'F32', shape: [4, 2], data_offsets: [64, 96] });
  assert.deepEqual(header.half, { dtype: 'F16', shape: [2, 4], data_offsets: [96, 112] });
  assert.deepEqual(header.brain, { dtype: 'BF16', shape: [8], data_offsets: [112, 128] });
  assert.equal(bytes.length, 8 + n + 128);
  // The F16 bytes are the expected bit patterns.
  assert.equal(bytes.readUInt16LE(8 + n + 96), 0x3c00);
  assert.equal(bytes.readUInt16LE(8 + n + 98), 0xc000);

  const half = await readTensor(p, 'half');
  assert.deepEqual(Array.from(half.data), values.map((v) => halfToFloat(floatToHalf(v))));
  const brain = await readTensor(p, 'brain');
  assert.deepEqual(Array.from(brain.data), values.map((v) => bf16ToFloat(floatToBf16(v))));
  const single = await readTensor(p, 'single');
  assert.deepEqual(Array.from(single.data), values.map((v) => Math.fround(v)));
  const double = await readTensor(p, 'double');
  assert.ok(double.data instanceof Float64Array);
  assert.deepEqual(Array.from(double.data), values);
  assert.deepEqual((await readSafetensorsHeader(p)).metadata, { source: 'test' });

  await assert.rejects(
    () => writeSafetensors(join(tmp, 'x.safetensors'), [{ name: 'a', dtype: 'F32', shape: [3], data: new Float32Array(2) }]),
    /shape \[3\] does not match 2 values/,
  );
  await assert.rejects(
    () =>
      writeSafetensors(join(tmp, 'x.safetensors'), [
        { name: 'a', dtype: 'F32', shape: [1], data: new Float32Array(1) },
        { name: 'a', dtype: 'F32', shape: [1], data: new Float32Array(1) },
      ]),
    /duplicate tensor name 'a'/,
  );
});

test('corrupt safetensors files are rejected with specific messages', async () => {
  const ok = { x: { dtype: 'F32', shape: [2, 2], data_offsets: [0, 16] } };
  const data = f32le([1, 2, 3, 4]);
  const withLen = (len: bigint, rest: Buffer): Buffer => {
    const b = Buffer.alloc(8);
    b.writeBigUInt64LE(len);
    return Buffer.concat([b, rest]);
  };
  const cases: [string, Buffer, RegExp][] = [
    ['too short', Buffer.from([1, 2, 3]), /too short to be a safetensors file \(3 bytes\)/],
    ['header length past end of file', withLen(5000n, Buffer.from('{"x": 1}')), /header length 5000 runs past the end of the file \(file is 16 bytes\)/],
    ['absurd header length', withLen(2n ** 40n, Buffer.from('{}')), /absurd header length 1099511627776 bytes \(limit 16777216\)/],
    ['invalid JSON', stBytes('{"x": {"dtype": "F32",', data), /invalid JSON header/],
    ['header not an object', stBytes('[1, 2]', data), /invalid header: expected a JSON object/],
    ['entry not an object', stBytes({ x: 3 }, data), /tensor 'x': header entry is not an object/],
    ['missing dtype', stBytes({ x: { shape: [4], data_offsets: [0, 16] } }, data), /tensor 'x': missing or non-string dtype/],
    ['bad shape', stBytes({ x: { dtype: 'F32', shape: [-4], data_offsets: [0, 16] } }, data), /tensor 'x': shape must be an array of non-negative integers/],
    ['bad offsets', stBytes({ x: { dtype: 'F32', shape: [4], data_offsets: [16, 0] } }, data), /tensor 'x': data_offsets must be \[begin, end\]/],
    [
      'offsets outside the data area',
      stBytes({ x: { dtype: 'F32', shape: [8], data_offsets: [0, 32] } }, data),
      /tensor 'x': data_offsets \[0, 32\] run past the end of the data area \(16 bytes\)/,
    ],
    ['truncated file', stBytes(ok, data.subarray(0, 10)), /tensor 'x': data_offsets \[0, 16\] run past the end of the data area \(10 bytes\): the file is truncated/],
    [
      'size mismatch',
      stBytes({ x: { dtype: 'F32', shape: [3], data_offsets: [0, 16] } }, data),
      /tensor 'x': data_offsets span 16 bytes but shape \[3\] × F32 itemsize 4 = 12 bytes/,
    ],
    [
      'overlapping tensors',
      stBytes({ x: { dtype: 'F32', shape: [3], data_offsets: [0, 12] }, y: { dtype: 'F32', shape: [2], data_offsets: [8, 16] } }, data),
      /tensors 'x' and 'y' overlap \(data_offsets \[0, 12\] and \[8, 16\]\)/,
    ],
    ['bad metadata', stBytes({ __metadata__: { n: 3 }, ...ok }, data), /__metadata__ must map strings to strings/],
  ];
  for (const [name, bytes, pattern] of cases) {
    const p = await file(bytes);
    await rejectsInput(() => readTensor(p, 'x'), p, pattern).catch((err: Error) => {
      throw new Error(`case '${name}': ${err.message}`);
    });
    await rejectsInput(() => readSafetensorsHeader(p), p, pattern);
  }
  const missing = join(tmp, 'missing.safetensors');
  await rejectsInput(() => readTensor(missing), missing, /file not found/);
});

test('loadMatrix reads 2-D safetensors tensors by key and sniffs the format', async () => {
  const header = {
    feats: { dtype: 'F32', shape: [2, 3], data_offsets: [0, 24] },
    cube: { dtype: 'F32', shape: [1, 2, 3], data_offsets: [24, 48] },
  };
  const data = Buffer.concat([f32le([1, 2, 3, 4, 5, 6]), f32le([1, 2, 3, 4, 5, 6])]);
  const p = await file(stBytes(header, data));
  const m = await loadMatrix(p, { key: 'feats' });
  assert.equal(m.rows, 2);
  assert.equal(m.cols, 3);
  assert.deepEqual(Array.from(m.data), [1, 2, 3, 4, 5, 6]);
  await rejectsInput(() => loadMatrix(p), p, /holds 2 tensors, name one of: feats, cube/);
  await rejectsInput(() => loadMatrix(p, { key: 'cube' }), p, /tensor 'cube' is 3-D \[1, 2, 3\]; expected a 2-D \[n, d\] matrix — use a capture directory with a token mode/);

  const single = await file(stBytes({ only: { dtype: 'F16', shape: [1, 2], data_offsets: [0, 4] } }, u16le([0x3c00, 0xc000])), '.bin');
  const s = await loadMatrix(single);
  assert.deepEqual(Array.from(s.data), [1, -2]);
});
