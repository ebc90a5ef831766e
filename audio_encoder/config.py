"""AudioConfig: the `audio_config` section of a Gemma 3n config.json, checked and frozen.

Defaults are the reference `Gemma3nAudioConfig` defaults (identical for E2B and E4B). Keys the
encoder does not use (model_type, torch_dtype, ...) are ignored; a used key with a wrong type is
an error that names the key.
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class AudioConfig:
    vocab_size: int = 128
    vocab_offset: int = 262_144 + 128  # text vocabulary, then 128 vision ids, then the audio ids
    input_feat_size: int = 128
    hidden_size: int = 1536
    rms_norm_eps: float = 1e-6
    gradient_clipping: float = 1e10
    conf_attention_chunk_size: int = 12
    conf_attention_context_left: int = 13  # self + 12 past frames
    conf_attention_context_right: int = 0
    conf_attention_logit_cap: float = 50.0
    conf_num_attention_heads: int = 8
    conf_num_hidden_layers: int = 12
    conf_conv_kernel_size: int = 5
    conf_reduction_factor: int = 4
    conf_residual_weight: float = 0.5
    sscp_conv_channel_size: tuple[int, ...] = (128, 32)
    sscp_conv_group_norm_eps: float = 1e-3
    sscp_conv_kernel_size: tuple[tuple[int, int], ...] = ((3, 3), (3, 3))
    sscp_conv_stride_size: tuple[tuple[int, int], ...] = ((2, 2), (2, 2))

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type == "int" and (not isinstance(value, int) or isinstance(value, bool)):
                raise ValueError(f"audio_config.{f.name} must be an integer, got {value!r}")
            if f.type == "float" and (not isinstance(value, (int, float)) or isinstance(value, bool)):
                raise ValueError(f"audio_config.{f.name} must be a number, got {value!r}")
        if self.hidden_size % self.conf_num_attention_heads:
            raise ValueError(f"audio_config.hidden_size ({self.hidden_size}) must be divisible by "
                             f"conf_num_attention_heads ({self.conf_num_attention_heads})")
        if self.conf_attention_context_right != 0:
            raise ValueError("audio_config.conf_attention_context_right must be 0: this encoder is causal "
                             f"(every released Gemma 3n uses 0), got {self.conf_attention_context_right}")
        if self.conf_attention_context_left < 1:
            raise ValueError(f"audio_config.conf_attention_context_left must be >= 1, "
                             f"got {self.conf_attention_context_left}")
        if len(self.sscp_conv_channel_size) != 2 or len(self.sscp_conv_kernel_size) != 2 \
                or len(self.sscp_conv_stride_size) != 2:
            raise ValueError("audio_config.sscp_conv_{channel,kernel,stride}_size must describe exactly 2 "
                             "conv blocks, as in the reference")

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "AudioConfig":
        """Build from config.json's `audio_config` object; missing keys take the reference defaults."""
        if not isinstance(d, dict):
            raise ValueError(f"audio_config must be a JSON object, got {type(d).__name__}")
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in d:
                continue
            value = d[f.name]
            if f.name == "sscp_conv_channel_size":
                value = _int_tuple(f.name, value)
            elif f.name in ("sscp_conv_kernel_size", "sscp_conv_stride_size"):
                if not isinstance(value, (list, tuple)):
                    raise ValueError(f"audio_config.{f.name} must be a list of [time, freq] pairs, got {value!r}")
                value = tuple(_int_tuple(f.name, pair, length=2) for pair in value)
            elif f.type == "float" and isinstance(value, int) and not isinstance(value, bool):
                value = float(value)
            kwargs[f.name] = value
        return cls(**kwargs)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.conf_num_attention_heads

    @property
    def time_stride(self) -> int:
        """Mel frames per conformer frame (4: two stride-2 convs)."""
        return self.sscp_conv_stride_size[0][0] * self.sscp_conv_stride_size[1][0]


def _int_tuple(name: str, value: Any, length: int | None = None) -> tuple[int, ...]:
    ok = isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value)
    if not ok or (length is not None and len(value) != length):
        what = f"{length} integers" if length else "a list of integers"
        raise ValueError(f"audio_config.{name} must hold {what}, got {value!r}")
    return tuple(value)
