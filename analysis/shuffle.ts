/**
 * Patch-shuffle analysis (VIRAL paper Table 3): answer the same questions with the image tokens in their place and
 * randomly permuted before the projector; a larger accuracy drop = the model relies more on spatial layout.
 *
 * Any model plugs in through an evaluator `(shuffleSeed | null) => per-question outcomes` (null = original order),
 * so the mini-LLaVA demo and a PyTorch run (outcomes read from its JSON) are analysed the same way. Per variant ×
 * question type × shuffle seed: accuracies, the drop, and McNemar's exact test on the paired outcomes (the same
 * questions answered twice). Between variants: the difference of drops with a bootstrap CI over questions and a
 * paired sign-flip permutation p-value.
 */
import { join } from 'node:path';
import { z } from 'zod';
import { InputError } from '../src/core/errors.js';
import { readJsonFile, writeJsonFile, type TextReader } from '../src/store/json.js';
import { checkLevel, deriveSeed, mcnemarExact, mulberry32, percentileInterval, randInt } from '../src/stats/index.js';
import { PAPER_CONFIG, VARIANT_COLORS, type Figure, type VlSpec } from './figures.js';

const SCHEMA = 'https://vega.github.io/schema/vega-lite/v6.json';
export const SHUFFLE_FILE = 'shuffle.json';

export interface QuestionOutcome {
  id: string;
  type: string;
  correct: boolean;
}

/** Evaluates every question once; `shuffleSeed` null = image tokens in their original order. */
export type Evaluator = (shuffleSeed: number | null) => Promise<readonly QuestionOutcome[]> | readonly QuestionOutcome[];

export interface ShuffleVariant {
  name: string;
  evaluate: Evaluator;
}

export interface ShuffleOptions {
  /** Shuffle seeds, one evaluation each (default [0]). */
  seeds?: number[];
  model?: string;
  step?: number | null;
  /** Confidence level of the between-variant intervals (default 0.95). */
  ci?: number;
  /** Bootstrap resamples / sign-flip permutations for the between-variant comparison (default 2000). */
  resamples?: number;
  seed?: number;
  /** What is shuffled and where (recorded with the result), e.g. "576 image tokens before the projector". */
  description?: string;
}

export interface ShuffleRow {
  variant: string;
  question_type: string;
  /** The shuffle seed; null on the row that averages over seeds. */
  shuffle_seed: number | null;
  n: number;
  correct_original: number;
  /** Mean over seeds on the averaged row. */
  correct_shuffled: number;
  acc_original: number;
  acc_shuffled: number;
  /** correct_original − correct_shuffled (the paper's "−26"). */
  drop: number;
  drop_rate: number;
  /** Questions right in the original order and wrong shuffled (b), and the reverse (c). */
  lost: number | null;
  gained: number | null;
  p_value: number | null;
  test: string | null;
}

export interface VariantComparison {
  a: string;
  b: string;
  question_type: string;
  n: number;
  drop_rate_a: number;
  drop_rate_b: number;
  /** drop_rate_b − drop_rate_a. */
  difference: number;
  ci_low: number;
  ci_high: number;
  ci_level: number;
  p_value: number;
  resamples: number;
  method: string;
}

export interface ShuffleResult {
  model: string;
  step: number | null;
  description: string;
  seeds: number[];
  variants: string[];
  rows: ShuffleRow[];
  comparisons: VariantComparison[];
}

type Outcomes = Map<string, QuestionOutcome>;

function indexOutcomes(list: readonly QuestionOutcome[], what: string): Outcomes {
  const map: Outcomes = new Map();
  for (const o of list) {
    if (map.has(o.id)) throw new InputError(`${what}: question id '${o.id}' appears twice`);
    map.set(o.id, o);
  }
  return map;
}

interface VariantOutcomes {
  name: string;
  original: Outcomes;
  shuffled: Outcomes[];
}

/** A variant's answers in the original order and per shuffle seed; every seed must answer the same questions. */
async function evaluateVariant(v: ShuffleVariant, seeds: readonly number[]): Promise<VariantOutcomes> {
  const original = indexOutcomes(await v.evaluate(null), `${v.name} original`);
  const shuffled: Outcomes[] = [];
  for (const s of seeds) {
    const out = indexOutcomes(await v.evaluate(s), `${v.name} shuffle seed ${s}`);
    if (out.size !== original.size || [...original.keys()].some((id) => !out.has(id))) {
      throw new InputError(`${v.name}: the shuffled evaluation (seed ${s}) did not answer the same questions as the original (${out.size} vs ${original.size})`);
    }
    shuffled.push(out);
  }
  return { name: v.name, original, shuffled };
}

/**
 * Rows of one variant and question type ('all' or one type): one per seed with its McNemar test, and when there
 * are several seeds a seed-averaged row (no test: the averaged answers are not paired outcomes).
 */
function typeRows(v: VariantOutcomes, type: string, seeds: readonly number[]): ShuffleRow[] {
  const ids = [...v.original.values()].filter((o) => type === 'all' || o.type === type).map((o) => o.id);
  const orig = ids.map((id) => v.original.get(id)!.correct);
  const n = ids.length;
  const co = orig.filter(Boolean).length;
  const row = (seed: number | null, cs: number) => ({
    variant: v.name,
    question_type: type,
    shuffle_seed: seed,
    n,
    correct_original: co,
    correct_shuffled: cs,
    acc_original: co / n,
    acc_shuffled: cs / n,
    drop: co - cs,
    drop_rate: (co - cs) / n,
  });
  const perSeed = v.shuffled.map((sh, si) => {
    const shu = ids.map((id) => sh.get(id)!.correct);
    return { seed: seeds[si]!, cs: shu.filter(Boolean).length, t: mcnemarExact(orig, shu) };
  });
  const rows: ShuffleRow[] = perSeed.map((s) => ({ ...row(s.seed, s.cs), lost: s.t.b, gained: s.t.c, p_value: s.t.p_value, test: s.t.method }));
  if (seeds.length > 1) {
    const cs = perSeed.reduce((a, s) => a + s.cs, 0) / seeds.length;
    rows.push({ ...row(null, cs), lost: null, gained: null, p_value: null, test: null });
  }
  return rows;
}

/** Runs every variant's evaluator on the original order and on each shuffle seed, then tests the drops. */
export async function runShuffle(variants: readonly ShuffleVariant[], options: ShuffleOptions = {}): Promise<ShuffleResult> {
  const seeds = options.seeds?.length ? options.seeds : [0];
  const level = options.ci ?? 0.95;
  checkLevel(level);
  if (new Set(variants.map((v) => v.name)).size !== variants.length) throw new InputError('shuffle: variant names must be unique');
  const perVariant: VariantOutcomes[] = [];
  for (const v of variants) perVariant.push(await evaluateVariant(v, seeds));
  const rows = perVariant.flatMap((v) => ['all', ...[...new Set([...v.original.values()].map((o) => o.type))].sort()].flatMap((type) => typeRows(v, type, seeds)));
  const comparisons: VariantComparison[] = [];
  const B = options.resamples ?? 2000;
  for (let i = 0; i < perVariant.length; i++) {
    for (let j = i + 1; j < perVariant.length; j++) {
      comparisons.push(...compareDrops(perVariant[i]!, perVariant[j]!, B, level, deriveSeed(options.seed ?? 0, 'shuffle', i, j)));
    }
  }
  return {
    model: options.model ?? 'unknown',
    step: options.step ?? null,
    description: options.description ?? 'image tokens permuted before the projector',
    seeds,
    variants: perVariant.map((v) => v.name),
    rows,
    comparisons,
  };
}

/**
 * Per question, the drop d = original − mean over seeds of shuffled (in [−1, 1]); between variants a and b,
 * e_i = d_b,i − d_a,i on the questions both answered. CI: percentile bootstrap over questions; p: two-sided paired
 * sign-flip permutation test of mean e = 0 (swapping the variant labels of one question flips its sign under H0).
 */
function compareDrops(
  a: { name: string; original: Outcomes; shuffled: Outcomes[] },
  b: { name: string; original: Outcomes; shuffled: Outcomes[] },
  B: number,
  level: number,
  seed: number,
): VariantComparison[] {
  const shared = [...a.original.keys()].filter((id) => b.original.has(id));
  if (shared.length === 0) return [];
  const drop = (v: typeof a, id: string) => (v.original.get(id)!.correct ? 1 : 0) - v.shuffled.reduce((s, sh) => s + (sh.get(id)!.correct ? 1 : 0), 0) / v.shuffled.length;
  const types = ['all', ...[...new Set(shared.map((id) => a.original.get(id)!.type))].sort()];
  const out: VariantComparison[] = [];
  for (const type of types) {
    const ids = shared.filter((id) => type === 'all' || a.original.get(id)!.type === type);
    const n = ids.length;
    const da = ids.map((id) => drop(a, id));
    const db = ids.map((id) => drop(b, id));
    const e = ids.map((_, i) => db[i]! - da[i]!);
    const mean = (x: number[]) => x.reduce((s, v) => s + v, 0) / x.length;
    const observed = mean(e);
    const rng = mulberry32(deriveSeed(seed, type));
    const boots = new Float64Array(B);
    for (let t = 0; t < B; t++) {
      let s = 0;
      for (let i = 0; i < n; i++) s += e[randInt(rng, n)]!;
      boots[t] = s / n;
    }
    const ci = percentileInterval(boots, level);
    let extreme = 0;
    for (let t = 0; t < B; t++) {
      let s = 0;
      for (let i = 0; i < n; i++) s += rng() < 0.5 ? -e[i]! : e[i]!;
      if (Math.abs(s / n) >= Math.abs(observed) - 1e-12) extreme++;
    }
    out.push({
      a: a.name,
      b: b.name,
      question_type: type,
      n,
      drop_rate_a: mean(da),
      drop_rate_b: mean(db),
      difference: observed,
      ci_low: ci.low,
      ci_high: ci.high,
      ci_level: level,
      p_value: (extreme + 1) / (B + 1),
      resamples: B,
      method: `percentile bootstrap over questions (${B}); two-sided paired sign-flip permutation test (${B}, +1 correction)`,
    });
  }
  return out;
}

export interface ShuffleFile {
  format: 'viral-lens.shuffle';
  version: 1;
  results: ShuffleResult[];
}

/** A finite number, or null (how writeShuffle stores NaN, e.g. the accuracy of an empty type), read back as NaN. */
const maybeNaN = z
  .number()
  .nullable()
  .transform((v) => v ?? NaN);
const count = z.number().int().min(0);

const RowSchema = z.object({
  variant: z.string().min(1),
  question_type: z.string().min(1),
  shuffle_seed: z.number().int().nullable(),
  n: count,
  correct_original: z.number().min(0),
  correct_shuffled: z.number().min(0),
  acc_original: maybeNaN,
  acc_shuffled: maybeNaN,
  drop: z.number(),
  drop_rate: maybeNaN,
  lost: count.nullable(),
  gained: count.nullable(),
  p_value: z.number().min(0).max(1).nullable(),
  test: z.string().nullable(),
});

const ComparisonSchema = z.object({
  a: z.string(),
  b: z.string(),
  question_type: z.string(),
  n: count,
  drop_rate_a: maybeNaN,
  drop_rate_b: maybeNaN,
  difference: maybeNaN,
  ci_low: maybeNaN,
  ci_high: maybeNaN,
  ci_level: z.number().gt(0).lt(1),
  p_value: z.number().min(0).max(1),
  resamples: count,
  method: z.string(),
});

const ResultSchema = z
  .object({
    model: z.string(),
    step: z.number().int().nullable(),
    description: z.string(),
    seeds: z.array(z.number().int()).min(1),
    variants: z.array(z.string().min(1)),
    rows: z.array(RowSchema),
    comparisons: z.array(ComparisonSchema),
  })
  .superRefine((r, ctx) => {
    r.rows.forEach((row, i) => {
      if (!r.variants.includes(row.variant)) ctx.addIssue({ code: 'custom', path: ['rows', i, 'variant'], message: `'${row.variant}' is not in variants (${r.variants.join(', ')})` });
      if (row.shuffle_seed !== null && !r.seeds.includes(row.shuffle_seed)) ctx.addIssue({ code: 'custom', path: ['rows', i, 'shuffle_seed'], message: `${row.shuffle_seed} is not in seeds (${r.seeds.join(', ')})` });
    });
  });

const ShuffleFileSchema = z.object({
  format: z.literal('viral-lens.shuffle'),
  version: z.literal(1),
  results: z.array(ResultSchema),
});

/**
 * Reads DIR/shuffle.json (an empty file structure when there is none). Anything that is not a well-formed
 * viral-lens.shuffle v1 file is an InputError naming the file and the first bad field.
 */
export async function readShuffle(dir: string, read?: TextReader): Promise<ShuffleFile> {
  return readJsonFile(join(dir, SHUFFLE_FILE), ShuffleFileSchema, () => ({ format: 'viral-lens.shuffle' as const, version: 1 as const, results: [] }), read);
}

/** Merges a result into DIR/shuffle.json, replacing one for the same model and step. */
export async function writeShuffle(dir: string, result: ShuffleResult): Promise<string> {
  const file = await readShuffle(dir);
  file.results = [...file.results.filter((r) => !(r.model === result.model && r.step === result.step)), result];
  const path = join(dir, SHUFFLE_FILE);
  await writeJsonFile(path, file, 2);
  return path;
}

/** Grouped bars: accuracy original vs shuffled per variant, one panel per question type, drop and p in the tooltip. */
export function shuffleFigure(result: ShuffleResult): Figure {
  const main = result.rows.filter((r) => r.shuffle_seed === (result.seeds.length > 1 ? null : result.seeds[0]));
  const data = main.flatMap((r) => [
    { variant: r.variant, question_type: r.question_type, order: 'original', accuracy: r.acc_original, drop: r.drop, p_value: r.p_value, n: r.n },
    { variant: r.variant, question_type: r.question_type, order: 'shuffled', accuracy: r.acc_shuffled, drop: r.drop, p_value: r.p_value, n: r.n },
  ]);
  const types = ['all', ...[...new Set(main.map((r) => r.question_type))].filter((t) => t !== 'all').sort()];
  const variants = result.variants;
  const provenance = { model: result.model, step: result.step, seeds: result.seeds, description: result.description, test: 'McNemar exact, two-sided, per seed' };
  const spec: VlSpec = {
    $schema: SCHEMA,
    title: {
      text: 'Patch shuffle: accuracy with image tokens in place vs shuffled',
      subtitle: `${result.description}; ${result.seeds.length} shuffle seed(s)${result.seeds.length > 1 ? ' (mean)' : ''}; McNemar exact test per seed`,
    },
    config: PAPER_CONFIG,
    usermeta: { viralLens: { figure: 'patch-shuffle', provenance } },
    data: { values: data },
    facet: { column: { field: 'question_type', type: 'nominal', sort: types, title: null } },
    spec: {
      width: { step: 14 },
      height: 200,
      mark: { type: 'bar' },
      encoding: {
        x: { field: 'variant', type: 'nominal', sort: variants, title: null },
        xOffset: { field: 'order', type: 'nominal', sort: ['original', 'shuffled'] },
        y: { field: 'accuracy', type: 'quantitative', title: 'accuracy', scale: { domain: [0, 1] } },
        color: {
          field: 'order',
          type: 'nominal',
          title: null,
          scale: { domain: ['original', 'shuffled'], range: [VARIANT_COLORS.viral ?? '#0072B2', '#E69F00'] },
        },
        tooltip: [{ field: 'variant' }, { field: 'question_type' }, { field: 'order' }, { field: 'accuracy', format: '.3f' }, { field: 'drop' }, { field: 'p_value', format: '.2g' }, { field: 'n' }],
      },
    },
  };
  return { name: 'patch-shuffle', spec, data, provenance, notes: [] };
}
