/**
 * Worker-thread entry that trains one variant (train-run.ts). The demo starts one worker per variant: tfjs's wasm
 * heap only grows, so a worker that exits is the way to give its memory back. Messages to the parent:
 * `{ type: 'event', event }` while running, then `{ type: 'done', result }` or `{ type: 'error', message, input }`.
 */
import { parentPort, workerData } from 'node:worker_threads';
import { InputError } from '../src/core/errors.js';
import { runVariant, type VariantRunInput } from './train-run.js';

if (!parentPort) throw new Error('train-worker.ts must run in a worker thread');
const port = parentPort;
runVariant(workerData as VariantRunInput, (event) => port.postMessage({ type: 'event', event })).then(
  (result) => port.postMessage({ type: 'done', result }),
  (err: unknown) =>
    port.postMessage({
      type: 'error',
      message: err instanceof Error ? err.message : String(err),
      stack: err instanceof Error ? err.stack : undefined,
      input: err instanceof InputError,
    }),
);
