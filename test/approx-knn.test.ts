import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { dirname, join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { hnswKnn, knnProvenance, measureRecall, withKnnPolicy, type ApproxKnnLists } from '../src/engine/approx.js';
import { createEngine } from '../src/engine/index.js';
import { RefEngine } from '../src/engine/ref.js';
import type { KnnLists } from '../src/engine/types.js';
import type { Matrix } from '../src/core/matrix.js';
import { preprocess } from '../src/metrics/index.js';
import { randn } from './helpers.js';

const cpu = await createEngine('cpu');
const ref = new RefEngine();

/** Planted clusters: `c` Gaussian centres, points = centre + noise, unit-normalised (as `l2` preprocessing does). */
function clustered(n: number, d: number, c: number, noise: number, seed: number): Matrix {
  const centres = randn(c, d, seed);
  const eps = randn(n, d, seed + 1);
  const data = new Float64Array(n * d);
  for (let i = 0; i < n; i++) for (let j = 0; j < d; j++) data[i * d + j] = centres.data[(i % c) * d + j]! + noise * eps.data[i * d + j]!;
  return preprocess({ rows: n, cols: d, data: Float32Array.from(data) }, 'l2');
}

/** Independent recall: plain set intersection with the ref engine's exact lists, over the given rows. */
function setRecall(approx: KnnLists, exact: KnnLists, rows: ArrayLike<number>): number {
  const k = approx.k;
  let hits = 0;
  for (let r = 0; r < rows.length; r++) {
    const i = rows[r]!;
    const truth = new Set(exact.indices.subarray(i * k, (i + 1) * k));
    for (const j of approx.indices.subarray(i * k, (i + 1) * k)) if (truth.has(j)) hits++;
  }
  return hits / (rows.length * k);
}

const X = clustered(1200, 24, 30, 0.35, 7);
const k = 10;
const exact = await ref.knn(X, k);

test('HNSW recall on a planted clustered dataset is ≥ 0.9 and the reported value matches an independent exact computation', async () => {
  const all = Array.from({ length: X.rows }, (_, i) => i);
  // The recall sample's exact rows come from the float64 ref engine here, so its tie allowance is 0 and the measured
  // value is plain set recall, comparable to the independent count. Default parameters: the quality users get.
  const lists = await hnswKnn(X, k, ref, { recallRows: X.rows });
  const p = knnProvenance(lists);
  assert.equal(p.method, 'hnsw');
  assert.equal(p.recall_rows, X.rows);
  const independent = setRecall(lists, exact, all);
  assert.ok(independent >= 0.9, `recall ${independent}`);
  assert.ok(Math.abs(p.recall! - independent) < 1e-12, `reported ${p.recall} vs independent ${independent}`);
  // A deliberately weak graph misses neighbours, so the comparison is not between two 1.0s.
  const weak = await hnswKnn(X, k, ref, { recallRows: X.rows, m: 4, efConstruction: 16, efSearch: 16 });
  const weakIndependent = setRecall(weak, exact, all);
  assert.ok(weakIndependent < 0.99, `weak recall ${weakIndependent}`);
  assert.ok(Math.abs(weak.provenance.recall! - weakIndependent) < 1e-12, `reported ${weak.provenance.recall} vs independent ${weakIndependent}`);
});

test('the sampled recall is the exact recall of exactly the sampled rows (seeded, reproducible)', async () => {
  const lists = await hnswKnn(X, k, ref, { recallRows: 100, seed: 3 });
  const again = await measureRecall(X, lists, ref, { rows: 100, seed: 3 });
  assert.equal(again.rows.length, 100);
  assert.equal(new Set(again.rows).size, 100);
  assert.ok(Math.abs(again.recall - setRecall(lists, exact, again.rows)) < 1e-12);
  assert.equal(again.recall, lists.provenance.recall);
});

test('approximate lists carry exact float64 kernel values, sorted, and the (k+1)-th value', async () => {
  const lists = await hnswKnn(X, k, cpu, { recallRows: 16 });
  const d = X.cols;
  const dot = (i: number, j: number) => {
    let s = 0;
    for (let c = 0; c < d; c++) s += X.data[i * d + c]! * X.data[j * d + c]!;
    return s;
  };
  for (let i = 0; i < X.rows; i += 37) {
    for (let r = 0; r < k; r++) {
      const j = lists.indices[i * k + r]!;
      assert.notEqual(j, i, 'self is excluded');
      assert.equal(lists.values[i * k + r], dot(i, j));
      if (r > 0) assert.ok(lists.values[i * k + r - 1]! >= lists.values[i * k + r]!);
    }
    assert.ok(lists.next[i]! <= lists.values[i * k + k - 1]!);
  }
});

test('recall measurement is not vacuous: scrambled lists score low', async () => {
  const lists = await hnswKnn(X, k, cpu, { recallRows: 16 });
  const scrambled: KnnLists = { ...lists, indices: lists.indices.map((j, p) => (j + 1 + (p % 97)) % X.rows) };
  const r = await measureRecall(X, scrambled, cpu, { rows: 200, seed: 1 });
  assert.ok(r.recall < 0.3, `recall ${r.recall}`);
});

test('knn policy: auto stays exact up to the row limit and switches to HNSW above it; hnsw forces it', async () => {
  const auto = withKnnPolicy(cpu, { mode: 'auto', exactMaxRows: 500, hnsw: { recallRows: 32 } });
  assert.match(auto.device, /kNN exact up to 500 rows, hnsw\(ip, M=12/);
  const small = clustered(400, 16, 10, 0.3, 11);
  const viaPolicy = await auto.knn(small, 5);
  assert.equal(knnProvenance(viaPolicy).method, 'exact');
  assert.deepEqual(viaPolicy.indices, (await cpu.knn(small, 5)).indices);
  const large = await auto.knn(clustered(600, 16, 10, 0.3, 12), 5);
  assert.equal(knnProvenance(large).method, 'hnsw');
  assert.ok((large as ApproxKnnLists).provenance.recall! > 0.9);
  const forced = withKnnPolicy(cpu, { mode: 'hnsw', hnsw: { recallRows: 32 } });
  assert.equal(knnProvenance(await forced.knn(small, 5)).method, 'hnsw');
  assert.equal(withKnnPolicy(cpu, { mode: 'exact' }), cpu);
  // On a GPU engine exact kNN is the fast path at any n: auto never goes approximate there.
  const gpuLike = { ...cpu, name: 'cuda' } as typeof cpu;
  assert.equal(withKnnPolicy(gpuLike, { mode: 'auto', exactMaxRows: 10 }), gpuLike);
  // torch on a GPU likewise (and HNSW would pull its file-backed matrices into Node); torch on a CPU keeps the rule.
  const torchGpu = Object.assign({ ...cpu, name: 'torch' }, { onGpu: true }) as typeof cpu;
  assert.equal(withKnnPolicy(torchGpu, { mode: 'auto', exactMaxRows: 10 }), torchGpu);
  const torchCpu = Object.assign({ ...cpu, name: 'torch' }, { onGpu: false }) as typeof cpu;
  assert.notEqual(withKnnPolicy(torchCpu, { mode: 'auto', exactMaxRows: 10 }), torchCpu);
});

test('layerwise --knn hnsw states the approximate kNN in every row; a bad --knn value is an input error', async () => {
  const root = join(dirname(fileURLToPath(import.meta.url)), '..');
  const run = (...args: string[]) => promisify(execFile)(process.execPath, ['--import', 'tsx', join(root, 'cli', 'main.ts'), ...args], { cwd: root });
  const { stdout } = await run('layerwise', join(root, 'fixtures', 'capture-small'), '--knn', 'hnsw', '--topk', '5', '--json', '--quiet');
  const rows = JSON.parse(stdout) as { device: string }[];
  assert.ok(rows.length > 0);
  for (const r of rows) assert.match(r.device, /kNN hnsw\(ip, M=12, efConstruction=64, ef=64, seed=100\)/);
  await assert.rejects(run('layerwise', join(root, 'fixtures', 'capture-small'), '--knn', 'fuzzy'), (e: { code: number; stderr: string }) => e.code === 2 && /--knn: unknown value 'fuzzy'/.test(e.stderr));
});
