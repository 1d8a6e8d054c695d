/**
 * Frozen, real image encoders whose weights ship inside npm dependencies (nothing is downloaded at run time):
 *
 * - the VISION ENCODER (stand-in for CLIP ViT-L/14 in LLaVA): MobileNetV2 from `nsfwjs` (ImageNet backbone
 *   fine-tuned as an image classifier; weights stored as base64 inside the package's JS bundles). It reads each cell
 *   of the scene's 3×3 object grid as its own 64 px crop; patch tokens are the output of block 12 (`block_12_add`,
 *   stride 16, 96-d) average-pooled 2×2, so every cell gives 2×2 tokens and the image a 6×6×96 grid.
 *   Why per-cell crops: on the whole image a CNN's tokens carry their own absolute position (zero padding, receptive
 *   fields that reach the border): a logistic probe reads an empty patch's slot from its features at 99.7 % (36
 *   slots, seed 0). A model can then answer "where" from the token content and the patch-shuffle test (which moves
 *   content between slots) cannot show whether it uses the layout: seed 0 lost 9–15 points on spatial questions.
 *   With crops only the slot says where a token sits, as in a ViT's patch embedding before position is added, and
 *   the same model loses 40–56 points. Why block 12: it keeps colour (held-out colour questions 94 % vs 71 % from
 *   `block_15_add` at the same 600 steps, bench:learning seed 0).
 * - the TEACHER (stand-in for DINOv2 in VIRAL): the MobileNetV3 backbone of CenterNet, a COCO object detector
 *   shipped as `models/centernet.json` + `.bin` in `@vladmandic/human`. Patch tokens are the 6×6×480 output of the
 *   backbone's last layer (`tower_0/extern1`, stride 32) on the whole 192 px image, so they align one-to-one with the encoder's
 *   tokens (VIRAL resamples DINOv2's positions to the encoder's grid for the same reason). A detector's features
 *   are trained to localise objects, which is what makes it the "vision-centric" teacher here.
 *
 * Both are stand-ins and every output says so. Features are rounded to float16 as soon as they are computed, so a
 * run that reads them from the on-disk cache (float16 safetensors) is bit-identical to one that computed them.
 */
import { createHash } from 'node:crypto';
import { mkdir, readFile, stat } from 'node:fs/promises';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { InputError } from '../../src/core/errors.js';
import { floatToHalf, halfToFloat } from '../../src/store/dtype.js';
import { readTensor, writeSafetensors } from '../../src/store/safetensors.js';
import { installedVersion } from './backend.js';
import { IMAGE_SIZE, OBJECT_GRID, renderScene, type Scene } from './scenes.js';

const require = createRequire(import.meta.url);

/** Rows × cols of patch tokens (both encoders: 192 px, 32 px per token). */
export const PATCH_GRID: [number, number] = [6, 6];
export const PATCH_TOKENS = PATCH_GRID[0] * PATCH_GRID[1];
/** Bump when rendering or feature extraction changes, so stale caches are not reused. */
const FEATURE_VERSION = 2;

export interface EncoderSpec {
  /** Role in the demo: the encoder (CLIP stand-in) or the teacher (DINOv2 stand-in). */
  role: 'encoder' | 'teacher';
  model: string;
  package: string;
  version: string;
  /** Graph node / layer the patch tokens are read from. */
  node: string;
  dim: number;
  grid: [number, number];
  /** One line for manifests and printed tables. */
  description: string;
}

export interface FrozenEncoder {
  spec: EncoderSpec;
  /** [n, IMAGE_SIZE, IMAGE_SIZE, 3] RGB bytes → [n, tokens, dim] features (float16-rounded), row-major. */
  extract(images: readonly Uint8Array[]): Float32Array;
  dispose(): void;
}

function nsfwjsModelsDir(): string {
  // nsfwjs's "exports" map hides dist/models; resolve its entry point and walk to the sibling folder.
  return join(dirname(require.resolve('nsfwjs')), '..', 'models');
}

function humanModelsDir(): string {
  return join(dirname(require.resolve('@vladmandic/human')), '..', 'models');
}

function toArrayBuffer(buf: Buffer): ArrayBuffer {
  return buf.buffer.slice(buf.byteOffset, buf.byteOffset + buf.byteLength) as ArrayBuffer;
}

/** Rounds every value through float16 (see the module comment). */
export function roundToHalf(x: Float32Array): Float32Array {
  for (let i = 0; i < x.length; i++) x[i] = halfToFloat(floatToHalf(x[i]!));
  return x;
}

function imagesToTensor(images: readonly Uint8Array[], scale: number): tf.Tensor4D {
  const S = IMAGE_SIZE;
  const data = new Float32Array(images.length * S * S * 3);
  images.forEach((img, i) => {
    if (img.length !== S * S * 3) throw new InputError(`image ${i}: expected ${S}×${S}×3 bytes, got ${img.length}`);
    for (let j = 0; j < img.length; j++) data[i * img.length + j] = img[j]! * scale;
  });
  return tf.tensor4d(data, [images.length, S, S, 3]);
}

/** The MobileNetV2 node the CLIP stand-in's patch tokens are read from. */
export const VISION_NODE = 'block_12_add';
/** The encoder reads the image as crops × crops tiles, one per object-grid cell (see the module comment). */
export const VISION_CROPS = OBJECT_GRID;

export interface VisionEncoderOptions {
  /** MobileNetV2 layer to read (default VISION_NODE); a finer map is average-pooled to the patch grid. */
  node?: string;
  /** Tiles per side, each encoded on its own (default VISION_CROPS; 1 = the whole image at once). */
  crops?: number;
}

/** MobileNetV2 (nsfwjs) as the CLIP stand-in. Input scaling as nsfwjs does it: pixels / 255. */
export async function loadVisionEncoder(options: VisionEncoderOptions = {}): Promise<FrozenEncoder> {
  const dir = join(nsfwjsModelsDir(), 'mobilenet_v2');
  const node = options.node ?? VISION_NODE;
  const crops = options.crops ?? VISION_CROPS;
  const tile = IMAGE_SIZE / crops;
  if (!Number.isInteger(crops) || crops < 1 || !Number.isInteger(tile) || PATCH_GRID[0] % crops !== 0) {
    throw new InputError(`--crops: ${crops} tiles per side do not divide a ${IMAGE_SIZE} px image into ${PATCH_GRID.join('×')} patch tokens`);
  }
  // The bundles are UMD modules whose export is the model JSON / the base64 weight string.
  const modelJson = require(join(dir, 'model.min.js')) as { modelTopology: KerasTopology; weightsManifest: { weights: tf.io.WeightsManifestEntry[] }[] };
  const weights = require(join(dir, 'group1-shard1of1.min.js')) as string;
  // The Keras graph declares a 224×224 input and ends in a classifier head sized for it. The backbone is fully
  // convolutional (and MobileNetV2 was trained at several resolutions), so the graph is cut after `node` and its
  // input declared at the tile size; the head's weights are then unused (strict: false).
  const topology = structuredClone(modelJson.modelTopology);
  const graph = topology.model_config.config;
  const cut = graph.layers.findIndex((l) => l.name === node);
  if (cut < 0) throw new InputError(`--node: MobileNetV2 has no layer '${node}'`);
  const input = graph.layers.find((l) => l.class_name === 'InputLayer');
  if (!input?.config.batch_input_shape) throw new InputError(`${join(dir, 'model.min.js')}: no InputLayer with a batch_input_shape (unexpected nsfwjs version)`);
  input.config.batch_input_shape = [null, tile, tile, 3];
  graph.layers = graph.layers.slice(0, cut + 1);
  graph.output_layers = [[node, 0, 0]];
  const model = await tf.loadLayersModel(
    tf.io.fromMemory({
      modelTopology: topology,
      weightSpecs: modelJson.weightsManifest.flatMap((g) => g.weights),
      weightData: toArrayBuffer(Buffer.from(weights, 'base64')),
    }),
    { strict: false },
  );
  const [, gh, gw, dim] = model.outputs[0]!.shape as number[];
  const perTile = PATCH_GRID[0] / crops;
  const pool = gh! / perTile;
  if (!Number.isInteger(pool) || gw! / perTile !== pool) throw new InputError(`${node}: a ${gh}×${gw} map per ${tile} px tile does not pool to ${perTile}×${perTile}`);
  const version = installedVersion('nsfwjs');
  const how = crops > 1 ? `each of the ${crops}×${crops} grid cells encoded on its own (${tile} px tiles)` : `the whole ${IMAGE_SIZE} px image`;
  const spec: EncoderSpec = {
    role: 'encoder',
    model: 'MobileNetV2 (nsfwjs image classifier)',
    package: 'nsfwjs',
    version,
    node: crops > 1 ? `${node} (${crops}×${crops} tiles)` : node,
    dim: dim!,
    grid: PATCH_GRID,
    description: `CLIP stand-in: MobileNetV2 from nsfwjs ${version}, ${node}${pool > 1 ? ` (${pool}×${pool} average-pooled)` : ''} on ${how}, ${PATCH_GRID.join('×')}×${dim} patch tokens`,
  };
  return {
    spec,
    extract(images) {
      const out = tf.tidy(() => {
        const n = images.length;
        const x = imagesToTensor(images, 1 / 255);
        // [n, S, S, 3] → [n·crops², tile, tile, 3], row-major over the tiles.
        const tiles = crops > 1 ? tf.reshape(tf.transpose(tf.reshape(x, [n, crops, tile, crops, tile, 3]), [0, 1, 3, 2, 4, 5]), [n * crops * crops, tile, tile, 3]) : x;
        let y = model.predict(tiles) as tf.Tensor4D;
        if (pool > 1) y = tf.avgPool(y, pool, pool, 'valid');
        // Tiles back into one [n, rows, cols, dim] map.
        return crops > 1 ? tf.reshape(tf.transpose(tf.reshape(y, [n, crops, crops, perTile, perTile, dim!]), [0, 1, 3, 2, 4, 5]), [n, PATCH_GRID[0], PATCH_GRID[1], dim!]) : y;
      });
      const data = out.dataSync() as Float32Array;
      out.dispose();
      return roundToHalf(new Float32Array(data));
    },
    dispose() {
      model.dispose();
    },
  };
}

/** The part of a Keras model.json that the encoder loader edits. */
interface KerasTopology {
  model_config: { config: { layers: { name: string; class_name: string; config: { batch_input_shape?: (number | null)[] } }[]; output_layers: unknown } };
}

/**
 * CenterNet's MobileNetV3 backbone (@vladmandic/human) as the DINOv2 stand-in. Input as human feeds it: pixels in
 * 0–255. The graph's input is declared 1×512×512×3; its backbone is fully convolutional, so the declared shape is
 * relaxed to any batch and size before loading, and only the backbone node is executed.
 */
export async function loadTeacher(): Promise<FrozenEncoder> {
  const dir = humanModelsDir();
  const json = JSON.parse(await readFile(join(dir, 'centernet.json'), 'utf8')) as {
    modelTopology: { node: { name: string; attr?: Record<string, any> }[] };
    weightsManifest: { paths: string[]; weights: tf.io.WeightsManifestEntry[] }[];
    format?: string;
  };
  const input = json.modelTopology.node.find((n) => n.name === 'tower_0/images');
  if (!input?.attr?.shape) throw new InputError(`${join(dir, 'centernet.json')}: input node 'tower_0/images' not found (unexpected model version)`);
  input.attr.shape.shape.dim = [{ size: '-1' }, { size: '-1' }, { size: '-1' }, { size: '3' }];
  const bins = await Promise.all(json.weightsManifest.flatMap((g) => g.paths).map((p) => readFile(join(dir, p))));
  const handler: tf.io.IOHandler = {
    load: async () => ({
      modelTopology: json.modelTopology,
      weightSpecs: json.weightsManifest.flatMap((g) => g.weights),
      weightData: toArrayBuffer(Buffer.concat(bins)),
      format: json.format ?? 'graph-model',
    }),
  };
  const model = await tf.loadGraphModel(handler);
  const node = 'tower_0/extern1/hard_swish/mul_1';
  const version = installedVersion('@vladmandic/human');
  const probe = tf.tidy(() => model.execute(tf.zeros([1, IMAGE_SIZE, IMAGE_SIZE, 3]), node) as tf.Tensor);
  const [, gh, gw, dim] = probe.shape as number[];
  probe.dispose();
  if (gh !== PATCH_GRID[0] || gw !== PATCH_GRID[1]) throw new Error(`teacher grid ${gh}×${gw} does not match the encoder grid ${PATCH_GRID.join('×')}`);
  const spec: EncoderSpec = {
    role: 'teacher',
    model: 'CenterNet MobileNetV3 backbone (COCO detector, @vladmandic/human)',
    package: '@vladmandic/human',
    version,
    node,
    dim: dim!,
    grid: PATCH_GRID,
    description: `DINOv2 stand-in: CenterNet (MobileNetV3, COCO) from @vladmandic/human ${version}, ${node} at ${IMAGE_SIZE}px, ${PATCH_GRID.join('×')}×${dim} patch tokens`,
  };
  return {
    spec,
    extract(images) {
      const out = tf.tidy(() => model.execute(imagesToTensor(images, 1), node) as tf.Tensor);
      const data = out.dataSync() as Float32Array;
      out.dispose();
      return roundToHalf(new Float32Array(data));
    },
    dispose() {
      model.dispose();
    },
  };
}

/** Patch features of a set of scenes from both frozen models, [n, tokens, dim] each. */
export interface SceneFeatures {
  count: number;
  tokens: number;
  grid: [number, number];
  encoder: { spec: EncoderSpec; data: Float32Array };
  teacher: { spec: EncoderSpec; data: Float32Array };
}

export interface ExtractOptions {
  batchSize?: number;
  onProgress?: (done: number, total: number) => void;
  /** Folder for the float16 safetensors cache (created if needed); omitted: no cache. */
  cacheDir?: string;
  /** Part of the cache key: scenes are identified by (seed, index). */
  sceneSeed: number;
}

function cacheKey(seed: number, count: number, specs: EncoderSpec[]): string {
  const h = createHash('sha256');
  h.update(JSON.stringify({ v: FEATURE_VERSION, seed, count, specs: specs.map((s) => [s.package, s.version, s.node, s.dim]) }));
  return h.digest('hex').slice(0, 16);
}

async function exists(p: string): Promise<boolean> {
  return stat(p).then(
    () => true,
    () => false,
  );
}

/**
 * The cached features of `count` scenes of `sceneSeed` for these two encoder specs (the cache key hashes them), or
 * null when the cache has none of the right shape. Needs no model: `viral-lens attention|shuffle` read a demo run's
 * features this way with the specs its demo.json records.
 */
export async function readFeatureCache(cacheDir: string, sceneSeed: number, count: number, encoder: EncoderSpec, teacher: EncoderSpec): Promise<SceneFeatures | null> {
  const folder = join(cacheDir, cacheKey(sceneSeed, count, [encoder, teacher]));
  if (!(await exists(join(folder, 'teacher.safetensors')))) return null;
  const e = await readTensor(join(folder, 'encoder.safetensors'), 'features');
  const t = await readTensor(join(folder, 'teacher.safetensors'), 'features');
  const ok = (s: number[], dim: number) => s.length === 3 && s[0] === count && s[1] === PATCH_TOKENS && s[2] === dim;
  if (!ok(e.shape, encoder.dim) || !ok(t.shape, teacher.dim)) return null;
  return {
    count,
    tokens: PATCH_TOKENS,
    grid: PATCH_GRID,
    encoder: { spec: encoder, data: Float32Array.from(e.data) },
    teacher: { spec: teacher, data: Float32Array.from(t.data) },
  };
}

/** The cache folder of `count` scenes of `sceneSeed` for these two encoder specs (it may not exist). */
export function featureCachePath(cacheDir: string, sceneSeed: number, count: number, encoder: EncoderSpec, teacher: EncoderSpec): string {
  return join(cacheDir, cacheKey(sceneSeed, count, [encoder, teacher]));
}

/** Writes the float16 cache of two feature sets (see extractSceneFeatures); returns its folder. */
export async function writeFeatureCache(cacheDir: string, sceneSeed: number, count: number, encoder: { spec: EncoderSpec; data: Float32Array }, teacher: { spec: EncoderSpec; data: Float32Array }): Promise<string> {
  const folder = featureCachePath(cacheDir, sceneSeed, count, encoder.spec, teacher.spec);
  await mkdir(folder, { recursive: true });
  const meta = (s: EncoderSpec) => ({ description: s.description, package: `${s.package}@${s.version}`, node: s.node, scene_seed: String(sceneSeed) });
  for (const [file, f] of [['encoder.safetensors', encoder], ['teacher.safetensors', teacher]] as const) {
    await writeSafetensors(join(folder, file), [{ name: 'features', dtype: 'F16', shape: [count, PATCH_TOKENS, f.spec.dim], data: f.data }], meta(f.spec));
  }
  return folder;
}

/**
 * One frozen model's features of the scenes, [n, tokens, dim], rendered and extracted batch by batch (pixels are not
 * kept). The demo runs the encoder and the teacher this way in two worker threads at once.
 */
export async function extractFeatures(scenes: readonly Scene[], model: FrozenEncoder, options: Pick<ExtractOptions, 'batchSize' | 'onProgress'> = {}): Promise<Float32Array> {
  const n = scenes.length;
  const bs = options.batchSize ?? 8;
  const out = new Float32Array(n * PATCH_TOKENS * model.spec.dim);
  for (let i = 0; i < n; i += bs) {
    out.set(model.extract(scenes.slice(i, i + bs).map(renderScene)), i * PATCH_TOKENS * model.spec.dim);
    options.onProgress?.(Math.min(n, i + bs), n);
    // Let queued I/O and progress rendering run between batches.
    await new Promise((r) => setImmediate(r));
  }
  return out;
}

/**
 * Renders the scenes and runs both encoders, batch by batch (pixels are not kept). With `cacheDir`, features are
 * read from / written to `<cacheDir>/<key>/{encoder,teacher}.safetensors`, key = hash of scene seed and count,
 * feature version and both models' package versions and nodes.
 */
export async function extractSceneFeatures(
  scenes: readonly Scene[],
  encoder: FrozenEncoder,
  teacher: FrozenEncoder,
  options: ExtractOptions,
): Promise<SceneFeatures & { cached: boolean; cachePath: string | null }> {
  const n = scenes.length;
  const base = { count: n, tokens: PATCH_TOKENS, grid: PATCH_GRID };
  if (options.cacheDir) {
    const cached = await readFeatureCache(options.cacheDir, options.sceneSeed, n, encoder.spec, teacher.spec);
    if (cached) return { ...cached, cached: true, cachePath: featureCachePath(options.cacheDir, options.sceneSeed, n, encoder.spec, teacher.spec) };
  }
  // Progress counts images through both models: encoder first, then teacher.
  const enc = await extractFeatures(scenes, encoder, { batchSize: options.batchSize, onProgress: (done) => options.onProgress?.(Math.floor(done / 2), n) });
  const tea = await extractFeatures(scenes, teacher, { batchSize: options.batchSize, onProgress: (done) => options.onProgress?.(Math.floor((n + done) / 2), n) });
  const features = { ...base, encoder: { spec: encoder.spec, data: enc }, teacher: { spec: teacher.spec, data: tea } };
  const cachePath = options.cacheDir ? await writeFeatureCache(options.cacheDir, options.sceneSeed, n, features.encoder, features.teacher) : null;
  return { ...features, cached: false, cachePath };
}
