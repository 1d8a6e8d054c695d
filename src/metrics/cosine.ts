import type { Engine } from '../engine/types.js';
import type { Matrix } from '../core/matrix.js';
import { rowDots } from '../engine/rows.js';

/** Mean over paired rows of cos(a_i, b_i), the view of VIRAL's alignment loss. Needs dA = dB. Rows of norm 0 count 0. */
export async function pairedCosine(engine: Engine, a: Matrix, b: Matrix): Promise<number> {
  const [ab, aa, bb] = await Promise.all([rowDots(engine, a, b), rowDots(engine, a, a), rowDots(engine, b, b)]);
  let total = 0;
  for (let i = 0; i < a.rows; i++) total += aa[i]! > 0 && bb[i]! > 0 ? ab[i]! / Math.sqrt(aa[i]! * bb[i]!) : 0;
  return total / a.rows;
}
