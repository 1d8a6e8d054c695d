/**
 * The demo's attention-entropy and patch-shuffle analyses recomputed from what a demo run keeps: demo.json (seed,
 * sizes, each variant's config), <variant>/model.safetensors (weights, with the config in their metadata) and
 * features/ (the frozen encoders' cached patch features). The models are rebuilt from the weights and the same
 * evaluation code as in training is re-run on the held-out images (demo/train-run.ts: shuffleEvaluations,
 * attentionMaps; demo/demo.ts: demoShuffle, demoAttention), so a recomputed result is what the demo would have
 * recorded, and is compared with the stored attention.json / shuffle.json to show that it is.
 *
 * A run that lacks any of those inputs (a PyTorch run that wrote its own shuffle.json, a copy without weights) cannot
 * be recomputed: the stored file is returned instead, with the reason. Used by `viral-lens attention|shuffle`.
 */
import { readFile, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { z } from 'zod';
import { InputError, ParamError } from '../src/core/errors.js';
import { readJsonFile } from '../src/store/json.js';
import { shuffleEvaluations, attentionMaps } from './train-run.js';
import { initBackend, type BackendInfo, type BackendName } from './model/backend.js';
import { extractSceneFeatures, loadTeacher, loadVisionEncoder, readFeatureCache, type EncoderSpec, type SceneFeatures } from './model/encoders.js';
import { MODEL_VARIANTS, type MiniLlava } from './model/mini-llava.js';
import { generateScenes, splitByImage } from './model/scenes.js';
import type { DemoDataset } from './model/train.js';
import { loadWeights } from './model/weights.js';
import { ATTENTION_FILE, readAttention, type AttentionEntropyResult } from '../analysis/attention.js';
import { demoAttention, demoEvalSettings, demoShuffle, type FinalEvaluations } from './demo.js';
import { readShuffle, SHUFFLE_FILE, type ShuffleResult } from '../analysis/shuffle.js';

export const DEMO_FILE = 'demo.json';

const SpecSchema = z.object({
  role: z.enum(['encoder', 'teacher']),
  model: z.string(),
  package: z.string(),
  version: z.string(),
  node: z.string(),
  dim: z.number().int().min(1),
  grid: z.tuple([z.number().int().min(1), z.number().int().min(1)]),
  description: z.string(),
});

/** The part of demo.json a recomputation needs (demo/demo.ts writeDemoFiles writes it). */
const DemoJsonSchema = z.object({
  format: z.literal('viral-lens.demo'),
  version: z.literal(1),
  seed: z.number().int(),
  size: z.object({
    images: z.number().int().min(2),
    heldoutFraction: z.number().gt(0).lt(1),
    probe: z.number().int().min(1),
    steps: z.number().int().min(0),
    turns: z.number().int().min(1),
    evalDialogues: z.number().int().min(1),
    shuffleSeeds: z.array(z.number().int()),
    attentionSamples: z.number().int().min(0),
  }),
  encoder: SpecSchema,
  teacher: SpecSchema,
  variants: z
    .array(z.object({ variant: z.enum(MODEL_VARIANTS), config: z.record(z.string(), z.unknown()), steps: z.number().int().min(0) }))
    .min(1),
});

type DemoJson = z.output<typeof DemoJsonSchema>;

/** Why a run cannot be recomputed (the caller falls back to the stored file). */
class CannotRecompute extends Error {}

export interface ReplayOptions {
  /** tfjs backend for the rebuilt models (default auto: the demo's own default). */
  backend?: BackendName;
  /** false: do not try, read the stored file (`--stored`). */
  recompute?: boolean;
}

interface Replay {
  demo: DemoJson;
  backend: BackendInfo;
  ds: DemoDataset;
  heldout: number[];
  probe: number[];
  /** How the features were obtained (cache or recomputed by the encoders). */
  features: string;
}

const exists = (p: string) =>
  stat(p).then(
    () => true,
    () => false,
  );

const sameSpec = (a: EncoderSpec, b: EncoderSpec) => a.package === b.package && a.version === b.version && a.node === b.node && a.dim === b.dim;

/** Everything the recomputation needs, or CannotRecompute naming what is missing. */
async function openReplay(dir: string, options: ReplayOptions): Promise<Replay> {
  if (options.recompute === false) throw new CannotRecompute('not requested (--stored)');
  const path = join(dir, DEMO_FILE);
  if (!(await exists(path))) throw new CannotRecompute(`no ${DEMO_FILE} (not a run folder written by viral-lens demo)`);
  // Read by its name relative to the run folder, so the reason printed says `demo.json: ...` as the CLI shows it.
  const demo = await readJsonFile(DEMO_FILE, DemoJsonSchema, undefined, (name) => readFile(join(dir, name), 'utf8')).catch((err: unknown) => {
    if (err instanceof InputError) throw new CannotRecompute(err.message);
    throw err;
  });
  for (const v of demo.variants) {
    if (!(await exists(join(dir, v.variant, 'model.safetensors')))) throw new CannotRecompute(`${v.variant}/model.safetensors is missing`);
  }
  // Before the encoders, which need a started tfjs backend when the features are not cached.
  const backend = await initBackend(options.backend ?? 'auto');
  const { seed, size } = demo;
  const scenes = generateScenes(seed, size.images);
  const split = splitByImage(size.images, size.heldoutFraction, seed);
  let features: SceneFeatures | null = await readFeatureCache(join(dir, 'features'), seed, size.images, demo.encoder, demo.teacher);
  let how = `frozen-encoder features from the demo's cache (${join('features', '…')})`;
  if (!features) {
    // No cache: the encoders ship in npm packages, so the features can be recomputed, but only by the same versions.
    const encoder = await loadVisionEncoder();
    const teacher = await loadTeacher();
    try {
      for (const [have, want] of [
        [encoder.spec, demo.encoder],
        [teacher.spec, demo.teacher],
      ] as const) {
        if (!sameSpec(have, want)) {
          throw new CannotRecompute(`the feature cache is missing and the installed ${have.role} (${have.package}@${have.version}, ${have.node}) is not the one the run used (${want.package}@${want.version}, ${want.node})`);
        }
      }
      features = await extractSceneFeatures(scenes, encoder, teacher, { sceneSeed: seed });
      how = 'frozen-encoder features recomputed (no cache in the run folder) with the recorded encoder versions';
    } finally {
      encoder.dispose();
      teacher.dispose();
    }
  }
  return { demo, backend, ds: { scenes, split, features }, heldout: split.heldout, probe: split.heldout.slice(0, size.probe), features: how };
}

/** Rebuilds each variant from its weights (checked against the config demo.json records), one at a time. */
async function eachModel<T>(dir: string, r: Replay, fn: (variant: DemoJson['variants'][number], model: MiniLlava) => T): Promise<T[]> {
  const out: T[] = [];
  for (const v of r.demo.variants) {
    const path = join(dir, v.variant, 'model.safetensors');
    const model = await loadWeights(path);
    try {
      const have = model.config as unknown as Record<string, unknown>;
      const differs = Object.keys(v.config).filter((k) => JSON.stringify(have[k]) !== JSON.stringify(v.config[k]));
      if (differs.length) throw new CannotRecompute(`${v.variant}/model.safetensors holds a model whose ${differs.join(', ')} differ from ${DEMO_FILE}'s config`);
      out.push(fn(v, model));
    } finally {
      model.dispose();
    }
  }
  return out;
}

export interface AttentionReport {
  run: string;
  source: 'recomputed' | 'stored';
  /** Why the stored attention.json was printed instead of a recomputation; null when recomputed. */
  reason: string | null;
  /** One line: how the results were obtained. */
  how: string;
  backend: string | null;
  results: AttentionEntropyResult[];
  /** The recomputation compared with the stored attention.json; null when printing the stored file. */
  check: string | null;
}

/** Attention entropy per variant of a demo run: recomputed from the saved weights, else the stored attention.json. */
export async function attentionForRun(runDir: string, options: ReplayOptions = {}): Promise<AttentionReport> {
  const dir = resolve(runDir);
  let replay: Replay;
  try {
    replay = await openReplay(dir, options);
    const { demo, ds, probe } = replay;
    const evalSeed = demoEvalSettings(demo.seed, demo.size).seed;
    if (demo.size.attentionSamples <= 0) throw new CannotRecompute(`${DEMO_FILE}: the run recorded no attention (size.attentionSamples = 0)`);
    const results = await eachModel(dir, replay, (v, model) => {
      const maps = attentionMaps(model, ds, probe, { turns: demo.size.turns, seed: evalSeed, samples: demo.size.attentionSamples });
      return demoAttention({ variant: v.variant, steps: v.steps, attention: maps })!;
    });
    return {
      run: dir,
      source: 'recomputed',
      reason: null,
      how:
        `recomputed: each variant rebuilt from <variant>/model.safetensors, text→image attention of the first ${Math.min(demo.size.attentionSamples, probe.length)} probe images ` +
        `(questions drawn with seed ${evalSeed}, query = the position that predicts each of the ${demo.size.turns} answers), ${replay.features}`,
      backend: replay.backend.description,
      results,
      check: await compareAttention(dir, results),
    };
  } catch (err) {
    if (!(err instanceof CannotRecompute)) throw err;
    const stored = await readAttention(dir);
    if (stored.results.length === 0) throw new InputError(`${runDir}: cannot recompute attention (${err.message}) and there is no ${ATTENTION_FILE} with results to print`);
    return { run: dir, source: 'stored', reason: err.message, how: `stored results from ${ATTENTION_FILE} (not recomputed)`, backend: null, results: stored.results, check: null };
  }
}

async function compareAttention(dir: string, results: readonly AttentionEntropyResult[]): Promise<string> {
  let stored;
  try {
    stored = (await readAttention(dir)).results;
  } catch (err) {
    return `the stored ${ATTENTION_FILE} cannot be read to compare with (${(err as Error).message})`;
  }
  let cells = 0;
  let worst = 0;
  const missing: string[] = [];
  for (const r of results) {
    const s = stored.find((x) => x.variant === r.variant && x.step === r.step && x.model === r.model);
    if (!s) {
      missing.push(r.variant);
      continue;
    }
    for (const c of r.cells) {
      const o = s.cells.find((x) => x.layer_index === c.layer_index && x.head === c.head);
      if (!o) continue;
      cells++;
      const d = Math.abs(c.entropy - o.entropy);
      worst = Math.max(worst, Number.isNaN(d) ? (Number.isNaN(c.entropy) && Number.isNaN(o.entropy) ? 0 : Infinity) : d);
    }
  }
  if (cells === 0) return `no stored ${ATTENTION_FILE} result for these variants to compare with`;
  const tail = missing.length ? `; no stored result for ${missing.join(', ')}` : '';
  return `${worst <= 1e-4 ? 'matches' : 'DIFFERS FROM'} the stored ${ATTENTION_FILE}: max |Δ entropy| = ${worst.toExponential(1)} bits over ${cells} layer × head cells${tail}`;
}

export interface ShuffleReport {
  run: string;
  source: 'recomputed' | 'stored';
  reason: string | null;
  how: string;
  backend: string | null;
  result: ShuffleResult;
  check: string | null;
}

/**
 * Patch-shuffle test of a demo run: recomputed from the saved weights (with `seeds`, default the demo's own shuffle
 * seeds), else the stored shuffle.json. Asking for seeds on a run that cannot be recomputed is an InputError.
 */
export async function shuffleForRun(runDir: string, options: ReplayOptions & { seeds?: number[] } = {}): Promise<ShuffleReport> {
  const dir = resolve(runDir);
  try {
    const replay = await openReplay(dir, options);
    const { demo, ds, heldout } = replay;
    const settings = demoEvalSettings(demo.seed, demo.size);
    const seeds = options.seeds ?? settings.shuffleSeeds;
    if (seeds.length === 0) throw new InputError(`${DEMO_FILE} records no shuffle seeds; pass --seeds N`);
    const evals: FinalEvaluations[] = await eachModel(dir, replay, (v, model) => ({
      variant: v.variant,
      final: shuffleEvaluations(model, ds, heldout, { turns: demo.size.turns, dialogues: settings.dialogues, seed: settings.seed }, seeds),
    }));
    const result = await demoShuffle(evals, { seeds, step: demo.size.steps, seed: demo.seed, tokens: ds.features.tokens });
    return {
      run: dir,
      source: 'recomputed',
      reason: null,
      how:
        `recomputed: each variant rebuilt from <variant>/model.safetensors, the ${heldout.length} held-out images × ${settings.dialogues} dialogue(s) × ${demo.size.turns} questions ` +
        `(question seed ${settings.seed}) answered with the image tokens in place and shuffled with seed(s) ${seeds.join(', ')}; ${replay.features}`,
      backend: replay.backend.description,
      result,
      check: await compareShuffle(dir, result),
    };
  } catch (err) {
    if (!(err instanceof CannotRecompute)) throw err;
    const stored = await readShuffle(dir);
    const last = stored.results.at(-1);
    if (!last) throw new InputError(`${runDir}: cannot recompute the patch-shuffle test (${err.message}) and there is no ${SHUFFLE_FILE} with results to print`);
    if (options.seeds && options.seeds.join(',') !== last.seeds.join(',')) {
      throw new ParamError('seeds', `${runDir} cannot be recomputed (${err.message}); its stored ${SHUFFLE_FILE} has seeds ${last.seeds.join(', ')} (drop --seeds to print it)`);
    }
    return { run: dir, source: 'stored', reason: err.message, how: `stored result from ${SHUFFLE_FILE} (not recomputed)`, backend: null, result: last, check: null };
  }
}

async function compareShuffle(dir: string, result: ShuffleResult): Promise<string> {
  let stored;
  try {
    stored = (await readShuffle(dir)).results.find((r) => r.model === result.model && r.step === result.step);
  } catch (err) {
    return `the stored ${SHUFFLE_FILE} cannot be read to compare with (${(err as Error).message})`;
  }
  if (!stored) return `no stored ${SHUFFLE_FILE} result for this model and step to compare with`;
  let rows = 0;
  let differ = 0;
  for (const r of result.rows) {
    if (r.shuffle_seed === null) continue;
    const s = stored.rows.find((x) => x.variant === r.variant && x.question_type === r.question_type && x.shuffle_seed === r.shuffle_seed);
    if (!s) continue;
    rows++;
    if (s.n !== r.n || s.correct_original !== r.correct_original || s.correct_shuffled !== r.correct_shuffled) differ++;
  }
  if (rows === 0) return `the stored ${SHUFFLE_FILE} has no rows with these shuffle seeds (it has ${stored.seeds.join(', ')}) to compare with`;
  return differ === 0
    ? `matches the stored ${SHUFFLE_FILE}: identical correct counts in all ${rows} (variant, question type, seed) rows both have`
    : `DIFFERS FROM the stored ${SHUFFLE_FILE}: correct counts differ in ${differ} of ${rows} (variant, question type, seed) rows`;
}
