/**
 * Saving and loading the mini-LLaVA's weights as one safetensors file (F32, tensor names = parameter names) with the
 * config in its metadata, so a trained demo model can be reloaded for later analyses (attention, probes).
 */
import * as tf from '@tensorflow/tfjs';
import { InputError } from '../../src/core/errors.js';
import { readSafetensorsHeader, readTensor, writeSafetensors } from '../../src/store/safetensors.js';
import { MiniLlava, type MiniLlavaConfig } from './mini-llava.js';

export async function saveWeights(model: MiniLlava, path: string, extra: Record<string, string> = {}): Promise<void> {
  const tensors = [...model.params.entries()].map(([name, v]) => ({ name, dtype: 'F32' as const, shape: v.shape, data: v.dataSync() as Float32Array }));
  await writeSafetensors(path, tensors, { ...extra, 'viral-lens.mini-llava.config': JSON.stringify(model.config) });
}

/** A model with the config and weights stored in `path`. */
export async function loadWeights(path: string): Promise<MiniLlava> {
  const header = await readSafetensorsHeader(path);
  const cfg = header.metadata?.['viral-lens.mini-llava.config'];
  if (!cfg) throw new InputError(`${path}: no 'viral-lens.mini-llava.config' in the safetensors metadata (not a mini-LLaVA checkpoint)`);
  const model = new MiniLlava(JSON.parse(cfg) as MiniLlavaConfig);
  for (const [name, v] of model.params) {
    const t = await readTensor(path, name);
    if (t.shape.length !== v.shape.length || t.shape.some((d, i) => d !== v.shape[i])) {
      model.dispose();
      throw new InputError(`${path}: tensor '${name}' has shape [${t.shape.join(', ')}], the config implies [${v.shape.join(', ')}]`);
    }
    const value = tf.tensor(Float32Array.from(t.data), v.shape);
    v.assign(value);
    value.dispose();
  }
  return model;
}
