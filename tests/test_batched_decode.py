"""Batched decoding (lm.batched_generate) and batched streaming (scheduler + sessions).

Decoding: B independent requests decoded together give, token for token, what `generate` gives for each
alone (greedy), and what the reference (transformers 5.23 gemma3n) generates for plain requests; the logits
of every step are within 1e-4 (relative to the largest |logit|, fp32) of the unbatched ones. The reference
models have a sliding window of 8 and the sequences are longer, so the rings wrap.

Streaming: the same audio through N sessions whose decodes are batched by the scheduler gives exactly
the events each session gives when run alone on its own KVCache; fairness is unchanged.
"""
import asyncio

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")

from reference_models import TEXT_VOCAB, build_reference  # noqa: E402
from test_static_cache import ours_from, rel_err  # noqa: E402

from lm.batched_generate import DecodeRequest, generate_batch, generate_many, positions_needed  # noqa: E402
from lm.generate import RepetitionGuard, generate  # noqa: E402
from lm.kv_cache import KVCache  # noqa: E402
from lm.static_cache import StaticCache  # noqa: E402

RTOL = 1e-4


@pytest.fixture(scope="module", params=["sharing", "matformer"])
def pair(request):
    ref = build_reference(request.param)
    return ref, ours_from(ref)


def prompt(length: int, seed: int) -> list[int]:
    return torch.randint(3, TEXT_VOCAB, (length,), generator=torch.Generator().manual_seed(seed)).tolist()


def alone(model, r: DecodeRequest, cache=None) -> list[int]:
    return generate(model, r.input_ids, inputs_embeds=r.inputs_embeds, max_new_tokens=r.max_new_tokens,
                    stop_ids=r.stop_ids, forced_prefix_ids=r.forced_prefix_ids, cache=cache,
                    repetition_guard=r.repetition_guard, suppress_ids=r.suppress_ids)


def mixed_requests(model, seed: int = 0) -> list[DecodeRequest]:
    """Prompts of 3..21 tokens; a forced prefix, given embeddings, suppressed ids, a tight repetition
    guard, different budgets, so rows finish at different steps."""
    free = alone(model, DecodeRequest(prompt(9, seed + 1), max_new_tokens=12))
    p = prompt(14, seed + 3)
    guard = RepetitionGuard(4, 2, 4)
    looping = next(q for q in (prompt(6, seed + 100 + k) for k in range(200))  # a prompt the guard cuts
                   if len(alone(model, DecodeRequest(q, max_new_tokens=30, repetition_guard=guard))) < 30)
    return [
        DecodeRequest(prompt(3, seed), max_new_tokens=20),
        DecodeRequest(prompt(9, seed + 1), max_new_tokens=12, stop_ids=[free[6]]),  # stops early
        DecodeRequest(prompt(21, seed + 2), forced_prefix_ids=[7, 8, 9], max_new_tokens=16),
        DecodeRequest(p, inputs_embeds=model.embed(torch.tensor([p])), max_new_tokens=9,
                      suppress_ids=list(range(TEXT_VOCAB // 2))),
        DecodeRequest(looping, max_new_tokens=30, repetition_guard=guard),
        DecodeRequest(prompt(11, seed + 5), max_new_tokens=1),
    ]


def test_batch_equals_each_request_alone(pair):
    _, ours = pair
    requests = mixed_requests(ours)
    expected = [alone(ours, r) for r in requests]
    assert len(expected[1]) <= 6, "the stop id did not end request 1 early"
    assert all(t >= TEXT_VOCAB // 2 for t in expected[3]), "suppressed ids were generated"
    assert len(expected[4]) < 30, "the repetition guard did not cut request 4"
    assert len({len(e) for e in expected}) >= 4, "rows should finish at different steps"
    assert generate_batch(ours, requests) == expected


def reference_text_lm(ref):
    """The reference decoder alone (Gemma3nForCausalLM) with the same weights (as tests/parity does)."""
    from transformers import Gemma3nForCausalLM

    lm = Gemma3nForCausalLM(ref.config.text_config)
    prefix = "model.language_model."
    lm.load_state_dict({"model." + k[len(prefix):]: v for k, v in ref.state_dict().items() if k.startswith(prefix)},
                       strict=False)
    return lm.eval()


def test_batch_equals_reference_greedy_generation(pair):
    ref, ours = pair
    lm = reference_text_lm(ref)
    prompts = [prompt(n, 40 + n) for n in (4, 12, 19)]
    expected = []
    with torch.no_grad():
        for p in prompts:
            out = lm.generate(input_ids=torch.tensor([p]), max_new_tokens=14, do_sample=False, eos_token_id=None,
                              pad_token_id=0)
            expected.append(out[0, len(p):].tolist())
    assert generate_batch(ours, [DecodeRequest(p, max_new_tokens=14) for p in prompts]) == expected


class Recording:
    """The model, recording each row's logits per forward (rows named by cache row, or 'kv')."""

    def __init__(self, model):
        self.model, self.logits = model, {}

    def __getattr__(self, name):
        return getattr(self.model, name)

    def __call__(self, ids, inputs_embeds=None, cache=None, last_only=False):
        out = self.model(ids, inputs_embeds, cache=cache, last_only=last_only)
        rows = getattr(cache, "row_ids", ["kv"])
        for j, row in enumerate(rows):
            self.logits.setdefault(row, []).append(out[j, -1])
        return out


def test_logits_of_every_step_match_unbatched(pair):
    _, ours = pair
    requests = mixed_requests(ours, seed=7)
    batched = Recording(ours)
    generate_batch(batched, requests)
    assert len(batched.logits) == len(requests)
    for i, r in enumerate(requests):
        single = Recording(ours)
        alone(single, r)
        got, want = torch.stack(batched.logits[i]), torch.stack(single.logits["kv"])
        assert got.shape == want.shape, f"request {i}: {got.shape[0]} steps, alone {want.shape[0]}"
        assert rel_err(got, want) < RTOL, f"request {i}: {rel_err(got, want):.2e}"


def test_slots_reuse_a_cached_prefix_like_a_kvcache(pair):
    _, ours = pair
    cache = StaticCache(ours.config, 3, 64, ring_slots=32)  # rings long enough to roll back
    prompts = [prompt(n, 60 + n) for n in (5, 13, 22)]
    first = generate_batch(ours, [DecodeRequest(p, max_new_tokens=6, cache=cache.slot(i))
                                  for i, p in enumerate(prompts)])
    assert cache.lengths == [len(p) + 6 - 1 for p in prompts]  # what generate leaves in a KVCache
    # Same prompts extended: the slots hold their prefixes, only the rest is computed.
    longer = [p + q for p, q in zip(prompts, ([11, 12], [13], [14, 15, 16]))]
    requests = [DecodeRequest(p, max_new_tokens=8, cache=cache.slot(i)) for i, p in enumerate(longer)]
    for i, p in enumerate(prompts):
        cache.slot(i).crop(len(p))
    assert generate_batch(ours, requests) == [alone(ours, r) for r in requests]
    assert first == [alone(ours, DecodeRequest(p, max_new_tokens=6)) for p in prompts]


def test_generate_many_routes_what_cannot_batch(pair):
    _, ours = pair
    requests = mixed_requests(ours, seed=3)[:4]
    expected = [alone(ours, r) for r in requests]
    small = StaticCache(ours.config, 2, 24)
    short_slot, kv = small.slot(1), KVCache()
    with torch.no_grad():
        ours(torch.tensor([prompt(10, 1)]), cache=short_slot)
    requests[0].cache = small.slot(0)  # fits
    requests[1].cache = kv  # runs alone through generate
    requests[2].cache = short_slot  # 21 + 3 + 15 positions do not fit 24: alone, slot emptied
    assert positions_needed(requests[2]) > small.max_len
    assert generate_many(ours, requests) == expected
    assert short_slot.length == 0 and kv.length == 9 + len(expected[1])  # stopped: all its tokens were fed
    with pytest.raises(ValueError, match="request 0 needs up to"):
        generate_batch(ours, [DecodeRequest(prompt(30, 0), max_new_tokens=4, cache=small.slot(0))])
    with pytest.raises(ValueError, match="one StaticCache"):
        other = StaticCache(ours.config, 1, 64)
        generate_batch(ours, [DecodeRequest([5, 6], cache=small.slot(0)), DecodeRequest([5], cache=other.slot(0))])


# --- streaming ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def streams():
    """Three different streams: two utterances, the second utterance late, and one with a long pause."""
    from asr.synth import synthesize

    a = synthesize("the weather is nice today and we walk outside", "en")
    b = synthesize("we meet again tomorrow morning", "en")
    z = lambda s: np.zeros(int(16000 * s), np.float32)  # noqa: E731
    return [np.concatenate([a, z(1.0), b, z(0.5)]), np.concatenate([z(0.7), b, z(0.6)]),
            np.concatenate([b, z(1.2), a, z(0.3)])]


def session_options():
    from streaming.session import SessionOptions

    return [SessionOptions(update_s=0.48, max_new_tokens=6),  # padded: prompts wrap the ring (window 64)
            SessionOptions(update_s=0.48, max_new_tokens=6, audio_layout="compact"),  # reuses its slot
            SessionOptions(task="translate", language="en", target_language="es", max_new_tokens=5,
                           audio_layout="compact")]


def chunks(wave: np.ndarray, size: int) -> list[np.ndarray]:
    return [wave[i:i + size] for i in range(0, len(wave), size)]


def alone_events(model, options, wave, size):
    from streaming.session import StreamingDecoder

    dec = StreamingDecoder(model, options)
    events = []
    for c in chunks(wave, size):
        events += dec.feed(c)
    return events + dec.finish()


def test_batched_sessions_give_the_events_of_sessions_alone(random_model, streams):
    from streaming.scheduler import FairScheduler
    from streaming.session import StreamingDecoder, decode_batch

    job = 0.5
    size = int(16000 * job)  # every pushed chunk is exactly one job, whatever the timing
    expected = [alone_events(random_model, o, w, size) for o, w in zip(session_options(), streams)]
    assert all(any(e.kind == "final" and e.text for e in ev) for ev in expected)
    pool = StaticCache(random_model.language_model.config, 3, 400, random_model.device, random_model.dtype)
    batches = []

    def run_batch(steps):
        batches.append(len(steps))
        return decode_batch(steps)

    async def main():
        scheduler = FairScheduler(max_job_seconds=job, batch_sessions=3, run_batch=run_batch)
        scheduler.start()
        got = [[] for _ in streams]
        lanes = []
        for i, (options, wave) in enumerate(zip(session_options(), streams)):
            session = StreamingDecoder(random_model, options, cache=pool.allocate())
            lanes.append(scheduler.lane(session, lambda ev, _s, i=i: got[i].extend(ev), f"s{i}"))
        for i in range(max(len(w) for w in streams) // size + 1):
            for lane, wave in zip(lanes, streams):
                if i * size < len(wave):
                    lane.push(wave[i * size:(i + 1) * size])
        await asyncio.gather(*(lane.finish() for lane in lanes))
        for lane in lanes:
            lane.close()  # gives the slots back, in the inference thread
        await scheduler.call(lambda: None)
        await scheduler.stop()
        return got

    got = asyncio.run(main())
    assert max(batches) == 3, f"decodes were never batched three at a time: {batches}"
    for i, (g, e) in enumerate(zip(got, expected)):
        assert g == e, f"session {i}: batched events differ from the session alone"
    assert pool.free_rows == 3


class StepSession:
    """A session that needs one decode per fed chunk; records the order jobs ran in."""

    def __init__(self, name, log, fail=False):
        self.name, self.log, self.fail = name, log, fail

    def feed(self, pcm):
        return self._run(self.feed_steps(pcm))

    def finish(self):
        return self._run(self.finish_steps())

    def _run(self, steps):
        try:
            step = next(steps)
            while True:
                step = steps.send(f"alone:{step}")
        except StopIteration as done:
            return done.value

    def feed_steps(self, pcm):
        self.log.append(self.name)
        text = yield f"{self.name}{len(pcm)}"
        return [{"kind": "partial", "text": text, "start": 0.0, "end": 0.0}]

    def finish_steps(self):
        text = yield f"{self.name}-end"
        return [{"kind": "final", "text": text, "start": 0.0, "end": 0.0}]


def test_fairness_and_failures_with_batching():
    """A lane with 10 jobs queued does not delay the others: each round takes one job per lane. A
    decode that fails fails its own session only."""
    from streaming.scheduler import FairScheduler

    def run_batch(steps):
        if any(s.startswith("bad") for s in steps):
            raise RuntimeError("bad decode")
        return [f"batch:{s}" for s in steps]

    async def main():
        log, got = [], {}
        scheduler = FairScheduler(max_job_seconds=0.01, batch_sessions=2, run_batch=run_batch)
        lanes = {}
        for name in ("busy", "a", "b", "bad"):
            lanes[name] = scheduler.lane(StepSession(name, log), lambda ev, _s, n=name: got.setdefault(n, []).extend(ev),
                                         name)
        lanes["busy"].push(np.zeros(160 * 10, np.float32))  # ten jobs of 160 samples
        for name in ("a", "b", "bad"):
            lanes[name].push(np.zeros(160, np.float32))
        scheduler.start()
        for name in ("busy", "a", "b"):
            await lanes[name].finish()
        with pytest.raises(RuntimeError, match="bad decode"):
            await lanes["bad"].finish()
        await scheduler.stop()
        return log, got

    log, got = asyncio.run(main())
    assert log[:4] == ["busy", "a", "b", "bad"] and log[4:] == ["busy"] * 9
    assert [e["text"] for e in got["a"]][0] == "batch:a160"  # ran with b (the finish may run alone)
    assert [e["text"].split(":")[1] for e in got["a"]] == ["a160", "a-end"]
    assert "bad" not in got


def test_session_factory_slots_and_server_flag(random_model):
    from streaming.protocol import StartRequest
    from streaming.server import ServerOptions, add_arguments, options_from_args
    from streaming.session import SessionFactory, decode_batch

    assert SessionFactory(random_model).run_batch is None  # batching off: KVCache sessions, as before
    factory = SessionFactory(random_model, batch_sessions=2, max_sessions=2, max_new_tokens=7)
    assert factory.run_batch is decode_batch
    a, b, c = (factory(StartRequest()) for _ in range(3))
    assert factory.slots.max_len >= 188 + 2 * 7  # a padded block plus forced words and the answer
    assert isinstance(c.cache, KVCache) and factory.slots.free_rows == 0  # no slot left: decodes alone
    a.close()
    assert factory.slots.free_rows == 1
    import argparse

    p = argparse.ArgumentParser()
    add_arguments(p)
    args = p.parse_args(["--batch-sessions", "3"])
    assert options_from_args(args, "m").batch_sessions == 3
    assert p.parse_args([]).batch_sessions == ServerOptions().batch_sessions
    with pytest.raises(ValueError, match="batch_sessions must be >= 1"):
        ServerOptions(batch_sessions=0)


def test_serve_encoder_push_ms_reaches_the_sessions(random_checkpoint):
    """`asr serve --encoder-push-ms N`: every session buffers N ms before encoding; a value out of range is
    refused before the model loads, naming the option."""
    import argparse

    from streaming.protocol import StartRequest
    from streaming.server import add_arguments, load_factory

    p = argparse.ArgumentParser()
    add_arguments(p)
    factory, _ = load_factory(p.parse_args(["--model", str(random_checkpoint), "--encoder-push-ms", "500"]))
    assert factory(StartRequest()).options.encoder_push_ms == 500
    with pytest.raises(ValueError, match="--encoder-push-ms: encoder_push_ms must be between 0 and 2000"):
        load_factory(p.parse_args(["--model", "/nonexistent", "--encoder-push-ms", "5000"]))
