"""Find the decoder layers, input embeddings, projector and vision tower of a (multimodal) LLM.

Supported layouts (tried in this order):

==================  ==========================================  =========================================
kind                decoder layers                              projector / vision tower
==================  ==========================================  =========================================
``hf-llava``        ``model.model.language_model.layers``      ``model.model.multi_modal_projector`` /
                    (transformers >= 4.52, ``LlavaModel``)      ``model.model.vision_tower``
``hf-llava-legacy`` ``model.language_model.model.layers``      ``model.multi_modal_projector`` /
                    (older transformers)                        ``model.vision_tower``
``llava-repo``      ``model.model.layers`` (LLaVA repo          ``model.model.mm_projector`` /
                    ``LlavaLlamaForCausalLM``)                  ``model.get_vision_tower()``
``causal-lm``       ``model.model.layers`` (text-only LLM)      none
``explicit``        whatever was passed as ``layers=``          looked up as above, else none
==================  ==========================================  =========================================
"""

import logging

import torch.nn as nn

from .errors import ImageTokenCountError, LayerDiscoveryError

log = logging.getLogger("viral_lens_torch")

_CANDIDATES = (
    ("hf-llava", "model.language_model.layers", "model.multi_modal_projector", "model.vision_tower"),
    ("hf-llava-legacy", "language_model.model.layers", "multi_modal_projector", "vision_tower"),
    ("llava-repo", "model.layers", "model.mm_projector", "model.vision_tower"),
)


def resolve_path(root, path):
    """getattr along a dotted path (integer parts index into ModuleLists); None if any part is missing."""
    obj = root
    for part in path.split("."):
        if obj is None:
            return None
        if part.isdigit() and isinstance(obj, (nn.ModuleList, nn.Sequential, list, tuple)):
            idx = int(part)
            obj = obj[idx] if idx < len(obj) else None
        else:
            try:
                obj = getattr(obj, part, None)
            except Exception:  # properties of half-initialised wrappers may raise
                obj = None
    return obj


def module_list_paths(model, limit=30):
    """Names of the first ``limit`` ModuleLists in ``model`` (for error messages)."""
    return [name for name, m in model.named_modules() if isinstance(m, nn.ModuleList)][:limit]


class ModelLayout:
    """What discovery found. ``decoder_layers`` is the list of decoder-layer modules (hidden_states index
    ``l`` = output of ``decoder_layers[l-1]``; index 0 = input of ``decoder_layers[0]``)."""

    def __init__(self, kind, decoder_layers, layers_path, projector=None, projector_path=None, vision_tower=None,
                 embed_tokens=None, final_norm=None):
        self.kind = kind
        self.decoder_layers = list(decoder_layers)
        self.layers_path = layers_path
        self.projector = projector
        self.projector_path = projector_path
        self.vision_tower = vision_tower
        self.embed_tokens = embed_tokens
        self.final_norm = final_norm

    @property
    def num_layers(self):
        return len(self.decoder_layers)

    def __repr__(self):
        return "ModelLayout(kind=%r, layers=%r x%d, projector=%r)" % (
            self.kind, self.layers_path, self.num_layers, self.projector_path)


def _is_llava_repo(model, layers_path):
    return layers_path == "model.layers" and (
        hasattr(model, "get_vision_tower") or resolve_path(model, "model.mm_projector") is not None)


def _layout_extras(model, kind, layers_path, proj_path, vt_path):
    parent = resolve_path(model, layers_path.rsplit(".", 1)[0]) if "." in layers_path else model
    projector = resolve_path(model, proj_path) if proj_path else None
    if not isinstance(projector, nn.Module):
        projector, proj_path = None, None
    vt = None
    if kind == "llava-repo" and hasattr(model, "get_vision_tower"):
        try:
            vt = model.get_vision_tower()
        except Exception:
            vt = None
    if vt is None and vt_path:
        vt = resolve_path(model, vt_path)
    embed = getattr(parent, "embed_tokens", None) if parent is not None else None
    norm = getattr(parent, "norm", None) if parent is not None else None
    return projector, proj_path, vt if isinstance(vt, nn.Module) else None, embed, norm


def discover(model, layers=None):
    """Return a :class:`ModelLayout` for ``model``.

    ``layers`` overrides the decoder-layer discovery: a ``ModuleList``/list of modules, or a dotted path string
    (e.g. ``"model.language_model.layers"``). Raises :class:`LayerDiscoveryError` listing the ModuleLists seen
    when nothing is found.
    """
    if layers is not None:
        path = None
        if isinstance(layers, str):
            path = layers
            layers = resolve_path(model, path)
            if layers is None:
                raise LayerDiscoveryError("layers=%r: no such attribute path on %s. ModuleLists seen: %s"
                                          % (path, type(model).__name__, module_list_paths(model)))
        mods = list(layers)
        if not mods or not all(isinstance(m, nn.Module) for m in mods):
            raise LayerDiscoveryError("layers= must be a non-empty list of decoder-layer modules (got %r)" % (layers,))
        if path is None:
            ids = {id(m): name for name, m in model.named_modules()}
            first = ids.get(id(mods[0]), "?")
            path = first.rsplit(".", 1)[0] if "." in first else first
        # still find the projector / vision tower if the model has a known layout
        kind, proj, proj_path, vt, embed, norm = "explicit", None, None, None, None, None
        for k, lp, pp, vp in _CANDIDATES:
            if resolve_path(model, lp) is not None:
                proj, proj_path, vt, embed, norm = _layout_extras(model, k, lp, pp, vp)
                break
        return ModelLayout(kind, mods, path, proj, proj_path, vt, embed, norm)

    for kind, lp, pp, vp in _CANDIDATES:
        found = resolve_path(model, lp)
        if isinstance(found, (nn.ModuleList, nn.Sequential)) and len(found) > 0:
            if kind == "llava-repo" and not _is_llava_repo(model, lp):
                kind = "causal-lm"
            proj, proj_path, vt, embed, norm = _layout_extras(model, kind, lp, pp, vp)
            return ModelLayout(kind, list(found), lp, proj, proj_path, vt, embed, norm)

    seen = module_list_paths(model)
    raise LayerDiscoveryError(
        "could not find the decoder layers of %s. Tried %s. ModuleLists in the model (first %d): %s. "
        "Pass the decoder layers explicitly, e.g. capture_hidden_states(model, writer, layers=model.<path>) "
        "or layers=\"<path>\" or layers=[...list of decoder-layer modules...]."
        % (type(model).__name__, ", ".join(lp for _, lp, _, _ in _CANDIDATES), len(seen), seen or "none"))


def find_projector(model, projector=None):
    """The multimodal projector module (for shuffle_image_tokens): ``projector`` if given (module or path)."""
    if isinstance(projector, nn.Module):
        return projector, None
    if isinstance(projector, str):
        mod = resolve_path(model, projector)
        if not isinstance(mod, nn.Module):
            raise LayerDiscoveryError("projector=%r: no such module. ModuleLists seen: %s"
                                      % (projector, module_list_paths(model)))
        return mod, projector
    for _, _, pp, _ in _CANDIDATES:
        mod = resolve_path(model, pp)
        if isinstance(mod, nn.Module):
            return mod, pp
    names = [n for n, _ in model.named_children()]
    raise LayerDiscoveryError("could not find the multimodal projector of %s (tried %s); top-level children: %s. "
                              "Pass projector=<module or dotted path>."
                              % (type(model).__name__, ", ".join(pp for _, _, pp, _ in _CANDIDATES), names))


def image_token_index(model):
    """``config.image_token_index`` (or ``image_token_id``) of an HF LLaVA model, else None."""
    cfg = getattr(model, "config", None)
    for key in ("image_token_index", "image_token_id"):
        v = getattr(cfg, key, None)
        if isinstance(v, int):
            return v
    return None


def hidden_size(model, layout=None):
    cfg = getattr(model, "config", None)
    for c in (getattr(cfg, "text_config", None), cfg):
        v = getattr(c, "hidden_size", None)
        if isinstance(v, int):
            return v
    emb = layout.embed_tokens if layout is not None else None
    if emb is not None and hasattr(emb, "embedding_dim"):
        return int(emb.embedding_dim)
    return None


def model_name(model):
    cfg = getattr(model, "config", None)
    for key in ("_name_or_path", "name_or_path"):
        v = getattr(cfg, key, None) or getattr(model, key, None)
        if isinstance(v, str) and v:
            return v
    return type(model).__name__


def _int(v):
    return v if isinstance(v, int) and not isinstance(v, bool) and v > 0 else None


def _side(image_size, patch_size):
    """Patches per side for a square ``image_size`` (int, or [h, w] / (h, w) with h == w)."""
    if isinstance(image_size, (list, tuple)) and len(image_size) == 2 and image_size[0] == image_size[1]:
        image_size = image_size[0]
    if isinstance(patch_size, (list, tuple)) and len(patch_size) == 2 and patch_size[0] == patch_size[1]:
        patch_size = patch_size[0]
    image_size, patch_size = _int(image_size), _int(patch_size)
    if image_size is None or patch_size is None or image_size < patch_size:
        return None
    return image_size // patch_size  # a patch conv (stride = patch) drops the remainder: 384 px / 14 -> 27


class ImageTokenGeometry:
    """Image tokens per image as the model's config gives them: ``tokens``, ``grid`` ((rows, cols) or None when
    the tokens do not form a grid, e.g. a kept CLS token) and ``source`` (which config fields said so)."""

    def __init__(self, tokens, grid, source):
        self.tokens, self.grid, self.source = tokens, grid, source

    def __repr__(self):
        return "ImageTokenGeometry(tokens=%d, grid=%r, source=%r)" % (self.tokens, self.grid, self.source)


def image_token_geometry(model, layout=None):
    """Image tokens per image read from the config (public attribute names of transformers 4.x / 5.x and of the
    LLaVA repo); None when the config does not tell. Raises :class:`ImageTokenCountError` when the count varies
    per image (LLaVA-NeXT ``anyres``).

    * HF LLaVA: ``vision_config.image_size // vision_config.patch_size`` per side; ``vision_feature_select_strategy
      == "default"`` drops the CLS token (``"full"`` keeps it: tokens = grid + 1, no grid; SigLIP towers have no
      CLS); else ``config.image_seq_length`` (a square count gives a square grid).
    * LLaVA repo: the vision tower's ``num_patches_per_side`` (or its ``config.image_size`` / ``patch_size``);
      ``mm_vision_select_feature == "cls_patch"`` keeps CLS.
    """
    cfg = getattr(model, "config", None)
    if cfg is None:
        return None
    pinpoints = getattr(cfg, "image_grid_pinpoints", None)
    aspect = getattr(cfg, "image_aspect_ratio", None)
    if pinpoints or (isinstance(aspect, str) and "anyres" in aspect):
        raise ImageTokenCountError(
            "%s uses anyres (image_grid_pinpoints / image_aspect_ratio=anyres, LLaVA-NeXT style): the number of "
            "image tokens depends on each image's size. Feed fixed-size images and pass expected_image_tokens= and "
            "grid= (or image_token_mask=) for that size" % model_name(model))
    kind = layout.kind if layout is not None else None
    if kind == "llava-repo" or hasattr(cfg, "mm_vision_select_feature") or hasattr(cfg, "mm_vision_tower"):
        vt = layout.vision_tower if layout is not None else None
        side = _int(getattr(vt, "num_patches_per_side", None)) if vt is not None else None
        src = "vision tower num_patches_per_side"
        if side is None and vt is not None:
            vc = getattr(vt, "config", None)
            side = _side(getattr(vc, "image_size", None), getattr(vc, "patch_size", None))
            src = "vision tower config image_size / patch_size"
        if side is None:
            return None
        if getattr(cfg, "mm_vision_select_feature", "patch") == "cls_patch":
            return ImageTokenGeometry(side * side + 1, None, src + " + CLS (mm_vision_select_feature=cls_patch)")
        return ImageTokenGeometry(side * side, (side, side), src)

    vc = getattr(cfg, "vision_config", None)
    side = _side(getattr(vc, "image_size", None), getattr(vc, "patch_size", None)) if vc is not None else None
    seq = _int(getattr(cfg, "image_seq_length", None))
    if side is not None:
        strategy = getattr(cfg, "vision_feature_select_strategy", "default")
        has_cls = "siglip" not in str(getattr(vc, "model_type", "")).lower()
        geo = ImageTokenGeometry(side * side, (side, side), "vision_config image_size / patch_size")
        if strategy == "full" and has_cls:
            geo = ImageTokenGeometry(side * side + 1, None, geo.source + " + CLS (vision_feature_select_strategy=full)")
        if seq is not None and seq != geo.tokens:
            log.warning(
                "%s: config.image_seq_length is %d but the vision tower gives %d tokens (%s); using %d",
                model_name(model), seq, geo.tokens, geo.source, geo.tokens)
        return geo
    if seq is not None:
        r = int(round(seq ** 0.5))
        return ImageTokenGeometry(seq, (r, r) if r * r == seq else None, "config.image_seq_length")
    return None


def resolve_image_tokens(model, layout=None, expected_image_tokens=None, grid=None):
    """``(tokens, grid)`` for a capture: what the caller passed, completed from the model's config.

    Both given: used as they are (checked by the caller). Only ``grid``: tokens = rows x cols. Only
    ``expected_image_tokens``: the config's grid when its count matches, else a square grid when the count is a
    square, else no grid. Neither: :func:`image_token_geometry`; a clear error naming what to pass when the
    config does not tell."""
    if expected_image_tokens is not None and grid is not None:
        return int(expected_image_tokens), (int(grid[0]), int(grid[1]))
    if grid is not None:
        return int(grid[0]) * int(grid[1]), (int(grid[0]), int(grid[1]))
    if expected_image_tokens is not None:
        t = int(expected_image_tokens)
        try:
            geo = image_token_geometry(model, layout)
        except ImageTokenCountError:  # anyres: the caller's count is for its fixed-size images
            geo = None
        if geo is not None and geo.tokens == t:
            return t, geo.grid
        r = int(round(t ** 0.5))
        return t, ((r, r) if r * r == t else None)
    geo = image_token_geometry(model, layout)
    if geo is None:
        raise ImageTokenCountError(
            "cannot tell how many image tokens %s puts in the LLM per image: its config has no "
            "vision_config.image_size / patch_size or image_seq_length (LLaVA repo: no vision tower "
            "num_patches_per_side). Pass expected_image_tokens= and grid=, e.g. expected_image_tokens=576, "
            "grid=(24, 24) for LLaVA-1.5 (336 px, patch 14)" % model_name(model))
    return geo.tokens, geo.grid
