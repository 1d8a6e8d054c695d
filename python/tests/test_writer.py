"""CaptureWriter: format, atomic writes, crash + resume, write failures, disk estimate."""

import errno
import json
import os
import shutil
import stat
import struct
import tempfile
import unittest
from unittest import mock

from common import SMALL, as_capture_batch, torch  # noqa: F401

import viral_lens_torch as vl  # noqa: E402
from viral_lens_torch import safetensors_io  # noqa: E402
from viral_lens_torch.writer import CaptureWriter  # noqa: E402
from format_check import TMP_RE, capture_files, read_st_header, referenced_files, st_header_json, validate_capture  # noqa: E402
from tiny_llava import TinyLlavaForConditionalGeneration, make_hf_batch  # noqa: E402

LAYOUT = {"tokens": 4, "source_tokens": 4, "grid": [2, 2], "pooling": "none"}
MODEL = {"name": "fake"}


def new_writer(path, **kw):
    kw.setdefault("model", MODEL)
    kw.setdefault("token_layout", LAYOUT)
    return CaptureWriter.create(path, **kw)


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def fake_batch(start, n, dim=6, tokens=4):
    g = torch.Generator().manual_seed(start)
    ids = ["s%03d" % (start + i) for i in range(n)]
    layers = {"embed": torch.randn(n, tokens, dim, generator=g).half(),
              "blocks.0.out": torch.randn(n, tokens, dim, generator=g).half()}
    targets = {"clip": torch.randn(n, tokens, 3, generator=g).half()}
    labels = {"count": list(range(start, start + n)), "colour": ["c%d" % i for i in range(start, start + n)]}
    return ids, labels, layers, targets


class WriterTestCase(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.mkdtemp(prefix="vl-writer-")
        self.dir = os.path.join(self.tmp, "cap")

    def tearDown(self):
        for dirpath, dirnames, _ in os.walk(self.tmp):
            for d in dirnames:
                os.chmod(os.path.join(dirpath, d), 0o755)
        shutil.rmtree(self.tmp, ignore_errors=True)


class TestWriterFormat(WriterTestCase):
    def test_roundtrip_and_format(self):
        # without the layer set the manifest is not written yet (it would not be a valid manifest)
        w = CaptureWriter.create(self.dir, model={"name": "m"}, token_layout=LAYOUT)
        self.assertEqual(capture_files(self.dir), set())
        w = CaptureWriter.create(self.dir, model={"name": "m", "hidden_size": 6, "num_layers": 1},
                                 token_layout=LAYOUT, checkpoint={"step": 3, "path": "ckpt/3"},
                                 layers=[{"name": "blocks.0.out", "dim": 6}, {"name": "embed", "dim": 6}],
                                 targets=[{"name": "clip", "dim": 3, "tokens": 4, "description": "fake clip"}])
        # no manifest before the first batch: a 0-sample capture would be left behind by a failed start
        self.assertEqual(capture_files(self.dir), set())
        self.assertEqual(w.manifest["samples"], {"count": 0, "ids": []})
        self.assertEqual([e["name"] for e in w.manifest["layers"]], ["embed", "blocks.0.out"])
        all_layers = {"embed": [], "blocks.0.out": []}
        for start, n in ((0, 3), (3, 3), (6, 2)):
            ids, labels, layers, targets = fake_batch(start, n)
            w.append_batch(ids, labels, layers, targets)
            for k in all_layers:
                all_layers[k].append(layers[k])
        m = validate_capture(self.dir)
        self.assertEqual(list(m)[:6], ["format", "version", "model", "variant", "checkpoint", "token_layout"])
        self.assertEqual(m["samples"]["count"], 8)
        self.assertEqual(m["labels"]["count"], list(range(8)))
        self.assertEqual(m["checkpoint"], {"step": 3, "path": "ckpt/3"})
        self.assertEqual(m["targets"][0]["description"], "fake clip")
        self.assertEqual([(s["start"], s["count"]) for s in m["layers"][0]["shards"]], [(0, 3), (3, 3), (6, 2)])
        self.assertEqual(m["layers"][1]["shards"][2]["file"], "layers/001/00002.safetensors")
        self.assertEqual(m["targets"][0]["shards"][0]["file"], "targets/clip/00000.safetensors")
        self.assertTrue(m["provenance"]["tool"].startswith("viral-lens-torch"))
        _, layers, targets = vl.read_capture(self.dir)
        for k, parts in all_layers.items():
            self.assertTrue(torch.equal(layers[k], torch.cat(parts)))
        # raw layout: 8-byte LE length, JSON header padded with spaces to a multiple of 8, raw LE data
        path = os.path.join(self.dir, "layers/000/00000.safetensors")
        header, data_len = read_st_header(path)
        self.assertEqual(header["hidden"]["shape"], [3, 4, 6])
        self.assertEqual(header["__metadata__"]["start"], "0")
        with open(path, "rb") as f:
            raw = f.read()
        (n,) = struct.unpack("<Q", raw[:8])
        first = struct.unpack("<e", raw[8 + n:8 + n + 2])[0]
        self.assertEqual(first, float(all_layers["embed"][0].flatten()[0]))
        self.assertEqual(capture_files(self.dir), referenced_files(m))

    def test_validation_errors(self):
        w = new_writer(self.dir)
        ids, labels, layers, targets = fake_batch(0, 3)
        w.append_batch(ids, labels, layers, targets)
        with self.assertRaises(vl.DuplicateSampleError):
            w.append_batch(["s000", "new"], *fake_batch(10, 2)[1:])
        with self.assertRaises(vl.DuplicateSampleError):
            w.append_batch(["a", "a"], *fake_batch(10, 2)[1:])
        ids2, labels2, layers2, targets2 = fake_batch(20, 2)
        with self.assertRaises(vl.CaptureFormatError):  # wrong token count
            w.append_batch(ids2, labels2, {k: v[:, :3] for k, v in layers2.items()}, targets2)
        with self.assertRaises(vl.CaptureFormatError):  # layer set differs
            w.append_batch(ids2, labels2, {"embed": layers2["embed"]}, targets2)
        with self.assertRaises(vl.CaptureFormatError):  # dtype differs
            w.append_batch(ids2, labels2, {k: v.float() for k, v in layers2.items()}, targets2)
        with self.assertRaises(vl.CaptureFormatError):  # label names differ
            w.append_batch(ids2, {"count": [1, 2]}, layers2, targets2)
        with self.assertRaises(vl.CaptureFormatError):  # label value type
            w.append_batch(ids2, dict(labels2, colour=[None, "x"]), layers2, targets2)
        with self.assertRaises(vl.CaptureFormatError):  # non-canonical layer name
            w.append_batch(ids2, labels2, dict(layers2, foo=layers2["embed"]), targets2)
        self.assertEqual(w.count, 3)
        m = validate_capture(self.dir)
        self.assertEqual(capture_files(self.dir), referenced_files(m))
        # creating over an existing capture needs resume/overwrite
        with self.assertRaises(vl.CaptureFormatError) as ctx:
            new_writer(self.dir)
        self.assertIn("resume", str(ctx.exception))
        w2 = new_writer(self.dir, overwrite=True)
        self.assertEqual(w2.count, 0)
        self.assertEqual(capture_files(self.dir), set())
        # manifest rules are enforced when creating
        for bad in ({"checkpoint": {"step": -1}}, {"checkpoint": {"epoch": 1}}, {"variant": "fancy"},
                    {"token_layout": dict(LAYOUT, tokens=1)}, {"token_layout": dict(LAYOUT, grid=[3, 3])},
                    {"token_layout": dict(LAYOUT, extra=1)}):
            with self.assertRaises(vl.CaptureFormatError):
                new_writer(os.path.join(self.tmp, "bad"), overwrite=True, **bad)
        # a directory with only the leftovers of a writer that died before its first manifest is reused
        d = os.path.join(self.tmp, "leftovers")
        os.makedirs(os.path.join(d, "layers", "000"))
        with open(os.path.join(d, "layers", "000", "00000.safetensors"), "wb") as f:
            f.write(b"orphan")
        with self.assertLogs("viral_lens_torch", level="WARNING"):
            CaptureWriter.open(d, model=MODEL, token_layout=LAYOUT)
        self.assertEqual(capture_files(d), set())
        with open(os.path.join(self.tmp, "leftovers", "notes.txt"), "w") as f:
            f.write("user file")
        with self.assertRaises(vl.CaptureFormatError):
            CaptureWriter.open(d, model=MODEL, token_layout=LAYOUT)

    def test_estimate(self):
        self.assertEqual(vl.estimate_disk_bytes(1, 33, 576, 4096, torch.float16), 155_713_536)  # ~156 MB
        self.assertEqual(vl.estimate_disk_bytes(1, 33, 1, 4096), 270_336)  # ~270 KB pooled
        self.assertEqual(vl.estimate_disk_bytes(10, 33, 576, 4096, "F32"), 2 * 10 * 155_713_536)
        self.assertEqual(vl.estimate_disk_bytes(2, 1, 576, 4096, targets={"clip": (576, 1024)}),
                         2 * 576 * 4096 * 2 + 2 * 576 * 1024 * 2)
        self.assertEqual(vl.format_bytes(155_713_536), "155.7 MB")
        model = TinyLlavaForConditionalGeneration(n_layers=2).eval()
        batches = [as_capture_batch(make_hf_batch(2, seed=s, start=2 * s)) for s in range(2)]
        with self.assertLogs("viral_lens_torch", level="INFO") as logs:
            vl.capture_dataset(model, batches, self.dir, **SMALL)
        text = "\n".join(logs.output)
        per = vl.estimate_disk_bytes(1, 3, 16, 32, targets={"clip": (16, 24)})
        self.assertIn("4 samples -> about %s" % vl.format_bytes(4 * per), text)
        # the estimate is the size of the tensor data actually written (+ small headers / manifest)
        data = 0
        for rel in capture_files(self.dir) - {"manifest.json"}:
            header, data_len = read_st_header(os.path.join(self.dir, rel))
            data += data_len
        self.assertEqual(data, 4 * per)


class TestCrashAndResume(WriterTestCase):
    def _batches(self):
        return [as_capture_batch(make_hf_batch(3, seed=s, start=3 * s), labels={"k": [s] * 3}) for s in range(5)]

    def test_crash_between_shards_and_manifest_then_resume(self):
        torch.manual_seed(0)
        model = TinyLlavaForConditionalGeneration(n_layers=2).eval()
        batches = self._batches()
        clean = vl.capture_dataset(model, batches, os.path.join(self.tmp, "clean"), **SMALL)

        real = CaptureWriter._write_manifest
        calls = {"n": 0}

        class Killed(RuntimeError):
            pass

        def dying_manifest(self_, manifest=None):
            # die while committing the 3rd batch: its shards are written, the manifest does not list them yet
            calls["n"] += 1
            if manifest is not None and manifest["samples"]["count"] == 9:
                raise Killed("simulated kill")
            return real(self_, manifest)

        with mock.patch.object(CaptureWriter, "_write_manifest", dying_manifest):
            with self.assertRaises(Killed):
                vl.capture_dataset(model, batches, self.dir, **SMALL)
        m = validate_capture(self.dir, strays_ok=True)
        self.assertEqual(m["samples"]["count"], 6)  # batches 0 and 1 only
        orphan = os.path.join(self.dir, "layers/000/00002.safetensors")
        self.assertTrue(os.path.exists(orphan), "the 3rd batch's shards were written")
        # a temp file left by a writer killed mid-write, and one of a manifest write
        for rel in ("layers/001/00003.safetensors.tmp-4242", "targets/clip/00002.safetensors.tmp-77-0badc0de",
                    "manifest.json.tmp-4242", "manifest.json.tmp-99-12345678", "layers/009/00000.safetensors"):
            p = os.path.join(self.dir, rel)
            os.makedirs(os.path.dirname(p), exist_ok=True)
            with open(p, "wb") as f:
                f.write(b"partial")
        # resume: keep exactly the manifest's samples, delete strays, finish, no duplicates
        with self.assertLogs("viral_lens_torch", level="WARNING"):
            out = vl.capture_dataset(model, batches, self.dir, **SMALL)
        m = validate_capture(out)
        self.assertEqual(m["samples"]["ids"], [i for b in batches for i in b["ids"]])
        self.assertEqual(m["labels"]["k"], [s for s in range(5) for _ in range(3)])
        self.assertEqual(capture_files(out), referenced_files(m))
        self.assertFalse(any(TMP_RE.search(f) for f in capture_files(out)))
        self.assertFalse(os.path.exists(os.path.join(self.dir, "layers/009")))
        # same data as a capture that never crashed
        mc, layers_c, targets_c = vl.read_capture(clean)
        _, layers_r, targets_r = vl.read_capture(out)
        for k in layers_c:
            self.assertTrue(torch.equal(layers_c[k], layers_r[k]), k)
        self.assertTrue(torch.equal(targets_c["clip"], targets_r["clip"]))
        # running it again is a no-op (everything already captured)
        vl.capture_dataset(model, batches, self.dir, **SMALL)
        self.assertEqual(validate_capture(self.dir)["samples"]["count"], 15)

    def test_resume_with_different_batching_skips_done_samples(self):
        model = TinyLlavaForConditionalGeneration(n_layers=1).eval()
        b = make_hf_batch(6, seed=3)
        first = {"ids": b["ids"][:4], "inputs": {k: b[k][:4] for k in ("input_ids", "attention_mask", "pixel_values")}}
        vl.capture_dataset(model, [first], self.dir, dtype=torch.float32, **SMALL)
        out = vl.capture_dataset(model, [as_capture_batch(b)], self.dir, dtype=torch.float32, **SMALL)
        m = validate_capture(out)
        self.assertEqual(m["samples"]["ids"], b["ids"])
        self.assertEqual([s["count"] for s in m["layers"][0]["shards"]], [4, 2])
        full = vl.capture_dataset(model, [as_capture_batch(b)], os.path.join(self.tmp, "full"), dtype=torch.float32,
                                  **SMALL)
        _, a, _ = vl.read_capture(out)
        _, c, _ = vl.read_capture(full)
        for k in a:
            self.assertTrue(torch.allclose(a[k], c[k], atol=1e-6), k)

    def _outside_dir_with_victim(self):
        outside = os.path.join(self.tmp, "outside")
        os.makedirs(os.path.join(outside, "000"))
        victim = os.path.join(outside, "000", "precious.safetensors")
        with open(victim, "wb") as f:
            f.write(b"not part of any capture")
        return outside, victim

    def test_resume_refuses_symlinked_layers_dir(self):
        w = new_writer(self.dir)
        w.append_batch(*fake_batch(0, 2))
        outside, victim = self._outside_dir_with_victim()
        shutil.copytree(os.path.join(self.dir, "layers"), os.path.join(outside, "copy"))
        shutil.rmtree(os.path.join(self.dir, "layers"))
        os.symlink(outside, os.path.join(self.dir, "layers"))
        with self.assertRaises(vl.CaptureFormatError) as ctx:
            CaptureWriter.resume(self.dir)
        self.assertIn("symbolic link", str(ctx.exception))
        self.assertTrue(os.path.exists(victim), "resume deleted a file outside the capture")

    def test_resume_refuses_symlinked_folder_below_layers(self):
        w = new_writer(self.dir)
        w.append_batch(*fake_batch(0, 2))
        outside, victim = self._outside_dir_with_victim()
        os.symlink(os.path.join(outside, "000"), os.path.join(self.dir, "layers", "007"))
        with self.assertRaises(vl.CaptureFormatError):
            CaptureWriter.resume(self.dir)
        self.assertTrue(os.path.exists(victim))

    def test_create_refuses_symlinked_layers_dir(self):
        outside, victim = self._outside_dir_with_victim()
        os.makedirs(self.dir)
        os.symlink(outside, os.path.join(self.dir, "layers"))
        with self.assertRaises(vl.CaptureFormatError):
            w = new_writer(self.dir)
            w.append_batch(*fake_batch(0, 2))
        self.assertEqual(sorted(os.listdir(outside)), ["000"])
        self.assertTrue(os.path.exists(victim))

    def test_resume_api_and_mismatch(self):
        w = new_writer(self.dir, checkpoint={"step": 5})
        w.append_batch(*fake_batch(0, 2))
        r = CaptureWriter.resume(self.dir)
        self.assertEqual(r.ids, ["s000", "s001"])
        self.assertIn("s001", r)
        r.append_batch(*fake_batch(2, 2))
        self.assertEqual([s["file"] for s in r.manifest["layers"][0]["shards"]],
                         ["layers/000/00000.safetensors", "layers/000/00001.safetensors"])
        with self.assertRaises(vl.CaptureFormatError):
            CaptureWriter.open(self.dir, checkpoint={"step": 6})
        with self.assertRaises(vl.CaptureFormatError):
            CaptureWriter.resume(os.path.join(self.tmp, "nothing"))
        os.unlink(os.path.join(self.dir, "layers/000/00001.safetensors"))
        with self.assertRaises(vl.CaptureFormatError) as ctx:
            CaptureWriter.resume(self.dir)
        self.assertIn("00001.safetensors", str(ctx.exception))


class TestWriteFailures(WriterTestCase):
    def test_disk_full_leaves_no_partial_file_and_names_the_path(self):
        w = new_writer(self.dir)
        w.append_batch(*fake_batch(0, 2))
        before = capture_files(self.dir)
        manifest_before = read_bytes(os.path.join(self.dir, "manifest.json"))
        real = safetensors_io._write_chunks

        def full_disk(f, chunks):
            f.write(b"x" * 10)  # some bytes reach the temp file first
            raise OSError(errno.ENOSPC, "No space left on device")

        with mock.patch.object(safetensors_io, "_write_chunks", full_disk):
            with self.assertRaises(vl.CaptureWriteError) as ctx:
                w.append_batch(*fake_batch(2, 2))
        target = os.path.join(self.dir, "layers", "000", "00001.safetensors")
        self.assertIn(target, str(ctx.exception))
        self.assertEqual(ctx.exception.path, target)
        self.assertIsInstance(ctx.exception, OSError)
        self.assertEqual(ctx.exception.__cause__.errno, errno.ENOSPC)
        self.assertEqual(capture_files(self.dir), before)  # no partial shard, no temp file
        self.assertEqual(read_bytes(os.path.join(self.dir, "manifest.json")), manifest_before)
        # the writer is still usable once space is back
        self.assertIs(safetensors_io._write_chunks, real)
        w.append_batch(*fake_batch(2, 2))
        m = validate_capture(self.dir)
        self.assertEqual(m["samples"]["count"], 4)
        self.assertEqual(capture_files(self.dir), referenced_files(m))

    def test_manifest_write_failure(self):
        w = new_writer(self.dir)
        w.append_batch(*fake_batch(0, 2))
        real_replace = os.replace

        def failing_replace(src, dst):
            if dst.endswith("manifest.json"):
                raise PermissionError(errno.EACCES, "Permission denied")
            return real_replace(src, dst)

        with mock.patch.object(safetensors_io.os, "replace", failing_replace):
            with self.assertRaises(vl.CaptureWriteError) as ctx:
                w.append_batch(*fake_batch(2, 2))
        self.assertIn(os.path.join(self.dir, "manifest.json"), str(ctx.exception))
        self.assertEqual(w.count, 2)
        self.assertFalse(any(TMP_RE.search(f) for f in capture_files(self.dir)))
        with self.assertLogs("viral_lens_torch", level="WARNING") as logs:
            r = CaptureWriter.resume(self.dir)  # the orphan shards of the failed batch are removed
        self.assertIn("deleted 3 stray file(s)", "\n".join(logs.output))
        self.assertEqual(capture_files(self.dir), referenced_files(r.manifest))

    @unittest.skipIf(hasattr(os, "geteuid") and os.geteuid() == 0, "root can write into read-only directories")
    def test_read_only_directory(self):
        w = new_writer(self.dir)
        w.append_batch(*fake_batch(0, 2))
        shard_dir = os.path.join(self.dir, "layers", "000")
        os.chmod(shard_dir, stat.S_IRUSR | stat.S_IXUSR)
        with self.assertRaises(vl.CaptureWriteError) as ctx:
            w.append_batch(*fake_batch(2, 2))
        self.assertIn(os.path.join(shard_dir, "00001.safetensors"), str(ctx.exception))
        self.assertEqual(sorted(os.listdir(shard_dir)), ["00000.safetensors"])
        os.chmod(shard_dir, 0o755)
        m = validate_capture(self.dir)
        self.assertEqual(m["samples"]["count"], 2)

    def test_unwritable_capture_root_names_the_path(self):
        blocker = os.path.join(self.tmp, "file")
        with open(blocker, "w") as f:
            f.write("not a directory")
        bad = os.path.join(blocker, "cap")
        with self.assertRaises(vl.CaptureWriteError) as ctx:
            new_writer(bad)
        self.assertIn(bad, str(ctx.exception))


class TestSafetensorsIO(WriterTestCase):
    def test_dtypes_roundtrip_and_header_padding(self):
        os.makedirs(self.dir)
        for dt in (torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int64):
            t = (torch.randn(3, 5, 7) * 10).to(dt)
            p = os.path.join(self.dir, "x.safetensors")
            vl.save_file({"a": t, "b": t[:1].contiguous()}, p, metadata={"k": 1})
            header, _ = read_st_header(p)
            self.assertEqual(header["__metadata__"], {"k": "1"})
            got = vl.load_file(p)
            self.assertTrue(torch.equal(got["a"], t))
            self.assertEqual(got["a"].dtype, dt)
            self.assertTrue(torch.equal(got["b"], t[:1]))
        self.assertEqual(os.listdir(self.dir), ["x.safetensors"])

    def test_matches_reference_encoder_if_installed(self):
        try:
            from safetensors.torch import load_file as st_load, save as st_save  # optional dependency
        except ImportError:
            self.skipTest("safetensors package not installed (optional)")
        t = torch.randn(2, 3, 4).half()
        data = safetensors_io.safetensors_bytes({"hidden": t})
        p = os.path.join(self.tmp, "ref.safetensors")
        with open(p, "wb") as f:
            f.write(data)
        self.assertTrue(torch.equal(st_load(p)["hidden"], t))
        self.assertEqual(st_header_json(st_save({"hidden": t}))["hidden"]["shape"], [2, 3, 4])

    def test_hidden_safetensors_package_cannot_be_imported(self):
        if not os.environ.get("VIRAL_LENS_HIDE_SAFETENSORS"):
            self.skipTest("runs only with VIRAL_LENS_HIDE_SAFETENSORS=1")
        with self.assertRaises(ImportError):
            import safetensors.torch  # noqa: F401

    def test_header_of_bytes_with_binary_data(self):
        # tensor bytes are binary (here a 0xff byte, never valid UTF-8): decoding the whole file, as the check
        # above did before, raised UnicodeDecodeError whenever the safetensors package was installed
        t = torch.randn(2, 2).half()
        raw = safetensors_io.safetensors_bytes({"hidden": t, "u": torch.tensor([255], dtype=torch.uint8)})
        self.assertIn(b"\xff", raw)
        with self.assertRaises(UnicodeDecodeError):
            raw[8:].decode()
        header = st_header_json(raw)
        self.assertEqual(header["hidden"], {"dtype": "F16", "shape": [2, 2], "data_offsets": [0, 8]})
        self.assertEqual(header["u"]["data_offsets"], [8, 9])


if __name__ == "__main__":
    unittest.main()
