"""Building blocks of the Gemma 3n decoder layer: RMSNorm, LAuReL, the sparse gated MLP and AltUp.

Numerics follow transformers 5.23 op for op where the order changes rounding in bf16 (norms in fp32,
constants rounded to the activation dtype where the reference casts them); see the reference brief §7.1.
"""
from __future__ import annotations

import math
from functools import lru_cache

import torch
import torch.nn.functional as F
from torch import nn

from .config import TextConfig
from .quant import linear_cols, linear_rows


@lru_cache(maxsize=None)
def rounded(value: float, dtype: torch.dtype) -> float:
    """`value` as an fp32 tensor cast to `dtype`, back as a Python float.

    The reference multiplies by 0-dim tensors cast to the activation dtype (sqrt(2048) -> 45.25 in bf16);
    multiplying by the already-rounded Python float gives the same result without a device tensor."""
    return torch.tensor(value, dtype=torch.float32, device="cpu").to(dtype).item()


class RMSNorm(nn.Module):
    """x * (mean(x^2) + eps)^-0.5 * weight, in fp32. The scale is `weight` (not 1 + weight as in Gemma 2/3);
    `with_scale=False` (v_norm) has no parameter at all, so no checkpoint tensor."""

    def __init__(self, dim: int, eps: float = 1e-6, with_scale: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if with_scale else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        # torch.pow rather than rsqrt, as the reference (it matches JAX across compilers).
        h = h * torch.pow(h.pow(2).mean(-1, keepdim=True) + self.eps, -0.5)
        if self.weight is not None:
            h = h * self.weight.float()
        return h.type_as(x)


class Laurel(nn.Module):
    """Learned augmented residual: x + norm(right(left(x))), a rank-`laurel_rank` bypass."""

    def __init__(self, config: TextConfig):
        super().__init__()
        self.linear_left = nn.Linear(config.hidden_size, config.laurel_rank, bias=False)
        self.linear_right = nn.Linear(config.laurel_rank, config.hidden_size, bias=False)
        self.post_laurel_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.post_laurel_norm(self.linear_right(self.linear_left(x)))


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x, approximate="tanh")


class MLP(nn.Module):
    """down(gelu_tanh(gate(x)) * up(x)), with the gate shifted and clipped at mean + z*std on sparse layers."""

    def __init__(self, config: TextConfig, layer: int):
        super().__init__()
        if config.hidden_activation not in ("gelu_pytorch_tanh", "gelu_tanh"):
            raise ValueError(f"text_config.hidden_activation: only gelu_pytorch_tanh is implemented, "
                             f"found {config.hidden_activation!r}")
        size = config.intermediate_size[layer]
        self.gate_proj = nn.Linear(config.hidden_size, size, bias=False)
        self.up_proj = nn.Linear(config.hidden_size, size, bias=False)
        self.down_proj = nn.Linear(size, config.hidden_size, bias=False)
        self.sparsity = config.activation_sparsity_pattern[layer]
        # The standard-normal quantile, in fp32 exactly as Normal(0, 1).icdf computes it.
        p = torch.tensor(self.sparsity, dtype=torch.float32, device="cpu")
        self.z = float(torch.erfinv(2 * p - 1) * math.sqrt(2)) if self.sparsity > 0 else 0.0

    def forward(self, x: torch.Tensor, width: int | None = None) -> torch.Tensor:
        """width: run the MatFormer sub-layer of the first `width` hidden units (lm.submodel) through
        views of the weights: gate/up rows [:width], down columns [:, :width]. The sparsity cut-off then
        uses those units' statistics, as the sliced checkpoint's layer does."""
        if width is None or width == self.gate_proj.out_features:
            gate, up = self.gate_proj(x), self.up_proj(x)
        else:
            gate, up = linear_rows(self.gate_proj, x, width), linear_rows(self.up_proj, x, width)
        if self.sparsity > 0:
            gate = self._gaussian_topk(gate)
        hidden = gelu_tanh(gate) * up
        return self.down_proj(hidden) if width is None else linear_cols(self.down_proj, hidden)

    def _gaussian_topk(self, g: torch.Tensor) -> torch.Tensor:
        # Keeps about (1 - sparsity) of the units: a shift by the Gaussian cutoff, not a mask.
        mean = g.mean(-1, keepdim=True)
        std = g.std(-1, keepdim=True, unbiased=False)
        return F.relu(g - (mean + std * rounded(self.z, g.dtype)))


class AltUp(nn.Module):
    """Alternating updates: the layer runs on stream 0 only; the other streams follow through a learned
    4x4 prediction (before the layer) and a per-stream correction (after it)."""

    def __init__(self, config: TextConfig):
        super().__init__()
        n, d = config.altup_num_inputs, config.hidden_size
        self.n = n
        self.active = config.altup_active_idx
        self.correct_output_scale = nn.Parameter(torch.zeros(d))
        self.correction_coefs = nn.Linear(n, n, bias=False)
        self.prediction_coefs = nn.Linear(n, n * n, bias=False)
        self.modality_router = nn.Linear(d, n, bias=False)
        self.router_norm = RMSNorm(d, config.rms_norm_eps)
        self.router_scale = 1.0 / d  # a power of two for real sizes: exact in any dtype

    def _modalities(self, x: torch.Tensor) -> torch.Tensor:
        routed = self.modality_router(self.router_norm(x) * self.router_scale)
        return torch.tanh(routed.float()).type_as(x)

    def predict(self, streams: torch.Tensor) -> torch.Tensor:
        """streams [n, B, T, D] -> predictions P_i = H_i + sum_j A[i, j] H_j, A from the router [B, T, n, n]."""
        mod = self._modalities(streams[self.active])
        coefs = self.prediction_coefs(mod).reshape(*mod.shape[:-1], self.n, self.n).transpose(-1, -2)
        # [B, T, D, n] @ [B, T, n, n]: the same contraction order as the reference, for equal rounding.
        pred = torch.matmul(streams.permute(1, 2, 3, 0), coefs).permute(3, 0, 1, 2)
        return (pred + streams).type_as(streams)

    def correct(self, predictions: torch.Tensor, activated: torch.Tensor) -> torch.Tensor:
        """C_i = P_i + (coef_i + 1) * (activated - P_active), coef from the router on `activated`."""
        coefs = self.correction_coefs(self._modalities(activated)) + 1.0  # [B, T, n]
        innovation = activated - predictions[self.active]
        corrected = innovation.unsqueeze(0) * coefs.permute(2, 0, 1).unsqueeze(-1)
        return (corrected + predictions).type_as(activated)

    def scale_output(self, x: torch.Tensor) -> torch.Tensor:
        w = self.correct_output_scale
        return (x.type_as(w) * w).type_as(x)


def match_magnitude(x: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Rescale x to the RMS `target` [.., 1] (5.x: the new RMS is floored at sqrt(1e-5))."""
    rms = torch.sqrt(torch.mean(x**2, dim=-1, keepdim=True).clamp(min=1e-5))
    return x * target / rms


def rms(x: torch.Tensor) -> torch.Tensor:
    return torch.mean(x**2, dim=-1, keepdim=True) ** 0.5
