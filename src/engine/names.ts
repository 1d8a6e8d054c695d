/** The engines by name, apart from the engines themselves, so parameter schemas can list them without loading onnxruntime. */
export const ENGINE_NAMES = ['auto', 'ref', 'cpu', 'webgpu', 'cuda', 'torch'] as const;
export type EngineName = (typeof ENGINE_NAMES)[number];
