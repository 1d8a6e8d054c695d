import assert from 'node:assert/strict';
import { test } from 'node:test';
import { createEngine, selfCheck } from '../src/engine/index.js';
import { OnnxEngine, type KnnGraph } from '../src/engine/onnx.js';
import { RefEngine } from '../src/engine/ref.js';
import type { Engine, KnnLists } from '../src/engine/types.js';
import type { Matrix } from '../src/core/matrix.js';
import { preprocess } from '../src/metrics/index.js';
import { randn } from './helpers.js';

/**
 * The GPU engines against the ref engine: values within 2e-5 and identical kNN sets on inputs whose k-th/(k+1)-th
 * gaps are far above float32 noise. The graphs of both GPU paths run on the CPU EP everywhere; the WebGPU engine
 * itself needs an adapter (in CI: Mesa 25's lavapipe, .ci/parts/webgpu.sh) and skips without one, except under
 * CI=true where a missing adapter fails.
 */
const ref = new RefEngine();
const TOL = 2e-5;
const K = 10;

function unitRows(n: number, d: number, seed: number): Matrix {
  const g = randn(n, d, seed);
  return preprocess({ rows: n, cols: d, data: Float32Array.from(g.data) }, 'l2');
}

// Seed 56: its smallest k-th/(k+1)-th gap (7.9e-5) is ~50× the float32 noise of a 48-term dot product (the first
// test checks it), so a correct float32 engine must return exactly the ref engine's sets.
const X = unitRows(300, 48, 56);
const Y = unitRows(300, 20, 22);
const exact = await ref.knn(X, K);

test('test data has no near-ties at the k-th neighbour (so kNN sets must agree exactly)', () => {
  let minGap = Infinity;
  for (let i = 0; i < X.rows; i++) minGap = Math.min(minGap, exact.values[i * K + K - 1]! - exact.next[i]!);
  assert.ok(minGap > 5e-5, `min gap ${minGap}`);
});

function sameSets(got: KnnLists, want: KnnLists): void {
  const k = want.k;
  for (let i = 0; i < want.n; i++) {
    const a = [...got.indices.subarray(i * k, (i + 1) * k)].sort((p, q) => p - q).join();
    const b = [...want.indices.subarray(i * k, (i + 1) * k)].sort((p, q) => p - q).join();
    assert.equal(a, b, `row ${i}`);
  }
}

function maxDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  assert.equal(a.length, b.length);
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

async function compareWithRef(engine: Engine): Promise<void> {
  const lists = await engine.knn(X, K);
  sameSets(lists, exact);
  assert.ok(maxDiff(lists.values, exact.values) <= TOL, 'kNN values');
  assert.ok(maxDiff(lists.next, exact.next) <= TOL, '(k+1)-th values');
  assert.ok(maxDiff(await engine.gramTile(X, 17, 90, X), await ref.gramTile(X, 17, 90, X)) <= TOL, 'gram tile');
  assert.ok(maxDiff(await engine.crossProduct(X, Y), await ref.crossProduct(X, Y)) <= TOL * 10, 'cross product (sums of 300 terms)');
  // k = n − 1: every other row is a neighbour and there is no (k+1)-th.
  const small = unitRows(20, 8, 5);
  const all = await engine.knn(small, 19);
  sameSets(all, await ref.knn(small, 19));
  assert.ok(all.next.every((v) => v === -Infinity));
}

// Tiles of 16 rows: 19 tiles for n = 300, the last one short (tiles) or overlapping (loop).
const SMALL_TILES = 4 * 300 * 16;

for (const graph of ['symmetric', 'tiles', 'device', 'loop'] as KnnGraph[]) {
  test(`the '${graph}' kNN graph gives the ref engine's lists on the CPU EP, many tiles`, async () => {
    const engine = await OnnxEngine.create('cpu', 2, { knnGraph: graph, tileBytes: SMALL_TILES });
    try {
      // A non-default graph is named in the device string (symmetric is the CPU engine's default).
      if (graph !== 'symmetric') assert.match(engine.device, new RegExp(`kNN graph '${graph}'`));
      await compareWithRef(engine);
      // Repeated rows: the selection must keep every copy (ties broken by the smaller index, like the ref engine).
      const dup = { rows: 40, cols: X.cols, data: X.data.slice(0, 40 * X.cols) } as Matrix;
      dup.data.set(dup.data.subarray(3 * X.cols, 4 * X.cols), 7 * X.cols);
      const got = await engine.knn(dup, 5);
      const want = await ref.knn(dup, 5);
      assert.equal(got.indices[3 * 5], 7);
      assert.equal(got.indices[7 * 5], 3);
      assert.ok(maxDiff(got.values, want.values) <= TOL);
    } finally {
      await engine.dispose();
    }
  });
}

let webgpu: OnnxEngine | null = null;
let unavailable = '';
try {
  webgpu = await OnnxEngine.create('webgpu', 2, { tileBytes: SMALL_TILES });
} catch (err) {
  // onnxruntime's message ends with Dawn's reason, e.g. "Failed to get a WebGPU adapter: No supported adapters".
  const msg = String((err as Error).message);
  unavailable = /Failed to get a WebGPU adapter[^\n]*/.exec(msg)?.[0] ?? msg.split('\n').filter((l) => l.trim())[0] ?? msg;
}
const inCi = process.env.CI === 'true';
const skip = webgpu || inCi ? false : `no WebGPU adapter (${unavailable}); run .ci/parts/webgpu.sh for a CPU Vulkan driver`;

test('WebGPU engine matches the ref engine (values within 2e-5, identical kNN sets)', { skip }, async () => {
  assert.ok(webgpu, `WebGPU unavailable under CI: ${unavailable}`);
  await compareWithRef(webgpu);
});

test('WebGPU engine names its adapter truthfully and passes the self-check', { skip }, async () => {
  assert.ok(webgpu, `WebGPU unavailable under CI: ${unavailable}`);
  assert.match(webgpu.device, /WebGPU EP \(Dawn, Vulkan\), adapter /);
  const adapter = webgpu.adapter!;
  // A software adapter must be called one; a GPU must not be claimed for it.
  if (adapter.kind === 'cpu') assert.match(webgpu.device, /CPU software adapter, NOT a GPU/);
  if (/llvmpipe|lavapipe|swiftshader/i.test(adapter.name ?? '')) assert.equal(adapter.kind, 'cpu');
  const check = await selfCheck(webgpu);
  assert.ok(check.ok, check.detail);
  const byName = await createEngine('webgpu');
  assert.equal(byName.name, 'webgpu');
  await byName.dispose();
});

test('auto does not pick WebGPU on a CPU software adapter', { skip }, async () => {
  assert.ok(webgpu, `WebGPU unavailable under CI: ${unavailable}`);
  const auto = await createEngine('auto');
  if (webgpu.adapter!.kind !== 'gpu') assert.notEqual(auto.name, 'webgpu');
  await auto.dispose();
});

test.after(async () => {
  await webgpu?.dispose();
});
