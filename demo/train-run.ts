/**
 * One training run of one mini-LLaVA variant with capture hooks: build the model, capture the probe set at step 0
 * and every N steps (runs/<run>/step-<N>/), train, evaluate held-out accuracy at every capture step, and at the end
 * evaluate with the image tokens in place and shuffled, record text→image attention, save the weights and write
 * results.json (the accuracy table the dashboard shows next to the curves).
 *
 * Runs in-process (tests) or inside a worker thread (train-worker.ts, used by the demo so that each variant's wasm
 * heap is returned to the OS when its worker exits).
 */
import { mkdir } from 'node:fs/promises';
import { join } from 'node:path';
import { InputError } from '../src/core/errors.js';
import { writeFileAtomic } from '../src/store/atomic.js';
import { initBackend, type BackendInfo, type BackendName } from './model/backend.js';
import type { EncoderSpec, SceneFeatures } from './model/encoders.js';
import { defaultConfig, MiniLlava, type MiniLlavaConfig, type ModelVariant } from './model/mini-llava.js';
import { DEMO_MODEL_NAME, generateScenes, mixSeed, mulberry32, QUESTION_LEN, QUESTION_TYPES, sceneLabels, splitByImage, TURN_LEN, VOCAB } from './model/scenes.js';
import { evaluate, makeBatch, train, type DemoDataset, type EvalResult, type TrainOptions } from './model/train.js';
import { saveWeights } from './model/weights.js';
import { captureAttention, TrainingCapture } from './hooks/tfjs.js';
import { ComputeGate } from './compute-gate.js';

export interface VariantRunInput {
  variant: ModelVariant;
  /** Seeds: weights, batches/questions, scenes (the scenes and split must match the features). */
  modelSeed: number;
  dataSeed: number;
  sceneSeed: number;
  sceneCount: number;
  heldoutFraction: number;
  /** Model size and variant settings (vocabulary, token and feature sizes are filled in). */
  model: Partial<Pick<MiniLlavaConfig, 'width' | 'layers' | 'heads' | 'mlpRatio' | 'alignLayer' | 'viralLambda' | 'viralHidden' | 'rotaryFraction'>>;
  train: Omit<TrainOptions, 'onStep' | 'signal' | 'seed' | 'questionTypes' | 'gate'>;
  /** A ComputeGate's buffer shared by the parallel workers (demo/compute-gate.ts): they take turns on the cores. */
  gate?: SharedArrayBuffer;
  captureEvery: number;
  /** Probe set: the first `probeCount` held-out images. */
  probeCount: number;
  runDir: string;
  eval: { dialogues: number; seed: number; shuffleSeeds: number[] };
  /** Probe images whose text→image attention is recorded (0 = none). */
  attentionSamples: number;
  backend: BackendName;
  features: { count: number; tokens: number; grid: [number, number]; encoder: { spec: EncoderSpec; data: Float32Array }; teacher: { spec: EncoderSpec; data: Float32Array } };
  /** Free-form provenance merged into every manifest. */
  provenance: Record<string, unknown>;
}

export type VariantRunEvent =
  | { kind: 'started'; variant: ModelVariant; backend: BackendInfo; params: number }
  | { kind: 'step'; variant: ModelVariant; step: number; total: number; loss: number; lm: number; vra: number | null; ms: number }
  | { kind: 'captured'; variant: ModelVariant; step: number; dir: string }
  | { kind: 'eval'; variant: ModelVariant; step: number; accuracy: number };

export type EvalSummary = Omit<EvalResult, 'outcomes'>;

export interface VariantRunResult {
  variant: ModelVariant;
  backend: BackendInfo;
  config: MiniLlavaConfig;
  params: number;
  steps: number;
  medianStepMs: number;
  history: { step: number; loss: number; lm: number; vra: number | null }[];
  /** Held-out accuracy at every capture step. */
  evals: { step: number; result: EvalSummary }[];
  /** Final held-out evaluation, image tokens in place and shuffled (one per shuffle seed). */
  final: { original: EvalResult; shuffled: EvalResult[] };
  attention: { samples: number; layers: number; heads: number; queries: number; grid: [number, number]; data: Float32Array; sampleIds: string[] } | null;
  captureDirs: string[];
  weightsPath: string;
  resultsPath: string;
  wallSeconds: number;
}

export { DEMO_MODEL_NAME };

/** The manifest `model` object of a demo capture (the dashboard reads aligned_layer / residual_layers). */
export function manifestModel(config: MiniLlavaConfig, params: number, encoder: EncoderSpec, teacher: EncoderSpec): Record<string, unknown> & { name: string } {
  return {
    name: DEMO_MODEL_NAME,
    hidden_size: config.width,
    num_layers: config.layers,
    heads: config.heads,
    parameters: params,
    vision_encoder: encoder.description,
    teacher: teacher.description,
    ...(config.variant === 'viral' ? { aligned_layer: config.alignLayer, viral_lambda: config.viralLambda } : {}),
    ...(config.variant === 'residual' ? { residual_layers: [config.alignLayer] } : {}),
  };
}

function summary(r: EvalResult): EvalSummary {
  const { outcomes: _omit, ...rest } = r;
  return rest;
}

/** The run's scenes, split and dataset over the given features, and its probe images (checked before any work). */
function variantData(input: VariantRunInput): { ds: DemoDataset; probe: number[] } {
  const f = input.features;
  if (f.count !== input.sceneCount) throw new InputError(`features hold ${f.count} images, the run asks for ${input.sceneCount}`);
  const scenes = generateScenes(input.sceneSeed, input.sceneCount);
  const split = splitByImage(input.sceneCount, input.heldoutFraction, input.sceneSeed);
  const features: SceneFeatures = { count: f.count, tokens: f.tokens, grid: f.grid, encoder: f.encoder, teacher: f.teacher };
  const probe = split.heldout.slice(0, input.probeCount);
  if (probe.length < input.probeCount) throw new InputError(`probe set of ${input.probeCount} images, but only ${split.heldout.length} are held out`);
  return { ds: { scenes, split, features }, probe };
}

function variantConfig(input: VariantRunInput): MiniLlavaConfig {
  const f = input.features;
  return defaultConfig({
    ...input.model,
    variant: input.variant,
    seed: input.modelSeed,
    vocabSize: VOCAB.length,
    imageTokens: f.tokens,
    grid: f.grid,
    visionDim: f.encoder.spec.dim,
    teacherDim: f.teacher.spec.dim,
  });
}

/** The capture hooks of a run: the probe set's hidden states and both targets' features, every `captureEvery` steps. */
function probeCapture(model: MiniLlava, input: VariantRunInput, ds: DemoDataset, probe: readonly number[], params: number, backend: BackendInfo, emit: (e: VariantRunEvent) => void): TrainingCapture {
  const f = input.features;
  const probeBatch = makeBatch(ds, probe, mulberry32(mixSeed(input.dataSeed, 0x9b0e)), input.train.turns);
  const rowsOf = (data: Float32Array, dim: number) => {
    const out = new Float32Array(probe.length * f.tokens * dim);
    probe.forEach((img, i) => out.set(data.subarray(img * f.tokens * dim, (img + 1) * f.tokens * dim), i * f.tokens * dim));
    return { samples: probe.length, tokens: f.tokens, dim, data: out };
  };
  return new TrainingCapture(model, {
    runDir: input.runDir,
    every: input.captureEvery,
    totalSteps: input.train.steps,
    probe: { features: probeBatch.features, ids: probeBatch.ids, batch: probeBatch.batch },
    sampleIds: probe.map((i) => ds.scenes[i]!.id),
    labels: sceneLabels(probe.map((i) => ds.scenes[i]!)),
    targets: [
      { name: 'encoder', description: f.encoder.spec.description, features: rowsOf(f.encoder.data, f.encoder.spec.dim) },
      { name: 'teacher', description: f.teacher.spec.description, features: rowsOf(f.teacher.data, f.teacher.spec.dim) },
    ],
    variant: input.variant,
    model: manifestModel(model.config, params, f.encoder.spec, f.teacher.spec),
    grid: f.grid,
    provenance: {
      ...input.provenance,
      tool: 'viral-lens demo (demo/hooks/tfjs.ts)',
      backend,
      model_seed: input.modelSeed,
      data_seed: input.dataSeed,
      scene_seed: input.sceneSeed,
      probe: `first ${probe.length} held-out images (split by image, seed ${input.sceneSeed})`,
    },
    onWritten: (dir, step) => emit({ kind: 'captured', variant: input.variant, step, dir }),
  });
}

export async function runVariant(input: VariantRunInput, emit: (e: VariantRunEvent) => void = () => {}): Promise<VariantRunResult> {
  const t0 = performance.now();
  const backend = await initBackend(input.backend);
  const { ds, probe } = variantData(input);
  const heldout = ds.split.heldout;
  const config = variantConfig(input);
  const model = new MiniLlava(config);
  try {
    const params = model.parameterCount();
    emit({ kind: 'started', variant: input.variant, backend, params });
    await mkdir(input.runDir, { recursive: true });
    const evalOptions = { turns: input.train.turns, dialogues: input.eval.dialogues, seed: input.eval.seed };
    const evals: VariantRunResult['evals'] = [];
    const capture = probeCapture(model, input, ds, probe, params, backend, emit);
    const gate = input.gate ? new ComputeGate(input.gate) : undefined;
    const gated = <T>(fn: () => T): T => (gate ? gate.run(fn) : fn());
    const atCapture = (step: number): void => {
      if (!capture.isCaptureStep(step)) return;
      const r = gated(() => {
        capture.capture(step);
        return evaluate(model, ds, heldout, evalOptions);
      });
      evals.push({ step, result: summary(r) });
      emit({ kind: 'eval', variant: input.variant, step, accuracy: r.overall.accuracy });
    };
    atCapture(0);
    const trained = await train(model, ds, {
      ...input.train,
      seed: input.dataSeed,
      ...(gate ? { gate } : {}),
      onStep: (s) => {
        emit({ kind: 'step', variant: input.variant, step: s.step, total: input.train.steps, loss: s.loss, lm: s.lm, vra: s.vra, ms: s.ms });
        atCapture(s.step);
      },
    });

    const { original, shuffled } = gated(() => shuffleEvaluations(model, ds, heldout, evalOptions, input.eval.shuffleSeeds));
    const attention = gated(() => attentionMaps(model, ds, probe, { turns: input.train.turns, seed: input.eval.seed, samples: input.attentionSamples }));
    const weightsPath = join(input.runDir, 'model.safetensors');
    await saveWeights(model, weightsPath, { variant: input.variant, steps: String(input.train.steps) });
    const captureDirs = await capture.flush();
    const resultsPath = join(input.runDir, 'results.json');
    await writeFileAtomic(resultsPath, resultsJson(input.variant, evals, original, shuffled, backend));
    const { steps, medianStepMs, history } = trained;
    const wallSeconds = (performance.now() - t0) / 1000;
    return { variant: input.variant, backend, config, params, steps, medianStepMs, history, evals, final: { original, shuffled }, attention, captureDirs, weightsPath, resultsPath, wallSeconds };
  } finally {
    model.dispose();
  }
}

/**
 * The final held-out evaluation behind the patch-shuffle test: every held-out image's questions answered with the
 * image tokens in place and once per shuffle seed (same questions: the question draw depends on `o.seed` only).
 * Shared by the demo and by `viral-lens shuffle`, which re-runs it on the saved weights.
 */
export function shuffleEvaluations(
  model: MiniLlava,
  ds: DemoDataset,
  heldout: readonly number[],
  o: { turns: number; dialogues: number; seed: number },
  shuffleSeeds: readonly number[],
): { original: EvalResult; shuffled: EvalResult[] } {
  const original = evaluate(model, ds, heldout, o);
  const shuffled = shuffleSeeds.map((seed) => evaluate(model, ds, heldout, { ...o, shuffleSeed: seed }));
  return { original, shuffled };
}

/**
 * Text→image attention of the first `o.samples` probe images: one dialogue per image (questions drawn from
 * `o.seed`), and as query rows the position that predicts each turn's answer (the question's last token), every
 * layer and head. Null when `o.samples` is 0. Shared by the demo and by `viral-lens attention`.
 */
export function attentionMaps(model: MiniLlava, ds: DemoDataset, probe: readonly number[], o: { turns: number; seed: number; samples: number }): VariantRunResult['attention'] {
  if (o.samples <= 0) return null;
  const f = ds.features;
  const n = Math.min(o.samples, probe.length);
  const images = probe.slice(0, n);
  const b = makeBatch(ds, images, mulberry32(mixSeed(o.seed, 0xa77e)), o.turns);
  const queries = Array.from({ length: o.turns }, (_, t) => f.tokens + t * TURN_LEN + QUESTION_LEN - 1);
  return {
    samples: n,
    layers: model.config.layers,
    heads: model.config.heads,
    queries: queries.length,
    grid: f.grid,
    data: captureAttention(model, { features: b.features, ids: b.ids, batch: n }, queries),
    sampleIds: images.map((i) => ds.scenes[i]!.id),
  };
}

/**
 * results.json in the shape the dashboard reads (server/README.md): `results` = [{benchmark, value, step}] with the
 * held-out accuracy in percent per question type and overall at every capture step, plus the final patch-shuffle
 * accuracies as their own benchmarks.
 */
function resultsJson(variant: string, evals: VariantRunResult['evals'], original: EvalResult, shuffled: EvalResult[], backend: BackendInfo): string {
  const pct = (x: number) => Math.round(x * 1e4) / 100;
  const results: { benchmark: string; value: number; step: number }[] = [];
  for (const { step, result } of evals) {
    results.push({ benchmark: 'overall', value: pct(result.overall.accuracy), step });
    for (const t of QUESTION_TYPES) if (result.byType[t].total) results.push({ benchmark: t, value: pct(result.byType[t].accuracy), step });
  }
  const last = evals[evals.length - 1]?.step ?? 0;
  if (shuffled.length) {
    const mean = shuffled.reduce((a, r) => a + r.overall.accuracy, 0) / shuffled.length;
    results.push({ benchmark: 'overall (patch-shuffled)', value: pct(mean), step: last });
  }
  return (
    JSON.stringify(
      {
        variant,
        description: 'held-out accuracy (%) of the embedded mini-LLaVA demo, teacher-forced answers, per question type',
        questions: original.questions,
        images: original.images,
        backend: backend.description,
        results,
      },
      null,
      2,
    ) + '\n'
  );
}
