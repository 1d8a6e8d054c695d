"""Captures written by the Python shim pass the TypeScript reader/validator (src/store/capture.ts).

Skipped when node or the repository's node_modules (tsx) are not available.
"""

import json
import os
import shutil
import subprocess
import tempfile
import unittest

from common import ROOT, SMALL, as_capture_batch, torch  # noqa: F401

import viral_lens_torch as vl  # noqa: E402
from tiny_llava import TinyLlavaForConditionalGeneration, make_hf_batch  # noqa: E402

STORE = os.path.join(ROOT, "src", "store", "capture.ts")
TSX = os.path.join(ROOT, "node_modules", "tsx")

SCRIPT = """
import { validateCapture, openCapture, CaptureWriter } from %s;
const out: Record<string, unknown> = {};
for (const dir of process.argv.slice(2)) {
  const problems = await validateCapture(dir, { checkValues: true });
  const entry: Record<string, unknown> = { problems };
  if (problems.length === 0) {
    const c = await openCapture(dir);
    const layers: Record<string, number[]> = {};
    for (const l of c.layers) {
      const t = await c.readLayer(l.name);
      layers[l.name] = [t.samples, t.tokens, t.dim, ...Array.from(t.data.slice(0, 4)), t.data[t.data.length - 1]];
    }
    const targets: Record<string, number[]> = {};
    for (const tg of c.targets) {
      const t = await c.readTarget(tg.name);
      targets[tg.name] = [t.samples, t.tokens, t.dim, t.data[0], t.data[t.data.length - 1]];
    }
    entry.layers = layers;
    entry.targets = targets;
    entry.ids = c.sampleIds;
    const w = await CaptureWriter.resume(dir);   // the TS writer accepts a Python capture for appending
    entry.resumedCount = w.count;
  }
  out[dir] = entry;
}
console.log(JSON.stringify(out));
"""


def _node():
    return shutil.which("node")


@unittest.skipUnless(_node() and os.path.isdir(TSX) and os.path.isfile(STORE),
                     "node / node_modules/tsx / src/store/capture.ts not available")
class TestTypeScriptReader(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="vl-xlang-")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def ts_check(self, dirs):
        script = os.path.join(self.tmp, "check.mts")
        with open(script, "w") as f:
            f.write(SCRIPT % json.dumps(STORE))
        res = subprocess.run([_node(), "--import", "tsx", script] + dirs, cwd=ROOT, capture_output=True, text=True,
                             timeout=300)
        self.assertEqual(res.returncode, 0, res.stderr[-3000:])
        return json.loads(res.stdout.strip().splitlines()[-1])

    def test_python_captures_pass_the_ts_validator(self):
        torch.manual_seed(0)
        model = TinyLlavaForConditionalGeneration(n_layers=2).eval()
        batches = [as_capture_batch(make_hf_batch(3, seed=s, start=3 * s), labels={"n": [s, s, s]})
                   for s in range(3)]
        full = vl.capture_dataset(model, batches, os.path.join(self.tmp, "full"), **SMALL)
        pooled = vl.capture_dataset(model, batches, os.path.join(self.tmp, "pooled"), pooling="mean",
                                    capture_attentions=True, dtype=torch.float32, checkpoint={"step": 3},
                                    variant="viral", **SMALL)
        bf16 = vl.capture_dataset(model, batches[:1], os.path.join(self.tmp, "bf16"), dtype=torch.bfloat16,
                                  layers=[0, 2], clip_target=False, **SMALL)
        # an empty capture (created, layers declared, no batch yet)
        empty = os.path.join(self.tmp, "empty")
        w = vl.CaptureWriter.create(empty, model={"name": "m"}, token_layout={"tokens": 16, "source_tokens": 16,
                                                                            "grid": [4, 4], "pooling": "none"})
        with vl.capture_hidden_states(model, w, **SMALL):
            pass
        self.assertEqual(os.listdir(empty), [], "no manifest before the first batch")
        # a capture that crashed and was resumed
        crashed = os.path.join(self.tmp, "crashed")
        vl.capture_dataset(model, batches[:2], crashed, **SMALL)
        with open(os.path.join(crashed, "layers", "000", "00002.safetensors"), "wb") as f:
            f.write(b"orphan")
        with self.assertLogs("viral_lens_torch", level="WARNING"):
            vl.capture_dataset(model, batches, crashed, **SMALL)

        report = self.ts_check([full, pooled, bf16, crashed])
        for d, entry in report.items():
            self.assertEqual(entry["problems"], [], d)
        for d in (full, pooled, bf16, crashed):
            _, layers, targets = vl.read_capture(d)
            got = report[d]
            self.assertEqual(got["ids"], [i for b in batches for i in b["ids"]][:len(got["ids"])])
            self.assertEqual(got["resumedCount"], len(got["ids"]))
            for name, t in layers.items():
                flat = t.float().flatten()
                want = list(t.shape) + flat[:4].tolist() + [flat[-1].item()]
                self.assertEqual(got["layers"][name], want, (d, name))
            for name, t in targets.items():
                flat = t.float().flatten()
                self.assertEqual(got["targets"][name], list(t.shape) + [flat[0].item(), flat[-1].item()], (d, name))


if __name__ == "__main__":
    unittest.main()
