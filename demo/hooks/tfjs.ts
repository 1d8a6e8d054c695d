/**
 * Capture hooks for tfjs models (the TypeScript side of "capture hooks"; the PyTorch shim is python/).
 *
 * Names are the canonical hook names of the capture format: `embed` = the input of block 0 (hidden_states[0]),
 * `blocks.{i}.out` = the output of block i (hidden_states[i+1]), plus `projector.out` (the connector output, before
 * the text is appended) which a capture cannot hold as a layer (it has no hidden_states index) but
 * `captureForward` returns. Hidden states are taken at selected token positions — the image tokens — and written
 * through `CaptureWriter` into runs/<run>/step-<N>/.
 *
 * `TrainingCapture` captures a fixed probe set at step 0 and every N steps: the forward pass and the download of the
 * values run on the training thread (they must: tfjs is single-threaded), the file writes are queued and never
 * awaited by the training loop; `flush()` awaits them at the end and rethrows the first write error.
 */
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { InputError } from '../../src/core/errors.js';
import { CaptureWriter, type CaptureInit, type Tensor3, type Variant } from '../../src/store/capture.js';
import type { ForwardInputs, MiniLlava } from '../model/mini-llava.js';

/** A layer of the capture format: canonical name and hidden_states index. */
export interface HookLayer {
  name: string;
  index: number;
}

/** `embed`, `blocks.0.out`, …, `blocks.{L−1}.out` with their hidden_states indices 0..L. */
export function blockOutputLayers(numLayers: number): HookLayer[] {
  return [{ name: 'embed', index: 0 }, ...Array.from({ length: numLayers }, (_, i) => ({ name: `blocks.${i}.out`, index: i + 1 }))];
}

/** Every name `captureForward` accepts for a model: `projector.out` and the block outputs. */
export function capturableNames(model: MiniLlava): string[] {
  return ['projector.out', ...blockOutputLayers(model.config.layers).map((l) => l.name)];
}

/** Sequence positions of the image tokens (they come first, as in LLaVA). */
export function imagePositions(model: MiniLlava): number[] {
  return Array.from({ length: model.config.imageTokens }, (_, i) => i);
}

/** Positions as contiguous runs, so each run is one slice. */
function runsOf(positions: readonly number[]): [number, number][] {
  const out: [number, number][] = [];
  for (const p of positions) {
    const last = out[out.length - 1];
    if (last && last[0] + last[1] === p) last[1]++;
    else out.push([p, 1]);
  }
  return out;
}

export interface CaptureForwardOptions {
  /** Hook names (default: every block output incl. `embed`). */
  names?: readonly string[];
  /** Sequence positions to keep (default: the image tokens). `projector.out` is indexed within the image tokens. */
  positions?: readonly number[];
}

/**
 * Runs one forward pass and returns, per requested name, the hidden states at the selected positions as a
 * [batch, positions, dim] tensor on the host. Hooks exist only for the duration of this call.
 */
export function captureForward(model: MiniLlava, inputs: ForwardInputs, options: CaptureForwardOptions = {}): Record<string, Tensor3> {
  const names = options.names ?? blockOutputLayers(model.config.layers).map((l) => l.name);
  const known = new Set(capturableNames(model));
  for (const n of names) if (!known.has(n)) throw new InputError(`unknown hook '${n}' (known: ${[...known].join(', ')})`);
  const positions = options.positions ?? imagePositions(model);
  if (positions.length === 0) throw new InputError('no token positions to capture');
  const wanted = new Set(names);
  const kept = new Map<string, tf.Tensor>();
  const segments = runsOf(positions);
  try {
    tf.tidy(() => {
      model.forward(inputs, {
        hook: (name, x) => {
          if (!wanted.has(name) || x.rank !== 3) return;
          const [B, T, W] = x.shape as [number, number, number];
          for (const p of positions) if (p < 0 || p >= T) throw new InputError(`position ${p} outside ${name}'s ${T} tokens`);
          const parts = segments.map(([start, len]) => tf.slice(x, [0, start, 0], [B, len, W]));
          kept.set(name, tf.keep(parts.length === 1 ? parts[0]! : tf.concat(parts, 1)));
        },
      });
    });
    const out: Record<string, Tensor3> = {};
    for (const n of names) {
      const t = kept.get(n);
      if (!t) throw new Error(`hook '${n}' was not reached in the forward pass`);
      const [samples, tokens, dim] = t.shape as [number, number, number];
      out[n] = { samples, tokens, dim, data: new Float32Array(t.dataSync() as Float32Array) };
    }
    return out;
  } finally {
    for (const t of kept.values()) t.dispose();
  }
}

/** A target feature set stored with every capture (e.g. the encoder's patch features), aligned with the probe set. */
export interface CaptureTarget {
  name: string;
  description: string;
  /** [samples, tokens, dim] in probe order. */
  features: Tensor3;
}

export interface TrainingCaptureOptions {
  /** Run folder: captures go to `<runDir>/step-<N>/`. */
  runDir: string;
  /** Capture every this many steps (and at step 0 and at the last step). */
  every: number;
  totalSteps: number;
  /** The probe forward inputs (fixed for the whole run). */
  probe: ForwardInputs;
  sampleIds: string[];
  labels?: Record<string, (number | string)[]>;
  targets: CaptureTarget[];
  variant: Variant;
  /** The manifest's model object (name, hidden_size, num_layers, aligned_layer, ...). */
  model: CaptureInit['model'];
  grid: [number, number];
  provenance: Record<string, unknown>;
  /** Samples per shard (default 32). */
  shardSize?: number;
  dtype?: 'F16' | 'BF16' | 'F32';
  /** Called when a capture's files are all written (its directory, its step). */
  onWritten?: (dir: string, step: number) => void;
}

/** Periodic capture of the probe set during training; see the module comment. */
export class TrainingCapture {
  private pending: Promise<void> = Promise.resolve();
  private error: unknown = null;
  private readonly done = new Set<number>();
  /** Capture directories in the order they were started. */
  readonly dirs: string[] = [];

  constructor(
    private readonly model: MiniLlava,
    private readonly options: TrainingCaptureOptions,
  ) {
    if (!Number.isInteger(options.every) || options.every < 1) throw new InputError(`capture interval must be a positive integer, got ${options.every}`);
    for (const t of options.targets) {
      if (t.features.samples !== options.sampleIds.length) {
        throw new InputError(`target '${t.name}': ${t.features.samples} samples, the probe set has ${options.sampleIds.length}`);
      }
    }
  }

  /** Whether `step` is a capture step: 0, every N-th, and the last. */
  isCaptureStep(step: number): boolean {
    return step === 0 || step % this.options.every === 0 || step === this.options.totalSteps;
  }

  /** For a training loop's onStep: captures when `step` is a capture step. */
  onStep(step: number): void {
    if (this.isCaptureStep(step)) this.capture(step);
  }

  /** Captures now (synchronous forward + download), queues the writes, returns without waiting for them. */
  capture(step: number): void {
    if (this.done.has(step)) return;
    this.done.add(step);
    const o = this.options;
    const layers = blockOutputLayers(this.model.config.layers);
    const hidden = captureForward(this.model, o.probe, { names: layers.map((l) => l.name) });
    const dir = join(o.runDir, `step-${step}`);
    this.dirs.push(dir);
    const N = this.model.config.imageTokens;
    const init: CaptureInit = {
      model: o.model,
      variant: o.variant,
      checkpoint: { step },
      token_layout: { kind: 'image', tokens: N, source_tokens: N, grid: o.grid, pooling: 'none' },
      layers: layers.map((l) => ({ name: l.name, index: l.index, dim: this.model.config.width })),
      targets: o.targets.map((t) => ({ name: t.name, dim: t.features.dim, tokens: t.features.tokens, description: t.description })),
      provenance: { ...o.provenance, created: new Date().toISOString(), step },
    };
    const write = async (): Promise<void> => {
      const writer = await CaptureWriter.create(dir, init);
      const n = o.sampleIds.length;
      const size = o.shardSize ?? 32;
      for (let s = 0; s < n; s += size) {
        const e = Math.min(n, s + size);
        const rows = (t: Tensor3): Tensor3 => ({ samples: e - s, tokens: t.tokens, dim: t.dim, data: t.data.subarray(s * t.tokens * t.dim, e * t.tokens * t.dim) });
        await writer.appendBatch(
          {
            ids: o.sampleIds.slice(s, e),
            ...(o.labels ? { labels: Object.fromEntries(Object.entries(o.labels).map(([k, v]) => [k, v.slice(s, e)])) } : {}),
            layers: Object.fromEntries(layers.map((l) => [l.name, rows(hidden[l.name]!)])),
            targets: Object.fromEntries(o.targets.map((t) => [t.name, rows(t.features)])),
          },
          { dtype: o.dtype ?? 'F16' },
        );
      }
      o.onWritten?.(dir, step);
    };
    // Chained so captures land in step order; an error is kept and rethrown by flush().
    this.pending = this.pending.then(write).catch((err) => {
      this.error ??= err;
    });
  }

  /** Awaits every queued write; throws the first write error, if any. */
  async flush(): Promise<string[]> {
    await this.pending;
    if (this.error) throw this.error;
    return [...this.dirs];
  }
}

/**
 * Text→image attention of chosen query positions, every layer and head: the softmax weights from the `blocks.{i}.attn`
 * hook points, restricted to the image-token keys. Layout [sample][layer][head][query][imageToken] (raw weights,
 * not renormalised), the `AttentionMaps` layout of analysis/attention.ts.
 */
export function captureAttention(model: MiniLlava, inputs: ForwardInputs, queries: readonly number[]): Float32Array {
  const { layers: L, heads: H, imageTokens: N } = model.config;
  const B = inputs.batch;
  const Q = queries.length;
  const out = new Float32Array(B * L * H * Q * N);
  tf.tidy(() => {
    model.forward(inputs, {
      attention: true,
      hook: (name, x) => {
        const m = /^blocks\.(\d+)\.attn$/.exec(name);
        if (!m) return;
        const layer = Number(m[1]);
        const T = x.shape[2]!;
        for (const q of queries) if (q < 0 || q >= T) throw new InputError(`query position ${q} outside the sequence of ${T}`);
        const data = x.dataSync() as Float32Array; // [B, H, T, T]
        for (let b = 0; b < B; b++) {
          for (let h = 0; h < H; h++) {
            queries.forEach((q, qi) => {
              const src = ((b * H + h) * T + q) * T;
              out.set(data.subarray(src, src + N), ((((b * L + layer) * H + h) * Q + qi) * N));
            });
          }
        }
      },
    });
  });
  return out;
}
