import type { Matrix } from '../matrix.js';

/** Mean over paired rows of cos(a_i, b_i), the view of VIRAL's alignment loss. Needs dA = dB. Rows of norm 0 count 0. */
export function pairedCosine(a: Matrix, b: Matrix): number {
  const d = a.cols;
  let total = 0;
  for (let i = 0; i < a.rows; i++) {
    let ab = 0;
    let aa = 0;
    let bb = 0;
    for (let c = 0; c < d; c++) {
      const x = a.data[i * d + c]!;
      const y = b.data[i * d + c]!;
      ab += x * y;
      aa += x * x;
      bb += y * y;
    }
    total += aa > 0 && bb > 0 ? ab / Math.sqrt(aa * bb) : 0;
  }
  return total / a.rows;
}
