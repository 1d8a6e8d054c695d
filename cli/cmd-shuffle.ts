import { parseArgs } from 'node:util';
import { shuffleForRun, type ShuffleReport } from '../demo/replay.js';
import { writeShuffle } from '../analysis/shuffle.js';
import { InputError } from '../src/core/errors.js';
import { parseBackend } from '../demo/model/backend.js';
import { intOption } from './args.js';
import { fmt, table, toJson } from './format.js';

export async function run(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      seeds: { type: 'string' },
      backend: { type: 'string', default: 'auto' },
      stored: { type: 'boolean', default: false },
      write: { type: 'boolean', default: false },
      json: { type: 'boolean', default: false },
    },
  });
  if (positionals.length !== 1) throw new InputError(`expected one run directory (a demo's --out folder), got ${positionals.length} argument(s)`);
  let seeds: number[] | undefined;
  if (values.seeds !== undefined) {
    const n = intOption('seeds', values.seeds, 0);
    if (n < 1 || n > 1000) throw new InputError(`--seeds: expected a number of shuffle seeds in 1..1000, got ${n}`);
    if (values.stored) throw new InputError('--seeds needs a recomputation; it cannot be combined with --stored');
    // Seeds 1..N: the demo's own seeds are [1] (--quick) and [1, 2], so N reproduces them and extends them.
    seeds = Array.from({ length: n }, (_, i) => i + 1);
  }
  if (values.write && values.stored) throw new InputError('--write stores a recomputed result; it cannot be combined with --stored');
  const report = await shuffleForRun(positionals[0]!, { backend: parseBackend(values.backend!), recompute: !values.stored, ...(seeds ? { seeds } : {}) });
  if (values.write && report.source !== 'recomputed') throw new InputError(`--write: ${positionals[0]} cannot be recomputed (${report.reason}); nothing to write`);
  // Replaces the stored result of the same model and step (writeShuffle merges by that key).
  const written = values.write ? await writeShuffle(report.run, report.result) : null;
  process.stdout.write(values.json ? toJson(report) : render(report) + (written ? `written: ${written}\n` : ''));
  return 0;
}

// Numbers stay numbers so the table right-aligns them.
const pct = (x: number) => (Number.isFinite(x) ? +(100 * x).toFixed(1) : 'NaN');
const num = (x: number) => +x.toFixed(2);

/** Where the numbers came from, then per variant: accuracy in place vs shuffled, drop and McNemar p per type. */
export function render(r: ShuffleReport): string {
  const res = r.result;
  const several = res.seeds.length > 1;
  const out = [
    `run ${r.run} — patch-shuffle test (VIRAL paper Table 3): accuracy with the image tokens in place vs shuffled`,
    r.source === 'recomputed' ? `source: ${r.how}` : `source: ${r.how}; why: ${r.reason}`,
    ...(r.backend ? [`backend: ${r.backend}`] : []),
    ...(r.check ? [`check: ${r.check}`] : []),
    `model ${res.model}${res.step === null ? '' : ` @ step ${res.step}`}; ${res.description}`,
    `shuffle seeds ${res.seeds.join(', ')}; drop = correct in place − correct shuffled; lost / gained = questions right only in place / only shuffled; ` +
      `p: McNemar exact test (two-sided) on the paired answers, per seed${several ? '; "mean" rows average the seeds (no test)' : ''}`,
  ];
  for (const variant of res.variants) {
    const rows = res.rows.filter((x) => x.variant === variant);
    out.push('', variant);
    out.push(
      table(
        ['type', 'seed', 'n', 'correct', 'correct shuf.', 'acc %', 'acc shuf. %', 'drop', 'lost', 'gained', 'McNemar p'],
        rows.map((x) => [
          x.question_type,
          x.shuffle_seed ?? 'mean',
          x.n,
          x.correct_original,
          num(x.correct_shuffled),
          pct(x.acc_original),
          pct(x.acc_shuffled),
          num(x.drop),
          x.lost ?? '-',
          x.gained ?? '-',
          x.p_value === null ? '-' : x.p_value.toPrecision(2),
        ]),
      ).trimEnd(),
    );
  }
  if (res.comparisons.length) {
    const c0 = res.comparisons[0]!;
    out.push('', `Between variants: difference of drop rates (b − a) per question, mean over seeds; ${Math.round(c0.ci_level * 100)}% CI and p: ${c0.method}`);
    out.push(
      table(
        ['a', 'b', 'type', 'n', 'drop a', 'drop b', 'b − a', 'CI', 'p'],
        res.comparisons.map((c) => [c.a, c.b, c.question_type, c.n, fmt(c.drop_rate_a, 3), fmt(c.drop_rate_b, 3), fmt(c.difference, 3), `[${fmt(c.ci_low, 3)}, ${fmt(c.ci_high, 3)}]`, c.p_value.toPrecision(2)]),
      ).trimEnd(),
    );
  }
  return out.join('\n') + '\n';
}
