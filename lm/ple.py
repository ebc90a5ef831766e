"""The per-layer embedding (PLE) table, kept off the hot path.

`embed_tokens_per_layer` is [262144, layers * 256]: 2.0 B of E2B's 5.4 B parameters, yet a forward reads
only the rows of the tokens in it. Held like any weight, it costs 3.75 GiB of accelerator memory in
bf16 (7.5 GiB as fp32 on a CPU). Kept on the host instead, as the checkpoint stores it, it stays a view of
the safetensors memory map: a row becomes resident when a token first reads it, so resident memory grows
with the distinct tokens seen, not with the table, and only the gathered rows travel to the device.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class PerLayerEmbedding(nn.Module):
    """The PLE table. With `on_host` set (the loader sets it), `.to(device/dtype)` leaves the table where
    and as it is, and `forward` converts only the gathered rows. Converting rows after the gather gives
    the same numbers as converting the whole table first: a dtype cast is elementwise."""

    def __init__(self, num_embeddings: int, embedding_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_embeddings, embedding_dim))
        self.on_host = False

    def _apply(self, fn, recurse=True):
        if self.on_host:
            return self  # device moves and dtype casts of the model skip the host table
        return super()._apply(fn, recurse)

    def forward(self, ids: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """ids [...] (all within the table) -> rows [..., dim] in `dtype` on the device of `ids`."""
        w = self.weight
        rows = F.embedding(ids.to(w.device), w)
        return rows.to(device=ids.device, dtype=dtype, non_blocking=False)

    def extra_repr(self) -> str:
        where = f"on host, {self.weight.dtype}" if self.on_host else "with the model"
        return f"{self.weight.shape[0]}, {self.weight.shape[1]} ({where})"
