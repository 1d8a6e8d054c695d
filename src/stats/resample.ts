import { InputError } from '../core/errors.js';
import { randInt, randomPermutation, shuffleInPlace, type Rng } from '../core/rng.js';

/**
 * Which image (sample) and which token position each row of a flattened matrix came from. Resampling happens over
 * images, never over single tokens: tokens of one image are not independent observations.
 */
export interface RowGroups {
  /** Row → image (sample) index. */
  group: Int32Array;
  /** Row → token position within its image (0 for pooled rows). */
  position: Int32Array;
}

/** Groups for rows of `tokensToMatrix` output: `rows` are the (optional) subsampled flattened indices. */
export function rowGroups(samples: number, tokens: number, perToken: boolean, rows?: Int32Array | null): RowGroups {
  const n = rows ? rows.length : perToken ? samples * tokens : samples;
  const group = new Int32Array(n);
  const position = new Int32Array(n);
  for (let r = 0; r < n; r++) {
    const src = rows ? rows[r]! : r;
    group[r] = perToken ? Math.floor(src / tokens) : src;
    position[r] = perToken ? src % tokens : 0;
  }
  return { group, position };
}

/** Rows of each distinct group, groups in ascending id order. */
export function rowsByGroup(group: Int32Array): { ids: Int32Array; rows: Int32Array[] } {
  const map = new Map<number, number[]>();
  for (let r = 0; r < group.length; r++) {
    const g = group[r]!;
    let list = map.get(g);
    if (!list) map.set(g, (list = []));
    list.push(r);
  }
  const ids = Int32Array.from([...map.keys()].sort((a, b) => a - b));
  return { ids, rows: Array.from(ids, (g) => Int32Array.from(map.get(g)!)) };
}

/** All rows of `m` groups drawn without replacement, sorted ascending. */
export function subsampleGroups(byGroup: { rows: Int32Array[] }, m: number, rng: Rng): Int32Array {
  const G = byGroup.rows.length;
  if (!(Number.isInteger(m) && m >= 1 && m <= G)) throw new InputError(`subsample of ${m} images out of ${G}`);
  const order = randomPermutation(G, rng);
  let total = 0;
  for (let t = 0; t < m; t++) total += byGroup.rows[order[t]!]!.length;
  const out = new Int32Array(total);
  let o = 0;
  for (let t = 0; t < m; t++) {
    out.set(byGroup.rows[order[t]!]!, o);
    o += byGroup.rows[order[t]!]!.length;
  }
  return out.sort();
}

/** m group indices drawn with replacement (the classic bootstrap over images, for statistics that tolerate ties). */
export function bootstrapGroups(G: number, rng: Rng): Int32Array {
  const out = new Int32Array(G);
  for (let i = 0; i < G; i++) out[i] = randInt(rng, G);
  return out;
}

export type PermutationUnit = 'row' | 'image';

/**
 * A permutation of rows that breaks the sample correspondence:
 * - `row`: every row is shuffled freely (rows of pooled features are images, so this is the image permutation);
 * - `image`: whole images are shuffled and each token keeps its position (row (g, p) ↦ row (π(g), p)), so the null
 *   keeps any purely positional structure shared by both sides and tests the image-content correspondence only.
 *   Needs the same set of positions in every image (no per-token row subsample).
 */
export class RowPermuter {
  private readonly lookup?: Map<number, number>;
  private readonly ids?: Int32Array;
  private readonly positions: number;

  constructor(
    readonly n: number,
    readonly unit: PermutationUnit,
    readonly groups?: RowGroups,
  ) {
    this.positions = 0;
    if (unit === 'image') {
      if (!groups) throw new InputError('image-level permutation needs the rows’ image ids');
      const byGroup = rowsByGroup(groups.group);
      this.ids = byGroup.ids;
      const sig = (rows: Int32Array) => Array.from(rows, (r) => groups.position[r]).join(',');
      const first = byGroup.rows[0] ? sig(byGroup.rows[0]) : '';
      if (byGroup.rows.some((rows) => sig(rows) !== first)) {
        throw new InputError(
          'image-level permutation needs the same token positions in every image; drop the per-token row subsample (--max-rows) or use --perm-unit row',
        );
      }
      this.positions = byGroup.rows[0]?.length ?? 0;
      this.lookup = new Map();
      for (let r = 0; r < n; r++) this.lookup.set(groups.group[r]! * 1e6 + groups.position[r]!, r);
    }
  }

  /** perm[i] = the row of B that row i of A is paired with under the null. */
  next(rng: Rng): Int32Array {
    if (this.unit === 'row') return randomPermutation(this.n, rng);
    const ids = this.ids!;
    const shuffled = shuffleInPlace(Int32Array.from(ids), rng);
    const to = new Map<number, number>();
    ids.forEach((g, i) => to.set(g, shuffled[i]!));
    const perm = new Int32Array(this.n);
    const { group, position } = this.groups!;
    for (let r = 0; r < this.n; r++) perm[r] = this.lookup!.get(to.get(group[r]!)! * 1e6 + position[r]!)!;
    return perm;
  }

  describe(): string {
    return this.unit === 'row' ? 'rows shuffled' : `whole images shuffled, token positions kept (${this.positions} per image)`;
  }
}

/** p-value of a one-sided permutation test with the +1 correction (Phipson & Smyth 2010): never exactly 0. */
export function permutationPValue(observed: number, nulls: ArrayLike<number>): number {
  if (!Number.isFinite(observed)) return NaN;
  let atLeast = 0;
  let count = 0;
  for (let i = 0; i < nulls.length; i++) {
    const v = nulls[i]!;
    if (!Number.isFinite(v)) continue;
    count++;
    if (v >= observed) atLeast++;
  }
  return (atLeast + 1) / (count + 1);
}
