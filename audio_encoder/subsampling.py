"""Sub-sample conv projection (SSCP): log-mel [B, T, 128] -> conformer frames [B, ceil(T/4), hidden].

Two blocks of Conv2d(3x3, stride 2) + cumulative group norm + ReLU over (time, frequency), then a
linear projection of the flattened (frequency, channel) grid. Time padding is "reverse causal":
two zero rows go after the last row, so each output row looks two input rows ahead.

Every module here takes and returns an explicit state so that a stream can feed rows in pieces:
the offline path is the same code with a fresh state and `final=True`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .config import AudioConfig

FREQ_PAD = (1, 1)  # the reference pads one bin on each side of the frequency axis


@dataclass(frozen=True)
class NormStats:
    """Running statistics of a cumulative group norm, per batch row: sum of values, sum of squared
    deviations (each from the running mean at its own step), and element count."""

    total: torch.Tensor  # [B] float32
    squares: torch.Tensor  # [B] float32
    count: float


@dataclass(frozen=True)
class ConvBlockState:
    pending: torch.Tensor  # [B, C_in, rows, F_in]: input rows not yet consumed by a full stride
    stats: NormStats


class CumulativeGroupNorm(nn.Module):
    """Group norm (one group) whose statistics accumulate over time from the start of the clip.

    Input [B, T, F, C]; statistics pool all F x C values up to and including step t; scale per
    channel, no bias. Runs in float32 like the reference."""

    def __init__(self, num_channels: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))

    def forward(self, x: torch.Tensor, stats: NormStats) -> tuple[torch.Tensor, NormStats]:
        h = x.float()
        per_step = h.shape[2] * h.shape[3]
        total = stats.total[:, None] + torch.cumsum(h.sum(dim=(2, 3)), dim=1)  # [B, T]
        count = stats.count + per_step * torch.arange(1, h.shape[1] + 1, device=h.device, dtype=torch.float32)
        mean = (total / count)[:, :, None, None]
        squares = stats.squares[:, None] + torch.cumsum((h - mean).pow(2).sum(dim=(2, 3)), dim=1)
        var = (squares / count)[:, :, None, None]
        y = (h - mean) * torch.rsqrt(var + self.eps) * self.weight.float()
        if h.shape[1]:
            stats = NormStats(total[:, -1], squares[:, -1], stats.count + per_step * h.shape[1])
        return y.to(x.dtype), stats


class ConvBlock(nn.Module):
    """Conv2d (no bias) over [B, C, time, freq] + cumulative group norm + ReLU."""

    def __init__(self, in_channels: int, out_channels: int, kernel: tuple[int, int], stride: tuple[int, int],
                 eps: float):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel_size=kernel, stride=stride, bias=False)
        self.norm = CumulativeGroupNorm(out_channels, eps)

    def out_freq(self, in_freq: int) -> int:
        kw, sw = self.conv.kernel_size[1], self.conv.stride[1]
        return (in_freq + sum(FREQ_PAD) - kw) // sw + 1

    def initial_state(self, batch: int, in_freq: int, device, dtype) -> ConvBlockState:
        pending = torch.zeros(batch, self.conv.in_channels, 0, in_freq, device=device, dtype=dtype)
        zeros = torch.zeros(batch, device=device, dtype=torch.float32)
        return ConvBlockState(pending, NormStats(zeros, zeros.clone(), 0.0))

    def forward(self, x: torch.Tensor, state: ConvBlockState, final: bool) -> tuple[torch.Tensor, ConvBlockState]:
        """New input rows [B, C_in, n, F] -> every output row they complete, [B, C_out, m, F_out].
        `final` appends the reference's kernel - 1 zero rows and emits the last outputs."""
        kh, sh = self.conv.kernel_size[0], self.conv.stride[0]
        rows = torch.cat([state.pending, x.to(self.conv.weight.dtype)], dim=2)
        if final:
            rows = F.pad(rows, (0, 0, 0, kh - 1))
        n_out = max(0, (rows.shape[2] - kh) // sh + 1)
        pending = rows[:, :, n_out * sh:] if not final else rows[:, :, :0]
        if n_out == 0:
            empty = rows.new_zeros(rows.shape[0], self.conv.out_channels, 0, self.out_freq(rows.shape[3]))
            return empty, ConvBlockState(pending, state.stats)
        y = self.conv(F.pad(rows, FREQ_PAD))  # [B, C_out, n_out, F_out]
        y, stats = self.norm(y.permute(0, 2, 3, 1), state.stats)
        return F.relu(y.permute(0, 3, 1, 2)), ConvBlockState(pending, stats)


@dataclass(frozen=True)
class SubsampleState:
    conv_0: ConvBlockState
    conv_1: ConvBlockState


class SubSampleConvProjection(nn.Module):
    def __init__(self, config: AudioConfig):
        super().__init__()
        channels, kernels, strides = (config.sscp_conv_channel_size, config.sscp_conv_kernel_size,
                                      config.sscp_conv_stride_size)
        eps = config.sscp_conv_group_norm_eps
        self.conv_0 = ConvBlock(1, channels[0], kernels[0], strides[0], eps)
        self.conv_1 = ConvBlock(channels[0], channels[1], kernels[1], strides[1], eps)
        self.in_freq = config.input_feat_size
        out_freq = self.conv_1.out_freq(self.conv_0.out_freq(self.in_freq))
        self.input_proj_linear = nn.Linear(out_freq * channels[1], config.hidden_size, bias=False)

    def initial_state(self, batch: int, device: torch.device) -> SubsampleState:
        dtype = self.conv_0.conv.weight.dtype
        return SubsampleState(self.conv_0.initial_state(batch, self.in_freq, device, dtype),
                              self.conv_1.initial_state(batch, self.conv_0.out_freq(self.in_freq), device, dtype))

    def forward(self, features: torch.Tensor, state: SubsampleState | None = None,
                final: bool = True) -> tuple[torch.Tensor, SubsampleState]:
        """Mel rows [B, n, 128] -> the conformer frames they complete [B, m, hidden]."""
        if state is None:
            state = self.initial_state(features.shape[0], features.device)
        x, s0 = self.conv_0(features.unsqueeze(1), state.conv_0, final)
        x, s1 = self.conv_1(x, state.conv_1, final)
        b, c, t, f = x.shape
        x = x.permute(0, 2, 3, 1).reshape(b, t, f * c)  # flatten as (freq, channel): index f * C + c
        return self.input_proj_linear(x), SubsampleState(s0, s1)
