"""Autoregressive decoding with the KV cache: one prefill, then one token per step.

The model knows nothing about text; this module knows nothing about audio. The caller supplies the
prompt ids (and, for multimodal prompts, the merged embeddings), the stop ids and the options.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from .kv_cache import KVCache
from .submodel import cache_holds
from .sampling import SamplingOptions, make_generator, sample


@dataclass(frozen=True)
class RepetitionGuard:
    """Stop when the output ends in a loop: a unit of at most `max_period` tokens repeated back to back at
    least `min_repeats` times over at least `min_span` tokens (so 'ha ha' or '...' are left alone)."""

    max_period: int = 16
    min_repeats: int = 4
    min_span: int = 24

    def loop_start(self, ids: list[int]) -> int | None:
        """Where the output should end if it ends in a loop: after the loop's first unit. None if no loop."""
        for p in range(1, self.max_period + 1):
            need = max(p * self.min_repeats, self.min_span)
            if len(ids) < need or ids[-need + p:] != ids[-need:-p]:
                continue
            start = len(ids) - need
            while start > 0 and ids[start - 1] == ids[start - 1 + p]:
                start -= 1
            return start + p
        return None


def _as_batch(input_ids, device: torch.device) -> torch.Tensor:
    ids = torch.as_tensor(input_ids, device=device)
    if ids.dim() == 1:
        ids = ids[None]
    if ids.dim() != 2 or ids.shape[0] != 1 or ids.shape[1] == 0:
        raise ValueError(f"generate decodes one non-empty sequence: input_ids must be [1, L], got {list(ids.shape)}")
    return ids.long()


def prompt_with_prefix(model, input_ids, inputs_embeds: torch.Tensor | None, forced_prefix_ids,
                       embed: Callable[[torch.Tensor], torch.Tensor] | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(ids [1, L + F], embeddings or None) of the prompt followed by the forced answer prefix (F ids)."""
    device = model.embed_tokens.weight.device
    ids = _as_batch(input_ids, device)
    if inputs_embeds is not None and inputs_embeds.shape[:2] != ids.shape:
        raise ValueError(f"inputs_embeds {list(inputs_embeds.shape)} does not match input_ids {list(ids.shape)}")
    if inputs_embeds is None and embed is not None:
        inputs_embeds = embed(ids)
    if forced_prefix_ids:
        forced = _as_batch(forced_prefix_ids, device)
        if inputs_embeds is not None:
            new = (embed or model.embed)(forced)
            inputs_embeds = torch.cat([inputs_embeds.to(model.dtype), new.to(model.dtype)], dim=1)
        ids = torch.cat([ids, forced], dim=1)
    return ids, inputs_embeds


@torch.inference_mode()
def generate(model, input_ids, inputs_embeds: torch.Tensor | None = None, max_new_tokens: int = 256,
             stop_ids=(), sampling: SamplingOptions = SamplingOptions(), forced_prefix_ids=None,
             cache: KVCache | None = None, repetition_guard: bool | RepetitionGuard = False,
             embed: Callable[[torch.Tensor], torch.Tensor] | None = None, suppress_ids=(),
             submodel=None) -> list[int]:
    """Continue the prompt `input_ids` [1, L] (or [L]); returns the new ids, without the forced prefix and
    without the stop id that ended generation.

    inputs_embeds [1, L, D]: the prompt's embeddings when they are not just the token embeddings.
    forced_prefix_ids: answer tokens appended to the prompt in the same prefill (the model continues them).
    cache: a `KVCache` whose first `cache.length` positions already hold a prefix of this same prompt; only
    the rest is computed. Afterwards it holds the prompt, the forced prefix and every generated token but
    the last (and, after a repetition-guard cut, the loop as generated), so a caller can crop it back to a
    shared prefix and call again.
    repetition_guard: True for `RepetitionGuard()`; when a loop is found, generation stops and the output
    is cut after the loop's first unit.
    embed: how new ids (forced prefix, generated tokens) are embedded; default `model.embed`. A multimodal
    caller passes its own merge, so that ids in the audio range go through the audio embedder as the
    reference does (random test models do generate such ids).
    suppress_ids: ids never generated (their logits set to -inf), like transformers' `suppress_tokens`.
    submodel: the MatFormer sub-model to decode with (`TextModel.forward`'s); a cache filled by another
    sub-model is not a prefix of this decode and is emptied first.
    """
    device = model.embed_tokens.weight.device
    ids, inputs_embeds = prompt_with_prefix(model, input_ids, inputs_embeds, forced_prefix_ids, embed)
    guard = RepetitionGuard() if repetition_guard is True else (repetition_guard or None)
    stops = {int(s) for s in stop_ids}
    cache = cache if cache is not None else KVCache()
    sub = model.resolve_submodel(submodel) if submodel is not None else None
    # Reuse the cached prefix; at least one position must be run to get the next token's logits.
    done = cache.restorable(min(cache.length, ids.shape[1] - 1)) if cache_holds(cache, sub) else 0
    cache.crop(done)
    generator = make_generator(sampling, device)

    logits = model(ids[:, done:], None if inputs_embeds is None else inputs_embeds[:, done:], cache=cache,
                   last_only=True, **({"submodel": sub} if sub is not None else {}))
    suppress = torch.tensor(sorted({int(i) for i in suppress_ids}), dtype=torch.long, device=device)
    out: list[int] = []
    while len(out) < max_new_tokens:
        last = logits[:, -1]
        if suppress.numel():
            last = last.index_fill(-1, suppress, float("-inf"))
        token = sample(last, sampling, generator)
        value = int(token)
        if value in stops:
            break
        out.append(value)
        if guard is not None and (cut := guard.loop_start(out)) is not None:
            return out[:cut]
        if len(out) == max_new_tokens:
            break
        step = token[:, None]
        logits = model(step, None if embed is None else embed(step), cache=cache, last_only=True,
                       **({"submodel": sub} if sub is not None else {}))
    return out
