import { InputError } from '../errors.js';
import { OnnxEngine } from './onnx.js';
import { RefEngine } from './ref.js';
import type { Engine } from './types.js';

export type { Engine, EngineInfo, KnnLists, KnnOptions } from './types.js';
export { describeEngine } from './types.js';

export const ENGINE_NAMES = ['auto', 'ref', 'cpu'] as const;
export type EngineName = (typeof ENGINE_NAMES)[number];

/**
 * `auto` picks the fastest engine that starts here: the onnxruntime CPU engine, else the reference engine.
 * The returned engine's name/device say what was used; callers print them with every result.
 */
export async function createEngine(name: string = 'auto'): Promise<Engine> {
  switch (name) {
    case 'ref':
      return new RefEngine();
    case 'cpu':
      return OnnxEngine.create('cpu');
    case 'auto':
      try {
        return await OnnxEngine.create('cpu');
      } catch {
        return new RefEngine();
      }
    default:
      throw new InputError(`--engine: unknown engine '${name}' (expected one of ${ENGINE_NAMES.join(', ')})`);
  }
}
