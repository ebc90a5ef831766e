"""A preallocated KV cache with one row (slot) per sequence, for batched decoding.

`KVCache` grows by concatenation, so every decode step copies the whole cache, and it holds one
sequence. Here the buffers are allocated once and written in place, and each row keeps its own length,
so rows at different positions can share one forward (one matmul over B rows instead of B GEMVs).

Only cache-owning layers have buffers (KV-shared layers read their producer's keys during the forward,
as with KVCache):
- full-attention layers: [rows, kv_heads, max_len, head_dim], position p of a row at index p;
- sliding layers: a ring of `ring_slots` entries per row (default: the sliding window W), position p at
  p % ring_slots, and one table (shared by the sliding layers, which always hold the same positions) of
  the absolute position each entry holds, -1 for none. A query at q needs keys q-W+1 .. q, so W entries
  are all a continuing row needs. A forward of T > ring_slots-W+1 positions (a prefill) attends over the
  ring plus its own new keys before writing them, so no key a query needs is overwritten first.

A forward runs over a `CacheRows` view (`cache.rows([...])`, or a one-row `cache.slot(i)` that behaves
like a KVCache): all its rows advance by the same T positions, each from its own length. The model asks
the view for per-row RoPE positions and masks (`attention_contexts`); keys past a row's length, or out of
its window, are masked.

Rolling back (`crop(n)`): a full-attention row can go back anywhere. A ring has overwritten old
positions once a row grew past ring_slots, so it can go back to n only while it still holds n-W+1 ..
n-1; `restorable(n)` says how far back a row can go (n, else 0: recomputing from the start), and a crop
it cannot honour raises instead of attending over missing keys.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Sequence

import torch

from .attention import AttentionContext
from .config import SLIDING, TextConfig


class StaticCache:
    """Buffers for `rows` sequences of at most `max_len` positions each."""

    def __init__(self, config: TextConfig, rows: int, max_len: int, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, ring_slots: int | None = None):
        if rows < 1 or max_len < 1:
            raise ValueError(f"StaticCache: rows and max_len must be >= 1, got {rows} and {max_len}")
        window = config.sliding_window
        ring = window if ring_slots is None else ring_slots
        if ring < window:
            raise ValueError(f"StaticCache: ring_slots must be at least the sliding window {window}, got {ring}")
        self.config = config
        self.rows_total, self.max_len, self.window = rows, max_len, window
        self.ring = min(ring, max_len)  # a row never holds more than max_len positions: no wrap then
        self.device, self.dtype = torch.device(device), dtype
        heads, dim = config.num_key_value_heads, config.head_dim
        self.layer_type = {i: config.layer_types[i] for i in range(config.num_hidden_layers)
                           if not config.is_kv_shared(i)}
        self.keys: dict[int, torch.Tensor] = {}
        self.values: dict[int, torch.Tensor] = {}
        for layer, typ in self.layer_type.items():
            size = self.ring if typ == SLIDING else max_len
            self.keys[layer] = torch.zeros(rows, heads, size, dim, device=self.device, dtype=dtype)
            self.values[layer] = torch.zeros(rows, heads, size, dim, device=self.device, dtype=dtype)
        self.ring_pos = torch.full((rows, self.ring), -1, dtype=torch.long, device=self.device)
        self.lengths = [0] * rows
        # Oldest position p such that the ring still holds every position p .. length-1.
        self.held_from = [0] * rows
        self.row_submodel: list = [None] * rows  # MatFormer sub-model (lm.submodel) of each row's keys
        self._in_flight: set[int] = set()
        self._free = list(range(rows))
        self._lock = threading.Lock()

    # ---- views ------------------------------------------------------------------------------------
    def rows(self, rows: Sequence[int]) -> "CacheRows":
        return CacheRows(self, rows)

    def slot(self, row: int) -> "CacheRows":
        """Row `row` as a one-sequence cache (the KVCache interface)."""
        return CacheRows(self, [row])

    def allocate(self) -> "CacheRows | None":
        """A free row, emptied, as a slot (its `release()` gives it back); None when all are taken."""
        with self._lock:
            if not self._free:
                return None
            row = self._free.pop(0)
        slot = CacheRows(self, [row], owned=True)
        slot.reset()
        return slot

    def _release(self, row: int) -> None:
        with self._lock:
            if row not in self._free:
                self._free.append(row)

    @property
    def free_rows(self) -> int:
        return len(self._free)

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for d in (self.keys, self.values) for t in d.values())

    # ---- rollback rules ---------------------------------------------------------------------------
    def can_crop(self, row: int, n: int) -> bool:
        """Whether row `row` still holds every key a query at position n needs (n <= its length)."""
        return n == 0 or max(0, n - self.window + 1) >= self.held_from[row]

    def _set_length(self, row: int, n: int) -> None:
        if n == 0:
            self.held_from[row] = 0
            self.ring_pos[row] = -1
        else:
            pos = self.ring_pos[row]
            pos.masked_fill_(pos >= n, -1)  # later positions are stale once cropped
        self.lengths[row] = n


@dataclass
class _Plan:
    """One forward over a view: T new positions per row, where each layer type writes and reads."""

    starts: list[int]
    length: int  # T
    q_pos: torch.Tensor  # [B, T] absolute positions of the new tokens
    full_len: int  # full-attention keys read: 0 .. max(starts) + T - 1
    write_first: bool  # sliding: write the new keys into the ring, then attend over the ring
    write_rows: torch.Tensor  # [B, 1] row indices into the buffers
    ring_idx: torch.Tensor  # [B, m] ring entries written (the last m = min(T, ring) new positions)
    ring_new: torch.Tensor  # [B, m] their positions
    ring_after: torch.Tensor  # [B, ring] ring positions after this forward
    sliding_keys: torch.Tensor  # [B, S] positions of the keys a sliding layer attends over


class CacheRows:
    """Some rows of a StaticCache taking part in one forward. With one row it is a drop-in for KVCache
    (`length`, `begin`, `end`, `update`, `crop`, `reset`), plus `restorable` and `release`."""

    def __init__(self, cache: StaticCache, rows: Sequence[int], owned: bool = False):
        rows = [int(r) for r in rows]
        if not rows or len(set(rows)) != len(rows) or not all(0 <= r < cache.rows_total for r in rows):
            raise ValueError(f"CacheRows: rows must be distinct indices in [0, {cache.rows_total}), got {rows}")
        self.cache, self.row_ids, self._owned = cache, rows, owned
        self._index = torch.tensor(rows, dtype=torch.long, device=cache.device)
        first = rows[0]
        self._contiguous = rows == list(range(first, first + len(rows)))
        self._plan: _Plan | None = None

    # ---- lengths ----------------------------------------------------------------------------------
    @property
    def lengths(self) -> list[int]:
        return [self.cache.lengths[r] for r in self.row_ids]

    @property
    def length(self) -> int:
        """The one row's length (next forward starts here); for several rows see `lengths`."""
        if len(self.row_ids) != 1:
            raise ValueError(f"CacheRows.length: {len(self.row_ids)} rows have their own lengths; use .lengths")
        return self.cache.lengths[self.row_ids[0]]

    def __len__(self) -> int:
        return self.length

    def restorable(self, n: int) -> int:
        """The furthest crop towards n (<= the one row's length) this row can honour: n, else 0."""
        row = self.row_ids[0] if len(self.row_ids) == 1 else None
        if row is None:
            raise ValueError("CacheRows.restorable needs a one-row view")
        n = max(0, min(n, self.cache.lengths[row]))
        return n if self.cache.can_crop(row, n) else 0

    # ---- KVCache interface ------------------------------------------------------------------------
    def begin(self, new_tokens: int):
        """Plan a forward of `new_tokens` positions for every row; returns the start (one row) or the
        starts (a tuple), which `crop` takes back after a failed forward."""
        c = self.cache
        if self._plan is not None:
            raise RuntimeError("CacheRows: a forward is already in progress (a failed forward? call crop())")
        if new_tokens < 1:
            raise ValueError(f"CacheRows.begin: new_tokens must be >= 1, got {new_tokens}")
        starts = self.lengths
        for row, s in zip(self.row_ids, starts):
            if s + new_tokens > c.max_len:
                raise ValueError(f"StaticCache: row {row} would hold {s + new_tokens} positions; it was "
                                 f"allocated for max_len={c.max_len}")
            if not c.can_crop(row, s):
                raise RuntimeError(f"StaticCache: row {row} lost keys that position {s} attends to "
                                   f"(ring holds positions from {c.held_from[row]}); crop it to 0 first")
        with c._lock:
            if c._in_flight.intersection(self.row_ids):
                raise RuntimeError(f"StaticCache: rows {sorted(c._in_flight.intersection(self.row_ids))} "
                                   "are already in another forward")
            c._in_flight.update(self.row_ids)
        self._plan = self._make_plan(starts, new_tokens)
        return starts[0] if len(starts) == 1 else tuple(starts)

    def _make_plan(self, starts: list[int], t: int) -> _Plan:
        c, dev = self.cache, self.cache.device
        q_pos = torch.tensor(starts, dtype=torch.long, device=dev)[:, None] + torch.arange(t, device=dev)
        write_first = t <= c.ring - c.window + 1
        m = min(t, c.ring)
        ring_new = q_pos[:, t - m:]
        ring_idx = ring_new % c.ring
        ring_before = c.ring_pos.index_select(0, self._index)
        ring_after = ring_before.scatter(1, ring_idx, ring_new)
        sliding_keys = ring_after if write_first else torch.cat([ring_before, q_pos], dim=1)
        return _Plan(starts, t, q_pos, max(starts) + t, write_first, self._index[:, None], ring_idx, ring_new,
                     ring_after, sliding_keys)

    def attention_contexts(self, rotary, length: int, device: torch.device, dtype: torch.dtype):
        """Per layer type: RoPE tables [B, T, head_dim] at each row's positions, masks [B, 1, T, S]."""
        p = self._require_plan()
        if length != p.length:
            raise RuntimeError(f"CacheRows: forward over {length} positions, begin() planned {p.length}")
        c = self.cache
        b, t = p.q_pos.shape
        q = p.q_pos[:, :, None]
        out = {}
        for typ in set(c.config.layer_types):
            cos, sin = rotary(typ, p.q_pos.reshape(-1), dtype)
            cos, sin = cos.view(b, t, -1), sin.view(b, t, -1)
            if typ == SLIDING:
                k = p.sliding_keys[:, None, :]
                mask = (k >= 0) & (k <= q) & (k > q - c.window)  # 'window' keys including self
            else:
                k = torch.arange(p.full_len, device=c.device)[None, None, :]
                mask = k <= q  # also hides whatever lies past a shorter row's length
            out[typ] = AttentionContext(cos, sin, 0, mask[:, None].to(device))
        return out

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Write this forward's k, v [B, kv_heads, T, head_dim] for `layer`; returns the keys and values
        the layer attends over (masked as `attention_contexts` says)."""
        p = self._require_plan()
        c = self.cache
        if layer not in c.layer_type:
            raise RuntimeError(f"StaticCache: layer {layer} owns no cache entry (KV-shared?)")
        if k.shape[0] != len(self.row_ids) or k.shape[2] != p.length:
            raise RuntimeError(f"StaticCache: layer {layer} got keys {list(k.shape)} for {len(self.row_ids)} "
                               f"rows x {p.length} positions")
        kb, vb = c.keys[layer], c.values[layer]
        if c.layer_type[layer] != SLIDING:
            # [B, T] (row, position) pairs take [B, T, heads, dim] values
            kb[p.write_rows, :, p.q_pos] = k.transpose(1, 2).to(kb.dtype)
            vb[p.write_rows, :, p.q_pos] = v.transpose(1, 2).to(vb.dtype)
            return self._gather(kb, p.full_len), self._gather(vb, p.full_len)
        m = p.ring_idx.shape[1]
        new_k, new_v = k[:, :, -m:].transpose(1, 2).to(kb.dtype), v[:, :, -m:].transpose(1, 2).to(vb.dtype)
        if p.write_first:
            kb[p.write_rows, :, p.ring_idx] = new_k
            vb[p.write_rows, :, p.ring_idx] = new_v
            return self._gather(kb, c.ring), self._gather(vb, c.ring)
        keys = torch.cat([self._gather(kb, c.ring), k.to(kb.dtype)], dim=2)  # copies: safe to overwrite now
        values = torch.cat([self._gather(vb, c.ring), v.to(vb.dtype)], dim=2)
        kb[p.write_rows, :, p.ring_idx] = new_k
        vb[p.write_rows, :, p.ring_idx] = new_v
        return keys, values

    def _gather(self, buf: torch.Tensor, n: int) -> torch.Tensor:
        if self._contiguous:
            first = self.row_ids[0]
            return buf[first:first + len(self.row_ids), :, :n]
        return buf[:, :, :n].index_select(0, self._index)

    def end(self) -> None:
        """After all layers wrote: the rows advance by T."""
        p = self._require_plan()
        c = self.cache
        c.ring_pos[self._index] = p.ring_after
        for row, s in zip(self.row_ids, p.starts):
            c.lengths[row] = s + p.length
            c.held_from[row] = max(c.held_from[row], s + p.length - c.ring)
        self._finish_forward()

    def crop(self, n) -> None:
        """Keep only the first n positions of every row (an int), or of each row (a sequence, as `begin`
        returned it); n past a row's length keeps it. Also clears a forward left unfinished by an error:
        a ring the failed forward wrote into may have lost old keys, and a row that can then not go back
        to n is emptied (length 0) rather than left attending over missing keys. Otherwise raises
        ValueError when a ring no longer holds the keys position n needs (see `restorable`)."""
        targets = list(n) if isinstance(n, (tuple, list)) else [n] * len(self.row_ids)
        if len(targets) != len(self.row_ids) or any(int(x) < 0 for x in targets):
            raise ValueError(f"CacheRows.crop: expected one length >= 0 per row ({len(self.row_ids)}), got {n}")
        c, failed = self.cache, self._plan
        if failed is not None:
            # Entries this forward wrote no longer hold what ring_pos says (in some layers at least).
            c.ring_pos[self._index] = c.ring_pos[self._index].scatter(1, failed.ring_idx, -1)
            for row, s in zip(self.row_ids, failed.starts):
                c.held_from[row] = max(c.held_from[row], s + failed.length - c.ring)
            self._finish_forward()
        for row, target in zip(self.row_ids, targets):
            target = min(int(target), c.lengths[row])
            if not c.can_crop(row, target):
                if failed is None:
                    raise ValueError(f"StaticCache: row {row} cannot crop back to {target}: its sliding-window "
                                     f"ring holds positions from {c.held_from[row]} on, and position {target} "
                                     f"needs {target - c.window + 1}; crop to restorable(n) (0 = recompute)")
                target = 0
            c._set_length(row, target)

    def reset(self) -> None:
        self.crop(0)

    def submodels_held(self) -> list[tuple[int, object]]:
        """(length, sub-model) per row: what lm.submodel.bind_cache checks."""
        return [(self.cache.lengths[r], self.cache.row_submodel[r]) for r in self.row_ids]

    def hold_submodel(self, sub) -> None:
        for r in self.row_ids:
            self.cache.row_submodel[r] = sub

    def release(self) -> None:
        """Give an allocated slot back to its cache (the view must not be used afterwards)."""
        if self._owned:
            self._owned = False
            self.cache._release(self.row_ids[0])

    def nbytes(self) -> int:
        return self.cache.nbytes()

    def _require_plan(self) -> _Plan:
        if self._plan is None:
            raise RuntimeError("CacheRows: update()/end() outside a forward (call begin() first)")
        return self._plan

    def _finish_forward(self) -> None:
        with self.cache._lock:
            self.cache._in_flight.difference_update(self.row_ids)
        self._plan = None
