"""Choosing the next token from logits: greedy by default; temperature, top-k and top-p on request."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class SamplingOptions:
    """temperature 0 = greedy (argmax). top_k 0 = off; top_p 1.0 = off. seed makes sampling repeatable."""

    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None

    def __post_init__(self):
        if not self.temperature >= 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] (1 = off), got {self.top_p}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0


def filter_logits(logits: torch.Tensor, options: SamplingOptions) -> torch.Tensor:
    """Temperature, then top-k, then top-p (the order transformers applies them); removed entries -> -inf.
    logits [..., V] in any dtype; the result is fp32."""
    logits = logits.float() / options.temperature
    if options.top_k and options.top_k < logits.shape[-1]:
        kth = torch.topk(logits, options.top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if options.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # Drop a token when the tokens before it already reach top_p; the most likely one always stays.
        drop_sorted = (probs.cumsum(-1) - probs) >= options.top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def make_generator(options: SamplingOptions, device: torch.device) -> torch.Generator | None:
    if options.greedy or options.seed is None:
        return None
    return torch.Generator(device=device).manual_seed(options.seed)


def sample(logits: torch.Tensor, options: SamplingOptions, generator: torch.Generator | None = None) -> torch.Tensor:
    """logits [B, V] -> token ids [B]."""
    if options.greedy:
        return logits.argmax(-1)
    probs = filter_logits(logits, options).softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
