"""Unit tests of the streaming building blocks: wire format, PCM decoding, token ring, commit policy,
fair scheduler. No sockets, no model."""
import asyncio
import json

import numpy as np
import pytest
import torch

from streaming import policy
from streaming import protocol as P
from streaming.ring_buffer import RingBufferFull, TokenRing, token_end, token_start
from streaming.scheduler import FairScheduler


# --- protocol ------------------------------------------------------------------------------------

def test_start_defaults_and_unknown_fields_ignored():
    start = P.parse_client_message('{"type": "start", "whatever": [1, 2]}')
    assert start == P.StartRequest("transcribe", None, None, 16000, "pcm_s16le", 1)


def test_start_full_translate():
    start = P.parse_client_message(json.dumps({"type": "start", "task": "translate", "language": "es",
                                               "target_language": "en", "sample_rate": 44100,
                                               "encoding": "pcm_f32le", "channels": 2}))
    assert (start.task, start.language, start.target_language) == ("translate", "es", "en")
    assert (start.sample_rate, start.encoding, start.channels, start.frame_bytes) == (44100, "pcm_f32le", 2, 8)


@pytest.mark.parametrize("text, code, needle", [
    ("{not json", P.BAD_REQUEST, "JSON"),
    ("[1, 2]", P.BAD_REQUEST, "object"),
    ('{"kind": "start"}', P.BAD_REQUEST, "type"),
    ('{"type": "pause"}', P.BAD_REQUEST, "pause"),
    ('{"type": "start", "task": "summarize"}', P.BAD_REQUEST, "task"),
    ('{"type": "start", "task": "translate"}', P.BAD_REQUEST, "target_language"),
    ('{"type": "start", "language": 5}', P.BAD_REQUEST, "language"),
    ('{"type": "start", "sample_rate": 7999}', P.UNSUPPORTED_AUDIO, "sample_rate"),
    ('{"type": "start", "sample_rate": 48001}', P.UNSUPPORTED_AUDIO, "sample_rate"),
    ('{"type": "start", "sample_rate": NaN}', P.UNSUPPORTED_AUDIO, "sample_rate"),
    ('{"type": "start", "sample_rate": "16000"}', P.UNSUPPORTED_AUDIO, "sample_rate"),
    ('{"type": "start", "encoding": "mp3"}', P.UNSUPPORTED_AUDIO, "encoding"),
    ('{"type": "start", "channels": 6}', P.UNSUPPORTED_AUDIO, "channels"),
])
def test_bad_client_messages_get_their_code(text, code, needle):
    with pytest.raises(P.ProtocolError) as info:
        P.parse_client_message(text)
    assert info.value.code == code and needle in info.value.message


def test_server_messages_shape():
    assert P.final_message(3, "hi", 0.0, 1.2800001) == {"type": "final", "segment": 3, "text": "hi",
                                                        "start": 0.0, "end": 1.28}
    assert P.partial_message("x", 1, 2, "X", task="translate")["translation"] == "X"
    assert "translation" not in P.partial_message("x", 1, 2, "X")
    assert json.loads(P.encode(P.done_message({"rtf": float("nan")}))) == {"type": "done", "stats": {"rtf": None}}
    with pytest.raises(ValueError, match="error code"):
        P.error_message("oops", "x")


def test_session_events_from_dicts_and_checks():
    assert P.as_event({"kind": "final", "text": "a", "start": 0.0, "end": 1.0}) == P.SessionEvent("final", "a", 0.0, 1.0)
    with pytest.raises(ValueError, match="end >= start"):
        P.SessionEvent("partial", "a", 2.0, 1.0)
    with pytest.raises(TypeError, match="expected SessionEvent"):
        P.as_event(("final", "a"))


def test_pcm_decoder_s16_stereo_and_odd_bytes():
    start = P.StartRequest(channels=2)
    dec = P.PcmDecoder(start)
    frames = np.array([[16384, 0], [-32768, -32768]], dtype="<i2")
    out = dec.decode(frames.tobytes())
    np.testing.assert_allclose(out, [0.25, -1.0], atol=0)  # exact: mean of the two channels
    with pytest.raises(P.ProtocolError) as info:
        dec.decode(b"\x00" * 6)  # 1.5 stereo frames
    assert info.value.code == P.BAD_REQUEST and "6 bytes" in info.value.message


def test_pcm_decoder_f32_rejects_nan():
    dec = P.PcmDecoder(P.StartRequest(encoding="pcm_f32le"))
    with pytest.raises(P.ProtocolError, match="NaN"):
        dec.decode(np.array([0.0, np.nan], "<f4").tobytes())


def test_streaming_resampler_matches_one_shot_within_1e_3():
    """Chunked resampling (soxr stream) equals resampling the whole signal; no clicks at boundaries."""
    rate = 44100
    t = np.arange(rate) / rate
    wave = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    dec = P.PcmDecoder(P.StartRequest(sample_rate=rate, encoding="pcm_f32le"))
    cuts = [0, 1, 441, 4410, 10000, 30001, rate]
    out = np.concatenate([dec.decode(wave[a:b].tobytes()) for a, b in zip(cuts, cuts[1:])] + [dec.flush()])
    import soxr
    whole = soxr.resample(wave, rate, 16000, quality="HQ")
    assert out.size == whole.size == 16000
    assert np.max(np.abs(out - whole)) < 1e-3  # tolerance: 1e-3 absolute


# --- ring buffer ---------------------------------------------------------------------------------

def test_ring_absolute_indices_wrap_and_drop():
    ring = TokenRing(capacity=5)
    tok = torch.arange(8 * 2, dtype=torch.float32).reshape(8, 2)
    assert ring.append(tok[:4]) == 0
    ring.drop_before(3)
    assert ring.append(tok[4:8]) == 4         # wraps around the 5 slots
    assert (ring.start, ring.end, len(ring), ring.free) == (3, 8, 5, 0)
    assert torch.equal(ring.window(), tok[3:8])
    assert torch.equal(ring.window(5, 7), tok[5:7])
    assert ring.window(8).shape == (0, 2)
    assert token_start(3) == pytest.approx(0.48) and token_end(3) == pytest.approx(0.64)


def test_ring_window_is_a_copy():
    ring = TokenRing(capacity=2)
    ring.append(torch.ones(2, 3))
    w = ring.window()
    ring.drop_before(2)
    ring.append(torch.zeros(2, 3))
    assert torch.equal(w, torch.ones(2, 3))


def test_ring_errors_name_the_problem():
    ring = TokenRing(capacity=3)
    ring.append(torch.zeros(3, 4))
    with pytest.raises(RingBufferFull, match="only 0 of 3 slots free"):
        ring.append(torch.zeros(1, 4))
    with pytest.raises(IndexError, match=r"holds tokens \[0, 3\)"):
        ring.window(4)
    ring.drop_before(1)
    with pytest.raises(IndexError):
        ring.window(0)
    with pytest.raises(ValueError, match="size 5"):
        ring.append(torch.zeros(1, 5))
    with pytest.raises(ValueError, match="float64"):
        ring.append(torch.zeros(1, 4, dtype=torch.float64))
    with pytest.raises(IndexError, match="past the newest"):
        ring.drop_before(9)
    with pytest.raises(ValueError, match="capacity"):
        TokenRing(0)


def test_ring_default_capacity_is_30_seconds():
    assert TokenRing().capacity * 0.16 >= 30.0


# --- policy --------------------------------------------------------------------------------------

def test_local_agreement_commits_common_prefix_of_last_two():
    s = policy.AgreementState()
    s, step = policy.agree(s, ["the", "cat"])
    assert step == policy.Step((), ("the", "cat"))
    s, step = policy.agree(s, ["the", "cat", "sat"])
    assert step.committed == ("the", "cat") and step.partial == ("sat",)
    s, step = policy.agree(s, ["sad", "on"])     # disagrees with ("sat",): nothing new
    assert step.committed == () and s.committed == ("the", "cat")
    s, step = policy.agree(s, ["sad", "on", "it"])
    assert step.committed == ("sad", "on") and step.partial == ("it",)
    s, step = policy.commit_all(s, ["it", "all"])
    assert s.committed == ("the", "cat", "sad", "on", "it", "all") and s.previous is None and step.partial == ()


def test_loose_key_and_overlap_and_sentence_end():
    assert policy.common_prefix_length(["Hello,", "World"], ["hello", "world!"], policy.loose) == 2
    assert policy.common_prefix_length(["Hello,"], ["hello"]) == 0
    assert policy.drop_committed_overlap(["sat", "on", "the", "mat"], ["the", "cat", "sat", "on"]) == ["the", "mat"]
    assert policy.drop_committed_overlap(["a"], []) == ["a"]
    assert policy.last_sentence_end(["Hi.", "How", "are", "you?", "I"]) == 4
    assert policy.last_sentence_end(["no", "end"]) == 0


def test_repetition_loop_guard():
    assert policy.repetition_loop("a b c c c c".split()) == 3
    assert policy.repetition_loop("go on go on go on".split()) == 2
    assert policy.repetition_loop("a b a c".split()) == 4


# --- scheduler -----------------------------------------------------------------------------------

class _Recorder:
    def __init__(self, name, log):
        self.name, self.log = name, log

    def feed(self, pcm):
        self.log.append((self.name, pcm.size))
        return []

    def finish(self):
        self.log.append((self.name, "finish"))
        return []


def test_scheduler_round_robin_bounds_each_turn():
    """A lane with 5 s queued gets one 1 s turn per round; the other lane is not starved."""
    async def main():
        log = []
        sched = FairScheduler(max_job_seconds=1.0)
        sched.start()
        a = sched.lane(_Recorder("a", log), lambda ev, s: None)
        b = sched.lane(_Recorder("b", log), lambda ev, s: None)
        a.push(np.zeros(5 * 16000, np.float32))
        b.push(np.zeros(8000, np.float32))
        b.push(np.zeros(8000, np.float32))
        await asyncio.wait_for(asyncio.gather(a.finish(), b.finish()), 5)
        await sched.stop()
        return log
    log = asyncio.run(main())
    assert log[:4] == [("a", 16000), ("b", 16000), ("a", 16000), ("b", "finish")]
    assert [x for x in log if x[0] == "a"] == [("a", 16000)] * 5 + [("a", "finish")]


def test_a_session_created_for_a_dropped_connection_is_closed():
    """The connection goes away while the inference thread creates its session: the session (and the cache
    slot it holds) is handed to on_abandoned instead of leaking."""
    import threading

    created, abandoned, release = [], [], threading.Event()

    def make():
        release.wait(5)
        created.append(object())
        return created[-1]

    async def main():
        sched = FairScheduler(max_job_seconds=1.0)
        sched.start()
        task = asyncio.ensure_future(sched.call(make, on_abandoned=abandoned.append))
        await asyncio.sleep(0.05)
        task.cancel()  # the connection handler is cancelled mid-creation
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        for _ in range(100):
            if abandoned:
                break
            await asyncio.sleep(0.01)
        kept = await sched.call(lambda: "normal", on_abandoned=abandoned.append)  # no cancel: returned
        await sched.stop()
        return kept

    assert asyncio.run(main()) == "normal"
    assert len(created) == 1 and abandoned == created
