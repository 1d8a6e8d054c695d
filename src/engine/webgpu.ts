import { execFile } from 'node:child_process';
import { readdir, readFile } from 'node:fs/promises';
import { homedir } from 'node:os';
import { join } from 'node:path';
import { uploadModel } from './gpu-graphs.js';

/**
 * Which adapter onnxruntime's WebGPU EP (Dawn, Vulkan backend on Linux) runs on. onnxruntime does not report it, and
 * a result must never claim a GPU it did not use: Dawn happily takes a CPU Vulkan driver (Mesa's lavapipe/llvmpipe,
 * SwiftShader) when no GPU is present. Two sources, best first:
 *
 * 1. Mesa's device-select layer (installed with Mesa's Vulkan drivers) lists every Vulkan device the process can see,
 *    with its type, when MESA_VK_DEVICE_SELECT=list, and exits. A child process starts a WebGPU session under that
 *    variable; of the listed devices Dawn takes the first by type: discrete GPU, integrated GPU, then the rest
 *    (CPU last), which is Dawn's default (high-performance) adapter order.
 * 2. Without the layer: the Vulkan driver manifests (ICD JSON files). If every installed driver is a CPU driver the
 *    adapter is a CPU adapter; otherwise the adapter cannot be named, and we say so rather than guess.
 */
export interface VulkanDevice {
  name: string;
  /** As Mesa prints it: `discrete GPU`, `integrated GPU`, `virtual GPU`, `CPU`, `other`. */
  type: string;
  vendorId: string;
  deviceId: string;
}

export interface WebGpuAdapterInfo {
  /** `gpu`: a hardware GPU adapter; `cpu`: a software rasteriser; `unknown`: could not be determined. */
  kind: 'gpu' | 'cpu' | 'unknown';
  /** Adapter name when known, e.g. `llvmpipe (LLVM 19.1.7, 256 bits)`. */
  name: string | null;
  /** How the answer was obtained, for `doctor`. */
  source: string;
  devices: VulkanDevice[];
  /** Vulkan driver manifests found (library names). */
  drivers: string[];
}

const CPU_DRIVER = /lvp|lavapipe|swiftshader|llvmpipe/i;
const TYPE_RANK = ['discrete GPU', 'integrated GPU', 'virtual GPU', 'other', 'CPU'];

/** Parses `MESA_VK_DEVICE_SELECT=list` output: `  GPU 0: 10005:0 "llvmpipe (LLVM 15.0.6, 256 bits)" CPU`. */
export function parseDeviceSelectList(text: string): VulkanDevice[] | null {
  if (!/selectable devices:/.test(text)) return null;
  const out: VulkanDevice[] = [];
  for (const m of text.matchAll(/GPU \d+: ([0-9a-fA-F]+):([0-9a-fA-F]+) "([^"]*)" ([^\n\r]+)/g)) {
    out.push({ vendorId: m[1]!, deviceId: m[2]!, name: m[3]!, type: m[4]!.replace(/\s*default\s*$/i, '').trim() });
  }
  return out;
}

/** The device Dawn picks by default among `devices`: best type rank, then enumeration order. */
export function dawnDefaultDevice(devices: VulkanDevice[]): VulkanDevice | null {
  let best: VulkanDevice | null = null;
  let bestRank = Infinity;
  for (const d of devices) {
    const r = TYPE_RANK.indexOf(d.type);
    const rank = r < 0 ? TYPE_RANK.length : r;
    if (rank < bestRank) {
      best = d;
      bestRank = rank;
    }
  }
  return best;
}

/** Vulkan ICD manifests the loader would read (VK_DRIVER_FILES / VK_ICD_FILENAMES override the standard folders). */
export async function vulkanDrivers(env: NodeJS.ProcessEnv = process.env): Promise<string[]> {
  const explicit = env.VK_DRIVER_FILES ?? env.VK_ICD_FILENAMES;
  let files: string[] = [];
  if (explicit) files = explicit.split(':').filter(Boolean);
  else {
    const dirs = [
      join(env.XDG_CONFIG_HOME ?? join(homedir(), '.config'), 'vulkan/icd.d'),
      '/etc/xdg/vulkan/icd.d',
      '/etc/vulkan/icd.d',
      join(env.XDG_DATA_HOME ?? join(homedir(), '.local/share'), 'vulkan/icd.d'),
      '/usr/local/share/vulkan/icd.d',
      '/usr/share/vulkan/icd.d',
    ];
    for (const dir of dirs) {
      try {
        for (const f of await readdir(dir)) if (f.endsWith('.json')) files.push(join(dir, f));
      } catch {
        // a missing folder is the normal case
      }
    }
  }
  const libs: string[] = [];
  for (const f of files) {
    try {
      const json = JSON.parse(await readFile(f, 'utf8')) as { ICD?: { library_path?: string } };
      libs.push(json.ICD?.library_path ?? f);
    } catch {
      // An unreadable manifest provides no driver; the loader skips it too.
    }
  }
  return libs;
}

let cached: Promise<WebGpuAdapterInfo> | undefined;

/** Probes once per process (a child process, about a second); `refresh` forces a new probe. */
export function webGpuAdapter(refresh = false): Promise<WebGpuAdapterInfo> {
  if (!cached || refresh) cached = probe();
  return cached;
}

/**
 * Linux GPU device nodes a hardware Vulkan driver opens (DRM render/card nodes, NVIDIA, WSL2's dxg, Adreno, Mali).
 * Without any, Dawn can only find a software adapter, and the child-process probe (about a second, on every CLI call
 * with `--engine auto`) cannot change the answer.
 */
async function gpuDeviceNodes(): Promise<string[]> {
  const list = async (dir: string, re: RegExp) => (await readdir(dir).catch(() => [] as string[])).filter((f) => re.test(f)).map((f) => join(dir, f));
  return [...(await list('/dev/dri', /^(renderD|card)\d+$/)), ...(await list('/dev', /^(nvidia\d+|dxg|kgsl-3d\d+|mali\d+)$/))];
}

async function probe(): Promise<WebGpuAdapterInfo> {
  const drivers = await vulkanDrivers();
  if (process.platform === 'linux' && (await gpuDeviceNodes()).length === 0) {
    const software = drivers.filter((d) => CPU_DRIVER.test(d)).map((d) => d.split('/').pop() ?? d);
    const source = 'no GPU device node (/dev/dri/renderD*, /dev/nvidia*, /dev/dxg) on this machine, so no hardware adapter; device list not probed';
    return software.length
      ? { kind: 'cpu', name: `software Vulkan driver (${software.join(', ')})`, source, devices: [], drivers }
      : { kind: 'unknown', name: null, source: `${source}; no software Vulkan driver installed either`, devices: [], drivers };
  }
  const listing = await listVulkanDevices();
  if (listing) {
    const chosen = dawnDefaultDevice(listing);
    return {
      kind: !chosen ? 'unknown' : chosen.type === 'CPU' ? 'cpu' : 'gpu',
      name: chosen?.name ?? null,
      source: 'Vulkan device list from the Mesa device-select layer; Dawn default order (discrete > integrated > CPU)',
      devices: listing,
      drivers,
    };
  }
  const base = drivers.map((d) => d.split('/').pop() ?? d);
  const nvidia = identifyNvidia(drivers, await nvidiaGpuNames());
  if (nvidia) return { ...nvidia, devices: [], drivers };
  if (drivers.length > 0 && drivers.every((d) => CPU_DRIVER.test(d))) {
    return { kind: 'cpu', name: `software Vulkan driver (${base.join(', ')})`, source: 'only CPU Vulkan drivers are installed', devices: [], drivers };
  }
  return {
    kind: 'unknown',
    name: null,
    source: drivers.length
      ? `adapter not identifiable without Mesa's device-select layer; Vulkan drivers installed: ${base.join(', ')}`
      : 'no Vulkan driver installed (see .ci/parts/webgpu.sh for a CPU one, or install the GPU vendor\'s Vulkan driver)',
    devices: [],
    drivers,
  };
}

/** NVIDIA's Vulkan ICD (the proprietary driver registers libGLX_nvidia.so.0, older ones libnvidia-vulkan*). */
const NVIDIA_DRIVER = /libGLX_nvidia|libnvidia/i;

/**
 * Without Mesa's device-select layer (NVIDIA machines rarely have Mesa's Vulkan drivers), the NVIDIA ICD together
 * with the GPUs the NVIDIA kernel driver lists identifies the adapter: Dawn's default (high-performance) order takes a
 * discrete GPU before any CPU driver, and NVIDIA's Vulkan devices are the GPUs its kernel driver reports. The name is
 * the first GPU's (Dawn's first discrete adapter is Vulkan device 0, the same order as the driver's).
 */
export function identifyNvidia(drivers: string[], gpuNames: string[]): Pick<WebGpuAdapterInfo, 'kind' | 'name' | 'source'> | null {
  const icd = drivers.find((d) => NVIDIA_DRIVER.test(d));
  if (!icd || gpuNames.length === 0) return null;
  const others = gpuNames.length > 1 ? ` (${gpuNames.length} NVIDIA GPUs: ${gpuNames.join(', ')})` : '';
  return {
    kind: 'gpu',
    name: gpuNames[0]!,
    source: `NVIDIA Vulkan driver ${icd.split('/').pop()} and the GPUs its kernel driver lists${others}; Dawn prefers a discrete GPU`,
  };
}

/** GPU names from the NVIDIA kernel driver (/proc/driver/nvidia/gpus/…/information), else nvidia-smi; [] if neither. */
export async function nvidiaGpuNames(): Promise<string[]> {
  const names: string[] = [];
  try {
    const dir = '/proc/driver/nvidia/gpus';
    for (const bus of (await readdir(dir)).sort()) {
      const info = await readFile(join(dir, bus, 'information'), 'utf8').catch(() => '');
      const m = /^Model:\s*(.+)$/m.exec(info);
      if (m) names.push(m[1]!.trim());
    }
  } catch {
    // no NVIDIA kernel driver
  }
  if (names.length) return names;
  return new Promise((resolve) => {
    execFile('nvidia-smi', ['--query-gpu=name', '--format=csv,noheader'], { timeout: 15_000 }, (err, stdout) => {
      resolve(err ? [] : stdout.split('\n').map((l) => l.trim()).filter(Boolean));
    });
  });
}

/** Runs a WebGPU session in a child process under MESA_VK_DEVICE_SELECT=list; null when the layer is absent. */
function listVulkanDevices(): Promise<VulkanDevice[] | null> {
  const ortUrl = import.meta.resolve('onnxruntime-node');
  const model = Buffer.from(uploadModel()).toString('base64');
  const script =
    `const ort = await import(${JSON.stringify(ortUrl)});` +
    `await ort.InferenceSession.create(Buffer.from(${JSON.stringify(model)}, 'base64'), { executionProviders: ['webgpu'] }).catch(() => {});`;
  return new Promise((resolve) => {
    execFile(
      process.execPath,
      ['--input-type=module', '-e', script],
      { env: { ...process.env, MESA_VK_DEVICE_SELECT: 'list' }, timeout: 60_000, maxBuffer: 1 << 20 },
      (_err, stdout, stderr) => resolve(parseDeviceSelectList(`${stdout}\n${stderr}`)),
    );
  });
}

/** One line for an engine's `device` field. */
export function describeAdapter(a: WebGpuAdapterInfo): string {
  if (a.kind === 'cpu') return `adapter ${a.name ?? 'unknown'} — a CPU software adapter, NOT a GPU`;
  if (a.kind === 'gpu') return `adapter ${a.name}`;
  return `adapter not identified (${a.source})`;
}
