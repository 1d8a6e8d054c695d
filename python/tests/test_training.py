"""Capture during training leaves the training bit-identical; Trainer callback; dashboard ingest streaming."""

import json
import os
import shutil
import tempfile
import threading
import unittest
import warnings
from http.server import BaseHTTPRequestHandler, HTTPServer
from types import SimpleNamespace

from common import SMALL, as_capture_batch, hooks_left, torch  # noqa: F401

import viral_lens_torch as vl  # noqa: E402
from viral_lens_torch import training  # noqa: E402
from format_check import validate_capture  # noqa: E402
from tiny_llava import TinyLlavaForConditionalGeneration, make_hf_batch, model_inputs  # noqa: E402

STEPS = 5


def make_model(seed=0):
    torch.manual_seed(seed)
    model = TinyLlavaForConditionalGeneration(n_layers=3, dropout=0.3, consume_rng_in_eval=True)
    vt = model.parts()[0]
    for p in vt.parameters():  # frozen vision tower, kept in eval mode while the rest trains
        p.requires_grad_(False)
    model.train()
    vt.eval()
    return model


def train(model, hook=None, steps=STEPS):
    """A tiny custom training loop with dropout on; ``hook(model, step)`` runs after each optimizer step."""
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    losses, grads = [], []
    torch.manual_seed(1234)
    for step in range(1, steps + 1):
        batch = make_hf_batch(4, seed=100 + step)
        out = model(**model_inputs(batch), labels=batch["labels_lm"])
        opt.zero_grad()
        out.loss.backward()
        losses.append(out.loss.detach().clone())
        grads.append([p.grad.detach().clone() for p in model.parameters() if p.grad is not None])
        opt.step()
        if hook is not None:
            hook(model, step)
    return losses, grads


def probes():
    return [as_capture_batch(make_hf_batch(3, seed=900 + s, start=3 * s), labels={"probe": [s] * 3})
            for s in range(2)]


class TrainingTestCase(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="vl-train-")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)


class TestTrainingCapture(TrainingTestCase):
    def assert_identical(self, a, b):
        la, ga = a
        lb, gb = b
        self.assertEqual(len(la), len(lb))
        for x, y in zip(la, lb):
            self.assertTrue(torch.equal(x, y), "loss differs: %r vs %r" % (x, y))
        for gx, gy in zip(ga, gb):
            self.assertEqual(len(gx), len(gy))
            for x, y in zip(gx, gy):
                self.assertTrue(torch.equal(x, y), "gradient differs")

    def test_capture_during_training_leaves_training_bit_identical(self):
        base_model = make_model()
        baseline = train(base_model)

        model = make_model()
        modes_before = [m.training for m in model.modules()]
        paths = []

        def hook(m, step):
            if step % 2 == 0 or step == 1:
                paths.append(vl.capture_during_training(m, probes(), step, self.tmp, "run-a", **SMALL))
                self.assertEqual([x.training for x in m.modules()], modes_before)
                self.assertEqual(hooks_left(m), [])

        with_capture = train(model, hook)
        self.assert_identical(baseline, with_capture)
        for a, b in zip(base_model.parameters(), model.parameters()):
            self.assertTrue(torch.equal(a, b))
        self.assertEqual(paths, [os.path.join(self.tmp, "run-a", "step-%d" % s) for s in (1, 2, 4)])
        for p in paths:
            m = validate_capture(p)
            self.assertEqual(m["samples"]["count"], 6)
            self.assertEqual(m["checkpoint"]["step"], int(p.rsplit("-", 1)[1]))
        # the captures differ between steps (the model trained in between)
        _, l1, _ = vl.read_capture(paths[0])
        _, l4, _ = vl.read_capture(paths[2])
        self.assertFalse(torch.equal(l1["blocks.2.out"], l4["blocks.2.out"]))
        # and each equals an eval-mode forward of the model at that point (dropout off)
        m = make_model()
        train(m, steps=1)
        m.eval()
        with torch.no_grad():
            b = probes()[0]
            ref = m(**b["inputs"], output_hidden_states=True)
        mask = b["inputs"]["input_ids"] == m.config.image_token_index
        self.assertTrue(torch.equal(l1["blocks.0.out"][:3], ref.hidden_states[1][mask].reshape(3, 16, -1).half()))

    def test_the_check_is_sensitive(self):
        """Without the RNG restore (plain capture_dataset) the model's eval-time RNG draw shifts dropout masks."""
        baseline = train(make_model())

        def hook(m, step):
            modes = [x.training for x in m.modules()]
            vl.capture_dataset(m, probes(), os.path.join(self.tmp, "plain-%d" % step), **SMALL)
            self.assertEqual([x.training for x in m.modules()], modes)

        changed = train(make_model(), hook)
        self.assertFalse(all(torch.equal(x, y) for x, y in zip(baseline[0][1:], changed[0][1:])))

    def test_rng_states_restored(self):
        import random
        model = make_model()
        torch.manual_seed(5)
        random.seed(5)
        cpu = torch.get_rng_state()
        py = random.getstate()
        vl.capture_during_training(model, probes(), 3, self.tmp, "rng", **SMALL)
        self.assertTrue(torch.equal(cpu, torch.get_rng_state()))
        self.assertEqual(py, random.getstate())
        # an existing complete step is left as is (resume = nothing to do)
        before = os.path.getmtime(os.path.join(self.tmp, "rng", "step-3", "manifest.json"))
        vl.capture_during_training(model, probes(), 3, self.tmp, "rng", **SMALL)
        self.assertEqual(before, os.path.getmtime(os.path.join(self.tmp, "rng", "step-3", "manifest.json")))

    def test_modes_and_rng_restored_on_error(self):
        model = make_model()
        modes = [m.training for m in model.modules()]
        cpu = torch.get_rng_state()
        bad = [as_capture_batch(make_hf_batch(2))]
        with self.assertRaises(vl.ImageTokenCountError):
            vl.capture_during_training(model, bad, 1, self.tmp, "err", expected_image_tokens=9, grid=(3, 3),
                                       clip_target=False)
        self.assertEqual([m.training for m in model.modules()], modes)
        self.assertTrue(torch.equal(cpu, torch.get_rng_state()))
        self.assertEqual(hooks_left(model), [])


class TestAutocast(TrainingTestCase):
    def test_clip_target_is_what_the_llm_received_under_bf16_autocast(self):
        # what accelerate does for a Trainer with bf16=True: the model's forward runs under autocast, the code
        # around it (our capture) does not
        torch.manual_seed(0)
        model = TinyLlavaForConditionalGeneration(n_layers=2).eval()
        model.forward = torch.autocast("cpu", dtype=torch.bfloat16)(model.forward)
        received = []
        proj = vl.discover(model).projector
        handle = proj.register_forward_pre_hook(lambda m, args: received.append(args[0].detach().clone()))
        try:
            out = vl.capture_during_training(model, probes(), 7, self.tmp, "bf16", dtype=torch.float32, **SMALL)
        finally:
            handle.remove()
        m, _, targets = vl.read_capture(out)
        want = torch.cat(received, 0)  # fp32 residual stream, but every matmul of the tower ran in bf16
        self.assertTrue(torch.equal(targets["clip"], want.float()),
                        "max |diff| %g" % (targets["clip"] - want.float()).abs().max())
        clip = [e for e in m["targets"] if e["name"] == "clip"][0]
        self.assertEqual(clip["compute"]["dtype"], str(want.dtype).replace("torch.", ""))
        self.assertEqual(clip["compute"]["autocast"], "cpu:bfloat16")
        # without autocast: fp32 features, no autocast recorded
        del model.forward
        m2, _, _ = vl.read_capture(vl.capture_dataset(model, probes(), os.path.join(self.tmp, "fp32"), **SMALL))
        clip2 = [e for e in m2["targets"] if e["name"] == "clip"][0]
        self.assertEqual((clip2["compute"]["dtype"], clip2["compute"]["autocast"]), ("float32", None))


class TestRunName(TrainingTestCase):
    def test_run_name_may_not_leave_out_root(self):
        root = os.path.join(self.tmp, "x", "y", "runs")  # deep enough that a wrong write still lands in self.tmp
        model = TinyLlavaForConditionalGeneration(n_layers=1).eval()
        for bad in ("../..", "..", "a/../../b", os.path.join(self.tmp, "abs"), "", "..\\x"):
            with self.assertRaises(ValueError, msg=repr(bad)) as ctx:
                vl.capture_during_training(model, probes(), 1, root, bad, **SMALL)
            self.assertIn("run_name", str(ctx.exception))
            with self.assertRaises(ValueError):
                vl.ViralLensCallback(probes(), 1, root, bad, **SMALL)
        self.assertEqual(sorted(os.listdir(self.tmp)), [], "nothing may be written for a refused run_name")
        # sub-folders inside out_root are fine
        self.assertEqual(vl.step_dir(root, "exp1/run-a", 3), os.path.join(root, "exp1/run-a", "step-3"))


class TestCallback(TrainingTestCase):
    def test_callback_schedule(self):
        cb = vl.ViralLensCallback(probes(), every_n_steps=2, out_root=self.tmp, run_name="hf-run", **SMALL)
        if not training.HAVE_TRANSFORMERS:
            self.assertIs(type(cb).__mro__[1], object)
        else:  # pragma: no cover - transformers not installed in CI
            from transformers import TrainerCallback
            self.assertIsInstance(cb, TrainerCallback)
        model = make_model()
        control = SimpleNamespace()
        state = SimpleNamespace(global_step=0, is_world_process_zero=True)
        self.assertIs(cb.on_train_begin(None, state, control, model=model), control)
        baseline = train(make_model())

        def hook(m, step):
            state.global_step = step
            cb.on_step_end(None, state, control, model=m)

        self.assertEqual(len(train(model, hook)[0]), STEPS)
        self.assertEqual([os.path.basename(p) for p in cb.captured], ["step-0", "step-2", "step-4"])
        for p in cb.captured:
            validate_capture(p)
        # the callback did not change training either
        fresh = make_model()
        state2 = SimpleNamespace(global_step=0, is_world_process_zero=True)
        cb2 = vl.ViralLensCallback(probes(), every_n_steps=1, out_root=os.path.join(self.tmp, "b"), run_name="r",
                                   **SMALL)
        cb2.on_train_begin(None, state2, control, model=fresh)

        def hook2(m, step):
            state2.global_step = step
            cb2.on_step_end(None, state2, control, model=m)

        again = train(fresh, hook2)
        for x, y in zip(baseline[0], again[0]):
            self.assertTrue(torch.equal(x, y))
        # non-main processes do not capture
        cb3 = vl.ViralLensCallback(probes(), 1, os.path.join(self.tmp, "c"), "r", **SMALL)
        cb3.on_step_end(None, SimpleNamespace(global_step=1, is_world_process_zero=False), control, model=model)
        self.assertEqual(cb3.captured, [])
        with self.assertRaises(ValueError):
            vl.ViralLensCallback(probes(), 0, self.tmp, "r")


class _Handler(BaseHTTPRequestHandler):
    received = []

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.received.append((self.path, self.headers.get("Authorization"), json.loads(body)))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args):
        pass


class TestIngest(TrainingTestCase):
    def test_streams_each_batch(self):
        _Handler.received = []
        server = HTTPServer(("127.0.0.1", 0), _Handler)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            url = "http://127.0.0.1:%d/" % server.server_address[1]
            model = make_model()
            vl.capture_during_training(model, probes(), 7, self.tmp, "streamed", ingest_url=url, token="s3cret",
                                       **SMALL)
        finally:
            server.shutdown()
            server.server_close()
        self.assertEqual(len(_Handler.received), 2)  # one POST per batch
        path, auth, body = _Handler.received[-1]
        self.assertEqual(path, "/api/ingest")
        self.assertEqual(auth, "Bearer s3cret")
        self.assertEqual(body["run"], "streamed")
        self.assertEqual(body["step"], 7)
        self.assertEqual(body["manifest"]["samples"]["count"], 6)
        self.assertEqual(_Handler.received[0][2]["manifest"]["samples"]["count"], 3)

    def test_failures_are_warnings(self):
        import socket
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()  # nothing listens there now
        model = TinyLlavaForConditionalGeneration(n_layers=1).eval()
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            out = vl.capture_dataset(model, probes(), os.path.join(self.tmp, "cap"),
                                     ingest_url="http://127.0.0.1:%d" % port, **SMALL)
        self.assertEqual(validate_capture(out)["samples"]["count"], 6)
        got = [w for w in caught if issubclass(w.category, vl.IngestWarning)]
        self.assertEqual(len(got), 2)
        self.assertIn("/api/ingest", str(got[0].message))


if __name__ == "__main__":
    unittest.main()
