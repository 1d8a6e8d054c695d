import assert from 'node:assert/strict';
import { test } from 'node:test';
import { identifyNvidia } from '../src/engine/webgpu.js';

// The H200 machine of issue 13: NVIDIA's ICD, no Mesa device-select layer; the adapter must be named, not "unknown".
test('webgpu: an NVIDIA Vulkan driver plus the GPUs its kernel driver lists identify a GPU adapter by name', () => {
  const r = identifyNvidia(['libGLX_nvidia.so.0'], ['NVIDIA H200']);
  assert.equal(r?.kind, 'gpu');
  assert.equal(r?.name, 'NVIDIA H200');
  assert.match(r!.source, /libGLX_nvidia\.so\.0/);
  const two = identifyNvidia(['/usr/lib/x86_64-linux-gnu/libvulkan_lvp.so', 'libGLX_nvidia.so.0'], ['NVIDIA A100-SXM4-80GB', 'NVIDIA A100-SXM4-80GB']);
  assert.equal(two?.name, 'NVIDIA A100-SXM4-80GB');
  assert.match(two!.source, /2 NVIDIA GPUs/);
});

test('webgpu: without the NVIDIA driver, or without a GPU it lists, nothing is claimed', () => {
  assert.equal(identifyNvidia(['libGLX_nvidia.so.0'], []), null);
  assert.equal(identifyNvidia(['/usr/lib/x86_64-linux-gnu/libvulkan_lvp.so'], ['NVIDIA H200']), null);
  assert.equal(identifyNvidia([], ['NVIDIA H200']), null);
});
