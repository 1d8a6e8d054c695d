import { parseArgs } from 'node:util';
import { createEngine, describeEngine } from '../src/engine/index.js';
import { InputError } from '../src/core/errors.js';
import { computeMetric, describePreprocess, Features, METRICS, type MetricName, type Preprocess } from '../src/metrics/index.js';
import { checkKBelowN } from '../src/metrics/params.js';
import { locateMatrix } from '../src/store/load.js';
import { fileFeatures } from '../src/engine/source.js';
import { COMPARE } from '../analysis/params.js';
import { describeStats, similarityStats, type StatsOptions } from '../analysis/stats.js';
import { engineOptions } from './args.js';
import { fmtWithStats } from './cmd-layerwise.js';
import { fmt, toJson } from './format.js';
import { flagOptions, flagValues } from './params.js';

interface CompareParams extends StatsOptions {
  metric: MetricName;
  k: number;
  preprocess: Preprocess;
  q?: number;
  engine: string;
  seed: number;
}

export async function run(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      ...flagOptions(COMPARE),
      device: { type: 'string' },
      precision: { type: 'string' },
      'key-a': { type: 'string' },
      'key-b': { type: 'string' },
      json: { type: 'boolean', default: false },
    },
  });
  if (positionals.length !== 2) throw new InputError(`expected two feature files A and B, got ${positionals.length} argument(s)`);
  const p = flagValues(COMPARE, values) as unknown as CompareParams;
  const { metric, k } = p;
  const [pathA, pathB] = positionals as [string, string];
  const keyA = values['key-a'] === undefined ? {} : { key: values['key-a'] };
  const keyB = values['key-b'] === undefined ? {} : { key: values['key-b'] };
  // Headers first: a wrong file, or a k the rows cannot hold, fails before an engine starts or a row is read.
  const shapeA = await locateMatrix(pathA, keyA);
  await locateMatrix(pathB, keyB);
  if (METRICS[metric].needsKnn) checkKBelowN(k, shapeA.rows);
  const engine = await createEngine(p.engine, engineOptions(values));
  try {
    const opts = p.q === undefined ? {} : { q: p.q };
    const a = new Features(await fileFeatures(pathA, keyA, { preprocess: p.preprocess, ...opts }, engine), engine, pathA);
    const b = new Features(await fileFeatures(pathB, keyB, { preprocess: p.preprocess, ...opts }, engine), engine, pathB);
    const r = await computeMetric(metric, a, b, k, describePreprocess(p.preprocess, opts));
    // Rows of two plain files are taken as independent samples (images); permutations shuffle rows.
    const stats = await similarityStats(metric, a, b, k, r, p);
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
