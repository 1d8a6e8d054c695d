/**
 * Spatial entropy of text→image attention per layer × head (VIRAL paper Fig. 4/12: lower = more focused).
 *
 * Definitions (the paper states neither; both are parameters recorded with every result):
 * - Shannon spatial entropy: the attention a query row puts on the N image tokens, renormalised to sum to 1 over
 *   those tokens, H = −Σ_t p_t·log2 p_t in bits (0 for a one-hot map, log2 N for a uniform one); optionally divided
 *   by log2 N (`normalised_entropy`, in [0, 1]).
 * - Connected-component entropy (Peruzzo et al. 2022, "Spatial Entropy as an Inductive Bias for ViTs"): the
 *   renormalised map on the grid is binarised (default: p_t > mean = 1/N), the foreground is split into connected
 *   components (default 8-connectivity), and H_cc = −Σ_c P_c·log2 P_c with P_c = the component's attention mass over
 *   the mass of all components. It measures fragmentation, not spread: one blob of any size gives 0, and a map with
 *   nothing above the threshold (exactly uniform) has no component, so H_cc is NaN with a reason.
 * Several query rows (generated tokens, samples) are aggregated by `aggregate`: `mean-entropy` (default: entropy of
 * every query's map, then the mean) or `entropy-of-mean` (per sample, the entropy of the query-averaged map, then
 * the mean over samples).
 */
import { join } from 'node:path';
import { z } from 'zod';
import { InputError } from '../src/core/errors.js';
import { readJsonFile, writeJsonFile, type TextReader } from '../src/store/json.js';
import { PAPER_CONFIG, type Figure, type VlSpec } from './figures.js';

const SCHEMA = 'https://vega.github.io/schema/vega-lite/v6.json';
export const ATTENTION_FILE = 'attention.json';

/** Text→image attention weights. Layout: [sample][layer][head][query][token], tokens row-major over `grid`. */
export interface AttentionMaps {
  samples: number;
  layers: number;
  heads: number;
  queries: number;
  grid: [number, number];
  data: Float32Array | Float64Array;
  /** Names / hidden_states indices of the layers (default blocks.{i} / i + 1). */
  layerNames?: string[];
  layerIndices?: number[];
  sampleIds?: string[];
}

export type Threshold = { kind: 'mean' } | { kind: 'quantile'; q: number } | { kind: 'absolute'; value: number };

export interface EntropyOptions {
  aggregate?: 'mean-entropy' | 'entropy-of-mean';
  /** Component entropy recipe; null = skip. Default { threshold: mean, connectivity: 8 }. */
  components?: { threshold: Threshold; connectivity: 4 | 8 } | null;
  /** Keep the query-averaged, renormalised maps of this sample for overlays (default 0; null = none). */
  overlaySample?: number | null;
  model?: string;
  variant?: string;
  step?: number | null;
}

export interface EntropyCell {
  layer: string;
  layer_index: number;
  head: number;
  entropy: number;
  normalised_entropy: number;
  component_entropy: number | null;
  /** Mean number of connected components per map. */
  components: number | null;
  /** Mean raw attention mass on image tokens before renormalisation (how much the query looks at the image). */
  image_mass: number;
}

export interface AttentionEntropyResult {
  model: string;
  variant: string;
  step: number | null;
  grid: [number, number];
  tokens: number;
  samples: number;
  queries: number;
  aggregate: 'mean-entropy' | 'entropy-of-mean';
  definition: string;
  component_definition: string | null;
  cells: EntropyCell[];
  /** [layer][head][token] renormalised maps of one sample (query mean), for overlays. */
  overlay: { sample: string; maps: number[][][] } | null;
  /** Maps with nothing above the threshold (component entropy undefined), if any. */
  undefined_components?: number;
}

/** Shannon entropy in bits of a non-negative map renormalised to sum 1. NaN when the map has no mass. */
export function shannonEntropy(map: ArrayLike<number>): number {
  let total = 0;
  for (let i = 0; i < map.length; i++) {
    const v = map[i]!;
    if (!(v >= 0)) throw new InputError(`attention map value ${i} is ${v}; weights must be ≥ 0`);
    total += v;
  }
  if (!(total > 0)) return NaN;
  let h = 0;
  for (let i = 0; i < map.length; i++) {
    const p = map[i]! / total;
    if (p > 0) h -= p * Math.log2(p);
  }
  return h;
}

/** Connected-component entropy of a map on a rows×cols grid (see the module comment). */
export function componentEntropy(
  map: ArrayLike<number>,
  grid: [number, number],
  threshold: Threshold = { kind: 'mean' },
  connectivity: 4 | 8 = 8,
): { entropy: number; components: number } {
  const [rows, cols] = grid;
  const N = rows * cols;
  if (map.length !== N) throw new InputError(`attention map has ${map.length} values, grid ${rows}×${cols} has ${N}`);
  let total = 0;
  for (let i = 0; i < N; i++) total += map[i]!;
  if (!(total > 0)) return { entropy: NaN, components: 0 };
  const p = Float64Array.from({ length: N }, (_, i) => map[i]! / total);
  let t: number;
  if (threshold.kind === 'mean') t = 1 / N;
  else if (threshold.kind === 'absolute') t = threshold.value;
  else {
    const sorted = Float64Array.from(p).sort();
    const h = (N - 1) * threshold.q;
    const lo = Math.floor(h);
    t = sorted[lo]! + (h - lo) * (sorted[Math.min(N - 1, lo + 1)]! - sorted[lo]!);
  }
  const label = new Int32Array(N).fill(-1);
  const masses: number[] = [];
  const stack: number[] = [];
  for (let s = 0; s < N; s++) {
    if (label[s] !== -1 || !(p[s]! > t)) continue;
    const c = masses.length;
    masses.push(0);
    label[s] = c;
    stack.push(s);
    while (stack.length) {
      const u = stack.pop()!;
      masses[c]! += p[u]!;
      const r = Math.floor(u / cols);
      const q = u % cols;
      for (let dr = -1; dr <= 1; dr++) {
        for (let dc = -1; dc <= 1; dc++) {
          if ((dr === 0 && dc === 0) || (connectivity === 4 && dr !== 0 && dc !== 0)) continue;
          const rr = r + dr;
          const cc = q + dc;
          if (rr < 0 || rr >= rows || cc < 0 || cc >= cols) continue;
          const v = rr * cols + cc;
          if (label[v] === -1 && p[v]! > t) {
            label[v] = c;
            stack.push(v);
          }
        }
      }
    }
  }
  if (masses.length === 0) return { entropy: NaN, components: 0 };
  const sum = masses.reduce((a, b) => a + b, 0);
  let h = 0;
  for (const m of masses) {
    const pc = m / sum;
    if (pc > 0) h -= pc * Math.log2(pc);
  }
  return { entropy: h, components: masses.length };
}

export function describeThreshold(t: Threshold): string {
  return t.kind === 'mean' ? 'p > 1/N (the map mean)' : t.kind === 'quantile' ? `p > its ${t.q} quantile` : `p > ${t.value}`;
}

type Components = { threshold: Threshold; connectivity: 4 | 8 } | null;

/**
 * One layer × head: the entropies over all samples and query rows (per map, or of each sample's mean map), the
 * image mass, and the overlay sample's mean map. `undefinedComponents` counts maps with no component above the
 * threshold (left out of the component mean).
 */
function headCell(maps: AttentionMaps, l: number, h: number, aggregate: NonNullable<EntropyOptions['aggregate']>, comp: Components, overlaySample: number | null) {
  const { samples: S, layers: L, heads: H, queries: Q, grid } = maps;
  const N = grid[0] * grid[1];
  const at = (s: number, q: number) => (((s * L + l) * H + h) * Q + q) * N;
  let eSum = 0;
  let ccSum = 0;
  let ccCount = 0;
  let compSum = 0;
  let mapCount = 0;
  let mass = 0;
  let undefinedComponents = 0;
  let overlayMap: number[] | null = null;
  const addMap = (m: Float64Array | Float32Array) => {
    eSum += shannonEntropy(m);
    mapCount++;
    if (comp) {
      const r = componentEntropy(m, grid, comp.threshold, comp.connectivity);
      compSum += r.components;
      if (Number.isNaN(r.entropy)) undefinedComponents++;
      else {
        ccSum += r.entropy;
        ccCount++;
      }
    }
  };
  for (let s = 0; s < S; s++) {
    const meanMap = new Float64Array(N);
    for (let q = 0; q < Q; q++) {
      const m = maps.data.subarray(at(s, q), at(s, q) + N);
      let tot = 0;
      for (let t = 0; t < N; t++) tot += m[t]!;
      mass += tot;
      for (let t = 0; t < N; t++) meanMap[t]! += tot > 0 ? m[t]! / tot / Q : 0;
      if (aggregate === 'mean-entropy') addMap(m);
    }
    if (aggregate === 'entropy-of-mean') addMap(meanMap);
    if (s === overlaySample) overlayMap = Array.from(meanMap, (v) => Number(v.toPrecision(5)));
  }
  const entropy = eSum / mapCount;
  const cell: EntropyCell = {
    layer: maps.layerNames?.[l] ?? `blocks.${l}`,
    layer_index: maps.layerIndices?.[l] ?? l + 1,
    head: h,
    entropy,
    normalised_entropy: N > 1 ? entropy / Math.log2(N) : 0,
    component_entropy: comp ? (ccCount ? ccSum / ccCount : NaN) : null,
    components: comp ? compSum / mapCount : null,
    image_mass: mass / (S * Q),
  };
  return { cell, overlayMap, undefinedComponents };
}

/** Entropy per layer × head over all samples and query rows. */
export function attentionEntropy(maps: AttentionMaps, options: EntropyOptions = {}): AttentionEntropyResult {
  const { samples: S, layers: L, heads: H, queries: Q, grid } = maps;
  const N = grid[0] * grid[1];
  if (maps.data.length !== S * L * H * Q * N) {
    throw new InputError(`attention data has ${maps.data.length} values, expected samples×layers×heads×queries×tokens = ${S}×${L}×${H}×${Q}×${N}`);
  }
  const aggregate = options.aggregate ?? 'mean-entropy';
  const comp = options.components === undefined ? { threshold: { kind: 'mean' } as Threshold, connectivity: 8 as const } : options.components;
  const overlaySample = options.overlaySample === undefined ? 0 : options.overlaySample;
  const hasOverlay = overlaySample !== null && overlaySample < S;
  const cells: EntropyCell[] = [];
  const overlay: number[][][] = [];
  let undefinedComponents = 0;
  for (let l = 0; l < L; l++) {
    const overlayLayer: number[][] = [];
    for (let h = 0; h < H; h++) {
      const r = headCell(maps, l, h, aggregate, comp, overlaySample);
      cells.push(r.cell);
      if (r.overlayMap) overlayLayer.push(r.overlayMap);
      undefinedComponents += r.undefinedComponents;
    }
    if (hasOverlay) overlay.push(overlayLayer);
  }
  return {
    model: options.model ?? 'unknown',
    variant: options.variant ?? 'unknown',
    step: options.step ?? null,
    grid,
    tokens: N,
    samples: S,
    queries: Q,
    aggregate,
    definition: `Shannon entropy (bits) of each query's attention over the ${N} image tokens renormalised to sum 1; normalised = / log2(${N}); aggregate ${aggregate} over ${S} sample(s) × ${Q} query row(s)`,
    component_definition: comp
      ? `connected-component entropy (Peruzzo et al. 2022): binarise at ${describeThreshold(comp.threshold)}, ${comp.connectivity}-connected components, P_c = component mass / mass of all components, bits`
      : null,
    cells,
    overlay: hasOverlay ? { sample: maps.sampleIds?.[overlaySample] ?? `sample ${overlaySample}`, maps: overlay } : null,
    ...(undefinedComponents ? { undefined_components: undefinedComponents } : {}),
  };
}

/**
 * Text→image attention of chosen query rows, from one layer's full attention tensor of one sample, laid out
 * [head][query][key] (T×T per head, e.g. a decoder block's softmax weights). Keeps the keys of the image tokens
 * [imageStart, imageStart + imageTokens) and the query rows `queries`; output [head][query][imageToken], raw
 * weights (not renormalised: the entropy step renormalises and records the mass that was on the image).
 */
export function textToImageAttention(attn: Float32Array | Float64Array, heads: number, T: number, imageStart: number, imageTokens: number, queries: readonly number[]): Float32Array {
  if (attn.length !== heads * T * T) throw new InputError(`attention tensor has ${attn.length} values, expected heads×T×T = ${heads}×${T}×${T}`);
  if (imageStart < 0 || imageStart + imageTokens > T) throw new InputError(`image tokens [${imageStart}, ${imageStart + imageTokens}) outside the sequence of ${T}`);
  const out = new Float32Array(heads * queries.length * imageTokens);
  for (let h = 0; h < heads; h++) {
    queries.forEach((q, qi) => {
      if (q < 0 || q >= T) throw new InputError(`query row ${q} outside the sequence of ${T}`);
      const src = (h * T + q) * T + imageStart;
      out.set(attn.subarray(src, src + imageTokens), (h * queries.length + qi) * imageTokens);
    });
  }
  return out;
}

export interface AttentionFile {
  format: 'viral-lens.attention';
  version: 1;
  results: AttentionEntropyResult[];
}

/** A finite number, or null (how writeAttention stores NaN: JSON has none), read back as NaN. */
const maybeNaN = z
  .number()
  .nullable()
  .transform((v) => v ?? NaN);
const count = z.number().int().min(0);

const CellSchema = z.object({
  layer: z.string(),
  layer_index: z.number().int(),
  head: count,
  entropy: maybeNaN,
  normalised_entropy: maybeNaN,
  // null = not computed (no component recipe) or undefined for every map; both draw as a gap.
  component_entropy: z.number().nullable(),
  components: z.number().nullable(),
  image_mass: maybeNaN,
});

const ResultSchema = z
  .object({
    model: z.string(),
    variant: z.string().min(1),
    step: z.number().int().nullable(),
    grid: z.tuple([z.number().int().min(1), z.number().int().min(1)]),
    tokens: z.number().int().min(1),
    samples: count,
    queries: count,
    aggregate: z.enum(['mean-entropy', 'entropy-of-mean']),
    definition: z.string(),
    component_definition: z.string().nullable(),
    cells: z.array(CellSchema),
    overlay: z.object({ sample: z.string(), maps: z.array(z.array(z.array(maybeNaN))) }).nullable(),
    undefined_components: count.optional(),
  })
  .superRefine((r, ctx) => {
    if (r.grid[0] * r.grid[1] !== r.tokens) ctx.addIssue({ code: 'custom', path: ['tokens'], message: `${r.tokens} tokens do not fill the ${r.grid.join('×')} grid` });
    r.overlay?.maps.forEach((layer, l) =>
      layer.forEach((map, h) => {
        if (map.length !== r.tokens) ctx.addIssue({ code: 'custom', path: ['overlay', 'maps', l, h], message: `${map.length} values, expected one per token (${r.tokens})` });
      }),
    );
  });

const AttentionFileSchema = z.object({
  format: z.literal('viral-lens.attention'),
  version: z.literal(1),
  results: z.array(ResultSchema),
});

/**
 * Reads DIR/attention.json (an empty file structure when there is none). Anything that is not a well-formed
 * viral-lens.attention v1 file is an InputError naming the file and the first bad field, so a reader (dashboard,
 * CLI, notebook) reports it instead of failing on a missing property later.
 */
export async function readAttention(dir: string, read?: TextReader): Promise<AttentionFile> {
  return readJsonFile(join(dir, ATTENTION_FILE), AttentionFileSchema, () => ({ format: 'viral-lens.attention' as const, version: 1 as const, results: [] }), read);
}

/** Merges a result into DIR/attention.json, replacing the one for the same variant and step. */
export async function writeAttention(dir: string, result: AttentionEntropyResult): Promise<string> {
  const file = await readAttention(dir);
  file.results = [...file.results.filter((r) => !(r.variant === result.variant && r.step === result.step && r.model === result.model)), result];
  const path = join(dir, ATTENTION_FILE);
  await writeJsonFile(path, file);
  return path;
}

/** Words of `text` in lines of at most `width` characters (a long subtitle would otherwise set a small figure's width). */
function wrapLines(text: string, width: number): string[] {
  const lines: string[] = [];
  let line = '';
  for (const word of text.split(/\s+/).filter(Boolean)) {
    if (line && line.length + 1 + word.length > width) {
      lines.push(line);
      line = word;
    } else line = line ? `${line} ${word}` : word;
  }
  if (line) lines.push(line);
  return lines;
}

/** Layer × head heatmap of entropy (one panel per result: variant/step), viridis, lower = more focused. */
export function entropyHeatmapFigure(
  results: readonly AttentionEntropyResult[],
  field: 'entropy' | 'normalised_entropy' | 'component_entropy' = 'entropy',
): Figure {
  const data = results.flatMap((r) =>
    r.cells.map((c) => ({ series: r.step === null ? r.variant : `${r.variant} @ ${r.step}`, variant: r.variant, step: r.step, ...c })),
  );
  const first = results[0];
  const heads = Math.max(1, ...data.map((c) => c.head + 1));
  const cell = Math.max(8, Math.min(28, Math.floor(400 / heads)));
  // Panels of a few heads are narrower than their header ("residual @ 300"): widen the gap to fit it.
  const longest = Math.max(0, ...data.map((d) => d.series.length));
  const spacing = Math.max(28, Math.ceil(longest * 6.5 - heads * cell) + 16);
  const title = field === 'entropy' ? 'spatial entropy (bits)' : field === 'normalised_entropy' ? 'spatial entropy / log2 N' : 'component entropy (bits)';
  const provenance = {
    definition: field === 'component_entropy' ? first?.component_definition : first?.definition,
    grid: first?.grid,
    samples: first?.samples,
    queries: first?.queries,
    aggregate: first?.aggregate,
  };
  const spec: VlSpec = {
    $schema: SCHEMA,
    title: { text: 'Text→image attention entropy per layer × head', subtitle: wrapLines(String(provenance.definition ?? ''), 80) },
    config: { ...PAPER_CONFIG, view: { stroke: null } },
    usermeta: { viralLens: { figure: 'attention-entropy', provenance } },
    data: { values: data },
    facet: { column: { field: 'series', type: 'nominal', title: null, header: { labelFontSize: 10, labelLimit: 0 } } },
    spacing,
    spec: {
      // Cells large enough for a few heads, small enough that 32 heads × 32 layers stay about 400 px wide.
      width: { step: cell },
      height: { step: cell },
      mark: { type: 'rect' },
      encoding: {
        x: { field: 'head', type: 'ordinal', title: 'head' },
        y: { field: 'layer_index', type: 'ordinal', title: 'layer ℓ', sort: 'descending' },
        color: { field, type: 'quantitative', title, scale: { scheme: 'viridis' } },
        tooltip: [{ field: 'series' }, { field: 'layer' }, { field: 'head' }, { field, format: '.3f' }, { field: 'image_mass', format: '.3f', title: 'mass on image' }],
      },
    },
  };
  return { name: `attention-${field}`, spec, data, provenance, notes: [] };
}

/**
 * One attention map over the token grid (heatmap), optionally drawn over the image (`imageUrl`, e.g. a data: URL
 * of the scene) so the reader sees where the head looks: then a cell's opacity also grows with its weight, so the
 * image shows through where the head does not look (a dark colour scale at full cover would hide it).
 */
export function attentionOverlaySpec(
  map: readonly number[],
  grid: [number, number],
  o: { title?: string | { text: string; subtitle?: string | string[] }; imageUrl?: string; cell?: number } = {},
): VlSpec {
  const [rows, cols] = grid;
  const cell = o.cell ?? Math.max(6, Math.floor(168 / Math.max(rows, cols)));
  const values = map.map((v, t) => ({ row: Math.floor(t / cols), col: t % cols, token: t, attention: v }));
  // Colour from 0 (no attention) to the map's peak, so a flat map reads as flat rather than as one colour of an
  // arbitrary one-value scale.
  const peak = Math.max(0, ...map.filter((v) => Number.isFinite(v)));
  const domain = [0, peak > 0 ? peak : 1];
  const heat = {
    data: { values },
    mark: { type: 'rect' },
    encoding: {
      x: { field: 'col', type: 'ordinal', axis: null },
      y: { field: 'row', type: 'ordinal', axis: null },
      color: { field: 'attention', type: 'quantitative', scale: { scheme: 'inferno', domain }, title: 'attention' },
      ...(o.imageUrl ? { opacity: { field: 'attention', type: 'quantitative', scale: { domain, range: [0.1, 0.85] } } } : {}),
      tooltip: [{ field: 'row' }, { field: 'col' }, { field: 'attention', format: '.4f' }],
    },
  };
  const layer: VlSpec[] = o.imageUrl
    ? [
        {
          data: { values: [{ url: o.imageUrl }] },
          mark: { type: 'image', width: cell * cols, height: cell * rows, align: 'left', baseline: 'top' },
          encoding: { url: { field: 'url', type: 'nominal' }, x: { value: 0 }, y: { value: 0 } },
        },
        heat,
      ]
    : [heat];
  return {
    $schema: SCHEMA,
    ...(o.title ? { title: o.title } : {}),
    config: { ...PAPER_CONFIG, view: { stroke: null } },
    width: cell * cols,
    height: cell * rows,
    layer,
  };
}

/** Distinct layer indices of a result in the order of its cells (= the order of `overlay.maps`). */
function layerOrder(r: AttentionEntropyResult): number[] {
  return [...new Set(r.cells.map((c) => c.layer_index))];
}

/**
 * The overlay map of one layer × head of a result as a figure (spec with provenance + the numbers per token). By
 * default the most focused cell: the lowest mean spatial entropy over the result's samples.
 */
export function attentionOverlayFigure(r: AttentionEntropyResult, o: { layer_index?: number; head?: number; imageUrl?: string | null } = {}): Figure {
  if (!r.overlay) throw new InputError(`attention result of ${r.variant}${r.step === null ? '' : ` @ ${r.step}`} keeps no overlay maps (computed with overlaySample: null)`);
  const layers = layerOrder(r);
  if (o.layer_index !== undefined && !layers.includes(o.layer_index)) throw new InputError(`layer: no layer ${o.layer_index} in the attention result of ${r.variant} (layers: ${layers.join(', ')})`);
  const heads = [...new Set(r.cells.map((c) => c.head))].sort((a, b) => a - b);
  if (o.head !== undefined && !heads.includes(o.head)) throw new InputError(`head: no head ${o.head} in the attention result of ${r.variant} (heads: ${heads.join(', ')})`);
  // Whatever is not fixed by the request: the most focused (lowest finite entropy) cell among the candidates.
  const candidates = r.cells.filter((c) => (o.layer_index === undefined || c.layer_index === o.layer_index) && (o.head === undefined || c.head === o.head));
  const cell = [...candidates].sort((a, b) => (Number.isFinite(a.entropy) ? a.entropy : Infinity) - (Number.isFinite(b.entropy) ? b.entropy : Infinity))[0];
  const layerHeads = cell ? r.cells.filter((c) => c.layer_index === cell.layer_index).map((c) => c.head) : [];
  const map = cell ? r.overlay.maps[layers.indexOf(cell.layer_index)]?.[layerHeads.indexOf(cell.head)] : undefined;
  if (!cell || !map) throw new InputError(`the attention result of ${r.variant} has no overlay map for layer ${o.layer_index ?? '(any)'}, head ${o.head ?? '(any)'}`);
  const head = cell.head;
  const cols = r.grid[1];
  // Short subtitle lines: the map is ~170 px wide, and one long line would set the figure's width.
  const sub = [
    `${r.overlay.sample}: query-averaged text→image attention,`,
    `renormalised over the ${r.tokens} image tokens;`,
    `H = ${cell.entropy.toFixed(2)} bits for this head (mean over ${r.samples} sample(s))`,
  ];
  const spec = attentionOverlaySpec(map, r.grid, {
    title: { text: `${r.variant}${r.step === null ? '' : ` @ step ${r.step}`}: layer ℓ = ${cell.layer_index} (${cell.layer}), head ${head}`, subtitle: sub },
    ...(o.imageUrl ? { imageUrl: o.imageUrl } : {}),
  });
  const provenance = {
    model: r.model,
    variant: r.variant,
    step: r.step,
    sample: r.overlay.sample,
    layer: cell.layer,
    layer_index: cell.layer_index,
    head,
    entropy: cell.entropy,
    grid: r.grid,
    map: `query-averaged attention of the ${r.queries} query row(s) of ${r.overlay.sample}, renormalised over the image tokens`,
    definition: r.definition,
    image: o.imageUrl ? 'the scene redrawn from its id (demo/model/scenes.ts)' : null,
  };
  spec.usermeta = { viralLens: { figure: 'attention-overlay', provenance } };
  const data = map.map((v, t) => ({ variant: r.variant, sample: r.overlay!.sample, layer_index: cell.layer_index, head, token: t, row: Math.floor(t / cols), col: t % cols, attention: v }));
  return { name: 'attention-overlay', spec, data, provenance, notes: [] };
}
