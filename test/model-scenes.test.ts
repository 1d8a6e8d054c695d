/**
 * Synthetic scenes and questions (demo/model/scenes.ts) and the data/eval plumbing (demo/model/train.ts): seeded
 * determinism, split by image, answers that follow from hand-built scenes, rendering, teacher-forced evaluation.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  askQuestion,
  availableTypes,
  encodeDialogue,
  generateScene,
  generateScenes,
  IMAGE_SIZE,
  makeDialogue,
  mixSeed,
  mulberry32,
  QUESTION_LEN,
  renderScene,
  sceneLabels,
  splitByImage,
  TOKEN_ID,
  TURN_LEN,
  VOCAB,
  type Scene,
  type SceneObject,
} from '../demo/model/scenes.js';
import { chanceLevels } from '../demo/model/chance.js';
import type { SceneFeatures } from '../demo/model/encoders.js';
import { batchOrder, evalBatches, evalTurns, learningRate, makeBatch, trainingTurns } from '../demo/model/train.js';

const obj = (shape: SceneObject['shape'], colour: SceneObject['colour'], row: number, col: number): SceneObject => {
  const cell = IMAGE_SIZE / 3;
  return { shape, colour, row, col, cx: (col + 0.5) * cell, cy: (row + 0.5) * cell, r: 24 };
};
/** Red circle top-left, blue square centre, another red circle bottom-right. */
const scene: Scene = {
  id: 'hand',
  index: 0,
  objects: [obj('circle', 'red', 0, 0), obj('square', 'blue', 1, 1), obj('circle', 'red', 2, 2), obj('triangle', 'green', 0, 2)],
  background: 240,
  noiseSeed: 1,
};

test('scenes: deterministic in (seed, index), independent of how many are generated; 0–6 objects in distinct cells', () => {
  assert.deepEqual(generateScenes(5, 40)[17], generateScene(5, 17));
  assert.deepEqual(generateScenes(5, 3), generateScenes(5, 40).slice(0, 3));
  assert.notDeepEqual(generateScene(5, 1), generateScene(6, 1));
  const counts = new Set<number>();
  for (const s of generateScenes(2, 200)) {
    counts.add(s.objects.length);
    assert.ok(s.objects.length <= 6);
    assert.equal(new Set(s.objects.map((o) => `${o.row},${o.col}`)).size, s.objects.length);
    for (const o of s.objects) {
      // The whole shape stays inside its cell.
      const cell = IMAGE_SIZE / 3;
      assert.ok(o.cx - o.r >= o.col * cell && o.cx + o.r <= (o.col + 1) * cell);
      assert.ok(o.cy - o.r >= o.row * cell && o.cy + o.r <= (o.row + 1) * cell);
    }
  }
  assert.deepEqual([...counts].sort(), [0, 1, 2, 3, 4, 5, 6]);
});

test('split: by image, disjoint, complete, seeded', () => {
  const s = splitByImage(100, 0.2, 3);
  assert.equal(s.heldout.length, 20);
  assert.equal(s.train.length, 80);
  assert.deepEqual([...s.train, ...s.heldout].sort((a, b) => a - b), [...Array(100).keys()]);
  assert.deepEqual(splitByImage(100, 0.2, 3), s);
  assert.notDeepEqual(splitByImage(100, 0.2, 4).heldout, s.heldout);
  assert.throws(() => splitByImage(10, 1.5, 0), /fraction/);
});

test('render: object pixels carry the palette colour, background is grey, size and layout as declared', () => {
  const img = renderScene(scene);
  assert.equal(img.length, IMAGE_SIZE * IMAGE_SIZE * 3);
  const px = (x: number, y: number) => Array.from(img.subarray(3 * (y * IMAGE_SIZE + x), 3 * (y * IMAGE_SIZE + x) + 3));
  const c = IMAGE_SIZE / 3;
  assert.deepEqual(px(Math.round(0.5 * c), Math.round(0.5 * c)), [215, 40, 40]); // red circle centre
  assert.deepEqual(px(Math.round(1.5 * c), Math.round(1.5 * c)), [40, 80, 215]); // blue square centre
  const bg = px(Math.round(0.5 * c), Math.round(1.5 * c)); // empty cell (1, 0)
  assert.ok(bg[0] === bg[1] && bg[1] === bg[2] && Math.abs(bg[0]! - 240) <= 4);
  // A square fills its corners' neighbourhood, a circle does not.
  assert.deepEqual(px(Math.round(1.5 * c + 24 * 0.75), Math.round(1.5 * c + 24 * 0.75)), [40, 80, 215]);
  assert.notDeepEqual(px(Math.round(0.5 * c + 24 * 0.75), Math.round(0.5 * c + 24 * 0.75)), [215, 40, 40]);
});

test('questions: answers follow from the scene (count, colour/shape at a cell, position of a named object)', () => {
  const rng = mulberry32(1);
  const seen = new Map<string, string>();
  for (let i = 0; i < 400; i++) {
    for (const t of availableTypes(scene)) {
      const q = askQuestion(scene, t, rng);
      seen.set(q.question.join(' '), q.answer);
    }
  }
  const expect: Record<string, string> = {
    'how many objects': '4',
    'how many circle': '2',
    'how many red': '2',
    'how many yellow': '0',
    'how many triangle': '1',
    'colour at r1c1': 'blue',
    'colour at r2c0': 'none',
    'shape at r0c2': 'triangle',
    'shape at r2c2': 'circle',
    // Only the blue square and the green triangle are nameable (two red circles).
    'where blue square': 'r1c1',
    'where green triangle': 'r0c2',
  };
  for (const [q, a] of Object.entries(expect)) assert.equal(seen.get(q), a, q);
  for (const q of seen.keys()) assert.ok(!q.includes('red circle'), `ambiguous object named: ${q}`);
  assert.equal([...seen.keys()].filter((q) => q.startsWith('where ')).length, 2);
  // No position question without a nameable object: two red circles name neither.
  const twins = { ...scene, objects: [scene.objects[0]!, scene.objects[2]!] };
  assert.ok(!availableTypes(twins).includes('position'));
  assert.throws(() => askQuestion(twins, 'position', rng), /position question needs an object with a unique colour and shape/);
});

test('dialogues: fixed-length turns, answer after the left-padded question, no repeated question', () => {
  const d = makeDialogue(scene, mulberry32(3), 4);
  assert.equal(new Set(d.map((t) => t.question.join(' '))).size, 4);
  const ids = encodeDialogue(d);
  assert.equal(ids.length, 4 * TURN_LEN);
  d.forEach((turn, t) => {
    assert.equal(ids[t * TURN_LEN + QUESTION_LEN], TOKEN_ID[turn.answer]);
    // The answer is predicted at the question's last word: no '?' or padding between them.
    assert.equal(ids[t * TURN_LEN + QUESTION_LEN - 1], TOKEN_ID[turn.question.at(-1)!]);
    const words = Array.from(ids.subarray(t * TURN_LEN, t * TURN_LEN + QUESTION_LEN), (i) => VOCAB[i]).filter((w) => w !== '<pad>');
    assert.deepEqual(words, turn.question);
  });
  const only = makeDialogue(scene, mulberry32(3), 3, ['count']);
  assert.ok(only.every((t) => t.type === 'count'));
});

test('labels: one value per scene for every attribute', () => {
  const labels = sceneLabels([scene]);
  assert.equal(labels.n_objects![0], 4);
  assert.equal(labels.count_circle![0], 2);
  assert.equal(labels.count_red![0], 2);
  assert.equal(labels.colour_r1c1![0], 'blue');
  assert.equal(labels.shape_r2c0![0], 'none');
  assert.equal(labels.pair01_h![0], 'left'); // object 0 (0,0) vs object 1 (1,1)
  assert.equal(labels.pair01_v![0], 'above');
  assert.equal(Object.keys(labels).length, 1 + 3 + 4 + 18 + 2);
});

test('batches: every train image once per epoch, seeded; learning-rate schedule warms up then decays to 10%', () => {
  const next = batchOrder([3, 5, 7, 9, 11], 1);
  const first = [...next(2), ...next(3)];
  assert.deepEqual([...first].sort((a, b) => a - b), [3, 5, 7, 9, 11]);
  assert.deepEqual(first, [...batchOrder([3, 5, 7, 9, 11], 1)(5)]);
  const o = { lr: 1, warmup: 10, steps: 110 };
  assert.equal(learningRate(0, o), 0.1);
  assert.equal(learningRate(9, o), 1);
  assert.ok(Math.abs(learningRate(60, o) - 0.55) < 1e-12);
  assert.ok(Math.abs(learningRate(110, o) - 0.1) < 1e-12);
});

test('chance level: majority training answer per type, scored on the held-out questions (hand-counted)', () => {
  const q = (type: 'count' | 'colour' | 'shape' | 'position', answer: string) => ({ type, answer });
  // Training: count 0,0,1 → "0"; colour red,none,none,red → tie, "red" comes first in the vocabulary; shape square;
  // position r0c1,r2c2,r2c2 → "r2c2".
  const train = [q('count', '0'), q('count', '1'), q('count', '0'), q('colour', 'none'), q('colour', 'red'), q('colour', 'none'), q('colour', 'red'), q('shape', 'square'), q('position', 'r0c1'), q('position', 'r2c2'), q('position', 'r2c2')];
  // Held-out: count 0,2,0,0 → 3/4; colour red,none,blue → 1/3; shape circle,square → 1/2; position r0c1,r0c1 → 0/2.
  const heldout = [q('count', '0'), q('count', '2'), q('colour', 'red'), q('shape', 'circle'), q('count', '0'), q('colour', 'none'), q('position', 'r0c1'), q('colour', 'blue'), q('shape', 'square'), q('position', 'r0c1'), q('count', '0')];
  const c = chanceLevels(train, heldout);
  assert.deepEqual(c.count, { answer: '0', correct: 3, total: 4, chance: 3 / 4 });
  assert.deepEqual(c.colour, { answer: 'red', correct: 1, total: 3, chance: 1 / 3 });
  assert.deepEqual(c.shape, { answer: 'square', correct: 1, total: 2, chance: 1 / 2 });
  assert.deepEqual(c.position, { answer: 'r2c2', correct: 0, total: 2, chance: 0 });
  // Overall: each question answered with its own type's guess: 3 + 1 + 1 + 0 of 11.
  assert.deepEqual(c.overall, { answer: null, correct: 5, total: 11, chance: 5 / 11 });
  // A held-out type never asked in training has no guess, and then neither has "overall".
  const none = chanceLevels(train.filter((t) => t.type !== 'position'), heldout);
  assert.equal(none.position.chance, null);
  assert.equal(none.overall.chance, null);
  assert.equal(chanceLevels(train, []).count.chance, null);
});

test('chance level inputs: trainingTurns / evalTurns are exactly the questions of the training and evaluation batches', () => {
  const scenes = generateScenes(4, 40);
  const split = splitByImage(40, 0.25, 4);
  const zeros = (dim: number) => ({ spec: { dim }, data: new Float32Array(40 * 2 * dim) });
  const ds = { scenes, split, features: { count: 40, tokens: 2, grid: [1, 2], encoder: zeros(3), teacher: zeros(5) } as unknown as SceneFeatures };
  const asked = (b: { answers: Int32Array; types: string[] }) => [...b.answers].map((a, i) => `${b.types[i]}:${VOCAB[a]}`);
  const said = (ts: { type: string; answer: string }[]) => ts.map((t) => `${t.type}:${t.answer}`);
  const o = { turns: 3, dialogues: 2, seed: 1007, batchSize: 4 };
  assert.deepEqual(said(evalTurns(scenes, split.heldout, o)), evalBatches(ds, split.heldout, o).flatMap(asked));
  // The training loop's draw, written out by hand here (demo/model/train.ts train(): batch order, then per step
  // mulberry32(mixSeed(seed ^ 0x7a11, step)) over the batch's images).
  const next = batchOrder(split.train, 9);
  const byHand: string[] = [];
  for (let step = 0; step < 7; step++) byHand.push(...asked(makeBatch(ds, next(5), mulberry32(mixSeed(9 ^ 0x7a11, step)), 3)));
  assert.deepEqual(said(trainingTurns(scenes, split.train, { steps: 7, batchSize: 5, turns: 3, seed: 9 })), byHand);
  assert.equal(byHand.length, 7 * 5 * 3);
});
