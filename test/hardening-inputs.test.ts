/**
 * Issue 11, items 1–6: inputs built to break the readers and the engines (zero-width shapes, deep headers, huge
 * headers, off-by-one header lengths, non-UTF-8 names, NaN/Inf in captures, float32 overflow). Every file is assembled
 * by hand with Buffer; expected values come from formulas written here, never from the code under test.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { runLayerwise } from '../analysis/layerwise.js';
import { table } from '../cli/format.js';
import { OnnxEngine } from '../src/engine/onnx.js';
import { RefEngine } from '../src/engine/ref.js';
import { InputError } from '../src/core/errors.js';
import { checkMetricInputs, computeMetric, Features } from '../src/metrics/index.js';
import { CaptureWriter, openCapture, validateCapture, type CaptureInit } from '../src/store/capture.js';
import { loadMatrix } from '../src/store/load.js';
import { readNpy, readNpyHeader } from '../src/store/npy.js';
import { findTensor, readSafetensorsHeader, readTensor } from '../src/store/safetensors.js';
import { randn } from './helpers.js';

const root = dirname(dirname(fileURLToPath(import.meta.url)));
/** The bound every user-facing message keeps (src/core/errors.ts), pinned here as a number. */
const MAX_MESSAGE_CHARS = 2000;
const tmp = await mkdtemp(join(tmpdir(), 'vl-hard-'));
test.after(() => rm(tmp, { recursive: true, force: true }));
let counter = 0;

async function file(bytes: Buffer | string, ext: string): Promise<string> {
  const p = join(tmp, `f${counter++}${ext}`);
  await writeFile(p, bytes);
  return p;
}

/** A .npy v1.0 (v2.0 when the header needs it) with the given header text, padded like numpy. */
function npyBytes(header: string, data: Buffer = Buffer.alloc(0), major = header.length > 60000 ? 2 : 1, encoding: BufferEncoding = 'latin1'): Buffer {
  const lenBytes = major === 1 ? 2 : 4;
  let text = Buffer.from(header, encoding);
  const pad = (64 - ((8 + lenBytes + text.length + 1) % 64)) % 64;
  text = Buffer.concat([text, Buffer.alloc(pad, 0x20), Buffer.from('\n')]);
  const prefix = Buffer.alloc(8 + lenBytes);
  Buffer.from([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]).copy(prefix);
  prefix[6] = major;
  if (major === 1) prefix.writeUInt16LE(text.length, 8);
  else prefix.writeUInt32LE(text.length, 8);
  return Buffer.concat([prefix, text, data]);
}

/** A safetensors file: u64 header length, header bytes (padded with spaces to a multiple of 8), data. */
function stBytes(header: object | Buffer, data: Buffer, lengthDelta = 0): Buffer {
  let text = Buffer.isBuffer(header) ? header : Buffer.from(JSON.stringify(header));
  text = Buffer.concat([text, Buffer.alloc((8 - (text.length % 8)) % 8, 0x20)]);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(text.length + lengthDelta));
  return Buffer.concat([len, text, data]);
}

function f32le(values: number[]): Buffer {
  const b = Buffer.alloc(values.length * 4);
  values.forEach((v, i) => b.writeFloatLE(v, i * 4));
  return b;
}

async function rejectsInput(fn: () => Promise<unknown> | unknown, pattern: RegExp): Promise<InputError> {
  let caught: InputError | undefined;
  await assert.rejects(async () => fn(), (err: unknown) => {
    assert.ok(err instanceof InputError, `expected InputError, got ${(err as Error)?.stack ?? String(err)}`);
    assert.match(err.message, pattern);
    assert.ok(!err.message.includes('\n'), 'message must be one line');
    assert.ok(err.message.length <= MAX_MESSAGE_CHARS, `message is ${err.message.length} characters`);
    caught = err;
    return true;
  });
  return caught!;
}

async function cli(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await promisify(execFile)(process.execPath, ['--import', 'tsx', join(root, 'cli', 'main.ts'), ...args], {
      cwd: root,
      maxBuffer: 64 * 2 ** 20,
    });
    return { code: 0, stdout, stderr };
  } catch (e) {
    const err = e as { code: number; stdout: string; stderr: string };
    return { code: err.code, stdout: err.stdout, stderr: err.stderr };
  }
}

/** Exit 2 and exactly one bounded line on stderr naming `what`, no stack trace. */
function assertCliRefusal(r: { code: number; stdout: string; stderr: string }, what: RegExp): void {
  assert.equal(r.code, 2, `exit code ${r.code}: ${r.stderr.slice(0, 500)} ${r.stdout.slice(0, 500)}`);
  assert.equal(r.stderr.trimEnd().split('\n').length, 1, `one line: ${r.stderr.slice(0, 500)}`);
  assert.ok(r.stderr.length <= MAX_MESSAGE_CHARS + 200, `stderr is ${r.stderr.length} characters`);
  assert.match(r.stderr, what);
  assert.doesNotMatch(r.stderr, /\n\s+at /);
}

const INIT: CaptureInit = {
  model: { name: 'test/model' },
  variant: 'baseline',
  token_layout: { kind: 'image', tokens: 2, source_tokens: 2, pooling: 'none' },
  layers: [
    { name: 'embed', index: 0, dim: 4 },
    { name: 'blocks.0.out', index: 1, dim: 4 },
  ],
  targets: [{ name: 'clip', dim: 3, tokens: 1 }],
};

/** A 12-sample capture of seeded Gaussian values; `poison` edits the values of one layer/target before writing. */
async function makeCapture(poison?: { layer?: string; target?: string; index: number; value: number }): Promise<string> {
  const dir = join(tmp, `cap${counter++}`);
  const w = await CaptureWriter.create(dir, INIT);
  for (const start of [0, 6]) {
    const layers: Record<string, Float32Array> = {};
    for (const [i, l] of INIT.layers.entries()) layers[l.name] = Float32Array.from(randn(6 * 2, l.dim, 100 + 10 * i + start).data);
    const clip = Float32Array.from(randn(6, 3, 7 + start).data);
    if (poison && start === 6) {
      if (poison.layer) layers[poison.layer]![poison.index] = poison.value;
      if (poison.target) clip[poison.index] = poison.value;
    }
    await w.appendBatch({ ids: Array.from({ length: 6 }, (_, i) => `s${start + i}`), layers, targets: { clip } });
  }
  return dir;
}

// ---------------------------------------------------------------------------------------------------------------
// Item 1: zero-width / empty shapes

test('item 1: zero-width .npy and safetensors matrices are refused from the header, before any allocation', async () => {
  const npyHuge = await file(npyBytes("{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000000, 0), }"), '.npy');
  const npyMillion = await file(npyBytes("{'descr': '<f4', 'fortran_order': False, 'shape': (1000000, 0), }"), '.npy');
  const stHuge = await file(stBytes({ x: { dtype: 'F32', shape: [2 ** 40, 0], data_offsets: [0, 0] } }, Buffer.alloc(0)), '.safetensors');
  const stRows = await file(stBytes({ x: { dtype: 'F32', shape: [0, 5], data_offsets: [0, 0] } }, Buffer.alloc(0)), '.safetensors');
  for (const p of [npyHuge, npyMillion, stHuge, stRows]) {
    const err = await rejectsInput(() => loadMatrix(p), /zero dimension/);
    assert.ok(err.message.includes(p), err.message);
  }
});

// Found by the fuzz harness: the Fortran-order reordering looped over the 10**15 empty rows.
test('item 1: the generic reader returns a Fortran-order (10**15, 0) .npy as an empty array without looping over its rows', { timeout: 60_000 }, async () => {
  const p = await file(npyBytes("{'descr': '<f4', 'fortran_order': True, 'shape': (1000000000000000, 0), }"), '.npy');
  const a = await readNpy(p);
  assert.deepEqual(a.shape, [1e15, 0]);
  assert.equal(a.data.length, 0);
});

test('item 1: engines and metrics refuse n = 0 / d = 0 at their entry (no RangeError from huge allocations)', async () => {
  const empty = { rows: 1e15, cols: 0, data: new Float32Array(0) };
  const onnx = await OnnxEngine.create('cpu', 1);
  try {
    await rejectsInput(() => onnx.knn(empty, 10), /1000000000000000×0.*zero-width/);
    await rejectsInput(() => onnx.crossProduct(empty, empty), /zero-width/);
  } finally {
    await onnx.dispose();
  }
  await rejectsInput(() => new RefEngine().knn({ rows: 0, cols: 4, data: new Float32Array(0) }, 1), /0×4/);
  await rejectsInput(() => checkMetricInputs('cknna', 100, 100, 0, 5, 10), /A is 100×0: cknna needs n ≥ 1 rows and d ≥ 1/);
  await rejectsInput(() => checkMetricInputs('cosine', 0, 0, 3, 3, 10), /A is 0×3/);
});

test('item 1: a capture without samples and a zero-width target file are refused by name', async () => {
  const dir = join(tmp, `cap${counter++}`);
  await CaptureWriter.create(dir, INIT);
  const c = await openCapture(dir);
  await rejectsInput(() => c.readLayer('embed'), /layer 'embed': no samples to read \(samples\.count is 0\)/);
  const full = await makeCapture();
  const target = await file(npyBytes("{'descr': '<f4', 'fortran_order': False, 'shape': (12, 0), }"), '.npy');
  const opts = { engine: new RefEngine(), metrics: ['cknna' as const], k: 3, preprocess: 'none' as const, tokenMode: 'mean' as const };
  await rejectsInput(() => runLayerwise(full, { ...opts, targets: [{ name: 'zero', path: target }] }), /target zero has shape \[12, 0\] with a zero dimension/);
});

test('item 1: CLI compare on (100, 0) and (10**15, 0) files exits 2 with one line', async () => {
  const z = await file(npyBytes("{'descr': '<f4', 'fortran_order': False, 'shape': (100, 0), }"), '.npy');
  const huge = await file(npyBytes("{'descr': '<f4', 'fortran_order': False, 'shape': (1000000000000000, 0), }"), '.npy');
  assertCliRefusal(await cli('compare', z, z, '--metric', 'cknna', '--preprocess', 'none', '--engine', 'ref'), /shape \[100, 0\] with a zero dimension/);
  assertCliRefusal(await cli('compare', huge, huge, '--metric', 'cknna', '--preprocess', 'none', '--engine', 'cpu'), /zero dimension/);
});

// ---------------------------------------------------------------------------------------------------------------
// Item 2: deeply nested .npy headers

test('item 2: a .npy header with 5,000 nested parentheses is a clean refusal, not a stack overflow', async () => {
  const deep = `{'descr': '<f4', 'fortran_order': False, 'shape': ${'('.repeat(5000)}1${')'.repeat(5000)}, }`;
  const p = await file(npyBytes(deep), '.npy');
  await rejectsInput(() => readNpyHeader(p), /unparseable header dict \(nesting deeper than 32 levels/);
  const deepDict = await file(npyBytes(`${'{'.repeat(100000)}`), '.npy');
  await rejectsInput(() => readNpy(deepDict), /nesting deeper than 32 levels/);
});

// ---------------------------------------------------------------------------------------------------------------
// Item 3: huge headers, huge tensor counts, bounded messages

test('item 3: a 64 MB safetensors header of 1,000,000 empty tensors is refused at once', async () => {
  const entries: string[] = [];
  for (let i = 0; i < 1_000_000; i++) entries.push(`"t${String(i).padStart(7, '0')}":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}`);
  const text = Buffer.from(`{${entries.join(',')}}`);
  assert.ok(text.length > 60e6);
  const p = await file(stBytes(text, Buffer.alloc(0)), '.safetensors');
  // The refusal comes from the length check, before the JSON is parsed.
  await rejectsInput(() => readSafetensorsHeader(p), /absurd header length \d+ bytes \(limit 16777216\)/);
  // Under the size limit but over the tensor limit: refused after parsing, by count.
  const many = Buffer.from(`{${entries.slice(0, 70_000).join(',')}}`);
  const q = await file(stBytes(many, Buffer.alloc(0)), '.safetensors');
  await rejectsInput(() => readSafetensorsHeader(q), /header lists 70000 entries, more than the 65536 tensors/);
});

test('item 3: every message is one bounded line: tensor lists end in "… and N more", long names are cut', async () => {
  const entries: string[] = [];
  for (let i = 0; i < 60_000; i++) entries.push(`"tensor_${i}":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}`);
  const p = await file(stBytes(Buffer.from(`{${entries.join(',')}}`), Buffer.alloc(0)), '.safetensors');
  const h = await readSafetensorsHeader(p);
  assert.equal(h.tensors.length, 60_000);
  const e1 = await rejectsInput(() => findTensor(p, h), /holds 60000 tensors, name one of: tensor_0, .*… and 59990 more/);
  assert.ok(e1.message.length < 500, e1.message);
  await rejectsInput(() => findTensor(p, h, 'nope'), /no tensor named 'nope' \(tensors: .*… and 59990 more\)/);
  const longName = 'n'.repeat(5_000_000);
  const q = await file(stBytes({ [longName]: { dtype: 'F32', shape: [-1], data_offsets: [0, 0] } }, Buffer.alloc(0)), '.safetensors');
  await rejectsInput(() => readSafetensorsHeader(q), /tensor 'n{120}…\(5000000 chars\)': shape must be/);
  // The error type itself bounds and flattens whatever it is given.
  const big = new InputError(`a\nb${'x'.repeat(10_000_000)}tail`);
  assert.ok(big.message.length <= MAX_MESSAGE_CHARS);
  assert.ok(!big.message.includes('\n'));
  assert.match(big.message, /^a\\nbx+ … \[\d+ characters omitted\] … x+tail$/);
  // The table printer used by `info` copes with a million rows (it spread them as arguments before).
  const rows = Array.from({ length: 1_000_000 }, (_, i) => [`t${i}`, 1]);
  assert.equal(table(['name', 'n'], rows).split('\n').length, 1_000_003);
});

test('item 3: CLI compare on a file of 60,000 tensors prints one short line, exit 2', async () => {
  const entries: string[] = [];
  for (let i = 0; i < 60_000; i++) entries.push(`"tensor_${i}":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}`);
  const p = await file(stBytes(Buffer.from(`{${entries.join(',')}}`), Buffer.alloc(0)), '.safetensors');
  const r = await cli('compare', p, p, '--metric', 'cka', '--preprocess', 'none', '--engine', 'ref');
  assertCliRefusal(r, /holds 60000 tensors, name one of: .*… and 59990 more/);
  assert.ok(r.stderr.length < 600, `${r.stderr.length} characters`);
});

// ---------------------------------------------------------------------------------------------------------------
// Item 4: exact safetensors layout, strict npy descr, strict UTF-8

test('item 4: a safetensors header length one byte short (or long, or trailing data, or a hole) is refused', async () => {
  const header = { x: { dtype: 'F32', shape: [2], data_offsets: [0, 8] } };
  const data = f32le([1.5, -2.25]);
  // Sanity of the builder: the exact file reads back as written (values decoded here with DataView).
  const good = await file(stBytes(header, data), '.safetensors');
  assert.deepEqual(Array.from((await readTensor(good, 'x')).data), [1.5, -2.25]);
  // The header above is padded with spaces, so one byte less still parses as JSON; the data then starts one byte early.
  assert.ok(JSON.stringify(header).length % 8 !== 0, 'the builder must have padded the header');
  const short = await file(stBytes(header, data, -1), '.safetensors');
  await rejectsInput(() => readTensor(short, 'x'), /data_offsets end at byte 8 of the data area but it holds 9 bytes \(header length \d+\): the header length or the offsets are wrong/);
  const trailing = await file(stBytes(header, Buffer.concat([data, Buffer.alloc(4)])), '.safetensors');
  await rejectsInput(() => readSafetensorsHeader(trailing), /end at byte 8 of the data area but it holds 12 bytes/);
  const hole = { a: { dtype: 'F32', shape: [1], data_offsets: [0, 4] }, b: { dtype: 'F32', shape: [1], data_offsets: [8, 12] } };
  const withHole = await file(stBytes(hole, Buffer.alloc(12)), '.safetensors');
  await rejectsInput(() => readSafetensorsHeader(withHole), /bytes \[4, 8\) of the data area belong to no tensor \(tensor 'b' starts at 8\)/);
  const lead = await file(Buffer.concat([stBytes(Buffer.from(` ${JSON.stringify(header)}`), data)]), '.safetensors');
  await rejectsInput(() => readSafetensorsHeader(lead), /expected a JSON object starting at byte 8/);
});

test("item 4: .npy descr is parsed like numpy: '<f\\4' is '<f' + chr(4), refused; unknown keys are refused", async () => {
  const data = f32le([1, 2]);
  const octal = await file(npyBytes("{'descr': '<f\\4', 'fortran_order': False, 'shape': (2,), }", data), '.npy');
  const e = await rejectsInput(() => readNpy(octal), /unsupported dtype '<f.'/);
  assert.ok(e.message.includes(`'<f${String.fromCharCode(4)}'`), e.message);
  const hex = await file(npyBytes("{'descr': '<f\\x34', 'fortran_order': False, 'shape': (2,), }", data), '.npy');
  // '\x34' is '4': numpy reads '<f4', and so must we.
  assert.deepEqual(Array.from((await readNpy(hex)).data), [1, 2]);
  const extra = await file(npyBytes("{'descr': '<f4', 'fortran_order': False, 'shape': (2,), 'x': 1, }", data), '.npy');
  await rejectsInput(() => readNpy(extra), /header dict has unexpected key\(s\) 'x'/);
  // Python's literal rules, as numpy reads them: a list is not a tuple, (2) is the number 2, 02 is a syntax error,
  // U+00A0 is not whitespace. (The list case was found by the fuzz harness.)
  for (const [shape, pattern] of [
    ['[2]', /'shape' must be a tuple/],
    ['(2)', /'shape' must be a tuple/],
    ['(02,)', /unparseable header dict/],
    ['\u00a0(2,)', /unparseable header dict/],
  ] as const) {
    const p = await file(npyBytes(`{'descr': '<f4', 'fortran_order': False, 'shape': ${shape}, }`, data), '.npy');
    await rejectsInput(() => readNpy(p), pattern);
  }
});

test('item 4: invalid UTF-8 in a safetensors header or a .npy 3.0 header is refused', async () => {
  const name = Buffer.from([0x22, 0x61, 0xff, 0xfe, 0x22]); // "a\xff\xfe"
  const text = Buffer.concat([Buffer.from('{'), name, Buffer.from(':{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}')]);
  const p = await file(stBytes(text, f32le([1])), '.safetensors');
  await rejectsInput(() => readSafetensorsHeader(p), /header is not valid UTF-8/);
  const npyText = Buffer.concat([Buffer.from("{'descr': '<f4', 'fortran_order': False, 'shape': (1,), '"), Buffer.from([0xc3, 0x28]), Buffer.from("': 1}")]);
  const prefix = Buffer.from([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 3, 0, 0, 0, 0, 0]);
  const body = Buffer.concat([npyText, Buffer.alloc((64 - ((12 + npyText.length + 1) % 64)) % 64, 0x20), Buffer.from('\n')]);
  prefix.writeUInt32LE(body.length, 8);
  const q = await file(Buffer.concat([prefix, body, f32le([1])]), '.npy');
  await rejectsInput(() => readNpy(q), /header is not valid UTF-8/);
});

// ---------------------------------------------------------------------------------------------------------------
// Item 5: NaN / Inf in capture shards

test('item 5: every capture read refuses NaN/Inf, naming file, layer/target, sample and token', async () => {
  // Second batch (samples 6..11), layer 'blocks.0.out' [6, 2, 4]: index 1·8 + 1·4 + 3 = sample 7, token 1, dim 3.
  const dir = await makeCapture({ layer: 'blocks.0.out', index: 1 * 8 + 1 * 4 + 3, value: Infinity });
  const c = await openCapture(dir);
  await c.readLayer('embed');
  await rejectsInput(
    () => c.readLayer('blocks.0.out'),
    /layers\/001\/00001\.safetensors: tensor 'hidden': non-finite value Infinity at sample 7 \(shard row 1\), token 1, dim 3 of layer 'blocks\.0\.out'/,
  );
  await rejectsInput(() => c.readLayer('blocks.0.out', { start: 6, count: 6 }), /sample 7 \(shard row 1\), token 1/);
  const opts = { engine: new RefEngine(), metrics: ['cknna' as const], k: 3, preprocess: 'prh' as const, tokenMode: 'mean' as const };
  await rejectsInput(() => runLayerwise(dir, opts), /00001\.safetensors: .*non-finite value Infinity at sample 7/);
  const t = await makeCapture({ target: 'clip', index: 2 * 3 + 1, value: NaN });
  await rejectsInput(() => runLayerwise(t, opts), /targets\/clip\/00001\.safetensors: tensor 'features': non-finite value NaN at sample 8 \(shard row 2\), token 0, dim 1 of target 'clip'/);
  // A NaN in a target file given as NAME=PATH is refused too.
  const nanTarget = await file(npyBytes("{'descr': '<f4', 'fortran_order': False, 'shape': (12, 1), }", f32le([...Array(5).fill(1), NaN, ...Array(6).fill(1)])), '.npy');
  const ok = await makeCapture();
  await rejectsInput(() => runLayerwise(ok, { ...opts, targets: [{ name: 'f', path: nanTarget }] }), /target f: non-finite value NaN at sample 5, dim 0/);
  assert.deepEqual(await validateCapture(ok, { checkValues: true }), []);
});

test('item 5: CLI validate checks values by default; layerwise exits 2 naming the file', async () => {
  const dir = await makeCapture({ layer: 'embed', index: 5, value: NaN });
  const v = await cli('validate', dir);
  assert.equal(v.code, 1, v.stdout + v.stderr);
  assert.match(v.stdout, /INVALID .*\n {2}- .*layers\/000\/00001\.safetensors: tensor 'hidden': non-finite value NaN at sample 6 \(shard row 0\), token 1, dim 1/);
  const h = await cli('validate', dir, '--headers-only');
  assert.equal(h.code, 0, h.stdout + h.stderr);
  const usage = await cli('validate', '--help');
  assert.match(usage.stdout, /--headers-only/);
  assertCliRefusal(await cli('layerwise', dir, '--engine', 'ref', '--quiet', '--topk', '3'), /layers\/000\/00001\.safetensors: .*non-finite value NaN at sample 6/);
});

// ---------------------------------------------------------------------------------------------------------------
// Item 6: float32 overflow

/** Linear CKA from its definition with n×n kernels in float64 (the oracle). */
function ckaOracle(A: Float64Array, B: Float64Array, n: number, dA: number, dB: number): number {
  const kernel = (X: Float64Array, d: number) => {
    const K = new Float64Array(n * n);
    for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) for (let c = 0; c < d; c++) K[i * n + j]! += X[i * d + c]! * X[j * d + c]!;
    // H·K·H: subtract row and column means, add the grand mean.
    const rm = new Float64Array(n);
    let g = 0;
    for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) rm[i]! += K[i * n + j]! / n;
    for (let i = 0; i < n; i++) g += rm[i]! / n;
    for (let i = 0; i < n; i++) for (let j = 0; j < n; j++) K[i * n + j] = K[i * n + j]! - rm[i]! - rm[j]! + g;
    return K;
  };
  const K = kernel(A, dA);
  const L = kernel(B, dB);
  let kl = 0;
  let kk = 0;
  let ll = 0;
  for (let i = 0; i < n * n; i++) {
    kl += K[i]! * L[i]!;
    kk += K[i]! * K[i]!;
    ll += L[i]! * L[i]!;
  }
  return kl / (Math.sqrt(kk * ll) + 1e-6);
}

test('item 6: values ≈ 1e19 with --preprocess none: float32 engines refuse, ref matches the float64 oracle', async () => {
  const n = 24;
  const A = randn(n, 6, 1);
  const noise = randn(n, 5, 2);
  const B = { rows: n, cols: 5, data: Float64Array.from(noise.data, (v, i) => v + A.data[Math.floor(i / 5) * 6 + (i % 5)]!) };
  const scaled = (m: typeof A) => ({ rows: m.rows, cols: m.cols, data: Float64Array.from(m.data, (v) => v * 1e19) });
  const [As, Bs] = [scaled(A), scaled(B)];
  const want = ckaOracle(As.data, Bs.data, n, 6, 5);
  assert.ok(want > 0.05 && want < 0.99, `oracle ${want}`);
  const ref = new RefEngine();
  const r = await computeMetric('cka', new Features(As, ref, 'A'), new Features(Bs, ref, 'B'), 10, 'none');
  assert.ok(Math.abs(r.value - want) < 1e-9, `ref ${r.value} vs oracle ${want}`);
  const cpu = await OnnxEngine.create('cpu', 1);
  try {
    await rejectsInput(
      () => computeMetric('cka', new Features(As, cpu, 'A'), new Features(Bs, cpu, 'B'), 10, 'none'),
      /A vs B: centred column norms multiply to .*float32.*the cross product would overflow; use --preprocess l2 or prh, or --engine ref/,
    );
    await rejectsInput(
      () => computeMetric('cknna', new Features(As, cpu, 'A'), new Features(Bs, cpu, 'B'), 5, 'none'),
      /A: squared row norms reach .*float32.*kernel values would overflow/,
    );
    // Just inside the range both paths still compute (values ≈ 1e17: squared norms ≈ 1e35).
    const mid = (m: typeof A) => ({ rows: m.rows, cols: m.cols, data: Float64Array.from(m.data, (v) => v * 1e17) });
    const got = await computeMetric('cka', new Features(mid(A), cpu, 'A'), new Features(mid(B), cpu, 'B'), 10, 'none');
    assert.ok(Math.abs(got.value - ckaOracle(mid(A).data, mid(B).data, n, 6, 5)) < 1e-4, `cpu ${got.value}`);
  } finally {
    await cpu.dispose();
  }
  // float64 overflow (values ≈ 1e160) is caught as well, whatever the engine.
  const huge = (m: typeof A) => ({ rows: m.rows, cols: m.cols, data: Float64Array.from(m.data, (v) => v * 1e160) });
  await rejectsInput(() => computeMetric('cka', new Features(huge(A), ref, 'A'), new Features(huge(B), ref, 'B'), 10, 'none'), /cross product overflowed/);
});
