/**
 * The dashboard as an attacker or a careless user meets it (issue 11, items 7–12): side files symlinked outside
 * RUNS_DIR, non-JSON files whose content must not reach an error, DNS-rebinding Host names, a symlinked cache
 * folder, two runs with the same folder name, ingest bodies sent without a token, and a shard rewritten in place
 * with its size and mtime kept.
 */
import assert from 'node:assert/strict';
import { request } from 'node:http';
import { mkdir, mkdtemp, readFile, rm, stat, symlink, utimes, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { contentSample, JobRunner } from '../server/jobs.js';
import { buildApp, startServer, type Dashboard } from '../server/app.js';
import { makeProbesFile, writeFixtureCapture } from './server-fixture.js';

const SECRET = 'SECRET-7f3a9c-do-not-print';

let root: string;
let outside: string;
let d: Dashboard;

before(async () => {
  root = await mkdtemp(join(tmpdir(), 'vl-sec-'));
  outside = await mkdtemp(join(tmpdir(), 'vl-sec-outside-'));
  // Item 10: two runs named exp1 in different folders, with different accuracies.
  await writeFixtureCapture(join(root, 'a', 'exp1', 'step-100'), 'baseline', 100);
  await writeFixtureCapture(join(root, 'b', 'exp1', 'step-100'), 'viral', 100);
  await writeFile(join(root, 'a', 'exp1', 'results.json'), JSON.stringify({ benchmarks: { POPE: 11 } }));
  await writeFile(join(root, 'b', 'exp1', 'results.json'), JSON.stringify({ benchmarks: { POPE: 99 } }));
  // Item 7: results.json and probes.json symlinked to well-formed files outside RUNS_DIR.
  await writeFixtureCapture(join(root, 'linked', 'step-100'), 'viral', 100);
  await writeFile(join(outside, 'results.json'), JSON.stringify({ benchmarks: { LEAKED: 42 } }));
  await symlink(join(outside, 'results.json'), join(root, 'linked', 'results.json'));
  await writeFile(join(outside, 'probes.json'), JSON.stringify(makeProbesFile('viral', 0.05)));
  await symlink(join(outside, 'probes.json'), join(root, 'linked', 'step-100', 'probes.json'));
  await writeFile(join(outside, 'shuffle.json'), `${SECRET}\n`);
  await symlink(join(outside, 'shuffle.json'), join(root, 'linked', 'shuffle.json'));
  // ... and side files inside RUNS_DIR that are not JSON: their text must not come back in an error.
  await writeFixtureCapture(join(root, 'plain', 'step-100'), 'baseline', 100);
  await writeFile(join(root, 'plain', 'results.json'), `${SECRET} is not JSON\n`);
  await writeFile(join(root, 'shuffle.json'), `"${SECRET}" trailing`);
  d = await buildApp({ runsDir: root, engine: 'ref', workers: 1, pollMs: 100000, token: 'the-token', cacheDir: null });
});

after(async () => {
  await d?.close();
  await rm(root, { recursive: true, force: true });
  await rm(outside, { recursive: true, force: true });
});

async function get(url: string, headers: Record<string, string> = {}) {
  const r = await d.app.inject({ url, headers });
  return { status: r.statusCode, body: r.body, json: () => r.json() };
}

describe('item 7: files under RUNS_DIR are read through their real path, and errors never quote them', () => {
  test('a results.json or shuffle.json symlinked outside RUNS_DIR is refused, not served', async () => {
    const r = await get(`/api/runs/${encodeURIComponent('linked')}`);
    assert.equal(r.status, 200);
    assert.equal(r.json().results, null);
    assert.match(r.json().results_error, /^linked\/results\.json resolves outside RUNS_DIR/);
    assert.doesNotMatch(r.body, /LEAKED/);
    const runs = (await get('/api/runs')).json().runs;
    assert.equal(runs.find((x: { run: string }) => x.run === 'linked').has_results, false);
    const shuffle = await get('/api/shuffle?dir=linked');
    assert.equal(shuffle.status, 422);
    assert.match(shuffle.json().message, /shuffle\.json resolves outside RUNS_DIR/);
    assert.doesNotMatch(shuffle.body, new RegExp(SECRET));
  });

  test('a probes.json symlinked outside RUNS_DIR is an error for its capture, and no point is drawn from it', async () => {
    const capture = (await get(`/api/captures/${encodeURIComponent('linked/step-100')}`)).json();
    assert.equal(capture.has_probes, false);
    const r = await get('/api/export/probes?runs=linked&format=json');
    assert.equal(r.status, 200);
    const body = r.json();
    assert.deepEqual(body.rows, []);
    assert.match(body.errors[0].error, /probes\.json resolves outside RUNS_DIR/);
  });

  test('a side file that is not JSON is named with the position of the fault, never with its text', async () => {
    const run = (await get('/api/runs/plain')).json();
    assert.match(run.results_error, /^plain\/results\.json: invalid JSON/);
    const shuffle = await get('/api/shuffle?dir=.');
    assert.equal(shuffle.status, 422);
    assert.match(shuffle.json().message, /shuffle\.json: invalid JSON \(at character \d+\)/);
    const analyses = await get('/api/analyses');
    for (const body of [JSON.stringify(run), shuffle.body, analyses.body]) assert.doesNotMatch(body, new RegExp(SECRET.slice(0, 10)));
  });
});

describe('item 8: only exact loopback Host names are answered (DNS rebinding)', () => {
  test('127.0.0.1, localhost and [::1], with or without a port, are allowed', async () => {
    for (const host of ['127.0.0.1:7860', 'localhost:7860', '[::1]:7860', 'LOCALHOST:9000', 'localhost', '127.0.0.1']) {
      assert.equal((await get('/api/health', { host })).status, 200, host);
    }
  });

  test('names that merely start like loopback, and malformed Host headers, are refused', async () => {
    const refused = ['127.evil.example', '127.evil.example:7860', '127.0.0.1.nip.io', '127.0.0.1.nip.io:7860', 'localhost.evil.example', 'evil.example:7860', '127.0.0.1:7860:7860', 'localhost:99999', '[::1].evil', '127.0.0.2:7860'];
    for (const host of refused) {
      const r = await get('/api/health', { host });
      assert.equal(r.status, 403, host);
      assert.match(r.json().message, /Host header .* is not allowed/, host);
    }
  });

  test('the configured loopback host is allowed as well, and only it', async () => {
    const other = await buildApp({ runsDir: root, host: '127.0.0.2', workers: 1, cacheDir: null, pollMs: 100000 });
    try {
      assert.equal((await other.app.inject({ url: '/api/health', headers: { host: '127.0.0.2:7860' } })).statusCode, 200);
      assert.equal((await other.app.inject({ url: '/api/health', headers: { host: '127.0.0.3:7860' } })).statusCode, 403);
    } finally {
      await other.close();
    }
  });
});

describe('item 9: the analysis cache folder', () => {
  test('a cache folder under RUNS_DIR that is a symlink is a clear startup error', async () => {
    const runs = await mkdtemp(join(tmpdir(), 'vl-sec-cache-'));
    try {
      await writeFixtureCapture(join(runs, 'r', 'step-1'), 'baseline', 1);
      await mkdir(join(outside, 'cache-target'), { recursive: true });
      await symlink(join(outside, 'cache-target'), join(runs, '.viral-lens-cache'));
      await assert.rejects(buildApp({ runsDir: runs, workers: 1, pollMs: 100000 }), /cache folder .*\.viral-lens-cache is a symlink.*--no-cache/);
      await rm(join(runs, '.viral-lens-cache'));
      await writeFile(join(runs, '.viral-lens-cache'), 'not a folder');
      await assert.rejects(buildApp({ runsDir: runs, workers: 1, pollMs: 100000 }), /cache folder .* is not a folder/);
    } finally {
      await rm(runs, { recursive: true, force: true });
    }
  });

  test('the pruner deletes only cache entries in plain subfolders, never through a symlink', async () => {
    const cache = await mkdtemp(join(tmpdir(), 'vl-sec-prune-'));
    const victims = join(outside, 'victims');
    await mkdir(victims, { recursive: true });
    const entry = `${'a'.repeat(64)}.json`;
    try {
      await writeFile(join(victims, entry), 'x'.repeat(100));
      await symlink(victims, join(cache, 'layerwise'));
      await mkdir(join(cache, 'umap'));
      await writeFile(join(cache, 'umap', 'notes.txt'), 'a user file');
      await writeFile(join(cache, 'umap', entry), 'y'.repeat(100));
      const runner = new JobRunner({ cacheDir: cache, inline: true, maxCacheBytes: 0 });
      await runner.prune();
      await runner.close();
      assert.equal(await readFile(join(victims, entry), 'utf8'), 'x'.repeat(100), 'a file behind a symlinked subfolder survives');
      assert.equal(await readFile(join(cache, 'umap', 'notes.txt'), 'utf8'), 'a user file', 'a file that is no cache entry survives');
      await assert.rejects(stat(join(cache, 'umap', entry)), /ENOENT/, 'a real cache entry over budget is pruned');
    } finally {
      await rm(cache, { recursive: true, force: true });
    }
  });
});

describe('item 10: runs are identified by their path relative to RUNS_DIR', () => {
  test('two runs named exp1 in different folders stay two runs, each with its own results.json', async () => {
    const runs = (await get('/api/runs')).json().runs as { run: string; captures: string[]; variants: string[] }[];
    const exp = runs.filter((r) => r.run.endsWith('exp1'));
    assert.deepEqual(
      exp.map((r) => [r.run, r.captures, r.variants]),
      [
        ['a/exp1', ['a/exp1/step-100'], ['baseline']],
        ['b/exp1', ['b/exp1/step-100'], ['viral']],
      ],
    );
    assert.deepEqual((await get(`/api/runs/${encodeURIComponent('a/exp1')}`)).json().accuracy.values, [['POPE', 11]]);
    assert.deepEqual((await get(`/api/runs/${encodeURIComponent('b/exp1')}`)).json().accuracy.values, [['POPE', 99]]);
    assert.equal((await get(`/api/runs/${encodeURIComponent('exp1')}`)).status, 404);
  });

  test('the variants export attaches each accuracy to its own run', async () => {
    const r = await get(`/api/export/variants?runs=${encodeURIComponent('a/exp1,b/exp1')}&format=json&k=5`);
    assert.equal(r.status, 200, r.body);
    const acc = (r.json().rows as { table: string; run: string; variant: string; value: number }[]).filter((x) => x.table === 'accuracy');
    assert.deepEqual(acc.map((x) => [x.run, x.variant, x.value]).sort(), [
      ['a/exp1', 'baseline', 11],
      ['b/exp1', 'viral', 99],
    ]);
  });
});

describe('item 11: POST /api/ingest checks the token before the body', () => {
  test('no token: 401 even for a body that is not JSON (it is never parsed)', async () => {
    const r = await d.app.inject({ method: 'POST', url: '/api/ingest', headers: { 'content-type': 'application/json' }, payload: '{not json' });
    assert.equal(r.statusCode, 401);
    assert.match(r.json().message, /missing bearer token/);
    const wrong = await d.app.inject({ method: 'POST', url: '/api/ingest', headers: { 'content-type': 'application/json', authorization: 'Bearer nope' }, payload: '{not json' });
    assert.equal(wrong.statusCode, 401);
  });

  test('no token: the answer comes while the announced 16 MiB body has not been sent', async () => {
    const server = await startServer({ runsDir: root, port: 0, workers: 1, cacheDir: null, pollMs: 100000, token: 'the-token' });
    try {
      const { port } = new URL(server.url);
      const status = await new Promise<number>((resolve, reject) => {
        const req = request({ host: '127.0.0.1', port, method: 'POST', path: '/api/ingest', headers: { 'content-type': 'application/json', 'content-length': String(16 * 2 ** 20 - 1) } });
        // Only a first KiB of the body is ever written: a server that waits for the rest never answers.
        const guard = setTimeout(() => {
          req.destroy();
          reject(new Error('no answer before the body was complete: the body is read before the token is checked'));
        }, 15000);
        req.on('response', (res) => {
          clearTimeout(guard);
          res.resume();
          req.destroy();
          resolve(res.statusCode ?? 0);
        });
        req.on('error', (err) => {
          clearTimeout(guard);
          reject(err);
        });
        req.write(`{"run": "x", "manifest": {"pad": "${'x'.repeat(1000)}`);
      });
      assert.equal(status, 401);
    } finally {
      await server.close();
    }
  });
});

describe('item 12: the job cache is keyed on shard content, not only size and mtime', () => {
  test('a shard rewritten in place with the same size and mtime gets a new key and a new result', async () => {
    const dir = join(root, 'rewritten', 'step-100');
    await writeFixtureCapture(dir, 'baseline', 100);
    const shard = join(dir, 'layers', '001', '00000.safetensors');
    const runner = new JobRunner({ cacheDir: null, inline: true });
    try {
      const params = { capture: dir, metrics: ['cka' as const], k: 5, preprocess: 'none' as const, tokenMode: 'mean' as const, engine: 'ref' };
      // A whole-second mtime, so that restoring it below is exact.
      await utimes(shard, 1_700_000_000, 1_700_000_000);
      const first = await runner.run('layerwise', params);
      assert.equal(first.source, 'computed');
      const before = await stat(shard);
      const bytes = await readFile(shard);
      // The last 4 float32 rows × 8 dims of the data: new values, same byte count.
      const tail = new Float32Array(32).map((_, i) => (i % 7) * 3.5 - 9);
      Buffer.from(tail.buffer).copy(bytes, bytes.length - tail.byteLength);
      await writeFile(shard, bytes);
      await utimes(shard, 1_700_000_000, 1_700_000_000);
      const after = await stat(shard);
      assert.deepEqual([after.size, after.mtimeMs], [before.size, before.mtimeMs], 'the rewrite keeps size and mtime');
      const second = await runner.run('layerwise', params);
      assert.notEqual(second.key, first.key);
      assert.equal(second.source, 'computed');
      const cka = (rows: typeof first.result) => rows.find((r) => r.layer_index === 1 && r.target === 'clip')!.value;
      assert.notEqual(cka(second.result), cka(first.result), 'layer 1 changed, so must its score');
      const layer2 = (rows: typeof first.result) => rows.find((r) => r.layer_index === 2 && r.target === 'clip')!.value;
      assert.equal(layer2(second.result), layer2(first.result), 'layer 2 was not touched');
    } finally {
      await runner.close();
    }
  });

  test('in a shard larger than the sampled span, a change in its header or its last rows changes the sample hash', async () => {
    const file = join(outside, 'big.bin');
    const bytes = Buffer.alloc(3 * 2 ** 20, 7);
    await writeFile(file, bytes);
    const base = await contentSample(file);
    assert.equal(await contentSample(file), base, 'the same bytes give the same hash');
    for (const at of [10, bytes.length - 10]) {
      const changed = Buffer.from(bytes);
      changed[at] = 8;
      await writeFile(file, changed);
      assert.notEqual(await contentSample(file), base, `byte ${at}`);
    }
    await writeFile(file, bytes.subarray(0, bytes.length - 1));
    assert.notEqual(await contentSample(file), base, 'one byte shorter');
  });
});
