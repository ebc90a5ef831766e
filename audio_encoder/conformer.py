"""Conformer block of the Gemma 3n audio tower: FFN/2, local attention, light conv, FFN/2, RMSNorm.

Attention is causal and local: the query at frame t sees keys t - 12 .. t (context_left - 1 past
frames and itself) with a Transformer-XL relative-position logit term q_t . P[t - s]. The reference
computes it in blocks of 12 queries against 24 keys; a plain per-query sliding window gives the same
numbers and is what a stream needs. Each block takes and returns a `LayerState` (the last 12 keys and
values, the last 4 conv inputs), so streaming and offline encoding run the same code.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import AudioConfig
from .norm import RMSNorm

QUERY_CHUNK = 512  # queries per attention pass: bounds the unfolded key windows in memory
# The reference builds the FFN, attention and block norms with RMSNorm's default eps, not the
# config's rms_norm_eps (only the light conv's norms read the config); equal in every release.
DEFAULT_EPS = 1e-6


def weight_dtype(linear: nn.Module) -> torch.dtype:
    """The float dtype a projection computes in. A weight-only quantized matrix (lm.quant, which loading may
    put in place of an nn.Linear) holds integer codes in `weight` and names its float dtype `compute_dtype`."""
    return getattr(linear, "compute_dtype", None) or linear.weight.dtype


@dataclass(frozen=True)
class LayerState:
    keys: torch.Tensor  # [B, P, H, D] projected keys of the last P frames (P = context_left - 1)
    values: torch.Tensor  # [B, P, H, D]
    valid: torch.Tensor  # [B, P] bool; False before the start of the clip
    conv: torch.Tensor  # [B, kernel - 1, hidden] the last GLU outputs, the depthwise conv's left context


class FeedForward(nn.Module):
    """x + residual_weight * post_norm(W2 silu(W1 pre_norm(x)))."""

    def __init__(self, config: AudioConfig):
        super().__init__()
        d = config.hidden_size
        self.pre_layer_norm = RMSNorm(d, DEFAULT_EPS)
        self.ffw_layer_1 = nn.Linear(d, 4 * d, bias=False)
        self.ffw_layer_2 = nn.Linear(4 * d, d, bias=False)
        self.post_layer_norm = RMSNorm(d, DEFAULT_EPS)
        self.residual_weight = config.conf_residual_weight

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.ffw_layer_2(F.silu(self.ffw_layer_1(self.pre_layer_norm(x))))
        return x + self.post_layer_norm(h) * self.residual_weight


class RelativePositionEmbedding(nn.Module):
    """P[d] = pos_proj([sin(d * inv) | cos(d * inv)]) for distances d = max_past .. 0."""

    def __init__(self, config: AudioConfig):
        super().__init__()
        self.hidden = config.hidden_size
        self.heads = config.conf_num_attention_heads
        self.max_past = config.conf_attention_context_left - 1
        self.pos_proj = nn.Linear(self.hidden, self.hidden, bias=False)

    def forward(self, dtype: torch.dtype) -> torch.Tensor:
        """[max_past + 1, H, D], row j for distance max_past - j (the key order in a window)."""
        device = self.pos_proj.weight.device
        half = self.hidden // 2
        step = math.log(1.0e4) / max(half - 1, 1)
        inv = torch.exp(torch.arange(half, device=device, dtype=torch.float32) * -step)
        # The reference keeps these timescales in a buffer that follows the model's dtype.
        inv = inv.to(weight_dtype(self.pos_proj)).float()
        distance = torch.arange(self.max_past, -1, -1, device=device, dtype=torch.float32)
        angle = distance[:, None] * inv[None, :]
        signal = torch.cat([torch.sin(angle), torch.cos(angle)], dim=-1).to(dtype)
        return self.pos_proj(signal).view(self.max_past + 1, self.heads, -1)


class LocalAttention(nn.Module):
    def __init__(self, config: AudioConfig):
        super().__init__()
        d, self.heads, self.head_dim = config.hidden_size, config.conf_num_attention_heads, config.head_dim
        self.max_past = config.conf_attention_context_left - 1
        self.logit_cap = config.conf_attention_logit_cap
        self.relative_position_embedding = RelativePositionEmbedding(config)
        self.per_dim_scale = nn.Parameter(torch.zeros(self.head_dim))
        self.q_proj = nn.Linear(d, d, bias=False)
        self.k_proj = nn.Linear(d, d, bias=False)
        self.v_proj = nn.Linear(d, d, bias=False)

    def forward(self, x: torch.Tensor, valid: torch.Tensor, state: LayerState
                ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
        """x [B, T, hidden] -> ([B, T, H, D], the new (keys, values, valid) of the last P frames)."""
        b, t, _ = x.shape
        shape = (b, t, self.heads, self.head_dim)
        dtype = weight_dtype(self.q_proj)
        # head_dim^-0.5 / softplus(0), rounded to the weights' dtype as the reference's buffer is.
        q_scale = torch.tensor(self.head_dim ** -0.5 / math.log(2.0), dtype=dtype, device=x.device)
        q = self.q_proj(x).view(shape) * q_scale * F.softplus(self.per_dim_scale)
        keys = torch.cat([state.keys, self.k_proj(x).view(shape)], dim=1)  # [B, P + T, H, D]
        values = torch.cat([state.values, self.v_proj(x).view(shape)], dim=1)
        key_valid = torch.cat([state.valid, valid], dim=1)
        pos = self.relative_position_embedding(q.dtype)
        p = self.max_past
        parts = []
        for s in range(0, t, QUERY_CHUNK):  # queries s .. e - 1 use keys s .. e - 1 + p (p of them earlier)
            e = min(s + QUERY_CHUNK, t)
            parts.append(self._window(q[:, s:e], keys[:, s:e + p], values[:, s:e + p], key_valid[:, s:e + p], pos))
        return torch.cat(parts, dim=1), (keys[:, t:], values[:, t:], key_valid[:, t:])

    def _window(self, q, keys, values, key_valid, pos):
        """Queries [B, T, H, D] against their own window of P + 1 keys: keys[:, t .. t + P]."""
        w = self.max_past + 1
        k_win = keys.unfold(1, w, 1)  # [B, T, H, D, W]
        v_win = values.unfold(1, w, 1)
        logits = torch.einsum("bthd,bthdw->bthw", q, k_win) + torch.einsum("bthd,whd->bthw", q, pos)
        cap = torch.tensor(self.logit_cap, dtype=logits.dtype, device=logits.device)
        logits = torch.tanh(logits / cap) * cap
        mask = key_valid.unfold(1, w, 1)[:, :, None, :]  # [B, T, 1, W]
        logits = logits.masked_fill(~mask, torch.finfo(logits.dtype).min)
        probs = torch.softmax(logits, dim=-1, dtype=torch.float32).to(values.dtype)
        return torch.einsum("bthw,bthdw->bthd", probs, v_win)


class ConformerAttention(nn.Module):
    def __init__(self, config: AudioConfig):
        super().__init__()
        d = config.hidden_size
        self.pre_attn_norm = RMSNorm(d, DEFAULT_EPS)
        self.attn = LocalAttention(config)
        self.post = nn.Linear(d, d, bias=False)
        self.post_norm = RMSNorm(d, DEFAULT_EPS)

    def forward(self, x, valid, state):
        h, kv = self.attn(self.pre_attn_norm(x), valid, state)
        return x + self.post_norm(self.post(h.flatten(2))), kv


class LightConv1d(nn.Module):
    """x + linear_end(silu(conv_norm(causal_depthwise_conv(glu(linear_start(pre_norm(x)))))))."""

    def __init__(self, config: AudioConfig):
        super().__init__()
        d = config.hidden_size
        self.pre_layer_norm = RMSNorm(d, config.rms_norm_eps)
        self.linear_start = nn.Linear(d, 2 * d, bias=False)
        self.depthwise_conv1d = nn.Conv1d(d, d, config.conf_conv_kernel_size, groups=d, bias=False)
        self.conv_norm = RMSNorm(d, config.rms_norm_eps)
        self.linear_end = nn.Linear(d, d, bias=False)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x [B, T, hidden], context [B, kernel - 1, hidden] (the previous GLU outputs)."""
        h = F.glu(self.linear_start(self.pre_layer_norm(x)), dim=-1)
        h = torch.cat([context, h], dim=1)
        new_context = h[:, h.shape[1] - context.shape[1]:]
        h = self.depthwise_conv1d(h.transpose(1, 2)).transpose(1, 2)  # causal: left context only
        h = self.linear_end(F.silu(self.conv_norm(h)))
        return x + h, new_context


class ConformerBlock(nn.Module):
    def __init__(self, config: AudioConfig):
        super().__init__()
        self.ffw_layer_start = FeedForward(config)
        self.attention = ConformerAttention(config)
        self.lconv1d = LightConv1d(config)
        self.ffw_layer_end = FeedForward(config)
        self.norm = RMSNorm(config.hidden_size, DEFAULT_EPS)
        self.max_past = config.conf_attention_context_left - 1
        self.conv_context = config.conf_conv_kernel_size - 1
        self.shape = (config.conf_num_attention_heads, config.head_dim, config.hidden_size)

    def initial_state(self, batch: int, device: torch.device, dtype: torch.dtype) -> LayerState:
        """Nothing before the clip: keys marked invalid, conv context zero (the reference's padding)."""
        heads, head_dim, hidden = self.shape
        kv = torch.zeros(batch, self.max_past, heads, head_dim, device=device, dtype=dtype)
        return LayerState(kv, kv.clone(), torch.zeros(batch, self.max_past, dtype=torch.bool, device=device),
                          torch.zeros(batch, self.conv_context, hidden, device=device, dtype=dtype))

    def forward(self, x: torch.Tensor, valid: torch.Tensor, state: LayerState | None = None
                ) -> tuple[torch.Tensor, LayerState]:
        """x [B, T, hidden], valid [B, T] (True = real frame) -> ([B, T, hidden], state after x)."""
        if state is None:
            state = self.initial_state(x.shape[0], x.device, x.dtype)
        x = self.ffw_layer_start(x)
        x, (keys, values, key_valid) = self.attention(x, valid, state)
        x = x * valid.unsqueeze(-1).to(x.dtype)  # padded frames must not reach the conv
        x, conv = self.lconv1d(x, state.conv)
        x = self.norm(self.ffw_layer_end(x))
        return x, LayerState(keys, values, key_valid, conv)
