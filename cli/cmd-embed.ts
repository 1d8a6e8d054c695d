import { writeFile } from 'node:fs/promises';
import { basename, dirname, extname } from 'node:path';
import { parseArgs } from 'node:util';
import { runPcaGrid, runUmap } from '../analysis/embeddings.js';
import { pcaGridFigure, renderFigure, toCsv, umapFigure, type Figure, type Series } from '../analysis/figures.js';
import { PCA_RGB_NORMALISATION } from '../src/embeddings/index.js';
import { createEngine, describeEngine } from '../src/engine/index.js';
import { InputError } from '../src/core/errors.js';
import { parsePreprocess } from '../src/metrics/index.js';
import { openCapture, type Capture } from '../src/store/capture.js';
import { parseTokenMode } from '../src/core/tokens.js';
import { intOption, listOption, numberOption } from './args.js';
import { table, toJson } from './format.js';
import { Progress } from './progress.js';

/**
 * `embed` (UMAP of one layer across captures, Procrustes-aligned) and `pca-grid` (PCA-RGB token grids of one image
 * per layer): the dashboard's embeddings page from the command line, with the figure written as a file.
 */
export async function run(argv: string[]): Promise<number> {
  const [mode, ...rest] = argv;
  if (mode !== 'umap' && mode !== 'pca-grid') throw new InputError(`expected 'umap' or 'pca-grid' after 'embed', got '${mode ?? ''}'`);
  const { values, positionals } = parseArgs({
    args: rest,
    allowPositionals: true,
    options: {
      layer: { type: 'string' },
      layers: { type: 'string' },
      label: { type: 'string' },
      sample: { type: 'string' },
      tokens: { type: 'string', default: 'mean' },
      preprocess: { type: 'string', default: 'l2' },
      seed: { type: 'string' },
      neighbors: { type: 'string' },
      'min-dist': { type: 'string' },
      epochs: { type: 'string' },
      'max-rows': { type: 'string' },
      engine: { type: 'string', default: 'auto' },
      out: { type: 'string' },
      json: { type: 'boolean', default: false },
      quiet: { type: 'boolean', default: false },
    },
  });
  if (positionals.length === 0) throw new InputError('expected one or more capture directories');
  const captures = await Promise.all(positionals.map((p) => openCapture(p)));
  const series = seriesFor(captures);
  const engine = await createEngine(values.engine);
  const progress = new Progress(!values.quiet);
  let figure: Figure;
  try {
    if (mode === 'umap') {
      if (values.layer === undefined) throw new InputError('--layer is required (a layer name or hidden_states index)');
      const layer = /^\d+$/.test(values.layer) ? Number(values.layer) : values.layer;
      const maxRows = numberOption('max-rows', values['max-rows']);
      const nNeighbors = numberOption('neighbors', values.neighbors);
      const minDist = numberOption('min-dist', values['min-dist']);
      const nEpochs = numberOption('epochs', values.epochs);
      const r = await runUmap(captures, {
        engine,
        layer,
        tokenMode: parseTokenMode(values.tokens!),
        preprocess: parsePreprocess(values.preprocess!),
        seed: intOption('seed', values.seed, 0),
        ...(nNeighbors === undefined ? {} : { nNeighbors }),
        ...(minDist === undefined ? {} : { minDist }),
        ...(nEpochs === undefined ? {} : { nEpochs }),
        ...(maxRows === undefined ? {} : { maxRows }),
        onProgress: (e) => progress.update(e.stage, e.done, e.total),
      });
      const labels = r.meta.labels;
      if (values.label && !labels.includes(values.label)) {
        throw new InputError(`--label: no label '${values.label}' in the manifest (labels: ${labels.join(', ') || 'none'})`);
      }
      const label = values.label ?? labels[0] ?? null;
      const seriesOf = new Map(captures.map((c, i) => [c.dir, series[i]!.label]));
      const panel = r.panels[0]!;
      figure = umapFigure(
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
    } else {
      const sample = values.sample === undefined ? 0 : /^\d+$/.test(values.sample) ? Number(values.sample) : values.sample;
      const layers = listOption(values.layers).map((l) => (/^\d+$/.test(l) ? Number(l) : l));
      const r = await runPcaGrid(captures, { sample, engine, ...(layers.length ? { layers } : {}), onProgress: (e) => progress.update(e.stage, e.done, e.total) });
      const seriesOf = new Map(captures.map((c, i) => [c.dir, series[i]!.label]));
      figure = pcaGridFigure(
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
    }
  } finally {
    progress.stop();
    await engine.dispose();
  }
  if (values.json) process.stdout.write(toJson({ figure: figure.name, provenance: figure.provenance, notes: figure.notes, data: figure.data }));
  if (values.out) {
    const ext = extname(values.out).slice(1).toLowerCase();
    if (ext === 'svg' || ext === 'png' || ext === 'pdf') await writeFile(values.out, (await renderFigure(figure.spec, ext)).body);
    else if (ext === 'json') await writeFile(values.out, toJson({ spec: figure.spec, provenance: figure.provenance, data: figure.data }));
    else if (ext === 'csv') await writeFile(values.out, toCsv(figure.data));
    else throw new InputError(`--out ${values.out}: expected a .svg, .png, .pdf, .json or .csv file`);
    if (!values.json) process.stdout.write(`wrote ${values.out}\n`);
  }
  return 0;
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
