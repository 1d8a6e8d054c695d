/**
 * Data batches, the training loop and the evaluation of the mini-LLaVA on the synthetic scenes.
 *
 * A training sequence is [N image tokens; `turns` question–answer turns] about one image, as in LLaVA's multi-turn
 * conversations; the loss is on the answer tokens only. Evaluation is teacher-forced the same way (each answer is
 * predicted from the image, its question and the earlier turns with their true answers) and reported per question
 * type. Batches depend only on (seed, step), never on the variant, so the three variants see identical data.
 */
import * as tf from '@tensorflow/tfjs';
import { InputError } from '../../src/core/errors.js';
import type { SceneFeatures } from './encoders.js';
import { shufflePatches, type MiniLlava } from './mini-llava.js';
import {
  encodeDialogue,
  makeDialogue,
  mixSeed,
  mulberry32,
  QUESTION_LEN,
  QUESTION_TYPES,
  shuffled,
  TURN_LEN,
  type QuestionType,
  type Scene,
  type Split,
  type Turn,
} from './scenes.js';

export interface DemoDataset {
  scenes: readonly Scene[];
  split: Split;
  features: SceneFeatures;
}

export interface Batch {
  batch: number;
  /** Encoder features [B, N, Dv]. */
  features: Float32Array;
  /** Teacher features [B, N, Dt]. */
  teacher: Float32Array;
  /** Token ids [B, turns·TURN_LEN]. */
  ids: Int32Array;
  /** Answer token ids [B·turns] and their question types. */
  answers: Int32Array;
  types: QuestionType[];
  /** Scene indices of the batch rows. */
  images: number[];
}

function copyRows(src: Float32Array, rows: readonly number[], rowSize: number): Float32Array {
  const out = new Float32Array(rows.length * rowSize);
  rows.forEach((r, i) => out.set(src.subarray(r * rowSize, (r + 1) * rowSize), i * rowSize));
  return out;
}

/**
 * One dialogue per image, in order, all drawn from `rng`: the questions of a batch. makeBatch and the question-set
 * readers below (trainingTurns, evalTurns) share it, so the chance level is computed on the very questions the model
 * is trained and evaluated on.
 */
export function batchDialogues(scenes: readonly Scene[], images: readonly number[], rng: () => number, turns: number, only?: readonly QuestionType[]): Turn[][] {
  return images.map((img) => {
    const scene = scenes[img];
    if (!scene) throw new InputError(`image index ${img} out of range (dataset has ${scenes.length})`);
    return makeDialogue(scene, rng, turns, only);
  });
}

/** A batch of dialogues about the given images; `rng` draws the questions. */
export function makeBatch(ds: DemoDataset, images: readonly number[], rng: () => number, turns: number, only?: readonly QuestionType[]): Batch {
  const f = ds.features;
  const B = images.length;
  const ids = new Int32Array(B * turns * TURN_LEN);
  const answers = new Int32Array(B * turns);
  const types: QuestionType[] = [];
  batchDialogues(ds.scenes, images, rng, turns, only).forEach((dialogue, b) => {
    const enc = encodeDialogue(dialogue);
    ids.set(enc, b * turns * TURN_LEN);
    dialogue.forEach((turn, t) => {
      answers[b * turns + t] = enc[t * TURN_LEN + QUESTION_LEN]!;
      types.push(turn.type);
    });
  });
  return {
    batch: B,
    features: copyRows(f.encoder.data, images, f.tokens * f.encoder.spec.dim),
    teacher: copyRows(f.teacher.data, images, f.tokens * f.teacher.spec.dim),
    ids,
    answers,
    types,
    images: [...images],
  };
}

export interface TrainOptions {
  steps: number;
  batchSize: number;
  /** Peak learning rate (Adam), reached after `warmup` steps, then cosine decay to 10%. */
  lr: number;
  warmup: number;
  turns: number;
  /** Seed of the batch order and the questions (independent of the model seed). */
  seed: number;
  /** Global gradient-norm clip. */
  clipNorm: number;
  /** Train on these question types only (default: all). */
  questionTypes?: readonly QuestionType[];
  /**
   * Curriculum: the first `steps` steps ask only these question types (e.g. the single-cell lookups colour and shape),
   * later steps ask `questionTypes` (or all). Default: none.
   */
  curriculum?: { steps: number; questionTypes: readonly QuestionType[] };
  /** Called after every step; awaited, so a slow callback slows training (hooks queue their writes instead). */
  onStep?: (info: StepInfo) => void | Promise<void>;
  signal?: AbortSignal;
  /** Runs each optimizer step while holding a share of the cores (demo/compute-gate.ts); default: run it directly. */
  gate?: { run<T>(fn: () => T): T };
}

export interface StepInfo {
  /** Steps completed so far (1 after the first update). */
  step: number;
  loss: number;
  lm: number;
  vra: number | null;
  lr: number;
  ms: number;
}

export interface TrainSummary {
  steps: number;
  /** Median milliseconds per step. */
  medianStepMs: number;
  /** Loss history, one entry per step. */
  history: { step: number; loss: number; lm: number; vra: number | null }[];
}

export const DEFAULT_TRAIN: Omit<TrainOptions, 'steps' | 'seed'> = {
  batchSize: 16,
  lr: 2e-3,
  warmup: 30,
  turns: 4,
  clipNorm: 1,
};

export function learningRate(step: number, o: Pick<TrainOptions, 'lr' | 'warmup' | 'steps'>): number {
  if (step < o.warmup) return (o.lr * (step + 1)) / o.warmup;
  const p = (step - o.warmup) / Math.max(1, o.steps - o.warmup);
  return o.lr * (0.1 + 0.9 * 0.5 * (1 + Math.cos(Math.PI * Math.min(1, p))));
}

/** The train images in a seeded order, reshuffled every epoch. */
export function batchOrder(train: readonly number[], seed: number): (size: number) => number[] {
  let epoch = 0;
  let order = shuffled(mulberry32(mixSeed(seed, 0)), train);
  let pos = 0;
  return (size) => {
    const out: number[] = [];
    while (out.length < size) {
      if (pos >= order.length) {
        order = shuffled(mulberry32(mixSeed(seed, ++epoch)), train);
        pos = 0;
      }
      out.push(order[pos++]!);
    }
    return out;
  };
}

/** The question types asked at training step `step` (undefined = all). */
export function stepQuestionTypes(step: number, o: Pick<TrainOptions, 'questionTypes' | 'curriculum'>): readonly QuestionType[] | undefined {
  return o.curriculum && step < o.curriculum.steps ? o.curriculum.questionTypes : o.questionTypes;
}

/** The question draw of training step `step` (train() and trainingTurns). */
function trainStepRng(seed: number, step: number): () => number {
  return mulberry32(mixSeed(seed ^ 0x7a11, step));
}

/** Every question–answer turn train() draws over `o.steps` steps, in order, without touching the features. */
export function trainingTurns(scenes: readonly Scene[], trainImages: readonly number[], o: Pick<TrainOptions, 'steps' | 'batchSize' | 'turns' | 'seed' | 'questionTypes' | 'curriculum'>): Turn[] {
  const next = batchOrder(trainImages, o.seed);
  const out: Turn[] = [];
  for (let step = 0; step < o.steps; step++) {
    for (const d of batchDialogues(scenes, next(o.batchSize), trainStepRng(o.seed, step), o.turns, stepQuestionTypes(step, o))) out.push(...d);
  }
  return out;
}

/** One optimizer step on a batch: returns the losses before the update. */
export function trainStep(
  model: MiniLlava,
  optimizer: tf.AdamOptimizer,
  batch: Batch,
  clipNorm: number,
): { loss: number; lm: number; vra: number | null } {
  const vars = model.trainableVariables();
  let lm = 0;
  let vra: number | null = null;
  const loss = tf.tidy(() => {
    const { value, grads } = tf.variableGrads(() => {
      const l = model.losses({ ...batch, batch: batch.batch }, TURN_LEN);
      lm = l.lm.dataSync()[0]!;
      if (l.vra) vra = l.vra.dataSync()[0]!;
      return l.total;
    }, vars);
    const names = Object.keys(grads);
    const norm = tf.sqrt(tf.addN(names.map((n) => tf.sum(tf.square(grads[n]!))))).dataSync()[0]!;
    const scale = Number.isFinite(norm) && norm > clipNorm ? clipNorm / norm : 1;
    optimizer.applyGradients(names.map((name) => ({ name, tensor: scale === 1 ? grads[name]! : tf.mul(grads[name]!, scale) })));
    return value.dataSync()[0]!;
  });
  return { loss, lm, vra };
}

function median(xs: number[]): number {
  if (xs.length === 0) return NaN;
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

/** Trains in place. Yields to the event loop after every step so queued capture writes make progress. */
export async function train(model: MiniLlava, ds: DemoDataset, options: TrainOptions): Promise<TrainSummary> {
  if (!Number.isInteger(options.steps) || options.steps < 0) throw new InputError(`--steps must be a non-negative integer, got ${options.steps}`);
  if (ds.split.train.length === 0) throw new InputError('no training images');
  const optimizer = tf.train.adam(options.lr, 0.9, 0.99, 1e-8);
  const next = batchOrder(ds.split.train, options.seed);
  const times: number[] = [];
  const history: TrainSummary['history'] = [];
  try {
    for (let step = 0; step < options.steps; step++) {
      options.signal?.throwIfAborted();
      const t0 = performance.now();
      const rng = trainStepRng(options.seed, step);
      const batch = makeBatch(ds, next(options.batchSize), rng, options.turns, stepQuestionTypes(step, options));
      const lr = learningRate(step, options);
      // tfjs has no schedule API; Adam reads this (protected) field at every update, so setting it is a schedule.
      (optimizer as unknown as { learningRate: number }).learningRate = lr;
      const step_ = () => trainStep(model, optimizer, batch, options.clipNorm);
      const r = options.gate ? options.gate.run(step_) : step_();
      const ms = performance.now() - t0;
      times.push(ms);
      history.push({ step: step + 1, ...r });
      await options.onStep?.({ step: step + 1, ...r, lr, ms });
      await new Promise((resolve) => setImmediate(resolve));
    }
  } finally {
    optimizer.dispose();
  }
  return { steps: options.steps, medianStepMs: median(times), history };
}

export interface TypeAccuracy {
  correct: number;
  total: number;
  accuracy: number;
}

/** One answered question (ids are stable for a given eval seed, so outcomes pair up across runs). */
export interface QuestionOutcome {
  id: string;
  type: QuestionType;
  correct: boolean;
}

export interface EvalResult {
  /** Over all questions. */
  overall: TypeAccuracy;
  byType: Record<QuestionType, TypeAccuracy>;
  images: number;
  questions: number;
  /** Whether the image tokens were shuffled (and with which seed). */
  shuffleSeed: number | null;
  outcomes: QuestionOutcome[];
}

export interface EvalOptions {
  turns: number;
  /** Dialogues per image (distinct question draws). */
  dialogues: number;
  /** Seed of the questions: the same seed gives the same question set. */
  seed: number;
  batchSize?: number;
  /** Shuffle every image's tokens before the projector with this seed (patch-shuffle test). */
  shuffleSeed?: number;
  questionTypes?: readonly QuestionType[];
}

/** The images and question draw of each evaluation batch (evalBatches and evalTurns). */
function evalPlan(images: readonly number[], o: EvalOptions): { images: number[]; rng: () => number }[] {
  const bs = o.batchSize ?? 32;
  const rows: number[] = [];
  for (let d = 0; d < o.dialogues; d++) rows.push(...images);
  const out: { images: number[]; rng: () => number }[] = [];
  for (let i = 0; i < rows.length; i += bs) out.push({ images: rows.slice(i, i + bs), rng: mulberry32(mixSeed(o.seed ^ 0xe7a1, i)) });
  return out;
}

/** The fixed evaluation batches for a set of images (deterministic in the seed). */
export function evalBatches(ds: DemoDataset, images: readonly number[], o: EvalOptions): Batch[] {
  return evalPlan(images, o).map((p) => makeBatch(ds, p.images, p.rng, o.turns, o.questionTypes));
}

/** The question–answer turns evaluate() asks about `images` with these options, in order, without the features. */
export function evalTurns(scenes: readonly Scene[], images: readonly number[], o: EvalOptions): Turn[] {
  return evalPlan(images, o).flatMap((p) => batchDialogues(scenes, p.images, p.rng, o.turns, o.questionTypes).flat());
}

/** Teacher-forced answer accuracy per question type (argmax over the whole vocabulary). */
export function evaluate(model: MiniLlava, ds: DemoDataset, images: readonly number[], o: EvalOptions): EvalResult {
  const tally = Object.fromEntries(QUESTION_TYPES.map((t) => [t, { correct: 0, total: 0 }])) as Record<QuestionType, { correct: number; total: number }>;
  const f = ds.features;
  const outcomes: QuestionOutcome[] = [];
  const seen = new Map<string, number>();
  for (const [bi, batch] of evalBatches(ds, images, o).entries()) {
    const features =
      o.shuffleSeed === undefined ? batch.features : shufflePatches(batch.features, batch.batch, f.tokens, f.encoder.spec.dim, mixSeed(o.shuffleSeed, bi));
    const pred = tf.tidy(() => {
      const { last } = model.forward({ features, ids: batch.ids, batch: batch.batch });
      return tf.argMax(model.answerLogits(last, TURN_LEN), -1).dataSync() as Int32Array;
    });
    pred.forEach((p, i) => {
      const type = batch.types[i]!;
      const t = tally[type];
      const correct = p === batch.answers[i];
      t.total++;
      if (correct) t.correct++;
      // id = scene, its k-th dialogue in this question set, turn.
      const turns = o.turns;
      const scene = ds.scenes[batch.images[Math.floor(i / turns)]!]!.id;
      const key = `${scene}/${i % turns}`;
      const k = seen.get(key) ?? 0;
      seen.set(key, k + 1);
      outcomes.push({ id: `${scene}/d${k}/t${i % turns}`, type, correct });
    });
  }
  const acc = (x: { correct: number; total: number }): TypeAccuracy => ({ ...x, accuracy: x.total ? x.correct / x.total : NaN });
  const all = Object.values(tally).reduce((a, b) => ({ correct: a.correct + b.correct, total: a.total + b.total }), { correct: 0, total: 0 });
  return {
    overall: acc(all),
    byType: Object.fromEntries(QUESTION_TYPES.map((t) => [t, acc(tally[t])])) as Record<QuestionType, TypeAccuracy>,
    images: images.length,
    questions: all.total,
    shuffleSeed: o.shuffleSeed ?? null,
    outcomes,
  };
}
