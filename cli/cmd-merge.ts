import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { mergeShards, readShardFile } from '../analysis/shard.js';
import { InputError } from '../src/core/errors.js';
import { writeFileAtomic } from '../src/store/atomic.js';
import { toCsv, toJson } from './format.js';

/**
 * `viral-lens merge OUT PARTS…`: the reduce step of a sharded sweep. Refuses (exit 2, naming the file) unless the
 * parts are exactly the N shards of one sweep run with one parameter set. OUT ending in .csv gets the long-form rows
 * as CSV; anything else the merged JSON (parameters, shard list, rows).
 */
export async function run(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args: argv, allowPositionals: true, options: { quiet: { type: 'boolean', default: false } } });
  if (positionals.length < 2) throw new InputError(`expected OUT and at least one shard file, got ${positionals.length} argument(s)`);
  const [out, ...parts] = positionals as [string, ...string[]];
  if (parts.some((p) => resolve(p) === resolve(out))) throw new InputError(`${out}: the output file is also listed as a shard`);
  const merged = mergeShards(await Promise.all(parts.map(readShardFile)));
  const text = /\.csv$/i.test(out) ? toCsv(merged.rows as unknown as Record<string, unknown>[]) : toJson(merged);
  await writeFileAtomic(out, text);
  if (!values.quiet) {
    process.stderr.write(`merged ${merged.shards.length} shard(s): ${merged.total_jobs} job(s), ${merged.rows.length} row(s) → ${out}\n`);
  }
  return 0;
}
