/**
 * The embedded demo: a LLaVA-shaped model trained here, on real computation, in three variants (baseline,
 * residual, VIRAL), every layer captured during training and compared with the vision encoder and a stronger
 * teacher — the whole story of the VIRAL paper without a checkpoint or a GPU.
 *
 *   1. render the scenes, run the two frozen encoders once (features cached under <out>/features/);
 *   2. train the variants in parallel worker threads (demo/train-worker.ts), each capturing the probe set at
 *      step 0 and every N steps into <out>/<variant>/step-<N>/ and writing <out>/<variant>/results.json;
 *   3. layer-wise CKNNA of every capture against both targets (runLayerwise), held-out accuracy per question type,
 *      patch-shuffle test (analysis/shuffle.ts), attention entropy (analysis/attention.ts);
 *   4. figure data (JSON/CSV) and Vega-Lite specs into <out>/.
 *
 * The encoders are stand-ins (MobileNetV2 for CLIP, a CenterNet backbone for DINOv2) and every output says so.
 */
import { mkdir, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import { ComputeGate } from './compute-gate.js';
import { createEngine, describeEngine, type Engine } from '../src/engine/index.js';
import { InputError, ParamError } from '../src/core/errors.js';
import { initBackend, type BackendInfo, type BackendName } from './model/backend.js';
import { extractSceneFeatures, featureCachePath, loadTeacher, loadVisionEncoder, PATCH_GRID, PATCH_TOKENS, readFeatureCache, writeFeatureCache, type EncoderSpec, type SceneFeatures } from './model/encoders.js';
import type { FeatureWorkerInput } from './feature-worker.js';
import { MODEL_VARIANTS, type ModelVariant } from './model/mini-llava.js';
import { generateScenes, QUESTION_TYPES, splitByImage, type QuestionType, type Scene } from './model/scenes.js';
import { CHANCE_DEFINITION, chanceLevels, type ChanceLevel } from './model/chance.js';
import { DEFAULT_TRAIN, evalTurns, trainingTurns, type EvalResult } from './model/train.js';
import { DEMO_MODEL_NAME, runVariant, type VariantRunEvent, type VariantRunInput, type VariantRunResult } from './train-run.js';
import { DEMO_METRIC } from '../analysis/demo-settings.js';
import { attentionEntropy, entropyHeatmapFigure, writeAttention, type AttentionEntropyResult } from '../analysis/attention.js';
import { trainingFigure, variantsFigure, type AccuracyRow, type CurvePoint, type Figure, type Series } from '../analysis/figures.js';
import { runLayerwise, type LayerwiseRow } from '../analysis/layerwise.js';
import { runShuffle, shuffleFigure, writeShuffle, type ShuffleResult } from '../analysis/shuffle.js';

/** Sizes of a demo run. */
export interface DemoSize {
  images: number;
  heldoutFraction: number;
  probe: number;
  steps: number;
  captureEvery: number;
  width: number;
  layers: number;
  heads: number;
  batchSize: number;
  turns: number;
  /** Peak learning rate and its linear warm-up (then cosine decay to a tenth, demo/model/train.ts). */
  lr: number;
  warmup: number;
  evalDialogues: number;
  shuffleSeeds: number[];
  attentionSamples: number;
}

/**
 * Default: 4m22s on 2 cores (seed 0: features 30 s, three variants taking turns on the two cores 226 s, analysis 5 s;
 * seed 0 held-out 89.0 % at 900 steps, 90.0 % at 1000 steps, which took 5m06s).
 */
export const DEFAULT_SIZE: DemoSize = {
  images: 640,
  heldoutFraction: 0.2,
  probe: 48,
  steps: 900,
  captureEvery: 300,
  width: 64,
  layers: 4,
  heads: 4,
  batchSize: DEFAULT_TRAIN.batchSize,
  turns: DEFAULT_TRAIN.turns,
  lr: DEFAULT_TRAIN.lr,
  warmup: DEFAULT_TRAIN.warmup,
  evalDialogues: 2,
  shuffleSeeds: [1, 2],
  attentionSamples: 16,
};

/**
 * --quick: under 45 s on 2 cores (CI runs it). Half the default's depth and a sixth of its steps on 96 images, at
 * twice the default's learning rate with a shorter warm-up. bench:learning --quick, held-out against the chance
 * level: seed 0, 120 steps at lr 2e-3 44.8 % vs 34.4 %, at 4e-3 50.0 %; 140 steps at 4e-3 with 3-word questions
 * 50.0 %, seed 1 49.0 % vs 35.4 %; the whole quick demo took 39 s. Enough to answer above chance and to exercise
 * every stage; the shuffle and layer-wise numbers of so short a run are not a readout.
 */
export const QUICK_SIZE: DemoSize = {
  images: 96,
  heldoutFraction: 0.25,
  probe: 16,
  steps: 140,
  captureEvery: 70,
  width: 64,
  layers: 2,
  heads: 4,
  batchSize: 16,
  turns: 4,
  lr: 4e-3,
  warmup: 15,
  evalDialogues: 1,
  shuffleSeeds: [1],
  attentionSamples: 4,
};

export { DEMO_METRIC };

export interface DemoOptions {
  out: string;
  seed: number;
  quick: boolean;
  steps?: number;
  variants: ModelVariant[];
  backend: BackendName;
  /** Layer-wise engine (createEngine name). */
  engine: string;
  /** Run the variants in worker threads (default); false = one after another in this thread (tests). */
  workers: boolean;
  onProgress?: (e: DemoProgress) => void;
}

export type DemoProgress =
  | { kind: 'features'; done: number; total: number; cached: boolean }
  | { kind: 'variant'; event: VariantRunEvent }
  | { kind: 'analysis'; stage: string; done: number; total: number };

export interface AccuracyCell {
  variant: ModelVariant;
  question_type: string;
  correct: number;
  total: number;
  accuracy: number;
  accuracy_shuffled: number | null;
  /** Chance level of this question type on the same held-out questions (demo/model/chance.ts); null: no guess. */
  chance: number | null;
}

export interface DemoResult {
  out: string;
  seed: number;
  size: DemoSize;
  backend: BackendInfo;
  engine: string;
  encoder: EncoderSpec;
  teacher: EncoderSpec;
  featuresCached: boolean;
  /** Whether the variants trained in parallel worker threads (else one after another in this thread). */
  workers: boolean;
  featureSeconds: number;
  trainSeconds: number;
  analysisSeconds: number;
  split: { train: number; heldout: number };
  variants: VariantRunResult[];
  /** runLayerwise rows of the final capture of every variant, both targets. */
  layerwise: LayerwiseRow[];
  /** The same over every capture step (training dynamics). */
  dynamics: LayerwiseRow[];
  accuracy: AccuracyCell[];
  /** Chance level per question type (demo/model/chance.ts), with the guessed answer; the same for every variant. */
  chance: Record<QuestionType | 'overall', ChanceLevel>;
  shuffle: ShuffleResult | null;
  attention: AttentionEntropyResult[];
  files: Record<string, string>;
}

export function parseVariants(list: string[]): ModelVariant[] {
  if (list.length === 0) return [...MODEL_VARIANTS];
  const out: ModelVariant[] = [];
  for (const v of list) {
    if (!(MODEL_VARIANTS as readonly string[]).includes(v)) throw new ParamError('variants', `unknown variant '${v}' (expected ${MODEL_VARIANTS.join(', ')})`);
    if (!out.includes(v as ModelVariant)) out.push(v as ModelVariant);
  }
  return out;
}

export function demoSize(options: Pick<DemoOptions, 'quick' | 'steps'>): DemoSize {
  const base = options.quick ? QUICK_SIZE : DEFAULT_SIZE;
  if (options.steps === undefined) return { ...base };
  if (!Number.isInteger(options.steps) || options.steps < 1) throw new ParamError('steps', `expected a positive integer, got ${options.steps}`);
  // Keep about three captures after step 0 whatever the length.
  return { ...base, steps: options.steps, captureEvery: Math.max(1, Math.ceil(options.steps / 3)) };
}

/** Copies a Float32Array into shared memory so every worker reads it without a copy. */
function shared(data: Float32Array): Float32Array {
  const out = new Float32Array(new SharedArrayBuffer(data.byteLength));
  out.set(data);
  return out;
}

/**
 * Worker source that registers tsx's loader, then imports the TypeScript entry. `--import tsx` in the worker's
 * execArgv does not install the hooks in Node 20's workers ("Unknown file extension .ts"); tsx's register API does.
 */
function workerBootstrap(entry: URL): string {
  // Compiled (dist/, bin/build.mjs): the worker's entry is JavaScript and needs no tsx.
  if (entry.pathname.endsWith('.js')) return `import(${JSON.stringify(entry.href)});`;
  const api = import.meta.resolve('tsx/esm/api');
  return `import(${JSON.stringify(api)}).then((m) => { m.register(); return import(${JSON.stringify(entry.href)}); });`;
}

/** The URL of a sibling worker entry, .ts under tsx and .js when compiled. */
function workerEntry(name: string): URL {
  return new URL(`./${name}${new URL(import.meta.url).pathname.endsWith('.ts') ? '.ts' : '.js'}`, import.meta.url);
}

interface WorkerMessage {
  type: string;
  message?: string;
  input?: boolean;
  stack?: string;
}

/**
 * Runs one worker to its `done` message: `onMessage` sees every message and returns the result on `done`; an `error`
 * message rejects (an InputError stays one, prefixed with `label`), and so does an exit before `done`.
 */
function runWorker<R>(entry: URL, data: unknown, label: string, onMessage: (m: WorkerMessage) => R | undefined): Promise<R> {
  const worker = new Worker(workerBootstrap(entry), { eval: true, workerData: data });
  return new Promise((resolvePromise, reject) => {
    let settled = false;
    const finish = (fn: () => void) => {
      if (settled) return;
      settled = true;
      fn();
      // The worker's wasm heap is only freed when the thread ends.
      void worker.terminate();
    };
    worker.on('message', (m: WorkerMessage) => {
      if (m.type === 'error') {
        finish(() => reject(m.input ? new InputError(`${label}: ${m.message}`) : Object.assign(new Error(`${label} worker: ${m.message}`), { stack: m.stack })));
        return;
      }
      const result = onMessage(m);
      if (m.type === 'done' && result !== undefined) finish(() => resolvePromise(result));
    });
    worker.on('error', (err) => finish(() => reject(err)));
    worker.on('exit', (code) => finish(() => reject(new Error(`${label} worker exited with code ${code} before finishing`))));
  });
}

function runInWorker(input: VariantRunInput, onEvent: (e: VariantRunEvent) => void): Promise<VariantRunResult> {
  return runWorker(workerEntry('train-worker'), input, input.variant, (m: WorkerMessage & { event?: VariantRunEvent; result?: VariantRunResult }) => {
    if (m.type === 'event' && m.event) onEvent(m.event);
    return m.type === 'done' ? m.result : undefined;
  });
}

/** Both frozen models' features, each extracted in its own worker thread (one per core). */
async function featuresInWorkers(options: DemoOptions, count: number, onProgress: (done: number, total: number) => void) {
  const done = { encoder: 0, teacher: 0 };
  const one = (role: FeatureWorkerInput['role']) => {
    const input: FeatureWorkerInput = { role, sceneSeed: options.seed, count, backend: options.backend };
    return runWorker(workerEntry('feature-worker'), input, `${role} features`, (m: WorkerMessage & { done?: number; spec?: EncoderSpec; data?: Float32Array }) => {
      if (m.type === 'progress' && m.done !== undefined) {
        done[role] = m.done;
        // Images through both models, as the one-thread path counts them.
        onProgress(Math.floor((done.encoder + done.teacher) / 2), count);
      }
      return m.type === 'done' && m.spec && m.data ? { spec: m.spec, data: m.data } : undefined;
    });
  };
  const [encoder, teacher] = await Promise.all([one('encoder'), one('teacher')]);
  return { encoder, teacher };
}

const pct = (x: number) => Math.round(x * 1e4) / 100;

async function exists(p: string): Promise<boolean> {
  return stat(p).then(
    () => true,
    () => false,
  );
}

/**
 * Makes a rerun into the same folder work: removes what an earlier demo wrote for these variants (its step-<N>
 * captures, weights, results.json) and the merged analysis files, keeping the feature cache. Captures that the demo
 * did not write are never touched: the run stops with an InputError instead.
 */
export async function clearPreviousDemo(out: string, variants: readonly string[]): Promise<void> {
  for (const v of variants) {
    const dir = join(out, v);
    if (!(await exists(dir))) continue;
    for (const entry of await readdir(dir)) {
      if (!/^step-\d+$/.test(entry)) continue;
      const manifest = join(dir, entry, 'manifest.json');
      let name: unknown = null;
      try {
        name = (JSON.parse(await readFile(manifest, 'utf8')) as { model?: { name?: unknown } }).model?.name;
      } catch {
        // unreadable or missing manifest: not provably ours
      }
      if (name !== DEMO_MODEL_NAME) throw new InputError(`${join(dir, entry)}: not a capture written by the demo; refusing to overwrite it (choose another --out)`);
      await rm(join(dir, entry), { recursive: true, force: true });
    }
    for (const f of ['model.safetensors', 'results.json']) await rm(join(dir, f), { force: true });
  }
  if (await exists(join(out, 'demo.json'))) {
    for (const f of ['shuffle.json', 'attention.json', 'demo.json']) await rm(join(out, f), { force: true });
  }
}

type Progress = (p: DemoProgress) => void;

/**
 * Step 1: scenes and frozen features (the encoders are disposed before training starts). With workers, the encoder
 * and the teacher run at once in two threads; without, one after the other on this one. Same features either way.
 */
async function sceneFeatures(options: DemoOptions, size: DemoSize, out: string, progress: Progress) {
  const t0 = performance.now();
  const backend = await initBackend(options.backend);
  const scenes = generateScenes(options.seed, size.images);
  const split = splitByImage(size.images, size.heldoutFraction, options.seed);
  const cacheDir = join(out, 'features');
  const onProgress = (done: number, total: number) => progress({ kind: 'features', done, total, cached: false });
  const encoder = await loadVisionEncoder();
  const teacher = await loadTeacher();
  let features: SceneFeatures & { cached: boolean; cachePath: string | null };
  try {
    const cached = await readFeatureCache(cacheDir, options.seed, size.images, encoder.spec, teacher.spec);
    if (cached) features = { ...cached, cached: true, cachePath: featureCachePath(cacheDir, options.seed, size.images, encoder.spec, teacher.spec) };
    else if (options.workers) {
      const f = await featuresInWorkers(options, size.images, onProgress);
      const cachePath = await writeFeatureCache(cacheDir, options.seed, size.images, f.encoder, f.teacher);
      features = { count: size.images, tokens: PATCH_TOKENS, grid: PATCH_GRID, ...f, cached: false, cachePath };
    } else features = await extractSceneFeatures(scenes, encoder, teacher, { sceneSeed: options.seed, cacheDir, onProgress });
  } finally {
    encoder.dispose();
    teacher.dispose();
  }
  if (features.cached) progress({ kind: 'features', done: size.images, total: size.images, cached: true });
  return { backend, scenes, split, features, seconds: (performance.now() - t0) / 1000 };
}

/** What each variant's training run gets: the same seeds, size and features (in shared memory for workers). */
function variantInputs(options: DemoOptions, size: DemoSize, out: string, backend: BackendInfo, features: SceneFeatures & { cachePath: string | null }): VariantRunInput[] {
  const sharedFeatures = {
    count: features.count,
    tokens: features.tokens,
    grid: features.grid,
    encoder: { spec: features.encoder.spec, data: options.workers ? shared(features.encoder.data) : features.encoder.data },
    teacher: { spec: features.teacher.spec, data: options.workers ? shared(features.teacher.data) : features.teacher.data },
  };
  // More workers than cores: they take turns (demo/compute-gate.ts), which beats the OS's time-slicing here.
  const cores = availableParallelism();
  const gate = options.workers && options.variants.length > cores ? ComputeGate.create(cores).buffer : undefined;
  return options.variants.map((variant) => ({
    variant,
    modelSeed: options.seed,
    dataSeed: options.seed,
    sceneSeed: options.seed,
    sceneCount: size.images,
    heldoutFraction: size.heldoutFraction,
    model: { width: size.width, layers: size.layers, heads: size.heads },
    train: { ...DEFAULT_TRAIN, steps: size.steps, batchSize: size.batchSize, turns: size.turns, lr: size.lr, warmup: size.warmup },
    ...(gate ? { gate } : {}),
    captureEvery: size.captureEvery,
    probeCount: size.probe,
    runDir: join(out, variant),
    eval: demoEvalSettings(options.seed, size),
    attentionSamples: size.attentionSamples,
    backend: options.backend,
    features: sharedFeatures,
    provenance: {
      demo: { seed: options.seed, size, variants: options.variants },
      packages: { ...backend.versions, [features.encoder.spec.package]: features.encoder.spec.version, [features.teacher.spec.package]: features.teacher.spec.version },
      feature_cache: features.cachePath,
    },
  }));
}

/** Step 2: trains the variants, in parallel workers or one after another on this thread. */
async function trainVariants(inputs: VariantRunInput[], workers: boolean, progress: Progress): Promise<VariantRunResult[]> {
  const onEvent = (event: VariantRunEvent) => progress({ kind: 'variant', event });
  if (workers) return Promise.all(inputs.map((i) => runInWorker(i, onEvent)));
  const variants: VariantRunResult[] = [];
  for (const i of inputs) variants.push(await runVariant(i, onEvent));
  return variants;
}

/** CKNNA sweeps of every capture of every variant (dynamics) and of each variant's final capture (layerwise). */
async function sweepCaptures(variants: readonly VariantRunResult[], engineName: DemoOptions['engine'], progress: Progress) {
  const engine = await createEngine(engineName);
  const dynamics: LayerwiseRow[] = [];
  try {
    const all = variants.flatMap((v) => v.captureDirs);
    for (const [i, dir] of all.entries()) {
      dynamics.push(...(await sweep(dir, engine)));
      progress({ kind: 'analysis', stage: 'CKNNA sweep', done: i + 1, total: all.length });
    }
  } finally {
    await engine.dispose();
  }
  const finalDirs = new Set(variants.map((v) => v.captureDirs[v.captureDirs.length - 1]));
  return { layerwise: dynamics.filter((r) => finalDirs.has(r.capture)), dynamics, engine: describeEngine(engine) };
}

/** Final held-out accuracy per variant and question type, beside its shuffled mean and the chance level. */
function accuracyCells(variants: readonly VariantRunResult[], chance: Record<QuestionType | 'overall', ChanceLevel>): AccuracyCell[] {
  return variants.flatMap((v) => {
    const shuffledMean = (pick: (r: VariantRunResult['final']['original']) => number) =>
      v.final.shuffled.length ? v.final.shuffled.reduce((a, r) => a + pick(r), 0) / v.final.shuffled.length : null;
    const cell = (t: QuestionType | 'overall', acc: VariantRunResult['final']['original']['overall'], shuffledAcc: number | null): AccuracyCell => {
      // The chance level must be scored on the very questions the variant was evaluated on.
      if (chance[t].total !== acc.total) throw new Error(`${v.variant} ${t}: chance level over ${chance[t].total} held-out questions, accuracy over ${acc.total}`);
      return { variant: v.variant, question_type: t, ...acc, accuracy_shuffled: shuffledAcc, chance: chance[t].chance };
    };
    return [
      cell('overall', v.final.original.overall, shuffledMean((r) => r.overall.accuracy)),
      ...QUESTION_TYPES.map((t) => cell(t, v.final.original.byType[t], shuffledMean((r) => r.byType[t].accuracy))),
    ];
  });
}

/** The patch-shuffle test and the attention entropy, each written to its analysis file under `out`. */
async function shuffleAndAttention(variants: readonly VariantRunResult[], size: DemoSize, seed: number, tokens: number, out: string, files: Record<string, string>, progress: Progress) {
  let shuffle: ShuffleResult | null = null;
  if (size.shuffleSeeds.length) {
    progress({ kind: 'analysis', stage: 'patch shuffle', done: 0, total: 1 });
    shuffle = await demoShuffle(variants, { seeds: size.shuffleSeeds, step: size.steps, seed, tokens });
    files.shuffle = await writeShuffle(out, shuffle);
    progress({ kind: 'analysis', stage: 'patch shuffle', done: 1, total: 1 });
  }
  const attention: AttentionEntropyResult[] = [];
  for (const v of variants) {
    const r = demoAttention(v);
    if (!r) continue;
    attention.push(r);
    files.attention = await writeAttention(out, r);
  }
  return { shuffle, attention };
}

/** Runs the whole demo; see the module comment. */
export async function runDemo(options: DemoOptions): Promise<DemoResult> {
  const size = demoSize(options);
  const out = resolve(options.out);
  const progress = options.onProgress ?? (() => {});
  if (options.variants.length === 0) throw new ParamError('variants', 'nothing to train');
  if (size.probe > Math.round(size.images * size.heldoutFraction)) throw new InputError(`probe set ${size.probe} larger than the held-out set`);
  await mkdir(out, { recursive: true });
  await clearPreviousDemo(out, options.variants);
  const files: Record<string, string> = {};

  const { backend, scenes, split, features, seconds: featureSeconds } = await sceneFeatures(options, size, out, progress);

  const tTrain = performance.now();
  const variants = await trainVariants(variantInputs(options, size, out, backend, features), options.workers, progress);
  const trainSeconds = (performance.now() - tTrain) / 1000;

  const tAnalysis = performance.now();
  const { layerwise, dynamics, engine } = await sweepCaptures(variants, options.engine, progress);
  const chance = demoChance(options.seed, size, scenes);
  const accuracy = accuracyCells(variants, chance);
  const { shuffle, attention } = await shuffleAndAttention(variants, size, options.seed, features.tokens, out, files, progress);
  const analysisSeconds = (performance.now() - tAnalysis) / 1000;

  const result: DemoResult = {
    out,
    seed: options.seed,
    size,
    backend,
    engine,
    encoder: features.encoder.spec,
    teacher: features.teacher.spec,
    featuresCached: features.cached,
    workers: options.workers,
    featureSeconds,
    trainSeconds,
    analysisSeconds,
    split: { train: split.train.length, heldout: split.heldout.length },
    variants,
    layerwise,
    dynamics,
    accuracy,
    chance,
    shuffle,
    attention,
    files,
  };
  Object.assign(files, await writeDemoFiles(result));
  return result;
}

/**
 * The chance level per question type of a demo run (demo/model/chance.ts): majority answers over the questions every
 * variant trains on (seed, steps, batch, turns, as train() draws them), scored on the final evaluation's held-out
 * questions. Needs no model: the scenes and the split are enough.
 */
export function demoChance(seed: number, size: Pick<DemoSize, 'images' | 'heldoutFraction' | 'steps' | 'batchSize' | 'turns' | 'evalDialogues' | 'shuffleSeeds'>, scenes?: readonly Scene[]): Record<QuestionType | 'overall', ChanceLevel> {
  const all = scenes ?? generateScenes(seed, size.images);
  const split = splitByImage(size.images, size.heldoutFraction, seed);
  // The same data seed as the variants' training (runDemo: dataSeed = seed) and the same final evaluation.
  const train = trainingTurns(all, split.train, { steps: size.steps, batchSize: size.batchSize, turns: size.turns, seed });
  const e = demoEvalSettings(seed, size);
  const heldout = evalTurns(all, split.heldout, { turns: size.turns, dialogues: e.dialogues, seed: e.seed });
  return chanceLevels(train, heldout);
}

/** The final evaluation's settings, derived from the run's seed and size (demo.json records both). */
export function demoEvalSettings(seed: number, size: Pick<DemoSize, 'evalDialogues' | 'shuffleSeeds'>): { dialogues: number; seed: number; shuffleSeeds: number[] } {
  return { dialogues: size.evalDialogues, seed: seed + 1000, shuffleSeeds: [...size.shuffleSeeds] };
}

/** A variant's final held-out evaluations, in place and shuffled (from training, or re-run on the saved weights). */
export interface FinalEvaluations {
  variant: string;
  final: { original: EvalResult; shuffled: EvalResult[] };
}

/** Patch-shuffle test over the variants' final evaluations (the paper's Table 3), as the demo records it. */
export async function demoShuffle(variants: readonly FinalEvaluations[], o: { seeds: number[]; step: number; seed: number; tokens: number }): Promise<ShuffleResult> {
  return runShuffle(
    variants.map((v) => ({
      name: v.variant,
      evaluate: (seed: number | null) => {
        if (seed === null) return v.final.original.outcomes;
        const r = v.final.shuffled.find((s) => s.shuffleSeed === seed);
        if (!r) throw new Error(`no shuffled evaluation with seed ${seed}`);
        return r.outcomes;
      },
    })),
    {
      seeds: o.seeds,
      model: DEMO_MODEL_NAME,
      step: o.step,
      seed: o.seed,
      description: `${o.tokens} image tokens permuted before the projector (per image, seeded); held-out questions, teacher-forced`,
    },
  );
}

/** Spatial entropy of a variant's recorded text→image attention, as the demo records it; null when none was recorded. */
export function demoAttention(v: Pick<VariantRunResult, 'variant' | 'steps' | 'attention'>): AttentionEntropyResult | null {
  const a = v.attention;
  if (!a) return null;
  return attentionEntropy(
    { samples: a.samples, layers: a.layers, heads: a.heads, queries: a.queries, grid: a.grid, data: a.data, sampleIds: a.sampleIds },
    { model: DEMO_MODEL_NAME, variant: v.variant, step: v.steps },
  );
}

/** Layer-wise CKNNA of one capture against both targets, with the demo's fixed settings. */
export async function sweep(dir: string, engine: Engine): Promise<LayerwiseRow[]> {
  return runLayerwise(dir, {
    engine,
    metrics: [DEMO_METRIC.metric],
    k: DEMO_METRIC.k,
    preprocess: DEMO_METRIC.preprocess,
    tokenMode: DEMO_METRIC.tokenMode,
  });
}

function csv(rows: Record<string, unknown>[]): string {
  if (rows.length === 0) return '';
  const keys = [...new Set(rows.flatMap((r) => Object.keys(r)))];
  const cell = (v: unknown) => {
    const s = v === null || v === undefined ? '' : typeof v === 'number' && Number.isNaN(v) ? 'NaN' : String(v);
    return /[",\n]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
  };
  return [keys.join(','), ...rows.map((r) => keys.map((k) => cell(r[k])).join(','))].join('\n') + '\n';
}

function json(value: unknown): string {
  return JSON.stringify(value, (_k, v) => (typeof v === 'number' && !Number.isFinite(v) ? null : v instanceof Float32Array ? undefined : v), 2) + '\n';
}

/** Curve points for the shared figure builders. */
export function curvePoints(rows: readonly LayerwiseRow[], engine: string): CurvePoint[] {
  return rows.map((r) => ({
    series: r.variant,
    variant: r.variant,
    step: r.step,
    run: r.variant,
    target: r.target,
    metric: r.metric,
    layer: r.layer,
    layer_index: r.layer_index,
    value: Number.isFinite(r.value) ? r.value : null,
    k: r.k,
    n: r.n,
    preprocess: r.preprocess,
    token_mode: r.token_mode,
    engine,
  }));
}

/** The CSV tables of a run: curves, accuracy, loss and accuracy over steps. */
function demoTables(r: DemoResult): [string, string][] {
  const strip = (rows: LayerwiseRow[]) => rows.map(({ capture: _c, ...rest }) => ({ ...rest, capture: rest.variant + '/step-' + rest.step }));
  const accuracySteps = r.variants.flatMap((v) =>
    v.evals.flatMap((e) => [
      { variant: v.variant, step: e.step, question_type: 'overall', accuracy: e.result.overall.accuracy, total: e.result.overall.total },
      ...QUESTION_TYPES.map((t) => ({ variant: v.variant, step: e.step, question_type: t, accuracy: e.result.byType[t].accuracy, total: e.result.byType[t].total })),
    ]),
  );
  return [
    ['layerwise.csv', csv(strip(r.layerwise))],
    ['dynamics.csv', csv(strip(r.dynamics))],
    ['accuracy.csv', csv(r.accuracy as unknown as Record<string, unknown>[])],
    ['loss.csv', csv(r.variants.flatMap((v) => v.history.map((h) => ({ variant: v.variant, step: h.step, loss: h.loss, lm: h.lm, vra: h.vra }))))],
    ['accuracy_steps.csv', csv(accuracySteps)],
  ];
}

/** The run's figures (Vega-Lite with inline data and provenance). */
function demoFigures(r: DemoResult): Figure[] {
  const series: Series[] = r.variants.map((v) => ({ label: v.variant, variant: v.variant, step: v.steps, run: v.variant }));
  const provenance = {
    model: DEMO_MODEL_NAME,
    metric: DEMO_METRIC.metric,
    k: DEMO_METRIC.k,
    preprocess: DEMO_METRIC.preprocess,
    token_mode: DEMO_METRIC.tokenMode,
    n: r.layerwise[0]?.n,
    engine: r.engine,
    backend: r.backend.description,
    encoder: r.encoder.description,
    teacher: r.teacher.description,
    seed: r.seed,
  };
  const align = r.variants.find((v) => v.variant !== 'baseline')?.config.alignLayer ?? r.variants[0]?.config.alignLayer ?? 1;
  const marks = [
    ...(r.variants.some((v) => v.variant === 'viral') ? [{ layer_index: align, label: 'VIRAL aligned', series: 'viral' }] : []),
    ...(r.variants.some((v) => v.variant === 'residual') ? [{ layer_index: align, label: 'residual re-injected', series: 'residual' }] : []),
  ];
  const accuracyRows: AccuracyRow[] = r.accuracy.map((a) => ({
    series: a.variant,
    variant: a.variant,
    run: a.variant,
    benchmark: a.question_type,
    value: pct(a.accuracy),
    step: r.size.steps,
    source: 'held-out, teacher-forced (%); dashed: chance',
    chance: a.chance === null ? null : pct(a.chance),
  }));
  const figures: Figure[] = [
    variantsFigure(curvePoints(r.layerwise, r.engine), accuracyRows, { metric: DEMO_METRIC.metric, series, marks, provenance }),
    ...['encoder', 'teacher'].map((target) => {
      const f = trainingFigure(curvePoints(r.dynamics, r.engine), { metric: DEMO_METRIC.metric, target, layer_index: align, series, provenance });
      return { ...f, name: `training-${target}` };
    }),
  ];
  if (r.shuffle) figures.push(shuffleFigure(r.shuffle));
  if (r.attention.length) figures.push(entropyHeatmapFigure(r.attention));
  return figures;
}

/** demo.json: the run's settings and results, read back by demo/replay.ts (DemoJsonSchema) to recompute analyses. */
function demoJson(r: DemoResult): unknown {
  return {
    format: 'viral-lens.demo',
    version: 1,
    seed: r.seed,
    size: r.size,
    backend: r.backend,
    engine: r.engine,
    encoder: r.encoder,
    teacher: r.teacher,
    layerwise_settings: DEMO_METRIC,
    split: r.split,
    timings_s: { features: r.featureSeconds, train: r.trainSeconds, analysis: r.analysisSeconds },
    variants: r.variants.map((v) => ({
      variant: v.variant,
      config: v.config,
      params: v.params,
      steps: v.steps,
      median_step_ms: v.medianStepMs,
      wall_s: v.wallSeconds,
      captures: v.captureDirs,
      weights: v.weightsPath,
      results: v.resultsPath,
      evals: v.evals,
    })),
    accuracy: r.accuracy,
    chance: { definition: CHANCE_DEFINITION, by_type: r.chance },
    layerwise: r.layerwise,
  };
}

async function writeDemoFiles(r: DemoResult): Promise<Record<string, string>> {
  const files: Record<string, string> = {};
  const put = async (name: string, text: string) => {
    const p = join(r.out, name);
    await writeFile(p, text);
    files[name] = p;
  };
  for (const [name, text] of demoTables(r)) await put(name, text);
  await mkdir(join(r.out, 'figures'), { recursive: true });
  for (const f of demoFigures(r)) {
    await put(join('figures', `${f.name}.vl.json`), json(f.spec));
    await put(join('figures', `${f.name}.csv`), csv(f.data));
  }
  await put('demo.json', json(demoJson(r)));
  return files;
}
