"""Capture during training: a plain function for custom loops and a Hugging Face Trainer callback."""

import logging
import os
import random
import sys

import torch

from .capture import _restore_modes, _save_modes, capture_dataset

log = logging.getLogger("viral_lens_torch")


class _RngState:
    """Snapshot of the torch CPU RNG, every initialised CUDA device's RNG, Python's ``random`` and (if imported)
    numpy's global RNG."""

    def __init__(self):
        self.cpu = torch.get_rng_state()
        self.cuda = None
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            self.cuda = torch.cuda.get_rng_state_all()
        self.py = random.getstate()
        np = sys.modules.get("numpy")
        self.np = np.random.get_state() if np is not None else None

    def restore(self):
        torch.set_rng_state(self.cpu)
        if self.cuda is not None:
            torch.cuda.set_rng_state_all(self.cuda)
        random.setstate(self.py)
        if self.np is not None:
            sys.modules["numpy"].random.set_state(self.np)


def check_run_name(run_name):
    """Refuse a ``run_name`` that would put captures outside ``out_root``: empty, absolute, or with a ``..`` part
    (sub-folders such as ``"exp1/run-a"`` are fine). Returns it unchanged."""
    if not isinstance(run_name, str) or not run_name.strip():
        raise ValueError("run_name must be a non-empty string, not %r" % (run_name,))
    parts = run_name.replace("\\", "/").split("/")
    if os.path.isabs(run_name) or run_name.startswith(("/", "\\")) or os.path.splitdrive(run_name)[0] \
            or ".." in parts or "\0" in run_name:
        raise ValueError("run_name %r would write outside out_root: use a relative name without '..' "
                         "(e.g. 'llava-viral' or 'exp1/run-a')" % (run_name,))
    return run_name


def step_dir(out_root, run_name, step):
    """``out_root/<run_name>/step-<step>`` (the layout of a training run in docs/capture-format.md)."""
    return os.path.join(os.fspath(out_root), check_run_name(run_name), "step-%d" % int(step))


def _unwrap(model):
    # DistributedDataParallel / DataParallel keep the real model in .module
    while isinstance(model, (torch.nn.parallel.DistributedDataParallel, torch.nn.DataParallel)):
        model = model.module
    return model


def capture_during_training(model, probe_batches, step, out_root, run_name, **capture_kwargs):
    """Capture the fixed probe set at training step ``step`` into ``out_root/<run_name>/step-<step>/``.

    Switches the model to eval mode, runs the probe batches under ``torch.no_grad()`` with
    :func:`capture_dataset`, then restores the previous train/eval flag of EVERY module (so frozen sub-modules that
    were in eval stay in eval) and the RNG states (torch CPU + CUDA, Python, numpy), so dropout masks and every
    random draw of the following training steps are exactly those of a run without the capture. Gradients are
    untouched (no backward runs; ``.grad`` is not modified). An existing complete step directory is resumed, i.e.
    left as is. Extra keyword arguments go to :func:`capture_dataset`. Returns the capture path.

    Not supported: DeepSpeed ZeRO-3 / FSDP sharded parameters (every rank would have to run the probe forward).
    """
    model = _unwrap(model)
    out_dir = step_dir(out_root, run_name, step)
    capture_kwargs.setdefault("checkpoint", {"step": int(step)})
    capture_kwargs.setdefault("run", run_name)
    capture_kwargs.setdefault("step", int(step))
    rng = _RngState()
    modes = _save_modes(model)
    try:
        return capture_dataset(model, probe_batches, out_dir, **capture_kwargs)
    finally:
        _restore_modes(modes)
        rng.restore()


try:  # transformers is optional
    from transformers import TrainerCallback as _CallbackBase  # type: ignore
    HAVE_TRANSFORMERS = True
except Exception:  # pragma: no cover - depends on the environment
    _CallbackBase = object
    HAVE_TRANSFORMERS = False


class ViralLensCallback(_CallbackBase):
    """Hugging Face ``Trainer`` callback: every ``every_n_steps`` optimizer steps (and optionally at step 0),
    capture the fixed ``probe_batches`` into ``out_root/<run_name>/step-<N>/`` with
    :func:`capture_during_training` (on the main process only). A ``transformers.TrainerCallback`` subclass when
    transformers is importable, a plain class with the same methods otherwise.

    ``trainer = Trainer(..., callbacks=[ViralLensCallback(probe_batches, 500, "runs", "llava-viral")])``
    """

    def __init__(self, probe_batches, every_n_steps, out_root, run_name, capture_at_start=True, **capture_kwargs):
        if int(every_n_steps) < 1:
            raise ValueError("every_n_steps must be >= 1")
        check_run_name(run_name)  # fail when the Trainer is built, not at the first capture
        self.probe_batches = probe_batches
        self.every_n_steps = int(every_n_steps)
        self.out_root = out_root
        self.run_name = run_name
        self.capture_at_start = capture_at_start
        self.capture_kwargs = capture_kwargs
        self.captured = []  # paths written so far

    def _capture(self, model, step, state):
        if model is None:
            log.warning("ViralLensCallback: no model passed to the callback at step %d; skipped", step)
            return
        if state is not None and not getattr(state, "is_world_process_zero", True):
            return
        path = capture_during_training(model, self.probe_batches, step, self.out_root, self.run_name,
                                       **self.capture_kwargs)
        self.captured.append(path)

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if self.capture_at_start and int(getattr(state, "global_step", 0)) == 0:
            self._capture(model, 0, state)
        return control

    def on_step_end(self, args, state, control, model=None, **kwargs):
        step = int(state.global_step)
        if step > 0 and step % self.every_n_steps == 0:
            self._capture(model, step, state)
        return control
