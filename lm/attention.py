"""Gemma 3n text attention: q/k/v RMS norms, RoPE per layer type, sliding or full causal masks, and KV
sharing (a shared layer has no k/v weights and attends over its producer's keys and values).

Attention scaling is 1.0 (q and k are RMS-normed instead) and there is no attention soft cap.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import SLIDING, TextConfig
from .layers import RMSNorm


class Rotary:
    """cos/sin tables per layer type. inv_freq is computed once on the CPU in fp32, as the reference does at
    construction, and kept out of the module's buffers so `.to(bfloat16)` cannot round it."""

    def __init__(self, config: TextConfig):
        d = config.head_dim
        exponents = torch.arange(0, d, 2, dtype=torch.float32, device="cpu") / d
        self.inv_freq = {t: 1.0 / (config.rope_base(t) ** exponents) for t in set(config.layer_types)}
        self._on_device: dict[tuple[str, torch.device], torch.Tensor] = {}

    def __call__(self, layer_type: str, positions: torch.Tensor, dtype: torch.dtype):
        """positions [T] (int) -> cos, sin [T, head_dim] in `dtype` (computed in fp32, then cast)."""
        key = (layer_type, positions.device)
        if key not in self._on_device:
            self._on_device[key] = self.inv_freq[layer_type].to(positions.device)
        freqs = positions[:, None].float() * self._on_device[key]
        emb = torch.cat((freqs, freqs), dim=-1)
        return emb.cos().to(dtype), emb.sin().to(dtype)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x [B, T, H, D]; cos/sin [T, D] (shared by the batch) or [B, T, D] (per row); rotate-half over the
    full head dim."""
    cos, sin = cos.unsqueeze(-2), sin.unsqueeze(-2)
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos + rotated * sin


@dataclass(frozen=True)
class AttentionContext:
    """What every layer of one type sees in one forward: RoPE tables, the key range and the mask."""

    cos: torch.Tensor  # [T, head_dim], or [B, T, head_dim] per row (lm.static_cache)
    sin: torch.Tensor
    key_start: int  # first key position kept (sliding layers drop keys that no query can see)
    mask: torch.Tensor | None  # [T, S] or per row [B, 1, T, S] bool, True = may attend; None = causal from 0


def attention_context(config: TextConfig, rotary: Rotary, layer_type: str, start: int, length: int,
                      device: torch.device, dtype: torch.dtype) -> AttentionContext:
    """Context for queries at positions start .. start+length-1 over keys 0 .. start+length-1."""
    q_pos = torch.arange(start, start + length, device=device)
    cos, sin = rotary(layer_type, q_pos, dtype)
    window = config.sliding_window if layer_type == SLIDING else None
    key_start = max(0, start - window + 1) if window else 0
    if start == 0 and (window is None or length <= window):
        return AttentionContext(cos, sin, 0, None)
    k_pos = torch.arange(key_start, start + length, device=device)
    mask = k_pos[None, :] <= q_pos[:, None]
    if window:
        mask &= k_pos[None, :] > q_pos[:, None] - window  # 'window' keys including self, as the reference
    return AttentionContext(cos, sin, key_start, mask)


class TextAttention(nn.Module):
    def __init__(self, config: TextConfig, layer: int):
        super().__init__()
        self.layer = layer
        self.layer_type = config.layer_types[layer]
        self.shared = config.is_kv_shared(layer)
        self.heads, self.kv_heads, self.head_dim = (config.num_attention_heads, config.num_key_value_heads,
                                                    config.head_dim)
        d = config.hidden_size
        self.q_proj = nn.Linear(d, self.heads * self.head_dim, bias=False)
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        if not self.shared:
            self.k_proj = nn.Linear(d, self.kv_heads * self.head_dim, bias=False)
            self.v_proj = nn.Linear(d, self.kv_heads * self.head_dim, bias=False)
            self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
            self.v_norm = RMSNorm(self.head_dim, config.rms_norm_eps, with_scale=False)
        self.o_proj = nn.Linear(self.heads * self.head_dim, d, bias=False)

    def keys_values(self, x: torch.Tensor, ctx: AttentionContext) -> tuple[torch.Tensor, torch.Tensor]:
        """This layer's new K (normed, rotated) and V (normed), [B, kv_heads, T, head_dim]."""
        shape = (*x.shape[:-1], self.kv_heads, self.head_dim)
        k = apply_rope(self.k_norm(self.k_proj(x).view(shape)), ctx.cos, ctx.sin)
        v = self.v_norm(self.v_proj(x).view(shape))
        return k.transpose(1, 2), v.transpose(1, 2)

    def forward(self, x: torch.Tensor, ctx: AttentionContext, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """x [B, T, D]; k, v [B, kv_heads, S_all, head_dim] over positions 0 .. start+T-1 (already
        including this step's keys, from this layer or its producer)."""
        b, t, _ = x.shape
        q = self.q_norm(self.q_proj(x).view(b, t, self.heads, self.head_dim))
        q = apply_rope(q, ctx.cos, ctx.sin).transpose(1, 2)
        k, v = k[:, :, ctx.key_start:], v[:, :, ctx.key_start:]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=ctx.mask, is_causal=ctx.mask is None and t > 1,
                                             scale=1.0, enable_gqa=self.heads != self.kv_heads)
        return self.o_proj(out.transpose(1, 2).reshape(b, t, -1))
