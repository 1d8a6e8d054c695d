/**
 * A LLaVA-shaped model small enough to train on a laptop CPU in tfjs:
 *
 *   frozen patch features z [B, N, Dv] ──projector (Linear·GELU·Linear, LLaVA-1.5's mlp2x_gelu)──▶ image tokens
 *   question/answer words ──one-hot × E──▶ text tokens
 *   [image tokens; text tokens] ──L × pre-norm decoder block (RMSNorm → causal MHA with RoPE → +, RMSNorm → MLP → +)
 *   ──RMSNorm──▶ LM head, next-token cross-entropy on the answer tokens only (text-only supervision).
 *
 * As in LLaVA, positions enter only through rotary embeddings, so hidden_states[0] at the image positions is exactly
 * the projector output. Canonical hook points (TransformerLens-style names; hidden_states indexing as in HF):
 *   `projector.out` [B, N, W] · `embed` [B, T, W] = hidden_states[0] · `blocks.{i}.out` [B, T, W] =
 *   hidden_states[i+1] · `blocks.{i}.attn` [B, H, T, T] (softmax weights) · `viral.pred` [B, N, Dt].
 *
 * Variants (same seed ⇒ the same initial weights for every shared parameter, the same batches):
 * - `baseline`: LM loss only.
 * - `residual`: after block ℓ−1 (so hidden_states[ℓ] and later), the layer-0 embeddings at the image positions are
 *   added back to the residual stream (the paper's code adds the input embeddings back after the listed layers).
 * - `viral`: a 3-layer SiLU MLP P maps hidden_states[ℓ] at the image positions to the teacher's patch features;
 *   loss = LM + λ·(−mean_i cos(P(h_ℓ,i), y_i)), λ = 0.5; the teacher features are constants (no gradient).
 * ℓ defaults to layers/2 (the paper aligns layer 16 of 32).
 */
import * as tf from '@tensorflow/tfjs';
import { InputError } from '../../src/core/errors.js';
import { causalAttention, causalAttentionWeights } from './attention-kernel.js';
import { linear, matMul2d, rmsNorm, rowCosine, silu } from './ops.js';
import { mixSeed, mulberry32, shuffled } from './scenes.js';

export const MODEL_VARIANTS = ['baseline', 'residual', 'viral'] as const;
export type ModelVariant = (typeof MODEL_VARIANTS)[number];

export interface MiniLlavaConfig {
  variant: ModelVariant;
  /** Seed of the weight initialisation (shared parameters are identical across variants for one seed). */
  seed: number;
  vocabSize: number;
  /** Image tokens per sample (patch grid rows × cols). */
  imageTokens: number;
  grid: [number, number];
  /** Vision-encoder feature size (projector input). */
  visionDim: number;
  /** Teacher feature size (VIRAL target). */
  teacherDim: number;
  width: number;
  layers: number;
  heads: number;
  /** MLP hidden size = mlpRatio × width. */
  mlpRatio: number;
  /** hidden_states index that is aligned (viral) or re-injected (residual); 1 ≤ ℓ ≤ layers. */
  alignLayer: number;
  /** VIRAL weight λ. */
  viralLambda: number;
  /** Hidden size of the VIRAL projector P. */
  viralHidden: number;
  ropeBase: number;
  /**
   * Fraction of each head's dimensions that get rotary embeddings (GPT-NeoX/Pythia use 0.25). The rest carry no
   * position, which lets small heads match content (e.g. an image slot's learned position) independently of how
   * far back it is; with full rotary at head size 16 almost every dimension rotates within one sequence.
   */
  rotaryFraction: number;
}

export function defaultConfig(partial: Partial<MiniLlavaConfig> & Pick<MiniLlavaConfig, 'vocabSize' | 'imageTokens' | 'grid' | 'visionDim' | 'teacherDim'>): MiniLlavaConfig {
  const layers = partial.layers ?? 4;
  return {
    variant: 'baseline',
    seed: 0,
    width: 64,
    layers,
    heads: 4,
    mlpRatio: 4,
    alignLayer: Math.max(1, Math.floor(layers / 2)),
    viralLambda: 0.5,
    viralHidden: 128,
    ropeBase: 10000,
    rotaryFraction: 0.5,
    ...partial,
  };
}

export function checkConfig(c: MiniLlavaConfig): void {
  const bad = (msg: string): never => {
    throw new InputError(`model config: ${msg}`);
  };
  if (!MODEL_VARIANTS.includes(c.variant)) bad(`variant must be one of ${MODEL_VARIANTS.join(', ')}, got '${c.variant}'`);
  for (const k of ['vocabSize', 'imageTokens', 'visionDim', 'teacherDim', 'width', 'layers', 'heads', 'mlpRatio', 'viralHidden'] as const) {
    if (!Number.isInteger(c[k]) || c[k] < 1) bad(`${k} must be a positive integer, got ${c[k]}`);
  }
  if (c.width % c.heads !== 0) bad(`width ${c.width} is not divisible by heads ${c.heads}`);
  const rot = (c.width / c.heads) * c.rotaryFraction;
  if (!(c.rotaryFraction >= 0 && c.rotaryFraction <= 1) || !Number.isInteger(rot) || rot % 2 !== 0) {
    bad(`rotaryFraction ${c.rotaryFraction} × head size ${c.width / c.heads} must be an even integer`);
  }
  if (c.grid[0] * c.grid[1] !== c.imageTokens) bad(`grid ${c.grid.join('×')} does not have ${c.imageTokens} cells`);
  if (!Number.isInteger(c.alignLayer) || c.alignLayer < 1 || c.alignLayer > c.layers) bad(`alignLayer must be in [1, ${c.layers}], got ${c.alignLayer}`);
}

/** Canonical hook point names of a config, in forward order. */
export function hookPoints(c: Pick<MiniLlavaConfig, 'layers' | 'variant'>): string[] {
  const names = ['projector.out', 'embed'];
  for (let i = 0; i < c.layers; i++) names.push(`blocks.${i}.attn`, `blocks.${i}.out`);
  if (c.variant === 'viral') names.push('viral.pred');
  return names;
}

/** Called at each hook point; the tensor is only valid inside the call unless the callee tf.keep()s it. */
export type HookFn = (name: string, x: tf.Tensor) => void;

export interface ForwardInputs {
  /** Vision features [B, N, Dv] (tensor or row-major data). */
  features: tf.Tensor3D | Float32Array;
  /** Token ids [B, Tt] (row-major). */
  ids: Int32Array;
  batch: number;
}

export interface ForwardOptions {
  hook?: HookFn;
  /** Compute the attention weights (needed by `blocks.{i}.attn` hooks; otherwise skipped for speed). */
  attention?: boolean;
}

export interface ForwardResult {
  /** Final residual stream [B, T, W] (after the last block, before the final norm). */
  last: tf.Tensor3D;
  /** hidden_states[alignLayer] at the image positions [B, N, W] (the VIRAL input). */
  aligned: tf.Tensor3D;
}

/** Standard normal samples from a seeded stream (Box–Muller), so initial weights do not depend on the backend. */
function normals(seed: number, n: number, std: number): Float32Array {
  const rng = mulberry32(seed);
  const out = new Float32Array(n);
  for (let i = 0; i < n; i += 2) {
    const u = Math.max(rng(), 1e-12);
    const v = rng();
    const r = Math.sqrt(-2 * Math.log(u));
    out[i] = r * Math.cos(2 * Math.PI * v) * std;
    if (i + 1 < n) out[i + 1] = r * Math.sin(2 * Math.PI * v) * std;
  }
  return out;
}

let variableCounter = 0;

function nameSeed(seed: number, name: string): number {
  let h = 2166136261;
  for (let i = 0; i < name.length; i++) h = Math.imul(h ^ name.charCodeAt(i), 16777619);
  return mixSeed(seed, h >>> 0);
}

/** Backends whose attention runs in the fused JS kernel (attention-kernel.ts); others use tfjs ops. */
const FUSED_ATTENTION_BACKENDS = new Set(['wasm', 'cpu']);

/** tanh approximation of GELU (tfjs has no gelu op). */
function gelu(x: tf.Tensor): tf.Tensor {
  const c = Math.sqrt(2 / Math.PI);
  return tf.mul(tf.mul(x, 0.5), tf.add(1, tf.tanh(tf.mul(tf.add(x, tf.mul(tf.pow(x, 3), 0.044715)), c))));
}

export class MiniLlava {
  readonly config: MiniLlavaConfig;
  /** Every trainable weight by name (`blocks.0.attn.qkv`, ...), in creation order. */
  readonly params = new Map<string, tf.Variable>();
  private readonly ropeCache = new Map<number, { cos: tf.Tensor2D; sin: tf.Tensor2D }>();
  private readonly rotateHalf: tf.Tensor2D;
  private readonly maskCache = new Map<number, tf.Tensor2D>();

  constructor(config: MiniLlavaConfig) {
    checkConfig(config);
    this.config = config;
    const { width: W, visionDim: Dv, vocabSize: V, mlpRatio, layers, teacherDim, viralHidden } = config;
    const p = (name: string, shape: number[], std: number | 'ones' | 'zeros'): void => {
      const size = shape.reduce((a, b) => a * b, 1);
      const data = std === 'ones' ? new Float32Array(size).fill(1) : std === 'zeros' ? new Float32Array(size) : normals(nameSeed(config.seed, name), size, std);
      // tfjs variable names are global: suffix a per-process counter so two models can coexist.
      this.params.set(name, tf.variable(tf.tensor(data, shape), true, `${name}#${++variableCounter}`));
    };
    // Fan-in scaled init; residual-branch outputs are further scaled by 1/sqrt(2·layers) (GPT-2) so the residual
    // stream starts near the identity map.
    const branch = 1 / Math.sqrt(2 * layers);
    p('projector.fc1.w', [Dv, W], 1 / Math.sqrt(Dv));
    p('projector.fc1.b', [W], 'zeros');
    p('projector.fc2.w', [W, W], 1 / Math.sqrt(W));
    p('projector.fc2.b', [W], 'zeros');
    p('projector.pos', [config.imageTokens, W], 0.5);
    p('embed.tokens', [V, W], 1);
    for (let i = 0; i < layers; i++) {
      p(`blocks.${i}.norm1`, [W], 'ones');
      p(`blocks.${i}.attn.qkv`, [W, 3 * W], 1 / Math.sqrt(W));
      p(`blocks.${i}.attn.o`, [W, W], branch / Math.sqrt(W));
      p(`blocks.${i}.norm2`, [W], 'ones');
      p(`blocks.${i}.mlp.up`, [W, mlpRatio * W], 1 / Math.sqrt(W));
      p(`blocks.${i}.mlp.down`, [mlpRatio * W, W], branch / Math.sqrt(mlpRatio * W));
    }
    p('norm.final', [W], 'ones');
    p('lm_head', [W, V], 1 / Math.sqrt(W));
    if (config.variant === 'viral') {
      p('viral.fc1.w', [W, viralHidden], 1 / Math.sqrt(W));
      p('viral.fc1.b', [viralHidden], 'zeros');
      p('viral.fc2.w', [viralHidden, viralHidden], 1 / Math.sqrt(viralHidden));
      p('viral.fc2.b', [viralHidden], 'zeros');
      p('viral.fc3.w', [viralHidden, teacherDim], 1 / Math.sqrt(viralHidden));
      p('viral.fc3.b', [teacherDim], 'zeros');
    }
    const hd = W / config.heads;
    const rd = hd * config.rotaryFraction;
    const r = new Float32Array(hd * hd);
    // rotate_half over the first rd dims, concat(−x[rd/2:rd], x[:rd/2]), as a fixed matrix (one fast 2-D matMul);
    // the remaining dims map to 0 and keep cos = 1, so they pass through unrotated.
    for (let j = 0; j < rd / 2; j++) {
      r[(j + rd / 2) * hd + j] = -1;
      r[j * hd + (j + rd / 2)] = 1;
    }
    this.rotateHalf = tf.tensor2d(r, [hd, hd]);
  }

  param(name: string): tf.Variable {
    const v = this.params.get(name);
    if (!v) throw new Error(`no parameter '${name}'`);
    return v;
  }

  trainableVariables(): tf.Variable[] {
    return [...this.params.values()];
  }

  /** Parameter count (for printed descriptions). */
  parameterCount(): number {
    let n = 0;
    for (const v of this.params.values()) n += v.size;
    return n;
  }

  /**
   * Vision features [B, N, Dv] → image tokens [B, N, W]. A learned per-slot embedding is added: ViT patch tokens
   * (CLIP's) carry their grid position in the features themselves, a CNN map (our stand-in) barely does, so the
   * connector supplies it. It belongs to the slot, not the content: a patch shuffle moves content across slots.
   */
  projector(z: tf.Tensor3D): tf.Tensor3D {
    const h = gelu(linear(z, this.param('projector.fc1.w'), this.param('projector.fc1.b')));
    return tf.add(linear(h, this.param('projector.fc2.w'), this.param('projector.fc2.b')), this.param('projector.pos')) as tf.Tensor3D;
  }

  /** Token ids [B, Tt] → text tokens [B, Tt, W] (one-hot × E: gather has no gradient on wasm). */
  embedText(ids: Int32Array, batch: number): tf.Tensor3D {
    const Tt = ids.length / batch;
    const oneHot = tf.oneHot(tf.tensor1d(ids, 'int32'), this.config.vocabSize).toFloat();
    return tf.reshape(matMul2d(oneHot, this.param('embed.tokens')), [batch, Tt, this.config.width]) as tf.Tensor3D;
  }

  private rope(T: number): { cos: tf.Tensor2D; sin: tf.Tensor2D } {
    let r = this.ropeCache.get(T);
    if (!r) {
      const hd = this.config.width / this.config.heads;
      const rd = hd * this.config.rotaryFraction;
      const cos = new Float32Array(T * hd).fill(1);
      const sin = new Float32Array(T * hd);
      for (let t = 0; t < T; t++) {
        for (let j = 0; j < rd / 2; j++) {
          const angle = t / this.config.ropeBase ** ((2 * j) / rd);
          cos[t * hd + j] = cos[t * hd + j + rd / 2] = Math.cos(angle);
          sin[t * hd + j] = sin[t * hd + j + rd / 2] = Math.sin(angle);
        }
      }
      r = { cos: tf.keep(tf.tensor2d(cos, [T, hd])), sin: tf.keep(tf.tensor2d(sin, [T, hd])) };
      this.ropeCache.set(T, r);
    }
    return r;
  }

  /** Additive causal mask [T, T]: 0 where key ≤ query, −1e9 above the diagonal. */
  private causalMask(T: number): tf.Tensor2D {
    let m = this.maskCache.get(T);
    if (!m) {
      const d = new Float32Array(T * T);
      for (let q = 0; q < T; q++) for (let k = q + 1; k < T; k++) d[q * T + k] = -1e9;
      m = tf.keep(tf.tensor2d(d, [T, T]));
      this.maskCache.set(T, m);
    }
    return m;
  }

  /** x [B·H, T, hd] with rotary position embedding applied. */
  private applyRope(x: tf.Tensor3D, T: number): tf.Tensor3D {
    const { cos, sin } = this.rope(T);
    const rot = linear(x, this.rotateHalf);
    return tf.add(tf.mul(x, cos), tf.mul(rot, sin)) as tf.Tensor3D;
  }

  /** One decoder block on the residual stream h [B, T, W]; `attn` [B, H, T, T] when asked. */
  block(i: number, h: tf.Tensor3D, options: { attention?: boolean } = {}): { out: tf.Tensor3D; attn?: tf.Tensor4D } {
    const { width: W, heads: H } = this.config;
    const [B, T] = h.shape;
    const hd = W / H;
    const x = rmsNorm(h, this.param(`blocks.${i}.norm1`));
    const qkv = linear(x, this.param(`blocks.${i}.attn.qkv`));
    const [q, k, v] = tf.split(qkv, 3, -1) as [tf.Tensor3D, tf.Tensor3D, tf.Tensor3D];
    const heads = (t: tf.Tensor3D): tf.Tensor3D => tf.reshape(tf.transpose(tf.reshape(t, [B, T, H, hd]), [0, 2, 1, 3]), [B * H, T, hd]);
    const qh = this.applyRope(heads(q), T);
    const kh = this.applyRope(heads(k), T);
    const vh = heads(v);
    const scale = 1 / Math.sqrt(hd);
    let ctx: tf.Tensor3D;
    let p: tf.Tensor3D | null = null;
    if (FUSED_ATTENTION_BACKENDS.has(tf.getBackend())) {
      ctx = causalAttention(qh, kh, vh, scale);
      if (options.attention) p = causalAttentionWeights(qh, kh, vh, scale);
    } else {
      p = tf.softmax(tf.add(tf.mul(tf.matMul(qh, kh, false, true), scale), this.causalMask(T))) as tf.Tensor3D;
      ctx = tf.matMul(p, vh);
    }
    const merged = tf.reshape(tf.transpose(tf.reshape(ctx, [B, H, T, hd]), [0, 2, 1, 3]), [B, T, W]);
    const a = tf.add(h, linear(merged, this.param(`blocks.${i}.attn.o`))) as tf.Tensor3D;
    const y = rmsNorm(a, this.param(`blocks.${i}.norm2`));
    const m = linear(silu(linear(y, this.param(`blocks.${i}.mlp.up`))), this.param(`blocks.${i}.mlp.down`));
    const out = tf.add(a, m) as tf.Tensor3D;
    return options.attention && p ? { out, attn: tf.reshape(p, [B, H, T, T]) as tf.Tensor4D } : { out };
  }

  /** VIRAL projector P: image-token states [B, N, W] → teacher space [B, N, Dt]. */
  viralHead(h: tf.Tensor3D): tf.Tensor3D {
    let x = silu(linear(h, this.param('viral.fc1.w'), this.param('viral.fc1.b')));
    x = silu(linear(x, this.param('viral.fc2.w'), this.param('viral.fc2.b')));
    return linear(x, this.param('viral.fc3.w'), this.param('viral.fc3.b')) as tf.Tensor3D;
  }

  /** The full forward pass with hook points. Call inside tf.tidy (or dispose the results). */
  forward(inputs: ForwardInputs, options: ForwardOptions = {}): ForwardResult {
    const { batch: B } = inputs;
    const { imageTokens: N, visionDim: Dv, alignLayer, variant } = this.config;
    const hook = options.hook;
    const z =
      inputs.features instanceof Float32Array ? tf.tensor3d(inputs.features, [B, N, Dv]) : inputs.features;
    if (z.shape[0] !== B || z.shape[1] !== N || z.shape[2] !== Dv) {
      throw new InputError(`features: expected [${B}, ${N}, ${Dv}], got [${z.shape.join(', ')}]`);
    }
    if (inputs.ids.length % B !== 0) throw new InputError(`ids: ${inputs.ids.length} values is not a multiple of batch ${B}`);
    const img = this.projector(z);
    hook?.('projector.out', img);
    let h = tf.concat([img, this.embedText(inputs.ids, B)], 1) as tf.Tensor3D;
    hook?.('embed', h);
    let aligned: tf.Tensor3D | null = null;
    for (let i = 0; i < this.config.layers; i++) {
      const r = this.block(i, h, { attention: options.attention === true });
      h = r.out;
      if (r.attn) hook?.(`blocks.${i}.attn`, r.attn);
      if (i + 1 === alignLayer) {
        if (variant === 'residual') {
          const T = h.shape[1];
          const imgPart = tf.add(tf.slice(h, [0, 0, 0], [B, N, -1]), img);
          h = tf.concat([imgPart, tf.slice(h, [0, N, 0], [B, T - N, -1])], 1) as tf.Tensor3D;
        }
        aligned = tf.slice(h, [0, 0, 0], [B, N, -1]) as tf.Tensor3D;
      }
      hook?.(`blocks.${i}.out`, h);
    }
    return { last: h, aligned: aligned! };
  }

  /**
   * Logits of the answer tokens [B·turns, V]: at each turn, the question's last word (one before the answer).
   * `imageTokens` offset, then turns of `turnLen` tokens whose answer is at offset turnLen − 1.
   */
  answerLogits(last: tf.Tensor3D, turnLen: number): tf.Tensor2D {
    const [B, T, W] = last.shape;
    const N = this.config.imageTokens;
    const turns = (T - N) / turnLen;
    if (!Number.isInteger(turns)) throw new InputError(`sequence of ${T} tokens is not ${N} image tokens + whole turns of ${turnLen}`);
    const text = tf.reshape(tf.slice(last, [0, N, 0], [B, T - N, W]), [B, turns, turnLen, W]);
    const q = tf.reshape(tf.slice(text, [0, 0, turnLen - 2, 0], [B, turns, 1, W]), [B * turns, W]);
    return matMul2d(rmsNorm(q, this.param('norm.final')), this.param('lm_head'));
  }

  /**
   * Losses for one batch: LM cross-entropy on the answers; for `viral` also L_VRA = −mean cos(P(h_ℓ), y) and the
   * total LM + λ·L_VRA. `teacher` [B, N, Dt] is only read by the viral variant.
   */
  losses(
    inputs: ForwardInputs & { answers: Int32Array; teacher?: Float32Array | tf.Tensor3D },
    turnLen: number,
    options: ForwardOptions = {},
  ): { total: tf.Scalar; lm: tf.Scalar; vra: tf.Scalar | null } {
    const { last, aligned } = this.forward(inputs, options);
    const logits = this.answerLogits(last, turnLen);
    const targets = tf.oneHot(tf.tensor1d(inputs.answers, 'int32'), this.config.vocabSize).toFloat();
    const lm = tf.neg(tf.mean(tf.sum(tf.mul(targets, tf.logSoftmax(logits)), -1))) as tf.Scalar;
    if (this.config.variant !== 'viral') return { total: lm, lm, vra: null };
    if (!inputs.teacher) throw new InputError('the viral variant needs teacher features for its loss');
    const { imageTokens: N, teacherDim: Dt } = this.config;
    const y = inputs.teacher instanceof Float32Array ? tf.tensor3d(inputs.teacher, [inputs.batch, N, Dt]) : inputs.teacher;
    const pred = this.viralHead(aligned);
    options.hook?.('viral.pred', pred);
    const vra = viralLoss(pred, y);
    return { total: tf.add(lm, tf.mul(vra, this.config.viralLambda)) as tf.Scalar, lm, vra };
  }

  dispose(): void {
    for (const v of this.params.values()) v.dispose();
    for (const r of this.ropeCache.values()) tf.dispose([r.cos, r.sin]);
    for (const m of this.maskCache.values()) m.dispose();
    this.rotateHalf.dispose();
  }
}

/** L_VRA = −(1/N) Σ_i cos(pred_i, y_i) over every image token of the batch; y is treated as a constant. */
export function viralLoss(pred: tf.Tensor, target: tf.Tensor): tf.Scalar {
  // The target is a plain tensor, never a tf.Variable, so the optimizer's gradients cannot reach it.
  return tf.neg(tf.mean(rowCosine(pred, target))) as tf.Scalar;
}

/**
 * Permutes the image tokens of every sample (before the projector) with a seeded permutation per sample — the
 * paper's patch-shuffle test (Table 3). Returns a new array; sample b uses the stream mixSeed(seed, b).
 */
export function shufflePatches(features: Float32Array, batch: number, tokens: number, dim: number, seed: number): Float32Array {
  const out = new Float32Array(features.length);
  for (let b = 0; b < batch; b++) {
    const perm = shuffled(mulberry32(mixSeed(seed, b)), [...Array(tokens).keys()]);
    for (let t = 0; t < tokens; t++) {
      const src = (b * tokens + perm[t]!) * dim;
      out.set(features.subarray(src, src + dim), (b * tokens + t) * dim);
    }
  }
  return out;
}
