/**
 * The dashboard's attention-entropy and patch-shuffle routes (fastify.inject): the numbers against hand-computed
 * references of the planted fixture (test/server-fixture.ts), missing / corrupt / escaping files, exports, live
 * change events, and the demo scene drawn under the overlay.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm, symlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { inflateSync } from 'node:zlib';
import { after, before, describe, test } from 'node:test';
import { buildApp, type Dashboard } from '../server/app.js';
import { DEMO_MODEL_NAME, generateScene, IMAGE_SIZE, renderScene } from '../demo/model/scenes.js';
import { ATTENTION_MAPS, makeRunsFixture, SHUFFLE_PLAN, writeAnalysesFixture, writeFixtureCapture } from './server-fixture.js';

let root: string;
let bare: string;
let outside: string;
let d: Dashboard;
let dBare: Dashboard;

before(async () => {
  root = await mkdtemp(join(tmpdir(), 'vl-analyses-'));
  bare = await mkdtemp(join(tmpdir(), 'vl-analyses-bare-'));
  outside = await mkdtemp(join(tmpdir(), 'vl-analyses-outside-'));
  await makeRunsFixture(root);
  await writeAnalysesFixture(root);
  await writeFixtureCapture(join(bare, 'viral', 'step-1'), 'viral', 1);
  d = await buildApp({ runsDir: root, engine: 'ref', workers: 1, pollMs: 150, cacheDir: null });
  dBare = await buildApp({ runsDir: bare, engine: 'ref', workers: 1, pollMs: 150, cacheDir: null });
});

after(async () => {
  await d?.close();
  await dBare?.close();
  for (const dir of [root, bare, outside]) await rm(dir, { recursive: true, force: true });
});

async function get(app: Dashboard, url: string) {
  const r = await app.app.inject({ url });
  return { status: r.statusCode, json: () => r.json(), body: r.body, raw: r.rawPayload, headers: r.headers };
}

const H = (map: number[]) => {
  const total = map.reduce((a, b) => a + b, 0);
  return -map.filter((v) => v > 0).reduce((a, v) => a + (v / total) * Math.log2(v / total), 0);
};
const near = (a: number, b: number, tol = 1e-6) => assert.ok(Math.abs(a - b) <= tol, `${a} vs ${b}`);

describe('attention', () => {
  test('GET /api/analyses lists RUNS_DIR with what attention.json and shuffle.json hold', async () => {
    const r = await get(d, '/api/analyses');
    assert.equal(r.status, 200);
    const { folders, how_to: howTo } = r.json();
    // Only folders that hold a file (plus RUNS_DIR itself) are listed; the fixture's run folders hold none.
    assert.deepEqual(folders.map((f: { dir: string }) => f.dir), ['.']);
    const a = folders[0].attention;
    assert.equal(a.error, null);
    assert.deepEqual(a.results.map((x: { variant: string }) => x.variant), ['baseline', 'viral']);
    assert.deepEqual(a.results[0].layers, [{ index: 1, name: 'blocks.0' }, { index: 2, name: 'blocks.1' }]);
    assert.deepEqual(a.results[0].heads, [0, 1]);
    assert.equal(a.results[0].overlay_sample, 'img-000');
    assert.deepEqual(folders[0].shuffle.results[0].variants, ['baseline', 'viral']);
    assert.deepEqual(folders[0].shuffle.results[0].question_types.sort(), ['all', 'count', 'relation']);
    assert.match(howTo['attention.json'], /npm run demo/);
  });

  test('entropies per layer × head equal the hand-computed values; the figure says how they were computed', async () => {
    const r = await get(d, '/api/attention');
    assert.equal(r.status, 200);
    const body = r.json();
    assert.equal(body.file, 'attention.json');
    for (const result of body.results as { variant: 'baseline' | 'viral'; cells: { layer_index: number; head: number; entropy: number; normalised_entropy: number; image_mass: number }[] }[]) {
      assert.equal(result.cells.length, 4);
      for (const c of result.cells) {
        const map = ATTENTION_MAPS[result.variant][c.layer_index - 1]![c.head]!;
        near(c.entropy, H(map));
        near(c.normalised_entropy, H(map) / 2);
        near(c.image_mass, 0.1 * map.reduce((a, b) => a + b, 0));
      }
    }
    near(body.results[1].cells.find((c: { layer_index: number; head: number }) => c.layer_index === 2 && c.head === 0).entropy, -(0.75 * Math.log2(0.75) + 0.25 * Math.log2(0.25)));

    const fig = (await get(d, '/api/figures/attention-entropy?field=normalised_entropy')).json();
    assert.equal(fig.figure, 'attention-entropy');
    assert.equal(fig.rows, 8);
    assert.equal(fig.provenance.source, 'attention.json');
    assert.match(fig.provenance.definition, /Shannon entropy \(bits\).*4 image tokens/);
    assert.match(fig.spec.title.subtitle.join(' '), /over 1 sample\(s\) × 1 query row\(s\)/);
    const values = fig.spec.data.values as { variant: string; layer_index: number; head: number; normalised_entropy: number }[];
    near(values.find((v) => v.variant === 'baseline' && v.layer_index === 1 && v.head === 1)!.normalised_entropy, 0.5);
    assert.equal(fig.spec.spec.encoding.color.field, 'normalised_entropy');
    const one = (await get(d, '/api/figures/attention-entropy?variant=viral')).json();
    assert.equal(one.rows, 4);
    const bad = await get(d, '/api/figures/attention-entropy?variant=residual');
    assert.equal(bad.status, 422);
    assert.match(bad.json().message, /no variant 'residual' in attention\.json \(variants: baseline, viral\)/);
  });

  test('overlay: the most focused head by default, the chosen layer × head on request, its map renormalised', async () => {
    const def = (await get(d, '/api/figures/attention-overlay')).json();
    // baseline (first result): layer 2 head 0 is one-hot on token 3 (0 bits), the lowest of its cells.
    assert.deepEqual([def.provenance.variant, def.provenance.layer_index, def.provenance.head], ['baseline', 2, 0]);
    assert.deepEqual(def.spec.layer[0].data.values.map((v: { attention: number }) => v.attention), [0, 0, 0, 1]);
    assert.deepEqual(def.spec.layer[0].data.values.map((v: { row: number; col: number }) => [v.row, v.col]), [[0, 0], [0, 1], [1, 0], [1, 1]]);
    assert.ok(def.notes.some((n: string) => /no image under the map/.test(n)), 'a non-demo run has no scene to draw');
    const chosen = (await get(d, '/api/figures/attention-overlay?variant=viral&layer=2')).json();
    // Layer 2 of viral: head 0 (0.811 bits) is more focused than head 1 (1 bit).
    assert.equal(chosen.provenance.head, 0);
    assert.deepEqual(chosen.spec.layer[0].data.values.map((v: { attention: number }) => v.attention), [0.75, 0.25, 0, 0]);
    assert.match(chosen.spec.title.text, /viral @ step 200: layer ℓ = 2 \(blocks\.1\), head 0/);
    const head1 = (await get(d, '/api/figures/attention-overlay?variant=viral&layer=1&head=1')).json();
    assert.deepEqual(head1.spec.layer[0].data.values.map((v: { attention: number }) => v.attention), [0.25, 0.25, 0.25, 0.25]);
    const bad = await get(d, '/api/figures/attention-overlay?head=7');
    assert.equal(bad.status, 422);
    assert.match(bad.json().message, /no head 7 .*heads: 0, 1/);
  });

  test('exports: SVG, PNG, PDF of the charts, CSV and JSON of their numbers', async () => {
    for (const name of ['attention-entropy', 'attention-overlay', 'patch-shuffle']) {
      const svg = await get(d, `/api/export/${name}?format=svg`);
      assert.equal(svg.status, 200, name);
      assert.match(svg.body, /^<svg/, name);
      assert.match(svg.headers['content-disposition'] as string, new RegExp(`viral-lens-${name}\\.svg`));
      const png = await get(d, `/api/export/${name}?format=png`);
      assert.deepEqual([...png.raw.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a], name);
      const pdf = await get(d, `/api/export/${name}?format=pdf`);
      assert.equal(pdf.raw.subarray(0, 5).toString('latin1'), '%PDF-', name);
      const json = JSON.parse((await get(d, `/api/export/${name}?format=json`)).body);
      assert.equal(json.provenance.source, name === 'patch-shuffle' ? 'shuffle.json' : 'attention.json');
      assert.ok(json.rows.length > 0, name);
    }
    const csv = (await get(d, '/api/export/attention-entropy?format=csv')).body.trim().split('\n');
    assert.equal(csv.length, 1 + 8);
    for (const col of ['variant', 'layer_index', 'head', 'entropy', 'normalised_entropy', 'image_mass']) assert.ok(csv[0]!.split(',').includes(col), col);
    const overlay = (await get(d, '/api/export/attention-overlay?format=csv&variant=viral&layer=1&head=0')).body.trim().split('\n');
    assert.equal(overlay.length, 1 + 4, 'one row per token');
  });
});

describe('patch shuffle', () => {
  test('accuracies, drops and McNemar p per variant and type equal the hand-counted plan', async () => {
    const r = await get(d, '/api/shuffle');
    assert.equal(r.status, 200);
    const [result] = r.json().results;
    assert.deepEqual(result.seeds, [1]);
    for (const variant of ['baseline', 'viral'] as const) {
      for (const type of ['count', 'relation'] as const) {
        const { original, lost } = SHUFFLE_PLAN[variant][type];
        const row = result.rows.find((x: { variant: string; question_type: string }) => x.variant === variant && x.question_type === type);
        assert.equal(row.n, 8);
        assert.equal(row.correct_original, original);
        assert.equal(row.correct_shuffled, original - lost);
        assert.equal(row.drop, lost);
        assert.equal(row.lost, lost);
        assert.equal(row.gained, 0);
        near(row.p_value, Math.min(1, 2 * 2 ** -lost), 1e-12);
      }
    }
    const viralAll = result.rows.find((x: { variant: string; question_type: string }) => x.variant === 'viral' && x.question_type === 'all');
    assert.deepEqual([viralAll.n, viralAll.correct_original, viralAll.correct_shuffled], [16, 16, 9]);
    near(viralAll.p_value, 2 / 128, 1e-12);

    const fig = (await get(d, '/api/figures/patch-shuffle')).json();
    assert.equal(fig.rows, 2 * 3 * 2, 'variant × type × (original, shuffled)');
    const bar = (fig.spec.data.values as { variant: string; question_type: string; order: string; accuracy: number }[]).find((v) => v.variant === 'viral' && v.question_type === 'relation' && v.order === 'shuffled')!;
    near(bar.accuracy, 2 / 8, 1e-12);
    assert.match(fig.spec.title.subtitle, /McNemar exact test per seed/);
    assert.equal((await get(d, '/api/figures/patch-shuffle?step=200')).status, 200);
    const noStep = await get(d, '/api/figures/patch-shuffle?step=5');
    assert.equal(noStep.status, 422);
    assert.match(noStep.json().message, /no patch-shuffle result at step 5 \(steps: 200\)/);
  });
});

describe('missing, corrupt and escaping files', () => {
  test('a runs folder without the files: 404 that says how to produce them; the listing says none', async () => {
    const list = (await get(dBare, '/api/analyses')).json();
    assert.deepEqual(list.folders, [{ dir: '.', attention: null, shuffle: null }]);
    for (const [url, file] of [
      ['/api/attention', 'attention.json'],
      ['/api/shuffle', 'shuffle.json'],
      ['/api/figures/attention-entropy', 'attention.json'],
      ['/api/figures/patch-shuffle', 'shuffle.json'],
      ['/api/export/attention-overlay?format=svg', 'attention.json'],
    ] as const) {
      const r = await get(dBare, url);
      assert.equal(r.status, 404, url);
      assert.match(r.json().message, new RegExp(`no ${file.replace('.', '\\.')} in RUNS_DIR or any run folder under it\\. The embedded demo writes it`), url);
    }
    const inRun = await get(dBare, '/api/shuffle?dir=viral');
    assert.equal(inRun.status, 404);
    assert.match(inRun.json().message, /no shuffle\.json in RUNS_DIR\/viral/);
  });

  test('corrupt files are 422 errors naming the file and field; the server keeps serving', async () => {
    await writeFile(join(bare, 'attention.json'), '{"format": "viral-lens.attention", oops');
    await writeFile(join(bare, 'shuffle.json'), JSON.stringify({ format: 'viral-lens.shuffle', version: 1, results: [{ model: 'm', step: 1, description: '', seeds: [1], variants: ['a'], rows: [{ variant: 'a', n: 'x' }], comparisons: [] }] }));
    try {
      const a = await get(dBare, '/api/attention');
      assert.equal(a.status, 422);
      assert.match(a.json().message, /^attention\.json: invalid JSON/);
      const s = await get(dBare, '/api/figures/patch-shuffle');
      assert.equal(s.status, 422);
      assert.match(s.json().message, /^shuffle\.json: results\[0\]\.rows\[0\]\.question_type: missing/);
      const list = (await get(dBare, '/api/analyses')).json();
      assert.match(list.folders[0].attention.error, /invalid JSON/);
      assert.match(list.folders[0].shuffle.error, /results\[0\]\.rows\[0\]/);
      assert.equal((await get(dBare, '/api/health')).json().ok, true);
      assert.equal((await get(dBare, '/shuffle')).status, 200);
    } finally {
      await rm(join(bare, 'attention.json'));
      await rm(join(bare, 'shuffle.json'));
    }
  });

  test('dir must be RUNS_DIR or a folder above a capture; files symlinked outside are refused', async () => {
    for (const dir of ['..', '../..', '/etc', 'viral/step-1', 'viral/../..', 'nope']) {
      const r = await get(dBare, `/api/attention?dir=${encodeURIComponent(dir)}`);
      assert.equal(r.status, 422, dir);
      assert.match(r.json().message, /is not RUNS_DIR or a folder above a capture/, dir);
    }
    assert.equal((await get(dBare, `/api/attention?dir=${encodeURIComponent('a\\b')}`)).status, 400);
    assert.equal((await get(dBare, '/api/attention?dir=.&extra=1')).status, 400);
    await writeFile(join(outside, 'attention.json'), '{}');
    await symlink(join(outside, 'attention.json'), join(bare, 'attention.json'));
    try {
      const r = await get(dBare, '/api/attention?dir=.');
      assert.equal(r.status, 422);
      assert.match(r.json().message, /attention\.json resolves outside RUNS_DIR/);
      assert.match((await get(dBare, '/api/analyses')).json().folders[0].attention.error, /resolves outside RUNS_DIR/);
    } finally {
      await rm(join(bare, 'attention.json'));
    }
  });

  test('writing an analysis file is a change event (the pages follow it live)', async () => {
    const seen = new Promise<string[]>((resolve) => dBare.index.once('change', (c: { analyses: string[] }) => resolve(c.analyses)));
    await writeAnalysesFixture(bare);
    await dBare.index.refresh();
    assert.deepEqual(await seen, ['.']);
    assert.equal((await get(dBare, '/api/figures/attention-entropy')).status, 200);
    await rm(join(bare, 'attention.json'));
    await rm(join(bare, 'shuffle.json'));
  });
});

test("the demo's overlay is drawn on its scene, redrawn from the sample id", async () => {
  const demo = await mkdtemp(join(tmpdir(), 'vl-analyses-demo-'));
  let app: Dashboard | null = null;
  try {
    await writeFixtureCapture(join(demo, 'viral', 'step-1'), 'viral', 1);
    await writeAnalysesFixture(demo, DEMO_MODEL_NAME, 'scene-s3-000005');
    app = await buildApp({ runsDir: demo, engine: 'ref', workers: 1, cacheDir: null });
    const fig = (await get(app, '/api/figures/attention-overlay')).json();
    assert.equal(fig.spec.layer.length, 2, 'image layer under the heat layer');
    const url: string = fig.spec.layer[0].data.values[0].url;
    assert.match(url, /^data:image\/png;base64,/);
    // Decode the PNG by hand (one IDAT, filter 0 per row) and compare with the scene rendered here.
    const png = Buffer.from(url.slice(url.indexOf(',') + 1), 'base64');
    assert.equal(png.readUInt32BE(16), IMAGE_SIZE);
    assert.equal(png.readUInt32BE(20), IMAGE_SIZE);
    const idat = png.indexOf('IDAT');
    const raw = inflateSync(png.subarray(idat + 4, idat + 4 + png.readUInt32BE(idat - 4)));
    const stride = IMAGE_SIZE * 3 + 1;
    const pixels = Buffer.concat(Array.from({ length: IMAGE_SIZE }, (_, y) => raw.subarray(y * stride + 1, (y + 1) * stride)));
    assert.ok(Buffer.from(renderScene(generateScene(3, 5))).equals(pixels), 'the PNG holds scene 5 of seed 3');
    assert.equal(fig.provenance.image, 'the scene redrawn from its id (demo/model/scenes.ts)');
    const pdf = await get(app, '/api/export/attention-overlay?format=pdf');
    assert.match(pdf.raw.toString('latin1'), /\/Subtype \/Image/, 'the PDF embeds the scene');
  } finally {
    await app?.close();
    await rm(demo, { recursive: true, force: true });
  }
});
