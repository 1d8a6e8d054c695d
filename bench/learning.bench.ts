/**
 * Does the embedded mini-LLaVA learn to look? One baseline model trained with the demo's data, sizes and schedule
 * (no captures, no other variants, so it is quick to iterate on), then teacher-forced accuracy per question type on
 * three question sets beside the chance level (demo/model/chance.ts):
 *
 *   - a sample of TRAINING images (new question draws): what the model fits,
 *   - the HELD-OUT images: what it generalises,
 *   - the held-out images with their patch tokens SHUFFLED before the projector: what it reads from where.
 *
 * The diagnosis it prints: train ≈ held-out near chance = underfitting (more steps / an easier optimisation path);
 * train ≫ held-out = memorising images (more images); held-out ≫ chance but shuffle costs nothing = answers from
 * global image statistics, not from positions. Issue 15 is about reaching "held-out ≫ chance and shuffle hurts".
 *
 * Usage: node --import tsx bench/learning.bench.ts [--seed 0] [--steps N] [--images N] [--width W] [--layers L]
 *          [--heads H] [--batch B] [--lr X] [--warmup N] [--turns N] [--curriculum STEPS] [--curriculum-types colour,shape] [--node NAME] [--crops N]
 *          [--types colour,shape] [--oracle]
 * --curriculum N asks only --curriculum-types (default colour,shape: single-cell lookups) for the first N steps, then
 * every type (or --types). --node reads the CLIP stand-in's tokens from another MobileNetV2 block (a finer map is
 * average-pooled to the patch grid), e.g. block_15_add; --crops 1 encodes the whole image at once instead of one tile
 * per grid cell.
 * --types trains on those question types only (the chance row keeps the all-types training draw); --oracle replaces the encoder's features by each patch's true cell
 * content (one-hot): what the LLM learns when the visual input is perfect, the upper bound for the encoder. [--quick] [--features DIR]
 * Features are cached in --features (default: <os tmp>/viral-lens-learning-features), keyed like the demo's cache.
 */
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { intOption, listOption, numberOption } from '../cli/args.js';
import { DEFAULT_SIZE, demoChance, demoEvalSettings, QUICK_SIZE } from '../demo/demo.js';
import { InputError } from '../src/core/errors.js';
import { initBackend } from '../demo/model/backend.js';
import { extractSceneFeatures, loadTeacher, loadVisionEncoder } from '../demo/model/encoders.js';
import { defaultConfig, MiniLlava } from '../demo/model/mini-llava.js';
import { COLOURS, generateScenes, OBJECT_GRID, QUESTION_TYPES, SHAPES, splitByImage, VOCAB, type QuestionType } from '../demo/model/scenes.js';
import { DEFAULT_TRAIN, evaluate, train, type EvalResult } from '../demo/model/train.js';

/** The bench's options through the CLI's own parsers; a bad one is one line and exit 2, as in the CLI. */
function options() {
  const { values } = parseArgs({
    options: {
      seed: { type: 'string', default: '0' },
      steps: { type: 'string' },
      images: { type: 'string' },
      width: { type: 'string' },
      layers: { type: 'string' },
      heads: { type: 'string' },
      batch: { type: 'string' },
      lr: { type: 'string' },
      warmup: { type: 'string' },
      turns: { type: 'string' },
      curriculum: { type: 'string' },
      'curriculum-types': { type: 'string' },
      node: { type: 'string' },
      crops: { type: 'string' },
      types: { type: 'string' },
      oracle: { type: 'boolean', default: false },
      quick: { type: 'boolean', default: false },
      features: { type: 'string', default: join(tmpdir(), 'viral-lens-learning-features') },
    },
  });
  const positive = (name: string, v: string | undefined, fallback: number, min = 1): number => {
    const n = intOption(name, v, fallback);
    if (n < min) throw new InputError(`--${name}: expected an integer ≥ ${min}, got '${v}'`);
    return n;
  };
  const base = values.quick ? QUICK_SIZE : DEFAULT_SIZE;
  const lr = numberOption('lr', values.lr) ?? base.lr;
  if (!(lr > 0)) throw new InputError(`--lr: expected a number > 0, got '${values.lr}'`);
  const types = listOption(values.types);
  for (const t of types) if (!(QUESTION_TYPES as readonly string[]).includes(t)) throw new InputError(`--types: '${t}' is not a question type (${QUESTION_TYPES.join(', ')})`);
  const curriculumTypes = listOption(values['curriculum-types'] ?? 'colour,shape');
  for (const t of curriculumTypes) if (!(QUESTION_TYPES as readonly string[]).includes(t)) throw new InputError(`--curriculum-types: '${t}' is not a question type (${QUESTION_TYPES.join(', ')})`);
  return {
    seed: positive('seed', values.seed, 0, 0),
    size: {
      ...base,
      steps: positive('steps', values.steps, base.steps),
      images: positive('images', values.images, base.images),
      width: positive('width', values.width, base.width),
      layers: positive('layers', values.layers, base.layers),
      heads: positive('heads', values.heads, base.heads),
      batchSize: positive('batch', values.batch, base.batchSize),
      turns: positive('turns', values.turns, base.turns),
    },
    curriculum: positive('curriculum', values.curriculum, 0, 0),
    curriculumTypes: curriculumTypes as QuestionType[],
    lr,
    warmup: positive('warmup', values.warmup, base.warmup, 0),
    questionTypes: types.length ? (types as QuestionType[]) : undefined,
    oracle: values.oracle === true,
    node: values.node,
    crops: values.crops === undefined ? undefined : positive('crops', values.crops, 1),
    featureDir: values.features!,
  };
}
let parsed: ReturnType<typeof options>;
try {
  parsed = options();
} catch (err) {
  // The CLI's rule (cli/main.ts): input errors and parseArgs' own errors are one line, exit 2.
  if (!(err instanceof InputError || (err as { code?: string }).code?.startsWith('ERR_PARSE_ARGS'))) throw err;
  console.error((err as Error).message);
  process.exit(2);
}
const { seed, size, lr, warmup, questionTypes, oracle, featureDir, curriculum, curriculumTypes, node, crops } = parsed;

const backend = await initBackend('auto');
const scenes = generateScenes(seed, size.images);
const split = splitByImage(size.images, size.heldoutFraction, seed);
const encoder = await loadVisionEncoder({ node, crops });
const teacher = await loadTeacher();
const tFeat = performance.now();
const features = await extractSceneFeatures(scenes, encoder, teacher, { sceneSeed: seed, cacheDir: featureDir });
encoder.dispose();
teacher.dispose();
const featureSeconds = (performance.now() - tFeat) / 1000;
if (oracle) {
  // What the LLM can learn when the visual input is perfect: every patch holds exactly its grid cell's content
  // (one-hot colour and shape, or "empty"), in place of the encoder's features. Same slots, same questions.
  const { dim } = features.encoder.spec;
  const [gr, gc] = features.grid;
  const data = features.encoder.data.fill(0);
  scenes.forEach((scene, i) => {
    for (let p = 0; p < gr * gc; p++) {
      const row = Math.floor((Math.floor(p / gc) * OBJECT_GRID) / gr);
      const col = Math.floor(((p % gc) * OBJECT_GRID) / gc);
      const o = scene.objects.find((x) => x.row === row && x.col === col);
      const at = (i * gr * gc + p) * dim;
      if (!o) data[at + COLOURS.length + SHAPES.length] = 3;
      else {
        data[at + COLOURS.indexOf(o.colour)] = 3;
        data[at + COLOURS.length + SHAPES.indexOf(o.shape)] = 3;
      }
    }
  });
}
const ds = { scenes, split, features };
const model = new MiniLlava(
  defaultConfig({
    vocabSize: VOCAB.length,
    imageTokens: features.tokens,
    grid: features.grid,
    visionDim: features.encoder.spec.dim,
    teacherDim: features.teacher.spec.dim,
    width: size.width,
    layers: size.layers,
    heads: size.heads,
    seed,
  }),
);
console.log(`backend: ${backend.description}; visual input: ${oracle ? 'ORACLE (each patch = its cell\'s true content, one-hot; not an encoder)' : `encoder (stand-in for CLIP): ${features.encoder.spec.description}`}`);
console.log(`images ${size.images} (train ${split.train.length}, held-out ${split.heldout.length}), features ${featureSeconds.toFixed(1)} s${features.cached ? ' (cache)' : ''}`);
console.log(`baseline: width ${size.width}, ${size.layers} layers, ${size.heads} heads, ${model.parameterCount()} parameters; ${size.steps} steps × batch ${size.batchSize} × ${size.turns} turns, lr ${lr}, warm-up ${warmup} steps${curriculum > 0 ? `; curriculum: ${curriculumTypes.join(', ')} only for the first ${curriculum} steps` : ''}${questionTypes ? `; trained on ${questionTypes.join(', ')} questions only` : ''}`);

const tTrain = performance.now();
const every = Math.max(1, Math.round(size.steps / 10));
const summary = await train(model, ds, {
  ...DEFAULT_TRAIN,
  steps: size.steps,
  batchSize: size.batchSize,
  turns: size.turns,
  lr,
  warmup,
  seed,
  ...(questionTypes ? { questionTypes } : {}),
  ...(curriculum > 0 ? { curriculum: { steps: curriculum, questionTypes: curriculumTypes } } : {}),
  onStep: (s) => {
    if (s.step % every === 0 || s.step === size.steps) console.log(`  step ${s.step}: answer loss ${s.lm.toFixed(3)}, lr ${s.lr.toExponential(2)}, ${s.ms.toFixed(0)} ms`);
  },
});
const trainSeconds = (performance.now() - tTrain) / 1000;
console.log(`trained in ${trainSeconds.toFixed(1)} s, median ${summary.medianStepMs.toFixed(0)} ms/step`);

const evalSettings = demoEvalSettings(seed, size);
const opts = { turns: size.turns, dialogues: evalSettings.dialogues, seed: evalSettings.seed };
const trainSample = split.train.slice(0, split.heldout.length);
const sets: [string, EvalResult][] = [
  ['train images', evaluate(model, ds, trainSample, { ...opts, seed: opts.seed ^ 0x51 })],
  ['held-out', evaluate(model, ds, split.heldout, opts)],
  ['held-out shuffled', evaluate(model, ds, split.heldout, { ...opts, shuffleSeed: size.shuffleSeeds[0] ?? 1 })],
];
const chance = demoChance(seed, size, scenes);
const pct = (x: number | null | undefined) => (x === null || x === undefined || !Number.isFinite(x) ? '–' : (100 * x).toFixed(1));
const cols = ['overall', ...QUESTION_TYPES] as const;
console.log(`\n| accuracy % | ${cols.join(' | ')} |\n|---|${cols.map(() => '---').join('|')}|`);
console.log(`| chance | ${cols.map((c) => pct(chance[c].chance)).join(' | ')} |`);
for (const [name, r] of sets) console.log(`| ${name} | ${cols.map((c) => pct(c === 'overall' ? r.overall.accuracy : r.byType[c].accuracy)).join(' | ')} |`);

// Over the types trained on (untrained types score 0 and would read as "underfitting").
const judged: readonly QuestionType[] = questionTypes ?? QUESTION_TYPES;
const over = (c: Record<string, { correct: number; total: number }>) => {
  const t = judged.reduce<{ correct: number; total: number }>((a, q) => ({ correct: a.correct + c[q]!.correct, total: a.total + c[q]!.total }), { correct: 0, total: 0 });
  return t.total ? t.correct / t.total : NaN;
};
const [fit, held, shuf] = sets.map(([, r]) => over(r.byType)) as [number, number, number];
const overChance = held - over(chance);
const verdict =
  fit - held > 0.1
    ? 'memorising: training images are answered much better than held-out ones (more images would help)'
    : overChance < 0.1
      ? 'underfitting: training and held-out images are both near chance (the model has not learned to read the image)'
      : held - shuf < 0.02
        ? 'answers from global image statistics: above chance, but shuffling the patches costs nothing (positions unused)'
        : 'reads the image by position: above chance and the patch shuffle hurts';
console.log(`\ndiagnosis: ${verdict}`);
console.log(`(${judged.join(', ')}: held-out − chance ${pct(overChance)} points; train − held-out ${pct(fit - held)}; held-out − shuffled ${pct(held - shuf)}; seed ${seed}, ${held > 0 ? sets[1]![1].questions : 0} held-out questions)`);
