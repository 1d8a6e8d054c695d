/**
 * The torch engine's file-backed path: compare and layerwise hand the worker where the rows lie (.npy payloads,
 * safetensors tensors, capture shards) instead of the values. Every number must equal the in-heap path (the same
 * engine given the matrices Node read) and the `ref` engine, for every metric and preprocessing, across the dtypes,
 * byte orders and layouts the store reads; NaN/Inf must be named as the in-heap readers name them; and Node must not
 * hold the matrix.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { cp, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { after, before, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { runCheckpoints, runLayerwise, type LayerwiseOptions } from '../analysis/layerwise.js';
import { similarityStats } from '../analysis/stats.js';
import type { Engine } from '../src/engine/index.js';
import { RefEngine } from '../src/engine/ref.js';
import { TorchEngine } from '../src/engine/torch.js';
import type { Matrix } from '../src/core/matrix.js';
import { computeMetric, Features, METRIC_NAMES, PREPROCESS_NAMES, type MetricName, type Preprocess } from '../src/metrics/index.js';
import { CaptureWriter } from '../src/store/capture.js';
import { encodeFloats, type FloatDtype } from '../src/store/dtype.js';
import { npyHeaderBytes } from '../src/store/npy.js';
import { writeSafetensors, type SafetensorsFloatDtype } from '../src/store/safetensors.js';
import { fileFeatures } from '../src/engine/source.js';
import type { TokenMode } from '../src/core/tokens.js';
import { randn, torchPythonOrSkip } from './helpers.js';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const { python, missing } = torchPythonOrSkip(
  'no python with torch found (VIRAL_LENS_PYTHON, /usr/bin/python3, python3; apt-get install python3-torch): torch engine tests skipped',
  'torch engine files: a python with torch is installed under CI',
);
if (python) process.env.VIRAL_LENS_PYTHON = python;

let dir = '';
let torch: TorchEngine;
/** The same worker without the file capability: what every matrix goes through when Node reads it. */
let heapTorch: Engine;
const ref = new RefEngine();

before(async () => {
  if (!python) return;
  dir = await mkdtemp(join(tmpdir(), 'viral-lens-torch-files-'));
  torch = await TorchEngine.create({ device: 'cpu' });
  heapTorch = {
    name: torch.name,
    precision: torch.precision,
    device: torch.device,
    gramTile: (a, s, e, b) => torch.gramTile(a, s, e, b),
    knn: (x, k, o) => torch.knn(x, k, o),
    crossProduct: (a, b) => torch.crossProduct(a, b),
    dispose: async () => {},
  };
});

after(async () => {
  await torch?.dispose();
  if (dir) await rm(dir, { recursive: true, force: true });
});

/** A .npy written byte by byte (header from numpy's rules, values encoded in the asked dtype and byte order). */
async function npy(name: string, m: Matrix, dtype: FloatDtype, littleEndian: boolean, fortran: boolean): Promise<string> {
  const code = { f16: 'f2', f32: 'f4', f64: 'f8', bf16: '' }[dtype];
  const values = fortran ? Float64Array.from({ length: m.rows * m.cols }, (_, i) => m.data[(i % m.rows) * m.cols + Math.floor(i / m.rows)]!) : m.data;
  const path = join(dir, name);
  await writeFile(path, Buffer.concat([npyHeaderBytes(`${littleEndian ? '<' : '>'}${code}`, [m.rows, m.cols], fortran), encodeFloats(values, dtype, littleEndian)]));
  return path;
}

async function safetensors(name: string, m: Matrix, dtype: SafetensorsFloatDtype): Promise<string> {
  const path = join(dir, name);
  // Another tensor first, so the matrix's bytes do not start at the data area's beginning.
  await writeSafetensors(path, [
    { name: 'other', dtype: 'F32', shape: [3], data: new Float32Array([1, 2, 3]) },
    { name: 'feat', dtype, shape: [m.rows, m.cols], data: Float64Array.from(m.data) },
  ]);
  return path;
}

function close(got: number, want: number, what: string, tol = 2e-5): void {
  assert.ok(Number.isNaN(got) ? Number.isNaN(want) : Math.abs(got - want) <= tol, `${what}: ${got} vs ${want} (|Δ| ${Math.abs(got - want)})`);
}

const K = 5;

test('torch engine files: compare on .npy (f2/f4/f8, C/Fortran, both byte orders) and safetensors equals the in-heap path and ref for every metric and preprocessing', { skip: missing }, async () => {
  const n = 72;
  const A = randn(n, 12, 201);
  const noise = randn(n, 12, 202);
  const B = { rows: n, cols: 12, data: Float64Array.from(noise.data, (v, i) => 0.7 * A.data[i]! + v + 3) }; // a common offset: centring matters
  const files: [string, string, { key?: string }][] = [];
  for (const [dtype, le, f] of [
    ['f32', true, false],
    ['f32', false, true],
    ['f64', false, false],
    ['f64', true, true],
    ['f16', false, false],
    ['f16', true, true],
  ] as const) {
    const tag = `${dtype}-${le ? 'le' : 'be'}-${f ? 'F' : 'C'}`;
    files.push([await npy(`A-${tag}.npy`, A, dtype, le, f), await npy(`B-${tag}.npy`, B, dtype, le, f), {}]);
  }
  for (const dtype of ['F32', 'F64', 'BF16', 'F16'] as const) {
    files.push([await safetensors(`A-${dtype}.safetensors`, A, dtype), await safetensors(`B-${dtype}.safetensors`, B, dtype), { key: 'feat' }]);
  }
  for (const [pa, pb, key] of files) {
    for (const prep of PREPROCESS_NAMES) {
      const opts = { preprocess: prep, q: 0.9 };
      const sides = async (engine: Engine) => [
        new Features(await fileFeatures(pa, key, opts, engine), engine, pa),
        new Features(await fileFeatures(pb, key, opts, engine), engine, pb),
      ] as const;
      const [fa, fb] = await sides(torch);
      // The proof that Node holds no copy: the matrices handed to the metrics have no values in this process.
      assert.ok(fa.x.source && fb.x.source, 'file-backed');
      assert.throws(() => fa.x.data, /file-backed/);
      const [ha, hb] = await sides(heapTorch);
      const [ra, rb] = await sides(ref);
      assert.ok(!ha.x.source && !ra.x.source);
      for (const metric of METRIC_NAMES) {
        const got = await computeMetric(metric, fa, fb, K, prep);
        const heap = await computeMetric(metric, ha, hb, K, prep);
        const want = await computeMetric(metric, ra, rb, K, prep);
        const what = `${metric}/${prep} on ${pa.slice(dir.length + 1)}`;
        close(got.value, heap.value, `${what} vs in-heap torch`);
        close(got.value, want.value, `${what} vs ref`);
        assert.equal(got.tied_rows_a, want.tied_rows_a, what);
      }
    }
  }
});

test('torch engine files: permutation nulls and half-sampling intervals (which read the rows back) equal the in-heap path', { skip: missing }, async () => {
  const n = 64;
  const A = randn(n, 10, 211);
  const B = { rows: n, cols: 10, data: Float64Array.from(randn(n, 10, 212).data, (v, i) => 0.8 * A.data[i]! + v) };
  const pa = await npy('stats-A.npy', A, 'f32', true, false);
  const pb = await npy('stats-B.npy', B, 'f32', true, false);
  for (const metric of ['cosine', 'cka', 'cknna'] as const) {
    const run = async (engine: Engine, gramLimit: number) => {
      const a = new Features(await fileFeatures(pa, {}, { preprocess: 'l2' }, engine), engine, 'A');
      const b = new Features(await fileFeatures(pb, {}, { preprocess: 'l2' }, engine), engine, 'B');
      const r = await computeMetric(metric, a, b, 5, 'l2');
      return { r, s: await similarityStats(metric, a, b, 5, r, { permutations: 6, bootstrap: 4, seed: 9, gramLimit }) };
    };
    // gramLimit 0: CKA's large-n branch, which rebuilds Features from rows read back from the worker.
    for (const gramLimit of metric === 'cka' ? [3000, 0] : [3000]) {
      const got = await run(torch, gramLimit);
      const heap = await run(heapTorch, gramLimit);
      for (const key of ['null_mean', 'null_sd', 'p_value', 'ci_low', 'ci_high'] as const) {
        close(got.s[key]!, heap.s[key]!, `${metric} (gramLimit ${gramLimit}) ${key}`);
      }
    }
  }
});

/** Three batches of different storage dtypes: every layer and target is three shards, concatenated by the worker. */
async function makeCapture(name: string, poison?: { shard: number; index: number; value: number }): Promise<string> {
  const capture = join(dir, name);
  const tokens = 3;
  const w = await CaptureWriter.create(capture, {
    model: { name: 'test/model' },
    variant: 'baseline',
    token_layout: { kind: 'image', tokens, source_tokens: tokens, pooling: 'none' },
    layers: [
      { name: 'embed', index: 0, dim: 6 },
      { name: 'blocks.0.out', index: 1, dim: 7 },
    ],
    targets: [
      { name: 'clip', dim: 6, tokens },
      { name: 'pooled', dim: 5, tokens: 1 },
    ],
  });
  let start = 0;
  for (const [b, [count, dtype]] of ([[9, 'F32'], [7, 'BF16'], [8, 'F16']] as const).entries()) {
    const clip = randn(count * tokens, 6, 300 + b);
    const layers: Record<string, Float32Array> = {};
    // Layers follow the target plus noise, so the scores are far from 0 and from each other.
    for (const [i, dim] of [6, 7].entries()) {
      const noise = randn(count * tokens, dim, 310 + 10 * i + b).data;
      layers[i === 0 ? 'embed' : 'blocks.0.out'] = Float32Array.from(noise, (v, j) => v + 1.5 * clip.data[Math.floor(j / dim) * 6 + (j % dim) % 6]! + 0.5);
    }
    if (poison?.shard === b) layers['blocks.0.out']![poison.index] = poison.value;
    const pooled = Float32Array.from(randn(count, 5, 320 + b).data);
    await w.appendBatch({ ids: Array.from({ length: count }, (_, i) => `s${start + i}`), layers, targets: { clip: Float32Array.from(clip.data), pooled } }, { dtype });
    start += count;
  }
  return capture;
}

test('torch engine files: layerwise on a multi-shard capture (per-token, mean, first, row subsets) equals the in-heap path and ref', { skip: missing }, async () => {
  const capture = await makeCapture('cap');
  const metrics = METRIC_NAMES.filter((m) => m !== 'cosine');
  const cases: { tokenMode: TokenMode; maxRows?: number; targets: { name: string }[]; metrics: MetricName[]; layers?: string[] }[] = [
    { tokenMode: 'per-token', targets: [{ name: 'clip' }], metrics },
    { tokenMode: 'per-token', maxRows: 40, targets: [{ name: 'clip' }], metrics },
    { tokenMode: 'mean', targets: [{ name: 'clip' }, { name: 'pooled' }], metrics },
    { tokenMode: 'mean', maxRows: 15, targets: [{ name: 'pooled' }], metrics },
    { tokenMode: 'first', targets: [{ name: 'clip' }], metrics },
    // Paired cosine needs the same width: layer 'embed' and target 'clip' are both 6 wide.
    { tokenMode: 'per-token', targets: [{ name: 'clip' }], metrics: ['cosine'], layers: ['embed'] },
    { tokenMode: 'mean', maxRows: 15, targets: [{ name: 'clip' }], metrics: ['cosine'], layers: ['embed'] },
  ];
  for (const c of cases) {
    for (const prep of PREPROCESS_NAMES as readonly Preprocess[]) {
      const opts = (engine: Engine): LayerwiseOptions => ({ engine, k: 4, preprocess: prep, q: 0.9, seed: 3, ...c });
      const got = await runLayerwise(capture, opts(torch));
      const heap = await runLayerwise(capture, opts(heapTorch));
      const want = await runLayerwise(capture, opts(ref));
      assert.equal(got.length, want.length);
      assert.equal(got.length, (c.layers?.length ?? 2) * c.targets.length * c.metrics.length);
      for (const [i, r] of got.entries()) {
        const what = `${c.tokenMode}${c.maxRows ? ` max ${c.maxRows}` : ''} ${prep} ${r.metric} layer ${r.layer} vs ${r.target}`;
        assert.equal(r.n, want[i]!.n, what);
        assert.equal(r.rows_sampled, want[i]!.rows_sampled, what);
        close(r.value, heap[i]!.value, `${what} vs in-heap torch`);
        close(r.value, want[i]!.value, `${what} vs ref`);
      }
    }
  }
});

test('torch engine files: --target NAME=PATH files (2-D/3-D, .npy/safetensors, a 3-D Fortran .npy read in Node) equal ref; NaN named as before', { skip: missing }, async () => {
  const capture = await makeCapture('cap-targets');
  const samples = 24;
  const pool = await npy('pool.npy', randn(samples, 5, 501), 'f64', false, false);
  const tok = join(dir, 'tok.safetensors');
  await writeSafetensors(tok, [{ name: 'feat', dtype: 'F16', shape: [samples, 3, 4], data: Float32Array.from(randn(samples * 3, 4, 502).data) }]);
  // 3-D Fortran order: element (s, t, c) at s + S·t + S·T·c.
  const f3 = randn(samples * 3, 4, 503);
  const fortran = Float64Array.from({ length: samples * 12 }, (_, i) => f3.data[(i % samples) * 12 + (Math.floor(i / samples) % 3) * 4 + Math.floor(i / (samples * 3))]!);
  const tokF = join(dir, 'tokF.npy');
  await writeFile(tokF, Buffer.concat([npyHeaderBytes('<f8', [samples, 3, 4], true), encodeFloats(fortran, 'f64', true)]));
  for (const [tokenMode, targets] of [
    ['per-token', [{ name: 'tok', path: tok, key: 'feat' }, { name: 'tokF', path: tokF }]],
    ['mean', [{ name: 'pool', path: pool }, { name: 'tok', path: tok, key: 'feat' }]],
  ] as const) {
    const opts = (engine: Engine): LayerwiseOptions => ({ engine, metrics: ['cknna', 'cka', 'unbiased_cka'], k: 4, preprocess: 'prh', tokenMode, targets: [...targets] });
    const got = await runLayerwise(capture, opts(torch));
    const want = await runLayerwise(capture, opts(ref));
    assert.equal(got.length, want.length);
    for (const [i, r] of got.entries()) close(r.value, want[i]!.value, `${tokenMode} ${r.metric} ${r.layer} vs ${r.target}`);
  }
  const bad = randn(samples, 5, 504);
  bad.data[5 * 5] = NaN;
  const nan = await npy('pool-nan.npy', bad, 'f32', true, false);
  const opts = (engine: Engine): LayerwiseOptions => ({ engine, metrics: ['cka'], k: 3, preprocess: 'none', tokenMode: 'mean', targets: [{ name: 'pool', path: nan }] });
  await assert.rejects(runLayerwise(capture, opts(ref)), (e: Error) => e.message === `${nan}: target pool: non-finite value NaN at sample 5, dim 0; NaN/Inf values are not allowed`);
  await assert.rejects(runLayerwise(capture, opts(torch)), (e: Error) => e.name === 'InputError' && e.message === `torch engine: ${nan}: target pool: non-finite value NaN at sample 5, dim 0; NaN/Inf values are not allowed`);
});

test('torch engine files: checkpoints with the same target prepare it once (digest of the shards), values equal ref', { skip: missing }, async () => {
  const a = await makeCapture('run/step-1');
  const b = join(dir, 'run', 'step-2');
  await cp(a, b, { recursive: true });
  const opts = (engine: Engine): LayerwiseOptions => ({ engine, metrics: ['cknna', 'unbiased_cka'], k: 4, preprocess: 'prh', tokenMode: 'per-token', targets: [{ name: 'clip' }] });
  const got = await runCheckpoints([a, b], opts(torch));
  const want = await runCheckpoints([a, b], opts(ref));
  assert.deepEqual([got.targetCache.prepared, got.targetCache.reused], [want.targetCache.prepared, want.targetCache.reused]);
  assert.deepEqual([got.targetCache.prepared, got.targetCache.reused], [1, 1]);
  for (const [i, r] of got.rows.entries()) close(r.value, want.rows[i]!.value, `${r.checkpoint} ${r.metric} ${r.layer}`);
});

test('torch engine files: NaN/Inf are named as the in-heap readers name them (file, row and column; shard, sample, token, dim)', { skip: missing }, async () => {
  const m = randn(20, 6, 401);
  m.data[7 * 6 + 4] = NaN;
  // Fortran order: the logical row and column, not the position in the file.
  const p = await npy('nan-F.npy', m, 'f32', false, true);
  const q = await npy('ok.npy', randn(20, 6, 402), 'f32', true, false);
  const heapMessage = await fileFeatures(p, {}, { preprocess: 'none' }, ref).then(
    () => '',
    (e: Error) => e.message,
  );
  assert.equal(heapMessage, `${p}: row 7, column 4 is NaN (NaN/Inf values are not allowed)`);
  const a = new Features(await fileFeatures(p, {}, { preprocess: 'l2' }, torch), torch, p);
  const b = new Features(await fileFeatures(q, {}, { preprocess: 'l2' }, torch), torch, q);
  await assert.rejects(computeMetric('cknna', a, b, 3, 'l2'), (e: Error) => e.name === 'InputError' && e.message === `torch engine: ${heapMessage}`);

  // The hardening test's capture message, from the third shard (sample 16 + 2 = 18, token 1, dim 3).
  const capture = await makeCapture('nan-cap', { shard: 2, index: (2 * 3 + 1) * 7 + 3, value: Infinity });
  const opts = (engine: Engine): LayerwiseOptions => ({ engine, metrics: ['cka'], k: 3, preprocess: 'prh', tokenMode: 'per-token', targets: [{ name: 'clip' }] });
  const want = await runLayerwise(capture, opts(ref)).then(
    () => '',
    (e: Error) => e.message,
  );
  assert.match(want, /layers\/001\/00002\.safetensors: tensor 'hidden': non-finite value Infinity at sample 18 \(shard row 2\), token 1, dim 3 of layer 'blocks\.0\.out'/);
  await assert.rejects(runLayerwise(capture, opts(torch)), (e: Error) => e.name === 'InputError' && e.message === `torch engine: ${want}`);
});

test('torch engine files: CLI compare leaves the payload to the worker (Node peak RSS grows far less than the matrices)', { skip: missing }, async () => {
  // 2 × 96 MiB of float32; the in-heap path holds each matrix and its preprocessed copy (≥ 380 MiB). Paired cosine:
  // the cheapest metric (three row sums per row), so the test measures the loading, not the arithmetic.
  const n = 98_304;
  const d = 256;
  const paths: string[] = [];
  for (const name of ['bigA.npy', 'bigB.npy']) {
    const data = new Float32Array(n * d);
    let s = name.length;
    for (let i = 0; i < data.length; i++) {
      s = (Math.imul(s, 1103515245) + 12345) >>> 0;
      data[i] = s / 2 ** 32 - 0.5;
    }
    const path = join(dir, name);
    await writeFile(path, Buffer.concat([npyHeaderBytes('<f4', [n, d]), Buffer.from(data.buffer)]));
    paths.push(path);
  }
  const script = `
    import { main } from ${JSON.stringify(join(root, 'cli', 'main.ts'))};
    import { readFileSync } from 'node:fs';
    const kib = (key) => Number(new RegExp(key + ':\\\\s+(\\\\d+)').exec(readFileSync('/proc/self/status', 'utf8'))[1]);
    const before = kib('VmRSS');
    const write = process.stdout.write.bind(process.stdout);
    let out = '';
    process.stdout.write = (c) => { out += c; return true; };
    const code = await main(process.argv.slice(1));
    process.stdout.write = write;
    console.log(JSON.stringify({ code, before, peak: kib('VmHWM'), result: JSON.parse(out) }));
  `;
  const r = spawnSync(process.execPath, ['--import', 'tsx', '--input-type=module', '-e', script, 'compare', ...paths, '--metric', 'cosine', '--preprocess', 'prh', '--engine', 'torch', '--device', 'cpu', '--json'], {
    cwd: root,
    encoding: 'utf8',
    env: { ...process.env, VIRAL_LENS_PYTHON: python! },
    maxBuffer: 1 << 24,
  });
  assert.equal(r.status, 0, r.stderr);
  const got = JSON.parse(r.stdout.trim().split('\n').pop()!) as { code: number; before: number; peak: number; result: { n: number; value: number } };
  assert.equal(got.code, 0);
  assert.equal(got.result.n, n);
  const growthMiB = (got.peak - got.before) / 1024;
  assert.ok(growthMiB < 48, `Node's peak RSS grew by ${growthMiB.toFixed(0)} MiB while comparing 2 × ${(n * d * 4) / 2 ** 20} MiB matrices`);
});
