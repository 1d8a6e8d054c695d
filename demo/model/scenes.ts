/**
 * Synthetic scenes with fine-grained visual facts, and the questions asked about them.
 *
 * A scene is 0–6 coloured shapes (circle / square / triangle; red / green / blue / yellow) in distinct cells of a
 * 3×3 grid over a 192×192 RGB image (64 px cells), with seeded jitter in size and position. Every fact a question can ask about is
 * an attribute of the scene (counts, colour and shape per cell, left/right/above/below between objects), so answers
 * are exact and every attribute can go into a capture manifest as a per-sample label for probes.
 *
 * Rasterised here by hand (coverage test per subpixel, 2×2 supersampling for anti-aliased edges): a canvas library
 * would need a native build or a download, and three shape tests are a few lines.
 *
 * Determinism: scene i depends only on (seed, i), so a smaller run's scenes are a prefix of a larger run's; the
 * train/held-out split is a seeded permutation of image indices (split BY IMAGE: no image contributes questions to
 * both sides).
 */
import { InputError } from '../../src/core/errors.js';
import { mulberry32 } from '../../src/core/rng.js';
import { encodePngRgb, pngDataUrl } from '../../src/store/png.js';

/**
 * `model.name` of every capture and analysis file the demo writes (how a rerun recognises its own captures, and how
 * a reader knows that a sample id is a scene id it can redraw). Here, not in the training code, so that readers such
 * as the dashboard need not load tfjs to know it.
 */
export const DEMO_MODEL_NAME = 'viral-lens mini-LLaVA (embedded demo)';

export const IMAGE_SIZE = 192;
/** Object grid: objects sit in distinct cells of this rows × cols grid. */
export const OBJECT_GRID = 3;
export const MAX_OBJECTS = 6;
export const SHAPES = ['circle', 'square', 'triangle'] as const;
export const COLOURS = ['red', 'green', 'blue', 'yellow'] as const;
export type Shape = (typeof SHAPES)[number];
export type Colour = (typeof COLOURS)[number];

/** Saturated, well-separated colours (sRGB 0–255). */
const PALETTE: Record<Colour, [number, number, number]> = {
  red: [215, 40, 40],
  green: [35, 160, 60],
  blue: [40, 80, 215],
  yellow: [235, 195, 25],
};

export interface SceneObject {
  shape: Shape;
  colour: Colour;
  /** Grid cell, 0-based, row 0 at the top. */
  row: number;
  col: number;
  /** Centre and radius in pixels. */
  cx: number;
  cy: number;
  r: number;
}

export interface Scene {
  /** Stable id, e.g. "scene-s7-000042". */
  id: string;
  index: number;
  objects: SceneObject[];
  /** Background grey level (0–255) and the seed of its pixel noise. */
  background: number;
  noiseSeed: number;
}

/** The project's one seeded PRNG (same stream everywhere), re-exported for the model code. */
export { mulberry32 };

/** Mixes two integers into a 32-bit seed (so stream (seed, i) is independent of stream (seed, i+1)). */
export function mixSeed(a: number, b: number): number {
  let h = Math.imul((a >>> 0) ^ 0x9e3779b9, 0x85ebca6b) ^ Math.imul((b >>> 0) + 0x632be5ab, 0xc2b2ae35);
  h ^= h >>> 16;
  h = Math.imul(h, 0x7feb352d);
  h ^= h >>> 15;
  return h >>> 0;
}

function pick<T>(rng: () => number, xs: readonly T[]): T {
  return xs[Math.floor(rng() * xs.length)]!;
}

/** Fisher–Yates with the given PRNG. */
export function shuffled<T>(rng: () => number, xs: readonly T[]): T[] {
  const out = [...xs];
  for (let i = out.length - 1; i > 0; i--) {
    const j = Math.floor(rng() * (i + 1));
    [out[i], out[j]] = [out[j]!, out[i]!];
  }
  return out;
}

/** Scene `index` of the stream `seed`. */
export function generateScene(seed: number, index: number): Scene {
  const rng = mulberry32(mixSeed(seed, index));
  const n = Math.floor(rng() * (MAX_OBJECTS + 1));
  const cells = shuffled(rng, [...Array(OBJECT_GRID * OBJECT_GRID).keys()]).slice(0, n);
  const cell = IMAGE_SIZE / OBJECT_GRID;
  const objects = cells.map((c): SceneObject => {
    const row = Math.floor(c / OBJECT_GRID);
    const col = c % OBJECT_GRID;
    const r = 19 + rng() * 10;
    // Jitter keeps the whole shape inside its cell, so "the object in cell (r, c)" is unambiguous.
    const slack = cell / 2 - r - 2;
    return {
      shape: pick(rng, SHAPES),
      colour: pick(rng, COLOURS),
      row,
      col,
      cx: (col + 0.5) * cell + (rng() * 2 - 1) * slack,
      cy: (row + 0.5) * cell + (rng() * 2 - 1) * slack,
      r,
    };
  });
  return {
    id: `scene-s${seed}-${String(index).padStart(6, '0')}`,
    index,
    objects,
    background: 225 + Math.floor(rng() * 25),
    noiseSeed: Math.floor(rng() * 2 ** 31),
  };
}

/** The (seed, index) a scene id `scene-s<seed>-<index>` names, or null for any other id. */
export function parseSceneId(id: string): { seed: number; index: number } | null {
  const m = /^scene-s(-?\d{1,10})-(\d{6,9})$/.exec(id);
  if (!m) return null;
  const seed = Number(m[1]);
  const index = Number(m[2]);
  return Number.isSafeInteger(seed) && Number.isSafeInteger(index) ? { seed, index } : null;
}

/** The scene an id names, redrawn (scene i depends only on (seed, i)) as a PNG data: URL; null for other ids. */
export function sceneImageDataUrl(id: string): string | null {
  const at = parseSceneId(id);
  if (!at) return null;
  const scene = generateScene(at.seed, at.index);
  return pngDataUrl(encodePngRgb(renderScene(scene), IMAGE_SIZE, IMAGE_SIZE));
}

export function generateScenes(seed: number, count: number): Scene[] {
  if (!Number.isInteger(count) || count < 1) throw new InputError(`scene count must be a positive integer, got ${count}`);
  return Array.from({ length: count }, (_, i) => generateScene(seed, i));
}

/** Whether (x, y) lies inside the object. */
function inside(o: SceneObject, x: number, y: number): boolean {
  const dx = x - o.cx;
  const dy = y - o.cy;
  switch (o.shape) {
    case 'circle':
      return dx * dx + dy * dy <= (o.r * 0.95) ** 2;
    case 'square': {
      const h = o.r * 0.82;
      return Math.abs(dx) <= h && Math.abs(dy) <= h;
    }
    case 'triangle': {
      // Upward equilateral triangle inscribed in the circle of radius r: apex (0, -r), base at y = r/2.
      if (dy > o.r / 2 || dy < -o.r) return false;
      const halfWidth = ((dy + o.r) / 1.5) * Math.sin(Math.PI / 3);
      return Math.abs(dx) <= halfWidth;
    }
  }
}

/** RGB bytes, row-major [IMAGE_SIZE, IMAGE_SIZE, 3]. */
export function renderScene(scene: Scene): Uint8Array {
  const S = IMAGE_SIZE;
  const img = new Uint8Array(S * S * 3);
  const noise = mulberry32(scene.noiseSeed);
  for (let i = 0; i < S * S; i++) {
    // Faint sensor-like noise so flat regions are not bit-identical across images.
    const v = Math.max(0, Math.min(255, scene.background + Math.round((noise() - 0.5) * 8)));
    img[3 * i] = v;
    img[3 * i + 1] = v;
    img[3 * i + 2] = v;
  }
  const sub = [0.25, 0.75];
  for (const o of scene.objects) {
    const [cr, cg, cb] = PALETTE[o.colour];
    const x0 = Math.max(0, Math.floor(o.cx - o.r - 1));
    const x1 = Math.min(S - 1, Math.ceil(o.cx + o.r + 1));
    const y0 = Math.max(0, Math.floor(o.cy - o.r - 1));
    const y1 = Math.min(S - 1, Math.ceil(o.cy + o.r + 1));
    for (let y = y0; y <= y1; y++) {
      for (let x = x0; x <= x1; x++) {
        let cover = 0;
        for (const sy of sub) for (const sx of sub) if (inside(o, x + sx, y + sy)) cover++;
        if (cover === 0) continue;
        const a = cover / 4;
        const p = 3 * (y * S + x);
        img[p] = Math.round(img[p]! * (1 - a) + cr * a);
        img[p + 1] = Math.round(img[p + 1]! * (1 - a) + cg * a);
        img[p + 2] = Math.round(img[p + 2]! * (1 - a) + cb * a);
      }
    }
  }
  return img;
}

/** The object in a cell, if any. */
export function objectAt(scene: Scene, row: number, col: number): SceneObject | undefined {
  return scene.objects.find((o) => o.row === row && o.col === col);
}

/**
 * Per-sample labels for a capture manifest: every attribute a question can ask about. `pair01_h` / `pair01_v`
 * relate object 0 to object 1 in generation order (random cells), 'none' when the scene has fewer than two.
 */
export function sceneLabels(scenes: readonly Scene[]): Record<string, (number | string)[]> {
  const labels: Record<string, (number | string)[]> = { n_objects: [] };
  for (const s of SHAPES) labels[`count_${s}`] = [];
  for (const c of COLOURS) labels[`count_${c}`] = [];
  for (let r = 0; r < OBJECT_GRID; r++) {
    for (let c = 0; c < OBJECT_GRID; c++) {
      labels[`colour_r${r}c${c}`] = [];
      labels[`shape_r${r}c${c}`] = [];
    }
  }
  labels.pair01_h = [];
  labels.pair01_v = [];
  for (const scene of scenes) {
    labels.n_objects!.push(scene.objects.length);
    for (const s of SHAPES) labels[`count_${s}`]!.push(scene.objects.filter((o) => o.shape === s).length);
    for (const c of COLOURS) labels[`count_${c}`]!.push(scene.objects.filter((o) => o.colour === c).length);
    for (let r = 0; r < OBJECT_GRID; r++) {
      for (let c = 0; c < OBJECT_GRID; c++) {
        const o = objectAt(scene, r, c);
        labels[`colour_r${r}c${c}`]!.push(o?.colour ?? 'none');
        labels[`shape_r${r}c${c}`]!.push(o?.shape ?? 'none');
      }
    }
    const [a, b] = scene.objects;
    labels.pair01_h!.push(a && b ? (a.col < b.col ? 'left' : a.col > b.col ? 'right' : 'same') : 'none');
    labels.pair01_v!.push(a && b ? (a.row < b.row ? 'above' : a.row > b.row ? 'below' : 'same') : 'none');
  }
  return labels;
}

export interface Split {
  train: number[];
  heldout: number[];
}

/** Seeded split of image indices 0..count-1; held-out gets round(count·fraction) images (at least 1). */
export function splitByImage(count: number, heldoutFraction: number, seed: number): Split {
  if (!(heldoutFraction > 0 && heldoutFraction < 1)) throw new InputError(`held-out fraction must be in (0, 1), got ${heldoutFraction}`);
  const perm = shuffled(mulberry32(mixSeed(seed, 0x5e1f)), [...Array(count).keys()]);
  const h = Math.max(1, Math.round(count * heldoutFraction));
  if (h >= count) throw new InputError(`${count} images cannot be split into train and held-out`);
  return { heldout: perm.slice(0, h).sort((a, b) => a - b), train: perm.slice(h).sort((a, b) => a - b) };
}

// ---------------------------------------------------------------------------------------------------------------
// Questions

/**
 * count: "how many red" → 0–6; colour / shape: "colour at r1c2" → the object's colour / shape or none; position:
 * "where red circle" → the cell word of the one red circle. Colour, shape and position are spatial: each needs the
 * image token at the right place (colour/shape: read the slot a cell word names; position: find the slot whose
 * content matches and read where it is), which a patch shuffle destroys; count needs only which contents occur.
 *
 * There is no left/right/above/below question between two named objects: it needs two lookups and a comparison in
 * sequence, and at this size and budget (4 layers, 600 steps) the model stayed at chance on it even with perfect
 * visual input (bench:learning --oracle, seed 0: 44.6 % against a chance level of 44.0 %), so it would only have
 * measured the language model's depth, not what it sees.
 */
export const QUESTION_TYPES = ['count', 'colour', 'shape', 'position'] as const;
export type QuestionType = (typeof QUESTION_TYPES)[number];

export const COUNT_SUBJECTS = ['objects', ...SHAPES, ...COLOURS] as const;

/** The word naming grid cell (row, col), e.g. "r1c2". */
export function cellWord(row: number, col: number): string {
  return `r${row}c${col}`;
}

/** The word list. Cell words name grid cells (in questions, and as the answers of position questions); the other answers are digits, colours, shapes and none. */
export const VOCAB: readonly string[] = [
  '<pad>',
  'how',
  'many',
  'objects',
  ...SHAPES,
  ...COLOURS,
  'colour',
  'shape',
  'at',
  // One word per grid cell (r0c0 … r2c2): a single token names a position, as "top-left" would.
  ...Array.from({ length: OBJECT_GRID * OBJECT_GRID }, (_, i) => cellWord(Math.floor(i / OBJECT_GRID), i % OBJECT_GRID)),
  'where',
  ...Array.from({ length: MAX_OBJECTS + 1 }, (_, i) => String(i)),
  'none',
];
export const TOKEN_ID: Readonly<Record<string, number>> = Object.fromEntries(VOCAB.map((w, i) => [w, i]));

/**
 * Questions are left-padded to this many tokens, then the answer token follows: one turn = QUESTION_LEN + 1. The
 * answer is predicted at the question's last word, with no '?' between: the word that names what to look up (the
 * cell, the counted colour or shape, the second object) is then the query itself, a one-step lookup into the image
 * tokens. With a '?' after it, the lookup needs a hop more (copy the word to the '?', then look), and at 600 steps
 * the model never found it (bench:learning, seed 0, oracle features: held-out 62.6 % with '?', 87.5 % without).
 * 3 = the longest question ("how many red", "colour at r1c2", "where red circle"). It was 6 while a relation
 * question had six words; dropping the three padding tokens per turn shortened the sequence from 64 to 52 and the
 * training step from 161 to 108 ms (one model, seed 0, same machine), which buys more steps in the demo's budget.
 */
export const QUESTION_LEN = 3;
export const TURN_LEN = QUESTION_LEN + 1;

export interface Turn {
  type: QuestionType;
  question: string[];
  answer: string;
}

/** An object can be named in a position question only if its colour+shape is unique in the scene. */
function nameable(scene: Scene): SceneObject[] {
  const key = (o: SceneObject) => `${o.colour} ${o.shape}`;
  const n = new Map<string, number>();
  for (const o of scene.objects) n.set(key(o), (n.get(key(o)) ?? 0) + 1);
  return scene.objects.filter((o) => n.get(key(o)) === 1);
}

/** Question types that can be asked about a scene (position needs a nameable object). */
export function availableTypes(scene: Scene): QuestionType[] {
  return nameable(scene).length >= 1 ? [...QUESTION_TYPES] : QUESTION_TYPES.filter((t) => t !== 'position');
}

/** One question of the given type with its exact answer. */
export function askQuestion(scene: Scene, type: QuestionType, rng: () => number): Turn {
  switch (type) {
    case 'count': {
      const subject = pick(rng, COUNT_SUBJECTS);
      const n = scene.objects.filter((o) => subject === 'objects' || o.shape === subject || o.colour === subject).length;
      return { type, question: ['how', 'many', subject], answer: String(n) };
    }
    case 'colour':
    case 'shape': {
      // Mostly occupied cells, so "none" does not dominate the answers.
      const occupied = scene.objects.length > 0 && rng() < 0.7;
      let row: number;
      let col: number;
      if (occupied) {
        const o = pick(rng, scene.objects);
        row = o.row;
        col = o.col;
      } else {
        row = Math.floor(rng() * OBJECT_GRID);
        col = Math.floor(rng() * OBJECT_GRID);
      }
      const o = objectAt(scene, row, col);
      return { type, question: [type, 'at', cellWord(row, col)], answer: o ? o[type] : 'none' };
    }
    case 'position': {
      const objs = nameable(scene);
      if (!objs.length) throw new InputError(`${scene.id}: a position question needs an object with a unique colour and shape`);
      const o = pick(rng, objs);
      return { type, question: ['where', o.colour, o.shape], answer: cellWord(o.row, o.col) };
    }
  }
}

/**
 * `turns` questions about one scene, each type drawn uniformly from those the scene allows (and `only`, if given). A question is not
 * repeated within a dialogue (its earlier answer would be in context), as far as the scene allows.
 */
export function makeDialogue(scene: Scene, rng: () => number, turns: number, only?: readonly QuestionType[]): Turn[] {
  const allowed = availableTypes(scene);
  const restricted = only ? allowed.filter((t) => only.includes(t)) : allowed;
  // A scene that allows none of the requested types falls back to what it allows (position needs a nameable object).
  const types = restricted.length ? restricted : allowed;
  const seen = new Set<string>();
  const out: Turn[] = [];
  for (let t = 0; t < turns; t++) {
    let turn = askQuestion(scene, pick(rng, types), rng);
    for (let tries = 0; tries < 20 && seen.has(turn.question.join(' ')); tries++) turn = askQuestion(scene, pick(rng, types), rng);
    seen.add(turn.question.join(' '));
    out.push(turn);
  }
  return out;
}

/**
 * Token ids of a dialogue: per turn, the left-padded question then the answer. The answer of turn t is at offset
 * t·TURN_LEN + QUESTION_LEN and is predicted from the question's last word, one position before it.
 */
export function encodeDialogue(turns: readonly Turn[]): Int32Array {
  const ids = new Int32Array(turns.length * TURN_LEN);
  turns.forEach((turn, t) => {
    if (turn.question.length > QUESTION_LEN) throw new InputError(`question longer than ${QUESTION_LEN} tokens: ${turn.question.join(' ')}`);
    const pad = QUESTION_LEN - turn.question.length;
    const words = [...Array(pad).fill('<pad>'), ...turn.question, turn.answer];
    words.forEach((w, i) => {
      const id = TOKEN_ID[w];
      if (id === undefined) throw new InputError(`word '${w}' is not in the vocabulary`);
      ids[t * TURN_LEN + i] = id;
    });
  });
  return ids;
}
