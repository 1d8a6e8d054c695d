/**
 * `npm run bench:capture [-- --batches 8 ...]`: the PyTorch shim's capture overhead (python/bench_capture.py)
 * with a Python that can import torch (Debian's /usr/bin/python3 with python3-torch, else python3 on PATH).
 */
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const python = ['/usr/bin/python3', 'python3'].find((py) => spawnSync(py, ['-c', 'import torch'], { stdio: 'ignore' }).status === 0);
if (!python) {
  console.error('bench:capture: no python3 that can import torch (apt-get install python3-torch)');
  process.exit(2);
}
const r = spawnSync(python, [join(root, 'python', 'bench_capture.py'), ...process.argv.slice(2)], { stdio: 'inherit' });
process.exit(r.status ?? 1);
