/** CSV of long-form rows: the same writer the dashboard's exports use. */
export { toCsv } from '../analysis/figures.js';

/** JSON that keeps NaN visible as null plus the reason field next to it (JSON has no NaN). */
export function toJson(value: unknown): string {
  return JSON.stringify(value, (_k, v) => (typeof v === 'number' && !Number.isFinite(v) ? null : v), 2) + '\n';
}

export function table(header: string[], body: (string | number)[][]): string {
  // A loop, not Math.max(...rows): spreading a million rows as arguments overflows the stack.
  const widths = header.map((h, c) => body.reduce((w, r) => Math.max(w, String(r[c]).length), h.length));
  const line = (r: (string | number)[]) => r.map((v, c) => (typeof v === 'number' ? String(v).padStart(widths[c]!) : String(v).padEnd(widths[c]!))).join('  ');
  return [line(header), widths.map((w) => '-'.repeat(w)).join('  '), ...body.map(line)].join('\n') + '\n';
}

export function fmt(v: number | null | undefined, digits = 4): string {
  if (v === null || v === undefined || Number.isNaN(v)) return 'NaN';
  return v.toFixed(digits);
}
