import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * The CUDA execution provider is not bundled with onnxruntime-node (too large for npm): its two libraries must sit
 * next to the bundled libonnxruntime.so.1, where onnxruntime's provider bridge loads them from. docs/scale.md says
 * how to put them there (npm's install flag with network, or copying them from the NuGet package / a Python
 * onnxruntime-gpu wheel of the same version). They in turn need the CUDA 12 runtime, cuBLAS and cuDNN 9 on the
 * library path.
 */
export const CUDA_PROVIDER_LIBS = ['libonnxruntime_providers_shared.so', 'libonnxruntime_providers_cuda.so'] as const;

/** The folder holding onnxruntime-node's native libraries for this platform. */
export function ortNativeDir(): string {
  const index = fileURLToPath(import.meta.resolve('onnxruntime-node'));
  return join(dirname(index), '..', 'bin', 'napi-v6', process.platform, process.arch);
}

export interface CudaProviderFiles {
  dir: string;
  present: string[];
  missing: string[];
}

export function cudaProviderFiles(): CudaProviderFiles {
  const dir = ortNativeDir();
  const present: string[] = [];
  const missing: string[] = [];
  for (const lib of CUDA_PROVIDER_LIBS) (existsSync(join(dir, lib)) ? present : missing).push(lib);
  return { dir, present, missing };
}

/**
 * onnxruntime's CUDA EP enables TF32 tensor-core math for float32 Gemm by default (`use_tf32`), and onnxruntime-node
 * passes no provider option but the device id. cuBLAS honours NVIDIA_TF32_OVERRIDE=0, which turns TF32 off for the
 * whole process; it must be set before the CUDA libraries start, i.e. before the first CUDA session. TF32 keeps 10
 * mantissa bits, so Gram values would carry ~1e-3 relative error and kNN lists would change on near-ties: the engine
 * always computes in float32, and its self-check against the ref engine (tolerance 2e-5) would catch TF32 that
 * slipped through (e.g. a cuBLAS that ignores the variable).
 */
export function disableTf32(): string {
  const before = process.env.NVIDIA_TF32_OVERRIDE;
  process.env.NVIDIA_TF32_OVERRIDE = '0';
  return before === undefined || before === '0'
    ? 'fp32 (TF32 off: NVIDIA_TF32_OVERRIDE=0)'
    : `fp32 (TF32 off: NVIDIA_TF32_OVERRIDE=0, was ${before})`;
}
