"""The network-free streaming session on a small random model: exactness of what reaches the decoder,
the commit policy's promises (finals never change, nothing is lost), silence, bounded windows."""
import numpy as np
import pytest
import torch

from asr.synth import synthesize
from streaming import session as session_mod
from streaming.session import SAMPLES_PER_TOKEN, SessionOptions, StreamingDecoder


@pytest.fixture(scope="module")
def speech():
    """Two utterances with a 1 s pause between them, as a live stream would bring them."""
    a = synthesize("the weather is nice today and we walk outside", "en")
    b = synthesize("we meet again tomorrow morning", "en")
    return np.concatenate([a, np.zeros(16000, np.float32), b, np.zeros(8000, np.float32)])


def run(decoder, audio, chunk=1600):
    events = []
    for i in range(0, len(audio), chunk):
        events += decoder.feed(audio[i:i + chunk])
    return events + decoder.finish()


def test_tokens_reaching_the_decoder_equal_offline_encoding(random_model, speech):
    dec = StreamingDecoder(random_model, SessionOptions(update_s=10, max_new_tokens=2))
    head = speech[: 16000 * 2]
    for i in range(0, len(head), 777):  # odd push sizes
        dec.feed(head[i:i + 777])
    offline = random_model.audio_embeddings(head)
    lo, hi = dec.ring.start, dec.ring.end
    assert hi > lo
    got = dec.ring.window(lo, hi)
    assert torch.allclose(got, offline[lo:hi], rtol=1e-4, atol=1e-5)


def test_single_utterance_final_equals_offline_decode(random_model, speech):
    """No intermediate updates: the one decode at the pause sees exactly the offline tokens."""
    first = speech[: len(speech) // 2]
    dec = StreamingDecoder(random_model, SessionOptions(update_s=10, max_new_tokens=8, audio_layout="compact"))
    seen = []
    original = dec._decode

    def spy(start, end, request, forced):
        seen.append((start, end))
        return original(start, end, request, forced)

    dec._decode = spy
    finals = [e for e in run(dec, first) if e.kind == "final"]
    assert len(seen) >= 1 and finals
    start, end = seen[0]
    audio = random_model.audio_embeddings(first)[start:end]
    from lm.prompt import instruction

    expected = random_model.answer(audio, instruction("transcribe"),
                                   random_model_options(random_model, max_new_tokens=8)).split()
    assert finals[0].text.split() == expected[: len(finals[0].text.split())]


def random_model_options(model, **kw):
    from asr.model import DecodeOptions

    return DecodeOptions(audio_layout="compact", **kw)


def test_kv_reuse_gives_the_same_text_as_a_fresh_cache(random_model, speech):
    dec = StreamingDecoder(random_model, SessionOptions(update_s=0.48, max_new_tokens=8))
    for i in range(0, 16000 * 3, 1600):
        dec.feed(speech[i:i + 1600])
    start, end = dec.utterance, dec.ring.end
    assert start is not None and end - start > 4
    reused = dec._decode(start, end, dec.request, "")
    dec.cache.reset()
    dec.cached_audio = (-1, 0)
    fresh = dec._decode(start, end, dec.request, "")
    assert reused == fresh


def test_finals_are_ordered_and_cover_all_speech(random_model, speech):
    events = run(StreamingDecoder(random_model, SessionOptions(update_s=0.64, max_new_tokens=6)), speech)
    finals = [e for e in events if e.kind == "final"]
    assert finals, "no final at all"
    for a, b in zip(finals, finals[1:]):
        assert a.end <= b.start + 1e-9, "finals overlap or go back in time"
    # every second of speech lies inside some final's span (nothing is lost)
    from audio_encoder.vad import VadOptions, speech_regions

    for lo, hi in speech_regions(speech, VadOptions(), 300):
        mid = (lo + hi) / 2 / 16000
        assert any(f.start - 0.2 <= mid <= f.end + 0.2 for f in finals), f"speech at {mid:.2f}s has no final"
    # a partial never reaches back into committed audio
    last_final_end = 0.0
    for e in events:
        if e.kind == "final":
            last_final_end = e.end
        else:
            assert e.start >= last_final_end - 1e-9


def test_silence_never_reaches_the_decoder(random_model, monkeypatch):
    calls = []
    monkeypatch.setattr(session_mod, "generate", lambda *a, **k: calls.append(1) or [])
    rng = np.random.default_rng(0)
    silence = (rng.standard_normal(16000 * 4) * 1e-4).astype(np.float32)
    events = run(StreamingDecoder(random_model), silence)
    assert events == [] and calls == []


def test_window_stays_bounded_on_a_long_stream(random_model, speech, monkeypatch):
    monkeypatch.setattr(session_mod, "generate", lambda *a, **k: [])  # decoding cost is not the point here
    dec = StreamingDecoder(random_model, SessionOptions(max_window_s=6.0))
    longest = 0
    for _ in range(6):  # ~50 s of stream
        for i in range(0, len(speech), 3200):
            dec.feed(speech[i:i + 3200])
            longest = max(longest, len(dec.ring))
    assert longest * SAMPLES_PER_TOKEN / 16000 <= 6.0 + 1.0
    assert dec.ring.end * SAMPLES_PER_TOKEN >= 6 * len(speech) - 2 * SAMPLES_PER_TOKEN


def test_translate_finals_carry_a_translation(random_model, speech):
    opts = SessionOptions(task="translate", language="en", target_language="es", max_new_tokens=6)
    finals = [e for e in run(StreamingDecoder(random_model, opts), speech) if e.kind == "final"]
    assert finals and all(isinstance(f.translation, str) for f in finals)


def test_bad_options_are_clear_errors(random_model):
    with pytest.raises(ValueError, match="target_language"):
        SessionOptions(task="translate")
    with pytest.raises(ValueError, match="update_s"):
        SessionOptions(update_s=0)
    with pytest.raises(ValueError, match="encoder_push_ms"):
        SessionOptions(encoder_push_ms=-1)
    dec = StreamingDecoder(random_model)
    dec.finish()
    with pytest.raises(RuntimeError, match="after finish"):
        dec.feed(np.zeros(10, np.float32))


def test_encoder_push_buffer_delays_tokens_but_loses_nothing(random_model, speech):
    """encoder_push_ms: audio reaches the encoder in pieces of at least that size; the ring then holds
    exactly the offline tokens, and every word of both utterances still comes out as finals."""
    pushes = []
    dec = StreamingDecoder(random_model, SessionOptions(encoder_push_ms=640, update_s=10, max_new_tokens=4))
    original = dec.encoder.push
    dec.encoder.push = lambda pcm: pushes.append(len(pcm)) or original(pcm)
    events = []
    for i in range(0, len(speech), 1600):  # 100 ms pieces, as a live client sends them
        events += dec.feed(speech[i:i + 1600])
        if i == 16000 * 2:
            lo, hi = dec.ring.start, dec.ring.end
            offline = random_model.audio_embeddings(speech[: 16000 * 2 + 1600])
            assert hi > lo and torch.allclose(dec.ring.window(lo, hi), offline[lo:hi], rtol=1e-4, atol=1e-5)
    events += dec.finish()
    # 700 ms pieces (seven 100 ms feeds), but where the pause between the utterances forced the buffer out
    # (the first utterance's last tokens) and at the end of the stream.
    assert sum(p < 640 * 16 for p in pushes) == 2 and sum(pushes) == len(speech)
    assert len([e for e in events if e.kind == "final"]) >= 2
