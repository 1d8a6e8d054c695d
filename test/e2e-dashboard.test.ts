/**
 * End to end in headless Chromium (Debian `chromium`, driven by playwright-core): every page renders charts with
 * marks, selectors change them, a step written during the test arrives over SSE without a reload, exports are valid
 * files, and escaping or oversize requests are refused. Screenshots of every page go to test-output/screenshots/.
 *
 * Needs /usr/bin/chromium (apt package `chromium`, listed in .ci/parts/dashboard.apt). Without it the test is
 * skipped, except under CI=true where a missing browser is a failure.
 */
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, afterEach, before, test } from 'node:test';
import type { BrowserContext, Page } from 'playwright-core';
import { startServer, type StartedServer } from '../server/app.js';
import { addBrokenCaptures, makeRunsFixture, writeAnalysesFixture, writeFixtureCapture } from './server-fixture.js';

const CHROMIUM = process.env.CHROMIUM_PATH ?? '/usr/bin/chromium';
const SHOTS = resolve('test-output', 'screenshots');
const haveBrowser = existsSync(CHROMIUM);
const skip = !haveBrowser && process.env.CI !== 'true' ? `headless Chromium not found at ${CHROMIUM} (apt-get install chromium); skipping the end-to-end test` : false;

let root: string;
let profile: string;
let server: StartedServer;
let context: BrowserContext;
let page: Page;
/** Uncaught exceptions and console errors of the page; every test must leave none. */
const pageErrors: string[] = [];

before(async () => {
  if (skip) return;
  if (!haveBrowser) throw new Error(`CI=true but headless Chromium is missing at ${CHROMIUM}: install the apt packages in .ci/parts/dashboard.apt`);
  root = await mkdtemp(join(tmpdir(), 'vl-e2e-'));
  profile = await mkdtemp(join(tmpdir(), 'vl-chromium-'));
  await makeRunsFixture(root);
  await addBrokenCaptures(root);
  await writeAnalysesFixture(root);
  await mkdir(SHOTS, { recursive: true });
  server = await startServer({ runsDir: root, port: 0, engine: 'ref', workers: 2, pollMs: 300, cacheDir: null });
  const { chromium } = await import('playwright-core');
  context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    viewport: { width: 1440, height: 960 },
    deviceScaleFactor: 1,
  });
  page = context.pages()[0] ?? (await context.newPage());
  page.on('pageerror', (err) => pageErrors.push(`page error: ${err.message}`));
  page.on('console', (msg) => {
    if (msg.type() === 'error') pageErrors.push(`console error: ${msg.text()}`);
  });
});

afterEach(() => {
  const errors = pageErrors.splice(0);
  assert.deepEqual(errors, [], 'the page logged errors');
});

after(async () => {
  await context?.close();
  await server?.close();
  if (root) await rm(root, { recursive: true, force: true });
  if (profile) await rm(profile, { recursive: true, force: true });
  if (!skip) process.stdout.write(`screenshots: ${SHOTS}\n`);
});

/** Waits until the card of `figure` has rendered (state ready) after version `after`. */
async function ready(figure: string, afterVersion = 0, timeout = 30000): Promise<number> {
  const sel = `.card[data-figure="${figure}"]`;
  await page.waitForFunction(
    ([s, v]) => {
      const el = document.querySelector(s as string) as HTMLElement | null;
      return !!el && el.dataset.state === 'ready' && Number(el.dataset.version) > (v as number);
    },
    [sel, afterVersion],
    { timeout },
  );
  return Number(await page.getAttribute(sel, 'data-version'));
}

async function count(selector: string): Promise<number> {
  return page.locator(selector).count();
}

async function shot(name: string): Promise<void> {
  await page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true });
}

test('overview: runs and captures tables, live connection', { skip }, async () => {
  await page.goto(server.url);
  await page.waitForSelector('#runs-table tbody tr');
  assert.equal(await count('#runs-table tbody tr'), 5);
  assert.equal(await count('#captures-table tbody tr'), 8);
  assert.match(await page.textContent('#captures-table tr[data-capture="broken/step-1"]') ?? '', /error/);
  await page.waitForSelector('#live[data-state="open"]');
  await shot('overview');
});

test('layer-wise: lines with marked layers; metric and token selectors change the chart', { skip }, async () => {
  await page.goto(`${server.url}layerwise?runs=baseline,residual,viral`);
  let v = await ready('layerwise');
  const card = '.card[data-figure="layerwise"]';
  assert.ok((await count(`${card} .mark-line path`)) >= 3, 'one line per variant');
  assert.ok((await count(`${card} .mark-symbol path`)) >= 15, 'points per layer');
  assert.ok((await count(`${card} .mark-rule line`)) >= 1, 'the aligned layer is marked');
  // Opens on the demo readout's settings: per-token rows (40 images × 4 tokens), n ≥ 10·k, so no small-n warning.
  assert.match((await page.textContent(card)) ?? '', /CKNNA, k = 10 · target clip · tokens per-token · preprocess prh\(q=0\.95\) · n = 160 · engine ref/);
  assert.equal(await page.inputValue('select[name="tokens"]'), 'per-token');
  assert.equal(await count(`${card} .msg.warning`), 0);
  assert.match((await page.textContent(card)) ?? '', /VIRAL aligned ℓ=2/);
  await shot('layerwise');
  // Mean-pooled, n = 40 < 10·k: the CKNNA small-n warning is shown on the card.
  await page.selectOption('select[name="tokens"]', 'mean');
  v = await ready('layerwise', v);
  assert.match((await page.textContent(card)) ?? '', /tokens mean · preprocess prh\(q=0\.95\) · n = 40/);
  assert.ok(await page.isVisible(`${card} .msg.warning`), 'small-n warning visible');
  assert.match((await page.textContent(`${card} .msg.warning`)) ?? '', /CKNNA at small n = 40 for k = 10 \(n < 10·k\)/);
  assert.match(page.url(), /tokens=mean/);
  await page.selectOption('select[name="metric"]', 'mutual_knn');
  v = await ready('layerwise', v);
  assert.match((await page.textContent(card)) ?? '', /mutual k-NN, k = 10/);
  assert.match(page.url(), /metric=mutual_knn/);
  await page.selectOption('select[name="target"]', 'dinov2');
  v = await ready('layerwise', v);
  assert.match((await page.textContent(card)) ?? '', /target dinov2/);
  await page.selectOption('select[name="tokens"]', 'first');
  await ready('layerwise', v);
  assert.match((await page.textContent(card)) ?? '', /tokens first · preprocess prh\(q=0\.95\) · n = 40/);
  // Export links carry the current selection and return valid files.
  for (const [format, check] of [
    ['svg', (b: Buffer) => assert.match(b.toString('utf8', 0, 200), /^<svg/)],
    ['png', (b: Buffer) => assert.deepEqual([...b.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])],
    ['pdf', (b: Buffer) => assert.equal(b.toString('latin1', 0, 5), '%PDF-')],
    ['csv', (b: Buffer) => assert.match(b.toString('utf8').split('\n')[0]!, /metric/)],
  ] as const) {
    const href = await page.getAttribute(`${card} .exports a[data-format="${format}"]`, 'href');
    assert.match(href!, /metric=mutual_knn.*target=dinov2.*tokens=first/);
    const res = await page.request.get(new URL(href!, server.url).href);
    assert.equal(res.status(), 200, format);
    check(await res.body());
  }
});

test('live: a step written during the test appears in the checkpoint curves without a reload', { skip }, async () => {
  await page.goto(`${server.url}layerwise?runs=viral&color=step`);
  const v = await ready('layerwise');
  const card = '.card[data-figure="layerwise"]';
  assert.equal(await page.getAttribute(card, 'data-captures'), 'viral/step-100,viral/step-200');
  const marker = await page.evaluate(() => ((window as unknown as { marker: number }).marker = 42));
  await writeFixtureCapture(join(root, 'viral', 'step-300'), 'viral', 300);
  await page.waitForFunction((s) => document.querySelector(s)?.getAttribute('data-captures')?.includes('viral/step-300'), card, { timeout: 20000 });
  await ready('layerwise', 0);
  assert.equal(await page.evaluate(() => (window as unknown as { marker: number }).marker), marker, 'the page was not reloaded');
  assert.match((await page.textContent(card)) ?? '', /step 300/);
  assert.ok(v >= 1);
  await shot('layerwise-live');
});

test('checkpoints: layer × step heatmaps, difference to baseline, one layer over training', { skip }, async () => {
  await page.goto(`${server.url}checkpoints?runs=baseline,residual,viral`);
  await ready('checkpoints');
  await ready('training');
  assert.ok((await count('.card[data-figure="checkpoints"] .mark-rect path')) >= 3 * 3 * 5, 'a cell per run × step × layer');
  assert.match((await page.textContent('.card[data-figure="checkpoints"]')) ?? '', /difference to baseline/);
  assert.ok((await count('.card[data-figure="training"] .mark-line path')) >= 3);
  await shot('checkpoints');
});

test('variants: curves per target next to the accuracy bars', { skip }, async () => {
  await page.goto(`${server.url}variants?runs=baseline,residual,viral`);
  await ready('variants');
  const card = '.card[data-figure="variants"]';
  assert.ok((await count(`${card} .mark-line path`)) >= 6, 'three variants × two targets');
  assert.ok((await count(`${card} .mark-rect path`)) >= 6, 'bars: three variants × two benchmarks');
  assert.match((await page.textContent(card)) ?? '', /POPE/);
  await shot('variants');
});

test('embeddings: UMAP panels per variant and PCA-RGB grids; the label selector recolours', { skip }, async () => {
  await page.goto(`${server.url}embeddings?runs=baseline,residual,viral`);
  const v = await ready('umap');
  await ready('pca-grid');
  const umap = '.card[data-figure="umap"]';
  assert.ok((await count(`${umap} .mark-symbol path`)) >= 3 * 40, 'every image in every panel');
  assert.match((await page.textContent(umap)) ?? '', /coloured by class/);
  await page.selectOption('select[name="label"]', 'count');
  await ready('umap', v);
  assert.match((await page.textContent(umap)) ?? '', /coloured by count/);
  // The PCA grid is drawn on a canvas: it must hold many distinct colours, not a blank.
  const colours = await page.evaluate(() => {
    const c = document.querySelector('.card[data-figure="pca-grid"] canvas') as HTMLCanvasElement;
    const d = c.getContext('2d')!.getImageData(0, 0, c.width, c.height).data;
    const seen = new Set<number>();
    for (let i = 0; i < d.length; i += 4) seen.add((d[i]! << 16) | (d[i + 1]! << 8) | d[i + 2]!);
    return seen.size;
  });
  assert.ok(colours > 20, `distinct colours on the PCA grid canvas: ${colours}`);
  await shot('embeddings');
});

test('probes: accuracy per layer from probes.json', { skip }, async () => {
  await page.goto(`${server.url}probes?runs=baseline,viral&step=200`);
  await ready('probes');
  assert.ok((await count('.card[data-figure="probes"] .mark-line path')) >= 2);
  await shot('probes');
});

test('attention: layer × head entropy heatmaps per variant and one head over the token grid; selectors and exports', { skip }, async () => {
  await page.goto(server.url);
  assert.equal(await count('.sidebar a[href="/attention"]'), 1, 'linked in the sidebar');
  await page.click('.sidebar a[href="/attention"]');
  await ready('attention-entropy');
  let v = await ready('attention-overlay');
  const heat = '.card[data-figure="attention-entropy"]';
  const overlay = '.card[data-figure="attention-overlay"]';
  assert.ok((await count(`${heat} .mark-rect path`)) >= 2 * 2 * 2, 'a cell per variant × layer × head');
  assert.match((await page.textContent(heat)) ?? '', /baseline @ 200[\s\S]*viral @ 200/);
  assert.match((await page.textContent(heat)) ?? '', /Shannon entropy \(bits\) of each query's attention over the 4 image tokens/);
  assert.ok((await count(`${overlay} .mark-rect path`)) >= 4, 'a cell per token');
  assert.match((await page.textContent(overlay)) ?? '', /baseline @ step 200: layer ℓ = 2 \(blocks\.1\), head 0/);
  await shot('attention');
  await page.selectOption('select[name="variant"]', 'viral');
  v = await ready('attention-overlay');
  await page.selectOption('select[name="layer"]', '1');
  v = await ready('attention-overlay', v);
  await page.selectOption('select[name="head"]', '1');
  await ready('attention-overlay', v);
  assert.match((await page.textContent(overlay)) ?? '', /viral @ step 200: layer ℓ = 1 \(blocks\.0\), head 1/);
  assert.match(page.url(), /variant=viral.*layer=1.*head=1/);
  await page.selectOption('select[name="field"]', 'normalised_entropy');
  await ready('attention-entropy', 1);
  assert.match((await page.textContent(heat)) ?? '', /spatial entropy \/ log2 N/);
  for (const [format, check] of [
    ['svg', (b: Buffer) => assert.match(b.toString('utf8', 0, 200), /^<svg/)],
    ['png', (b: Buffer) => assert.deepEqual([...b.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a])],
    ['pdf', (b: Buffer) => assert.equal(b.toString('latin1', 0, 5), '%PDF-')],
    ['csv', (b: Buffer) => assert.match(b.toString('utf8').split('\n')[0]!, /attention/)],
    ['json', (b: Buffer) => assert.equal(JSON.parse(b.toString('utf8')).provenance.head, 1)],
  ] as const) {
    const href = await page.getAttribute(`${overlay} .exports a[data-format="${format}"]`, 'href');
    assert.match(href!, /variant=viral.*layer=1.*head=1/);
    const res = await page.request.get(new URL(href!, server.url).href);
    assert.equal(res.status(), 200, format);
    check(await res.body());
  }
  await shot('attention-viral');
});

test('patch shuffle: accuracy in place vs shuffled per variant and type, drop and McNemar p; exports', { skip }, async () => {
  await page.goto(`${server.url}shuffle`);
  await ready('patch-shuffle');
  const card = '.card[data-figure="patch-shuffle"]';
  assert.ok((await count(`${card} .mark-rect path`)) >= 2 * 2 * 2, 'bars: variant × (in place, shuffled), where accuracy > 0');
  assert.match((await page.textContent(card)) ?? '', /McNemar exact test per seed/);
  await page.waitForSelector('#shuffle-table tbody tr');
  assert.equal(await count('#shuffle-table tbody tr'), 2 * 3, 'variant × (all, count, relation)');
  const row = (await page.textContent('#shuffle-table tr[data-variant="viral"][data-type="relation"]')) ?? '';
  assert.match(row, /8\s*8\s*2\s*100\.0\s*25\.0\s*6\s*6 \/ 0\s*0\.031/);
  for (const format of ['svg', 'png', 'pdf', 'csv', 'json']) {
    const href = await page.getAttribute(`${card} .exports a[data-format="${format}"]`, 'href');
    const res = await page.request.get(new URL(href!, server.url).href);
    assert.equal(res.status(), 200, format);
  }
  await shot('shuffle');
});

test('analysis files: missing says how to produce them, corrupt shows the error; both live, the server stays up', { skip }, async () => {
  await page.goto(`${server.url}attention`);
  await ready('attention-entropy');
  const marker = await page.evaluate(() => ((window as unknown as { marker: number }).marker = 7));
  await rename(join(root, 'attention.json'), join(root, 'attention.json.bak'));
  await page.waitForSelector('#analysis-missing', { timeout: 20000 });
  assert.match((await page.textContent('#analysis-missing')) ?? '', /No attention\.json under .*npm run demo/);
  assert.equal(await page.evaluate(() => (window as unknown as { marker: number }).marker), marker, 'updated without a reload');
  await shot('attention-missing');
  await rename(join(root, 'attention.json.bak'), join(root, 'attention.json'));
  await page.waitForSelector('.card[data-figure="attention-entropy"]', { timeout: 20000 });

  const good = await readFile(join(root, 'shuffle.json'), 'utf8');
  await writeFile(join(root, 'shuffle.json'), good.slice(0, 200));
  try {
    await page.goto(`${server.url}shuffle`);
    await page.waitForSelector('#analysis-error');
    assert.match((await page.textContent('#analysis-error')) ?? '', /shuffle\.json: invalid JSON/);
    await shot('shuffle-error');
    const health = await page.request.get(`${server.url}api/health`);
    assert.equal((await health.json()).ok, true);
  } finally {
    await writeFile(join(root, 'shuffle.json'), good);
  }
});

test('errors: a corrupt capture shows its error on its page and next to the chart; the server stays up', { skip }, async () => {
  await page.goto(`${server.url}capture?id=${encodeURIComponent('broken/step-1')}`);
  await page.waitForSelector('#capture-error');
  assert.match((await page.textContent('#capture-error')) ?? '', /invalid JSON/);
  await shot('capture-error');
  await page.goto(`${server.url}layerwise?runs=baseline,truncated`);
  await ready('layerwise');
  assert.match((await page.textContent('.card[data-figure="layerwise"] .msg.error')) ?? '', /truncated\/step-1.*truncated/);
  await shot('layerwise-with-error');
  const health = await page.request.get(`${server.url}api/health`);
  assert.equal((await health.json()).ok, true);
});

test('refused: path escapes and oversize bodies', { skip }, async () => {
  for (const path of ['api/captures/..%2F..%2Fetc%2Fpasswd', 'static/..%2F..%2Fpackage.json', 'api/figures/layerwise?captures=..%2F..%2Fetc']) {
    const r = await page.request.get(`${server.url}${path}`);
    assert.ok(r.status() === 404 || r.status() === 422, `${path}: ${r.status()}`);
    assert.ok(typeof (await r.json()).message === 'string');
  }
  const big = await page.request.post(`${server.url}api/ingest`, {
    headers: { authorization: `Bearer ${server.token}`, 'content-type': 'application/json' },
    data: JSON.stringify({ run: 'x', manifest: { pad: 'x'.repeat(17 * 1024 * 1024) } }),
  });
  assert.equal(big.status(), 413);
});
