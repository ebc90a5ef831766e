"""RMSNorm as Gemma 3n's audio tower and embedders use it: scale by `weight` (not 1 + weight)."""
from __future__ import annotations

import torch
from torch import nn


class RMSNorm(nn.Module):
    """x * (mean(x^2) + eps)^-0.5 * weight, computed in float32 and cast back to x's dtype.

    with_scale=False has no parameter (the embedder's post-projection norm)."""

    def __init__(self, dim: int, eps: float = 1e-6, with_scale: bool = True):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim)) if with_scale else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.float()
        # pow(-0.5) rather than rsqrt: the reference chose it to agree with JAX.
        h = h * torch.pow(h.pow(2).mean(-1, keepdim=True) + self.eps, -0.5)
        if self.weight is not None:
            h = h * self.weight.float()
        return h.to(x.dtype)
