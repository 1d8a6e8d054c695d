/**
 * The chance level of the demo's held-out accuracy, per question type.
 *
 * Definition: a guesser that knows the question type (not the image) and always gives that type's most frequent
 * answer among the TRAINING questions; its accuracy on the HELD-OUT questions is the chance level. "Overall" is the
 * same guesser over every held-out question (each question answered with its own type's majority answer), i.e. the
 * held-out-count-weighted mean of the per-type levels. Ties between equally frequent training answers go to the word
 * that comes first in the vocabulary (VOCAB), so the level is deterministic. A type with held-out questions but none
 * in training has no guess: its level is null.
 *
 * It depends only on the two question sets (scenes, split, seeds, steps), not on any model: a model that does not
 * look at the image can reach it from the answer priors alone.
 */
import { QUESTION_TYPES, TOKEN_ID, type QuestionType, type Turn } from './scenes.js';

export const CHANCE_DEFINITION =
  "accuracy on the held-out questions of always giving the question type's most frequent answer among the training questions (ties: first in the vocabulary)";

export interface ChanceLevel {
  /** The guessed answer (the type's majority training answer); null for 'overall' and for a type never trained on. */
  answer: string | null;
  /** Held-out questions the guess gets right, and all held-out questions of the type. */
  correct: number;
  total: number;
  /** correct / total; null when the type has no training question (no guess) or no held-out question. */
  chance: number | null;
}

/** Chance level per question type and overall; see the module comment for the definition. */
export function chanceLevels(train: readonly Pick<Turn, 'type' | 'answer'>[], heldout: readonly Pick<Turn, 'type' | 'answer'>[]): Record<QuestionType | 'overall', ChanceLevel> {
  const counts = new Map<QuestionType, Map<string, number>>();
  for (const t of train) {
    const m = counts.get(t.type) ?? new Map<string, number>();
    m.set(t.answer, (m.get(t.answer) ?? 0) + 1);
    counts.set(t.type, m);
  }
  const rank = (w: string) => TOKEN_ID[w] ?? Number.MAX_SAFE_INTEGER;
  const majority = (type: QuestionType): string | null => {
    let best: string | null = null;
    let bestCount = 0;
    for (const [answer, n] of counts.get(type) ?? []) {
      if (n > bestCount || (n === bestCount && best !== null && (rank(answer) < rank(best) || (rank(answer) === rank(best) && answer < best)))) {
        best = answer;
        bestCount = n;
      }
    }
    return best;
  };
  const out = {} as Record<QuestionType | 'overall', ChanceLevel>;
  let allCorrect = 0;
  let allTotal = 0;
  let allGuessable = true;
  for (const type of QUESTION_TYPES) {
    const answer = majority(type);
    const asked = heldout.filter((t) => t.type === type);
    const correct = answer === null ? 0 : asked.filter((t) => t.answer === answer).length;
    if (answer === null && asked.length) allGuessable = false;
    out[type] = { answer, correct, total: asked.length, chance: answer === null || asked.length === 0 ? null : correct / asked.length };
    allCorrect += correct;
    allTotal += asked.length;
  }
  out.overall = { answer: null, correct: allCorrect, total: allTotal, chance: allGuessable && allTotal > 0 ? allCorrect / allTotal : null };
  return out;
}
