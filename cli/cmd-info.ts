import { stat } from 'node:fs/promises';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { InputError } from '../src/core/errors.js';
import { listRuns, openCapture } from '../src/store/capture.js';
import { describeFile, type FileDescription } from '../src/store/load.js';
import { table, toJson } from './format.js';

export async function run(argv: string[]): Promise<number> {
  const { values, positionals } = parseArgs({ args: argv, allowPositionals: true, options: { json: { type: 'boolean', default: false } } });
  if (positionals.length !== 1) throw new InputError(`expected one PATH, got ${positionals.length} argument(s)`);
  const path = positionals[0]!;
  const isRunsDir = (await stat(path).catch(() => null))?.isDirectory() && !(await stat(join(path, 'manifest.json')).catch(() => null));
  if (isRunsDir) {
    const runs = await Promise.all(
      (await listRuns(path)).map(async (r) => {
        if (r.error) return { ...r, samples: null, layers: null, bytes: null };
        try {
          const c = await openCapture(r.dir);
          return { ...r, samples: c.sampleIds.length, layers: c.layers.length, bytes: await c.sizeBytes() };
        } catch (err) {
          return { ...r, error: (err as Error).message, samples: null, layers: null, bytes: null };
        }
      }),
    );
    if (values.json) process.stdout.write(toJson({ path, format: 'runs', captures: runs }));
    else {
      process.stdout.write(`${path}: ${runs.length} capture(s)\n`);
      if (runs.length) {
        process.stdout.write(
          table(
            ['run', 'step', 'variant', 'samples', 'layers', 'size', 'dir', 'status'],
            runs.map((r) => [r.run, r.step ?? '-', r.variant ?? '-', r.samples ?? '-', r.layers ?? '-', r.bytes === null ? '-' : mb(r.bytes), r.dir, r.error ?? 'ok']),
          ),
        );
      }
    }
    return 0;
  }
  const d = await describeFile(path);
  process.stdout.write(values.json ? toJson(d) : render(d));
  return 0;
}

const mb = (b: number) => (b >= 1e6 ? `${(b / 1e6).toFixed(1)} MB` : `${(b / 1e3).toFixed(1)} kB`);

function render(d: FileDescription): string {
  if (d.format === 'capture') {
    return (
      `${d.path}: capture, model ${d.model}, variant ${d.variant}, ${d.samples} samples × ${d.tokens} tokens, ${mb(d.bytes)}\n` +
      `labels: ${d.labels.join(', ') || 'none'}\n\n` +
      table(['layer idx', 'name', 'dim', 'shards'], d.layers.map((l) => [l.index, l.name, l.dim, l.shards])) +
      '\n' +
      (d.targets.length ? table(['target', 'dim', 'tokens', 'shards'], d.targets.map((t) => [t.name, t.dim, t.tokens, t.shards])) : 'no targets\n')
    );
  }
  const head = d.format === 'npy' ? `${d.path}: npy v${d.version}${d.fortranOrder ? ' (Fortran order)' : ''}, ${mb(d.bytes)}` : `${d.path}: safetensors, ${mb(d.bytes)}`;
  return `${head}\n` + table(['tensor', 'dtype', 'shape', 'bytes'], d.tensors.map((t) => [t.name ?? '(array)', t.dtype, `[${t.shape.join(', ')}]`, t.bytes]));
}
