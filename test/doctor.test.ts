import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { test } from 'node:test';
import { promisify } from 'node:util';
import type { DoctorReport } from '../cli/cmd-doctor.js';
import { cudaProviderFiles } from '../src/engine/cuda.js';
import { AUTO_ORDER } from '../src/engine/index.js';

const run = promisify(execFile);
const cli = (args: string[], env: NodeJS.ProcessEnv = {}) =>
  run(process.execPath, ['--import', 'tsx', 'cli/main.ts', ...args], { env: { ...process.env, ...env }, timeout: 120_000 });

/** `doctor` in a child process, as users run it (its WebGPU probe starts Dawn, which stays for the process's life). */
async function doctor(env: NodeJS.ProcessEnv = {}): Promise<{ report: DoctorReport; text: string }> {
  const [json, text] = await Promise.all([cli(['doctor', '--json'], env), cli(['doctor'], env)]);
  return { report: JSON.parse(json.stdout) as DoctorReport, text: text.stdout };
}

const here = await doctor();

test('doctor lists every engine in auto order and auto is the first available, eligible one', () => {
  const { report, text } = here;
  assert.deepEqual(report.engines.map((e) => e.name), [...AUTO_ORDER]);
  const expected = report.engines.find((e) => e.available && e.autoEligible)!.name;
  assert.equal(report.auto, expected);
  assert.match(text, new RegExp(`^auto → ${expected}`, 'm'));
  const ref = report.engines.find((e) => e.name === 'ref')!;
  assert.ok(ref.available);
  assert.equal(ref.precision, 'float64');
});

test('doctor reports no CUDA, naming the missing provider library, when the library is absent', (t) => {
  const files = cudaProviderFiles();
  if (!files.missing.length) return t.skip('the CUDA provider libraries are installed here');
  const cuda = here.report.engines.find((e) => e.name === 'cuda')!;
  assert.equal(cuda.available, false);
  assert.match(cuda.detail, /libonnxruntime_providers_cuda\.so/);
  assert.ok(!cuda.device, 'an unavailable engine claims no device');
  assert.notEqual(here.report.auto, 'cuda');
  assert.match(here.text, /cuda\s+unavailable/);
});

test('doctor never presents a CPU software adapter as a GPU, and auto does not pick it', () => {
  const { report, text } = here;
  const webgpu = report.engines.find((e) => e.name === 'webgpu')!;
  const adapter = report.webgpu_adapter;
  if (/llvmpipe|lavapipe|swiftshader/i.test(adapter.name ?? '')) assert.equal(adapter.kind, 'cpu');
  if (adapter.kind !== 'gpu') {
    assert.equal(webgpu.autoEligible, false);
    assert.notEqual(report.auto, 'webgpu');
    if (webgpu.available) assert.match(webgpu.device!, /NOT a GPU|not identified/);
  }
  if (adapter.kind === 'cpu') assert.match(text, /CPU software adapter, not a GPU/);
});

test('doctor without any Vulkan driver: WebGPU unavailable with the reason, auto falls back', async () => {
  const { report } = await doctor({ VK_DRIVER_FILES: '/nonexistent/icd.json' });
  const webgpu = report.engines.find((e) => e.name === 'webgpu')!;
  assert.equal(webgpu.available, false);
  assert.match(webgpu.detail, /does not start: .*adapter/i);
  assert.equal(report.webgpu_adapter.kind, 'unknown');
  assert.notEqual(report.auto, 'webgpu');
});
