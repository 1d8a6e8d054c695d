"""Capture overhead benchmark (``npm run bench:capture``): an all-layer, per-token capture vs the bare forward, and
the capture's write throughput vs a plain write + fsync of the same bytes on the same disk, in one run.

A synthetic decoder (``model.model.layers``, ``--layers`` blocks of width ``--dim``), ``--tokens`` image tokens +
64 text tokens per sample, batches of ``--batch``, fp16 shards (bf16 model on CUDA). ``--shim DIR`` imports
viral_lens_torch from DIR instead (e.g. an export of an older commit, for before/after numbers).
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=8, help="decoder layers (all captured: layers + 1 hidden states)")
    p.add_argument("--dim", type=int, default=1024)
    p.add_argument("--tokens", type=int, default=576, help="image tokens per sample (a square: the grid)")
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--batches", type=int, default=4, help="timed batches per variant and round")
    p.add_argument("--rounds", type=int, default=3, help="rounds (every measurement once per round; medians)")
    p.add_argument("--device", default="cuda" if _cuda() else "cpu")
    p.add_argument("--block", choices=("transformer", "light"), default=None,
                   help="decoder block: attention + MLP (default on CUDA) or elementwise only (default on CPU)")
    p.add_argument("--dir", default=None, help="where to write (default: a temp dir under the current directory)")
    p.add_argument("--shim", default=None, help="import viral_lens_torch from this directory")
    return p.parse_args()


def _cuda():
    import torch
    return torch.cuda.is_available()


def build_model(torch, nn, layers, dim, device, dtype, block):
    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
            self.attn = nn.MultiheadAttention(dim, max(1, dim // 64), batch_first=True)
            self.mlp = nn.Sequential(nn.Linear(dim, 4 * dim), nn.GELU(), nn.Linear(4 * dim, dim))

        def forward(self, x):
            h = self.norm1(x)
            x = x + self.attn(h, h, h, need_weights=False)[0]
            return (x + self.mlp(self.norm2(x)),)

    class LightBlock(nn.Module):
        """Elementwise only: on a CPU without a fast BLAS this keeps the forward short next to the bytes
        captured, as a GPU forward is."""

        def __init__(self):
            super().__init__()
            self.norm = nn.LayerNorm(dim)

        def forward(self, x):
            return (x + 0.5 * torch.nn.functional.gelu(self.norm(x)),)

    if block == "light":
        Block = LightBlock  # noqa: F811

    class Inner(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed_tokens = nn.Embedding(1000, dim)
            self.layers = nn.ModuleList(Block() for _ in range(layers))
            self.norm = nn.LayerNorm(dim)

        def forward(self, input_ids):
            x = self.embed_tokens(input_ids)
            for layer in self.layers:
                x = layer(x)[0]
            return self.norm(x)

    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = Inner()

        def forward(self, input_ids, attention_mask=None):
            return self.model(input_ids)

    torch.manual_seed(0)
    return LM().to(device=device, dtype=dtype).eval()


def sync(torch, device):
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def dir_bytes(path):
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            total += os.path.getsize(os.path.join(root, f))
    return total


def plain_write(path, nbytes):
    """Seconds to write ``nbytes`` to one new file in 64 MiB chunks and fsync it."""
    chunk = os.urandom(1 << 20) * 64
    t0 = time.perf_counter()
    with open(path, "wb") as f:
        left = nbytes
        while left > 0:
            n = min(left, len(chunk))
            f.write(memoryview(chunk)[:n])
            left -= n
        f.flush()
        os.fsync(f.fileno())
    dt = time.perf_counter() - t0
    os.unlink(path)
    return dt


def main():
    args = parse_args()
    if args.shim:
        sys.path.insert(0, os.path.abspath(args.shim))
    else:
        sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import inspect

    import torch
    import torch.nn as nn
    import viral_lens_torch as vl

    device = args.device
    dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
    side = int(round(args.tokens ** 0.5))
    if side * side != args.tokens:
        sys.exit("--tokens must be a square (the image grid)")
    block = args.block or ("transformer" if device.startswith("cuda") else "light")
    model = build_model(torch, nn, args.layers, args.dim, device, dtype, block)
    img = 999
    seq = args.tokens + 64
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(1, 900, (args.batch, seq), generator=g)
    ids[:, 8:8 + args.tokens] = img
    ids = ids.to(device)
    mask = ids == img

    base = args.dir or tempfile.mkdtemp(prefix="vl-bench-capture-", dir=os.getcwd())
    os.makedirs(base, exist_ok=True)
    print("viral-lens capture overhead: %d %s layers (+ embed) x %d tokens x %d dims, batch %d, %d batches, %s %s "
          "model, fp16 shards, torch %s, shim %s, writing under %s"
          % (args.layers, block, args.tokens, args.dim, args.batch, args.batches, device,
             str(dtype).replace("torch.", ""), torch.__version__, os.path.dirname(vl.__file__), base))
    def time_forward():
        out = []
        with torch.no_grad():
            for _ in range(args.batches):
                sync(torch, device)
                t0 = time.perf_counter()
                model(ids)
                sync(torch, device)
                out.append(time.perf_counter() - t0)
        return statistics.median(out)

    def time_capture(extra, out):
        """(wall seconds for args.batches captured forwards incl. the flush on exit, seconds inside
        CaptureWriter.append_batch, bytes on disk)."""
        writer = vl.CaptureWriter.create(out, model={"name": "bench"})
        io = [0.0]
        real_append = writer.append_batch

        def timed_append(*a, **k):  # the write path's own time, in whichever thread runs it
            t = time.perf_counter()
            try:
                return real_append(*a, **k)
            finally:
                io[0] += time.perf_counter() - t

        writer.append_batch = timed_append
        with torch.no_grad():
            cap_cm = vl.capture_hidden_states(model, writer, image_token_mask=mask, dtype=torch.float16,
                                              expected_image_tokens=args.tokens, grid=(side, side), **extra)
            t0 = time.perf_counter()
            with cap_cm as cap:
                for i in range(args.batches):
                    cap.expect(["s%d-%d" % (i, j) for j in range(args.batch)])
                    model(ids)
            sync(torch, device)
            wall = time.perf_counter() - t0
        nbytes = dir_bytes(out)
        shutil.rmtree(out, ignore_errors=True)
        return wall, io[0], nbytes

    params = inspect.signature(vl.capture_hidden_states).parameters
    variants = [("background writer", {"background": True}), ("writes in the forward", {"background": False})] \
        if "background" in params else [("capture (this shim's only mode)", {})]
    try:
        with torch.no_grad():
            model(ids)  # warm-up
        fwd, plain, res = [], [], {label: [] for label, _ in variants}
        # rounds interleave every measurement, so load from other processes hits all of them alike
        for r in range(args.rounds):
            fwd.append(time_forward())
            for k, (label, extra) in enumerate(variants):
                res[label].append(time_capture(extra, os.path.join(base, "cap-%d-%d" % (r, k))))
            nbytes = res[variants[0][0]][-1][2]
            plain.append(nbytes / plain_write(os.path.join(base, "plain.bin"), nbytes))
        forward_s = statistics.median(fwd)
        plain_bps = statistics.median(plain)
        print("forward (no capture): %.4f s per batch (median of %d rounds x %d batches)"
              % (forward_s, args.rounds, args.batches))
        print("plain write + fsync of the same %.1f MB (one file, 64 MiB writes): %.0f MB/s (median of %d)"
              % (nbytes / 1e6, plain_bps / 1e6, args.rounds))
        for label, _ in variants:
            per = statistics.median(w for w, _, _ in res[label]) / args.batches
            bps = statistics.median(nb / io for _, io, nb in res[label])
            overall = statistics.median(nb / w for w, _, nb in res[label])
            print("capture, %s: %.4f s per batch (wall incl. the flush on exit, median of %d rounds) = %.2fx the "
                  "forward; overall %.0f MB/s" % (label, per, args.rounds, per / forward_s, overall / 1e6))
            print("  write path (bytes / time inside CaptureWriter.append_batch): %.0f MB/s = %.0f%% of the plain "
                  "write" % (bps / 1e6, 100.0 * bps / plain_bps))
    finally:
        if not args.dir:
            shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    main()
