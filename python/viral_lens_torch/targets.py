"""Target feature sets: the CLIP vision tower features a LLaVA model sees, and extra frozen encoders."""

import math

import torch

from .discovery import discover, resolve_image_tokens
from .errors import LayerDiscoveryError, TokenGridError

CLIP_DESCRIPTION = "vision tower layer %s (vision_feature_layer), CLS dropped"


def check_token_grid(name, feats, expected_tokens=576, grid=(24, 24), batch=None):
    """Check target features are ``[batch, expected_tokens, dim]`` with ``expected_tokens == grid[0]*grid[1]``.
    Raises :class:`TokenGridError` with both numbers (and a hint) otherwise; returns ``feats``."""
    if grid is not None and int(grid[0]) * int(grid[1]) != int(expected_tokens):
        raise TokenGridError("grid %dx%d has %d cells but expected_image_tokens is %d"
                             % (grid[0], grid[1], grid[0] * grid[1], expected_tokens))
    if not isinstance(feats, torch.Tensor) or feats.dim() != 3:
        shape = list(feats.shape) if isinstance(feats, torch.Tensor) else type(feats).__name__
        raise TokenGridError("target %r must be a tensor [batch, tokens, dim]; got %s" % (name, shape))
    if batch is not None and feats.shape[0] != batch:
        raise TokenGridError("target %r has %d samples; the batch has %d" % (name, feats.shape[0], batch))
    t = int(feats.shape[1])
    if t != expected_tokens:
        hint = ""
        if t == expected_tokens + 1:
            hint = " (one extra token: drop the CLS token, e.g. feats[:, 1:])"
        elif t > expected_tokens and t - expected_tokens <= 5:
            hint = " (%d extra tokens: drop the CLS/register tokens, e.g. feats[:, %d:])" % (
                t - expected_tokens, t - expected_tokens)
        else:
            side = int(round(math.sqrt(t)))
            if side * side == t and grid is not None:
                hint = (" (that is a %dx%d grid, expected %dx%d: feed the encoder images at the resolution that gives "
                        "the same grid, i.e. %d x its patch size per side, or pass expected_image_tokens=%d, "
                        "grid=(%d, %d) if the LLM really sees that grid)"
                        % (side, side, grid[0], grid[1], grid[0], t, side, side))
        raise TokenGridError("target %r has %d tokens per sample but expected_image_tokens is %d%s"
                             % (name, t, expected_tokens, hint))
    return feats


def _first_param(module):
    for p in module.parameters():
        return p
    return None


def vision_tower_features(model, pixel_values, *, layer=None, expected_tokens=None, grid=None, layout=None):
    """The CLIP target: the vision tower's ``vision_feature_layer`` hidden state (default -2, the penultimate
    layer), CLS dropped -> ``[b, expected_tokens, dim]`` (``[b, 576, 1024]`` for LLaVA-1.5's CLIP ViT-L/14-336).

    HF LLaVA: calls ``vision_tower(pixel_values, output_hidden_states=True)`` and takes
    ``hidden_states[layer]`` (a list of layers is concatenated on the feature axis, as HF does) and drops the CLS
    token (unless ``vision_feature_select_strategy == "full"``). LLaVA repo:
    ``model.get_vision_tower()(images)`` already returns the selected layer without CLS
    (``mm_vision_select_layer``); ``layer`` is then ignored. One leading CLS token is dropped whenever the
    output has exactly ``expected_tokens + 1`` tokens. ``expected_tokens`` / ``grid`` default to the model's
    config (:func:`~viral_lens_torch.discovery.resolve_image_tokens`). Run it under ``torch.no_grad()``.
    """
    layout = layout or discover(model)
    expected_tokens, grid = resolve_image_tokens(model, layout, expected_tokens, grid)
    vt = layout.vision_tower
    if vt is None:
        raise LayerDiscoveryError("could not find the vision tower of %s (layout %s); compute the target features "
                                  "yourself and pass them as targets={...}" % (type(model).__name__, layout.kind))
    p = _first_param(vt)
    if p is not None and pixel_values.is_floating_point():
        pixel_values = pixel_values.to(device=p.device, dtype=p.dtype)
    if layout.kind == "llava-repo":
        out = vt(pixel_values)
    else:
        out = vt(pixel_values, output_hidden_states=True)
    return select_vision_features(model, layout, out, layer=layer, expected_tokens=expected_tokens, grid=grid,
                                  batch=pixel_values.shape[0])


def select_vision_features(model, layout, out, *, layer=None, expected_tokens, grid, batch=None):
    """The features the projector receives, from a vision tower output ``out``: HF: ``hidden_states[layer]``
    (``vision_feature_layer``; a list is concatenated), CLS dropped unless ``vision_feature_select_strategy ==
    "full"``; LLaVA repo: the output itself (already the selected layer without CLS)."""
    if layout.kind == "llava-repo":
        feats = out
        if isinstance(feats, (list, tuple)):
            raise TokenGridError("the LLaVA-repo vision tower returned a list (anyres / multiple images per sample); "
                                 "only one fixed-resolution image per sample is supported")
    else:
        if layer is None:
            layer = getattr(getattr(model, "config", None), "vision_feature_layer", -2)
        hs = getattr(out, "hidden_states", None)
        if hs is None and isinstance(out, dict):
            hs = out.get("hidden_states")
        if hs is None:
            raise TokenGridError("the vision tower output has no hidden_states (it was called without "
                                 "output_hidden_states=True), so the layer the projector sees is unknown: pass "
                                 "targets={'clip': ...} or clip_target=False")
        layers = list(layer) if isinstance(layer, (list, tuple)) else [layer]
        feats = torch.cat([hs[i] for i in layers], dim=-1)
        strategy = getattr(getattr(model, "config", None), "vision_feature_select_strategy", "default")
        if strategy != "full" and feats.dim() == 3:
            feats = feats[:, 1:]  # HF "default": the projector sees the patch tokens only (CLS dropped)
    if feats.dim() == 3 and feats.shape[1] == expected_tokens + 1:
        feats = feats[:, 1:]
    return check_token_grid("clip", feats, expected_tokens, grid, batch=batch)


def autocast_state():
    """The autocast regions active here, e.g. ``["cuda:bfloat16"]`` (``[]`` outside autocast); public APIs of
    torch 1.13 (``is_autocast_cpu_enabled``) and >= 2.4 (``is_autocast_enabled(device_type)``)."""
    active = []
    for dev in ("cuda", "cpu"):
        try:
            on = torch.is_autocast_enabled(dev)
        except TypeError:  # torch < 2.4
            on = torch.is_autocast_enabled() if dev == "cuda" else torch.is_autocast_cpu_enabled()
        if not on:
            continue
        try:
            dt = torch.get_autocast_dtype(dev)
        except AttributeError:  # torch < 2.4
            dt = torch.get_autocast_gpu_dtype() if dev == "cuda" else torch.get_autocast_cpu_dtype()
        active.append("%s:%s" % (dev, str(dt).replace("torch.", "")))
    return active


def encoder_features(name, encoder, pixel_values, *, expected_tokens=576, grid=(24, 24)):
    """Run an extra frozen encoder (any callable ``pixel_values -> [b, tokens, dim]``, e.g. a DINOv2 loaded from
    local weights wrapped as ``lambda px: dino(pixel_values=px).last_hidden_state[:, 1:]``) and check its
    token count / grid."""
    feats = encoder(pixel_values)
    if hasattr(feats, "last_hidden_state") and not isinstance(feats, torch.Tensor):
        raise TokenGridError("encoder %r returned a %s; return a tensor [b, tokens, dim] (e.g. "
                             "out.last_hidden_state[:, 1:] to drop CLS)" % (name, type(feats).__name__))
    return check_token_grid(name, feats, expected_tokens, grid, batch=pixel_values.shape[0])
