/**
 * Embedding views of captures:
 * - runUmap: one layer of several captures (variants, checkpoints) → seeded 2-D UMAP maps on common axes. Every map
 *   uses the same seed; maps after the first are Procrustes-aligned (rotation, reflection, uniform scale, shift) to
 *   the first on the samples they share, so "the same region" means the same thing in every panel.
 * - runPcaGrid: one image's tokens, per layer and capture → first 3 PCs → RGB on the token grid (VIRAL Fig. 5).
 *   Signs follow the previous layer within a capture and the first capture at the same layer across captures, so
 *   colour changes between panels reflect the representation, not an arbitrary eigenvector sign.
 */
import type { Engine } from '../src/engine/index.js';
import { applyProcrustes, pcaRgbGrid, procrustes, rgbHex, umapEmbed, PCA_RGB_NORMALISATION } from '../src/embeddings/index.js';
import { InputError } from '../src/core/errors.js';
import { MIN_DIST } from './params.js';
import { describePreprocess, preprocess, type Preprocess } from '../src/metrics/index.js';
import { layerProvenance, openCapture, type Capture, type CaptureLayerInfo, type LayerProvenance, type Tensor3 } from '../src/store/capture.js';
import { subsampleRows, tokensToMatrix, type TokenMode } from '../src/core/tokens.js';

type Progress = (event: { stage: string; done: number; total: number }) => void;

export interface UmapRunOptions {
  engine: Engine;
  /** Layer name or hidden_states index; matched by index across captures when given as a number. */
  layer: string | number;
  tokenMode: TokenMode;
  preprocess: Preprocess;
  q?: number;
  seed: number;
  nNeighbors?: number;
  minDist?: number;
  nEpochs?: number;
  /** Seeded subsample of the rows (after token flattening), the same rows in every capture. */
  maxRows?: number;
  onProgress?: Progress;
  signal?: AbortSignal;
}

export interface UmapPoint {
  capture: string;
  variant: string;
  step: number | null;
  sample_id: string;
  /** Token position within the sample (per-token mode), else null. */
  token: number | null;
  x: number;
  y: number;
  labels: Record<string, number | string>;
}

export interface UmapPanel extends LayerProvenance {
  n: number;
  /** Fit to the first panel; null for the first panel itself. */
  alignment: { to: string; scale: number; rmsd: number; relativeRmsd: number } | null;
}

export interface UmapRunResult {
  points: UmapPoint[];
  panels: UmapPanel[];
  /** Captures that could not be read (corrupt shard, missing layer): the others are still mapped. */
  errors: { capture: string; error: string }[];
  meta: {
    method: 'umap';
    metric: 'cosine';
    seed: number;
    n_neighbors: number;
    min_dist: number;
    n_epochs: number;
    token_mode: TokenMode;
    preprocess: string;
    rows: number;
    rows_sampled: number | null;
    shared_samples: number;
    alignment: string;
    labels: string[];
    engine: string;
  };
}

async function open(c: Capture | string): Promise<Capture> {
  return typeof c === 'string' ? openCapture(c) : c;
}

function findLayer(capture: Capture, layer: string | number): CaptureLayerInfo {
  const found =
    typeof layer === 'number' || /^\d+$/.test(String(layer))
      ? capture.layers.find((l) => l.index === Number(layer))
      : capture.layers.find((l) => l.name === layer);
  if (!found) throw new InputError(`${capture.dir}: no layer '${layer}' (layers: ${capture.layers.map((l) => `${l.index}:${l.name}`).join(', ')})`);
  return found;
}

/** The sample ids every capture has, in the first capture's order, with each capture's index for each. */
function sharedSamples(captures: Capture[]): { ids: string[]; index: number[][] } {
  const maps = captures.map((c) => new Map(c.sampleIds.map((id, i) => [id, i])));
  const ids = captures[0]!.sampleIds.filter((id) => maps.every((m) => m.has(id)));
  return { ids, index: maps.map((m) => ids.map((id) => m.get(id)!)) };
}

function selectSamples(t: Tensor3, idx: readonly number[]): Tensor3 {
  const per = t.tokens * t.dim;
  const data = new Float32Array(idx.length * per);
  idx.forEach((s, i) => data.set(t.data.subarray(s * per, (s + 1) * per), i * per));
  return { samples: idx.length, tokens: t.tokens, dim: t.dim, data };
}

export async function runUmap(inputs: (Capture | string)[], options: UmapRunOptions): Promise<UmapRunResult> {
  if (inputs.length === 0) throw new InputError('umap: no captures given');
  const captures = await Promise.all(inputs.map(open));
  const plan = planUmap(captures, options);
  const progress = options.onProgress ?? (() => {});
  const maps: Float64Array[] = [];
  const panels: UmapPanel[] = [];
  const errors: { capture: string; error: string }[] = [];
  const mapped: number[] = [];
  let fitted = { nNeighbors: 0, nEpochs: 0 };
  for (const [ci, capture] of captures.entries()) {
    options.signal?.throwIfAborted();
    const layer = plan.layers[ci]!;
    let x;
    try {
      const t = selectSamples(await capture.readLayer(layer.name), plan.shared.index[ci]!);
      x = preprocess(tokensToMatrix(t, options.tokenMode, plan.pick ?? undefined), options.preprocess, plan.q);
    } catch (err) {
      // One unreadable capture must not hide the others' maps.
      if (!(err instanceof InputError)) throw err;
      errors.push({ capture: capture.dir, error: err.message });
      continue;
    }
    const emb = await umapEmbed(x, options.engine, {
      seed: options.seed,
      ...umapSettings(options),
      onProgress: (e, n) => progress({ stage: `umap ${ci + 1}/${captures.length}`, done: e, total: n }),
    });
    fitted = emb;
    let coords = emb.coords;
    let alignment: UmapPanel['alignment'] = null;
    if (maps.length > 0) {
      const fit = procrustes(coords, maps[0]!, x.rows, 2);
      coords = applyProcrustes(fit, coords, x.rows, 2);
      alignment = { to: captures[mapped[0]!]!.dir, scale: fit.scale, rmsd: fit.rmsd, relativeRmsd: fit.relativeRmsd };
    }
    maps.push(coords);
    mapped.push(ci);
    panels.push({ ...layerProvenance(capture, layer), n: x.rows, alignment });
    progress({ stage: 'captures', done: ci + 1, total: captures.length });
  }
  if (maps.length === 0) throw new InputError(errors.map((e) => e.error).join('; '));
  return {
    points: umapPoints(captures, { mapped, panels, maps }, plan, options.tokenMode),
    panels,
    errors,
    meta: {
      method: 'umap',
      metric: 'cosine',
      seed: options.seed,
      n_neighbors: fitted.nNeighbors,
      min_dist: options.minDist ?? MIN_DIST.default!,
      n_epochs: fitted.nEpochs,
      token_mode: options.tokenMode,
      preprocess: describePreprocess(options.preprocess, plan.q),
      rows: plan.rowIds.length,
      rows_sampled: plan.pick ? plan.pick.length : null,
      shared_samples: plan.shared.ids.length,
      alignment: maps.length > 1 ? `Procrustes (rotation, reflection, scale, shift) onto ${captures[mapped[0]!]!.dir}` : 'none (one map)',
      labels: Object.keys(captures[0]!.labels),
      engine: options.engine.name,
    },
  };
}

/** UMAP's own settings among the options: only those given, so its defaults apply otherwise. */
function umapSettings(o: UmapRunOptions): { nNeighbors?: number; minDist?: number; nEpochs?: number; signal?: AbortSignal } {
  const out: { nNeighbors?: number; minDist?: number; nEpochs?: number; signal?: AbortSignal } = {};
  if (o.nNeighbors !== undefined) out.nNeighbors = o.nNeighbors;
  if (o.minDist !== undefined) out.minDist = o.minDist;
  if (o.nEpochs !== undefined) out.nEpochs = o.nEpochs;
  if (o.signal) out.signal = o.signal;
  return out;
}

/** The rows every map draws, from the manifests alone (shared samples, tokens, seeded subsample), checked first. */
function planUmap(captures: Capture[], options: UmapRunOptions) {
  const layers = captures.map((c) => findLayer(c, options.layer));
  const shared = sharedSamples(captures);
  if (shared.ids.length < 4) {
    throw new InputError(`umap: the captures share ${shared.ids.length} sample ids; at least 4 are needed to draw and align maps`);
  }
  const tokens = captures[0]!.tokens;
  if (options.tokenMode === 'per-token' && captures.some((c) => c.tokens !== tokens)) {
    throw new InputError(`umap: per-token maps need the same tokens per sample in every capture (${captures.map((c) => c.tokens).join(' vs ')})`);
  }
  const total = options.tokenMode === 'per-token' ? shared.ids.length * tokens : shared.ids.length;
  const pick = subsampleRows(total, options.maxRows, options.seed);
  const rowIds = pick ? Array.from(pick) : Array.from({ length: total }, (_, i) => i);
  const q = options.q === undefined ? {} : { q: options.q };
  return { layers, shared, tokens, pick, rowIds, q };
}

/** One point per row and map, with its sample id, token position and the capture's labels. */
function umapPoints(captures: Capture[], drawn: { mapped: number[]; panels: UmapPanel[]; maps: Float64Array[] }, plan: ReturnType<typeof planUmap>, tokenMode: TokenMode): UmapPoint[] {
  const perToken = tokenMode === 'per-token';
  const points: UmapPoint[] = [];
  for (const [mi, ci] of drawn.mapped.entries()) {
    const capture = captures[ci]!;
    const panel = drawn.panels[mi]!;
    plan.rowIds.forEach((r, i) => {
      const s = perToken ? Math.floor(r / plan.tokens) : r;
      const own = plan.shared.index[ci]![s]!;
      const labels: Record<string, number | string> = {};
      for (const name of Object.keys(capture.labels)) labels[name] = capture.labels[name]![own]!;
      points.push({
        capture: capture.dir,
        variant: panel.variant,
        step: panel.step,
        sample_id: plan.shared.ids[s]!,
        token: perToken ? r % plan.tokens : null,
        x: drawn.maps[mi]![i * 2]!,
        y: drawn.maps[mi]![i * 2 + 1]!,
        labels,
      });
    });
  }
  return points;
}

// ---------------------------------------------------------------------------------------------------------------
// PCA-RGB token grids

export interface PcaGridOptions {
  /** Sample id, or its position in the first capture. */
  sample: string | number;
  /** Layers (names or hidden_states indices); default: every layer of the first capture. */
  layers?: (string | number)[];
  engine?: Engine;
  onProgress?: Progress;
  signal?: AbortSignal;
}

export interface PcaGridPanel extends LayerProvenance {
  rows: number;
  cols: number;
  /** '#rrggbb' per token, row-major over the grid. */
  colors: string[];
  /** Share of the image's token variance on PC1..PC3. */
  explained: number[];
}

export interface PcaGridResult {
  panels: PcaGridPanel[];
  /** Captures that could not be read; the others' panels are still made. */
  errors: { capture: string; error: string }[];
  meta: { sample: string; components: 3; normalisation: string; fit: string; signs: string; grid: [number, number] };
}

/** The sample every capture draws, checked from the manifests: each has it, and its tokens fill its grid. */
function gridSample(captures: Capture[], sample: string | number): string {
  const first = captures[0]!;
  const sampleId = typeof sample === 'number' ? first.sampleIds[sample] : sample;
  if (sampleId === undefined) throw new InputError(`pca-grid: sample index ${sample} is out of range (${first.sampleIds.length} samples)`);
  for (const c of captures) {
    const tl = c.manifest.token_layout;
    if (!tl.grid) throw new InputError(`${c.dir}: token_layout.grid is null; PCA-RGB grids need the tokens' row/column layout`);
    if (tl.pooling !== 'none' || tl.grid[0] * tl.grid[1] !== tl.tokens) {
      throw new InputError(`${c.dir}: stored tokens (${tl.tokens}, pooling ${tl.pooling}) do not fill the ${tl.grid[0]}×${tl.grid[1]} grid`);
    }
    if (!c.sampleIds.includes(sampleId)) throw new InputError(`${c.dir}: no sample '${sampleId}'`);
  }
  return sampleId;
}

export async function runPcaGrid(inputs: (Capture | string)[], options: PcaGridOptions): Promise<PcaGridResult> {
  if (inputs.length === 0) throw new InputError('pca-grid: no captures given');
  const captures = await Promise.all(inputs.map(open));
  const first = captures[0]!;
  const sampleId = gridSample(captures, options.sample);
  const grid = first.manifest.token_layout.grid as [number, number];
  const wanted = options.layers?.length ? options.layers.map((l) => findLayer(first, l)) : first.layers;
  const progress = options.onProgress ?? (() => {});
  const panels: PcaGridPanel[] = [];
  // Scores of the first capture per layer index (cross-capture sign reference).
  const reference = new Map<number, Float64Array>();
  const errors: { capture: string; error: string }[] = [];
  const totalSteps = captures.length * wanted.length;
  for (const [ci, capture] of captures.entries()) {
    const sampleIndex = capture.sampleIds.indexOf(sampleId);
    let previous: Float64Array | undefined;
    const own: PcaGridPanel[] = [];
    const scores = new Map<number, Float64Array>();
    // The first capture that reads completely is the sign reference of the others.
    const isReference = reference.size === 0;
    try {
      for (const [li, want] of wanted.entries()) {
        options.signal?.throwIfAborted();
        const layer = findLayer(capture, want.index);
        // Only that image's bytes are read (a layer of 64 images × 576 tokens × 4096 dims is 600 MB; one image 9 MB).
        const t = await capture.readLayer(layer.name, { start: sampleIndex, count: 1 });
        const align = isReference ? previous : reference.get(layer.index);
        const g = await pcaRgbGrid({ rows: t.tokens, cols: t.dim, data: t.data }, grid, {
          ...(options.engine ? { engine: options.engine } : {}),
          ...(align ? { alignTo: align } : {}),
        });
        scores.set(layer.index, g.scores);
        previous = g.scores;
        own.push({
          ...layerProvenance(capture, layer),
          rows: g.rows,
          cols: g.cols,
          colors: Array.from({ length: g.rows * g.cols }, (_, i) => rgbHex(g.rgb, i)),
          explained: g.explained,
        });
        progress({ stage: 'pca-grid', done: ci * wanted.length + li + 1, total: totalSteps });
      }
    } catch (err) {
      if (!(err instanceof InputError)) throw err;
      errors.push({ capture: capture.dir, error: err.message });
      continue;
    }
    if (isReference) for (const [k, v] of scores) reference.set(k, v);
    panels.push(...own);
  }
  if (panels.length === 0) throw new InputError(errors.map((e) => e.error).join('; '));
  return {
    panels,
    errors,
    meta: {
      sample: sampleId,
      components: 3,
      normalisation: PCA_RGB_NORMALISATION,
      fit: "per panel, on this image's tokens only",
      signs: 'each layer follows the previous layer; other captures follow the first capture at the same layer',
      grid,
    },
  };
}
