/**
 * The CLI face of the analysis schemas (analysis/params.ts): parseArgs options, usage text and the parsed options,
 * all derived from the schema, so no flag re-types a default, a bound or a list of choices.
 */
import { InputError } from '../src/core/errors.js';
import type { AnalysisParam, AnalysisSchema } from '../analysis/params.js';
import { readParams } from '../analysis/params.js';
import { flagFor } from './args.js';

type OptionSpec = { type: 'string'; multiple?: boolean };

/** The parseArgs option specs of an analysis's parameters (flag name without `--` → spec). */
export function flagOptions(a: AnalysisSchema): Record<string, OptionSpec> {
  return Object.fromEntries(a.params.map((p) => [flagFor(p.def.name).slice(2), p.multiple ? { type: 'string', multiple: true } : { type: 'string' }]));
}

/** One parameter as usage text: `[--topk K (2..1000, default 10)]`, `--metric cknna|cka|...`. */
export function usageOfParam(p: AnalysisParam): string {
  const d = p.def;
  const notes: string[] = [];
  if (!d.choices) notes.push(`${d.min === undefined ? '' : `${d.minExclusive ? '>' : ''}${d.min}`}..${d.max ?? ''}`);
  if (p.default !== undefined) notes.push(`default ${Array.isArray(p.default) ? p.default.join(',') : p.default}`);
  const value = d.choices ? d.choices.join('|') + (p.multiple ? '[,...]' : '') : (d.meta ?? 'N');
  const text = `${flagFor(d.name)} ${value}${notes.length ? ` (${notes.join(', ')})` : ''}`;
  return p.required ? text : `[${text}]`;
}

/** The usage text of an analysis's parameters, in the schema's order. */
export function usageOf(a: AnalysisSchema, only?: readonly string[]): string {
  return a.params.filter((p) => !only || only.includes(p.def.name)).map(usageOfParam).join(' ');
}

/** The parsed values of an analysis's flags: defaults filled in and ranges checked (ParamErrors name the parameter). */
export function flagValues(a: AnalysisSchema, values: Readonly<Record<string, unknown>>): Record<string, unknown> {
  const raw: Record<string, string | string[] | undefined> = {};
  for (const p of a.params) {
    const v = values[flagFor(p.def.name).slice(2)] as string | string[] | undefined;
    if (v === undefined && p.required) {
      const choices = p.def.choices ? ` (one of ${p.def.choices.join(', ')}${p.note ? `; ${p.note}` : ''})` : '';
      throw new InputError(`${flagFor(p.def.name)} is required${choices}`);
    }
    raw[p.def.name] = v;
  }
  return readParams(a, raw);
}
