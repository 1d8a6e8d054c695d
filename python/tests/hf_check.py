"""Opt-in check of the shim against a REAL transformers LlavaForConditionalGeneration (not part of `npm test`:
CI cannot install transformers). Run: `VIRAL_LENS_PYTHON=/path/to/python npm run check:hf` (or this file directly
with that interpreter; the shim is put on sys.path here).

A tiny LLaVA built from a config (random init, no download): CLIP vision tower 30 px / patch 5 -> 6x6 = 36 image
tokens, Llama text model. Checks, through the shim's public entry points only:
  (a) capture_dataset's layers equal output_hidden_states at the image positions exactly (fp32 and bf16), and
      the clip target equals the vision tower's hidden_states[vision_feature_layer] without CLS;
  (b) tokens / grid come from the model's config (nothing passed);
  (c) transformers.Trainer with ViralLensCallback gives bit-identical per-step losses and final weights to the
      same run without it (fp32, and bf16 on CPU), while a callback drawing one random number does not;
  (d) the manifest's targets[].compute records the dtype and autocast;
  (e) `tsx cli/main.ts validate DIR` accepts every capture and `layerwise` runs on them;
  (f) capture_attentions on an eager-attention model equals the text->image means of output_attentions; an sdpa
      model gives the shim's error naming attn_implementation='eager'.
Exit status 1 when anything fails. Options: --keep DIR (keep the captures there), --skip-cli.
"""

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import traceback
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, os.path.join(ROOT, "python"))

import torch  # noqa: E402

try:
    import transformers
    from transformers import (CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaForConditionalGeneration,
                              PrinterCallback, Trainer, TrainerCallback, TrainingArguments)
except ImportError as err:  # an opt-in check: say what is missing instead of skipping
    sys.exit("hf_check: transformers is not importable with %s (%s); run it with an interpreter that has "
             "transformers (VIRAL_LENS_PYTHON=...)" % (sys.executable, err))

import viral_lens_torch as vl  # noqa: E402

IMAGE_TOKEN = 100
SIDE, PATCH = 30, 5
TOKENS = (SIDE // PATCH) ** 2  # 36
SEQ = 50  # 5 text tokens, 36 image tokens, 9 text tokens
N_PROBE = 8

RESULTS = []


def record(name, ok, detail=""):
    RESULTS.append((name, bool(ok), detail))
    print("%s  %s%s" % ("PASS" if ok else "FAIL", name, ("  [" + detail + "]") if detail else ""), flush=True)


def tiny_config(dropout=0.0):
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                              image_size=SIDE, patch_size=PATCH, projection_dim=32, dropout=dropout,
                              attention_dropout=dropout)
    text = LlamaConfig(vocab_size=128, hidden_size=48, intermediate_size=96, num_hidden_layers=3,
                       num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                       attention_dropout=dropout, pad_token_id=0)
    # image_seq_length as a real llava-hf config has it (LlavaConfig's default is LLaVA-1.5's 576)
    return LlavaConfig(vision_config=vision, text_config=text, image_token_index=IMAGE_TOKEN,
                       vision_feature_layer=-2, vision_feature_select_strategy="default", image_seq_length=TOKENS)


def build_model(dtype=torch.float32, dropout=0.0, seed=0):
    torch.manual_seed(seed)
    model = LlavaForConditionalGeneration(tiny_config(dropout))
    return model.to(dtype)


def make_inputs(n, seed):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(1, IMAGE_TOKEN, (n, SEQ), generator=g)
    ids[:, 5:5 + TOKENS] = IMAGE_TOKEN
    attn = torch.ones(n, SEQ, dtype=torch.long)
    attn[1::2, -3:] = 0  # some right padding
    ids[attn == 0] = 0
    px = torch.randn(n, 3, SIDE, SIDE, generator=g)
    return ids, attn, px


def probe_batches(dtype, bs=2):
    ids, attn, px = make_inputs(N_PROBE, seed=123)
    return [{"ids": ["img-%03d" % j for j in range(i, i + bs)],
             "labels": {"cls": [j % 3 for j in range(i, i + bs)]},
             "inputs": {"input_ids": ids[i:i + bs], "attention_mask": attn[i:i + bs],
                        "pixel_values": px[i:i + bs].to(dtype)}}
            for i in range(0, N_PROBE, bs)]


def max_abs(a, b):
    return float((a.double() - b.double()).abs().max())


# ---------------------------------------------------------------------------------------------------- (a) (b) (d)
def check_inference(out_root, dtype):
    tag = str(dtype).replace("torch.", "")
    model = build_model(dtype).eval()
    geo = vl.image_token_geometry(model)
    record("(b) %s: image_token_geometry from the config" % tag,
           geo is not None and geo.tokens == TOKENS and tuple(geo.grid) == (6, 6), repr(geo))
    batches = probe_batches(dtype)
    out = vl.capture_dataset(model, batches, os.path.join(out_root, "infer-" + tag), dtype=dtype, clip_target=True)
    m, layers, targets = vl.read_capture(out)
    tl = m["token_layout"]
    record("(b) %s: manifest token_layout from the config (nothing passed)" % tag,
           tl["tokens"] == TOKENS and tl["grid"] == [6, 6], "tokens %s, grid %s" % (tl["tokens"], tl["grid"]))

    # reference: a plain forward without any hook, output_hidden_states, image positions
    with torch.no_grad():
        ref_layers, ref_clip = [], []
        lm = model.model.language_model
        for b in batches:
            inp = b["inputs"]
            o = model(**inp, output_hidden_states=True, use_cache=False)
            mask = inp["input_ids"] == IMAGE_TOKEN
            ref_layers.append([h[mask].reshape(h.shape[0], TOKENS, -1) for h in o.hidden_states])
            vo = model.model.vision_tower(inp["pixel_values"], output_hidden_states=True)
            ref_clip.append(vo.hidden_states[-2][:, 1:])
        n_hs = len(ref_layers[0])
        worst, worst_name = 0.0, None
        for i in range(n_hs):
            name = vl.layer_name(i)
            ref = torch.cat([r[i] for r in ref_layers], 0)
            got = layers[name]
            if i == n_hs - 1:  # HF applies the final norm to its last entry; the capture keeps the raw output
                got = lm.norm(got)
            if got.dtype != dtype or got.shape != ref.shape:
                record("(a) %s: %s dtype/shape" % (tag, name), False, "%s %s vs %s %s"
                       % (got.dtype, list(got.shape), ref.dtype, list(ref.shape)))
                continue
            d = max_abs(got, ref)
            if d > worst or worst_name is None:
                worst, worst_name = d, name
            if not torch.equal(got, ref):
                record("(a) %s: %s equals output_hidden_states[%d]" % (tag, name, i), False, "max |diff| %g" % d)
        record("(a) %s: %d layers == output_hidden_states at the 36 image positions of %d samples "
               "(last: norm(raw) == hidden_states[-1])" % (tag, n_hs, N_PROBE),
               worst == 0.0, "max |diff| %g%s" % (worst, " (%s)" % worst_name if worst else " over all layers"))
        clip = torch.cat(ref_clip, 0)
        got = targets["clip"]
        record("(a) %s: clip target == vision_tower hidden_states[-2][:, 1:]" % tag,
               got.dtype == dtype and torch.equal(got, clip), "max |diff| %g, shape %s" % (max_abs(got, clip),
                                                                                       list(got.shape)))
    comp = next(t for t in m["targets"] if t["name"] == "clip").get("compute")
    record("(d) %s inference: targets[clip].compute" % tag,
           comp is not None and comp.get("dtype") == tag and comp.get("autocast") is None, json.dumps(comp))
    return out


# ---------------------------------------------------------------------------------------------------- (c) (d)
class _Data(torch.utils.data.Dataset):
    def __init__(self, n):
        self.ids, self.attn, self.px = make_inputs(n, seed=7)
        self.labels = self.ids.clone()
        self.labels[self.ids == IMAGE_TOKEN] = -100
        self.labels[self.attn == 0] = -100

    def __len__(self):
        return self.ids.shape[0]

    def __getitem__(self, i):
        return {"input_ids": self.ids[i], "attention_mask": self.attn[i], "pixel_values": self.px[i],
                "labels": self.labels[i]}


class _LossTrainer(Trainer):
    """Keeps every step's exact loss tensor (the logged loss is rounded)."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        self.exact_losses = []

    def compute_loss(self, model, inputs, *a, **k):
        out = super().compute_loss(model, inputs, *a, **k)
        loss = out[0] if isinstance(out, tuple) else out
        self.exact_losses.append(loss.detach().float().clone())
        return out


class _DrawOne(TrainerCallback):
    """Negative control: consumes one random number at the capture steps, as a capture without RNG restore
    (dropout draws) would."""

    def __init__(self, every):
        self.every = every

    def on_train_begin(self, args, state, control, **kw):
        torch.rand(1)

    def on_step_end(self, args, state, control, **kw):
        if state.global_step % self.every == 0:
            torch.rand(1)


def train_run(work, precision, callback_kind, steps=6, every=2):
    model = build_model(torch.float32, dropout=0.1)
    args = TrainingArguments(
        output_dir=os.path.join(work, "trainer-%s-%s" % (precision, callback_kind)), per_device_train_batch_size=2,
        max_steps=steps, learning_rate=1e-3, logging_steps=1, save_strategy="no", report_to=[], use_cpu=True,
        seed=0, dataloader_num_workers=0, disable_tqdm=True, bf16=(precision == "bf16"))
    callbacks = []
    vcb = None
    if callback_kind == "viral":
        vcb = vl.ViralLensCallback(probe_batches(torch.float32), every, os.path.join(work, "runs"),
                                   "hf-check-%s" % precision, pooling="none", dtype=torch.float32, clip_target=True)
        callbacks.append(vcb)
    elif callback_kind == "draw":
        callbacks.append(_DrawOne(every))
    trainer = _LossTrainer(model=model, args=args, train_dataset=_Data(16), callbacks=callbacks)
    trainer.remove_callback(PrinterCallback)  # its per-step dicts would bury the summary
    trainer.train()
    weights = {k: v.detach().clone() for k, v in model.state_dict().items()}
    return trainer.exact_losses, weights, vcb


def same_run(a, b):
    la, wa = a
    lb, wb = b
    if len(la) != len(lb) or any(not torch.equal(x, y) for x, y in zip(la, lb)):
        return False, "losses differ: %s vs %s" % ([float(x) for x in la], [float(x) for x in lb])
    bad = [k for k in wa if not torch.equal(wa[k], wb[k])]
    if bad:
        return False, "%d/%d tensors differ, e.g. %s (max |diff| %g)" % (len(bad), len(wa), bad[0],
                                                                         max_abs(wa[bad[0]], wb[bad[0]]))
    return True, "%d losses, %d weight tensors bit-identical" % (len(la), len(wa))


def check_trainer(work, precision):
    try:
        plain = train_run(work, precision, "none")
    except Exception as err:
        if precision == "bf16":
            record("(c) bf16 Trainer on CPU", False, "the Trainer refused: %s" % err)
            return None
        raise
    viral = train_run(work, precision, "viral")
    draw = train_run(work, precision, "draw")
    ok, detail = same_run(plain[:2], viral[:2])
    record("(c) %s Trainer: with ViralLensCallback == without (losses %s)"
           % (precision, ", ".join("%.4f" % float(x) for x in plain[0])), ok, detail)
    differs, _ = same_run(plain[:2], draw[:2])
    record("(c) %s Trainer: sensitivity: a callback drawing one random number changes the run" % precision,
           not differs)
    vcb = viral[2]
    steps = [os.path.basename(p) for p in vcb.captured]
    record("(c) %s Trainer: captures at %s" % (precision, ", ".join(steps)),
           steps == ["step-0", "step-2", "step-4", "step-6"])
    comps = []
    for p in vcb.captured:
        with open(os.path.join(p, "manifest.json"), encoding="utf-8") as f:
            m = json.load(f)
        comps.append(next(t for t in m["targets"] if t["name"] == "clip").get("compute"))
    want = "cpu:bfloat16" if precision == "bf16" else None
    auto = [c.get("autocast") if c else "missing" for c in comps]
    record("(d) %s Trainer: targets[clip].compute autocast = %r at every step" % (precision, want),
           all(a == want for a in auto), json.dumps(comps[-1]))
    return os.path.dirname(vcb.captured[0])


# ---------------------------------------------------------------------------------------------------- (f)
def check_attentions(work):
    model = build_model().eval()
    model.set_attn_implementation("eager")
    batches = probe_batches(torch.float32)
    out = vl.capture_dataset(model, batches, os.path.join(work, "attn"), dtype=torch.float32, clip_target=False,
                             capture_attentions=True)
    _, _, targets = vl.read_capture(out)
    got = targets["attn_text_to_image"]
    refs = []
    with torch.no_grad():
        for b in batches:
            inp = b["inputs"]
            atts = model(**inp, output_attentions=True, use_cache=False).attentions  # L x [b, H, seq, seq]
            for i in range(inp["input_ids"].shape[0]):
                img = (inp["input_ids"][i] == IMAGE_TOKEN).nonzero().flatten()
                # text after the image, padding excluded
                q = [p for p in range(int(img.max()) + 1, SEQ) if int(inp["attention_mask"][i, p]) == 1]
                per = torch.stack([a[i][:, q][:, :, img].mean(dim=1) for a in atts])  # [L, H, 36]
                refs.append(per.permute(2, 0, 1).reshape(TOKENS, -1))
    ref = torch.stack(refs)
    d = max_abs(got, ref)
    record("(f) capture_attentions (eager) == mean text->image output_attentions, [%s]"
           % ", ".join(map(str, got.shape)), got.shape == ref.shape and d <= 1e-6, "max |diff| %g" % d)
    sdpa = build_model().eval()
    try:
        vl.capture_dataset(sdpa, batches[:1], os.path.join(work, "attn-sdpa"), capture_attentions=True)
        record("(f) capture_attentions on an sdpa model fails clearly", False, "no error")
    except RuntimeError as err:
        record("(f) capture_attentions on an sdpa model fails clearly", "eager" in str(err), str(err))
    return out


# ---------------------------------------------------------------------------------------------------- (e)
def cli(*args):
    r = subprocess.run(["npx", "--no-install", "tsx", "cli/main.ts"] + list(args), cwd=ROOT,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, universal_newlines=True, timeout=600)
    return r.returncode, r.stdout.strip()


def check_cli(captures, runs):
    for path in captures + runs:  # a run directory validates each of its step-<N> captures
        rc, out = cli("validate", path)
        record("(e) validate %s" % os.path.basename(path), rc == 0, "; ".join(out.splitlines()[-4:]))
    for path in captures + runs:
        rc, out = cli("layerwise", path, "--metric", "cknna,cka", "--topk", "5", "--tokens", "per-token",
                      "--engine", "ref")
        lines = out.splitlines()
        record("(e) layerwise %s" % os.path.basename(path), rc == 0)
        table = [ln for ln in lines if not re.match(r"^[\w.-]+( \w+)?: \d+/\d+$", ln)]  # not the progress lines
        print("\n".join("      " + ln for ln in table[-30:]), flush=True)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--keep", help="write the captures here and keep them")
    ap.add_argument("--skip-cli", action="store_true")
    opts = ap.parse_args()
    work = opts.keep or tempfile.mkdtemp(prefix="viral-lens-hf-check-")
    os.makedirs(work, exist_ok=True)
    import numpy
    versions = "python %s, torch %s, transformers %s, numpy %s" % (
        platform.python_version(), torch.__version__, transformers.__version__, numpy.__version__)
    for mod in ("safetensors", "accelerate"):
        try:
            versions += ", %s %s" % (mod, __import__(mod).__version__)
        except ImportError:
            versions += ", %s not installed" % mod
    print("hf_check: %s (%s)" % (versions, sys.executable), flush=True)
    captures, runs = [], []
    shim_dir = os.path.dirname(os.path.abspath(vl.__file__))
    try:
        with warnings.catch_warnings(record=True) as seen:
            warnings.simplefilter("always")
            for dtype in (torch.float32, torch.bfloat16):
                captures.append(check_inference(work, dtype))
            captures.append(check_attentions(work))
            for precision in ("fp32", "bf16"):
                run_dir = check_trainer(work, precision)
                if run_dir:
                    runs.append(run_dir)
        ours = ["%s:%d %s: %s" % (os.path.basename(w.filename), w.lineno, w.category.__name__, w.message)
                for w in seen if os.path.abspath(w.filename).startswith(shim_dir)]
        record("no warning raised from the shim's code (%d warnings in all)" % len(seen), not ours,
               "; ".join(ours[:3]))
        if not opts.skip_cli:
            check_cli(captures, runs)
    except Exception:
        traceback.print_exc()
        record("hf_check ran to the end", False, "exception above")
    finally:
        if not opts.keep:
            shutil.rmtree(work, ignore_errors=True)
    failed = [r for r in RESULTS if not r[1]]
    print("\nhf_check summary: %d passed, %d failed; %s" % (len(RESULTS) - len(failed), len(failed), versions))
    for name, _, detail in failed:
        print("  FAILED: %s  %s" % (name, detail))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
