"""Sampling filters, the repetition guard, and generate's contract (stops, budget, cache) on a tiny model."""
import pytest
import torch

from lm.generate import RepetitionGuard, generate
from lm.kv_cache import KVCache
from lm.sampling import SamplingOptions, filter_logits, sample
from test_lm_model import tiny_model


def test_greedy_is_argmax_and_options_are_checked():
    logits = torch.tensor([[0.1, 3.0, 2.9, -1.0]])
    assert sample(logits, SamplingOptions()).tolist() == [1]
    for bad in (dict(temperature=-1.0), dict(top_k=-2), dict(top_p=0.0), dict(top_p=1.5)):
        with pytest.raises(ValueError):
            SamplingOptions(**bad)


def test_top_k_and_top_p_keep_the_right_tokens():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = lambda **kw: torch.isfinite(filter_logits(logits, SamplingOptions(temperature=1.0, **kw)))[0].tolist()
    assert kept(top_k=2) == [True, True, False, False]
    assert kept(top_p=0.7) == [True, True, False, False]  # 0.5 < 0.7, 0.5 + 0.3 reaches it
    assert kept(top_p=0.5) == [True, False, False, False]
    assert kept(top_p=0.1) == [True, False, False, False]  # the most likely token always stays


def test_seeded_sampling_repeats_and_only_picks_kept_tokens():
    logits = torch.zeros(1, 50)
    opts = SamplingOptions(temperature=1.0, top_k=3, seed=7)
    logits[0, [4, 9, 30]] = 5.0
    draws = [sample(logits, opts, torch.Generator().manual_seed(7)).item() for _ in range(20)]
    assert set(draws) <= {4, 9, 30}
    model = tiny_model()
    ids = torch.tensor([[5, 6, 7]])
    a = generate(model, ids, max_new_tokens=6, sampling=opts)
    assert a == generate(model, ids, max_new_tokens=6, sampling=opts)


def test_repetition_guard():
    guard = RepetitionGuard(max_period=4, min_repeats=3, min_span=6)
    assert guard.loop_start([9, 1, 2, 1, 2, 1, 2]) == 3  # keep [9, 1, 2]
    assert guard.loop_start([9, 8, 1, 2, 3, 1, 2, 3, 1, 2, 3]) == 5
    assert guard.loop_start([1, 2, 3, 4, 5, 6, 7]) is None
    assert guard.loop_start([5, 5, 5, 5, 5]) is None  # shorter than min_span


class _LoopModel(torch.nn.Module):
    """Predicts (last id + 1) % 3: an endless 0 1 2 loop."""

    def __init__(self):
        super().__init__()
        self.embed_tokens = torch.nn.Embedding(3, 1)

    def forward(self, input_ids, inputs_embeds=None, cache=None, last_only=False):
        if cache is not None:
            cache.begin(input_ids.shape[1])
            cache.end()
        return torch.nn.functional.one_hot((input_ids[:, -1:] + 1) % 3, 3).float()


def test_generate_stops_on_loop_budget_and_stop_ids():
    model = _LoopModel()
    assert generate(model, [0], max_new_tokens=7) == [1, 2, 0, 1, 2, 0, 1]
    assert generate(model, [0], max_new_tokens=7, stop_ids=[0]) == [1, 2]
    looped = generate(model, [0], max_new_tokens=100, repetition_guard=RepetitionGuard(3, 4, 12))
    assert looped == [1, 2, 0]
    assert len(generate(model, [0], max_new_tokens=100, repetition_guard=True)) == 3


def test_generate_with_embeds_and_bad_input():
    model = tiny_model()
    ids = torch.tensor([[5, 6, 7, 8]])
    emb = model.embed(ids)
    assert generate(model, ids, inputs_embeds=emb, max_new_tokens=5) == generate(model, ids, max_new_tokens=5)
    with pytest.raises(ValueError, match="one non-empty sequence"):
        generate(model, torch.tensor([[1, 2], [3, 4]]), max_new_tokens=2)
    with pytest.raises(ValueError, match="inputs_embeds"):
        generate(model, ids, inputs_embeds=emb[:, :3], max_new_tokens=2)


def test_cache_holding_the_whole_prompt_is_rolled_back_one():
    model = tiny_model()
    ids = torch.tensor([[5, 6, 7, 8, 9, 10]])
    cache = KVCache()
    with torch.no_grad():
        model(ids, cache=cache)
    assert generate(model, ids, max_new_tokens=4, cache=cache) == generate(model, ids, max_new_tokens=4)


def test_embed_hook_and_suppressed_ids():
    model = tiny_model()
    ids = torch.tensor([[5, 6, 7, 8]])
    plain = generate(model, ids, max_new_tokens=6)
    assert generate(model, ids, max_new_tokens=6, embed=model.embed) == plain
    calls = []

    def doubled(x):
        calls.append(x.shape[1])
        return 2 * model.embed(x)

    assert generate(model, ids, max_new_tokens=6, embed=doubled) != plain
    assert calls == [4, 1, 1, 1, 1, 1]  # the prompt, then every fed-back token
    banned = set(plain)
    assert not banned & set(generate(model, ids, max_new_tokens=6, suppress_ids=banned))
