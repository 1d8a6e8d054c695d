import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { InputError } from '../src/core/errors.js';
import { listRuns, validateCapture } from '../src/store/capture.js';
import { toJson } from './format.js';

/** Exit 0 when every capture is valid, 1 when problems were found (each printed), 2 for unusable arguments. */
export async function run(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({
    args: argv,
    allowPositionals: true,
    // Values (NaN/Inf) are checked by default: a capture that passes validate must also pass every analysis.
    // --values is kept for scripts written when it was opt-in; --headers-only skips reading the data.
    options: {
      json: { type: 'boolean', default: false },
      values: { type: 'boolean', default: false },
      'headers-only': { type: 'boolean', default: false },
    },
  });
  if (values.values && values['headers-only']) throw new InputError('--values and --headers-only contradict each other');
  if (positionals.length !== 1) throw new InputError(`expected one PATH, got ${positionals.length} argument(s)`);
  const path = positionals[0]!;
  const isCapture = await stat(join(path, 'manifest.json')).then(
    () => true,
    () => false,
  );
  const dirs = isCapture ? [path] : (await listRuns(path)).map((r) => r.dir);
  if (dirs.length === 0) throw new InputError(`${path}: no capture found (no manifest.json under it)`);
  const report: { dir: string; problems: string[] }[] = [];
  for (const dir of dirs) report.push({ dir, problems: await validateCapture(dir, { checkValues: !values['headers-only'] }) });
  const bad = report.filter((r) => r.problems.length);
  if (values.json) process.stdout.write(toJson({ valid: bad.length === 0, captures: report }));
  else {
    for (const r of report) {
      process.stdout.write(`${r.problems.length ? 'INVALID' : 'ok     '} ${r.dir}${r.problems.length ? ` (${r.problems.length} problem(s))` : ''}\n`);
      for (const p of r.problems) process.stdout.write(`  - ${p}\n`);
    }
  }
  return bad.length ? 1 : 0;
}
