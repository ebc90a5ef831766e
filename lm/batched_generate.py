"""Greedy decoding of several independent requests at once, on a preallocated cache (lm.static_cache).

Each request is prefilled on its own (prompts differ in length), then every decode step runs the
unfinished rows in one forward: one [B, D] x [D, N] matmul per weight instead of B vector products,
which is where decoding spends its time (reading the weights). Each row keeps `generate`'s contract
exactly: forced prefix, cache reuse, stop ids, token budget, repetition guard, suppressed ids; the same
tokens as `generate` on that request alone, up to the float rounding of a batched matmul.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from .generate import RepetitionGuard, _as_batch, generate
from .kv_cache import KVCache
from .static_cache import CacheRows, StaticCache
from .submodel import SubModel, cache_holds


@dataclass
class DecodeRequest:
    """One sequence to continue, with `generate`'s arguments (greedy only).

    cache: a one-row slot of a StaticCache (`cache.slot(i)` / `cache.allocate()`) whose first positions
    may already hold a prefix of this prompt; a KVCache (then the request runs alone, through `generate`);
    or None (a temporary cache)."""

    input_ids: Sequence[int] | torch.Tensor
    inputs_embeds: torch.Tensor | None = None
    forced_prefix_ids: Sequence[int] | None = None
    max_new_tokens: int = 256
    stop_ids: Sequence[int] = ()
    repetition_guard: bool | RepetitionGuard = False
    suppress_ids: Sequence[int] = ()
    cache: CacheRows | KVCache | None = None
    submodel: SubModel | str | None = None  # MatFormer sub-model to decode with (None: the full model)


class _Row:
    """Decoding state of one request."""

    def __init__(self, request: DecodeRequest, device: torch.device):
        self.request = request
        self.stops = {int(s) for s in request.stop_ids}
        guard = request.repetition_guard
        self.guard = RepetitionGuard() if guard is True else (guard or None)
        self.suppress = torch.tensor(sorted({int(i) for i in request.suppress_ids}), dtype=torch.long,
                                     device=device)
        self.out: list[int] = []
        self.alive = request.max_new_tokens > 0
        self.token = -1

    def allowed(self, logits: torch.Tensor) -> torch.Tensor:
        """logits [V] with the suppressed ids at -inf."""
        return logits.index_fill(-1, self.suppress, float("-inf")) if self.suppress.numel() else logits

    def take(self, value: int) -> None:
        """The greedy pick for the next position; stop as `generate` would."""
        if value in self.stops:
            self.alive = False
            return
        self.out.append(value)
        if self.guard is not None and (cut := self.guard.loop_start(self.out)) is not None:
            del self.out[cut:]
            self.alive = False
        elif len(self.out) >= self.request.max_new_tokens:
            self.alive = False
        self.token = value


def _prompt(model, request: DecodeRequest, embed, device) -> tuple[torch.Tensor, torch.Tensor | None]:
    """ids [1, L] and embeddings [1, L, D] (or None) of prompt + forced prefix, as `generate` builds them."""
    ids = _as_batch(request.input_ids, device)
    emb = request.inputs_embeds
    if emb is not None and emb.shape[:2] != ids.shape:
        raise ValueError(f"inputs_embeds {list(emb.shape)} does not match input_ids {list(ids.shape)}")
    if emb is None and embed is not None:
        emb = embed(ids)
    if request.forced_prefix_ids:
        forced = _as_batch(request.forced_prefix_ids, device)
        if emb is not None:
            new = (embed or model.embed)(forced)
            emb = torch.cat([emb.to(model.dtype), new.to(model.dtype)], dim=1)
        ids = torch.cat([ids, forced], dim=1)
    return ids, emb


def positions_needed(request: DecodeRequest) -> int:
    """Cache positions the request can fill: prompt, forced prefix, all generated tokens but the last."""
    n = torch.as_tensor(request.input_ids).numel() + len(request.forced_prefix_ids or ())
    return n + max(request.max_new_tokens - 1, 0)


@torch.inference_mode()
def generate_batch(model, requests: Sequence[DecodeRequest],
                   embed: Callable[[torch.Tensor], torch.Tensor] | None = None) -> list[list[int]]:
    """Greedy continuations of all requests; returns each one's new ids (without the forced prefix and
    the stop id), as `generate(model, ...)` returns them for that request alone.

    The requests' caches are one-row slots of the same StaticCache, or all None (a temporary cache is
    made); all requests run the same MatFormer sub-model (`DecodeRequest.submodel`). Afterwards each slot holds what `generate` leaves in a KVCache: prompt, forced prefix and the
    generated tokens but the last. `embed` embeds new ids (forced prefix, generated tokens) for all rows,
    as in `generate`.
    """
    if not requests:
        return []
    subs = {_submodel(model, r) for r in requests}
    if len(subs) > 1:
        names = ", ".join(sorted(str(m or "full") for m in subs))
        raise ValueError(f"generate_batch: the requests run different sub-models ({names}); one forward runs "
                         "one sub-model's layers (generate_many groups them)")
    sub = subs.pop()
    run = {"submodel": sub} if sub is not None else {}
    device = model.embed_tokens.weight.device
    slots = [r.cache for r in requests]
    if all(s is None for s in slots):
        cache = StaticCache(model.config, len(requests), max(positions_needed(r) for r in requests), device,
                            model.dtype)
        slots = [cache.slot(i) for i in range(len(requests))]
    elif not all(isinstance(s, CacheRows) and len(s.row_ids) == 1 for s in slots):
        raise ValueError("generate_batch: every request's cache must be a one-row StaticCache slot, or all None")
    cache = slots[0].cache
    if any(s.cache is not cache for s in slots):
        raise ValueError("generate_batch: the requests' slots must belong to one StaticCache")
    rows = [s.row_ids[0] for s in slots]
    if len(set(rows)) != len(rows):
        raise ValueError(f"generate_batch: two requests share a cache row ({rows})")
    for i, r in enumerate(requests):
        if positions_needed(r) > cache.max_len:
            raise ValueError(f"generate_batch: request {i} needs up to {positions_needed(r)} cache positions, "
                             f"its cache holds {cache.max_len}")

    states = [_Row(r, device) for r in requests]
    for state, slot in zip(states, slots):  # prefill one by one: prompts differ in length
        ids, emb = _prompt(model, state.request, embed, device)
        # Reuse the cached prefix as far as the slot can go back; at least one position must run.
        done = slot.restorable(min(slot.length, ids.shape[1] - 1)) if cache_holds(slot, sub) else 0
        slot.crop(done)
        logits = model(ids[:, done:], None if emb is None else emb[:, done:], cache=slot, last_only=True, **run)
        if state.alive:
            state.take(int(state.allowed(logits[0, -1]).argmax(-1)))

    while True:
        live = [i for i, s in enumerate(states) if s.alive]
        if not live:
            break
        step = torch.tensor([[states[i].token] for i in live], dtype=torch.long, device=device)
        view = cache.rows([rows[i] for i in live])
        logits = model(step, None if embed is None else embed(step), cache=view, last_only=True, **run)
        picks = torch.stack([states[i].allowed(logits[j, -1]) for j, i in enumerate(live)]).argmax(-1)
        for i, value in zip(live, picks.tolist()):  # one device sync per step
            states[i].take(value)
    return [s.out for s in states]


def _submodel(model, request: DecodeRequest):
    return model.resolve_submodel(request.submodel) if request.submodel is not None else None


def generate_many(model, requests: Sequence[DecodeRequest],
                  embed: Callable[[torch.Tensor], torch.Tensor] | None = None) -> list[list[int]]:
    """Run mixed requests, batching what can be batched: slots of one StaticCache with room for the
    request, on the same sub-model, decode together (one forward runs one sub-model's layers); a KVCache
    request runs alone through `generate`; a slot too short for its request runs alone on a temporary
    KVCache and is emptied (its old contents no longer describe a prefix of the caller's next prompt);
    requests without a cache share a temporary StaticCache per sub-model."""
    out: list[list[int] | None] = [None] * len(requests)
    groups: dict[tuple, list[int]] = {}
    for i, r in enumerate(requests):
        c = r.cache
        sub = _submodel(model, r)
        if isinstance(c, CacheRows) and positions_needed(r) <= c.cache.max_len:
            groups.setdefault((id(c.cache), sub), []).append(i)
        elif c is None:
            groups.setdefault((0, sub), []).append(i)
        else:
            if isinstance(c, CacheRows):
                c.crop(0)
                c = KVCache()
            out[i] = generate(model, r.input_ids, inputs_embeds=r.inputs_embeds, max_new_tokens=r.max_new_tokens,
                              stop_ids=r.stop_ids, forced_prefix_ids=r.forced_prefix_ids, cache=c,
                              repetition_guard=r.repetition_guard, embed=embed, suppress_ids=r.suppress_ids,
                              submodel=r.submodel)
    for members in groups.values():
        for i, tokens in zip(members, generate_batch(model, [requests[i] for i in members], embed)):
            out[i] = tokens
    return out
