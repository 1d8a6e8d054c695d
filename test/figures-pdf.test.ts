/**
 * Paper figures as PDF keep every character: the PDF core fonts (Helvetica, WinAnsi) have no ℓ, so "VIRAL aligned
 * ℓ=2" came out as "VIRAL aligned =2". Checked from outside our code: poppler's pdftotext must read the labels back,
 * pdffonts must list only embedded fonts, and poppler's rasterisation of a lone ℓ must draw the glyph where resvg (a
 * different renderer) draws it from the same SVG. Needs poppler-utils (.ci/parts/dashboard.apt) and DejaVu Sans (the
 * npm package dejavu-fonts-ttf or fonts-dejavu-core); skipped with a message without them, failed under CI=true.
 */
import assert from 'node:assert/strict';
import { execFile, execFileSync } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { promisify } from 'node:util';
import { exportFonts, layerwiseFigure, renderFigure, svgToPdf, type CurvePoint } from '../analysis/figures.js';

const run = promisify(execFile);
const have = (cmd: string) => {
  try {
    execFileSync(cmd, ['-v'], { stdio: 'ignore' });
    return true;
  } catch {
    return false;
  }
};
const missing = [
  ...['pdftotext', 'pdftoppm', 'pdffonts'].filter((c) => !have(c)).map((c) => `${c} (apt-get install poppler-utils)`),
  ...(exportFonts() ? [] : ['DejaVu Sans TTF (npm package dejavu-fonts-ttf, or apt-get install fonts-dejavu-core)']),
];
if (missing.length && process.env.CI === 'true') throw new Error(`CI=true but the PDF export test needs: ${missing.join('; ')}`);
const skip = missing.length ? `PDF export check needs: ${missing.join('; ')}` : false;

let dir = '';
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vl-pdf-'));
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

/** Binary PGM (P5) → width, height, grey values. */
function parsePgm(buf: Buffer): { w: number; h: number; px: Uint8Array } {
  const header = /^P5\s+(\d+)\s+(\d+)\s+(\d+)\s/.exec(buf.subarray(0, 64).toString('latin1'));
  assert.ok(header, 'pdftoppm -gray wrote a P5 PGM');
  const w = Number(header[1]);
  const h = Number(header[2]);
  return { w, h, px: new Uint8Array(buf.subarray(header[0].length, header[0].length + w * h)) };
}

/** Dark pixels (grey < 128) and their bounding box. */
function ink(w: number, h: number, grey: (i: number) => number) {
  let count = 0;
  let [x0, y0, x1, y1] = [w, h, -1, -1];
  for (let y = 0; y < h; y++) {
    for (let x = 0; x < w; x++) {
      if (grey(y * w + x) >= 128) continue;
      count++;
      x0 = Math.min(x0, x);
      y0 = Math.min(y0, y);
      x1 = Math.max(x1, x);
      y1 = Math.max(y1, y);
    }
  }
  return { count, box: [x0, y0, x1, y1] };
}

test('a layer-wise figure exported as PDF keeps "VIRAL aligned ℓ=2", "residual re-injects ℓ=2" and the ℓ of the axis', { skip }, async () => {
  const points: CurvePoint[] = [];
  for (const variant of ['viral', 'residual']) {
    for (let l = 0; l < 5; l++) points.push({ series: variant, variant, step: 300, target: 'clip', metric: 'cknna', layer: `blocks.${l}`, layer_index: l, value: 0.4 + 0.05 * l + (variant === 'viral' ? 0.1 : 0), k: 10, n: 40 });
  }
  const fig = layerwiseFigure(points, {
    metric: 'cknna',
    colorBy: 'variant',
    series: [
      { label: 'viral', variant: 'viral', step: 300 },
      { label: 'residual', variant: 'residual', step: 300 },
    ],
    // The labels the dashboard puts on trained layers (server/figures-api.ts, marksFor).
    marks: [
      { layer_index: 2, label: 'VIRAL aligned ℓ=2', series: 'viral' },
      { layer_index: 2, label: 'residual re-injects ℓ=2', series: 'residual' },
    ],
    provenance: { preprocess: 'prh(q=0.95)', token_mode: 'mean', n: 40 },
  });
  const file = join(dir, 'layerwise.pdf');
  await writeFile(file, (await renderFigure(fig.spec, 'pdf')).body);
  const { stdout: text } = await run('pdftotext', ['-enc', 'UTF-8', file, '-']);
  assert.match(text, /VIRAL aligned ℓ=2/);
  assert.match(text, /residual re-injects ℓ=2/);
  assert.match(text, /LLM layer ℓ \(hidden_states index\)/);
  // Only embedded fonts: the reader's substitute for a non-embedded font is what dropped the glyph.
  const { stdout: fonts } = await run('pdffonts', [file]);
  const lines = fonts.trim().split('\n').slice(2);
  assert.ok(lines.length > 0, fonts);
  for (const line of lines) assert.match(line, /DejaVuSans\S*\s+CID TrueType\s+Identity-H\s+yes\s+yes\s+yes/, `font not embedded: ${line}`);
});

test('poppler draws the ℓ glyph of an exported PDF where resvg draws it from the same SVG', { skip }, async () => {
  // 200×120 CSS px; the PDF page is 150×90 pt, rasterised at 96 dpi back to 200×120 px.
  const svg =
    '<svg xmlns="http://www.w3.org/2000/svg" width="200" height="120" viewBox="0 0 200 120">' +
    '<rect width="200" height="120" fill="white"/>' +
    '<text x="70" y="95" font-family="Helvetica, Arial, sans-serif" font-size="90" fill="black">ℓ</text></svg>';
  const pdfFile = join(dir, 'ell.pdf');
  await writeFile(pdfFile, await svgToPdf(svg));
  await run('pdftoppm', ['-gray', '-r', '96', '-singlefile', pdfFile, join(dir, 'ell')]);
  const pgm = parsePgm(await readFile(join(dir, 'ell.pgm')));
  assert.deepEqual([pgm.w, pgm.h], [200, 120]);
  const drawn = ink(pgm.w, pgm.h, (i) => pgm.px[i]!);
  const { Resvg } = await import('@resvg/resvg-js');
  const f = exportFonts()!;
  const ref = new Resvg(svg, { font: { loadSystemFonts: false, fontFiles: [f.sans], defaultFontFamily: 'DejaVu Sans', sansSerifFamily: 'DejaVu Sans' } }).render();
  const rgba = ref.pixels;
  const want = ink(ref.width, ref.height, (i) => (rgba[4 * i]! + rgba[4 * i + 1]! + rgba[4 * i + 2]!) / 3);
  assert.ok(want.count > 300, `the reference rendering has the glyph (${want.count} dark pixels)`);
  // A dropped glyph leaves the page blank; a wrong one (a box, another letter) has another size or place.
  assert.ok(drawn.count > 0.75 * want.count && drawn.count < 1.33 * want.count, `ℓ ink: PDF ${drawn.count} px, resvg ${want.count} px`);
  for (let i = 0; i < 4; i++) assert.ok(Math.abs(drawn.box[i]! - want.box[i]!) <= 3, `ℓ bounding box: PDF ${drawn.box}, resvg ${want.box}`);
});
