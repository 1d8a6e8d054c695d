/**
 * `npm run check:hf [-- --keep DIR]`: the opt-in check of the PyTorch shim against a real transformers
 * LlavaForConditionalGeneration (python/tests/hf_check.py). Not part of `npm test`: it needs transformers, which
 * CI cannot install. The interpreter is VIRAL_LENS_PYTHON (else python3); it must have torch and transformers.
 */
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const python = process.env.VIRAL_LENS_PYTHON || 'python3';
const r = spawnSync(python, [join(root, 'python', 'tests', 'hf_check.py'), ...process.argv.slice(2)], { cwd: root, stdio: 'inherit' });
if (r.error) {
  console.error(`check:hf: cannot run ${python}: ${r.error.message} (set VIRAL_LENS_PYTHON to a python with torch and transformers)`);
  process.exit(2);
}
process.exit(r.status ?? 1);
