/**
 * Feature matrices for the metrics, from files: read into Node's heap (NaN/Inf-checked, token-flattened,
 * preprocessed) as always, or — when the engine reads files itself (`Engine.files`, the torch engine) — described as a
 * file-backed matrix (`Matrix.source`) whose rows the engine's worker maps from the .npy payload / safetensors tensor /
 * capture shards and prepares on its device, so that Node never holds the n×d values.
 */
import { createHash } from 'node:crypto';
import type { Engine } from './types.js';
import { assertFinite, fileRowCount, sourcedMatrix, type FileRows, type Matrix } from '../core/matrix.js';
import { preprocess, prhQuantile, type Preprocess, type PreprocessOptions } from '../core/preprocess.js';
import type { TokenMode } from '../core/tokens.js';
import type { ShardRows } from '../store/capture.js';
import { readFully, withFile } from '../store/io.js';
import { loadMatrix, locateMatrix, type LoadMatrixOptions } from '../store/load.js';

export interface PrepareOptions extends PreprocessOptions {
  preprocess: Preprocess;
}

function describe(rows: Omit<FileRows, 'kind' | 'preprocess' | 'q'>, options: PrepareOptions, label: string): Matrix {
  const q = options.preprocess === 'prh' ? prhQuantile(options) : (options.q ?? 0.95);
  const source: FileRows = { kind: 'file', ...rows, preprocess: options.preprocess, q };
  return sourcedMatrix(fileRowCount(source), rows.cols, source, label);
}

/** A 2-D .npy / .safetensors matrix (compare's A and B), preprocessed. */
export async function fileFeatures(path: string, load: LoadMatrixOptions, options: PrepareOptions, engine: Engine): Promise<Matrix> {
  if (engine.files) {
    const at = await locateMatrix(path, load);
    return describe({ segments: [at.segment], tokens: 1, cols: at.cols, mode: 'per-token', pick: null, float64: at.float64 }, options, path);
  }
  const m = await loadMatrix(path, load);
  assertFinite(m, path);
  return preprocess(m, options.preprocess, options);
}

/** A capture layer or target from its shards (headers only): token mode, row pick and preprocessing as tokensToMatrix + preprocess. */
export function shardFeatures(rows: ShardRows, mode: TokenMode, pick: Int32Array | null, options: PrepareOptions, label: string): Matrix {
  return describe({ segments: rows.segments, tokens: rows.tokens, cols: rows.dim, mode, pick, float64: false }, options, label);
}

const ITEM_BYTES = { float16: 2, bfloat16: 2, float32: 4, float64: 8 } as const;
const DIGEST_CHUNK = 8 << 20;

/**
 * SHA-256 of a layer's/target's stored values (dtypes and shape included), streamed through one 8 MiB buffer: tells
 * whether two captures hold the same target (TargetCache) without ever holding the values in Node.
 */
export async function shardDigest(rows: ShardRows): Promise<string> {
  const hash = createHash('sha256');
  hash.update(JSON.stringify([rows.samples, rows.tokens, rows.dim, rows.segments.map((g) => [g.dtype, g.samples])]));
  const buf = new Uint8Array(DIGEST_CHUNK);
  for (const g of rows.segments) {
    const bytes = g.samples * rows.tokens * rows.dim * ITEM_BYTES[g.dtype];
    await withFile(g.path, async (fh) => {
      for (let done = 0; done < bytes; ) {
        const len = Math.min(DIGEST_CHUNK, bytes - done);
        const got = await readFully(fh, buf.subarray(0, len), g.offset + done);
        hash.update(buf.subarray(0, got));
        if (got < len) break;
        done += len;
      }
    });
  }
  return hash.digest('hex');
}
