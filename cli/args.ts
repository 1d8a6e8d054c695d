import { type EngineOptions, parseTorchPrecision } from '../src/engine/index.js';
import { InputError } from '../src/core/errors.js';

export function intOption(name: string, v: string | undefined, fallback: number): number {
  if (v === undefined) return fallback;
  const n = Number(v);
  if (!Number.isInteger(n)) throw new InputError(`--${name}: expected an integer, got '${v}'`);
  return n;
}

export function numberOption(name: string, v: string | undefined): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isFinite(n)) throw new InputError(`--${name}: expected a number, got '${v}'`);
  return n;
}

export function listOption(v: string | string[] | undefined): string[] {
  if (v === undefined) return [];
  return (Array.isArray(v) ? v : [v]).flatMap((s) => s.split(',')).map((s) => s.trim()).filter(Boolean);
}

/** `--device cuda:N|mps|cpu` and `--precision float32|tf32|bf16`: the torch engine's options (createEngine rejects them elsewhere). */
export function engineOptions(values: { device?: string | undefined; precision?: string | undefined }): EngineOptions {
  const out: { device?: string; precision?: EngineOptions['precision'] } = {};
  if (values.device !== undefined) {
    if (!/^(cuda(:\d+)?|mps|cpu)$/.test(values.device)) throw new InputError(`--device: expected cuda:N, mps or cpu, got '${values.device}'`);
    out.device = values.device;
  }
  if (values.precision !== undefined) out.precision = parseTorchPrecision(values.precision);
  return out;
}

/** The library's parameter names that the CLI spells differently; every other parameter `p` is the flag `--p`. */
const FLAG_OF_PARAM: Record<string, string> = { k: '--topk', n_neighbors: '--neighbors' };

/** The CLI flag for a library parameter named in a ParamError (snake_case parameters become kebab-case flags). */
export function flagFor(param: string): string {
  return FLAG_OF_PARAM[param] ?? `--${param.replace(/_/g, '-')}`;
}
