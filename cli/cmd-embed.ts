import { writeFile } from 'node:fs/promises';
import { basename, dirname, extname } from 'node:path';
import { parseArgs } from 'node:util';
import { runPcaGrid, runUmap, type UmapRunOptions } from '../analysis/embeddings.js';
import { UMAP } from '../analysis/params.js';
import { pcaGridFigure, renderFigure, toCsv, umapFigure, type Figure, type Series } from '../analysis/figures.js';
import { PCA_RGB_NORMALISATION } from '../src/embeddings/index.js';
import { createEngine, describeEngine, type Engine } from '../src/engine/index.js';
import { InputError } from '../src/core/errors.js';
import { openCapture, type Capture } from '../src/store/capture.js';
import { listOption } from './args.js';
import { flagOptions, flagValues } from './params.js';
import { table, toJson } from './format.js';
import { Progress } from './progress.js';

/**
 * `embed` (UMAP of one layer across captures, Procrustes-aligned) and `pca-grid` (PCA-RGB token grids of one image
 * per layer): the dashboard's embeddings page from the command line, with the figure written as a file.
 */
type Values = Record<string, string | boolean | string[] | undefined>;

interface EmbedContext {
  captures: Capture[];
  series: Series[];
  engine: Engine;
  progress: Progress;
}

export async function run(argv: string[]): Promise<number> {
  const [mode, ...rest] = argv;
  if (mode !== 'umap' && mode !== 'pca-grid') throw new InputError(`expected 'umap' or 'pca-grid' after 'embed', got '${mode ?? ''}'`);
  const { values, positionals } = parseArgs({
    args: rest,
    allowPositionals: true,
    options: {
      ...flagOptions(UMAP),
      layer: { type: 'string' },
      layers: { type: 'string' },
      label: { type: 'string' },
      sample: { type: 'string' },
      out: { type: 'string' },
      json: { type: 'boolean', default: false },
      quiet: { type: 'boolean', default: false },
    },
  });
  if (positionals.length === 0) throw new InputError('expected one or more capture directories');
  const params = flagValues(UMAP, values) as unknown as UmapParams;
  const captures = await Promise.all(positionals.map((p) => openCapture(p)));
  const engine = await createEngine(params.engine);
  const ctx: EmbedContext = { captures, series: seriesFor(captures), engine, progress: new Progress(!values.quiet) };
  let figure: Figure;
  try {
    figure = mode === 'umap' ? await umapOf(ctx, params, values) : await pcaGridOf(ctx, values);
  } finally {
    ctx.progress.stop();
    await engine.dispose();
  }
  if (values.json) process.stdout.write(toJson({ figure: figure.name, provenance: figure.provenance, notes: figure.notes, data: figure.data }));
  if (values.out) await writeFigure(figure, values.out as string, !values.json);
  return 0;
}

type UmapParams = Omit<UmapRunOptions, 'engine' | 'layer' | 'onProgress' | 'signal'> & { engine: string };

/** `embed umap`: the maps, the figure, and (without --json) a line of parameters and the alignment table. */
async function umapOf({ captures, series, engine, progress }: EmbedContext, params: UmapParams, values: Values): Promise<Figure> {
  const given = values.layer as string | undefined;
  if (given === undefined) throw new InputError('--layer is required (a layer name or hidden_states index)');
  const layer = /^\d+$/.test(given) ? Number(given) : given;
  const { engine: _name, ...options } = params;
  const r = await runUmap(captures, { ...options, engine, layer, onProgress: (e) => progress.update(e.stage, e.done, e.total) });
  const labels = r.meta.labels;
  const wanted = values.label as string | undefined;
  if (wanted && !labels.includes(wanted)) {
    throw new InputError(`--label: no label '${wanted}' in the manifest (labels: ${labels.join(', ') || 'none'})`);
  }
  const label = wanted ?? labels[0] ?? null;
  const seriesOf = new Map(captures.map((c, i) => [c.dir, series[i]!.label]));
  const panel = r.panels[0]!;
  const figure = umapFigure(
    r.points.map((p) => ({ series: seriesOf.get(p.capture) ?? p.variant, sample_id: p.sample_id, token: p.token, x: p.x, y: p.y, label: label === null ? null : (p.labels[label] ?? null) })),
    { label, series, layer: `${panel.layer} (ℓ = ${panel.layer_index})`, provenance: { ...r.meta, engine: describeEngine(engine) }, notes: r.errors.map((e) => `${e.capture}: ${e.error}`) },
  );
  if (!values.json) {
    process.stdout.write(`UMAP of layer ${panel.layer} (ℓ = ${panel.layer_index}): seed ${r.meta.seed}, ${r.meta.n_neighbors} neighbours, min_dist ${r.meta.min_dist}, ${r.meta.n_epochs} epochs, ${r.meta.metric} on ${r.meta.preprocess}, tokens ${r.meta.token_mode}, n = ${panel.n}, engine ${describeEngine(engine)}\n`);
    process.stdout.write(
      table(
        ['series', 'capture', 'n', 'aligned to', 'Procrustes relative RMSD'],
        r.panels.map((p) => [seriesOf.get(p.capture) ?? p.variant, p.capture, p.n, p.alignment ? (seriesOf.get(p.alignment.to) ?? p.alignment.to) : '(reference)', p.alignment ? p.alignment.relativeRmsd.toFixed(4) : '-']),
      ),
    );
  }
  return figure;
}

/** `embed pca-grid`: one image's token grid per layer, its figure, and (without --json) the explained variances. */
async function pcaGridOf({ captures, series, engine, progress }: EmbedContext, values: Values): Promise<Figure> {
  const given = values.sample as string | undefined;
  const sample = given === undefined ? 0 : /^\d+$/.test(given) ? Number(given) : given;
  const layers = listOption(values.layers as string | undefined).map((l) => (/^\d+$/.test(l) ? Number(l) : l));
  const r = await runPcaGrid(captures, { sample, engine, ...(layers.length ? { layers } : {}), onProgress: (e) => progress.update(e.stage, e.done, e.total) });
  const seriesOf = new Map(captures.map((c, i) => [c.dir, series[i]!.label]));
  const figure = pcaGridFigure(
    r.panels.map((p) => ({ series: seriesOf.get(p.capture) ?? p.variant, layer: p.layer, layer_index: p.layer_index, rows: p.rows, cols: p.cols, colors: p.colors, explained: p.explained })),
    { sample: r.meta.sample, series, provenance: { ...r.meta, normalisation: PCA_RGB_NORMALISATION, engine: describeEngine(engine) }, notes: r.errors.map((e) => `${e.capture}: ${e.error}`) },
  );
  if (!values.json) {
    process.stdout.write(`PCA-RGB token grids of sample ${r.meta.sample}: PCs 1–3 of its tokens per layer → R, G, B (${PCA_RGB_NORMALISATION}), engine ${describeEngine(engine)}\n`);
    process.stdout.write(
      table(
        ['series', 'layer', 'grid', 'explained variance PC1/PC2/PC3'],
        r.panels.map((p) => [seriesOf.get(p.capture) ?? p.variant, `${p.layer_index}:${p.layer}`, `${p.rows}×${p.cols}`, p.explained.map((e) => e.toFixed(3)).join(' / ')]),
      ),
    );
  }
  return figure;
}

/** --out FILE: the figure rendered (.svg/.png/.pdf), or its spec and data (.json), or its data (.csv). */
async function writeFigure(figure: Figure, out: string, say: boolean): Promise<void> {
  const ext = extname(out).slice(1).toLowerCase();
  if (ext === 'svg' || ext === 'png' || ext === 'pdf') await writeFile(out, (await renderFigure(figure.spec, ext)).body);
  else if (ext === 'json') await writeFile(out, toJson({ spec: figure.spec, provenance: figure.provenance, data: figure.data }));
  else if (ext === 'csv') await writeFile(out, toCsv(figure.data));
  else throw new InputError(`--out ${out}: expected a .svg, .png, .pdf, .json or .csv file`);
  if (say) process.stdout.write(`wrote ${out}\n`);
}

/** One series per capture: its variant, made unique with the step or the run folder where variants repeat. */
function seriesFor(captures: Capture[]): Series[] {
  const variants = captures.map((c) => c.manifest.variant);
  return captures.map((c, i) => {
    const step = c.manifest.checkpoint?.step ?? null;
    const v = variants[i]!;
    const repeated = variants.filter((x) => x === v).length > 1;
    const label = repeated ? `${v} · ${step !== null ? `step ${step}` : basename(dirname(c.dir)) + '/' + basename(c.dir)}` : v;
    return { label, variant: v, step };
  });
}
