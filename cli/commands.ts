import { COMPARE, LAYERWISE, PROBE, UMAP } from '../analysis/params.js';
import { usageOf } from './params.js';

/** `--engine`'s torch-only options, after the engine flag. */
const TORCH_OPTIONS = '[--device cuda:N|mps|cpu] [--precision float32|tf32|bf16]';

/** A CLI command: loaded lazily so `viral-lens info` does not start onnxruntime or tfjs. */
export interface Command {
  summary: string;
  usage: string;
  load: () => Promise<{ run: (argv: string[]) => Promise<number | void> }>;
}

export const COMMANDS: Record<string, Command> = {
  compare: {
    summary: 'one similarity score between two feature files (npy / safetensors)',
    // Every analysis parameter's flag, default, bounds and choices come from its schema (analysis/params.ts).
    usage: `A B ${usageOf(COMPARE)} ${TORCH_OPTIONS} [--key-a NAME] [--key-b NAME] [--json]`,
    load: () => import('./cmd-compare.js'),
  },
  layerwise: {
    summary: 'every layer of a capture against target features (CKNNA curves); a run folder or several captures → checkpoints side by side',
    usage:
      `CAPTURE_DIR | RUN_DIR (step-<N>/ captures) | CAPTURE_DIR... [--target NAME[=PATH]]... ${usageOf(LAYERWISE)} ${TORCH_OPTIONS} [--layers 0,4,8] [--json|--csv] [--out FILE] [--csv FILE.csv] [--figure FILE.svg|.png|.pdf]   |   CAPTURE_DIR... --shard I/N [same options] [--out SHARD.json]`,
    load: () => import('./cmd-layerwise.js'),
  },
  merge: {
    summary: 'merge the shard files of a sharded layerwise sweep (checks they form one complete sweep)',
    usage: 'OUT.json|OUT.csv SHARD.json...',
    load: () => import('./cmd-merge.js'),
  },
  doctor: {
    summary: 'which compute engines work here, which one auto picks, on what device and in what precision',
    usage: '[--json]',
    load: () => import('./cmd-doctor.js'),
  },
  probe: {
    summary: 'linear probes per layer (and on the targets, as the ceiling) for a manifest label; writes probes.json',
    usage:
      `CAPTURE_DIR --label NAME ${usageOf(PROBE)} [--task auto|classify|regress] [--l2 0.01|cv] [--control-by auto|image|position|LABEL] [--layers 0,4,8] [--no-targets] [--no-write] [--json]`,
    load: () => import('./cmd-probe.js'),
  },
  attention: {
    summary: 'text→image attention entropy per layer × head of a demo run, recomputed from its saved weights (else its attention.json)',
    usage: 'RUN_DIR [--backend auto|wasm|cpu|tensorflow] [--stored | --write] [--json]',
    load: () => import('./cmd-attention.js'),
  },
  shuffle: {
    summary: 'patch-shuffle test (accuracy in place vs shuffled, McNemar) of a demo run, recomputed from its saved weights (else its shuffle.json)',
    usage: 'RUN_DIR [--seeds N (shuffle seeds 1..N; default the demo\'s)] [--backend auto|wasm|cpu|tensorflow] [--stored | --write] [--json]',
    load: () => import('./cmd-shuffle.js'),
  },
  serve: {
    summary: 'the dashboard: layer-wise curves, checkpoints, variants, embeddings, probes, attention, patch shuffle; live while runs train',
    usage: 'RUNS_DIR [--port 7860] [--host 127.0.0.1] [--engine auto|ref|cpu|webgpu|cuda|torch] [--workers N] [--token T (or VIRAL_LENS_TOKEN)] [--no-cache] [--log]',
    load: () => import('./cmd-serve.js'),
  },
  demo: {
    summary: 'train a mini-LLaVA here (baseline, residual, VIRAL), capture every layer, print layer-wise CKNNA and accuracy',
    usage: '[--out runs/demo] [--steps N] [--seed S] [--quick] [--variants baseline,residual,viral] [--backend auto|wasm|cpu|tensorflow] [--engine auto|ref|cpu|webgpu|cuda|torch] [--no-workers] [--quiet] [--serve|--no-serve] [--port 7860]',
    load: () => import('./cmd-demo.js'),
  },
  embed: {
    summary: 'UMAP of one layer across captures (Procrustes-aligned), or PCA-RGB token grids of one image per layer',
    usage: `umap CAPTURE... --layer L [--label NAME] ${usageOf(UMAP)} [--out FIG.svg|png|pdf|json|csv] [--json]   |   pca-grid CAPTURE... [--sample ID|INDEX] [--layers 0,2,4] [--engine ENGINE] [--out FIG.svg|png|pdf|json|csv]`,
    load: () => import('./cmd-embed.js'),
  },
  info: {
    summary: 'describe a .npy / .safetensors file, a capture directory or a runs directory',
    usage: 'PATH [--json]',
    load: () => import('./cmd-info.js'),
  },
  validate: {
    summary: 'check a capture (or every capture under a directory) and report every problem found, NaN/Inf values included',
    usage: 'PATH [--json] [--headers-only]   (every shard value is checked for NaN/Inf unless --headers-only)',
    load: () => import('./cmd-validate.js'),
  },
};
