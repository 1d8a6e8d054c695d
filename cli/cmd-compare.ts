import { parseArgs } from 'node:util';
import { createEngine, describeEngine } from '../src/engine/index.js';
import { InputError } from '../src/core/errors.js';
import { computeMetric, DEFAULT_K, describePreprocess, Features, METRICS, parseMetric, parsePreprocess } from '../src/metrics/index.js';
import { locateMatrix } from '../src/store/load.js';
import { fileFeatures } from '../src/engine/source.js';
import { describeStats, similarityStats } from '../analysis/stats.js';
import { engineOptions, intOption, numberOption } from './args.js';
import { fmtWithStats, statsOptions } from './cmd-layerwise.js';
import { fmt, toJson } from './format.js';

export async function run(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      metric: { type: 'string' },
      topk: { type: 'string' },
      preprocess: { type: 'string' },
      q: { type: 'string' },
      engine: { type: 'string', default: 'auto' },
      device: { type: 'string' },
      precision: { type: 'string' },
      'key-a': { type: 'string' },
      'key-b': { type: 'string' },
      json: { type: 'boolean', default: false },
      permutations: { type: 'string' },
      bootstrap: { type: 'string' },
      ci: { type: 'string' },
      seed: { type: 'string' },
    },
  });
  if (positionals.length !== 2) throw new InputError(`expected two feature files A and B, got ${positionals.length} argument(s)`);
  if (!values.metric) throw new InputError(`--metric is required (one of ${Object.keys(METRICS).join(', ')})`);
  const metric = parseMetric(values.metric);
  const k = intOption('topk', values.topk, DEFAULT_K);
  if (!values.preprocess) throw new InputError('--preprocess is required: none, l2 or prh (results depend on it, so there is no silent default)');
  const prep = parsePreprocess(values.preprocess);
  const q = numberOption('q', values.q);
  const [pathA, pathB] = positionals as [string, string];
  const keyA = values['key-a'] === undefined ? {} : { key: values['key-a'] };
  const keyB = values['key-b'] === undefined ? {} : { key: values['key-b'] };
  // Headers first: a wrong file fails before an engine starts.
  await locateMatrix(pathA, keyA);
  await locateMatrix(pathB, keyB);
  const engine = await createEngine(values.engine, engineOptions(values));
  try {
    const opts = q === undefined ? {} : { q };
    const a = new Features(await fileFeatures(pathA, keyA, { preprocess: prep, ...opts }, engine), engine, pathA);
    const b = new Features(await fileFeatures(pathB, keyB, { preprocess: prep, ...opts }, engine), engine, pathB);
    const r = await computeMetric(metric, a, b, k, describePreprocess(prep, opts));
    // Rows of two plain files are taken as independent samples (images); permutations shuffle rows.
    const stats = await similarityStats(metric, a, b, k, r, { ...statsOptions(values), seed: intOption('seed', values.seed, 0) });
    const out = { ...r, ...stats, a: pathA, b: pathB };
    if (r.warning) process.stderr.write(`warning: ${r.warning}\n`);
    if (values.json) process.stdout.write(toJson(out));
    else {
      process.stdout.write(
        `${metric}(A, B) = ${stats.n_perm || stats.n_boot ? fmtWithStats({ ...r, ...stats }) : fmt(r.value, 6)}${r.undefined_reason ? `  (undefined: ${r.undefined_reason})` : ''}\n` +
          `  A = ${pathA} (${r.n}×${r.dA}), B = ${pathB} (${r.n}×${r.dB})\n` +
          `  k = ${r.k ?? '-'}, preprocess = ${r.preprocess}, engine = ${describeEngine(engine)}` +
          (stats.n_perm || stats.n_boot ? `\n  ${describeStats(stats)}` : '') +
          (r.tied_rows_a || r.tied_rows_b ? `\n  warning: ties at the k-th neighbour in ${r.tied_rows_a} rows of A, ${r.tied_rows_b} rows of B` : '') +
          '\n',
      );
    }
  } finally {
    await engine.dispose();
  }
  return 0;
}
