import { parseArgs } from 'node:util';
import { writeAttention } from '../analysis/attention.js';
import { attentionForRun, type AttentionReport } from '../demo/replay.js';
import { InputError } from '../src/core/errors.js';
import { parseBackend } from '../demo/model/backend.js';
import { fmt, table, toJson } from './format.js';

export async function run(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    options: {
      backend: { type: 'string', default: 'auto' },
      stored: { type: 'boolean', default: false },
      write: { type: 'boolean', default: false },
      json: { type: 'boolean', default: false },
    },
  });
  if (positionals.length !== 1) throw new InputError(`expected one run directory (a demo's --out folder), got ${positionals.length} argument(s)`);
  if (values.write && values.stored) throw new InputError('--write stores a recomputed result; it cannot be combined with --stored');
  const report = await attentionForRun(positionals[0]!, { backend: parseBackend(values.backend!), recompute: !values.stored });
  if (values.write && report.source !== 'recomputed') throw new InputError(`--write: ${positionals[0]} cannot be recomputed (${report.reason}); nothing to write`);
  let written: string | null = null;
  // Replaces the stored result of the same model, variant and step (writeAttention merges by that key).
  if (values.write) for (const r of report.results) written = await writeAttention(report.run, r);
  process.stdout.write(values.json ? toJson(report) : render(report) + (written ? `written: ${written}\n` : ''));
  return 0;
}

/** Where the numbers came from (recomputed or stored, and why), then one layer × head table per variant. */
export function render(r: AttentionReport): string {
  const out = [
    `run ${r.run} — text→image attention entropy (VIRAL paper Fig. 4/12; lower = more focused)`,
    r.source === 'recomputed' ? `source: ${r.how}` : `source: ${r.how}; why: ${r.reason}`,
    ...(r.backend ? [`backend: ${r.backend}`] : []),
    ...(r.check ? [`check: ${r.check}`] : []),
  ];
  const first = r.results[0];
  if (first) out.push(`definition: ${first.definition}`, `components: ${first.component_definition ?? 'not computed'}`);
  for (const res of r.results) {
    out.push(
      '',
      `${res.variant}${res.step === null ? '' : ` @ step ${res.step}`} — ${res.model}; ${res.samples} sample(s) × ${res.queries} query row(s), grid ${res.grid.join('×')} (N = ${res.tokens}), aggregate ${res.aggregate}`,
    );
    const body = res.cells.map((c) => [c.layer_index, c.layer, c.head, fmt(c.entropy, 3), fmt(c.normalised_entropy, 3), c.component_entropy === null ? '-' : fmt(c.component_entropy, 3), c.components === null ? '-' : fmt(c.components, 2), fmt(c.image_mass, 3)]);
    out.push(table(['idx', 'layer', 'head', 'H (bits)', 'H / log2 N', 'H_cc (bits)', 'components', 'mass on image'], body).trimEnd());
    const finite = res.cells.filter((c) => Number.isFinite(c.entropy));
    const best = [...finite].sort((a, b) => a.entropy - b.entropy)[0];
    if (best) out.push(`most focused: layer ${best.layer_index} (${best.layer}), head ${best.head}, H = ${fmt(best.entropy, 3)} bits of at most log2 ${res.tokens} = ${fmt(Math.log2(res.tokens), 3)}`);
    if (res.undefined_components) out.push(`note: ${res.undefined_components} map(s) had nothing above the component threshold (component entropy undefined there)`);
  }
  return out.join('\n') + '\n';
}
