import type { Engine } from '../src/engine/index.js';
import { InputError } from '../src/errors.js';
import {
  computeMetric,
  describePreprocess,
  Features,
  METRICS,
  preprocess,
  type MetricName,
  type MetricResult,
  type Preprocess,
} from '../src/metrics/index.js';
import { layerProvenance, openCapture, type Capture, type LayerProvenance, type Tensor3 } from '../src/store/capture.js';
import { readTensor } from '../src/store/safetensors.js';
import { readNpy } from '../src/store/npy.js';
import { requireNonEmpty } from '../src/store/load.js';
import { rowGroups, type PermutationUnit } from '../src/stats/index.js';
import { rowsFor, subsampleRows, tokensToMatrix, type TokenMode } from '../src/tokens.js';
import { similarityStats, type SimilarityStats } from './stats.js';

/** A target feature set: one of the capture's own (`clip`) or a file given as NAME=PATH. */
export interface TargetSpec {
  name: string;
  path?: string;
  key?: string;
}

export interface LayerwiseOptions {
  engine: Engine;
  metrics: MetricName[];
  k: number;
  preprocess: Preprocess;
  q?: number;
  tokenMode: TokenMode;
  /** Targets to compare with; default: every target set in the capture. */
  targets?: TargetSpec[];
  /** Layers to include (names or hidden_states indices); default: all. */
  layers?: (string | number)[];
  /** Seeded subsample of rows (after token flattening) for large runs; the same rows on both sides. */
  maxRows?: number;
  seed?: number;
  /** Permutation null per score (0 = none); see analysis/stats.ts. */
  permutations?: number;
  /** Half-sampling draws for a confidence interval per score (0 = none); see analysis/stats.ts. */
  bootstrap?: number;
  /** Confidence level of the interval (default 0.95). */
  ci?: number;
  /** Permutation unit: `row` (default) or `image` (per-token: whole images shuffled, token positions kept). */
  permUnit?: PermutationUnit;
  onProgress?: (event: { stage: string; done: number; total: number }) => void;
  signal?: AbortSignal;
}

/** One long-form result row: the metric result plus every parameter that produced it (and its statistics, if asked). */
export interface LayerwiseRow extends MetricResult, SimilarityStats, LayerProvenance {
  target: string;
  token_mode: TokenMode;
  rows_sampled: number | null;
  seed: number | null;
}

/**
 * Layer sweep: one capture against one or more targets, every layer. A = the layer's image-token hidden states,
 * B = the target (CKNNA is asymmetric; this is the paper's orientation). Each target is loaded, flattened,
 * preprocessed and its kNN lists computed once; each layer costs one Gram product whatever the number of targets,
 * so L layers × T targets cost L + T Gram products.
 */
export async function runLayerwise(captureOrDir: Capture | string, options: LayerwiseOptions): Promise<LayerwiseRow[]> {
  const capture = typeof captureOrDir === 'string' ? await openCapture(captureOrDir) : captureOrDir;
  const m = capture.manifest;
  const prep = describePreprocess(options.preprocess, options.q === undefined ? {} : { q: options.q });
  const layers = selectLayers(capture, options.layers);
  const targetSpecs = options.targets?.length ? options.targets : capture.targets.map((t) => ({ name: t.name }));
  if (targetSpecs.length === 0) {
    throw new InputError(`${capture.dir}: the capture has no target feature sets; pass --target NAME=PATH`);
  }
  const tokens = m.token_layout.tokens;
  const layerShape = { samples: m.samples.count, tokens };
  const total = rowsFor(layerShape, options.tokenMode);
  const seed = options.seed ?? 0;
  const pick = subsampleRows(total, options.maxRows, seed);
  const progress = options.onProgress ?? (() => {});
  const needsKnn = options.metrics.some((x) => METRICS[x].needsKnn);
  const wantStats = (options.permutations ?? 0) > 0 || (options.bootstrap ?? 0) > 0;
  // Resampling is over images: each row's image (and token position) after flattening and subsampling.
  const groups = wantStats ? rowGroups(m.samples.count, tokens, options.tokenMode === 'per-token', pick) : undefined;

  const prepare = (t: Tensor3, label: string): Features => {
    const x = tokensToMatrix(t, options.tokenMode, pick ?? undefined);
    return new Features(preprocess(x, options.preprocess, options.q === undefined ? {} : { q: options.q }), options.engine, label);
  };

  const targets: { name: string; features: Features }[] = [];
  for (const [i, spec] of targetSpecs.entries()) {
    options.signal?.throwIfAborted();
    const t = await loadTarget(capture, spec);
    checkTokens(t, layerShape, options.tokenMode, spec.name, capture.dir);
    const features = prepare(t, `target ${spec.name}`);
    if (needsKnn) await features.knn(options.k);
    targets.push({ name: spec.name, features });
    progress({ stage: 'targets', done: i + 1, total: targetSpecs.length });
  }

  const rows: LayerwiseRow[] = [];
  for (const [li, layer] of layers.entries()) {
    options.signal?.throwIfAborted();
    const h = await capture.readLayer(layer.name);
    const a = prepare(h, `layer ${layer.name}`);
    for (const target of targets) {
      for (const metric of options.metrics) {
        const r = await computeMetric(metric, a, target.features, options.k, prep);
        const stats = wantStats
          ? await similarityStats(metric, a, target.features, options.k, r, {
              ...(options.permutations === undefined ? {} : { permutations: options.permutations }),
              ...(options.bootstrap === undefined ? {} : { bootstrap: options.bootstrap }),
              ...(options.ci === undefined ? {} : { ci: options.ci }),
              ...(options.permUnit === undefined ? {} : { permUnit: options.permUnit }),
              ...(options.signal === undefined ? {} : { signal: options.signal }),
              seed,
              groups: groups!,
            })
          : {};
        rows.push({
          ...r,
          ...stats,
          ...layerProvenance(capture, layer),
          target: target.name,
          token_mode: options.tokenMode,
          rows_sampled: pick ? pick.length : null,
          seed: pick ? seed : null,
        });
      }
    }
    progress({ stage: 'layers', done: li + 1, total: layers.length });
  }
  return rows;
}

function selectLayers(capture: Capture, wanted?: (string | number)[]) {
  if (!wanted?.length) return capture.layers;
  return wanted.map((w) => {
    const found = capture.layers.find((l) => l.name === String(w) || l.index === Number(w));
    if (!found) {
      throw new InputError(`${capture.dir}: no layer '${w}' (layers: ${capture.layers.map((l) => `${l.index}:${l.name}`).join(', ')})`);
    }
    return found;
  });
}

async function loadTarget(capture: Capture, spec: TargetSpec): Promise<Tensor3> {
  if (!spec.path) {
    if (!capture.targets.some((t) => t.name === spec.name)) {
      throw new InputError(
        `${capture.dir}: no target '${spec.name}' in the capture (has: ${capture.targets.map((t) => t.name).join(', ') || 'none'}); use --target ${spec.name}=PATH for a file`,
      );
    }
    return capture.readTarget(spec.name);
  }
  const arr = /\.npy$/i.test(spec.path) ? await readNpy(spec.path) : await readTensor(spec.path, spec.key);
  const shape = arr.shape;
  requireNonEmpty(spec.path, `target ${spec.name}`, shape);
  const data = arr.data instanceof Float32Array ? arr.data : Float32Array.from(arr.data);
  const bad = data.findIndex((v) => !Number.isFinite(v));
  if (bad >= 0) {
    const dim = shape[shape.length - 1]!;
    const tokens = shape.length === 3 ? shape[1]! : 1;
    const where = `sample ${Math.floor(bad / (tokens * dim))}${shape.length === 3 ? `, token ${Math.floor(bad / dim) % tokens}` : ''}, dim ${bad % dim}`;
    throw new InputError(`${spec.path}: target ${spec.name}: non-finite value ${data[bad]} at ${where}; NaN/Inf values are not allowed`);
  }
  if (shape.length === 2) return { samples: shape[0]!, tokens: 1, dim: shape[1]!, data };
  if (shape.length === 3) return { samples: shape[0]!, tokens: shape[1]!, dim: shape[2]!, data };
  throw new InputError(`${spec.path}: target must be [samples, dim] or [samples, tokens, dim], got [${shape.join(', ')}]`);
}

function checkTokens(t: Tensor3, layer: { samples: number; tokens: number }, mode: TokenMode, name: string, dir: string): void {
  if (t.samples !== layer.samples) {
    throw new InputError(`target ${name}: ${t.samples} samples, but capture ${dir} has ${layer.samples}`);
  }
  if (mode === 'per-token' && t.tokens !== layer.tokens) {
    throw new InputError(
      `target ${name}: ${t.tokens} tokens per sample, capture ${dir} has ${layer.tokens}; per-token mode pairs tokens one to one (use --tokens mean)`,
    );
  }
}
