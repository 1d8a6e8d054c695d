import { writeFile } from 'node:fs/promises';
import { parseArgs } from 'node:util';
import { runLayerwise, type LayerwiseRow, type TargetSpec } from '../analysis/layerwise.js';
import { createEngine, describeEngine } from '../src/engine/index.js';
import { InputError } from '../src/errors.js';
import { DEFAULT_K, parseMetric, parsePreprocess } from '../src/metrics/index.js';
import { parseTokenMode } from '../src/tokens.js';
import { intOption, listOption, numberOption } from './args.js';
import { fmt, table, toCsv, toJson } from './format.js';
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

export async function run(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      target: { type: 'string', multiple: true },
      metric: { type: 'string', multiple: true },
      topk: { type: 'string' },
      preprocess: { type: 'string', default: 'prh' },
      q: { type: 'string' },
      tokens: { type: 'string', default: 'mean' },
      'max-rows': { type: 'string' },
      seed: { type: 'string' },
      layers: { type: 'string' },
      engine: { type: 'string', default: 'auto' },
      json: { type: 'boolean', default: false },
      csv: { type: 'boolean', default: false },
      out: { type: 'string' },
      quiet: { type: 'boolean', default: false },
    },
  });
  if (positionals.length !== 1) throw new InputError(`expected one capture directory, got ${positionals.length} argument(s)`);
  const metrics = (listOption(values.metric).length ? listOption(values.metric) : ['cknna']).map(parseMetric);
  const engine = await createEngine(values.engine);
  const progress = new Progress(!values.quiet);
  let rows: LayerwiseRow[];
  try {
    const maxRows = numberOption('max-rows', values['max-rows']);
    const q = numberOption('q', values.q);
    rows = await runLayerwise(positionals[0]!, {
      engine,
      metrics,
      k: intOption('topk', values.topk, DEFAULT_K),
      preprocess: parsePreprocess(values.preprocess!),
      ...(q === undefined ? {} : { q }),
      tokenMode: parseTokenMode(values.tokens!),
      targets: parseTargets(values.target ?? []),
      layers: listOption(values.layers),
      ...(maxRows === undefined ? {} : { maxRows }),
      seed: intOption('seed', values.seed, 0),
      onProgress: (e) => progress.update(e.stage, e.done, e.total),
    });
  } finally {
    progress.stop();
    await engine.dispose();
  }
  const text = values.json ? toJson(rows) : values.csv ? toCsv(rows as unknown as Record<string, unknown>[]) : render(rows, describeEngine(engine));
  if (values.out) await writeFile(values.out, text);
  else process.stdout.write(text);
  return 0;
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
    const body = layers.map(([index, name]) => [
      index,
      name,
      ...targets.map((t) => {
        const r = rows.find((x) => x.metric === metric && x.layer_index === index && x.target === t);
        return fmt(r?.value);
      }),
    ]);
    out.push(table(['idx', 'layer', ...targets], body).trimEnd());
  }
  const tied = rows.filter((r) => (r.tied_rows_a ?? 0) + (r.tied_rows_b ?? 0) > 0);
  if (tied.length) out.push('', `warning: ${tied.length} result(s) have ties at the k-th neighbour (see tied_rows_a/b in --json)`);
  const undef = rows.filter((r) => r.undefined_reason);
  for (const r of undef) out.push(`undefined: ${r.metric} layer ${r.layer} vs ${r.target}: ${r.undefined_reason}`);
  return out.join('\n') + '\n';
}
