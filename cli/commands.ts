/** A CLI command: loaded lazily so `viral-lens info` does not start onnxruntime or tfjs. */
export interface Command {
  summary: string;
  usage: string;
  load: () => Promise<{ run: (argv: string[]) => Promise<number | void> }>;
}

export const COMMANDS: Record<string, Command> = {
  compare: {
    summary: 'one similarity score between two feature files (npy / safetensors)',
    usage: 'A B --metric cknna|mutual_knn|cycle_knn|cka|unbiased_cka|cosine [--topk K] [--preprocess none|l2|prh] [--q 0.95] [--engine auto|ref|cpu] [--key-a NAME] [--key-b NAME] [--json]',
    load: () => import('./cmd-compare.js'),
  },
  layerwise: {
    summary: 'every layer of a capture against target features (CKNNA curves)',
    usage:
      'CAPTURE_DIR [--target NAME[=PATH]]... [--metric cknna[,cka,...]] [--topk K] [--preprocess none|l2|prh] [--tokens per-token|mean|first] [--max-rows N --seed S] [--layers 0,4,8] [--engine auto|ref|cpu] [--json|--csv] [--out FILE]',
    load: () => import('./cmd-layerwise.js'),
  },
  info: {
    summary: 'describe a .npy / .safetensors file, a capture directory or a runs directory',
    usage: 'PATH [--json]',
    load: () => import('./cmd-info.js'),
  },
  validate: {
    summary: 'check a capture (or every capture under a directory) and report every problem found',
    usage: 'PATH [--json]',
    load: () => import('./cmd-validate.js'),
  },
};
