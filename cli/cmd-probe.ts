import { parseArgs } from 'node:util';
import { runProbes, writeProbes, type ProbeReport, type ProbeRunOptions } from '../analysis/probes.js';
import { InputError } from '../src/core/errors.js';
import { PROBE } from '../analysis/params.js';
import { listOption, numberOption } from './args.js';
import { flagOptions, flagValues } from './params.js';
import { fmt, table, toJson } from './format.js';
import { Progress } from './progress.js';

export async function run(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      ...flagOptions(PROBE),
      label: { type: 'string' },
      task: { type: 'string', default: 'auto' },
      l2: { type: 'string' },
      'control-by': { type: 'string', default: 'auto' },
      layers: { type: 'string' },
      'no-targets': { type: 'boolean', default: false },
      'no-write': { type: 'boolean', default: false },
      json: { type: 'boolean', default: false },
      quiet: { type: 'boolean', default: false },
    },
  });
  if (positionals.length !== 1) throw new InputError(`expected one capture directory, got ${positionals.length} argument(s)`);
  if (!values.label) throw new InputError('--label is required (a per-image label of the manifest, e.g. count)');
  const task = values.task!;
  if (!['auto', 'classify', 'regress'].includes(task)) throw new InputError(`--task: expected auto, classify or regress, got '${task}'`);
  const l2 = values.l2 === undefined ? undefined : values.l2 === 'cv' ? 'cv' : numberOption('l2', values.l2);
  if (typeof l2 === 'number' && !(l2 > 0)) throw new InputError(`--l2: expected a positive number or 'cv', got ${l2}`);
  const params = flagValues(PROBE, values) as unknown as Pick<ProbeRunOptions, 'tokenMode' | 'maxTokens' | 'folds' | 'seed' | 'ci' | 'bootstrap'>;
  const dir = positionals[0]!;
  const progress = new Progress(!values.quiet);
  let report: ProbeReport;
  try {
    report = await runProbes(dir, {
      label: values.label,
      task: task as 'auto' | 'classify' | 'regress',
      ...params,
      ...(l2 === undefined ? {} : { l2 }),
      controlBy: values['control-by']!,
      layers: listOption(values.layers),
      targets: !values['no-targets'],
      onProgress: (e) => progress.update(e.stage, e.done, e.total),
    });
  } finally {
    progress.stop();
  }
  const written = values['no-write'] ? null : await writeProbes(dir, report);
  process.stdout.write(values.json ? toJson(report) : render(report));
  if (written && !values.json) process.stdout.write(`written: ${written}\n`);
  return 0;
}

/** Per-layer table with every parameter that produced it in the heading. */
export function render(r: ProbeReport): string {
  const first = r.rows.find((x) => !x.skipped);
  const isClass = r.task === 'classify';
  const out = [
    `capture ${r.capture}  model ${r.model}  variant ${r.variant}  step ${r.step ?? '-'}`,
    `probe: ${isClass ? `multinomial logistic regression (L2, L-BFGS), ${r.classes!.length} classes: ${r.classes!.join(', ')}` : 'ridge regression'} on label '${r.label}'`,
    `tokens ${r.token_mode}${r.max_tokens ? ` (${r.max_tokens} random positions per image, seed ${r.seed})` : ''}, features standardised on each training fold, ` +
      `${r.folds}-fold CV split by image (seed ${r.seed}), λ = ${r.l2}` +
      (first ? `, n = ${first.n_images} images / ${first.n_rows} rows` : ''),
    `${isClass ? 'accuracy' : 'R²'} CI: ${first?.ci_method ?? '-'}; control task (Hewitt & Liang): random labels per ${r.control_by}` +
      (r.control_by === 'none' ? '' : `, selectivity = score − control, CI: percentile bootstrap over images (${r.bootstrap})`),
    '',
  ];
  const header = ['source', 'idx', 'name', isClass ? 'acc' : 'R²', `${Math.round(r.ci_level * 100)}% CI`, 'control', 'select.', 'sel. CI', ...(isClass ? ['majority'] : []), 'conv.'];
  const body = r.rows.map((x) => [
    x.source,
    x.layer_index ?? '-',
    x.name,
    x.skipped ? `skipped: ${x.skipped}` : fmt(x.score),
    x.skipped ? '' : `[${fmt(x.ci_low)}, ${fmt(x.ci_high)}]`,
    x.control_score === null ? '-' : fmt(x.control_score),
    x.selectivity === null ? '-' : fmt(x.selectivity),
    x.selectivity_ci_low === null ? '-' : `[${fmt(x.selectivity_ci_low)}, ${fmt(x.selectivity_ci_high)}]`,
    ...(isClass ? [x.majority === null ? '-' : fmt(x.majority)] : []),
    `${x.folds_converged}/${x.folds}`,
  ]);
  out.push(table(header, body).trimEnd());
  if (isClass && first) out.push('', `chance = ${fmt(first.chance)} (1/#classes); majority = predicting each training fold's most frequent class`);
  const notConverged = r.rows.filter((x) => !x.skipped && x.folds_converged < x.folds);
  if (notConverged.length) out.push(`warning: the optimiser hit its iteration limit in some folds of ${notConverged.map((x) => x.name).join(', ')}`);
  return out.join('\n') + '\n';
}
