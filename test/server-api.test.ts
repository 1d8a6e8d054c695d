import assert from 'node:assert/strict';
import { cp, mkdir, mkdtemp, rename, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { buildApp, DEFAULT_HOST, DEFAULT_PORT, startServer, type Dashboard } from '../server/app.js';
import { curveMaxRows, parseResults } from '../server/figures-api.js';
import type { CaptureSummary } from '../server/runs.js';
import { addBrokenCaptures, makeRunsFixture, writeFixtureCapture } from './server-fixture.js';

let root: string;
let outside: string;
let d: Dashboard;

before(async () => {
  root = await mkdtemp(join(tmpdir(), 'vl-server-'));
  outside = await mkdtemp(join(tmpdir(), 'vl-outside-'));
  await makeRunsFixture(root);
  await addBrokenCaptures(root);
  // A capture whose shard is a symlink to a file outside RUNS_DIR.
  const linked = join(root, 'linked', 'step-1');
  await writeFixtureCapture(linked, 'baseline', 1);
  await rename(join(linked, 'layers', '000', '00000.safetensors'), join(outside, 'shard.safetensors'));
  await symlink(join(outside, 'shard.safetensors'), join(linked, 'layers', '000', '00000.safetensors'));
  // A symlinked directory pointing outside: must not be listed at all.
  await cp(join(root, 'baseline', 'step-100'), join(outside, 'foreign', 'step-5'), { recursive: true });
  await symlink(join(outside, 'foreign'), join(root, 'foreign'));
  d = await buildApp({ runsDir: root, engine: 'ref', workers: 2, pollMs: 150, token: 'secret-token' });
});

after(async () => {
  await d?.close();
  await rm(root, { recursive: true, force: true });
  await rm(outside, { recursive: true, force: true });
});

async function get(url: string, headers: Record<string, string> = {}) {
  const r = await d.app.inject({ url, headers });
  return { status: r.statusCode, json: () => r.json(), body: r.body, raw: r.rawPayload, headers: r.headers };
}

describe('runs, captures and validation', () => {
  test('GET /api/runs lists runs with variants, steps, samples, targets and sizes; broken captures carry their error', async () => {
    const r = await get('/api/runs');
    assert.equal(r.status, 200);
    const body = r.json();
    const runs = Object.fromEntries(body.runs.map((x: { run: string }) => [x.run, x]));
    assert.deepEqual(Object.keys(runs).sort(), ['baseline', 'broken', 'linked', 'residual', 'truncated', 'viral']);
    assert.deepEqual(runs.viral.steps, [100, 200]);
    assert.deepEqual(runs.viral.variants, ['viral']);
    assert.equal(runs.viral.samples, 40);
    assert.deepEqual(runs.viral.targets, ['clip', 'dinov2']);
    assert.ok(runs.viral.size_bytes > 1000);
    assert.equal(runs.viral.has_results, true);
    assert.equal(runs.broken.errors, 1);
    const broken = body.captures.find((c: { id: string }) => c.id === 'broken/step-1');
    assert.match(broken.error, /invalid JSON/);
    const linked = body.captures.find((c: { id: string }) => c.id === 'linked/step-1');
    assert.match(linked.error, /resolves outside RUNS_DIR/);
    assert.ok(!body.captures.some((c: { id: string }) => c.id.startsWith('foreign')), 'a symlinked directory is not followed');
  });

  test('GET /api/captures/:id: summary with trained layers; unknown and escaping ids are 404 JSON', async () => {
    const r = await get(`/api/captures/${encodeURIComponent('viral/step-200')}`);
    assert.equal(r.status, 200);
    const c = r.json();
    assert.equal(c.aligned_layer, 2);
    assert.deepEqual(c.grid, [2, 2]);
    assert.deepEqual(c.labels, ['class', 'count']);
    assert.equal(c.has_probes, true);
    assert.deepEqual((await get(`/api/captures/${encodeURIComponent('residual/step-100')}`)).json().residual_layers, [2]);
    for (const id of ['nope', '../../etc/passwd', '..', '/etc']) {
      const bad = await get(`/api/captures/${encodeURIComponent(id)}`);
      assert.equal(bad.status, 404, id);
      assert.match(bad.json().message, /no capture|no route/);
    }
    const samples = (await get(`/api/captures/${encodeURIComponent('viral/step-200')}/samples?limit=3`)).json();
    assert.deepEqual(samples, { capture: 'viral/step-200', total: 40, ids: ['img-000', 'img-001', 'img-002'] });
  });

  test('GET /api/runs/:run: steps, captures and the accuracy read from results.json', async () => {
    const r = (await get('/api/runs/viral')).json();
    assert.deepEqual(r.steps, [100, 200]);
    assert.deepEqual(r.accuracy.values, [
      ['POPE', 88.32],
      ['MMVP', 33.33],
    ]);
    assert.equal((await get('/api/runs/nope')).status, 404);
    assert.equal((await get('/api/runs/..')).status, 404);
  });

  test('every bad request is a 4xx JSON error naming the problem', async () => {
    const cases: [string, number, RegExp][] = [
      ['/api/layerwise?k=1', 400, /k must be >= 2/],
      ['/api/layerwise?metric=nope', 400, /metric must be equal to one of the allowed values/],
      ['/api/layerwise?tokens=all', 400, /tokens/],
      ['/api/layerwise?colour=variant', 400, /must NOT have additional properties/],
      ['/api/layerwise?runs=viral&target=siglip', 422, /no target 'siglip'.*clip, dinov2/],
      ['/api/layerwise?runs=nope', 422, /no run 'nope'/],
      ['/api/layerwise?captures=../../etc', 422, /no capture '\.\.\/\.\.\/etc'/],
      ['/api/figures/nope', 400, /name must be equal to one of the allowed values/],
      ['/api/export/layerwise?format=gif', 400, /format/],
      ['/api/figures/umap?runs=viral&label=colour', 422, /no label 'colour'/],
      ['/api/nope', 404, /no route GET \/api\/nope/],
      ['/static/..%2Fapp.ts', 404, /no static file/],
    ];
    for (const [url, status, message] of cases) {
      const r = await get(url);
      assert.equal(r.status, status, url);
      assert.match(r.headers['content-type'] as string, /application\/json/, url);
      assert.match(r.json().message, message, url);
    }
  });

  test('requests for a non-loopback Host are refused (DNS rebinding)', async () => {
    const r = await get('/api/runs', { host: 'attacker.example:7860' });
    assert.equal(r.status, 403);
    assert.match(r.json().message, /Host header/);
  });
});

describe('analyses', () => {
  test('layer-wise rows say how they were computed, and the VIRAL run bumps at its aligned layer', async () => {
    const r = await get('/api/layerwise?runs=baseline,viral&metric=cknna&target=clip&k=5&tokens=mean&preprocess=prh');
    assert.equal(r.status, 200);
    const body = r.json();
    assert.deepEqual(body.errors, []);
    assert.equal(body.provenance.metric, 'cknna');
    assert.equal(body.provenance.k, 5);
    assert.equal(body.provenance.n, 40);
    assert.equal(body.provenance.token_mode, 'mean');
    assert.equal(body.provenance.preprocess, 'prh(q=0.95)');
    assert.match(body.provenance.engine, /^ref/);
    const rows = body.rows as { series: string; target: string; layer_index: number; value: number; k: number; step: number }[];
    assert.equal(rows.length, 2 * 5);
    assert.ok(rows.every((x) => x.target === 'clip' && x.k === 5 && x.step === 200));
    const at = (s: string, l: number) => rows.find((x) => x.series === s && x.layer_index === l)!.value;
    assert.ok(at('viral', 2) > at('baseline', 2) + 0.05, `viral ${at('viral', 2)} vs baseline ${at('baseline', 2)} at ℓ=2`);
    assert.ok(at('baseline', 0) > at('baseline', 4), 'similarity decays with depth in the fixture');
  });

  test("the curve pages' defaults are the demo readout's (CKNNA, k = 10, prh, per-token); small n is warned about", async () => {
    assert.deepEqual((await get('/api/runs')).json().defaults, { metric: 'cknna', k: 10, preprocess: 'prh', tokens: 'per-token' });
    const def = (await get('/api/figures/layerwise?runs=viral')).json();
    assert.equal(def.provenance.token_mode, 'per-token');
    assert.equal(def.provenance.k, 10);
    assert.equal(def.provenance.n, 40 * 4);
    assert.equal(def.provenance.max_rows, undefined);
    // 160 ≥ 10·k: no caveat. Mean-pooled, n = 40 < 10·k: the CKNNA small-n warning (src/metrics/cknna.ts) is a note.
    assert.ok(!def.notes.some((n: string) => /small n/.test(n)), def.notes.join('\n'));
    const mean = (await get('/api/figures/layerwise?runs=viral&tokens=mean')).json();
    assert.equal(mean.provenance.n, 40);
    assert.ok(mean.notes.some((n: string) => /^warning: CKNNA at small n = 40 for k = 10 \(n < 10·k\)/.test(n)), mean.notes.join('\n'));
  });

  test('per token, a capture of more than 10 000 rows is subsampled to 10 000 unless max_rows says otherwise', () => {
    const capture = (samples: number, tokens: number) => ({ samples, tokens }) as CaptureSummary;
    assert.equal(curveMaxRows(capture(48, 36), 'per-token', {}), undefined, 'the default demo: 1728 rows, whole');
    assert.equal(curveMaxRows(capture(500, 576), 'per-token', {}), 10_000);
    assert.equal(curveMaxRows(capture(500, 576), 'mean', {}), undefined);
    assert.equal(curveMaxRows(capture(500, 576), 'per-token', { max_rows: 50_000 }), 50_000);
    assert.equal(curveMaxRows(capture(40, 4), 'mean', { max_rows: 20 }), 20);
  });

  test('bootstrap CIs reach the figure as a band', async () => {
    const r = (await get('/api/figures/layerwise?runs=viral&bootstrap=50&k=5')).json();
    const curve = (r.spec.data.values as { kind: string; ci_low?: number; ci_high?: number; value: number }[]).filter((x) => x.kind === 'curve');
    assert.ok(curve.length > 0 && curve.every((x) => typeof x.ci_low === "number" && typeof x.ci_high === "number" && x.ci_low < x.ci_high));
    assert.ok(JSON.stringify(r.spec.layer).includes('"ci_low"'), 'an area layer draws the band');
    assert.deepEqual(r.provenance.bootstrap, { draws: 50, ci: 0.95 });
  });

  test('every figure builds for the fixture; marks, accuracy and probes come from the manifests and JSON files', async () => {
    const lw = (await get('/api/figures/layerwise?runs=baseline,residual,viral')).json();
    const marks = (lw.spec.data.values as { kind: string; label: string; layer_index: number }[]).filter((x) => x.kind === 'mark');
    assert.deepEqual(marks.map((m) => `${m.label} @ ${m.layer_index}`).sort(), ['VIRAL aligned ℓ=2 @ 2', 'residual re-injects ℓ=2 @ 2']);
    const variants = (await get('/api/figures/variants?runs=baseline,residual,viral')).json();
    const acc = JSON.stringify(variants.spec.hconcat[1].data.values);
    assert.match(acc, /"benchmark":"POPE","value":88.32/);
    const probes = (await get('/api/figures/probes?runs=baseline,viral')).json();
    assert.equal(probes.rows, 10);
    for (const name of ['checkpoints', 'training', 'umap', 'pca-grid']) {
      const f = await get(`/api/figures/${name}?runs=baseline,residual,viral`);
      assert.equal(f.status, 200, name);
      assert.ok(f.json().rows > 0, name);
      assert.deepEqual(f.json().errors, [], name);
    }
    const heat = (await get('/api/figures/checkpoints?runs=baseline,viral&k=5')).json();
    const diff = (heat.spec.vconcat[1].data.values as { series: string; diff: number; layer_index: number; step: number }[]).find((x) => x.layer_index === 2 && x.step === 200)!;
    assert.equal(diff.series, 'viral');
    assert.ok(diff.diff > 0.05, `Δ at ℓ=2: ${diff.diff}`);
  });

  test('a corrupt capture shows up as an error next to the charts of the others; the server keeps serving', async () => {
    const r = await get('/api/figures/layerwise?runs=baseline,truncated');
    assert.equal(r.status, 200);
    const body = r.json();
    assert.deepEqual(body.captures, ['baseline/step-200', 'truncated/step-1']);
    assert.equal(body.errors.length, 1);
    assert.equal(body.errors[0].capture, 'truncated/step-1');
    assert.match(body.errors[0].error, /00000\.safetensors.*truncated/);
    const only = await get('/api/figures/layerwise?runs=truncated');
    assert.equal(only.status, 422);
    assert.match(only.json().message, /truncated/);
    const broken = await get('/api/figures/umap?runs=viral,broken');
    assert.equal(broken.status, 200);
    assert.match(JSON.stringify(broken.json().errors), /broken\/step-1.*invalid JSON/);
    const grid = await get('/api/figures/pca-grid?runs=viral,truncated');
    assert.equal(grid.status, 200);
    assert.equal(grid.json().errors[0].capture, 'truncated/step-1');
    assert.equal((await get('/api/health')).json().ok, true);
  });

  test('exports: SVG, PNG, PDF of the rendered chart, CSV and JSON of its numbers', async () => {
    const q = 'runs=baseline,viral&metric=cknna&target=clip&k=5';
    const svg = await get(`/api/export/layerwise?${q}&format=svg`);
    assert.equal(svg.status, 200);
    assert.match(svg.headers['content-type'] as string, /image\/svg\+xml/);
    assert.match(svg.body, /^<svg[^>]*xmlns="http:\/\/www.w3.org\/2000\/svg"/);
    // The default token mode is per-token (the demo readout's): 40 images × 4 tokens.
    assert.match(svg.body, /CKNNA, k = 5 · target clip · tokens per-token · preprocess prh\(q=0.95\) · n = 160 · engine ref/);
    const png = await get(`/api/export/layerwise?${q}&format=png`);
    assert.deepEqual([...png.raw.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
    assert.match(png.headers['content-disposition'] as string, /viral-lens-layerwise-cknna-clip\.png/);
    const pdf = await get(`/api/export/layerwise?${q}&format=pdf`);
    assert.equal(pdf.raw.subarray(0, 5).toString('latin1'), '%PDF-');
    const csv = await get(`/api/export/layerwise?${q}&format=csv`);
    const [header, ...lines] = csv.body.trim().split('\n');
    for (const col of ['series', 'metric', 'layer_index', 'value', 'k', 'n', 'preprocess', 'token_mode', 'engine']) assert.ok(header!.split(',').includes(col), col);
    assert.equal(lines.length, 10);
    const json = JSON.parse((await get(`/api/export/layerwise?${q}&format=json`)).body);
    assert.equal(json.rows.length, 10);
    assert.equal(json.provenance.k, 5);
    for (const name of ['checkpoints', 'variants', 'umap', 'pca-grid', 'probes', 'training']) {
      const r = await get(`/api/export/${name}?runs=baseline,viral&format=svg`);
      assert.equal(r.status, 200, name);
      assert.match(r.body, /^<svg/, name);
    }
  });

  test('results.json shapes: a benchmark table, or a list with steps (the latest at or before the capture step wins)', () => {
    assert.deepEqual(parseResults({ benchmarks: { POPE: 85.7, bad: 'x' } }, 100).values, [['POPE', 85.7]]);
    const list = { results: [{ benchmark: 'MMVP', value: 20, step: 100 }, { benchmark: 'MMVP', value: 30, step: 200 }, { benchmark: 'MMVP', value: 40, step: 300 }] };
    assert.deepEqual(parseResults(list, 250).values, [['MMVP', 30]]);
    assert.match(parseResults({ scores: 1 }, null).problem!, /expected "benchmarks"/);
  });
});

describe('jobs: cache, de-duplication, cancellation', () => {
  test('two concurrent requests compute each capture once; a repeat is served from memory; a new server reads the disk cache', async () => {
    const before = { ...d.runner.stats };
    const url = '/api/figures/layerwise?runs=baseline,residual,viral&metric=mutual_knn&k=4';
    const [a, b] = await Promise.all([get(url), get(url)]);
    assert.equal(a.status, 200);
    assert.equal(a.body, b.body);
    assert.equal(d.runner.stats.computed - before.computed, 3, 'three captures, each computed once');
    // The second request joins the in-flight runs (or, if a run already finished, takes its result from memory).
    const reused = d.runner.stats.shared - before.shared + (d.runner.stats.memoryHits - before.memoryHits);
    assert.equal(reused, 3, 'the second request computed nothing');
    assert.ok(d.runner.stats.shared - before.shared >= 1, 'at least one run was joined while in flight');
    const hits = d.runner.stats.memoryHits;
    await get(url);
    assert.equal(d.runner.stats.computed - before.computed, 3);
    assert.equal(d.runner.stats.memoryHits - hits, 3);
    const again = await buildApp({ runsDir: root, engine: 'ref', workers: 1, pollMs: 100000 });
    try {
      const c = await again.app.inject({ url });
      assert.equal(c.statusCode, 200);
      assert.equal(again.runner.stats.diskHits, 3);
      assert.equal(again.runner.stats.computed, 0);
      assert.equal(again.runner.workersStarted, 0, 'no worker was needed');
    } finally {
      await again.close();
    }
  });

  test('a client that disconnects cancels its analysis in the worker; the next request computes afresh', async () => {
    const server = await startServer({ runsDir: root, port: 0, engine: 'ref', workers: 1, cacheDir: null, pollMs: 100000 });
    try {
      const events: string[] = [];
      server.dashboard.hub.send = ((orig) => (event: string, data: unknown) => {
        if (event === 'job') events.push((data as { state: string }).state);
        orig(event, data);
      })(server.dashboard.hub.send.bind(server.dashboard.hub));
      const url = `${server.url}api/figures/umap?runs=viral&tokens=per-token&epochs=2000&seed=5`;
      const ac = new AbortController();
      const pending = fetch(url, { signal: ac.signal }).catch((e: Error) => e);
      // Wait until the worker is on it, then leave.
      for (let i = 0; i < 200 && !events.includes('running'); i++) await new Promise((r) => setTimeout(r, 25));
      await new Promise((r) => setTimeout(r, 150));
      ac.abort();
      assert.equal(((await pending) as Error).name, 'AbortError');
      for (let i = 0; i < 200 && !events.includes('cancelled'); i++) await new Promise((r) => setTimeout(r, 25));
      assert.ok(events.includes('cancelled'), `job events: ${events.join(', ')}`);
      assert.equal(server.dashboard.runner.stats.cancelled, 1);
      assert.equal(server.dashboard.runner.stats.computed, 0);
      const ok = await fetch(`${server.url}api/figures/umap?runs=viral&tokens=per-token&epochs=30&seed=5`);
      assert.equal(ok.status, 200);
      assert.equal(server.dashboard.runner.stats.computed, 1);
    } finally {
      await server.close();
    }
  });
});

/** Reads an SSE stream until `want` arrives (or times out). */
async function nextEvent(body: ReadableStream<Uint8Array>, want: string, timeoutMs = 8000): Promise<unknown> {
  const reader = body.getReader();
  const decoder = new TextDecoder();
  let buf = '';
  const deadline = Date.now() + timeoutMs;
  try {
    while (Date.now() < deadline) {
      const chunk = await Promise.race([reader.read(), new Promise<null>((r) => setTimeout(() => r(null), deadline - Date.now()))]);
      if (!chunk || chunk.done) break;
      buf += decoder.decode(chunk.value, { stream: true });
      for (const block of buf.split('\n\n')) {
        const event = /^event: (.+)$/m.exec(block)?.[1];
        const data = /^data: (.+)$/m.exec(block)?.[1];
        if (event === want && data) return JSON.parse(data);
      }
    }
  } finally {
    reader.releaseLock();
  }
  throw new Error(`no '${want}' event within ${timeoutMs} ms (got: ${buf.slice(0, 300)})`);
}

describe('live updates and ingest', () => {
  test('a new step written under RUNS_DIR reaches /api/runs and the SSE stream', async () => {
    const server = await startServer({ runsDir: root, port: 0, engine: 'ref', workers: 1, cacheDir: null, pollMs: 300 });
    const ac = new AbortController();
    try {
      const res = await fetch(`${server.url}api/events`, { signal: ac.signal });
      assert.match(res.headers.get('content-type')!, /text\/event-stream/);
      await writeFixtureCapture(join(root, 'viral', 'step-300'), 'viral', 300);
      const change = (await nextEvent(res.body!, 'runs')) as { added: string[] };
      assert.ok(change.added.includes('viral/step-300'), JSON.stringify(change));
      const runs = await (await fetch(`${server.url}api/runs`)).json();
      assert.deepEqual(runs.runs.find((r: { run: string }) => r.run === 'viral').steps, [100, 200, 300]);
    } finally {
      ac.abort();
      await server.close();
      await rm(join(root, 'viral', 'step-300'), { recursive: true, force: true });
      await d.index.refresh();
    }
  });

  test('POST /api/ingest: bearer token (401 without / with a wrong one), manifest checked, body size limited, event broadcast', async () => {
    const server = await startServer({ runsDir: root, port: 0, engine: 'ref', workers: 1, cacheDir: null, token: 'tok-123', pollMs: 100000 });
    const ac = new AbortController();
    try {
      const manifest = JSON.parse(await (await import('node:fs/promises')).readFile(join(root, 'viral', 'step-200', 'manifest.json'), 'utf8'));
      const post = (body: unknown, auth?: string) =>
        fetch(`${server.url}api/ingest`, {
          method: 'POST',
          headers: { 'content-type': 'application/json', ...(auth ? { authorization: auth } : {}) },
          body: typeof body === 'string' ? body : JSON.stringify(body),
        });
      const none = await post({ run: 'live-run', step: 5, manifest });
      assert.equal(none.status, 401);
      assert.match((await none.json()).message, /missing bearer token/);
      assert.match(none.headers.get('www-authenticate')!, /Bearer/);
      const wrong = await post({ run: 'live-run', step: 5, manifest }, 'Bearer tok-124');
      assert.equal(wrong.status, 401);
      assert.match((await wrong.json()).message, /invalid bearer token/);
      const badRun = await post({ run: '../x', step: 5, manifest }, 'Bearer tok-123');
      assert.equal(badRun.status, 400);
      assert.match((await badRun.json()).message, /body\/run must match pattern/);
      const badManifest = await post({ run: 'live-run', step: 5, manifest: { ...manifest, variant: 'turbo' } }, 'Bearer tok-123');
      assert.equal(badManifest.status, 400);
      assert.match((await badManifest.json()).message, /manifest: variant: expected "baseline" or "residual"/);
      const huge = await post(JSON.stringify({ run: 'x', manifest: { pad: 'x'.repeat(17 * 1024 * 1024) } }), 'Bearer tok-123');
      assert.equal(huge.status, 413);
      assert.match((await huge.json()).message, /body too large \(limit 16777216 bytes\)/);
      const events = await fetch(`${server.url}api/events`, { signal: ac.signal });
      const ok = await post({ run: 'live-run', step: 5, manifest }, 'Bearer tok-123');
      assert.equal(ok.status, 202);
      assert.deepEqual(await ok.json(), { accepted: true, run: 'live-run', step: 5, samples: 40 });
      const ev = (await nextEvent(events.body!, 'ingest')) as { run: string; samples: number; variant: string };
      assert.deepEqual([ev.run, ev.samples, ev.variant], ['live-run', 40, 'viral']);
      const runs = await (await fetch(`${server.url}api/runs`)).json();
      assert.equal(runs.live[0].run, 'live-run');
      // Other routes take no large bodies either.
      const big = await fetch(`${server.url}api/runs`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ a: 'x'.repeat(100_000) }) });
      assert.ok(big.status === 404 || big.status === 413, String(big.status));
    } finally {
      ac.abort();
      await server.close();
    }
  });
});

test('startServer: fixed default port and loopback host, a clear error when the port is taken', async () => {
  assert.deepEqual([DEFAULT_HOST, DEFAULT_PORT], ['127.0.0.1', 7860]);
  const a = await startServer({ runsDir: root, port: 0, workers: 1, cacheDir: null, pollMs: 100000 });
  try {
    assert.match(a.url, /^http:\/\/127\.0\.0\.1:\d+\/$/);
    assert.ok(a.token.length >= 24, 'a random token is made');
    const port = Number(new URL(a.url).port);
    await assert.rejects(startServer({ runsDir: root, port, workers: 1, cacheDir: null }), /port \d+ on 127\.0\.0\.1 is in use/);
  } finally {
    await a.close();
  }
  await assert.rejects(buildApp({ runsDir: join(root, 'nope') }), /nope: not found; RUNS_DIR must be a directory/);
  await mkdir(join(outside, 'empty'), { recursive: true });
  await writeFile(join(outside, 'empty', 'README'), 'x');
  const empty = await buildApp({ runsDir: join(outside, 'empty'), workers: 1, cacheDir: null, pollMs: 100000 });
  try {
    assert.deepEqual((await empty.app.inject({ url: '/api/runs' })).json().runs, []);
    const r = await empty.app.inject({ url: '/api/figures/layerwise' });
    assert.equal(r.statusCode, 422);
    assert.match(r.json().message, /no captures match/);
  } finally {
    await empty.close();
  }
});
