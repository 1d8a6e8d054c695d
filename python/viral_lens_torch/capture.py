"""Forward hooks that capture LLM hidden states at image-token positions and hand them to a CaptureWriter."""

import contextlib
import inspect
import logging
import os
import shutil
import warnings

import torch

from .background import BackgroundWriter, PinnedPool, to_host
from .discovery import discover, find_projector, hidden_size, image_token_index, model_name, resolve_image_tokens
from .errors import CaptureFormatError, ImageTokenCountError, LayerDiscoveryError, TokenGridError
from .ingest import IngestClient
from .targets import CLIP_DESCRIPTION, autocast_state, check_token_grid, encoder_features, select_vision_features
from .writer import CaptureWriter, estimate_disk_bytes, format_bytes, layer_name

log = logging.getLogger("viral_lens_torch")

LLAVA_REPO_IMAGE_TOKEN_INDEX = -200
ATTENTION_TARGET = "attn_text_to_image"


class LlavaRepoImageMask:
    """Image-token positions for the LLaVA repo's ``LlavaLlamaForCausalLM``.

    There ``input_ids`` hold ONE placeholder ``IMAGE_TOKEN_INDEX`` (-200) per image; the model drops padding
    (``attention_mask``), replaces the placeholder by ``num_image_tokens`` projected features, and re-pads the
    batch (right by default, ``tokenizer_padding_side``). This reproduces those positions from ``input_ids`` and
    ``attention_mask``. One image per sample; no anyres; no ``tokenizer_model_max_length`` truncation.
    """

    def __init__(self, num_image_tokens=576, image_token_index=LLAVA_REPO_IMAGE_TOKEN_INDEX, padding_side="right"):
        if padding_side not in ("right", "left"):
            raise ValueError("padding_side must be 'right' or 'left'")
        self.num_image_tokens = num_image_tokens
        self.image_token_index = image_token_index
        self.padding_side = padding_side

    def _spans(self, input_ids, attention_mask):
        spans = []
        for i in range(input_ids.shape[0]):
            ids = input_ids[i]
            if attention_mask is not None:
                ids = ids[attention_mask[i].bool()]
            where = (ids == self.image_token_index).nonzero().flatten()
            if where.numel() != 1:
                raise ImageTokenCountError(
                    "sample %d has %d image placeholders (%d) in input_ids; LlavaRepoImageMask supports exactly 1"
                    % (i, where.numel(), self.image_token_index))
            spans.append((int(where[0]), ids.numel() - 1 + self.num_image_tokens))
        return spans

    def _place(self, spans, seq_len, image):
        longest = max(n for _, n in spans)
        if seq_len is not None and seq_len != longest:
            raise ImageTokenCountError(
                "the LLM sequence has %d positions but input_ids with %d image tokens per placeholder give %d: the "
                "model inserts %d image tokens per image, not expected_image_tokens=%d"
                % (seq_len, self.num_image_tokens, longest, self.num_image_tokens + seq_len - longest,
                   self.num_image_tokens))
        max_len = longest
        out = torch.zeros(len(spans), max_len, dtype=torch.bool)
        for i, (start, n) in enumerate(spans):
            off = 0 if self.padding_side == "right" else max_len - n
            if image:
                out[i, off + start: off + start + self.num_image_tokens] = True
            else:
                out[i, off: off + n] = True
        return out

    def __call__(self, input_ids, attention_mask=None, seq_len=None):
        return self._place(self._spans(input_ids, attention_mask), seq_len, image=True)

    def valid_mask(self, input_ids, attention_mask=None, seq_len=None):
        """Non-padding positions of the spliced sequence."""
        return self._place(self._spans(input_ids, attention_mask), seq_len, image=False)


class _Events:
    def __init__(self, events):
        self.events = events

    def synchronize(self):
        for ev in self.events:
            ev.synchronize()


class _BatchState:
    def __init__(self, ids, labels, targets, mask, input_ids, attention_mask):
        self.ids = ids
        self.labels = labels
        self.targets = targets
        self.mask_override = mask
        self.input_ids = input_ids
        self.attention_mask = attention_mask
        self.mask = None  # resolved bool [b, seq] on the device of the first hidden state
        self.mask_on = {}  # copies on other devices
        self.layers = {}
        self.index_on = {}  # device -> flat indices of the image tokens in [b * seq]
        self.buffers = []  # pinned host buffers holding this batch (back to the pool once written)
        self.copy_devices = set()  # CUDA devices whose streams carry this batch's copies into those buffers
        self.vision = None  # (features the projector received, autocast regions active then)


def _hidden_from_output(output):
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], torch.Tensor):
        return output[0]
    h = getattr(output, "hidden_states", None) if not isinstance(output, dict) else output.get("hidden_states")
    if isinstance(h, torch.Tensor):
        return h
    raise TypeError("cannot find the hidden states in a decoder layer output of type %s" % type(output).__name__)


def _accepts_attention_mask(fn):
    try:
        params = list(inspect.signature(fn).parameters.values())
    except (TypeError, ValueError):
        return False
    if any(p.name == "attention_mask" or p.kind == p.VAR_KEYWORD for p in params):
        return True
    positional = [p for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    return len(positional) >= 2 or any(p.kind == p.VAR_POSITIONAL for p in params)


class HiddenStateCapture:
    """The object yielded by :func:`capture_hidden_states`.

    Call :meth:`expect` before a forward to give the sample ids / labels / targets of the batch; the next forward
    of the model is captured and written as that batch; later forwards are ignored until the next ``expect``
    (so ``generate`` decode steps are skipped). If ``expect`` is never called, every forward is captured with
    automatic ids ``sample-000000``, ``sample-000001``, ...
    """

    def __init__(self, model, writer, layers=None, image_token_mask=None, pooling="none", dtype=torch.float16,
                 expected_image_tokens=None, grid=None, capture_attentions=False, num_samples=None,
                 target_dims=None, auto_id_prefix="sample-", vision_target=None, vision_feature_layer=None,
                 background=True, max_pending=2):
        if pooling not in ("none", "mean"):
            raise ValueError("pooling must be 'none' or 'mean', not %r" % (pooling,))
        if dtype not in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
            raise ValueError("dtype must be a floating dtype storable in a capture, not %s" % (dtype,))
        indices = None
        explicit_layers = layers
        if layers is not None and not isinstance(layers, str):
            seq = list(layers)
            if seq and all(isinstance(x, int) and not isinstance(x, bool) for x in seq):
                indices, explicit_layers = sorted(set(seq)), None
        self.layout = discover(model, explicit_layers)
        expected_image_tokens, grid = resolve_image_tokens(model, self.layout, expected_image_tokens, grid)
        if grid is not None and int(grid[0]) * int(grid[1]) != int(expected_image_tokens):
            raise TokenGridError("grid %dx%d has %d cells but expected_image_tokens is %d"
                                 % (grid[0], grid[1], grid[0] * grid[1], expected_image_tokens))
        self.model = model
        self.writer = writer
        self.pooling = pooling
        self.dtype = dtype
        self.expected_image_tokens = int(expected_image_tokens)
        self.grid = tuple(grid) if grid is not None else None
        self.capture_attentions = capture_attentions
        self.image_token_mask = image_token_mask
        self.auto_id_prefix = auto_id_prefix
        self.tokens = 1 if pooling == "mean" else self.expected_image_tokens
        n = self.layout.num_layers
        if indices is None:
            indices = list(range(n + 1))
        bad = [i for i in indices if not 0 <= i <= n]
        if bad:
            raise ValueError("layer indices %s out of range: hidden_states indices are 0..%d (0 = embeddings, "
                             "%d decoder layers)" % (bad, n, n))
        self.indices = indices
        self.layer_names = [layer_name(i) for i in indices]

        self._handles = []
        self._state = None
        self._pending = None
        self._explicit = False
        self._in_forward = False
        self._closed = True
        self._warned_outside = False
        self._saved_forward = None
        self._repo_mask = None
        self.batches_written = 0
        self.samples_written = 0
        self.num_samples = num_samples
        self.target_dims = dict(target_dims or {})
        self.hidden_size = hidden_size(model, self.layout)
        # vision_target: store the vision tower's output of the model's own forward (same autocast / dtype as
        # the features the LLM received) as this target, unless a batch brings its own
        self.vision_target = vision_target
        self.vision_feature_layer = vision_feature_layer
        self.background = bool(background)
        self.max_pending = int(max_pending)
        self._bg = None
        self._pool = PinnedPool(max_per_key=self.max_pending + 2)
        self._target_compute = {}
        if vision_target is not None and self.layout.vision_tower is None:
            raise LayerDiscoveryError("could not find the vision tower of %s (layout %s) for the %r target; pass "
                                      "targets={%r: ...} or clip_target=False"
                                      % (type(model).__name__, self.layout.kind, vision_target, vision_target))

    # ------------------------------------------------------------------ public
    def expect(self, ids, labels=None, targets=None, image_token_mask=None):
        """Declare the next batch: ``ids`` (unique strings), ``labels`` (dict name -> list), ``targets`` (dict
        name -> tensor ``[b, tokens, dim]``, e.g. from :func:`vision_tower_features`), and optionally this batch's
        image-token mask (bool ``[b, seq]`` over the LLM's input sequence)."""
        self._explicit = True
        self._pending = (list(ids), labels, targets, image_token_mask)

    @property
    def bytes_per_sample(self):
        if self.hidden_size is None:
            return None
        return estimate_disk_bytes(1, len(self.indices), self.tokens, self.hidden_size, self.dtype,
                                   targets={k: (self.tokens, d) for k, d in self.target_dims.items()})

    # ------------------------------------------------------------------ install / remove
    def _install(self):
        self._closed = False
        try:
            self._configure_writer()
            self._log_estimate()
            if self.background:
                self._bg = BackgroundWriter(self.writer, self.max_pending, pool=self._pool)
            layers = self.layout.decoder_layers
            if 0 in self.indices:
                self._handles.append(_register_pre_hook(layers[0], self._embed_pre_hook))
            for i in self.indices:
                if i > 0:
                    self._handles.append(layers[i - 1].register_forward_hook(self._make_layer_hook(layer_name(i))))
            if self.vision_target is not None:
                self._handles.append(self.layout.vision_tower.register_forward_hook(self._vision_hook))
            self._wrap_forward()
        except BaseException:
            self._remove()
            raise

    def _remove(self, raise_errors=True):
        """Remove every hook, then write the queued batches (also when an exception is propagating: they are
        complete) and stop the writer thread; ``raise_errors=False`` logs a write error instead of raising it."""
        self._closed = True
        self._state = None
        self._pending = None
        while self._handles:
            self._handles.pop().remove()
        self._unwrap_forward()
        bg, self._bg = self._bg, None
        if bg is not None:
            bg.close(raise_errors=raise_errors)

    def flush(self):
        """Wait until every captured batch is on disk (raises the first write error)."""
        if self._bg is not None:
            self._bg.flush()

    @property
    def writer_stats(self):
        """(bytes written, seconds the writer spent in append_batch) of the background writer, or None."""
        return (self._bg.bytes_written, self._bg.busy_s) if self._bg is not None else None

    def _wrap_forward(self):
        model = self.model
        had = "forward" in model.__dict__
        prev = model.__dict__.get("forward")
        orig = model.forward
        try:
            sig = inspect.signature(orig)
        except (TypeError, ValueError):
            sig = None
        capture = self

        def forward(*args, **kwargs):
            if capture._closed or capture._in_forward:
                return orig(*args, **kwargs)
            if capture._explicit and capture._pending is None:
                # e.g. generate() decode steps after the captured prefill: run without capturing
                capture._in_forward = True
                try:
                    return orig(*args, **kwargs)
                finally:
                    capture._in_forward = False
            named = {}
            if sig is not None:
                try:
                    named = sig.bind_partial(*args, **kwargs).arguments
                except TypeError:
                    named = dict(kwargs)
            if capture.capture_attentions:
                if sig is None or "output_attentions" in sig.parameters or any(
                        p.kind == p.VAR_KEYWORD for p in sig.parameters.values()):
                    kwargs["output_attentions"] = True
            ids, labels, targets, mask = capture._pending or (None, None, None, None)
            capture._pending = None
            capture._state = _BatchState(ids, labels, targets, mask, named.get("input_ids"),
                                         named.get("attention_mask"))
            capture._in_forward = True
            try:
                out = orig(*args, **kwargs)
                capture._finish(out)
            finally:
                capture._in_forward = False
                capture._state = None
            return out

        forward.__wrapped__ = orig
        forward._viral_lens_capture = self
        model.forward = forward
        self._saved_forward = (had, prev, forward)

    def _unwrap_forward(self):
        if self._saved_forward is None:
            return
        had, prev, ours = self._saved_forward
        self._saved_forward = None
        model = self.model
        if model.__dict__.get("forward") is not ours:
            warnings.warn("model.forward was replaced by someone else during the capture; leaving it in place "
                          "(the viral-lens wrapper inside it is now a pass-through)")
            return
        if had:
            model.__dict__["forward"] = prev
        else:
            del model.__dict__["forward"]

    def _configure_writer(self):
        self.writer.configure(
            token_layout={"kind": "image", "tokens": self.tokens, "source_tokens": self.expected_image_tokens,
                          "grid": list(self.grid) if self.grid else None, "pooling": self.pooling},
            model={"name": model_name(self.model), "hidden_size": self.hidden_size,
                   "num_layers": self.layout.num_layers},
            layers=[{"name": n, "dim": self.hidden_size} for n in self.layer_names] if self.hidden_size else None)

    def _log_estimate(self):
        per = self.bytes_per_sample
        if per is None:
            log.info("viral-lens capture: %d layer(s) x %d token(s); hidden size unknown until the first batch",
                     len(self.indices), self.tokens)
            return
        what = "%d layer(s) x %d token(s) x %d dims %s" % (len(self.indices), self.tokens, self.hidden_size,
                                                          str(self.dtype).replace("torch.", ""))
        if self.target_dims:
            what += " + targets %s" % ", ".join("%s(%d)" % kv for kv in sorted(self.target_dims.items()))
        if self.num_samples:
            total = per * int(self.num_samples)
            log.info("viral-lens capture to %s: %s = %s per sample; %d samples -> about %s on disk",
                     self.writer.out_dir, what, format_bytes(per), self.num_samples, format_bytes(total))
            try:
                free = shutil.disk_usage(self.writer.out_dir).free
            except OSError:
                free = None
            if free is not None and total > free:
                log.warning("viral-lens capture needs about %s but only %s is free under %s",
                            format_bytes(total), format_bytes(free), self.writer.out_dir)
        else:
            log.info("viral-lens capture to %s: %s = %s per sample (%s per 1000 samples)",
                     self.writer.out_dir, what, format_bytes(per), format_bytes(per * 1000))

    # ------------------------------------------------------------------ hooks
    def _embed_pre_hook(self, module, args, kwargs=None):
        hidden = args[0] if args else (kwargs or {}).get("hidden_states")
        if hidden is None:
            raise TypeError("the first decoder layer was called without hidden states as its first argument")
        self._record("embed", hidden)
        return None

    def _vision_hook(self, module, args, output):
        st = self._state
        if st is None or (st.targets and self.vision_target in st.targets):
            return None
        if st.vision is not None:
            raise RuntimeError("the vision tower ran twice in one forward (several images per sample?); pass "
                               "targets={%r: ...} yourself or clip_target=False" % self.vision_target)
        b = None
        if args and isinstance(args[0], torch.Tensor):
            b = args[0].shape[0]
        feats = select_vision_features(self.model, self.layout, output, layer=self.vision_feature_layer,
                                       expected_tokens=self.expected_image_tokens, grid=self.grid, batch=b)
        st.vision = (feats.detach(), autocast_state())
        return None

    def _make_layer_hook(self, name):
        def hook(module, args, output):
            self._record(name, _hidden_from_output(output))
            return None
        return hook

    def _record(self, name, hidden):
        st = self._state
        if st is None:
            if not self._closed and not self._in_forward and not self._warned_outside:
                self._warned_outside = True
                warnings.warn("viral-lens: a decoder layer ran outside model.forward(); nothing captured for it "
                              "(call the model itself inside capture_hidden_states)")
            return
        if name in st.layers:
            raise RuntimeError("layer %s ran twice in one forward; capture expects one pass per layer" % name)
        h = hidden.detach()
        if h.dim() != 3:
            raise TypeError("hidden states of %s have shape %s; expected [batch, seq, dim]" % (name, list(h.shape)))
        mask = self._mask_for(st, h)
        b, seq, d = h.shape
        idx = st.index_on.get(h.device)
        if idx is None:  # one device sync per batch (and device), not one per layer as h[mask] would do
            idx = st.index_on[h.device] = mask.reshape(-1).nonzero().squeeze(1)
        sel = h.reshape(b * seq, d).index_select(0, idx).reshape(b, self.expected_image_tokens, d)
        if self.pooling == "mean":
            acc = sel if sel.dtype == torch.float64 else sel.float()
            sel = acc.mean(dim=1, keepdim=True)
        st.layers[name] = self._to_host(st, sel)

    def _to_host(self, st, t):
        host, pooled = to_host(t, self.dtype, self._pool)
        if pooled is not None:
            st.buffers.append(pooled)
            st.copy_devices.add(t.device)
        return host

    def _mask_for(self, st, h):
        if st.mask is not None and st.mask.shape[1] == h.shape[1]:
            if st.mask.device != h.device:  # layers spread over several GPUs (device_map="auto")
                cached = st.mask_on.get(h.device)
                if cached is None:
                    cached = st.mask_on[h.device] = st.mask.to(h.device)
                return cached
            return st.mask
        b, seq = h.shape[0], h.shape[1]
        mask = st.mask_override if st.mask_override is not None else self.image_token_mask
        if mask is None:
            mask = self._auto_mask(st, seq)
        elif callable(mask) and not isinstance(mask, torch.Tensor):
            if st.input_ids is None:
                raise ImageTokenCountError("image_token_mask is a function but forward() got no input_ids; pass the "
                                           "mask tensor with cap.expect(ids, image_token_mask=...)")
            if isinstance(mask, LlavaRepoImageMask):
                mask = mask(st.input_ids, st.attention_mask, seq_len=seq)
            elif _accepts_attention_mask(mask):
                mask = mask(st.input_ids, st.attention_mask)
            else:
                mask = mask(st.input_ids)
        if not isinstance(mask, torch.Tensor):
            raise TypeError("image_token_mask must give a bool tensor [batch, seq], got %s" % type(mask).__name__)
        if mask.dtype != torch.bool:
            mask = mask != 0
        if tuple(mask.shape) != (b, seq):
            raise ImageTokenCountError(
                "image-token mask has shape %s but the LLM sequence is [%d, %d] (batch, seq)%s"
                % (list(mask.shape), b, seq, self._count_hint(None)))
        counts = mask.sum(dim=1).tolist()
        for i, c in enumerate(counts):
            if c != self.expected_image_tokens:
                sid = st.ids[i] if st.ids is not None and i < len(st.ids) else None
                raise ImageTokenCountError(
                    "sample %d%s has %d image-token positions but expected_image_tokens=%d%s"
                    % (i, " (id %r)" % sid if sid is not None else "", c, self.expected_image_tokens,
                       self._count_hint(c)))
        st.mask = mask.to(h.device)
        return st.mask

    def _count_hint(self, found):
        if self.layout.kind in ("hf-llava", "hf-llava-legacy") and found == 1:
            return ("; this transformers version expands the <image> token inside the model: upgrade transformers "
                    "(processor-side expansion) or pass image_token_mask=")
        if self.layout.kind in ("hf-llava", "hf-llava-legacy"):
            return ("; check the processor expanded <image> to %d tokens (patch_size / vision_feature_select_strategy "
                    "set on the processor) and expected_image_tokens/grid match the vision tower"
                    % self.expected_image_tokens)
        return "; pass expected_image_tokens= / image_token_mask= matching the model"

    def _auto_mask(self, st, seq):
        kind = self.layout.kind
        if kind == "llava-repo":
            if st.input_ids is None:
                raise ImageTokenCountError("LLaVA-repo model called without input_ids (e.g. inputs_embeds from "
                                           "generate()); pass cap.expect(ids, image_token_mask=...) explicitly")
            if self._repo_mask is None:
                self._repo_mask = LlavaRepoImageMask(self.expected_image_tokens)
            return self._repo_mask(st.input_ids, st.attention_mask, seq_len=seq)
        idx = image_token_index(self.model)
        if idx is None:
            raise ImageTokenCountError(
                "cannot tell the image-token positions of %s (layout %s, no config.image_token_index): pass "
                "image_token_mask=<bool tensor [batch, seq] or function input_ids -> mask>"
                % (type(self.model).__name__, kind))
        if st.input_ids is None:
            raise ImageTokenCountError("forward() got no input_ids (inputs_embeds?), so image-token positions are "
                                       "unknown; pass image_token_mask (or cap.expect(..., image_token_mask=...))")
        return st.input_ids == idx

    # ------------------------------------------------------------------ end of a forward
    def _finish(self, out):
        st = self._state
        missing = [n for n in self.layer_names if n not in st.layers]
        if missing:
            raise RuntimeError("the forward did not run layers %s (early exit? pipeline parallel?)" % missing)
        b = st.layers[self.layer_names[0]].shape[0]
        ids = st.ids
        if ids is None:
            start = self.samples_written
            ids = ["%s%06d" % (self.auto_id_prefix, start + i) for i in range(b)]
        if len(ids) != b:
            raise CaptureFormatError("cap.expect got %d ids but the forward had batch size %d" % (len(ids), b))
        targets, descriptions, compute = {}, {}, {}
        for name, t in (st.targets or {}).items():
            if isinstance(t, tuple):  # (tensor, description)
                t, descriptions[name] = t
            targets[name] = self._prepare_target(name, t, b)
        vt_name = self.vision_target
        if vt_name is not None and vt_name not in targets:
            if st.vision is None:
                raise RuntimeError("the forward did not run the vision tower, so there is no %r target (no pixel "
                                   "values?); pass targets={%r: ...} or clip_target=False" % (vt_name, vt_name))
            feats, regions = st.vision
            compute[vt_name] = {"source": "vision tower output during the model's forward",
                                "dtype": str(feats.dtype).replace("torch.", ""),
                                "autocast": ",".join(regions) if regions else None}
            targets[vt_name] = self._prepare_target(vt_name, feats, b)
        if self.capture_attentions:
            targets[ATTENTION_TARGET] = self._attention_target(st, out)
            descriptions[ATTENTION_TARGET] = (
                "mean attention from text tokens after the image to each image token; dim index = "
                "layer * num_heads + head over decoder layers 0..L-1")
        if "clip" in targets and "clip" not in descriptions:
            cfg = getattr(self.model, "config", None)
            descriptions["clip"] = CLIP_DESCRIPTION % getattr(cfg, "vision_feature_layer",
                                                              getattr(cfg, "mm_vision_select_layer", -2))
        events = self._copies_done(st)
        if self._bg is not None:
            self._bg.submit(ids, st.labels, st.layers, targets, target_descriptions=descriptions,
                            target_compute=compute, event=events, buffers=st.buffers)
        else:
            if events is not None:
                events.synchronize()
            try:
                self.writer.append_batch(ids, st.labels, st.layers, targets, target_descriptions=descriptions,
                                         target_compute=compute)
            finally:
                for buf in st.buffers:
                    self._pool.give(buf)
        st.buffers = []
        self.batches_written += 1
        self.samples_written += b

    @staticmethod
    def _copies_done(st):
        """Events marking the end of this batch's GPU -> pinned copies (one per device that copied), or None."""
        if not st.buffers:
            return None
        evs = []
        for dev in st.copy_devices:
            with torch.cuda.device(dev):
                ev = torch.cuda.Event()
                ev.record()
                evs.append(ev)
        return _Events(evs)

    def _prepare_target(self, name, t, b):
        t = t.detach()
        if not (self.pooling == "mean" and t.dim() == 3 and t.shape[1] == 1):
            check_token_grid(name, t, self.expected_image_tokens, self.grid, batch=b)
            if self.pooling == "mean":
                t = (t if t.dtype == torch.float64 else t.float()).mean(dim=1, keepdim=True)
        if t.shape[0] != b:
            raise TokenGridError("target %r has %d samples; the batch has %d" % (name, t.shape[0], b))
        return self._to_host(self._state, t)

    def _attention_target(self, st, out):
        atts = out.get("attentions") if isinstance(out, dict) else getattr(out, "attentions", None)
        if not atts or any(a is None for a in atts):
            raise RuntimeError("capture_attentions=True but the model returned no attentions: load it with "
                               "attn_implementation='eager' (sdpa/flash attention cannot return weights)")
        mask = st.mask
        b, seq = mask.shape
        valid = None
        if isinstance(st.attention_mask, torch.Tensor) and tuple(st.attention_mask.shape) == (b, seq):
            valid = st.attention_mask.bool()
        elif self.layout.kind == "llava-repo" and st.input_ids is not None and st.mask_override is None:
            valid = (self._repo_mask or LlavaRepoImageMask(self.expected_image_tokens)).valid_mask(
                st.input_ids, st.attention_mask, seq_len=seq)
        per_sample = []
        for i in range(b):
            img = mask[i].nonzero().flatten()
            after = torch.arange(seq, device=mask.device) > img.max()
            q = after & ~mask[i]
            if valid is not None:
                q = q & valid[i].to(mask.device)
            qi = q.nonzero().flatten()
            if qi.numel() == 0:
                raise RuntimeError("sample %d has no text token after the image; text->image attention undefined" % i)
            layers = []
            for a in atts:  # [b, heads, seq, seq]
                ai = a[i].detach()
                layers.append(ai.index_select(1, qi.to(ai.device)).index_select(2, img.to(ai.device))
                              .float().mean(dim=1))  # [heads, T]
            stacked = torch.stack([x.cpu() for x in layers], 0)  # [L, H, T]
            per_sample.append(stacked.permute(2, 0, 1).reshape(stacked.shape[2], -1))
        t = torch.stack(per_sample, 0)  # [b, T, L*H]
        if self.pooling == "mean":
            t = t.mean(dim=1, keepdim=True)
        return t.to(self.dtype)


def _register_pre_hook(module, fn):
    try:
        return module.register_forward_pre_hook(fn, with_kwargs=True)  # torch >= 2.0
    except TypeError:
        return module.register_forward_pre_hook(lambda m, args: fn(m, args))


@contextlib.contextmanager
def capture_hidden_states(model, writer, *, layers=None, image_token_mask=None, pooling="none", dtype=torch.float16,
                          expected_image_tokens=None, grid=None, capture_attentions=False, num_samples=None,
                          target_dims=None, clip_target=False, vision_feature_layer=None, background=True,
                          max_pending=2):
    """Capture LLM hidden states at the image-token positions of every forward of ``model`` into ``writer``.

    Hooks: a forward pre-hook on the first decoder layer gives hidden_states index 0 (``embed``: the LLM input
    AFTER the image features were spliced in), a forward hook on decoder layer ``l-1`` gives index ``l``
    (``blocks.{l-1}.out``, the raw layer output; note HF's ``output_hidden_states`` applies the final norm to its
    last entry, we do not). ``model.forward`` is wrapped (instance attribute) to see ``input_ids``. Every hook and
    the wrapper are removed on exit, also on exceptions.

    ``layers``: None (all of embed + decoder layers), a list of hidden_states indices to keep, or the decoder
    layers themselves (ModuleList / list of modules / dotted path) when discovery fails.
    ``image_token_mask``: None (HF: ``input_ids == config.image_token_index``; LLaVA repo:
    :class:`LlavaRepoImageMask`), a function ``input_ids[, attention_mask] -> bool [batch, seq]``, or a tensor.
    Each sample must have exactly ``expected_image_tokens`` positions; ``expected_image_tokens`` / ``grid``
    default to what the model's config gives (see :func:`~viral_lens_torch.discovery.resolve_image_tokens`: HF
    ``vision_config.image_size // patch_size``, ``image_seq_length``; LLaVA repo ``num_patches_per_side``), and
    only ``expected_image_tokens=36`` gives the 6x6 grid. ``pooling``: ``"none"`` keeps
    ``[b, tokens, d]``, ``"mean"`` stores ``[b, 1, d]``. Values are cast to ``dtype`` and moved to the CPU per
    layer; only the current batch is held in memory.
    ``clip_target``: also store, as target ``clip``, the features the projector received in that same forward
    (a forward hook on the vision tower picks ``vision_feature_layer`` and drops CLS as the model does), so they
    carry the forward's own autocast / dtype (a Trainer's bf16 autocast included); the manifest's
    ``targets[].compute`` records the dtype and autocast. A batch's own ``targets={"clip": ...}`` wins.
    ``background``: the forward only gathers the image tokens and starts their copy to the CPU (into pinned
    buffers, ``non_blocking``, on CUDA); a writer thread, at most ``max_pending`` batches behind, writes them
    (back-pressure when it falls behind). A write error is raised at the next captured forward or on exit;
    leaving the block (normally or by an exception) writes every batch already captured. ``background=False``
    writes inside the forward.
    Yields a :class:`HiddenStateCapture` (use ``cap.expect(ids, labels, targets)`` before each forward).
    """
    cap = HiddenStateCapture(model, writer, layers=layers, image_token_mask=image_token_mask, pooling=pooling,
                             dtype=dtype, expected_image_tokens=expected_image_tokens, grid=grid,
                             capture_attentions=capture_attentions, num_samples=num_samples, target_dims=target_dims,
                             vision_target="clip" if clip_target else None, vision_feature_layer=vision_feature_layer,
                             background=background, max_pending=max_pending)
    cap._install()
    try:
        yield cap
    except BaseException:
        cap._remove(raise_errors=False)  # the queued batches are still written; the original error wins
        raise
    cap._remove()


@contextlib.contextmanager
def shuffle_image_tokens(model, seed, *, projector=None):
    """Permute the image features (token axis) with a fixed permutation drawn from ``seed`` before the projector.

    Hooks: a forward pre-hook on the multimodal projector (HF: ``multi_modal_projector``; LLaVA repo:
    ``model.model.mm_projector``; or ``projector=`` module / dotted path) that replaces its input ``[b, T, d]``
    by ``x[:, perm]``. With HF's default ``vision_feature_select_strategy`` the CLS token is already dropped, so
    only the T=576 patch tokens are permuted (with ``"full"`` the CLS token takes part). The same permutation is
    used for every sample and forward (``ctx.permutation``, drawn from a private generator: the global RNG is
    untouched). The hook is removed on exit. The CLIP target (the vision tower's output, before the projector)
    stays unshuffled.
    """
    mod, path = find_projector(model, projector)

    class _Shuffle:
        permutation = None
        seed_ = seed
        projector_path = path

    state = _Shuffle()

    def pre_hook(module, args):
        if not args or not isinstance(args[0], torch.Tensor) or args[0].dim() != 3:
            raise TypeError("shuffle_image_tokens: projector input is not a tensor [batch, tokens, dim]")
        x = args[0]
        t = x.shape[1]
        if state.permutation is None or state.permutation.numel() != t:
            g = torch.Generator()
            g.manual_seed(int(seed))
            state.permutation = torch.randperm(t, generator=g)
        return (x[:, state.permutation.to(x.device)],) + tuple(args[1:])

    handle = mod.register_forward_pre_hook(pre_hook)
    try:
        yield state
    finally:
        handle.remove()


# ---------------------------------------------------------------------------------------------------- dataset loop
_RESERVED = ("ids", "labels", "targets", "image_token_mask", "inputs")


def _to_device(x, device):
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, dict):
        return {k: _to_device(v, device) for k, v in x.items()}
    if isinstance(x, (list, tuple)) and x and all(isinstance(v, torch.Tensor) for v in x):
        return type(x)(_to_device(v, device) for v in x)
    return x


def _take(x, idx, b):
    if isinstance(x, torch.Tensor) and x.dim() > 0 and x.shape[0] == b:
        return x[torch.as_tensor(idx, dtype=torch.long, device=x.device)]
    if isinstance(x, dict):
        return {k: _take(v, idx, b) for k, v in x.items()}
    if isinstance(x, tuple) and len(x) == 2 and isinstance(x[0], torch.Tensor) and isinstance(x[1], str):
        return (_take(x[0], idx, b), x[1])
    if isinstance(x, (list, tuple)) and len(x) == b:
        return type(x)(x[i] for i in idx)
    return x


def _batch_size(inputs):
    for key in ("input_ids", "pixel_values", "images"):
        v = inputs.get(key)
        if isinstance(v, torch.Tensor):
            return v.shape[0]
    for v in inputs.values():
        if isinstance(v, torch.Tensor) and v.dim() > 0:
            return v.shape[0]
    raise CaptureFormatError("cannot tell the batch size: the batch has no tensor inputs")


def _count_samples(batches):
    if not isinstance(batches, (list, tuple)):
        return None
    total = 0
    for b in batches:
        if isinstance(b, dict) and b.get("ids") is not None:
            total += len(b["ids"])
        else:
            return None
    return total


def _model_device(model):
    for p in model.parameters():
        return p.device
    return torch.device("cpu")


def _save_modes(model):
    return [(m, m.training) for m in model.modules()]


def _restore_modes(saved):
    for m, flag in saved:
        m.training = flag


def _target_dims(model, layout, clip_target, extra_encoders):
    dims = {}
    if clip_target:
        vc = getattr(getattr(model, "config", None), "vision_config", None)
        d = getattr(vc, "hidden_size", None)
        if d is None and layout.vision_tower is not None:
            d = getattr(getattr(layout.vision_tower, "config", None), "hidden_size", None)
            if d is None:
                d = getattr(layout.vision_tower, "hidden_size", None)
        if isinstance(d, int):
            layer = getattr(getattr(model, "config", None), "vision_feature_layer", -2)
            dims["clip"] = d * (len(layer) if isinstance(layer, (list, tuple)) else 1)
    return dims


def capture_dataset(model, batches, out_dir, *, layers=None, image_token_mask=None, pooling="none",
                    dtype=torch.float16, expected_image_tokens=None, grid=None, clip_target=True,
                    vision_feature_layer=None, extra_encoders=None, capture_attentions=False, shuffle_seed=None,
                    resume=True, overwrite=False, model_info=None, variant="baseline", checkpoint=None,
                    provenance=None, num_samples=None, ingest_url=None, token=None, run=None, step=None,
                    progress=None, background=True):
    """Run ``model`` over ``batches`` in eval mode under ``torch.no_grad()`` and write a capture to ``out_dir``.

    Each batch is a dict: ``ids`` (list of unique strings; default: running index ``"000000"``...), optional
    ``labels`` (dict name -> list), ``targets`` (dict name -> precomputed tensor [b, tokens, dim]),
    ``image_token_mask``; the model's keyword inputs either under ``inputs`` or as the remaining keys
    (``input_ids``, ``attention_mask``, ``pixel_values`` (HF) / ``images`` (LLaVA repo), ...). Tensors are moved to
    the model's device. ``clip_target``: also store as target ``clip`` the vision tower features the projector
    received in the same forward (see :func:`capture_hidden_states`; same autocast / dtype as the LLM's input).
    ``extra_encoders``: dict name -> callable(pixel_values) -> [b, tokens, dim] (fed ``batch[name +
    "_pixel_values"]`` when present, else the model's pixel values). ``resume``: continue an existing capture,
    skipping samples already in it. Train/eval modes are restored afterwards. Returns the capture path.
    """
    saved_modes = _save_modes(model)
    extra_encoders = dict(extra_encoders or {})
    if num_samples is None:
        num_samples = _count_samples(batches)
    layout = discover(model, layers if (layers is not None and not (isinstance(layers, (list, tuple)) and layers
                                        and all(isinstance(x, int) for x in layers))) else None)
    expected_image_tokens, grid = resolve_image_tokens(model, layout, expected_image_tokens, grid)
    ingest = IngestClient(ingest_url, token, run or os.path.basename(os.path.abspath(out_dir)), step) \
        if ingest_url else None
    prov = dict(provenance or {})
    if shuffle_seed is not None:
        prov.setdefault("shuffle_image_tokens_seed", shuffle_seed)
    writer = CaptureWriter.open(out_dir, resume=resume and not overwrite, overwrite=overwrite, ingest=ingest,
                                model=model_info, variant=variant, checkpoint=checkpoint, provenance=prov)
    device = _model_device(model)
    try:
        sig = inspect.signature(model.forward)
        takes_use_cache = "use_cache" in sig.parameters
    except (TypeError, ValueError):
        takes_use_cache = False
    seen = 0
    try:
        model.eval()
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.no_grad())
            if shuffle_seed is not None:
                stack.enter_context(shuffle_image_tokens(model, shuffle_seed))
            cap = stack.enter_context(capture_hidden_states(
                model, writer, layers=layers, image_token_mask=image_token_mask, pooling=pooling, dtype=dtype,
                expected_image_tokens=expected_image_tokens, grid=grid, capture_attentions=capture_attentions,
                num_samples=num_samples, target_dims=_target_dims(model, layout, clip_target, extra_encoders),
                clip_target=clip_target, vision_feature_layer=vision_feature_layer, background=background))
            start_count = writer.count
            for batch in batches:
                if not isinstance(batch, dict):
                    raise CaptureFormatError("capture_dataset: each batch must be a dict, got %s" % type(batch).__name__)
                enc_keys = {name + "_pixel_values" for name in extra_encoders}
                inputs = dict(batch["inputs"]) if "inputs" in batch else {
                    k: v for k, v in batch.items() if k not in _RESERVED and k not in enc_keys}
                b = _batch_size(inputs)
                ids = batch.get("ids")
                ids = [str(i) for i in ids] if ids is not None else ["%06d" % (seen + i) for i in range(b)]
                seen += b
                if len(ids) != b:
                    raise CaptureFormatError("batch has %d ids but batch size %d" % (len(ids), b))
                keep = [i for i, sid in enumerate(ids) if sid not in writer]
                if not keep:
                    continue
                labels, targets = batch.get("labels"), dict(batch.get("targets") or {})
                mask = batch.get("image_token_mask")
                enc_inputs = {k: batch[k] for k in enc_keys if k in batch}
                if len(keep) < b:
                    inputs, labels, targets, mask, enc_inputs = (_take(x, keep, b) for x in
                                                                 (inputs, labels, targets, mask, enc_inputs))
                    ids = [ids[i] for i in keep]
                inputs = _to_device(inputs, device)
                if takes_use_cache:
                    inputs.setdefault("use_cache", False)
                pixels = inputs.get("pixel_values", inputs.get("images"))
                if clip_target and "clip" not in targets and pixels is None:
                    # (the clip target itself comes from the vision tower's run inside model(**inputs))
                    raise CaptureFormatError("clip_target=True but the batch has no pixel_values/images; pass "
                                             "clip_target=False or targets={'clip': ...}")
                for name, enc in extra_encoders.items():
                    if name not in targets:
                        px = enc_inputs.get(name + "_pixel_values", pixels)
                        if px is None:
                            raise CaptureFormatError("extra encoder %r has no input pixels" % name)
                        targets[name] = encoder_features(name, enc, _to_device(px, device),
                                                         expected_tokens=expected_image_tokens, grid=grid)
                cap.expect(ids, labels=labels, targets=targets, image_token_mask=mask)
                model(**inputs)
                if cap._pending is not None:
                    raise RuntimeError("model(**inputs) did not call model.forward; nothing was captured")
                if progress is not None:
                    progress(start_count + cap.samples_written)  # captured; the writer may be a batch behind
    except BaseException:
        if writer.discard_if_empty():
            log.info("viral-lens capture %s: removed the directory (the capture failed before its first batch)",
                     writer.out_dir)
        raise
    finally:
        _restore_modes(saved_modes)
    if writer.count == 0:
        log.warning("viral-lens capture %s: no batch was captured (empty batches?); nothing written", writer.out_dir)
        writer.discard_if_empty()
    log.info("viral-lens capture %s: %d samples", writer.out_dir, writer.count)
    return writer.out_dir
