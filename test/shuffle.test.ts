import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { readShuffle, runShuffle, shuffleFigure, writeShuffle, type QuestionOutcome } from '../analysis/shuffle.js';
import { renderSvg } from '../analysis/figures.js';
import { binomialHalfCdf } from '../src/stats/index.js';

/**
 * 100 questions: q0–q49 'count', q50–q99 'colour'. In the original order q0–q79 are right. Shuffling (any seed)
 * makes the `spatial` variant lose q0–q19 (count) and gain q80, q81 (colour); the `blind` variant is unaffected.
 */
function evaluator(variant: 'spatial' | 'blind', calls: (number | null)[]) {
  return (seed: number | null): QuestionOutcome[] => {
    calls.push(seed);
    return Array.from({ length: 100 }, (_, i) => {
      let correct = i < 80;
      if (seed !== null && variant === 'spatial') {
        if (i < 20) correct = false;
        if (i === 80 || i === 81) correct = true;
      }
      return { id: `q${i}`, type: i < 50 ? 'count' : 'colour', correct };
    });
  };
}

test('patch shuffle: accuracies, drops, McNemar and the between-variant difference on a hand-built evaluator', async () => {
  const calls: (number | null)[] = [];
  const r = await runShuffle(
    [
      { name: 'blind', evaluate: evaluator('blind', []) },
      { name: 'spatial', evaluate: evaluator('spatial', calls) },
    ],
    { seeds: [3, 4], model: 'hand', resamples: 500, seed: 1 },
  );
  assert.deepEqual(calls, [null, 3, 4]);
  const row = (v: string, t: string, s: number | null) => r.rows.find((x) => x.variant === v && x.question_type === t && x.shuffle_seed === s)!;
  const all = row('spatial', 'all', 3);
  assert.equal(all.n, 100);
  assert.equal(all.correct_original, 80);
  assert.equal(all.correct_shuffled, 62);
  assert.equal(all.drop, 18);
  assert.equal(all.lost, 20);
  assert.equal(all.gained, 2);
  assert.ok(Math.abs(all.p_value! - 2 * binomialHalfCdf(2, 22)) < 1e-15);
  assert.ok(all.p_value! < 1e-3);
  const count = row('spatial', 'count', 4);
  assert.deepEqual([count.n, count.correct_original, count.correct_shuffled, count.lost, count.gained], [50, 50, 30, 20, 0]);
  const colour = row('spatial', 'colour', 4);
  assert.deepEqual([colour.correct_original, colour.correct_shuffled, colour.drop], [30, 32, -2]);
  assert.equal(colour.p_value, 0.5); // b = 0, c = 2: 2·P(Bin(2, ½) ≤ 0) = 0.5
  const blind = row('blind', 'all', 3);
  assert.equal(blind.drop, 0);
  assert.equal(blind.p_value, 1);
  // The averaged row exists when there are several seeds.
  assert.equal(row('spatial', 'all', null).drop, 18);
  // Between variants: spatial drops 0.18 more than blind; significant; CI excludes 0.
  const cmp = r.comparisons.find((c) => c.question_type === 'all')!;
  assert.equal(cmp.a, 'blind');
  assert.equal(cmp.b, 'spatial');
  assert.ok(Math.abs(cmp.difference - 0.18) < 1e-12);
  assert.ok(cmp.ci_low > 0.08 && cmp.ci_high < 0.3, `[${cmp.ci_low}, ${cmp.ci_high}]`);
  assert.ok(cmp.p_value < 0.01);
  const cmpColour = r.comparisons.find((c) => c.question_type === 'colour')!;
  assert.ok(cmpColour.p_value > 0.2, `colour p ${cmpColour.p_value}`);
});

test('patch shuffle rejects an evaluator that answers different questions when shuffled', async () => {
  await assert.rejects(
    runShuffle([{ name: 'x', evaluate: (s) => [{ id: s === null ? 'a' : 'b', type: 't', correct: true }] }]),
    /did not answer the same questions/,
  );
  await assert.rejects(
    runShuffle([{ name: 'x', evaluate: () => [{ id: 'a', type: 't', correct: true }, { id: 'a', type: 't', correct: false }] }]),
    /appears twice/,
  );
});

test('shuffle.json round trip and the figure renders', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'vl-shuffle-'));
  try {
    const r = await runShuffle([{ name: 'spatial', evaluate: evaluator('spatial', []) }], { seeds: [1] });
    await writeShuffle(dir, r);
    const file = await readShuffle(dir);
    assert.equal(file.results[0]!.rows.length, 3);
    const svg = await renderSvg(shuffleFigure(file.results[0]!).spec);
    assert.match(svg, /Patch shuffle/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
