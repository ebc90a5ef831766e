"""Beam search (lm.beam): greedy at beam 1, exact where the beam covers every path, and it finds the better
answer greedy decoding misses."""
import itertools

import pytest
import torch

from lm.beam import beam_search
from lm.generate import generate
from test_lm_model import tiny_model

STOP = 0


class _ScriptedModel(torch.nn.Module):
    """Next-token probabilities read from a table keyed by the answer so far. The history lives in the
    cache (as layer 0's 'keys'), so beam reordering must carry it along for the answers to be right."""

    def __init__(self, table: dict[tuple, dict[int, float]], vocab: int = 4, prompt_len: int = 1):
        super().__init__()
        self.embed_tokens = torch.nn.Embedding(vocab, 1)
        self.table, self.vocab, self.prompt_len = table, vocab, prompt_len

    def forward(self, input_ids, inputs_embeds=None, cache=None, last_only=False):
        cache.begin(input_ids.shape[1])
        seen, _ = cache.update(0, input_ids[:, None, :, None].float(), input_ids[:, None, :, None].float())
        cache.end()
        logits = torch.full((input_ids.shape[0], 1, self.vocab), -30.0)
        for row in range(input_ids.shape[0]):
            answer = tuple(int(t) for t in seen[row, 0, self.prompt_len:, 0])
            for token, p in self.table.get(answer, {STOP: 1.0}).items():
                logits[row, 0, token] = torch.tensor(p).log()
        return logits


def test_beam_finds_the_answer_greedy_misses():
    # Greedy takes 1 (0.5 > 0.4), then 1 at 0.3; the answer [2] is likelier per token.
    table = {(): {1: 0.5, 2: 0.4, 3: 0.1}, (1,): {1: 0.3, 2: 0.25, 3: 0.2, STOP: 0.25},
             (1, 1): {STOP: 1.0}, (2,): {STOP: 0.95, 3: 0.05}}
    model = _ScriptedModel(table)
    prompt = torch.tensor([[3]])
    assert generate(model, prompt, max_new_tokens=5, stop_ids=[STOP]) == [1, 1]
    assert beam_search(model, prompt, beam_size=1, max_new_tokens=5, stop_ids=[STOP]) == [1, 1]
    assert beam_search(model, prompt, beam_size=2, max_new_tokens=5, stop_ids=[STOP]) == [2]


def test_beam_one_is_greedy_on_a_real_decoder():
    model = tiny_model()
    prompt = torch.tensor([[5, 6, 7, 8]])
    for stops in ([], [3], [int(generate(model, prompt, max_new_tokens=3)[1])]):
        greedy = generate(model, prompt, max_new_tokens=12, stop_ids=stops, suppress_ids=[9, 10])
        assert beam_search(model, prompt, beam_size=1, max_new_tokens=12, stop_ids=stops,
                           suppress_ids=[9, 10]) == greedy


def test_a_beam_as_wide_as_the_vocabulary_finds_the_best_two_token_answer():
    """Every one-token prefix survives the first step, so the search is exhaustive over two tokens: its
    answer must be the one with the best mean log-probability of all of them, checked by brute force."""
    model = tiny_model()
    prompt = torch.tensor([[5, 6, 7, 8]])
    vocab = model.config.vocab_size
    stop = int(generate(model, prompt, max_new_tokens=2)[1])  # a stop id the decoder does reach
    first = model(prompt)[0, -1].float().log_softmax(-1)
    follow = torch.cat([prompt.expand(vocab, -1), torch.arange(vocab)[:, None]], dim=1)
    second = model(follow)[:, -1].float().log_softmax(-1)
    answers = {(): first[stop].item()}  # mean log-probability per scored token (the stop included)
    for a, b in itertools.product(range(vocab), repeat=2):
        if a != stop:
            answers[(a,) if b == stop else (a, b)] = (first[a] + second[a, b]).item() / 2
    best = max(answers, key=answers.get)
    found = beam_search(model, prompt, beam_size=vocab, max_new_tokens=2, stop_ids=[stop])
    assert tuple(found) == best
    assert answers[tuple(found)] > answers[tuple(generate(model, prompt, max_new_tokens=2, stop_ids=[stop]))] - 1e-6


def test_beam_size_is_checked():
    with pytest.raises(ValueError, match="beam_size"):
        beam_search(tiny_model(), torch.tensor([[1, 2]]), beam_size=0)


def test_beam_search_through_the_model_api(random_model, monkeypatch):
    """DecodeOptions(beam_size=...) reaches lm.beam from SpeechModel.transcribe; beam 1 is the greedy text."""
    import numpy as np

    import asr
    import asr.model
    from lm.sampling import SamplingOptions

    wave = np.random.default_rng(3).standard_normal(16000).astype(np.float32) * 0.1
    widths = []
    monkeypatch.setattr(asr.model, "beam_search", lambda *a, **k: widths.append(k["beam_size"]) or beam_search(*a, **k))
    greedy = random_model.transcribe(wave, options=asr.DecodeOptions(max_new_tokens=6)).text
    assert widths == []
    random_model.transcribe(wave, options=asr.DecodeOptions(max_new_tokens=6, beam_size=3))
    assert widths == [3]
    assert random_model.transcribe(wave, options=asr.DecodeOptions(max_new_tokens=6, beam_size=1)).text == greedy
    with pytest.raises(ValueError, match="temperature 0"):
        asr.DecodeOptions(beam_size=2, sampling=SamplingOptions(temperature=0.5))
