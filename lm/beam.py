"""Beam search: keep the `beam_size` most likely continuations instead of the single greedy one.

Greedy decoding commits to each token as it goes; a misspelt word whose first piece was locally likely
("iconomy" for "economy") can then never be taken back. Beam search keeps several prefixes alive and
returns the finished one with the best mean log-probability per token (whisper's default ranking, so
longer answers are not penalised for their length). The beams run as the rows of one batch on one
KVCache, which is reordered after every step.
"""
from __future__ import annotations

from typing import Callable

import torch

from .generate import RepetitionGuard, prompt_with_prefix
from .kv_cache import KVCache


def beam_search(model, input_ids, inputs_embeds: torch.Tensor | None = None, beam_size: int = 5,
                max_new_tokens: int = 256, stop_ids=(), forced_prefix_ids=None,
                repetition_guard: bool | RepetitionGuard = False,
                embed: Callable[[torch.Tensor], torch.Tensor] | None = None, suppress_ids=(),
                submodel=None) -> list[int]:
    """Continue the prompt `input_ids` [1, L] like `lm.generate.generate` (same arguments, greedy choice
    replaced by the search); returns the best answer's ids without the forced prefix and the stop id.

    A beam that reaches a stop id, or whose tail repeats (repetition guard: it is cut after the loop's first
    unit), is finished. The search ends when `beam_size` beams have finished or `max_new_tokens` is reached
    (then the live beams compete too). beam_size 1 gives greedy decoding's answer (but for a repetition
    cut on the very last token of the budget)."""
    if beam_size < 1:
        raise ValueError(f"beam_size must be at least 1, got {beam_size}")
    device = model.embed_tokens.weight.device
    ids, inputs_embeds = prompt_with_prefix(model, input_ids, inputs_embeds, forced_prefix_ids, embed)
    guard = RepetitionGuard() if repetition_guard is True else (repetition_guard or None)
    stops = {int(s) for s in stop_ids}
    sub = model.resolve_submodel(submodel) if submodel is not None else None
    extra = {"submodel": sub} if sub is not None else {}
    suppress = torch.tensor(sorted({int(i) for i in suppress_ids}), dtype=torch.long, device=device)

    cache = KVCache()
    logits = model(ids, inputs_embeds, cache=cache, last_only=True, **extra)
    beams: list[tuple[list[int], float]] = [([], 0.0)]  # (tokens, summed log-probability)
    finished: list[tuple[list[int], float, int]] = []  # (tokens, summed log-probability, length scored)
    for step in range(max_new_tokens):
        logprobs = logits[:, -1].float()
        if suppress.numel():
            logprobs = logprobs.index_fill(-1, suppress, float("-inf"))
        logprobs = logprobs.log_softmax(-1)
        scores = torch.tensor([s for _, s in beams], device=device)[:, None] + logprobs
        # Candidates best first: finished ones are kept until `beam_size` live ones are found (whisper's
        # rule, which makes beam_size 1 greedy decoding); 2 x beam of them refill the beams even when
        # beam_size of them stop here.
        top = scores.flatten().topk(min(2 * beam_size, scores.numel()))
        survivors: list[tuple[list[int], float]] = []
        rows: list[int] = []
        vocab = logprobs.shape[-1]
        for score, flat in zip(top.values.tolist(), top.indices.tolist()):
            if score == float("-inf"):
                break
            row, token = divmod(flat, vocab)
            tokens = beams[row][0] + [token]
            if token in stops:
                finished.append((tokens[:-1], score, len(tokens)))
            elif guard is not None and (cut := guard.loop_start(tokens)) is not None:
                finished.append((tokens[:cut], score, len(tokens)))
            else:
                survivors.append((tokens, score))
                rows.append(row)
                if len(survivors) == beam_size:
                    break
        if step == max_new_tokens - 1:  # out of budget: the live beams compete with the finished ones
            finished += [(tokens, score, len(tokens)) for tokens, score in survivors]
        if len(finished) >= beam_size or not survivors or step == max_new_tokens - 1:
            break
        beams = survivors
        cache.reorder(torch.tensor(rows, device=device))
        step_ids = torch.tensor([[t[-1]] for t, _ in beams], device=device)
        logits = model(step_ids, None if embed is None else embed(step_ids), cache=cache, last_only=True, **extra)
    if not finished:
        return []
    return max(finished, key=lambda f: f[1] / max(f[2], 1))[0]
