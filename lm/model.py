"""The Gemma 3n text decoder (transformers 5.23 `Gemma3nTextModel` + tied, soft-capped head).

Module and parameter names equal the checkpoint's with `model.language_model.` removed. KV-shared
layers have no k_proj/v_proj/k_norm (real checkpoints still carry them; the loader skips them).

Per forward: scaled token embeddings (or the caller's merged multimodal embeddings) and per-layer
embeddings (PLE) read from input_ids; the embedding is expanded into 4 AltUp streams; each layer runs
attention + MLP on stream 0 and corrects the others; the streams are collapsed, normed, and projected
with the embedding matrix.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .attention import AttentionContext, Rotary, TextAttention, attention_context
from .config import TextConfig
from .kv_cache import KVCache
from .layers import MLP, AltUp, Laurel, RMSNorm, gelu_tanh, match_magnitude, rms, rounded
from .ple import PerLayerEmbedding
from .quant import QuantizedWeight
from .submodel import SubModel, bind_cache
from .submodel import parse as parse_submodel

_INV_SQRT2 = float(torch.rsqrt(torch.tensor(2.0, device="cpu")))  # fp32, as the reference's buffer


class DecoderLayer(nn.Module):
    def __init__(self, config: TextConfig, layer: int):
        super().__init__()
        d, eps = config.hidden_size, config.rms_norm_eps
        self.layer = layer
        self.correct_scale = config.altup_correct_scale
        self.active = config.altup_active_idx
        self.self_attn = TextAttention(config, layer)
        self.mlp = MLP(config, layer)
        self.input_layernorm = RMSNorm(d, eps)
        self.post_attention_layernorm = RMSNorm(d, eps)
        self.pre_feedforward_layernorm = RMSNorm(d, eps)
        self.post_feedforward_layernorm = RMSNorm(d, eps)
        self.altup = AltUp(config)
        self.laurel = Laurel(config)
        self.per_layer_input_gate = nn.Linear(d, config.hidden_size_per_layer_input, bias=False)
        self.per_layer_projection = nn.Linear(config.hidden_size_per_layer_input, d, bias=False)
        self.post_per_layer_input_norm = RMSNorm(d, eps)

    def forward(self, streams: torch.Tensor, per_layer_input: torch.Tensor, ctx: AttentionContext,
                cache: KVCache | None, shared_kv: dict, ffn: int | None = None) -> torch.Tensor:
        """streams [n, B, T, D], per_layer_input [B, T, P] -> streams. ffn: the MLP's width in a
        MatFormer sub-model (None: its full width)."""
        pred = self.altup.predict(streams)
        a = pred[self.active]
        an = self.input_layernorm(a)
        attn = self.post_attention_layernorm(self.self_attn(an, ctx, *self._keys_values(an, ctx, cache, shared_kv)))
        x = (a + attn + self.laurel(an)) / math.sqrt(2)
        x = x + self.post_feedforward_layernorm(self.mlp(self.pre_feedforward_layernorm(x), ffn))
        out = self.altup.correct(pred, x)
        # Per-layer embedding injection, gated by the corrected active stream; added to streams 1.. only.
        g = out[self.active]
        if self.correct_scale:
            g = self.altup.scale_output(g)
        g = gelu_tanh(self.per_layer_input_gate(g)) * per_layer_input
        g = self.post_per_layer_input_norm(self.per_layer_projection(g))
        # Out of place, so autograd can train through it (the sum is the reference's, bit for bit).
        return torch.cat([out[:1], out[1:] + g], dim=0)

    def _keys_values(self, an: torch.Tensor, ctx: AttentionContext, cache: KVCache | None, shared_kv: dict):
        attn = self.self_attn
        if attn.shared:
            # 5.x semantics: the producer's keys/values of this step (full length when cached).
            return shared_kv[attn.layer_type]
        k, v = attn.keys_values(an, ctx)
        if cache is not None:
            k, v = cache.update(self.layer, k, v)
        # Later non-shared layers of the same type overwrite this, so the shared layers see the last one.
        shared_kv[attn.layer_type] = (k, v)
        return k, v


class TextModel(nn.Module):
    def __init__(self, config: TextConfig):
        super().__init__()
        self.config = config
        d, n_layers, p = config.hidden_size, config.num_hidden_layers, config.hidden_size_per_layer_input
        self.embed_tokens = nn.Embedding(config.vocab_size, d)
        self.layers = nn.ModuleList(DecoderLayer(config, i) for i in range(n_layers))
        self.norm = RMSNorm(d, config.rms_norm_eps)
        self.embed_tokens_per_layer = PerLayerEmbedding(config.vocab_size_per_layer_input, n_layers * p)
        self.per_layer_model_projection = nn.Linear(d, n_layers * p, bias=False)
        self.per_layer_projection_norm = RMSNorm(p, config.rms_norm_eps)
        extra = config.altup_num_inputs - 1
        self.altup_projections = nn.ModuleList(nn.Linear(d, d, bias=False) for _ in range(extra))
        self.altup_unembed_projections = nn.ModuleList(nn.Linear(d, d, bias=False) for _ in range(extra))
        self.rotary = Rotary(config)
        self._submodels_checked: dict[SubModel, bool] = {}  # sub-model -> is the full model

    # ---- embeddings ------------------------------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        e = self.embed_tokens
        return e.compute_dtype if isinstance(e, QuantizedWeight) else e.weight.dtype

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Token embeddings scaled by sqrt(hidden_size), the scale rounded to the weight dtype (45.25 in bf16).
        A quantized tied matrix (lm/quant.py) dequantizes just the rows gathered."""
        e = self.embed_tokens
        rows = e.rows(input_ids) if isinstance(e, QuantizedWeight) else e(input_ids)
        return rows * rounded(self.config.hidden_size**0.5, self.dtype)

    def per_layer_inputs(self, input_ids: torch.Tensor, embeds: torch.Tensor,
                         layers: tuple[int, ...] | None = None) -> torch.Tensor:
        """PLE [B, T, L, P]: a per-layer table lookup (audio/vision ids read row 0) plus a projection of
        the merged embeddings, each scaled, the sum scaled by 1/sqrt(2). `layers`: only these layers'
        blocks (a sub-model's kept layers), as the sliced table and projection hold them."""
        c = self.config
        shape = (*input_ids.shape, c.num_hidden_layers, c.hidden_size_per_layer_input)
        in_table = (input_ids >= 0) & (input_ids < c.vocab_size_per_layer_input)
        # The table may sit on the host in the checkpoint's dtype (lm/ple.py): rows come back in ours.
        tok = self.embed_tokens_per_layer(torch.where(in_table, input_ids, 0), embeds.dtype).reshape(shape)
        # The skipped layers' blocks of the projection are computed and dropped: they cost 5/35 of a
        # [2048 -> 8960] product (E4B -> E2B), less than cutting the matrix into kept row ranges.
        proj = self.per_layer_model_projection(embeds).reshape(shape)
        if layers is not None:
            index = torch.tensor(layers, device=embeds.device)
            tok, proj = tok.index_select(-2, index), proj.index_select(-2, index)
        tok = tok * rounded(c.hidden_size_per_layer_input**0.5, embeds.dtype)
        proj = self.per_layer_projection_norm(proj * rounded(c.hidden_size**-0.5, embeds.dtype))
        return (proj + tok) * rounded(_INV_SQRT2, embeds.dtype)

    # ---- forward ----------------------------------------------------------------------------------------
    def new_cache(self) -> KVCache:
        return KVCache()

    def forward(self, input_ids: torch.Tensor, inputs_embeds: torch.Tensor | None = None,
                cache: KVCache | None = None, last_only: bool = False,
                submodel: SubModel | str | None = None) -> torch.Tensor:
        """input_ids [B, T] (always needed: PLE reads them); inputs_embeds [B, T, D] replaces the token
        embeddings when given (multimodal merge done by the caller). With a cache, the T positions continue
        after the cached ones and are appended to it. Returns soft-capped logits [B, T or 1, vocab].

        submodel: a MatFormer sub-model of this decoder (lm.submodel: a SubModel, a preset name such as
        "E2B", or "ffn=...;skip=..."), run on these weights: only its kept layers, each FFN at its width
        through views of the weights, the per-layer inputs of the kept layers. The logits are those of the
        sliced checkpoint. A cache holds the keys of one sub-model: one filled by another must be emptied
        (crop(0)) first, else ValueError."""
        hidden = self.hidden_states(input_ids, inputs_embeds, cache, submodel)
        return self.head(hidden[:, -1:] if last_only else hidden)

    def resolve_submodel(self, submodel: SubModel | str | None) -> SubModel | None:
        """The SubModel to run, checked against this decoder; None for the full model."""
        if submodel is None:
            return None
        if isinstance(submodel, SubModel) and submodel in self._submodels_checked:
            return None if self._submodels_checked[submodel] else submodel
        sub = parse_submodel(submodel, self.config)
        full = sub.is_full(self.config)
        if len(self._submodels_checked) >= 64:  # specs come from clients: keep the memo bounded
            self._submodels_checked.clear()
        self._submodels_checked[sub] = full
        return None if full else sub

    def hidden_states(self, input_ids: torch.Tensor, inputs_embeds: torch.Tensor | None = None,
                      cache: KVCache | None = None, submodel: SubModel | str | None = None) -> torch.Tensor:
        """The final-normed hidden states [B, T, D] (forward without the head)."""
        sub = self.resolve_submodel(submodel)
        if input_ids.dim() != 2:
            raise ValueError(f"input_ids must be [batch, length], got shape {list(input_ids.shape)}")
        if inputs_embeds is None:
            inputs_embeds = self.embed(input_ids)
        elif inputs_embeds.shape[:2] != input_ids.shape or inputs_embeds.shape[-1] != self.config.hidden_size:
            raise ValueError(f"inputs_embeds shape {list(inputs_embeds.shape)} does not match input_ids "
                             f"{list(input_ids.shape)} x hidden_size {self.config.hidden_size}")
        embeds = inputs_embeds.to(self.dtype)
        ple = self.per_layer_inputs(input_ids, embeds, None if sub is None else sub.kept)
        if cache is not None:
            bind_cache(cache, sub)
        start = cache.begin(input_ids.shape[1]) if cache is not None else 0
        try:
            streams = self._run_layers(self._expand(embeds), ple, start, cache, sub)
        except BaseException:
            if cache is not None:
                cache.crop(start)  # leave the cache as it was before this forward
            raise
        if cache is not None:
            cache.end()
        return self.norm(self._collapse(streams))

    def head(self, hidden: torch.Tensor) -> torch.Tensor:
        """Tied projection onto the vocabulary, then cap * tanh(logits / cap) in the logits dtype."""
        e = self.embed_tokens
        logits = e(hidden) if isinstance(e, QuantizedWeight) else hidden @ e.weight.T
        cap = self.config.final_logit_softcapping
        if cap is not None:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def _run_layers(self, streams: torch.Tensor, ple: torch.Tensor, start: int, cache: KVCache | None,
                    sub: SubModel | None = None):
        c = self.config
        t = streams.shape[2]
        if hasattr(cache, "attention_contexts"):  # lm.static_cache: per-row positions and masks
            contexts = cache.attention_contexts(self.rotary, t, streams.device, streams.dtype)
        else:
            contexts = {typ: attention_context(c, self.rotary, typ, start, t, streams.device, streams.dtype)
                        for typ in set(c.layer_types)}
        shared_kv: dict = {}
        if sub is None:
            for i, layer in enumerate(self.layers):
                streams = layer(streams, ple[:, :, i], contexts[c.layer_types[i]], cache, shared_kv)
            return streams
        # A kept layer keeps its attention type, sparsity and KV sharing in the sliced model, and the
        # producers of the shared layers are never skipped (SubModel.check_runs_on), so the shared layers
        # read the same keys here as there.
        for j, (i, width) in enumerate(zip(sub.kept, sub.ffn)):
            streams = self.layers[i](streams, ple[:, :, j], contexts[c.layer_types[i]], cache, shared_kv, width)
        return streams

    def _expand(self, h0: torch.Tensor) -> torch.Tensor:
        """[B, T, D] -> AltUp streams [n, B, T, D]: stream 0 is the embedding, the others projections of
        it rescaled to its RMS."""
        target = rms(h0)
        extra = [match_magnitude(proj(h0), target) for proj in self.altup_projections]
        return torch.stack([h0, *extra], dim=0)

    def _collapse(self, streams: torch.Tensor) -> torch.Tensor:
        target = rms(streams[0])
        extra = [match_magnitude(proj(s), target) for proj, s in zip(self.altup_unembed_projections, streams[1:])]
        return torch.stack([streams[0], *extra]).mean(dim=0)
