/**
 * Worker-thread entry that extracts one frozen model's features of the demo's scenes (encoders.ts extractFeatures).
 * The demo runs the encoder and the teacher in two of these at once, one per core. Messages to the parent:
 * `{ type: 'progress', done }` per batch, then `{ type: 'done', spec, data }` (data's buffer transferred) or
 * `{ type: 'error', message, input }`.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { InputError } from '../src/core/errors.js';
import { initBackend, type BackendName } from './model/backend.js';
import { extractFeatures, loadTeacher, loadVisionEncoder } from './model/encoders.js';
import { generateScenes } from './model/scenes.js';

export interface FeatureWorkerInput {
  role: 'encoder' | 'teacher';
  sceneSeed: number;
  count: number;
  backend: BackendName;
}

if (!parentPort) throw new Error('feature-worker.ts must run in a worker thread');
const port = parentPort;
const input = workerData as FeatureWorkerInput;

async function run(): Promise<void> {
  await initBackend(input.backend);
  const model = input.role === 'encoder' ? await loadVisionEncoder() : await loadTeacher();
  try {
    const data = await extractFeatures(generateScenes(input.sceneSeed, input.count), model, { onProgress: (done) => port.postMessage({ type: 'progress', done }) });
    port.postMessage({ type: 'done', spec: model.spec, data }, [data.buffer as ArrayBuffer]);
  } finally {
    model.dispose();
  }
}

run().catch((err: unknown) =>
  port.postMessage({
    type: 'error',
    message: err instanceof Error ? err.message : String(err),
    stack: err instanceof Error ? err.stack : undefined,
    input: err instanceof InputError,
  }),
);
