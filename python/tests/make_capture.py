#!/usr/bin/env python3
"""Write a small, deterministic viral-lens capture with the PyTorch shim (used by the cross-language TS test).

    python3 python/tests/make_capture.py OUT_DIR [--samples 24] [--batch-size 10] [--pooling none|mean]

The capture: a tiny LLaVA-shaped model (tiny_llava.py, HF layout, 4 decoder layers, hidden size 32, seeded),
24 synthetic 16x16 images (4x4 grid of 4x4 patches -> 16 image tokens), every layer (embed + 4 blocks), tokens
kept, float16, target ``clip`` (vision tower penultimate layer, CLS dropped, dim 24), labels ``count`` (number of
white patches, 0..5) and ``colour_at_0_0`` (none/red/green/blue patch at grid cell (0, 0)), shards of
``--batch-size`` samples (10, 10, 4 by default). Byte-identical output for the same arguments and torch build
(the provenance timestamp is fixed). Prints a JSON summary on stdout.
"""

import argparse
import json
import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(HERE)), "python"))

import torch  # noqa: E402

import viral_lens_torch as vl  # noqa: E402
from tiny_llava import GRID, IMAGE_SIZE, NUM_PATCHES, PATCH, TinyLlavaForConditionalGeneration, make_hf_batch  # noqa: E402

COLOURS = ("none", "red", "green", "blue")
SEED = 20261127


def synthetic_images(n, seed):
    """Images with a coloured patch at grid cell (0, 0) and ``count`` white patches elsewhere; and their labels."""
    g = torch.Generator().manual_seed(seed)
    images = torch.rand(n, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g) * 0.2
    counts, colours = [], []
    for i in range(n):
        colour = int(torch.randint(0, len(COLOURS), (1,), generator=g))
        if colour > 0:
            images[i, colour - 1, :PATCH, :PATCH] = 1.0
        count = int(torch.randint(0, 6, (1,), generator=g))
        cells = (torch.randperm(NUM_PATCHES - 1, generator=g)[:count] + 1).tolist()
        for c in cells:
            r, q = divmod(c, GRID[1])
            images[i, :, r * PATCH:(r + 1) * PATCH, q * PATCH:(q + 1) * PATCH] = 1.0
        counts.append(count)
        colours.append(COLOURS[colour])
    return images, counts, colours


def build_batches(samples, batch_size, seed=SEED):
    images, counts, colours = synthetic_images(samples, seed)
    batches = []
    for start in range(0, samples, batch_size):
        n = min(batch_size, samples - start)
        b = make_hf_batch(n, seed=seed + start, start=start)
        batches.append({
            "ids": ["synth-%03d" % (start + i) for i in range(n)],
            "labels": {"count": counts[start:start + n], "colour_at_0_0": colours[start:start + n]},
            "inputs": {"input_ids": b["input_ids"], "attention_mask": b["attention_mask"],
                       "pixel_values": images[start:start + n]},
        })
    return batches


def make_capture(out_dir, samples=24, batch_size=10, pooling="none", dtype=torch.float16):
    torch.manual_seed(SEED)
    model = TinyLlavaForConditionalGeneration(layout="hf", n_layers=4, dim=32, vdim=24, heads=4,
                                              name="viral-lens/tiny-llava-test").eval()
    return vl.capture_dataset(
        model, build_batches(samples, batch_size), out_dir, pooling=pooling, dtype=dtype,
        expected_image_tokens=NUM_PATCHES, grid=GRID, overwrite=True, variant="baseline",
        checkpoint={"step": 0}, model_info={"name": "viral-lens/tiny-llava-test", "seed": SEED},
        provenance={"created": "2026-01-01T00:00:00Z", "script": "python/tests/make_capture.py"})


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("out_dir")
    ap.add_argument("--samples", type=int, default=24)
    ap.add_argument("--batch-size", type=int, default=10)
    ap.add_argument("--pooling", choices=("none", "mean"), default="none")
    ap.add_argument("--dtype", choices=("float16", "float32"), default="float16")
    a = ap.parse_args(argv)
    path = make_capture(a.out_dir, a.samples, a.batch_size, a.pooling, getattr(torch, a.dtype))
    with open(os.path.join(path, "manifest.json"), encoding="utf-8") as f:
        m = json.load(f)
    print(json.dumps({"path": path, "samples": m["samples"]["count"],
                      "layers": [e["name"] for e in m["layers"]],
                      "targets": {t["name"]: [t["tokens"], t["dim"]] for t in m["targets"]},
                      "token_layout": m["token_layout"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
