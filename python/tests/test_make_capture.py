"""make_capture.py (the fixture for the cross-language TS test) is valid and deterministic."""

import json
import os
import shutil
import subprocess
import sys
import tempfile
import unittest

from common import HERE, torch  # noqa: F401

import viral_lens_torch as vl  # noqa: E402
from format_check import capture_files, referenced_files, validate_capture  # noqa: E402


class TestMakeCapture(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="vl-make-")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def run_script(self, out, *args):
        env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1")
        res = subprocess.run([sys.executable, os.path.join(HERE, "make_capture.py"), out] + list(args),
                             capture_output=True, text=True, env=env, timeout=300)
        self.assertEqual(res.returncode, 0, res.stderr)
        return json.loads(res.stdout.strip().splitlines()[-1])

    def test_valid_and_byte_identical(self):
        a, b = os.path.join(self.tmp, "a"), os.path.join(self.tmp, "b")
        summary = self.run_script(a)
        self.run_script(b)
        self.assertEqual(summary["samples"], 24)
        self.assertEqual(summary["layers"], ["embed", "blocks.0.out", "blocks.1.out", "blocks.2.out", "blocks.3.out"])
        self.assertEqual(summary["targets"], {"clip": [16, 24]})
        m = validate_capture(a)
        self.assertEqual([s["count"] for s in m["layers"][0]["shards"]], [10, 10, 4])
        self.assertEqual(m["token_layout"], {"kind": "image", "tokens": 16, "source_tokens": 16, "grid": [4, 4],
                                             "pooling": "none"})
        self.assertEqual(set(m["labels"]), {"count", "colour_at_0_0"})
        self.assertEqual(len(set(m["labels"]["colour_at_0_0"])), 4)
        self.assertEqual(capture_files(a), capture_files(b))
        self.assertEqual(capture_files(a), referenced_files(m))
        for rel in capture_files(a):
            with open(os.path.join(a, rel), "rb") as fa, open(os.path.join(b, rel), "rb") as fb:
                self.assertEqual(fa.read(), fb.read(), rel)
        _, layers, targets = vl.read_capture(a)
        self.assertEqual(tuple(layers["blocks.3.out"].shape), (24, 16, 32))
        self.assertEqual(layers["embed"].dtype, torch.float16)
        self.assertTrue(torch.isfinite(layers["blocks.3.out"].float()).all())
        # re-running into an existing capture overwrites it
        self.run_script(a, "--pooling", "mean")
        self.assertEqual(validate_capture(a)["token_layout"]["tokens"], 1)


if __name__ == "__main__":
    unittest.main()
