import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  checkpointFigure,
  layerwiseFigure,
  pcaGridFigure,
  probeFigure,
  renderFigure,
  renderSvg,
  seriesColors,
  toCsv,
  trainingFigure,
  umapFigure,
  variantsFigure,
  VARIANT_COLORS,
  type CurvePoint,
  type Figure,
  type Series,
} from '../analysis/figures.js';

const series: Series[] = [
  { label: 'viral', variant: 'viral', step: 300 },
  { label: 'baseline', variant: 'baseline', step: 300 },
  { label: 'residual', variant: 'residual', step: 300 },
];
const prov = { metric: 'cknna', token_mode: 'mean', preprocess: 'prh(q=0.95)', engine: 'cpu (float32)', n: 40 };

function rows(withCi: boolean): CurvePoint[] {
  const out: CurvePoint[] = [];
  for (const s of series)
    for (const target of ['clip', 'dinov2'])
      for (const step of [100, 200, 300])
        for (let l = 0; l <= 8; l++) {
          const v = 0.8 - 0.03 * l + (s.variant === 'viral' && l === 4 ? 0.1 : 0) + step / 3000;
          out.push({ series: s.label, variant: s.variant, step, target, metric: 'cknna', layer: `blocks.${l}`, layer_index: l, value: v, k: 10, n: 40, ...(withCi ? { ci_low: v - 0.02, ci_high: v + 0.02 } : {}) });
        }
  return out;
}

const marks = [{ layer_index: 4, label: 'VIRAL aligned ℓ=4', series: 'viral' }];

function allFigures(): Figure[] {
  const latest = rows(true).filter((r) => r.step === 300);
  return [
    layerwiseFigure(latest, { metric: 'cknna', targets: ['clip'], colorBy: 'variant', series, marks, provenance: prov }),
    layerwiseFigure(rows(false).filter((r) => r.series === 'viral').map((r) => ({ ...r, series: `step ${r.step}` })), {
      metric: 'cknna',
      targets: ['clip'],
      colorBy: 'step',
      series: [100, 200, 300].map((step) => ({ label: `step ${step}`, variant: 'viral', step })),
      provenance: prov,
    }),
    checkpointFigure(rows(false), { metric: 'cknna', target: 'clip', series, baseline: 'baseline', provenance: prov }),
    trainingFigure(rows(true), { metric: 'cknna', target: 'clip', layer_index: 4, series, provenance: prov }),
    variantsFigure(latest, [
      { series: 'baseline', variant: 'baseline', benchmark: 'POPE', value: 85.7 },
      { series: 'viral', variant: 'viral', benchmark: 'POPE', value: 88.32 },
    ], { metric: 'cknna', series, marks, provenance: prov }),
    umapFigure(
      Array.from({ length: 90 }, (_, i) => ({ series: series[i % 3]!.label, sample_id: `s${i}`, token: null, x: Math.sin(i), y: Math.cos(1.3 * i), label: ['cat', 'dog'][i % 2]! })),
      { label: 'class', series, layer: 'blocks.3.out', provenance: { seed: 0, n_neighbors: 15, min_dist: 0.1, preprocess: 'l2', token_mode: 'mean', rows: 30, engine: 'ref' } },
    ),
    pcaGridFigure(
      series.map((s) => ({ series: s.label, layer: 'blocks.1.out', layer_index: 2, rows: 3, cols: 3, colors: Array.from({ length: 9 }, (_, i) => `#${(i * 28).toString(16).padStart(2, '0')}4080`), explained: [0.4, 0.2, 0.1] })),
      { sample: 'img-1', series, provenance: { normalisation: 'robust' } },
    ),
    probeFigure(
      series.flatMap((s) => [0, 1, 2, 3].map((l) => ({ series: s.label, task: 'class · accuracy · mean', layer_index: l, accuracy: 0.6 + 0.05 * l, ci_low: 0.55, ci_high: 0.8, chance: 0.5 }))),
      { series, marks, provenance: {} },
    ),
  ];
}

test('every figure compiles and renders headless without a Vega-Lite or Vega warning', async () => {
  for (const f of allFigures()) {
    const warnings: string[] = [];
    const svg = await renderSvg(f.spec, { onWarning: (w) => warnings.push(w) });
    assert.deepEqual(warnings, [], f.name);
    assert.match(svg, /^<svg/, f.name);
    assert.ok(svg.length > 3000, `${f.name}: ${svg.length} bytes of SVG`);
  }
});

test('the subtitle and usermeta say how the numbers were computed', () => {
  const [lw] = allFigures();
  const title = lw!.spec.title as { subtitle: string };
  assert.equal(title.subtitle, 'CKNNA, k = 10 · target clip · tokens mean · preprocess prh(q=0.95) · n = 40 · engine cpu (float32)');
  const meta = (lw!.spec.usermeta as { viralLens: { provenance: Record<string, unknown> } }).viralLens.provenance;
  assert.equal(meta.k, 10);
  assert.equal(meta.ci, 'ci_low/ci_high from the rows');
});

test('variant colours are fixed and colour-blind safe; checkpoints run dark → light (viridis)', () => {
  const c = seriesColors(series, 'variant');
  assert.deepEqual(c.domain, ['baseline', 'residual', 'viral'], 'sorted baseline, residual, viral');
  assert.deepEqual(c.range, [VARIANT_COLORS.baseline, VARIANT_COLORS.residual, VARIANT_COLORS.viral]);
  const twoViral = seriesColors([{ label: 'viral · a', variant: 'viral', step: 1 }, { label: 'viral · b', variant: 'viral', step: 1 }], 'variant');
  assert.notEqual(twoViral.range[0], twoViral.range[1]);
  const steps = seriesColors([300, 100, 200].map((step) => ({ label: `step ${step}`, variant: 'viral', step })), 'step');
  assert.deepEqual(steps.domain, ['step 100', 'step 200', 'step 300']);
  const luminance = (hex: string) => [1, 3, 5].reduce((a, i, k) => a + [0.2126, 0.7152, 0.0722][k]! * parseInt(hex.slice(i, i + 2), 16), 0);
  assert.ok(luminance(steps.range[0]!) < luminance(steps.range[1]!) && luminance(steps.range[1]!) < luminance(steps.range[2]!));
});

test('checkpoint differences are value − baseline at the same step and layer; the band appears only with CI columns', () => {
  const f = checkpointFigure(rows(false), { metric: 'cknna', target: 'clip', series, baseline: 'baseline', provenance: prov });
  const d = (f.data as unknown as { series: string; step: number; layer_index: number; diff: number | null }[]).find((r) => r.series === 'viral' && r.step === 200 && r.layer_index === 4)!;
  assert.ok(Math.abs(d.diff! - 0.1) < 1e-12);
  assert.ok((f.data as unknown as { series: string; diff: number | null }[]).filter((r) => r.series === 'baseline').every((r) => r.diff === null));
  const noCi = layerwiseFigure(rows(false), { metric: 'cknna', targets: ['clip'], colorBy: 'variant', series, provenance: prov });
  assert.ok(!JSON.stringify(noCi.spec).includes('"ci_low"'));
  const withCi = layerwiseFigure(rows(true), { metric: 'cknna', targets: ['clip'], colorBy: 'variant', series, provenance: prov });
  assert.ok(JSON.stringify(withCi.spec).includes('"y2":{"field":"ci_high"}'));
});

test('NaN values (undefined metric) become gaps, not zeros; CSV quotes what needs quoting', () => {
  const r = rows(false).filter((x) => x.step === 300 && x.target === 'clip');
  r[3]!.value = NaN;
  const f = layerwiseFigure(r, { metric: 'cknna', targets: ['clip'], colorBy: 'variant', series, provenance: prov });
  assert.equal((f.data[3] as { value: unknown }).value, null);
  assert.equal(toCsv([{ a: 'x,y', b: 'say "hi"', c: null, d: [1, 2] }]), 'a,b,c,d\n"x,y","say ""hi""",,"[1,2]"\n');
});

test('PNG and PDF exports are real files of the chart size', async () => {
  const [lw] = allFigures();
  const png = await renderFigure(lw!.spec, 'png', { scale: 1 });
  const bytes = png.body as Uint8Array;
  assert.deepEqual([...bytes.subarray(0, 8)], [0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  const view = new DataView(bytes.buffer, bytes.byteOffset);
  const [w, h] = [view.getUint32(16), view.getUint32(20)];
  const svg = await renderSvg(lw!.spec);
  assert.equal(w, Math.round(Number(/width="([\d.]+)"/.exec(svg)![1])));
  assert.equal(h, Math.round(Number(/height="([\d.]+)"/.exec(svg)![1])));
  const pdf = await renderFigure(lw!.spec, 'pdf');
  const text = Buffer.from(pdf.body as Uint8Array).toString('latin1');
  assert.ok(text.startsWith('%PDF-') && text.trimEnd().endsWith('%%EOF'));
  assert.match(text, /\/MediaBox \[0 0 [\d.]+ [\d.]+\]/);
  // DejaVu Sans embedded as a subset (the core Helvetica has no ℓ; see test/figures-pdf.test.ts).
  assert.match(text, /\/BaseFont \/[A-Z]{6}\+DejaVuSans/);
  assert.doesNotMatch(text, /\/BaseFont \/Helvetica/);
});
