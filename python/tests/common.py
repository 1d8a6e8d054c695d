"""Shared setup for the viral_lens_torch tests: import paths, torch availability, small helpers."""

import os
import sys
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SHIM = os.path.join(ROOT, "python")
for p in (HERE, SHIM):
    if p not in sys.path:
        sys.path.insert(0, p)

if os.environ.get("VIRAL_LENS_HIDE_SAFETENSORS"):
    # run the suite as in an environment without the optional safetensors package (None in sys.modules makes
    # every `import safetensors...` raise ImportError)
    for _name in ("safetensors", "safetensors.torch"):
        sys.modules[_name] = None

try:
    import torch  # noqa: F401
except ImportError:  # pragma: no cover - depends on the interpreter
    if os.environ.get("VIRAL_LENS_REQUIRE_TORCH"):
        raise
    raise unittest.SkipTest("torch is not importable with %s (on Debian use /usr/bin/python3 with python3-torch)"
                            % sys.executable)

import torch  # noqa: E402,F811

from tiny_llava import NUM_PATCHES, GRID, model_inputs  # noqa: E402

SMALL = {"expected_image_tokens": NUM_PATCHES, "grid": GRID}


def hooks_left(model):
    """(module name, kind) of every hook still registered anywhere in ``model``, plus a patched forward."""
    left = []
    for name, m in model.named_modules():
        for attr in ("_forward_hooks", "_forward_pre_hooks", "_forward_hooks_with_kwargs",
                     "_forward_pre_hooks_with_kwargs", "_backward_hooks"):
            d = getattr(m, attr, None)
            if d:
                left.append((name or "<root>", attr))
    if "forward" in model.__dict__:
        left.append(("<root>", "forward attribute"))
    return left


def as_capture_batch(batch, **extra):
    """Test batch -> capture_dataset batch ({"ids", "inputs", ...})."""
    out = {"ids": batch["ids"], "inputs": model_inputs(batch)}
    out.update(extra)
    return out
