"""Keys and values of the cache-owning decoder layers, kept for every position so far.

Only layers that compute their own K/V own an entry (20 of 30 in E2B); KV-shared layers read their
producer's entry during the forward. All entries always hold the same positions 0 .. length-1, so one
number says where the next forward continues (its RoPE positions and masks).

Simple by design: entries grow by concatenation and keep all positions, sliding layers included (the
sliding mask hides what is out of the window). `crop(n)` rolls back to the first n positions, which
is what streaming needs to reuse a prompt prefix and recompute what follows.
"""
from __future__ import annotations

import torch


class KVCache:
    def __init__(self):
        self.keys: dict[int, torch.Tensor] = {}  # layer -> [B, kv_heads, length, head_dim]
        self.values: dict[int, torch.Tensor] = {}
        self._length = 0
        self._pending: int | None = None  # length the current forward will reach
        self.submodel = None  # the MatFormer sub-model (lm.submodel) that computed the entries; None = full

    @property
    def length(self) -> int:
        """Number of positions cached; the next forward starts at this position."""
        return self._length

    def __len__(self) -> int:
        return self._length

    def begin(self, new_tokens: int) -> int:
        """Called by the model before a forward over `new_tokens` positions; returns the start position."""
        if self._pending is not None:
            raise RuntimeError("KVCache: a forward is already in progress (a failed forward? call crop())")
        self._pending = self._length + new_tokens
        return self._length

    def end(self) -> None:
        """Called by the model after all layers have appended their keys and values."""
        if self._pending is None:
            raise RuntimeError("KVCache.end() without begin()")
        self._length, self._pending = self._pending, None

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Append this step's k, v [B, H, T, D] for `layer`; returns all of the layer's keys and values."""
        if self._pending is None:
            raise RuntimeError("KVCache.update() outside a forward (call begin() first)")
        if layer in self.keys:
            k = torch.cat([self.keys[layer], k], dim=2)
            v = torch.cat([self.values[layer], v], dim=2)
        if k.shape[2] != self._pending:
            raise RuntimeError(f"KVCache: layer {layer} would hold {k.shape[2]} positions, expected {self._pending}")
        self.keys[layer], self.values[layer] = k, v
        return k, v

    def restorable(self, n: int) -> int:
        """The furthest crop towards n this cache can honour: always n (it keeps every position). The
        StaticCache's rings may not, hence the question."""
        return max(0, min(n, self._length))

    def crop(self, n: int) -> None:
        """Keep only the first n positions (n <= length); also clears a forward left unfinished by an error."""
        if n < 0:
            raise ValueError(f"KVCache.crop: n must be >= 0, got {n}")
        self._pending = None
        n = min(n, self._length)
        for layer in list(self.keys):
            self.keys[layer] = self.keys[layer][:, :, :n]
            self.values[layer] = self.values[layer][:, :, :n]
        # A layer that had appended before a failed forward is cut back to the same length as the rest.
        self._length = n

    def reorder(self, rows: torch.Tensor) -> None:
        """Make row i a copy of old row rows[i] in every layer (beam search: the batch may also grow or
        shrink, all rows keeping the same length)."""
        for layer in self.keys:
            self.keys[layer] = self.keys[layer].index_select(0, rows)
            self.values[layer] = self.values[layer].index_select(0, rows)

    def reset(self) -> None:
        self.keys.clear()
        self.values.clear()
        self._length, self._pending = 0, None
        self.submodel = None

    def submodels_held(self) -> list[tuple[int, object]]:
        """(length, sub-model) per sequence: what lm.submodel.bind_cache checks."""
        return [(self._length, self.submodel)]

    def hold_submodel(self, sub) -> None:
        self.submodel = sub

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for d in (self.keys, self.values) for t in d.values())
