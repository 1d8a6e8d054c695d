/**
 * bench/readout.bench.ts's statistics on hand-made seed results: the Student-t interval against its formula
 * (mean ± t₀.₉₇₅,df · sd / √n with the table value), the per-type shuffle drop paired per seed, and the over-training
 * table that puts CKNNA at ℓ next to held-out accuracy at each capture step.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { analyse, tInterval } from '../bench/readout.bench.js';

test('tInterval: mean ± t(0.975, n−1)·sd/√n; one value has no interval', () => {
  // [1, 2, 3]: mean 2, sd 1, t(0.975, 2) = 4.303 → half-width 4.303 / √3 = 2.4843.
  const i = tInterval([1, 2, 3]);
  assert.equal(i.mean, 2);
  assert.ok(Math.abs(i.high - i.low - 2 * (4.303 / Math.sqrt(3))) < 1e-12);
  // [0.5, 0.7]: mean 0.6, sd √0.02, t(0.975, 1) = 12.706 → half 12.706 · 0.1 = 1.2706.
  const j = tInterval([0.5, 0.7]);
  assert.ok(Math.abs(j.low - (0.6 - 1.2706)) < 1e-12 && Math.abs(j.high - (0.6 + 1.2706)) < 1e-12);
  assert.ok(Number.isNaN(tInterval([0.4]).low));
});

type Runs = Parameters<typeof analyse>[0];

function seedRun(seed: number, base: number): Runs[number] {
  const variants = ['baseline', 'residual', 'viral'];
  const layerwise = variants.flatMap((variant) =>
    ['encoder', 'teacher'].flatMap((target) =>
      [0, 1, 2].map((layer_index) => ({ variant, target, layer_index, layer: layer_index === 0 ? 'embed' : `blocks.${layer_index - 1}.out`, value: base - 0.1 * layer_index, k: 10, n: 36, preprocess: 'prh', token_mode: 'per-token', step: 100 })),
    ),
  );
  const types = ['overall', 'count', 'colour', 'shape', 'position'];
  // Shuffled accuracy = original − (0.1 · type index + seed / 100): the drop per type is known exactly.
  const accuracy = variants.flatMap((variant) => types.map((question_type, i) => ({ variant, question_type, correct: 0, total: 10, accuracy: 0.9, accuracy_shuffled: 0.9 - (0.1 * i + seed / 100), chance: 0.3 })));
  const dynamics = variants.flatMap((variant) => ['encoder', 'teacher'].flatMap((target) => [0, 100].flatMap((step) => [0, 1, 2].map((layer_index) => ({ variant, target, step, layer_index, value: step === 0 ? 0.5 : base - 0.1 * layer_index })))));
  const evals = variants.flatMap((variant) => [0, 100].map((step) => ({ variant, step, accuracy: Object.fromEntries(types.map((t) => [t, step === 0 ? 0.1 : 0.8 + seed / 100])) })));
  return {
    seed,
    result: {
      layerwise,
      accuracy,
      size: { steps: 100, width: 8, layers: 2 },
      backend: { description: 'test backend' },
      engine: 'ref',
      encoder: { description: 'enc' },
      teacher: { description: 'teach' },
      trainSeconds: 1,
      alignLayer: 1,
      shuffleDrop: { baseline: 0.1, residual: 0.1, viral: 0.1 },
      dynamics,
      evals,
    },
  } as unknown as Runs[number];
}

test('analyse: per-type shuffle drops are paired per seed; the over-training table and figures come from every capture step', () => {
  const runs = [seedRun(0, 0.6), seedRun(1, 0.7), seedRun(2, 0.8)];
  const report = analyse(runs);
  const shuffle = report.json.shuffle as { variant: string; question_type: string; drop: { mean: number; low: number; high: number } }[];
  const pos = shuffle.find((s) => s.variant === 'baseline' && s.question_type === 'position')!;
  // position is type index 4: drops 0.40, 0.41, 0.42 → mean 0.41, sd 0.01.
  assert.ok(Math.abs(pos.drop.mean - 0.41) < 1e-12);
  assert.ok(Math.abs(pos.drop.high - pos.drop.mean - (4.303 * 0.01) / Math.sqrt(3)) < 1e-9);
  const training = report.json.training as { variant: string; step: number; cknna: Record<string, { mean: number }>; accuracy: Record<string, { mean: number }> }[];
  assert.equal(training.length, 3 * 2);
  const last = training.find((t) => t.variant === 'viral' && t.step === 100)!;
  // CKNNA at ℓ = 1 is base − 0.1 → (0.5 + 0.6 + 0.7) / 3; the last layer (2) is base − 0.2.
  assert.ok(Math.abs(last.cknna['encoder@1']!.mean - 0.6) < 1e-12);
  assert.ok(Math.abs(last.cknna['teacher@2']!.mean - 0.5) < 1e-12);
  assert.ok(Math.abs(last.accuracy['overall']!.mean - 0.81) < 1e-12);
  assert.match(report.markdown, /\| viral \| 100 \| 0\.600 \[/);
  assert.deepEqual(report.figures.map((f) => f.name), ['readout-layerwise', 'readout-training-encoder', 'readout-training-teacher']);
  // A seed file written before the per-step records existed: the table is omitted and says why, nothing is invented.
  const old = runs.map((r) => ({ ...r, result: { ...r.result, dynamics: undefined, evals: undefined } }));
  const r2 = analyse(old);
  assert.match(r2.markdown, /Over-training table omitted/);
  assert.deepEqual(r2.json.training, []);
});
