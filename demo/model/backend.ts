/**
 * Picks the tfjs backend for the embedded mini-LLaVA and says honestly which one ran.
 *
 * Order: `@tensorflow/tfjs-node-gpu` when it can be imported (not a dependency: a user who installed it gets it),
 * else the wasm backend from `@tensorflow/tfjs-backend-wasm` (a dependency; its .wasm files are loaded from
 * node_modules, never fetched), else tfjs's pure-JS `cpu` backend. Every output of the demo carries the
 * `BackendInfo` returned here; `device` is 'gpu' only for the tfjs-node-gpu binding, and even then it says what the
 * binding is built for, not that a GPU was seen (tfjs gives no portable way to ask).
 */
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { setWasmPaths } from '@tensorflow/tfjs-backend-wasm';
import { InputError } from '../../src/core/errors.js';

export type BackendName = 'auto' | 'wasm' | 'cpu' | 'tensorflow';

export interface BackendInfo {
  /** tfjs backend name as tf.getBackend() reports it. */
  name: string;
  /** What executes the kernels. */
  device: 'cpu' | 'gpu';
  /** Human-readable, e.g. "tfjs wasm (SIMD, 1 thread) 4.22.0". */
  description: string;
  /** Package versions that define the numerics. */
  versions: Record<string, string>;
}

const require = createRequire(import.meta.url);

let current: BackendInfo | null = null;

function packageVersion(name: string): string {
  try {
    // Packages with an "exports" map may not export package.json; walk up from their main file instead.
    let dir = dirname(require.resolve(name));
    for (let i = 0; i < 5; i++) {
      try {
        const pkg = require(join(dir, 'package.json')) as { name?: string; version?: string };
        if (pkg.name === name && pkg.version) return pkg.version;
      } catch {
        // not at this level
      }
      dir = dirname(dir);
    }
  } catch {
    // not installed
  }
  return 'unknown';
}

/** Version of an installed npm package, or 'unknown' (recorded in provenance). */
export function installedVersion(name: string): string {
  return packageVersion(name);
}

/**
 * The wasm module installs process-wide `uncaughtException` / `unhandledRejection` listeners that rethrow, which
 * turns any later unhandled error into a dump of the whole minified module. Our CLI reports errors itself, so the
 * listeners added during backend start-up are removed again.
 */
async function withoutNewProcessListeners(fn: () => Promise<void>): Promise<void> {
  const events = ['uncaughtException', 'unhandledRejection'] as const;
  const before = new Map(events.map((e) => [e, new Set(process.listeners(e as 'uncaughtException'))]));
  try {
    await fn();
  } finally {
    for (const e of events) {
      for (const l of process.listeners(e as 'uncaughtException')) {
        if (!before.get(e)!.has(l)) process.removeListener(e, l);
      }
    }
  }
}

async function tryTensorflowGpu(): Promise<boolean> {
  const pkg = '@tensorflow/tfjs-node-gpu';
  try {
    // A variable specifier keeps TypeScript from requiring the (optional, absent) package's types.
    await import(pkg as string);
    return tf.findBackend('tensorflow') !== undefined || tf.engine().registryFactory.tensorflow !== undefined;
  } catch {
    return false;
  }
}

async function startWasm(): Promise<void> {
  const dist = join(dirname(require.resolve('@tensorflow/tfjs-backend-wasm')), '/');
  setWasmPaths(dist);
  await withoutNewProcessListeners(async () => {
    if (!(await tf.setBackend('wasm'))) throw new Error('the wasm backend did not start');
    await tf.ready();
  });
}

/**
 * Starts the backend once per thread (later calls return the same info). `auto`: tfjs-node-gpu if importable, else
 * wasm, else cpu. Naming a backend that cannot start is an InputError.
 */
export async function initBackend(preference: BackendName = 'auto'): Promise<BackendInfo> {
  if (current) return current;
  const versions: Record<string, string> = { '@tensorflow/tfjs': packageVersion('@tensorflow/tfjs') };
  // tfjs prints an advert for tfjs-node on the first cpu-backend use in Node; PROD silences it (and nothing else we
  // rely on: it only turns off debug-mode checks).
  tf.env().set('PROD', true);
  if (preference === 'auto' || preference === 'tensorflow') {
    if ((await tryTensorflowGpu()) && (await tf.setBackend('tensorflow'))) {
      await tf.ready();
      versions['@tensorflow/tfjs-node-gpu'] = packageVersion('@tensorflow/tfjs-node-gpu');
      current = {
        name: 'tensorflow',
        device: 'gpu',
        description: `tfjs-node-gpu ${versions['@tensorflow/tfjs-node-gpu']} (CUDA build; device placement by TensorFlow)`,
        versions,
      };
      return current;
    }
    if (preference === 'tensorflow') throw new InputError('--backend tensorflow: @tensorflow/tfjs-node-gpu is not installed or did not start');
  }
  if (preference === 'auto' || preference === 'wasm') {
    try {
      await startWasm();
      versions['@tensorflow/tfjs-backend-wasm'] = packageVersion('@tensorflow/tfjs-backend-wasm');
      const simd = await tf.env().getAsync('WASM_HAS_SIMD_SUPPORT');
      current = {
        name: 'wasm',
        device: 'cpu',
        description: `tfjs wasm${simd ? ' (SIMD' : ' (no SIMD'}, 1 thread) ${versions['@tensorflow/tfjs-backend-wasm']} on CPU`,
        versions,
      };
      return current;
    } catch (err) {
      if (preference === 'wasm') throw new InputError(`--backend wasm: did not start: ${(err as Error).message}`);
    }
  }
  if (!(await tf.setBackend('cpu'))) throw new InputError('no tfjs backend could start (tried tfjs-node-gpu, wasm, cpu)');
  await tf.ready();
  current = { name: 'cpu', device: 'cpu', description: `tfjs pure-JS cpu backend ${versions['@tensorflow/tfjs']} (slow)`, versions };
  return current;
}

/** The backend started in this thread, or null before initBackend. */
export function backendInfo(): BackendInfo | null {
  return current;
}

export function parseBackend(name: string): BackendName {
  if (name === 'auto' || name === 'wasm' || name === 'cpu' || name === 'tensorflow') return name;
  throw new InputError(`--backend: unknown backend '${name}' (expected auto, wasm, cpu or tensorflow)`);
}
