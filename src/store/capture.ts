/**
 * Capture directories (docs/capture-format.md): a manifest.json plus safetensors shards holding, per layer and per
 * target feature set, a [samples, tokens, dim] tensor split along samples.
 *
 * - openCapture (capture-read.ts): validates the manifest (schema + cross-field rules) without reading any shard;
 *   shard problems surface when a layer is read, as InputErrors naming the shard file.
 * - validateCapture (capture-validate.ts): collects every problem (manifest, each shard's header/shape/dtype, stray
 *   files).
 * - CaptureWriter (capture-write.ts): appends batches; every file is written atomically and manifest.json is
 *   rewritten only after a batch's shards exist, so a crash leaves at worst unlisted (stray) files, which `resume`
 *   deletes.
 * - listRuns (runs.ts): finds captures under a runs/<run>/step-<N>/ tree.
 * capture-files.ts holds what they share (loading manifest.json, what a listed shard must hold). This file is the
 * public face: importers need not know the split.
 */
export type { Manifest, ManifestLayer, ManifestShard, ManifestTarget, TokenLayout, Variant } from './manifest.js';
export { ManifestSchema } from './manifest.js';
export {
  captureProvenance,
  layerProvenance,
  openCapture,
  type Capture,
  type CaptureLayerInfo,
  type CaptureProvenance,
  type CaptureTargetInfo,
  type LayerProvenance,
  type SampleRange,
  type ShardRows,
  type Tensor3,
} from './capture-read.js';
export { validateCapture, type ValidateOptions } from './capture-validate.js';
export { CaptureWriter, type AppendOptions, type BatchTensor, type CaptureBatch, type CaptureInit } from './capture-write.js';
export { listRuns, type RunEntry } from './runs.js';
