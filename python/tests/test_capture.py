"""Hidden-state capture: values, pooling, discovery, hook removal, image-token checks, targets, shuffle, attention."""

import inspect
import os
import shutil
import tempfile
import threading
import time
import unittest
from types import SimpleNamespace
from unittest import mock

from common import SMALL, as_capture_batch, hooks_left, torch  # noqa: F401  (sets sys.path, skips without torch)

import torch.nn as nn  # noqa: E402

import viral_lens_torch as vl  # noqa: E402
from format_check import validate_capture  # noqa: E402
from tiny_llava import (  # noqa: E402
    IMAGE_TOKEN,
    NUM_PATCHES,
    TinyLlavaForConditionalGeneration,
    TinyLlavaLlamaForCausalLM,
    make_hf_batch,
    make_repo_batch,
    model_inputs,
)


def reference_states(out, mask, n_layers):
    """hidden_states-style reference at the image positions: index 0..L-1 from output_hidden_states, index L is
    the RAW output of the last decoder layer (HF's hidden_states[-1] has the final norm applied)."""
    b = mask.shape[0]
    refs = {}
    for i in range(n_layers + 1):
        h = out.hidden_states[i] if i < n_layers else out.raw_last_hidden_state
        refs[vl.layer_name(i)] = h[mask].reshape(b, NUM_PATCHES, -1)
    return refs


class CaptureTestCase(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="vl-test-")

    def tearDown(self):
        shutil.rmtree(self.tmp, ignore_errors=True)

    def path(self, name):
        return os.path.join(self.tmp, name)


class TestCaptureValues(CaptureTestCase):
    def _check_hf(self, layout, padding_side):
        torch.manual_seed(0)
        model = TinyLlavaForConditionalGeneration(layout=layout, n_layers=3).eval()
        batch = make_hf_batch(4, seed=1, padding_side=padding_side)
        with torch.no_grad():
            plain = model(**model_inputs(batch), output_hidden_states=True)
            writer = vl.CaptureWriter.create(self.path(layout))
            with vl.capture_hidden_states(model, writer, dtype=torch.float32, **SMALL) as cap:
                self.assertEqual(cap.layout.kind, "hf-llava" if layout == "hf" else "hf-llava-legacy")
                cap.expect(batch["ids"])
                out = model(**model_inputs(batch), output_hidden_states=True)
        # hooks do not change the model's outputs
        self.assertTrue(torch.equal(plain.logits, out.logits))
        manifest, layers, _ = vl.read_capture(self.path(layout))
        validate_capture(self.path(layout))
        self.assertEqual([e["name"] for e in manifest["layers"]], ["embed", "blocks.0.out", "blocks.1.out",
                                                                    "blocks.2.out"])
        self.assertEqual(manifest["samples"]["ids"], batch["ids"])
        refs = reference_states(out, batch["input_ids"] == IMAGE_TOKEN, 3)
        for name, ref in refs.items():
            self.assertEqual(layers[name].dtype, torch.float32)
            self.assertTrue(torch.equal(layers[name], ref), name)
        # HF's last hidden_states entry is the final-norm output of the raw last layer we store
        last_norm = model.parts()[2].norm(layers["blocks.2.out"])
        mask = batch["input_ids"] == IMAGE_TOKEN
        self.assertTrue(torch.allclose(last_norm, out.hidden_states[-1][mask].reshape(4, NUM_PATCHES, -1),
                                       atol=1e-6))

    def test_hf_layout_matches_output_hidden_states(self):
        self._check_hf("hf", "right")

    def test_hf_legacy_layout_left_padding(self):
        self._check_hf("hf-legacy", "left")

    def test_first_layer_called_with_hidden_states_as_keyword(self):
        # The embed pre-hook sees a keyword hidden_states only through register_forward_pre_hook(with_kwargs=True)
        # (torch >= 2.0); torch 1.13 hooks get the positional arguments only, so there it must be a clear error.
        torch.manual_seed(0)
        model = TinyLlavaForConditionalGeneration(n_layers=2).eval()
        model.parts()[2].hidden_states_as_keyword = True
        batch = make_hf_batch(2, seed=3)
        writer = vl.CaptureWriter.create(self.path("kw"))
        with_kwargs = "with_kwargs" in inspect.signature(nn.Module.register_forward_pre_hook).parameters
        with torch.no_grad(), vl.capture_hidden_states(model, writer, dtype=torch.float32, **SMALL) as cap:
            cap.expect(batch["ids"])
            if not with_kwargs:
                with self.assertRaisesRegex(TypeError, "without hidden states as its first argument"):
                    model(**model_inputs(batch))
                return
            out = model(**model_inputs(batch), output_hidden_states=True)
        _, layers, _ = vl.read_capture(self.path("kw"))
        refs = reference_states(out, batch["input_ids"] == IMAGE_TOKEN, 2)
        self.assertEqual(sorted(layers), sorted(refs))
        for name, ref in refs.items():
            self.assertTrue(torch.equal(layers[name], ref), name)

    def test_llava_repo_layout(self):
        torch.manual_seed(0)
        model = TinyLlavaLlamaForCausalLM(n_layers=3).eval()
        batch = make_repo_batch(3, seed=2)
        writer = vl.CaptureWriter.create(self.path("repo"))
        with torch.no_grad(), vl.capture_hidden_states(model, writer, dtype=torch.float32, **SMALL) as cap:
            self.assertEqual(cap.layout.kind, "llava-repo")
            cap.expect(batch["ids"])
            out = model(**model_inputs(batch), output_hidden_states=True)
        _, layers, _ = vl.read_capture(self.path("repo"))
        for name, ref in reference_states(out, out.image_mask, 3).items():
            self.assertTrue(torch.equal(layers[name], ref), name)
        # the helper reproduces the model's own splice positions
        helper = vl.LlavaRepoImageMask(NUM_PATCHES)(batch["input_ids"], batch["attention_mask"])
        self.assertTrue(torch.equal(helper, out.image_mask))

    def test_llava_repo_user_mask_function(self):
        torch.manual_seed(0)
        model = TinyLlavaLlamaForCausalLM(n_layers=2).eval()
        batch = make_repo_batch(2, seed=3)
        with torch.no_grad():
            truth = model(**model_inputs(batch)).image_mask
        calls = []

        def mask_fn(input_ids, attention_mask):
            calls.append(input_ids.shape)
            return truth

        writer = vl.CaptureWriter.create(self.path("repo-fn"))
        with torch.no_grad(), vl.capture_hidden_states(model, writer, image_token_mask=mask_fn, **SMALL):
            model(**model_inputs(batch))
        self.assertEqual(len(calls), 1)
        self.assertEqual(writer.count, 2)

    def test_mean_pooling_and_default_fp16(self):
        torch.manual_seed(0)
        model = TinyLlavaForConditionalGeneration(n_layers=2).eval()
        batch = make_hf_batch(3, seed=4)
        w_mean = vl.CaptureWriter.create(self.path("mean"))
        w_f16 = vl.CaptureWriter.create(self.path("f16"))
        with torch.no_grad():
            with vl.capture_hidden_states(model, w_mean, pooling="mean", dtype=torch.float32, **SMALL):
                out = model(**model_inputs(batch), output_hidden_states=True)
            with vl.capture_hidden_states(model, w_f16, **SMALL):  # default dtype float16, pooling none
                model(**model_inputs(batch))
        refs = reference_states(out, batch["input_ids"] == IMAGE_TOKEN, 2)
        m_mean = validate_capture(self.path("mean"))
        self.assertEqual(m_mean["token_layout"], {"kind": "image", "tokens": 1, "source_tokens": NUM_PATCHES,
                                                  "grid": [4, 4], "pooling": "mean"})
        _, pooled, _ = vl.read_capture(self.path("mean"))
        _, f16, _ = vl.read_capture(self.path("f16"))
        for name, ref in refs.items():
            self.assertEqual(tuple(pooled[name].shape), (3, 1, ref.shape[-1]))
            self.assertTrue(torch.allclose(pooled[name], ref.mean(1, keepdim=True), atol=1e-6), name)
            self.assertEqual(f16[name].dtype, torch.float16)
            self.assertTrue(torch.equal(f16[name], ref.half()), name)
        with open(os.path.join(self.path("f16"), "layers/000/00000.safetensors"), "rb") as f:
            self.assertIn(b'"dtype":"F16"', f.read(200))

    def test_layer_subset_and_auto_ids(self):
        torch.manual_seed(0)
        model = TinyLlavaForConditionalGeneration(n_layers=3).eval()
        writer = vl.CaptureWriter.create(self.path("subset"))
        with torch.no_grad(), vl.capture_hidden_states(model, writer, layers=[0, 3], **SMALL):
            model(**model_inputs(make_hf_batch(2, seed=1)))
            model(**model_inputs(make_hf_batch(3, seed=2)))
        m = validate_capture(self.path("subset"))
        self.assertEqual([(e["name"], e["index"]) for e in m["layers"]], [("embed", 0), ("blocks.2.out", 3)])
        self.assertEqual(m["samples"]["ids"], ["sample-%06d" % i for i in range(5)])
        with self.assertRaises(ValueError):
            with vl.capture_hidden_states(model, writer, layers=[0, 4], **SMALL):
                pass

    def test_expect_captures_only_the_first_forward(self):
        """generate()-style: after cap.expect, later forwards (decode steps) are not captured."""
        torch.manual_seed(0)
        model = TinyLlavaForConditionalGeneration(n_layers=2).eval()
        batch = make_hf_batch(2, seed=5)
        writer = vl.CaptureWriter.create(self.path("gen"))
        with torch.no_grad(), vl.capture_hidden_states(model, writer, **SMALL) as cap:
            cap.expect(batch["ids"], labels={"n": [1, 2]})
            model(**model_inputs(batch))
            model(input_ids=batch["input_ids"][:, -1:])  # a decode step: no image tokens, ignored
        self.assertEqual(writer.ids, batch["ids"])
        self.assertEqual(cap.batches_written, 1)


class TestHooksRemoved(CaptureTestCase):
    def test_no_hooks_after_normal_exit_and_exception(self):
        for model in (TinyLlavaForConditionalGeneration(), TinyLlavaForConditionalGeneration(layout="hf-legacy"),
                      TinyLlavaLlamaForCausalLM()):
            model.eval()
            self.assertEqual(hooks_left(model), [])
            batch = make_hf_batch(2) if not isinstance(model, TinyLlavaLlamaForCausalLM) else make_repo_batch(2)
            writer = vl.CaptureWriter.create(self.path(type(model).__name__ + str(id(model))))
            with torch.no_grad(), vl.capture_hidden_states(model, writer, capture_attentions=True, **SMALL):
                self.assertNotEqual(hooks_left(model), [])
                model(**model_inputs(batch))
            self.assertEqual(hooks_left(model), [])
            # exception raised by user code inside the context
            with self.assertRaises(KeyError):
                with vl.capture_hidden_states(model, writer, **SMALL):
                    raise KeyError("boom")
            self.assertEqual(hooks_left(model), [])
            # exception raised inside a hook during the forward (wrong token count)
            other = vl.CaptureWriter.create(self.path("nine-%d" % id(model)))
            with self.assertRaises(vl.ImageTokenCountError):
                with torch.no_grad(), vl.capture_hidden_states(model, other, expected_image_tokens=9, grid=(3, 3)):
                    model(**model_inputs(batch))
            self.assertEqual(hooks_left(model), [])
            # exception raised by the writer after the forward
            with self.assertRaises(vl.DuplicateSampleError):
                with torch.no_grad(), vl.capture_hidden_states(model, writer, **SMALL) as cap:
                    cap.expect([writer.ids[0], "fresh"])
                    model(**model_inputs(batch))
            self.assertEqual(hooks_left(model), [])
            # shuffle context too
            with vl.shuffle_image_tokens(model, seed=1):
                self.assertNotEqual(hooks_left(model), [])
            self.assertEqual(hooks_left(model), [])
            # the model still works normally
            with torch.no_grad():
                model(**model_inputs(batch))


class TestErrors(CaptureTestCase):
    def test_wrong_image_token_count_names_both_numbers(self):
        torch.manual_seed(0)
        model = TinyLlavaForConditionalGeneration(n_layers=2).eval()
        batch = make_hf_batch(3, seed=6)
        ids = batch["input_ids"].clone()
        row = (ids[1] == IMAGE_TOKEN).nonzero()[0, 0]
        ids[1, row] = 5  # the mask function now reports 15 image tokens for sample 1
        writer = vl.CaptureWriter.create(self.path("count"))
        with self.assertRaises(vl.ImageTokenCountError) as ctx:
            with torch.no_grad(), vl.capture_hidden_states(model, writer, image_token_mask=lambda x: ids == IMAGE_TOKEN,
                                                           **SMALL) as cap:
                cap.expect(batch["ids"])
                model(**model_inputs(batch))
        msg = str(ctx.exception)
        self.assertIn("15", msg)
        self.assertIn("16", msg)
        self.assertIn("img-0001", msg)
        # expected count differs from what the processor produced
        with self.assertRaises(vl.ImageTokenCountError) as ctx:
            with torch.no_grad(), vl.capture_hidden_states(model, writer, expected_image_tokens=576):
                model(**model_inputs(batch))
        self.assertIn("16 image-token positions", str(ctx.exception))
        self.assertIn("576", str(ctx.exception))
        self.assertEqual(writer.count, 0)
        with self.assertRaises(vl.TokenGridError):
            vl.capture_hidden_states(model, writer, expected_image_tokens=16, grid=(3, 5)).__enter__()
        self.assertEqual(hooks_left(model), [])

    def test_failed_first_batch_leaves_no_capture_behind(self):
        model = TinyLlavaForConditionalGeneration(n_layers=2).eval()
        batches = [as_capture_batch(make_hf_batch(2, seed=1))]
        out = self.path("failed")
        with self.assertRaises(vl.ImageTokenCountError):
            vl.capture_dataset(model, batches, out, expected_image_tokens=9, grid=(3, 3), clip_target=False)
        self.assertFalse(os.path.exists(out), "a failed start must not leave a (0-sample) capture directory")
        # a directory the caller made is kept, but holds no manifest
        os.makedirs(out)
        with self.assertRaises(vl.ImageTokenCountError):
            vl.capture_dataset(model, batches, out, expected_image_tokens=9, grid=(3, 3), clip_target=False)
        self.assertEqual(os.listdir(out), [])
        # and the next, correct run starts cleanly there
        vl.capture_dataset(model, batches, out, clip_target=False, **SMALL)
        self.assertEqual(validate_capture(out)["samples"]["count"], 2)

    def test_discovery_failure_lists_module_names_and_explicit_layers_work(self):
        class Block(nn.Module):
            def __init__(self):
                super().__init__()
                self.lin = nn.Linear(8, 8)

            def forward(self, x):
                return (x + self.lin(x),)

        class Weird(nn.Module):
            def __init__(self):
                super().__init__()
                self.trunk = nn.Module()
                self.trunk.stack = nn.ModuleList(Block() for _ in range(2))
                self.heads = nn.ModuleList([nn.Linear(8, 2)])

            def forward(self, x):
                for blk in self.trunk.stack:
                    x = blk(x)[0]
                return x

        model = Weird()
        writer = vl.CaptureWriter.create(self.path("weird"))
        with self.assertRaises(vl.LayerDiscoveryError) as ctx:
            with vl.capture_hidden_states(model, writer):
                pass
        msg = str(ctx.exception)
        self.assertIn("trunk.stack", msg)
        self.assertIn("heads", msg)
        self.assertIn("layers=", msg)
        x = torch.randn(2, 5, 8)
        mask = torch.zeros(2, 5, dtype=torch.bool)
        mask[:, 1:5] = True
        for layers in (model.trunk.stack, "trunk.stack", list(model.trunk.stack)):
            w = vl.CaptureWriter.create(self.path("weird-%s" % type(layers).__name__), overwrite=True)
            with torch.no_grad(), vl.capture_hidden_states(model, w, layers=layers, image_token_mask=mask,
                                                           dtype=torch.float32, expected_image_tokens=4,
                                                           grid=(2, 2)) as cap:
                self.assertEqual(cap.layout.kind, "explicit")
                model(x)
            _, got, _ = vl.read_capture(w.out_dir)
            self.assertTrue(torch.equal(got["embed"], x[:, 1:5]))
            with torch.no_grad():
                h1 = model.trunk.stack[0](x)[0]
            self.assertTrue(torch.equal(got["blocks.0.out"], h1[:, 1:5]))
        with self.assertRaises(vl.LayerDiscoveryError):
            vl.discover(model, "trunk.nope")


class TestTokensFromConfig(CaptureTestCase):
    """Image-token count and grid read from the model's config (public LlavaConfig / CLIPVisionConfig names)."""

    def _capture(self, model, batch, name, **kw):
        out = vl.capture_dataset(model, [as_capture_batch(batch)], self.path(name), dtype=torch.float32, **kw)
        return vl.read_capture(out)

    def test_6x6_model_needs_no_arguments(self):
        torch.manual_seed(0)
        model = TinyLlavaForConditionalGeneration(n_layers=1, image_size=24, patch=4).eval()  # 24 / 4 = 6 per side
        m, layers, targets = self._capture(model, make_hf_batch(2, num_patches=36, image_size=24), "six")
        self.assertEqual(m["token_layout"], {"kind": "image", "tokens": 36, "source_tokens": 36, "grid": [6, 6],
                                             "pooling": "none"})
        self.assertEqual(tuple(layers["embed"].shape), (2, 36, 32))
        self.assertEqual(tuple(targets["clip"].shape), (2, 36, 24))

    def test_only_expected_image_tokens_gives_its_square_grid(self):
        # a config without vision geometry: only the count is known, 36 = 6 x 6 (not LLaVA-1.5's 24 x 24)
        model = TinyLlavaForConditionalGeneration(n_layers=1, image_size=24, patch=4, bare_config=True).eval()
        with self.assertRaises(vl.ImageTokenCountError) as ctx:
            self._capture(model, make_hf_batch(2, num_patches=36, image_size=24), "none")
        self.assertIn("expected_image_tokens=", str(ctx.exception))
        self.assertIn("grid=", str(ctx.exception))
        self.assertFalse(os.path.exists(self.path("none")))
        m, _, targets = self._capture(model, make_hf_batch(2, num_patches=36, image_size=24), "n36",
                                      expected_image_tokens=36)
        self.assertEqual(m["token_layout"]["grid"], [6, 6])
        self.assertEqual(tuple(targets["clip"].shape), (2, 36, 24))
        # image_seq_length alone (transformers >= 4.45 LlavaConfig)
        model.config.image_seq_length = 36
        m, _, _ = self._capture(model, make_hf_batch(2, num_patches=36, image_size=24), "seq")
        self.assertEqual((m["token_layout"]["source_tokens"], m["token_layout"]["grid"]), (36, [6, 6]))

    def test_full_strategy_keeps_cls_and_has_no_grid(self):
        model = TinyLlavaForConditionalGeneration(n_layers=1, strategy="full").eval()  # 4 x 4 patches + CLS
        m, _, targets = self._capture(model, make_hf_batch(2, num_patches=17), "full")
        self.assertEqual((m["token_layout"]["source_tokens"], m["token_layout"]["grid"]), (17, None))
        self.assertEqual(tuple(targets["clip"].shape), (2, 17, 24))

    def test_llava_repo_reads_num_patches_per_side(self):
        model = TinyLlavaLlamaForCausalLM(n_layers=1).eval()
        m, _, targets = self._capture(model, make_repo_batch(2), "repo")
        self.assertEqual((m["token_layout"]["source_tokens"], m["token_layout"]["grid"]), (16, [4, 4]))
        self.assertEqual(tuple(targets["clip"].shape), (2, 16, 24))

    def test_geometry_table_and_anyres(self):
        from viral_lens_torch.discovery import image_token_geometry, resolve_image_tokens

        def cfg_model(**cfg):
            m = nn.Module()
            m.config = SimpleNamespace(**cfg)
            return m

        clip336 = SimpleNamespace(image_size=336, patch_size=14, model_type="clip_vision_model")
        siglip384 = SimpleNamespace(image_size=384, patch_size=14, model_type="siglip_vision_model")  # 27 x 27
        cases = [
            (dict(vision_config=clip336, vision_feature_select_strategy="default"), 576, (24, 24)),
            (dict(vision_config=clip336, vision_feature_select_strategy="full"), 577, None),
            (dict(vision_config=siglip384, vision_feature_select_strategy="full"), 729, (27, 27)),
            (dict(image_seq_length=576), 576, (24, 24)),
            (dict(image_seq_length=50), 50, None),
        ]
        for cfg, tokens, grid in cases:
            geo = image_token_geometry(cfg_model(**cfg))
            self.assertEqual((geo.tokens, geo.grid), (tokens, grid), cfg)
        self.assertIsNone(image_token_geometry(cfg_model(text_config=SimpleNamespace(hidden_size=8))))
        nxt = cfg_model(vision_config=clip336, image_grid_pinpoints=[[336, 672], [672, 336]])
        with self.assertRaises(vl.ImageTokenCountError) as ctx:
            resolve_image_tokens(nxt)
        self.assertIn("anyres", str(ctx.exception))
        # the caller's numbers win over the config; only a grid gives its count
        self.assertEqual(resolve_image_tokens(nxt, None, 576, None), (576, (24, 24)))
        self.assertEqual(resolve_image_tokens(nxt, None, None, (3, 5)), (15, (3, 5)))


class TestBackgroundWriter(CaptureTestCase):
    def _batches(self, n=4):
        return [make_hf_batch(2, seed=40 + i, start=2 * i) for i in range(n)]

    def _run(self, model, out, batches, body=None, **kw):
        writer = vl.CaptureWriter.create(out)
        with torch.no_grad(), vl.capture_hidden_states(model, writer, clip_target=True, **SMALL, **kw) as cap:
            for i, batch in enumerate(batches):
                cap.expect(batch["ids"], labels={"i": [i] * len(batch["ids"])})
                model(**model_inputs(batch))
                if body is not None:
                    body(i, cap)
        return writer

    def test_same_capture_as_writing_in_the_forward(self):
        torch.manual_seed(0)
        model = TinyLlavaForConditionalGeneration(n_layers=2).eval()
        self._run(model, self.path("bg"), self._batches())
        self._run(model, self.path("sync"), self._batches(), background=False)
        ma, la, ta = vl.read_capture(self.path("bg"))
        mb, lb, tb = vl.read_capture(self.path("sync"))
        self.assertEqual(ma["samples"], mb["samples"])
        self.assertEqual(ma["samples"]["count"], 8)
        for k in lb:
            self.assertTrue(torch.equal(la[k], lb[k]), k)
        self.assertTrue(torch.equal(ta["clip"], tb["clip"]))

    def test_writer_waits_for_the_copies_and_returns_buffers(self):
        # stands in for CUDA (no GPU here): the writer must not touch a batch before its copy event completes,
        # and must give the pinned buffers back to the pool afterwards
        from viral_lens_torch.background import BackgroundWriter, PinnedPool

        order = []
        copied = threading.Event()

        class FakeEvent:
            def synchronize(self):
                copied.wait(5)
                order.append("synchronized")

        class FakeWriter:
            def append_batch(self, ids, labels, layers, targets, **kw):
                order.append("written %s" % ids[0])

        pool = PinnedPool()
        buf = torch.zeros(1, 2, 3)
        bg = BackgroundWriter(FakeWriter(), max_pending=2, pool=pool)
        bg.submit(["a"], None, {"embed": buf}, {}, event=FakeEvent(), buffers=[buf])
        time.sleep(0.2)
        self.assertEqual(order, [], "written before the copy finished")
        copied.set()
        bg.close()
        self.assertEqual(order, ["synchronized", "written a"])
        self.assertIs(pool.take((1, 2, 3), torch.float32), buf)  # reused, not a new pinned allocation
        self.assertEqual(bg.bytes_written, 6 * 4)

    def test_write_error_is_raised_in_the_caller_and_stops_writing(self):
        model = TinyLlavaForConditionalGeneration(n_layers=1).eval()
        real = vl.CaptureWriter.append_batch
        calls = []

        def failing(self_, *a, **k):
            calls.append(a[0])
            if len(calls) == 2:
                raise vl.CaptureWriteError("disk full (simulated)", path="x")
            return real(self_, *a, **k)

        with mock.patch.object(vl.CaptureWriter, "append_batch", failing):
            with self.assertRaises(vl.CaptureWriteError):
                self._run(model, self.path("err"), self._batches(6))
        m = validate_capture(self.path("err"))
        self.assertEqual(m["samples"]["ids"], ["img-0000", "img-0001"])  # the batches before the failure only
        self.assertLessEqual(len(calls), 2, "no batch may be written after a write error")
        self.assertEqual(hooks_left(model), [])

    def test_back_pressure_bounds_the_queue(self):
        model = TinyLlavaForConditionalGeneration(n_layers=1).eval()
        real = vl.CaptureWriter.append_batch
        release = threading.Event()
        state = {"captured": 0, "written": 0, "most_behind": 0}

        def slow(self_, *a, **k):
            release.wait(5)
            state["written"] += 1
            return real(self_, *a, **k)

        def body(i, cap):
            state["captured"] = cap.batches_written
            behind = state["captured"] - state["written"]
            state["most_behind"] = max(state["most_behind"], behind)
            # The writer stays stuck until the queue is full, then half a second longer: a timer started up
            # front raced the first forwards (on a busy machine they took longer than it, and the queue never
            # filled); an unbounded queue would run further ahead within that half second.
            if behind == 2 and not state.get("timer"):
                state["timer"] = threading.Timer(0.5, release.set)
                state["timer"].start()

        def run():
            with mock.patch.object(vl.CaptureWriter, "append_batch", slow):
                self._run(model, self.path("bp"), self._batches(8), body=body, max_pending=1)

        t = threading.Thread(target=run)
        t.start()
        t.join(30)
        self.assertFalse(t.is_alive())
        # max_pending=1: one batch in the queue + one being written; the third capture waits for the writer
        self.assertEqual(state["most_behind"], 2)
        self.assertEqual(validate_capture(self.path("bp"))["samples"]["count"], 16)

    def test_exception_in_the_block_still_writes_captured_batches(self):
        model = TinyLlavaForConditionalGeneration(n_layers=1).eval()

        def body(i, cap):
            if i == 2:
                raise KeyError("user code failed")

        with self.assertRaises(KeyError):
            self._run(model, self.path("exc"), self._batches(5), body=body)
        self.assertEqual(validate_capture(self.path("exc"))["samples"]["count"], 6)
        self.assertEqual(hooks_left(model), [])
        # and the capture resumes from there
        batches = [as_capture_batch(b, labels={"i": [i] * 2}) for i, b in enumerate(self._batches(5))]
        out = vl.capture_dataset(model, batches, self.path("exc"), **SMALL)
        self.assertEqual(validate_capture(out)["samples"]["count"], 10)


class TestTargets(CaptureTestCase):
    def test_vision_tower_features_is_the_projector_input(self):
        for model, key, batch in ((TinyLlavaForConditionalGeneration(), "pixel_values", make_hf_batch(2)),
                                  (TinyLlavaForConditionalGeneration(layout="hf-legacy"), "pixel_values",
                                   make_hf_batch(2)),
                                  (TinyLlavaLlamaForCausalLM(), "images", make_repo_batch(2))):
            model.eval()
            seen = []
            proj = vl.discover(model).projector
            h = proj.register_forward_pre_hook(lambda m, args: seen.append(args[0]))
            try:
                with torch.no_grad():
                    model(**model_inputs(batch))
                    feats = vl.vision_tower_features(model, batch[key], **_tg())
            finally:
                h.remove()
            self.assertEqual(tuple(feats.shape), (2, NUM_PATCHES, 24))
            self.assertTrue(torch.equal(feats, seen[0]))

    def test_token_grid_errors(self):
        model = TinyLlavaForConditionalGeneration().eval()
        px = make_hf_batch(2)["pixel_values"]
        with self.assertRaises(vl.TokenGridError) as ctx:
            with torch.no_grad():
                vl.vision_tower_features(model, px, expected_tokens=576)  # LLaVA-1.5's 24x24
        self.assertIn("16 tokens", str(ctx.exception))
        self.assertIn("576", str(ctx.exception))
        with self.assertRaises(vl.TokenGridError) as ctx:
            vl.check_token_grid("dinov2", torch.zeros(2, 17, 8), 16, (4, 4))
        self.assertIn("CLS", str(ctx.exception))
        with self.assertRaises(vl.TokenGridError) as ctx:
            vl.check_token_grid("dinov2", torch.zeros(2, 25, 8), 16, (4, 4))
        self.assertIn("5x5", str(ctx.exception))
        with self.assertRaises(vl.TokenGridError):
            vl.check_token_grid("x", torch.zeros(2, 16), 16, (4, 4))

    def test_capture_dataset_with_clip_and_extra_encoder(self):
        torch.manual_seed(0)
        model = TinyLlavaForConditionalGeneration(n_layers=2).eval()
        dino = nn.Linear(3 * 16, 12)  # a "frozen encoder": 4x4 patches of 16x16 images -> 16 tokens

        def dino_fn(px):
            patches = torch.nn.functional.unfold(px, 4, stride=4).transpose(1, 2)
            return dino(patches)

        batches = [as_capture_batch(make_hf_batch(3, seed=s, start=3 * s),
                                    labels={"count": [s, s + 1, s + 2], "colour": ["red", "blue", "none"]})
                   for s in range(3)]
        out = vl.capture_dataset(model, batches, self.path("ds"), extra_encoders={"dinov2": dino_fn},
                                 variant="viral", checkpoint={"step": 7}, **SMALL)
        m = validate_capture(out)
        self.assertEqual(m["samples"]["count"], 9)
        self.assertEqual(m["variant"], "viral")
        self.assertEqual(m["checkpoint"], {"step": 7})
        self.assertEqual(m["labels"]["count"], [0, 1, 2, 1, 2, 3, 2, 3, 4])
        self.assertEqual({t["name"]: (t["tokens"], t["dim"]) for t in m["targets"]},
                         {"clip": (16, 24), "dinov2": (16, 12)})
        self.assertEqual(len(m["layers"][0]["shards"]), 3)
        _, layers, targets = vl.read_capture(out)
        with torch.no_grad():
            px = torch.cat([b["inputs"]["pixel_values"] for b in batches])
            self.assertTrue(torch.equal(targets["clip"], vl.vision_tower_features(model, px, **_tg()).half()))
            self.assertTrue(torch.equal(targets["dinov2"], dino_fn(px).half()))
        self.assertFalse(model.training)

    def test_capture_dataset_restores_train_mode(self):
        model = TinyLlavaForConditionalGeneration(n_layers=2, dropout=0.5)
        model.train()
        model.parts()[0].eval()  # frozen vision tower kept in eval
        before = [m.training for m in model.modules()]
        vl.capture_dataset(model, [as_capture_batch(make_hf_batch(2))], self.path("modes"), **SMALL)
        self.assertEqual([m.training for m in model.modules()], before)


def _tg():
    return {"expected_tokens": NUM_PATCHES, "grid": (4, 4)}


class TestShuffleAndAttention(CaptureTestCase):
    def test_shuffle_permutes_image_features_before_projector(self):
        torch.manual_seed(0)
        model = TinyLlavaForConditionalGeneration(n_layers=2).eval()
        batch = make_hf_batch(3, seed=8)
        rng = torch.get_rng_state()
        w0 = vl.CaptureWriter.create(self.path("plain"))
        w1 = vl.CaptureWriter.create(self.path("shuf"))
        with torch.no_grad():
            with vl.capture_hidden_states(model, w0, dtype=torch.float32, **SMALL):
                model(**model_inputs(batch))
            with vl.shuffle_image_tokens(model, seed=123) as sh, \
                    vl.capture_hidden_states(model, w1, dtype=torch.float32, **SMALL):
                self.assertEqual(sh.projector_path, "model.multi_modal_projector")
                model(**model_inputs(batch))
        self.assertTrue(torch.equal(rng, torch.get_rng_state()))
        perm = sh.permutation
        self.assertFalse(torch.equal(perm, torch.arange(NUM_PATCHES)))
        _, plain, _ = vl.read_capture(self.path("plain"))
        _, shuf, _ = vl.read_capture(self.path("shuf"))
        # the projector is token-wise, so the spliced embeddings are the plain ones permuted
        self.assertTrue(torch.allclose(shuf["embed"], plain["embed"][:, perm], atol=1e-6))
        self.assertFalse(torch.allclose(shuf["blocks.1.out"], plain["blocks.1.out"][:, perm], atol=1e-4))
        # same permutation for the same seed, also for the LLaVA-repo layout
        repo = TinyLlavaLlamaForCausalLM().eval()
        with vl.shuffle_image_tokens(repo, seed=123) as sh2, torch.no_grad():
            repo(**model_inputs(make_repo_batch(1)))
        self.assertEqual(sh2.projector_path, "model.mm_projector")
        self.assertTrue(torch.equal(sh2.permutation, perm))
        # via capture_dataset (recorded in provenance)
        out = vl.capture_dataset(model, [as_capture_batch(batch)], self.path("ds-shuf"), shuffle_seed=123,
                                 dtype=torch.float32, **SMALL)
        m, got, _ = vl.read_capture(out)
        self.assertEqual(m["provenance"]["shuffle_image_tokens_seed"], 123)
        self.assertTrue(torch.equal(got["embed"], shuf["embed"]))
        self.assertEqual(hooks_left(model), [])

    def test_text_to_image_attention(self):
        torch.manual_seed(0)
        model = TinyLlavaForConditionalGeneration(n_layers=2, heads=4).eval()
        batch = make_hf_batch(3, seed=9)
        writer = vl.CaptureWriter.create(self.path("attn"))
        with torch.no_grad(), vl.capture_hidden_states(model, writer, capture_attentions=True,
                                                       dtype=torch.float32, **SMALL):
            out = model(**model_inputs(batch))
        self.assertIsNotNone(out.attentions)
        m = validate_capture(self.path("attn"))
        t = [e for e in m["targets"] if e["name"] == "attn_text_to_image"][0]
        self.assertEqual((t["tokens"], t["dim"]), (NUM_PATCHES, 2 * 4))
        _, _, targets = vl.read_capture(self.path("attn"))
        got = targets["attn_text_to_image"]
        for i in range(3):
            ids, am = batch["input_ids"][i], batch["attention_mask"][i]
            img = (ids == IMAGE_TOKEN).nonzero().flatten()
            q = [p for p in range(len(ids)) if p > int(img.max()) and am[p] == 1]
            for layer in range(2):
                for head in range(4):
                    want = out.attentions[layer][i, head][q][:, img].mean(0)
                    self.assertTrue(torch.allclose(got[i, :, layer * 4 + head], want, atol=1e-6))


if __name__ == "__main__":
    unittest.main()
