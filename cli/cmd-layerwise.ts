import { stat, writeFile } from 'node:fs/promises';
import { extname, join } from 'node:path';
import { parseArgs } from 'node:util';
import { curvePoint, layerwiseFigure, renderFigure, type CurvePoint, type Series } from '../analysis/figures.js';
import {
  findStepCaptures,
  runCheckpoints,
  runLayerwise,
  summariseWarnings,
  type CheckpointRow,
  type LayerwiseOptions,
  type LayerwiseRow,
  type TargetSpec,
} from '../analysis/layerwise.js';
import { LAYERWISE } from '../analysis/params.js';
import { parseShard, runShard, sweepParams, type ShardSpec, type SweepParams } from '../analysis/shard.js';
import { describeStats, type SimilarityStats } from '../analysis/stats.js';
import { describeKnnPolicy, withKnnPolicy, type KnnMode } from '../src/engine/approx.js';
import { createEngine, describeEngine } from '../src/engine/index.js';
import { InputError } from '../src/core/errors.js';
import { engineOptions, listOption } from './args.js';
import { fmt, table, toCsv, toJson } from './format.js';
import { flagOptions, flagValues } from './params.js';
import { Progress } from './progress.js';

export function parseTargets(values: string[]): TargetSpec[] {
  return values.map((v) => {
    const eq = v.indexOf('=');
    if (eq === 0) throw new InputError(`--target '${v}': expected NAME or NAME=PATH`);
    if (eq < 0) return { name: v };
    const name = v.slice(0, eq);
    let path = v.slice(eq + 1);
    let key: string | undefined;
    const hash = path.lastIndexOf('#');
    if (hash > 0) {
      key = path.slice(hash + 1);
      path = path.slice(0, hash);
    }
    return key === undefined ? { name, path } : { name, path, key };
  });
}

/**
 * `--csv` alone selects CSV on stdout (as before); `--csv FILE.csv` or `--csv=FILE` writes the CSV to FILE as well as
 * printing the table. parseArgs has no optional values, so the file form is rewritten to `--csv-file` first.
 */
function splitCsvFile(argv: string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a.startsWith('--csv=')) out.push('--csv-file', a.slice('--csv='.length));
    else if (a === '--csv' && /\.csv$/i.test(argv[i + 1] ?? '')) out.push('--csv-file', argv[++i]!);
    else out.push(a);
  }
  return out;
}

async function isCapture(dir: string): Promise<boolean> {
  return stat(join(dir, 'manifest.json')).then(
    (st) => st.isFile(),
    () => false,
  );
}

type LayerwiseParams = Required<Pick<LayerwiseOptions, 'metrics' | 'k' | 'preprocess' | 'tokenMode' | 'seed' | 'permutations' | 'bootstrap'>> &
  Pick<LayerwiseOptions, 'q' | 'maxRows' | 'ci' | 'permUnit'> & { engine: string; knn: KnnMode };

type Values = Record<string, string | boolean | string[] | undefined>;

/** `--figure FILE`'s format, checked with the other output flags before any work. */
function figureFormatOf(values: Values, shard: ShardSpec | null): 'svg' | 'png' | 'pdf' | null {
  const file = values.figure as string | undefined;
  const format = file === undefined ? null : extname(file).slice(1).toLowerCase();
  if (format !== null && format !== 'svg' && format !== 'png' && format !== 'pdf') throw new InputError(`--figure ${file}: expected a .svg, .png or .pdf file`);
  if (shard && (file || values['csv-file'])) throw new InputError('--figure and --csv FILE are not available with --shard (merge the shards first)');
  return format;
}

/** One capture → null (its layer table); a run folder (step-<N>/ captures) or several captures → checkpoints side by side. */
async function checkpointFolders(positionals: string[]): Promise<string[] | null> {
  if (positionals.length > 1) return positionals;
  if (await isCapture(positionals[0]!)) return null;
  const found = await findStepCaptures(positionals[0]!);
  for (const p of found.pending) process.stderr.write(`note: ${p} has no manifest.json yet (still being written?); left out\n`);
  return found.dirs;
}

interface Sweep {
  rows: LayerwiseRow[];
  shardText: string | null;
  sharedTargets: string;
}

async function sweep(positionals: string[], options: LayerwiseOptions, how: { shard: ShardSpec | null; checkpoints: string[] | null; params: () => SweepParams }): Promise<Sweep> {
  if (how.shard) {
    const doc = await runShard(positionals, options, how.shard, how.params());
    return { rows: doc.rows, shardText: toJson(doc), sharedTargets: '' };
  }
  if (how.checkpoints) {
    const r = await runCheckpoints(how.checkpoints, options);
    const shared = r.targetCache.reused
      ? `targets identical across checkpoints: prepared (preprocessing, kNN) ${r.targetCache.prepared} time(s) for ${r.targetCache.prepared + r.targetCache.reused} (checkpoint, target) pairs`
      : '';
    return { rows: r.rows, shardText: null, sharedTargets: shared };
  }
  return { rows: await runLayerwise(positionals[0]!, options), shardText: null, sharedTargets: '' };
}

export async function run(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: splitCsvFile(argv),
    allowPositionals: true,
    options: {
      ...flagOptions(LAYERWISE),
      target: { type: 'string', multiple: true },
      layers: { type: 'string' },
      device: { type: 'string' },
      precision: { type: 'string' },
      shard: { type: 'string' },
      json: { type: 'boolean', default: false },
      csv: { type: 'boolean', default: false },
      'csv-file': { type: 'string' },
      figure: { type: 'string' },
      out: { type: 'string' },
      quiet: { type: 'boolean', default: false },
    },
  });
  // --shard runs one slice of the (capture, layer) jobs of one or more captures (docs/scale.md).
  const shard = values.shard === undefined ? null : parseShard(values.shard);
  if (positionals.length < 1) {
    throw new InputError(
      shard ? 'expected one or more capture directories' : 'expected a capture directory, a run folder of step-<N>/ captures, or several capture directories',
    );
  }
  const figureFormat = figureFormatOf(values, shard);
  const p = flagValues(LAYERWISE, values) as unknown as LayerwiseParams;
  const checkpoints = shard ? null : await checkpointFolders(positionals);
  // Exact kNN wherever it is the faster path; `auto` uses HNSW only on CPU engines above EXACT_MAX_ROWS rows, and
  // every score from approximate lists carries its measured recall.
  const baseEngine = await createEngine(p.engine, engineOptions(values));
  const engine = withKnnPolicy(baseEngine, { mode: p.knn });
  const progress = new Progress(!values.quiet);
  const { engine: _name, knn: _knn, ...analysis } = p;
  const options: LayerwiseOptions = {
    ...analysis,
    engine,
    targets: parseTargets(values.target ?? []),
    layers: listOption(values.layers),
    onProgress: (e) => progress.update(e.stage, e.done, e.total),
  };
  // Every parameter that changes the numbers, so `merge` can refuse shards run with different flags.
  const params = () => sweepParams(options, { preprocess: p.preprocess, engine: engine.name, precision: engine.precision, knn: describeKnnPolicy(baseEngine, { mode: p.knn }) });
  let result: Sweep;
  try {
    result = await sweep(positionals, options, { shard, checkpoints, params });
  } finally {
    progress.stop();
    await engine.dispose();
  }
  await writeOutputs(result, values, { checkpoints: checkpoints !== null, engine: describeEngine(engine), figureFormat });
  return 0;
}

/** The table (or JSON, CSV, shard file) to stdout or --out, the CSV to --csv FILE, the figure to --figure FILE. */
async function writeOutputs({ rows, shardText, sharedTargets }: Sweep, values: Values, how: { checkpoints: boolean; engine: string; figureFormat: 'svg' | 'png' | 'pdf' | null }) {
  for (const w of summariseWarnings(rows)) process.stderr.write(`warning: ${w}\n`);
  const csv = () => toCsv(rows as unknown as Record<string, unknown>[]);
  const table = () => (how.checkpoints ? renderCheckpoints(rows as CheckpointRow[], how.engine, sharedTargets) : render(rows, how.engine));
  const text = shardText ?? (values.json ? toJson(rows) : values.csv ? csv() : table());
  if (values.out) await writeFile(values.out as string, text);
  else process.stdout.write(text);
  if (values['csv-file']) await writeFile(values['csv-file'] as string, csv());
  if (how.figureFormat) {
    const figure = sweepFigure(rows, how.checkpoints, how.engine);
    await writeFile(values.figure as string, (await renderFigure(figure.spec, how.figureFormat)).body);
  }
}

/** The sweep as the dashboard draws it: one curve per checkpoint (or the capture), a panel per target, first metric. */
function sweepFigure(rows: readonly LayerwiseRow[], checkpoints: boolean, engine: string) {
  const label = (r: LayerwiseRow) => (checkpoints ? checkpointLabel(r as CheckpointRow) : r.variant);
  const series = new Map<string, Series>();
  for (const r of rows) if (!series.has(label(r))) series.set(label(r), { label: label(r), variant: r.variant, step: r.step, run: r.capture });
  const points: CurvePoint[] = rows.map((r) => curvePoint(r, { series: label(r), variant: r.variant, step: r.step }));
  const first = rows[0];
  if (!first) throw new InputError('--figure: no rows to draw');
  const ns = [...new Set(rows.map((r) => r.n))];
  return layerwiseFigure(points, {
    metric: first.metric,
    colorBy: checkpoints ? 'step' : 'variant',
    series: [...series.values()],
    provenance: { preprocess: first.preprocess, token_mode: first.token_mode, n: ns.length === 1 ? ns[0] : ns, engine },
  });
}

/** `step 300` when the step is known and unique among the rows, else the checkpoint path. */
function checkpointLabel(r: CheckpointRow): string {
  return r.step === null ? r.checkpoint : `step ${r.step}`;
}

/** One table per metric and target: layers down, checkpoints across, with every parameter in the heading. */
export function renderCheckpoints(rows: CheckpointRow[], engine: string, sharedTargets = ''): string {
  if (rows.length === 0) return 'no rows\n';
  const first = rows[0]!;
  const checkpoints = [...new Map(rows.map((r) => [r.checkpoint, r])).values()];
  const byLabel = new Map<string, number>();
  for (const c of checkpoints) byLabel.set(checkpointLabel(c), (byLabel.get(checkpointLabel(c)) ?? 0) + 1);
  // Two checkpoints with the same step (two runs) are told apart by their paths.
  const head = (c: CheckpointRow) => (byLabel.get(checkpointLabel(c))! > 1 ? c.checkpoint : checkpointLabel(c));
  const out: string[] = [
    `${checkpoints.length} checkpoint(s): ${checkpoints.map((c) => `${c.checkpoint}${c.step === null ? '' : ` (step ${c.step})`}`).join(', ')}`,
    `model ${[...new Set(rows.map((r) => r.model))].join(', ')}  variant ${[...new Set(rows.map((r) => r.variant))].join(', ')}`,
    `A = layer hidden states, B = target; tokens ${first.token_mode}, preprocess ${first.preprocess}, n = ${first.n}` +
      (first.rows_sampled ? ` (seeded subsample, seed ${first.seed})` : '') +
      `, engine ${engine}`,
  ];
  if (sharedTargets) out.push(sharedTargets);
  const layers = [...new Map(rows.map((r) => [r.layer_index, r.layer])).entries()].sort((a, b) => a[0] - b[0]);
  for (const metric of [...new Set(rows.map((r) => r.metric))]) {
    const k = rows.find((r) => r.metric === metric)?.k;
    for (const target of [...new Set(rows.map((r) => r.target))]) {
      out.push('', `${metric}${k ? ` (k = ${k})` : ''} vs ${target}`);
      const withStats = rows.find((r) => r.metric === metric && (r.n_perm || r.n_boot));
      if (withStats) out.push(describeStats(withStats));
      const body = layers.map(([index, name]) => [
        index,
        name,
        ...checkpoints.map((c) => {
          const r = rows.find((x) => x.metric === metric && x.target === target && x.layer_index === index && x.checkpoint === c.checkpoint);
          return r ? fmtWithStats(r) + recallNote(r) : fmt(undefined);
        }),
      ]);
      out.push(table(['idx', 'layer', ...checkpoints.map(head)], body).trimEnd());
    }
  }
  const tied = rows.filter((r) => (r.tied_rows_a ?? 0) + (r.tied_rows_b ?? 0) > 0);
  if (tied.length) out.push('', `warning: ${tied.length} result(s) have ties at the k-th neighbour (see tied_rows_a/b in --json)`);
  for (const r of rows.filter((x) => x.undefined_reason)) out.push(`undefined: ${r.metric} ${r.checkpoint} layer ${r.layer} vs ${r.target}: ${r.undefined_reason}`);
  return out.join('\n') + '\n';
}

/** A score with its interval and p-value when they were computed: `0.5432 [0.5101, 0.5702] p=0.005`. */
export function fmtWithStats(r: SimilarityStats & { value: number }): string {
  let s = fmt(r.value);
  if (r.n_boot) s += ` [${fmt(r.ci_low)}, ${fmt(r.ci_high)}]`;
  if (r.n_perm) s += ` p=${r.p_value === undefined || Number.isNaN(r.p_value) ? 'NaN' : r.p_value.toPrecision(2)} (null ${fmt(r.null_mean)})`;
  return s;
}

/** One table per metric: layers down, targets across, with every parameter in the heading. */
export function render(rows: LayerwiseRow[], engine: string): string {
  if (rows.length === 0) return 'no rows\n';
  const first = rows[0]!;
  const targets = [...new Set(rows.map((r) => r.target))];
  const metrics = [...new Set(rows.map((r) => r.metric))];
  const layers = [...new Map(rows.map((r) => [r.layer_index, r.layer])).entries()];
  const out: string[] = [
    `capture ${first.capture}  model ${first.model}  variant ${first.variant}  step ${first.step ?? '-'}`,
    `A = layer hidden states, B = target; tokens ${first.token_mode}, preprocess ${first.preprocess}, n = ${first.n}` +
      (first.rows_sampled ? ` (seeded subsample, seed ${first.seed})` : '') +
      `, engine ${engine}`,
  ];

  for (const metric of metrics) {
    const k = rows.find((r) => r.metric === metric)?.k;
    out.push('', `${metric}${k ? ` (k = ${k})` : ''}`);
    const withStats = rows.find((r) => r.metric === metric && (r.n_perm || r.n_boot));
    if (withStats) out.push(describeStats(withStats));
    const body = layers.map(([index, name]) => [
      index,
      name,
      ...targets.map((t) => {
        const r = rows.find((x) => x.metric === metric && x.layer_index === index && x.target === t);
        return r ? fmtWithStats(r) + recallNote(r) : fmt(undefined);
      }),
    ]);
    out.push(table(['idx', 'layer', ...targets], body).trimEnd());
  }
  if (rows.some((r) => recallNote(r))) out.push('', 'approximate kNN (hnsw): [recall@k of A / of B] measured against exact kNN on a seeded row sample');
  const tied = rows.filter((r) => (r.tied_rows_a ?? 0) + (r.tied_rows_b ?? 0) > 0);
  if (tied.length) out.push('', `warning: ${tied.length} result(s) have ties at the k-th neighbour (see tied_rows_a/b in --json)`);
  const undef = rows.filter((r) => r.undefined_reason);
  for (const r of undef) out.push(`undefined: ${r.metric} layer ${r.layer} vs ${r.target}: ${r.undefined_reason}`);
  return out.join('\n') + '\n';
}

/** ` [0.97/1.00]` after a score computed from approximate kNN lists (recall of A's and B's lists); '' when exact. */
function recallNote(r: LayerwiseRow | undefined): string {
  const x = r as (LayerwiseRow & { knn?: string; knn_recall_a?: number | null; knn_recall_b?: number | null }) | undefined;
  if (x?.knn !== 'hnsw') return '';
  const f = (v: number | null | undefined) => (v === null || v === undefined ? 'exact' : v.toFixed(2));
  return ` [${f(x.knn_recall_a)}/${f(x.knn_recall_b)}]`;
}
