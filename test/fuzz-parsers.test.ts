/**
 * Fuzz harness for the file parsers (issue 11): generated and mutated .npy files, safetensors files and capture
 * manifests (bit flips, truncations, header edits, huge / zero / negative shapes, every dtype string). Each case must
 * end in one of two ways:
 *   - a clean refusal: an InputError whose message is one line of at most 2,000 characters, or
 *   - the values an independent oracle computes: the oracle below parses the header by the format's rules
 *     (its own small parsers, not the library's) and decodes the data bytes itself with DataView.
 * A file the oracle finds valid (and holds only dtypes the library decodes) must also be accepted.
 * A sample of the files also goes through the CLI (`info`), which must exit 0, or 2 with one line.
 *
 * Runs: FUZZ_RUNS (default 1000) cases per parser, each parser stopped after FUZZ_TIME_MS (default 60 s) whatever
 * the count, with the seed printed (FUZZ_SEED replays a run). Counts are printed per parser; FUZZ_DEBUG=1 also
 * prints why each .npy case was refused, to check that the generators still reach the code they aim at.
 * A parser that hangs (a synchronous loop) cannot be interrupted from here: the run's own time limit catches it.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import fc from 'fast-check';
import { InputError } from '../src/core/errors.js';
import { openCapture, type Capture } from '../src/store/capture.js';
import { readNpy } from '../src/store/npy.js';
import { readSafetensorsHeader, readTensor } from '../src/store/safetensors.js';

const root = dirname(dirname(fileURLToPath(import.meta.url)));
const RUNS = Number(process.env.FUZZ_RUNS ?? 1000);
const TIME_MS = Number(process.env.FUZZ_TIME_MS ?? 60_000);
const SEED = process.env.FUZZ_SEED === undefined ? (Date.now() ^ (process.pid << 8)) | 0 : Number(process.env.FUZZ_SEED);
/** Every Nth case also goes through the CLI. */
const CLI_EVERY = 25;
const MAX_MESSAGE_CHARS = 2000;

const tmp = await mkdtemp(join(tmpdir(), 'vl-fuzz-'));
test.after(() => rm(tmp, { recursive: true, force: true }));
let fileCounter = 0;

interface Counts {
  generated: number;
  accepted: number;
  refused: number;
  failing: number;
  cliRuns: number;
}
const newCounts = (): Counts => ({ generated: 0, accepted: 0, refused: 0, failing: 0, cliRuns: 0 });

function report(name: string, c: Counts): void {
  console.log(
    `fuzz ${name}: seed=${SEED} generated=${c.generated} accepted=${c.accepted} refused=${c.refused} failing=${c.failing} cli_sample=${c.cliRuns}`,
  );
}

/** A clean refusal: the project's user-facing error, one line, bounded. Anything else fails the case. */
function assertCleanRefusal(err: unknown): void {
  if (!(err instanceof InputError)) throw new Error(`not a clean refusal: ${(err as Error)?.stack ?? String(err)}`);
  assert.ok(!err.message.includes('\n') && !err.message.includes('\r'), `multi-line message: ${err.message.slice(0, 300)}`);
  assert.ok(err.message.length <= MAX_MESSAGE_CHARS, `message of ${err.message.length} characters`);
}

/** Runs the property; counts a thrown assertion as failing and rethrows so fast-check shrinks and reports it. */
async function runFuzz<T>(name: string, arb: fc.Arbitrary<T>, counts: Counts, check: (value: T) => Promise<void>): Promise<void> {
  try {
    await fc.assert(
      fc.asyncProperty(arb, async (v) => {
        counts.generated++;
        try {
          await check(v);
        } catch (err) {
          counts.failing++;
          throw err;
        }
      }),
      { numRuns: RUNS, seed: SEED, interruptAfterTimeLimit: TIME_MS, markInterruptAsFailure: false, endOnFailure: true, includeErrorInReport: true },
    );
  } finally {
    report(name, counts);
  }
  assert.ok(counts.generated >= Math.min(RUNS, 1000), `${name}: only ${counts.generated} cases ran within ${TIME_MS} ms`);
}

async function writeCase(bytes: Uint8Array, ext: string): Promise<string> {
  const p = join(tmp, `case${fileCounter++}${ext}`);
  await writeFile(p, bytes);
  return p;
}

/** CLI sample: one child process runs `info` in-process on every path, so the sample costs one start-up. */
async function cliSample(paths: string[]): Promise<{ path: string; code: number; stderr: string }[]> {
  if (paths.length === 0) return [];
  const script = `
    import { main } from ${JSON.stringify(join(root, 'cli', 'main.ts'))};
    const paths = JSON.parse(process.argv[1]);
    const out = [];
    const origOut = process.stdout.write.bind(process.stdout);
    const origErr = process.stderr.write.bind(process.stderr);
    for (const path of paths) {
      let stderr = '';
      process.stdout.write = () => true;
      process.stderr.write = (chunk) => { stderr += String(chunk); return true; };
      let code;
      try { code = await main(['info', path]); } catch (err) { code = 'threw: ' + (err && err.stack || err); }
      process.stdout.write = origOut;
      process.stderr.write = origErr;
      out.push({ path, code, stderr });
    }
    origOut(JSON.stringify(out));
  `;
  const { stdout } = await promisify(execFile)(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script, JSON.stringify(paths)], {
    cwd: root,
    maxBuffer: 64 * 2 ** 20,
  });
  return JSON.parse(stdout);
}

function assertCliOutcomes(results: { path: string; code: number | string; stderr: string }[], accepted: Set<string>): void {
  for (const r of results) {
    if (accepted.has(r.path)) {
      assert.equal(r.code, 0, `info on an accepted file exited ${r.code}: ${r.stderr.slice(0, 300)}`);
      continue;
    }
    assert.equal(r.code, 2, `info on a refused file: exit ${r.code}: ${r.stderr.slice(0, 500)}`);
    assert.equal(r.stderr.trimEnd().split('\n').length, 1, `one line: ${r.stderr.slice(0, 500)}`);
    assert.ok(r.stderr.length <= MAX_MESSAGE_CHARS + 100, `stderr of ${r.stderr.length} characters`);
  }
}

// ---------------------------------------------------------------------------------------------------------------
// The oracle's own decoding: IEEE formulas written out, DataView for the byte order.

function halfBitsToNumber(h: number): number {
  const s = h & 0x8000 ? -1 : 1;
  const e = (h >> 10) & 0x1f;
  const m = h & 0x3ff;
  if (e === 0) return s * m * 2 ** -24;
  if (e === 31) return m ? NaN : s * Infinity;
  return s * (1 + m / 1024) * 2 ** (e - 15);
}

type OracleDtype = 'f16' | 'bf16' | 'f32' | 'f64';
const ORACLE_SIZE: Record<OracleDtype, number> = { f16: 2, bf16: 2, f32: 4, f64: 8 };

function oracleDecode(bytes: Uint8Array, offset: number, count: number, dtype: OracleDtype, little: boolean): number[] {
  const dv = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const out: number[] = [];
  const size = ORACLE_SIZE[dtype];
  for (let i = 0; i < count; i++) {
    const at = offset + i * size;
    if (dtype === 'f16') out.push(halfBitsToNumber(dv.getUint16(at, little)));
    else if (dtype === 'bf16') {
      const tmp = new DataView(new ArrayBuffer(4));
      tmp.setUint32(0, dv.getUint16(at, little) << 16);
      out.push(tmp.getFloat32(0));
    } else if (dtype === 'f32') out.push(dv.getFloat32(at, little));
    else out.push(dv.getFloat64(at, little));
  }
  return out;
}

/** Values equal as numbers, NaN equal to NaN (the sign and payload of a NaN need not survive). */
function assertSameValues(got: ArrayLike<number>, want: number[], what: string): void {
  assert.equal(got.length, want.length, `${what}: ${got.length} values, oracle ${want.length}`);
  for (let i = 0; i < want.length; i++) {
    const g = got[i]!;
    const w = want[i]!;
    if (!(Object.is(g, w) || (Number.isNaN(g) && Number.isNaN(w)) || g === w)) assert.fail(`${what}: value ${i} is ${g}, oracle ${w}`);
  }
}

/** null most of the time (1 in `freq` cases the value): mutations stay rare enough that many files remain valid. */
function rarely<T>(arb: fc.Arbitrary<T>, options: { freq: number }): fc.Arbitrary<T | null> {
  return fc.oneof({ weight: options.freq - 1, arbitrary: fc.constant(null) }, { weight: 1, arbitrary: arb });
}

function product(shape: number[]): number {
  return shape.reduce((a, b) => a * b, 1);
}

// ---------------------------------------------------------------------------------------------------------------
// Byte-level mutations shared by the formats.

type Mutation =
  | { kind: 'flip'; at: number; bit: number }
  | { kind: 'truncate'; at: number }
  | { kind: 'append'; bytes: Uint8Array }
  | { kind: 'set'; at: number; byte: number };

const mutationArb: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ kind: fc.constant('flip' as const), at: fc.nat(), bit: fc.integer({ min: 0, max: 7 }) }),
  fc.record({ kind: fc.constant('truncate' as const), at: fc.nat() }),
  fc.record({ kind: fc.constant('append' as const), bytes: fc.uint8Array({ minLength: 1, maxLength: 9 }) }),
  fc.record({ kind: fc.constant('set' as const), at: fc.nat(), byte: fc.integer({ min: 0, max: 255 }) }),
);

function mutate(bytes: Uint8Array, mutations: Mutation[]): Uint8Array {
  let b = Uint8Array.from(bytes);
  for (const m of mutations) {
    if (b.length === 0 && m.kind !== 'append') continue;
    if (m.kind === 'flip') b[m.at % b.length]! ^= 1 << m.bit;
    else if (m.kind === 'set') b[m.at % b.length] = m.byte;
    else if (m.kind === 'truncate') b = b.slice(0, m.at % b.length);
    else b = Uint8Array.from([...b, ...m.bytes]);
  }
  return b;
}

// ---------------------------------------------------------------------------------------------------------------
// .npy

/** Every kind of dtype string: numpy's float codes (some refused here by design), other kinds, and malformed ones. */
const NPY_DESCRS = [
  '<f2', '>f2', '<f4', '>f4', '<f8', '>f8', 'f4', '=f8', '|f2', '<e', 'float32', 'f', 'd', '<f16', '<f3', '>f1',
  '<i4', '<u1', '|b1', '<c8', '<c16', 'O', '<U3', '|S5', 'V8', '<M8[ns]', '', '<<f4', ' <f4', '<f4 ', '<F4',
  '<f\\4', '<f\\x34', '<f\\x3', '\\', '<f4\\', 'f\u00e84',
];
const SHAPE_TEXTS = [
  '(1000000000000000, 0)', '(1000000, 0)', '(0, 7)', '(0,)', '()', '(-1, 2)', '(2, -3)', '(1099511627776,)',
  '(9007199254740993,)', '(18446744073709551616, 1)', '(1.5,)', '(None,)', '((1,),)', '[2, 3]', '(2 3)', '(,)',
  `${'('.repeat(3000)}1${')'.repeat(3000)}`, '(1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1)',
  '(True, 2)', '(0x10,)', '(1_0,)', '(3L, 2L)',
];

interface NpyCase {
  descr: string;
  descrQuote: "'" | '"';
  fortran: boolean;
  fortranText?: string;
  shape: number[];
  shapeText?: string;
  keyOrder: number[];
  extraKey: boolean;
  dropKey: number | null;
  major: 1 | 2 | 3;
  spaces: string;
  data: Uint8Array;
  headerLenDelta: number;
  mutations: Mutation[];
}

const npyArb: fc.Arbitrary<NpyCase> = fc
  .record({
    descr: fc.oneof({ weight: 3, arbitrary: fc.constantFrom('<f2', '>f2', '<f4', '>f4', '<f8', '>f8', 'f4', '=f8', '|f2') }, { weight: 1, arbitrary: fc.constantFrom(...NPY_DESCRS) }),
    descrQuote: fc.constantFrom("'" as const, '"' as const),
    fortran: fc.boolean(),
    fortranText: rarely(fc.constantFrom('0', '1', 'None', "'False'", 'false', 'True'), { freq: 16 }),
    shape: fc.array(fc.integer({ min: 0, max: 4 }), { maxLength: 3 }),
    shapeText: rarely(fc.constantFrom(...SHAPE_TEXTS), { freq: 6 }),
    keyOrder: fc.shuffledSubarray([0, 1, 2], { minLength: 3, maxLength: 3 }),
    extraKey: fc.oneof({ weight: 15, arbitrary: fc.constant(false) }, { weight: 1, arbitrary: fc.constant(true) }),
    dropKey: rarely(fc.integer({ min: 0, max: 2 }), { freq: 24 }),
    major: fc.constantFrom(1 as const, 1 as const, 2 as const, 3 as const),
    spaces: fc.oneof({ weight: 12, arbitrary: fc.constantFrom('', ' ', '  ', '\t', '\n ') }, { weight: 1, arbitrary: fc.constantFrom('\u00a0', '\v', '\u2028') }),
    dataSeed: fc.uint8Array({ minLength: 0, maxLength: 64 * 8 }),
    headerLenDelta: fc.oneof({ weight: 12, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.integer({ min: -3, max: 3 }) }),
    mutations: fc.oneof({ weight: 2, arbitrary: fc.constant([] as Mutation[]) }, { weight: 1, arbitrary: fc.array(mutationArb, { minLength: 1, maxLength: 3 }) }),
  })
  .map(({ dataSeed, ...r }) => {
    // Data of exactly the right length for the declared float dtype (any bytes are valid floats).
    const m = /^[<>=|]?f([248])$/.exec(r.descr);
    const size = m ? Number(m[1]) : 4;
    const n = product(r.shape) * size;
    const data = new Uint8Array(n);
    for (let i = 0; i < n; i++) data[i] = dataSeed.length ? dataSeed[i % dataSeed.length]! ^ (i * 31) : i * 7;
    return { ...r, fortranText: r.fortranText ?? undefined, shapeText: r.shapeText ?? undefined, dropKey: r.dropKey ?? null, data };
  });

function pyTuple(shape: number[]): string {
  return shape.length === 1 ? `(${shape[0]},)` : `(${shape.join(', ')})`;
}

function npyFileBytes(c: NpyCase): Uint8Array {
  const q = c.descrQuote;
  const entries = [
    `${q}descr${q}:${c.spaces} ${q}${c.descr}${q}`,
    `'fortran_order': ${c.fortranText ?? (c.fortran ? 'True' : 'False')}`,
    `'shape': ${c.shapeText ?? pyTuple(c.shape)}`,
  ];
  const ordered = c.keyOrder.filter((i) => i !== c.dropKey).map((i) => entries[i]!);
  if (c.extraKey) ordered.push("'extra': 1");
  const dict = `{${ordered.join(', ')}, }`;
  const enc = (s: string) => (c.major === 3 ? Buffer.from(s, 'utf8') : Buffer.from(s, 'latin1'));
  const lenBytes = c.major === 1 ? 2 : 4;
  let text = enc(dict);
  if (c.major === 1 && text.length > 60000) return Uint8Array.from([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59, 1, 0, 0xff, 0xff]); // cannot hold it
  text = Buffer.concat([text, Buffer.alloc((64 - ((8 + lenBytes + text.length + 1) % 64)) % 64, 0x20), Buffer.from('\n')]);
  const prefix = Buffer.alloc(8 + lenBytes);
  Buffer.from([0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59]).copy(prefix);
  prefix[6] = c.major;
  const len = Math.max(0, text.length + c.headerLenDelta);
  if (c.major === 1) prefix.writeUInt16LE(Math.min(len, 0xffff), 8);
  else prefix.writeUInt32LE(len, 8);
  return mutate(Buffer.concat([prefix, text, c.data]), c.mutations);
}

interface NpyOracle {
  dtype: OracleDtype;
  little: boolean;
  fortran: boolean;
  shape: number[];
  dataOffset: number;
  /** numpy accepts the file, but with a dtype this library refuses by design (e.g. '<e', 'float32'). */
  foreignDtype?: boolean;
}

const PY_WS = '[ \\t\\n\\r\\f]*';

/** The oracle's reading of a .npy header: a strict grammar for numpy's dict, built from regular expressions. */
function npyOracle(bytes: Uint8Array): NpyOracle | string {
  const b = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (b.length < 10 || b.subarray(0, 6).toString('latin1') !== '\x93NUMPY') return 'magic';
  const major = b[6]!;
  if (![1, 2, 3].includes(major) || b[7] !== 0) return 'version';
  const lenBytes = major === 1 ? 2 : 4;
  if (b.length < 8 + lenBytes) return 'short';
  const hlen = major === 1 ? b.readUInt16LE(8) : b.readUInt32LE(8);
  const start = 8 + lenBytes;
  if (start + hlen > b.length) return 'header past end';
  let text: string;
  try {
    text = major === 3 ? new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(b.subarray(start, start + hlen)) : b.subarray(start, start + hlen).toString('latin1');
  } catch {
    return 'utf8';
  }
  const str = `(?:'((?:[^'\\\\\\n]|\\\\x[0-9a-fA-F]{2})*)'|"((?:[^"\\\\\\n]|\\\\x[0-9a-fA-F]{2})*)")`;
  const entry = new RegExp(`${PY_WS}${str}${PY_WS}:${PY_WS}`, 'y');
  if (!new RegExp(`^${PY_WS}\\{`).test(text)) return 'not a dict';
  let pos = text.indexOf('{') + 1;
  const dict: Record<string, string> = {};
  const unescape = (s: string) => s.replace(/\\x([0-9a-fA-F]{2})/g, (_, h: string) => String.fromCharCode(parseInt(h, 16)));
  for (;;) {
    const close = new RegExp(`${PY_WS}\\}${PY_WS}$`, 'y');
    close.lastIndex = pos;
    if (close.test(text)) break;
    entry.lastIndex = pos;
    const m = entry.exec(text);
    if (!m) return 'entry';
    const key = unescape(m[1] ?? m[2]!);
    pos = entry.lastIndex;
    // Python 3 integer literals; numpy strips Python 2's 3L from 1.0/2.0 headers before evaluating them.
    const int = `[-+]?(?:0+|[1-9][0-9]*)${major < 3 ? 'L?' : ''}`;
    const value = new RegExp(`(${str}|True|False|\\(${PY_WS}(?:${int}${PY_WS},${PY_WS})*(?:${int}${PY_WS})?\\))${PY_WS}(,|(?=\\}))`, 'y');
    value.lastIndex = pos;
    const v = value.exec(text);
    if (!v) return 'value';
    // A repeated key: Python keeps the last value, like this assignment.
    dict[key] = v[1]!;
    pos = value.lastIndex;
  }
  const keys = Object.keys(dict).sort().join();
  if (keys !== 'descr,fortran_order,shape') return 'keys';
  const descrLit = /^(?:'(.*)'|"(.*)")$/s.exec(dict.descr!);
  if (!descrLit) return 'descr not a string';
  const descr = unescape(descrLit[1] ?? descrLit[2]!);
  if (dict.fortran_order !== 'True' && dict.fortran_order !== 'False') return 'fortran_order';
  if (!dict.shape!.startsWith('(')) return 'shape';
  const dims = dict.shape!.slice(1, -1).split(',').map((s) => s.trim()).filter((s) => s !== '');
  // Python: (3) is an int, not a tuple; one element needs its trailing comma.
  if (dims.length === 1 && !/,/.test(dict.shape!)) return 'shape is not a tuple';
  const shape = dims.map((d) => Number(d.replace('L', '')));
  if (!shape.every((d) => Number.isSafeInteger(d) && d >= 0)) return 'shape not non-negative safe integers';
  if (shape.length > 64) return 'too many dimensions';
  const fm = /^([<>=|]?)f([248])$/.exec(descr);
  const foreign = !fm && ['<e', 'float32', 'f', 'd'].includes(descr);
  if (!fm && !foreign) return `dtype ${descr}`;
  const dtype = ({ 2: 'f16', 4: 'f32', 8: 'f64' } as const)[Number(fm?.[2] ?? 4) as 2 | 4 | 8];
  const total = product(shape) * ORACLE_SIZE[dtype];
  if (b.length - start - hlen !== total) return 'data length';
  return { dtype, little: fm?.[1] !== '>', fortran: dict.fortran_order === 'True', shape, dataOffset: start + hlen, ...(foreign ? { foreignDtype: true } : {}) };
}

/** C-order values of a Fortran-order buffer, by the index formula. */
function fortranToCOracle(values: number[], shape: number[]): number[] {
  const out: number[] = new Array(values.length);
  const idx = new Array(shape.length).fill(0);
  for (let o = 0; o < values.length; o++) {
    let f = 0;
    let stride = 1;
    for (let k = 0; k < shape.length; k++) {
      f += idx[k] * stride;
      stride *= shape[k]!;
    }
    out[o] = values[f]!;
    for (let k = shape.length - 1; k >= 0; k--) {
      if (++idx[k] < shape[k]!) break;
      idx[k] = 0;
    }
  }
  return out;
}

test(`fuzz .npy: ${RUNS} generated and mutated files, each refused cleanly or read as the oracle decodes it`, async () => {
  const counts = newCounts();
  const sample: string[] = [];
  const accepted = new Set<string>();
  await runFuzz('npy', npyArb, counts, async (c) => {
    const bytes = npyFileBytes(c);
    const path = await writeCase(bytes, '.npy');
    const oracle = npyOracle(bytes);
    let got;
    try {
      got = await readNpy(path);
    } catch (err) {
      assertCleanRefusal(err);
      counts.refused++;
      if (process.env.FUZZ_DEBUG) console.log('DBG', (err as Error).message.slice(0, 200), '|', oracle);
      if (typeof oracle !== 'string' && !oracle.foreignDtype) assert.fail(`refused a file the oracle reads (${(err as Error).message})`);
      if (counts.generated % CLI_EVERY === 0) sample.push(path);
      return;
    }
    if (typeof oracle === 'string') assert.fail(`accepted a file the oracle refuses (${oracle}): header ${JSON.stringify(Buffer.from(bytes).subarray(0, 200).toString('latin1'))}`);
    assert.ok(!oracle.foreignDtype, 'accepted a dtype outside its documented set');
    assert.deepEqual(got.shape, oracle.shape);
    let want = oracleDecode(bytes, oracle.dataOffset, product(oracle.shape), oracle.dtype, oracle.little);
    if (oracle.fortran) want = fortranToCOracle(want, oracle.shape);
    // f16 is returned as float32, f32 as float32, f64 as float64: all exact, so plain equality holds.
    assertSameValues(got.data, want, 'npy values');
    counts.accepted++;
    if (counts.generated % CLI_EVERY === 0) {
      sample.push(path);
      accepted.add(path);
    }
  });
  const results = await cliSample(sample);
  counts.cliRuns = results.length;
  assertCliOutcomes(results, accepted);
  report('npy (with CLI sample)', counts);
});

// ---------------------------------------------------------------------------------------------------------------
// safetensors

const ST_DTYPES = ['F16', 'BF16', 'F32', 'F64', 'I64', 'U8', 'BOOL', 'I32', 'F8_E4M3', 'C64'];
const ST_ITEM: Record<string, number> = { F16: 2, BF16: 2, F32: 4, F64: 8, I64: 8, U8: 1, BOOL: 1, I32: 4, F8_E4M3: 1, C64: 8 };
const ST_FLOAT: Record<string, OracleDtype> = { F16: 'f16', BF16: 'bf16', F32: 'f32', F64: 'f64' };
const ST_BAD_DTYPES = ['f32', 'F32 ', 'FLOAT', '', 'F4', 'X', '\u0000', 'F16\u0000'];
const ST_BAD_SHAPES: unknown[] = [[2 ** 40, 0], [1e15, 0], [-1], [1.5], ['2'], [2 ** 53 + 2], null, 'x', [2 ** 31, 2 ** 31, 2 ** 31], [0, -0]];
const ST_BAD_OFFSETS: unknown[] = [[0, 0], [-1, 3], [5, 2], [0, 2 ** 60], [0], 'a', [0.5, 1], null];

interface StTensor {
  name: string;
  dtype: string;
  shape: number[];
}

interface StCase {
  tensors: StTensor[];
  metadata: Record<string, unknown> | null | undefined;
  data: Uint8Array;
  edit: { tensor: number; field: 'dtype' | 'shape' | 'data_offsets' | 'drop' | 'notObject'; value: unknown } | null;
  offsetShift: { tensor: number; by: number } | null;
  leading: string;
  headerLenDelta: number;
  invalidUtf8At: number | null;
  mutations: Mutation[];
}

const stArb: fc.Arbitrary<StCase> = fc
  .record({
    tensors: fc.uniqueArray(
      fc.record({
        name: fc.oneof(fc.string({ minLength: 1, maxLength: 8 }), fc.string({ unit: 'grapheme', minLength: 1, maxLength: 4 }), fc.constantFrom('x', '__metadata__', 'a\nb')),
        dtype: fc.oneof({ weight: 4, arbitrary: fc.constantFrom('F16', 'BF16', 'F32', 'F64') }, { weight: 1, arbitrary: fc.constantFrom(...ST_DTYPES) }),
        shape: fc.array(fc.integer({ min: 0, max: 4 }), { maxLength: 3 }),
      }),
      { maxLength: 4, selector: (t) => t.name },
    ),
    metadata: rarely(fc.oneof(fc.dictionary(fc.string({ maxLength: 4 }), fc.string({ maxLength: 4 }), { maxKeys: 2 }), fc.constant({ n: 3 } as Record<string, unknown>)), { freq: 4 }),
    dataSeed: fc.uint8Array({ maxLength: 128 }),
    edit: rarely(
      fc.record({
        tensor: fc.nat(),
        field: fc.constantFrom('dtype' as const, 'shape' as const, 'data_offsets' as const, 'drop' as const, 'notObject' as const),
        pick: fc.nat(),
      }),
      { freq: 6 },
    ),
    offsetShift: rarely(fc.record({ tensor: fc.nat(), by: fc.constantFrom(-1, 1, 2, -8, 8) }), { freq: 12 }),
    leading: fc.oneof({ weight: 12, arbitrary: fc.constant('') }, { weight: 1, arbitrary: fc.constantFrom(' ', '\n', '\ufeff') }),
    headerLenDelta: fc.oneof({ weight: 12, arbitrary: fc.constant(0) }, { weight: 1, arbitrary: fc.constantFrom(-1, 1, -2, 8, -8) }),
    invalidUtf8At: rarely(fc.nat(), { freq: 16 }),
    mutations: fc.oneof({ weight: 2, arbitrary: fc.constant([] as Mutation[]) }, { weight: 1, arbitrary: fc.array(mutationArb, { minLength: 1, maxLength: 3 }) }),
  })
  .map(({ dataSeed, edit, ...r }) => {
    const bytes = r.tensors.reduce((s, t) => s + product(t.shape) * ST_ITEM[t.dtype]!, 0);
    const data = new Uint8Array(bytes);
    for (let i = 0; i < bytes; i++) data[i] = dataSeed.length ? dataSeed[i % dataSeed.length]! ^ (i * 13) : i;
    let e: StCase['edit'] = null;
    if (edit && r.tensors.length) {
      const pool = edit.field === 'dtype' ? [...ST_BAD_DTYPES, ...ST_DTYPES] : edit.field === 'shape' ? ST_BAD_SHAPES : edit.field === 'data_offsets' ? ST_BAD_OFFSETS : [null];
      e = { tensor: edit.tensor % r.tensors.length, field: edit.field, value: pool[edit.pick % pool.length] };
    }
    return {
      ...r,
      metadata: r.metadata ?? undefined,
      data,
      edit: e,
      offsetShift: r.offsetShift && r.tensors.length ? { tensor: r.offsetShift.tensor % r.tensors.length, by: r.offsetShift.by } : null,
      invalidUtf8At: r.invalidUtf8At ?? null,
    };
  });

function stFileBytes(c: StCase): Uint8Array {
  const header: Record<string, unknown> = {};
  if (c.metadata !== undefined) header.__metadata__ = c.metadata;
  let cursor = 0;
  c.tensors.forEach((t, i) => {
    const size = product(t.shape) * ST_ITEM[t.dtype]!;
    let offsets: unknown = [cursor, cursor + size];
    if (c.offsetShift?.tensor === i) offsets = [cursor + c.offsetShift.by, cursor + size + c.offsetShift.by];
    let entry: unknown = { dtype: t.dtype, shape: t.shape, data_offsets: offsets };
    if (c.edit?.tensor === i) {
      if (c.edit.field === 'drop') entry = { dtype: t.dtype, shape: t.shape };
      else if (c.edit.field === 'notObject') entry = 3;
      else (entry as Record<string, unknown>)[c.edit.field] = c.edit.value;
    }
    header[t.name] = entry;
    cursor += size;
  });
  let text = Buffer.from(c.leading + JSON.stringify(header), 'utf8');
  if (c.invalidUtf8At !== null && text.length > 2) {
    const at = 1 + (c.invalidUtf8At % (text.length - 2));
    text = Buffer.concat([text.subarray(0, at), Buffer.from([0xff]), text.subarray(at)]);
  }
  text = Buffer.concat([text, Buffer.alloc((8 - (text.length % 8)) % 8, 0x20)]);
  const len = Buffer.alloc(8);
  len.writeBigUInt64LE(BigInt(Math.max(0, text.length + c.headerLenDelta)));
  return mutate(Buffer.concat([len, text, c.data]), c.mutations);
}

interface StOracle {
  tensors: { name: string; dtype: string; shape: number[]; begin: number; end: number }[];
}

/** The format's rules as the reference implementation applies them, written independently of the library. */
function stOracle(bytes: Uint8Array): StOracle | string {
  const b = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (b.length < 8) return 'short';
  const n = b.readBigUInt64LE(0);
  if (n > 16n * 2n ** 20n) return 'header too large';
  if (8n + n > BigInt(b.length)) return 'header past end';
  let text: string;
  try {
    text = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true }).decode(b.subarray(8, 8 + Number(n)));
  } catch {
    return 'utf8';
  }
  if (!text.startsWith('{')) return 'start';
  let json: unknown;
  try {
    json = JSON.parse(text);
  } catch {
    return 'json';
  }
  if (typeof json !== 'object' || json === null || Array.isArray(json)) return 'not object';
  const dataStart = 8 + Number(n);
  const tensors: StOracle['tensors'] = [];
  for (const [name, e] of Object.entries(json as Record<string, unknown>)) {
    if (name === '__metadata__') {
      if (e === null) continue;
      if (typeof e !== 'object' || Array.isArray(e) || !Object.values(e as object).every((v) => typeof v === 'string')) return 'metadata';
      continue;
    }
    if (typeof e !== 'object' || e === null || Array.isArray(e)) return 'entry';
    const { dtype, shape, data_offsets: off } = e as Record<string, unknown>;
    if (typeof dtype !== 'string') return 'dtype';
    if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) return 'shape';
    if (!Array.isArray(off) || off.length !== 2 || !off.every((d) => Number.isSafeInteger(d) && d >= 0) || off[0] > off[1]) return 'offsets';
    const size = ST_ITEM[dtype];
    if (size !== undefined && product(shape) * size !== off[1] - off[0]) return 'size';
    tensors.push({ name, dtype, shape, begin: off[0], end: off[1] });
  }
  tensors.sort((x, y) => x.begin - y.begin || x.end - y.end);
  let covered = 0;
  for (const t of tensors) {
    if (t.begin !== covered) return 'not tiled';
    covered = t.end;
  }
  if (covered !== b.length - dataStart) return 'not tiled to the end';
  return { tensors: tensors.map((t) => ({ ...t, begin: dataStart + t.begin, end: dataStart + t.end })) };
}

test(`fuzz safetensors: ${RUNS} generated and mutated files, each refused cleanly or read as the oracle decodes it`, async () => {
  const counts = newCounts();
  const sample: string[] = [];
  const accepted = new Set<string>();
  await runFuzz('safetensors', stArb, counts, async (c) => {
    const bytes = stFileBytes(c);
    const path = await writeCase(bytes, '.safetensors');
    const oracle = stOracle(bytes);
    const pick = counts.generated % CLI_EVERY === 0;
    let header;
    try {
      header = await readSafetensorsHeader(path);
    } catch (err) {
      assertCleanRefusal(err);
      if (typeof oracle !== 'string') assert.fail(`refused a header the oracle accepts (${(err as Error).message})`);
      counts.refused++;
      if (pick) sample.push(path);
      return;
    }
    if (typeof oracle === 'string') assert.fail(`accepted a file the oracle refuses (${oracle})`);
    assert.deepEqual(
      header.tensors.map((t) => [t.name, t.dtype, t.shape, t.begin, t.end]),
      oracle.tensors.map((t) => [t.name, t.dtype, t.shape, t.begin, t.end]),
    );
    for (const t of oracle.tensors) {
      const float = ST_FLOAT[t.dtype];
      if (!float) {
        // Described by the header but not decodable: readTensor must refuse it by name.
        await assert.rejects(() => readTensor(path, t.name), (err: unknown) => (assertCleanRefusal(err), /not supported/.test((err as Error).message)));
        continue;
      }
      const got = await readTensor(path, t.name);
      assertSameValues(got.data, oracleDecode(bytes, t.begin, product(t.shape), float, true), `tensor ${JSON.stringify(t.name)}`);
    }
    counts.accepted++;
    if (pick) {
      sample.push(path);
      accepted.add(path);
    }
  });
  const results = await cliSample(sample);
  counts.cliRuns = results.length;
  assertCliOutcomes(results, accepted);
  report('safetensors (with CLI sample)', counts);
});

// ---------------------------------------------------------------------------------------------------------------
// Capture manifests: one capture's shards, a mutated manifest.json per case.

const SAMPLES = 6;
const TOKENS = 2;
const LAYERS = [
  { name: 'embed', index: 0, dim: 3 },
  { name: 'blocks.0.out', index: 1, dim: 2 },
];

/** Writes shards by hand (not with the library's writer): [count, tokens, dim] F32, two shards per set. */
async function buildCaptureShards(dir: string): Promise<Record<string, unknown>> {
  const shard = async (file: string, tensor: string, count: number, tokens: number, dim: number, salt: number) => {
    const values = Float32Array.from({ length: count * tokens * dim }, (_, i) => salt + i * 0.25);
    const header = Buffer.from(JSON.stringify({ [tensor]: { dtype: 'F32', shape: [count, tokens, dim], data_offsets: [0, values.byteLength] } }));
    const padded = Buffer.concat([header, Buffer.alloc((8 - (header.length % 8)) % 8, 0x20)]);
    const len = Buffer.alloc(8);
    len.writeBigUInt64LE(BigInt(padded.length));
    await mkdir(dirname(join(dir, file)), { recursive: true });
    await writeFile(join(dir, file), Buffer.concat([len, padded, Buffer.from(values.buffer)]));
  };
  const layers = [];
  for (const [i, l] of LAYERS.entries()) {
    const shards = [];
    for (const [k, [start, count]] of [[0, 4], [4, 2]].entries()) {
      const file = `layers/00${l.index}/0000${k}.safetensors`;
      await shard(file, 'hidden', count!, TOKENS, l.dim, 100 * i + 10 * k);
      shards.push({ file, tensor: 'hidden', start, count });
    }
    layers.push({ ...l, shards });
  }
  await shard('targets/clip/00000.safetensors', 'features', SAMPLES, 1, 4, 7);
  return {
    format: 'viral-lens.capture',
    version: 1,
    model: { name: 'fuzz/model' },
    variant: 'baseline',
    token_layout: { kind: 'image', tokens: TOKENS, source_tokens: TOKENS, grid: [1, 2], pooling: 'none' },
    layers,
    targets: [{ name: 'clip', dim: 4, tokens: 1, shards: [{ file: 'targets/clip/00000.safetensors', tensor: 'features', start: 0, count: SAMPLES }] }],
    samples: { count: SAMPLES, ids: Array.from({ length: SAMPLES }, (_, i) => `s${i}`) },
    labels: { y: [0, 1, 0, 1, 0, 1] },
  };
}

const VALUE_POOL: unknown[] = [
  null, -1, 0, 1, 2, 3, 4, 6, 1.5, 2 ** 53, 1e300, -0, '', 'x', 'embed', 'blocks.0.out', '../x', '/abs', 'a\\b', './x', 'layers//x',
  'manifest.json', 'layers/000/00001.safetensors', 'layers/001/00000.safetensors', 'targets/clip/00000.safetensors', 'hidden', 'features',
  [], {}, true, [0, 0], [1, 2], 'a'.repeat(100_000), 'mean', 'none', 'viral', 'viral-lens.capture',
];

type JsonPath = (string | number)[];

function allPaths(v: unknown, prefix: JsonPath = [], out: JsonPath[] = []): JsonPath[] {
  out.push(prefix);
  if (Array.isArray(v)) v.forEach((x, i) => allPaths(x, [...prefix, i], out));
  else if (v && typeof v === 'object') for (const [k, x] of Object.entries(v)) allPaths(x, [...prefix, k], out);
  return out;
}

interface ManifestEdit {
  path: number;
  op: 'set' | 'delete' | 'duplicate';
  value: number;
}

interface ManifestCase {
  edits: ManifestEdit[];
  textMutations: Mutation[];
}

const manifestArb: fc.Arbitrary<ManifestCase> = fc.record({
  edits: fc.array(fc.record({ path: fc.nat(), op: fc.constantFrom('set' as const, 'set' as const, 'delete' as const, 'duplicate' as const), value: fc.nat() }), {
    maxLength: 3,
  }),
  textMutations: fc.oneof({ weight: 4, arbitrary: fc.constant([] as Mutation[]) }, { weight: 1, arbitrary: fc.array(mutationArb, { minLength: 1, maxLength: 2 }) }),
});

function applyEdits(base: unknown, edits: ManifestEdit[]): unknown {
  const doc = structuredClone(base) as Record<string, unknown>;
  for (const e of edits) {
    const paths = allPaths(doc).filter((p) => p.length > 0);
    const p = paths[e.path % paths.length]!;
    let parent: Record<string | number, unknown> = doc;
    for (const k of p.slice(0, -1)) parent = parent[k] as Record<string | number, unknown>;
    const key = p[p.length - 1]!;
    if (e.op === 'set') parent[key] = structuredClone(VALUE_POOL[e.value % VALUE_POOL.length]);
    else if (e.op === 'delete') {
      if (Array.isArray(parent)) parent.splice(key as number, 1);
      else delete parent[key];
    } else if (Array.isArray(parent)) parent.splice(key as number, 0, structuredClone(parent[key]));
  }
  return doc;
}

/** The oracle's values of a layer/target: the listed shards' bytes decoded here, in manifest order, or a reason. */
async function captureOracle(dir: string, shards: { file: string; tensor: string; start: number; count: number }[], tokens: number, dim: number): Promise<number[] | string> {
  const out: number[] = [];
  for (const s of shards) {
    if (s.count === 0) continue; // holds no sample of the set: readers need not open it
    let bytes: Buffer;
    try {
      bytes = await readFile(join(dir, s.file));
    } catch {
      return `missing ${s.file}`;
    }
    const o = stOracle(bytes);
    if (typeof o === 'string') return o;
    const t = o.tensors.find((x) => x.name === s.tensor);
    if (!t || t.dtype !== 'F32' || t.shape.join() !== [s.count, tokens, dim].join()) return 'shard mismatch';
    out.push(...oracleDecode(bytes, t.begin, s.count * tokens * dim, 'f32', true));
  }
  return out;
}

test(`fuzz capture manifests: ${RUNS} mutated manifest.json files, each refused cleanly or read as the oracle decodes it`, async () => {
  const counts = newCounts();
  const dir = join(tmp, 'capture');
  const base = await buildCaptureShards(dir);
  const sample: string[] = [];
  await runFuzz('manifest', manifestArb, counts, async (c) => {
    const doc = applyEdits(base, c.edits);
    const text = mutate(Buffer.from(JSON.stringify(doc, null, 1)), c.textMutations);
    await writeFile(join(dir, 'manifest.json'), text);
    const pick = counts.generated % CLI_EVERY === 0;
    let capture: Capture;
    try {
      capture = await openCapture(dir);
    } catch (err) {
      assertCleanRefusal(err);
      counts.refused++;
      return;
    }
    // Accepted: every layer and target reads as the oracle decodes its listed shards, or is refused cleanly.
    let allRead = true;
    const m = capture.manifest;
    const sets = [
      ...m.layers.map((l) => ({ read: () => capture.readLayer(l.name), shards: l.shards, tokens: m.token_layout.tokens, dim: l.dim })),
      ...m.targets.map((t) => ({ read: () => capture.readTarget(t.name), shards: t.shards, tokens: t.tokens, dim: t.dim })),
    ];
    for (const s of sets) {
      const want = await captureOracle(dir, s.shards, s.tokens, s.dim);
      try {
        const got = await s.read();
        if (typeof want === 'string') assert.fail(`read a set the oracle refuses (${want})`);
        assertSameValues(got.data, want, 'capture values');
      } catch (err) {
        if (err instanceof assert.AssertionError) throw err;
        assertCleanRefusal(err);
        if (typeof want !== 'string' && want.length > 0) assert.fail(`refused a set the oracle reads (${(err as Error).message})`);
        allRead = false;
      }
    }
    if (allRead) counts.accepted++;
    else counts.refused++;
    if (pick) {
      // The CLI sees this manifest in its own copy of the directory (the next case rewrites this one).
      const copy = join(tmp, `capcli${fileCounter++}`);
      await mkdir(copy);
      await writeFile(join(copy, 'manifest.json'), text);
      sample.push(copy);
    }
  });
  // `info` reads only the manifest (the copies have no shards): it must describe it or refuse it in one line.
  const results = await cliSample(sample);
  counts.cliRuns = results.length;
  for (const r of results) {
    assert.ok(r.code === 0 || r.code === 2, `info exit ${r.code}: ${r.stderr.slice(0, 300)}`);
    if (r.code === 2) {
      assert.equal(r.stderr.trimEnd().split('\n').length, 1, r.stderr.slice(0, 300));
      assert.ok(r.stderr.length <= MAX_MESSAGE_CHARS + 100);
    }
  }
  report('manifest (with CLI sample)', counts);
});
