"""Tiny LLaVA-shaped torch models for the viral_lens_torch tests (no transformers needed).

* :class:`TinyLlavaForConditionalGeneration` mimics Hugging Face ``LlavaForConditionalGeneration``:
  ``layout="hf"`` is the transformers >= 4.52 layout (``model.model.language_model.layers``,
  ``model.model.multi_modal_projector``, ``model.model.vision_tower``), ``layout="hf-legacy"`` the older one
  (``model.language_model.model.layers``, ``model.multi_modal_projector``, ``model.vision_tower``). The processor
  has already expanded each image to ``NUM_PATCHES`` image tokens in ``input_ids``.
* :class:`TinyLlavaLlamaForCausalLM` mimics the LLaVA repo's ``LlavaLlamaForCausalLM``: ``model.model.layers``,
  ``model.model.mm_projector``, ``get_vision_tower()``; ``input_ids`` hold one ``IMAGE_TOKEN_INDEX`` (-200)
  placeholder that the model replaces by the projected image features, re-padding the batch on the right.

Vision tower: 16x16 images, 4x4 patches -> CLS + 4x4 grid = 17 tokens; ``hidden_states`` = embeddings + each layer
(like CLIPVisionModel). Decoder layers return a tuple ``(hidden_states, attn_weights_or_None)`` like HF, and the
language model's ``hidden_states`` output follows HF: index 0 = input embeddings, last = final-norm output.
"""

import math
import types

import torch
import torch.nn as nn
import torch.nn.functional as F

IMAGE_SIZE = 16
PATCH = 4
GRID = (IMAGE_SIZE // PATCH, IMAGE_SIZE // PATCH)
NUM_PATCHES = GRID[0] * GRID[1]  # 16
VOCAB = 64
IMAGE_TOKEN = 63  # HF: config.image_token_index (inside the vocab, like llava-1.5-hf's 32000 < 32064)
PAD = 0
BOS = 1
IMAGE_TOKEN_INDEX = -200  # LLaVA repo placeholder


class Output(dict):
    """Tiny stand-in for transformers' ModelOutput: a dict with attribute access."""

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError:
            raise AttributeError(key) from None


# ----------------------------------------------------------------------------------------------------- vision
class TinyVisionEmbeddings(nn.Module):
    def __init__(self, dim, image_size=IMAGE_SIZE, patch=PATCH):
        super().__init__()
        self.patch = patch
        self.patch_embedding = nn.Linear(3 * patch * patch, dim)
        self.class_embedding = nn.Parameter(torch.randn(dim) * 0.1)
        self.position_embedding = nn.Parameter(torch.randn((image_size // patch) ** 2 + 1, dim) * 0.1)

    def forward(self, pixel_values):
        b = pixel_values.shape[0]
        patches = F.unfold(pixel_values, kernel_size=self.patch, stride=self.patch).transpose(1, 2)  # row-major
        x = self.patch_embedding(patches)
        cls = self.class_embedding.expand(b, 1, -1)
        return torch.cat([cls, x], 1) + self.position_embedding


class TinyVisionLayer(nn.Module):
    def __init__(self, dim, dropout):
        super().__init__()
        self.layer_norm1 = nn.LayerNorm(dim)
        # not nn.MultiheadAttention: its eval fast path fails under CPU bf16 autocast in torch 1.13
        self.self_attn = TinyAttention(dim, 2, dropout)
        self.layer_norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim), nn.Dropout(dropout))

    def forward(self, x):
        h = self.layer_norm1(x)
        x = x + self.self_attn(h, 0.0)[0]
        return x + self.mlp(self.layer_norm2(x))


class TinyVisionEncoder(nn.Module):
    def __init__(self, dim, n_layers, dropout):
        super().__init__()
        self.layers = nn.ModuleList(TinyVisionLayer(dim, dropout) for _ in range(n_layers))


class TinyVisionTransformer(nn.Module):
    def __init__(self, dim, n_layers, dropout, image_size=IMAGE_SIZE, patch=PATCH):
        super().__init__()
        self.embeddings = TinyVisionEmbeddings(dim, image_size, patch)
        self.encoder = TinyVisionEncoder(dim, n_layers, dropout)


class TinyVisionTower(nn.Module):
    """Mimics CLIPVisionModel: ``forward(pixel_values, output_hidden_states)`` -> hidden_states tuple."""

    def __init__(self, dim=24, n_layers=3, dropout=0.0, image_size=IMAGE_SIZE, patch=PATCH):
        super().__init__()
        # public CLIPVisionConfig attribute names
        self.config = types.SimpleNamespace(hidden_size=dim, image_size=image_size, patch_size=patch,
                                            model_type="clip_vision_model")
        self.vision_model = TinyVisionTransformer(dim, n_layers, dropout, image_size, patch)

    def forward(self, pixel_values, output_hidden_states=False):
        x = self.vision_model.embeddings(pixel_values)
        hs = (x,)
        for layer in self.vision_model.encoder.layers:
            x = layer(x)
            hs += (x,)
        return Output(last_hidden_state=x, hidden_states=hs if output_hidden_states else None)


class TinyProjector(nn.Module):
    """LLaVA-1.5 mlp2x_gelu projector."""

    def __init__(self, vdim, dim):
        super().__init__()
        self.linear_1 = nn.Linear(vdim, dim)
        self.act = nn.GELU()
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x):
        return self.linear_2(self.act(self.linear_1(x)))


# ----------------------------------------------------------------------------------------------------- LLM
class TinyAttention(nn.Module):
    def __init__(self, dim, heads, dropout):
        super().__init__()
        self.heads = heads
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.o_proj = nn.Linear(dim, dim)
        self.dropout = dropout

    def forward(self, x, mask4d):
        b, s, d = x.shape
        hd = d // self.heads

        def split(t):
            return t.view(b, s, self.heads, hd).transpose(1, 2)

        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        scores = q @ k.transpose(-1, -2) / math.sqrt(hd) + mask4d
        weights = scores.softmax(-1)
        out = F.dropout(weights, self.dropout, self.training) @ v
        return self.o_proj(out.transpose(1, 2).reshape(b, s, d)), weights


class TinyDecoderLayer(nn.Module):
    def __init__(self, dim, heads, dropout):
        super().__init__()
        self.input_layernorm = nn.LayerNorm(dim)
        self.self_attn = TinyAttention(dim, heads, dropout)
        self.post_attention_layernorm = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))
        self.dropout = nn.Dropout(dropout)

    def forward(self, hidden_states, attention_mask=None, output_attentions=False):
        a, w = self.self_attn(self.input_layernorm(hidden_states), attention_mask)
        h = hidden_states + self.dropout(a)
        h = h + self.dropout(self.mlp(self.post_attention_layernorm(h)))
        return (h, w if output_attentions else None)


def _mask4d(attention_mask, b, s, dtype, device):
    neg = torch.finfo(dtype).min
    causal = torch.triu(torch.ones(s, s, dtype=torch.bool, device=device), 1)
    m = torch.zeros(b, 1, s, s, dtype=dtype, device=device).masked_fill(causal, neg)
    if attention_mask is not None:
        m = m.masked_fill(attention_mask[:, None, None, :] == 0, neg)
    return m


class TinyLlamaModel(nn.Module):
    def __init__(self, dim=32, n_layers=3, heads=4, dropout=0.0):
        super().__init__()
        self.embed_tokens = nn.Embedding(VOCAB, dim)
        self.layers = nn.ModuleList(TinyDecoderLayer(dim, heads, dropout) for _ in range(n_layers))
        self.norm = nn.LayerNorm(dim)
        self.hidden_states_as_keyword = False  # call the layers as layer(hidden_states=h, ...)

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None, output_hidden_states=False,
                output_attentions=False):
        h = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        b, s, _ = h.shape
        mask = _mask4d(attention_mask, b, s, h.dtype, h.device)
        all_h, all_a = (), ()
        for layer in self.layers:
            if output_hidden_states:
                all_h += (h,)
            if self.hidden_states_as_keyword:
                h, w = layer(hidden_states=h, attention_mask=mask, output_attentions=output_attentions)
            else:
                h, w = layer(h, attention_mask=mask, output_attentions=output_attentions)
            if output_attentions:
                all_a += (w,)
        raw = h
        h = self.norm(h)
        if output_hidden_states:
            all_h += (h,)
        return Output(last_hidden_state=h, raw_last_hidden_state=raw,
                      hidden_states=all_h if output_hidden_states else None,
                      attentions=all_a if output_attentions else None)


class TinyLlamaForCausalLM(nn.Module):
    def __init__(self, **kw):
        super().__init__()
        self.model = TinyLlamaModel(**kw)
        self.lm_head = nn.Linear(self.model.embed_tokens.embedding_dim, VOCAB, bias=False)

    def get_input_embeddings(self):
        return self.model.embed_tokens


def _lm_loss(logits, labels):
    if labels is None:
        return None
    return F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), labels[:, 1:].reshape(-1), ignore_index=-100)


# ----------------------------------------------------------------------------------------------------- HF LLaVA
class TinyLlavaModel(nn.Module):
    """Mimics transformers >= 4.52 ``LlavaModel``."""

    def __init__(self, vision_tower, projector, language_model):
        super().__init__()
        self.vision_tower = vision_tower
        self.multi_modal_projector = projector
        self.language_model = language_model


class TinyLlavaForConditionalGeneration(nn.Module):
    def __init__(self, layout="hf", dim=32, vdim=24, n_layers=3, heads=4, dropout=0.0, vision_dropout=None,
                 consume_rng_in_eval=False, name="tiny-llava", image_size=IMAGE_SIZE, patch=PATCH,
                 image_seq_length=None, strategy="default", bare_config=False):
        super().__init__()
        # public LlavaConfig attribute names (transformers 4.x / 5.x); bare_config: an older-style config without
        # the vision geometry or image_seq_length
        vision_config = types.SimpleNamespace(hidden_size=vdim, image_size=image_size, patch_size=patch,
                                              model_type="clip_vision_model")
        self.config = types.SimpleNamespace(
            image_token_index=IMAGE_TOKEN, vision_feature_layer=-2, vision_feature_select_strategy=strategy,
            text_config=types.SimpleNamespace(hidden_size=dim, num_hidden_layers=n_layers),
            vision_config=vision_config, _name_or_path=name)
        if image_seq_length is not None:
            self.config.image_seq_length = image_seq_length
        if bare_config:
            self.config.vision_config = types.SimpleNamespace(hidden_size=vdim)
        self.layout = layout
        self.consume_rng_in_eval = consume_rng_in_eval
        vt = TinyVisionTower(vdim, 3, dropout if vision_dropout is None else vision_dropout, image_size, patch)
        proj = TinyProjector(vdim, dim)
        if layout == "hf":
            self.model = TinyLlavaModel(vt, proj, TinyLlamaModel(dim, n_layers, heads, dropout))
            self.lm_head = nn.Linear(dim, VOCAB, bias=False)
        elif layout == "hf-legacy":
            self.vision_tower = vt
            self.multi_modal_projector = proj
            self.language_model = TinyLlamaForCausalLM(dim=dim, n_layers=n_layers, heads=heads, dropout=dropout)
        else:
            raise ValueError(layout)

    # parts, independent of the layout
    def parts(self):
        if self.layout == "hf":
            m = self.model
            return m.vision_tower, m.multi_modal_projector, m.language_model, self.lm_head
        return self.vision_tower, self.multi_modal_projector, self.language_model.model, self.language_model.lm_head

    def get_image_features(self, pixel_values):
        vt, proj, _, _ = self.parts()
        hs = vt(pixel_values, output_hidden_states=True).hidden_states
        feats = hs[self.config.vision_feature_layer]
        if self.config.vision_feature_select_strategy == "default":
            feats = feats[:, 1:]  # "default" drops CLS
        return proj(feats)

    def forward(self, input_ids=None, pixel_values=None, attention_mask=None, labels=None, output_hidden_states=False,
                output_attentions=False, use_cache=None):
        if self.consume_rng_in_eval:
            torch.rand(3)  # something that draws from the global RNG whatever the mode (tests the RNG restore)
        _, _, lm, head = self.parts()
        embeds = lm.embed_tokens(input_ids)
        if pixel_values is not None:
            img = self.get_image_features(pixel_values)
            special = (input_ids == self.config.image_token_index).unsqueeze(-1).expand_as(embeds)
            embeds = embeds.masked_scatter(special, img.to(embeds.dtype))
        out = lm(inputs_embeds=embeds, attention_mask=attention_mask, output_hidden_states=output_hidden_states,
                 output_attentions=output_attentions)
        logits = head(out.last_hidden_state)
        return Output(loss=_lm_loss(logits, labels), logits=logits, hidden_states=out.hidden_states,
                      raw_last_hidden_state=out.raw_last_hidden_state, attentions=out.attentions)


# ----------------------------------------------------------------------------------------------------- LLaVA repo
class TinyCLIPVisionTower(nn.Module):
    """Mimics llava/model/multimodal_encoder/clip_encoder.py: returns the selected layer, CLS dropped."""

    def __init__(self, vdim, dropout):
        super().__init__()
        self.vision_tower = TinyVisionTower(vdim, 3, dropout)
        self.select_layer = -2
        self.hidden_size = vdim

    # the LLaVA repo's CLIPVisionTower properties
    @property
    def config(self):
        return self.vision_tower.config

    @property
    def num_patches_per_side(self):
        return self.config.image_size // self.config.patch_size

    @property
    def num_patches(self):
        return self.num_patches_per_side ** 2

    def forward(self, images):
        hs = self.vision_tower(images, output_hidden_states=True).hidden_states
        return hs[self.select_layer][:, 1:]


class TinyLlavaLlamaModel(TinyLlamaModel):
    def __init__(self, dim, vdim, n_layers, heads, dropout):
        super().__init__(dim, n_layers, heads, dropout)
        self.vision_tower = TinyCLIPVisionTower(vdim, dropout)
        self.mm_projector = TinyProjector(vdim, dim)


class TinyLlavaLlamaForCausalLM(nn.Module):
    def __init__(self, dim=32, vdim=24, n_layers=3, heads=4, dropout=0.0):
        super().__init__()
        self.config = types.SimpleNamespace(hidden_size=dim, num_hidden_layers=n_layers, mm_vision_select_layer=-2,
                                            mm_vision_select_feature="patch", _name_or_path="tiny-llava-repo")
        self.model = TinyLlavaLlamaModel(dim, vdim, n_layers, heads, dropout)
        self.lm_head = nn.Linear(dim, VOCAB, bias=False)

    def get_model(self):
        return self.model

    def get_vision_tower(self):
        return self.model.vision_tower

    def encode_images(self, images):
        return self.model.mm_projector(self.get_vision_tower()(images))

    def prepare_inputs_labels_for_multimodal(self, input_ids, attention_mask, images):
        """Like the LLaVA repo: drop padding, splice image features at the -200 placeholder, re-pad on the right.
        Also returns the ground-truth image mask (tests only)."""
        feats = self.encode_images(images)
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids, dtype=torch.bool)
        seqs, img_pos = [], []
        for i in range(input_ids.shape[0]):
            ids = input_ids[i][attention_mask[i].bool()]
            p = int((ids == IMAGE_TOKEN_INDEX).nonzero()[0])
            emb = self.model.embed_tokens
            seqs.append(torch.cat([emb(ids[:p]), feats[i], emb(ids[p + 1:])], 0))
            img_pos.append((p, p + feats.shape[1]))
        max_len = max(s.shape[0] for s in seqs)
        d = seqs[0].shape[1]
        embeds = torch.zeros(len(seqs), max_len, d, dtype=seqs[0].dtype)
        new_mask = torch.zeros(len(seqs), max_len, dtype=torch.bool)
        image_mask = torch.zeros(len(seqs), max_len, dtype=torch.bool)
        for i, s in enumerate(seqs):
            embeds[i, :s.shape[0]] = s
            new_mask[i, :s.shape[0]] = True
            image_mask[i, img_pos[i][0]:img_pos[i][1]] = True
        return new_mask, embeds, image_mask

    def forward(self, input_ids=None, attention_mask=None, images=None, labels=None, output_hidden_states=False,
                output_attentions=False):
        new_mask, embeds, image_mask = self.prepare_inputs_labels_for_multimodal(input_ids, attention_mask, images)
        out = self.model(inputs_embeds=embeds, attention_mask=new_mask, output_hidden_states=output_hidden_states,
                         output_attentions=output_attentions)
        logits = self.lm_head(out.last_hidden_state)
        return Output(loss=None, logits=logits, hidden_states=out.hidden_states, attentions=out.attentions,
                      raw_last_hidden_state=out.raw_last_hidden_state, image_mask=image_mask)


# ----------------------------------------------------------------------------------------------------- data
def make_hf_batch(n, seed=0, start=0, padding_side="right", num_patches=NUM_PATCHES, image_size=IMAGE_SIZE):
    """A batch for the HF mimic: ``[BOS, text..., IMG x num_patches, text...]``, variable lengths, padded."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        a = int(torch.randint(0, 3, (1,), generator=g))
        c = int(torch.randint(2, 6, (1,), generator=g))
        text_a = torch.randint(2, IMAGE_TOKEN, (a,), generator=g).tolist()
        text_b = torch.randint(2, IMAGE_TOKEN, (c,), generator=g).tolist()
        rows.append([BOS] + text_a + [IMAGE_TOKEN] * num_patches + text_b)
    s = max(len(r) for r in rows)
    ids = torch.full((n, s), PAD, dtype=torch.long)
    am = torch.zeros(n, s, dtype=torch.long)
    for i, r in enumerate(rows):
        if padding_side == "right":
            ids[i, :len(r)] = torch.tensor(r)
            am[i, :len(r)] = 1
        else:
            ids[i, s - len(r):] = torch.tensor(r)
            am[i, s - len(r):] = 1
    pixel_values = torch.randn(n, 3, image_size, image_size, generator=g)
    labels = ids.masked_fill((am == 0) | (ids == IMAGE_TOKEN), -100)
    return {"ids": ["img-%04d" % (start + i) for i in range(n)], "input_ids": ids, "attention_mask": am,
            "pixel_values": pixel_values, "labels_lm": labels}


def make_repo_batch(n, seed=0, start=0):
    """A batch for the LLaVA-repo mimic: one -200 placeholder per sample, right padding."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        a = int(torch.randint(0, 3, (1,), generator=g))
        c = int(torch.randint(2, 6, (1,), generator=g))
        rows.append([BOS] + torch.randint(2, VOCAB, (a,), generator=g).tolist() + [IMAGE_TOKEN_INDEX]
                    + torch.randint(2, VOCAB, (c,), generator=g).tolist())
    s = max(len(r) for r in rows)
    ids = torch.full((n, s), PAD, dtype=torch.long)
    am = torch.zeros(n, s, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        am[i, :len(r)] = 1
    return {"ids": ["repo-%04d" % (start + i) for i in range(n)], "input_ids": ids, "attention_mask": am,
            "images": torch.randn(n, 3, IMAGE_SIZE, IMAGE_SIZE, generator=g)}


def model_inputs(batch):
    """The model keyword inputs of a test batch (drops ids / LM labels)."""
    return {k: v for k, v in batch.items() if k not in ("ids", "labels_lm", "labels")}
