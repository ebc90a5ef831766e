"""Long-form transcription on synthesized speech (espeak-ng) with a fake model."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import pytest

from asr.longform import LongformOptions, Transcription, plan_windows, transcribe_long
from test_vad_speech import PHRASES, TOLERANCE_SAMPLES, needs_espeak, say

SR = 16000
GAPS_S = (0.3, 0.8, 0.5, 1.2, 0.25, 0.6)


@dataclass(frozen=True)
class FakeResult:
    text: str
    translation: str | None = None


class FakeModel:
    """Answers with the window's number; remembers every window it was given."""

    def __init__(self) -> None:
        self.calls: list[tuple[np.ndarray, dict]] = []

    def transcribe_window(self, waveform, task, language, target_language, source_language):
        i = len(self.calls)
        self.calls.append((waveform, dict(task=task, language=language, target_language=target_language,
                                          source_language=source_language)))
        return FakeResult(f" w{i}\n", f"t{i}" if task == "translate" else None)


@functools.lru_cache(maxsize=None)
def long_speech(min_s: float = 75.0) -> tuple[np.ndarray, tuple[tuple[int, int], ...]]:
    """Phrases and gaps repeated to at least `min_s`; returns audio and the phrases' sample spans."""
    pieces, spans, pos, i = [], [], 0, 0
    while pos < min_s * SR:
        speech = say(PHRASES[i % len(PHRASES)])
        gap = np.zeros(int(GAPS_S[i % len(GAPS_S)] * SR), np.float32)
        pieces += [speech, gap]
        spans.append((pos, pos + len(speech)))
        pos += len(speech) + len(gap)
        i += 1
    return np.concatenate(pieces), tuple(spans)


def inside_a_gap(sample: int, spans: tuple[tuple[int, int], ...]) -> bool:
    return not any(a <= sample < b for a, b in spans)


@needs_espeak
def test_windows_are_short_and_cut_in_pauses() -> None:
    """Every window <= 30 s, windows tile the file, every cut lies in an inserted silence."""
    wave, spans = long_speech()
    windows = plan_windows(wave)
    assert len(windows) >= 3
    assert windows[0].start_sample == 0 and windows[-1].end_sample == len(wave)
    assert all(a.end_sample == b.start_sample for a, b in zip(windows, windows[1:]))
    assert max(w.end_sample - w.start_sample for w in windows) <= 30 * SR
    for w in windows[1:]:
        assert inside_a_gap(w.start_sample, spans), f"cut at {w.start:.3f} s falls inside speech"
    assert all(w.has_speech for w in windows)


@needs_espeak
def test_segments_have_file_times_and_cover_the_speech() -> None:
    """One segment per window, times within 30 ms of the speech inside it; the model saw each window."""
    wave, spans = long_speech()
    model = FakeModel()
    calls: list[int] = []
    result = transcribe_long(model, wave, language="en", progress=calls.append)
    windows = plan_windows(wave)
    assert isinstance(result, Transcription)
    assert len(result.segments) == len(windows) == len(model.calls) == len(calls)
    assert result.text == " ".join(f"w{i}" for i in range(len(windows)))
    assert result.translation is None and result.skipped == []
    tol = TOLERANCE_SAMPLES / SR
    for seg, window, (audio, kwargs) in zip(result.segments, windows, model.calls):
        np.testing.assert_array_equal(audio, wave[window.start_sample : window.end_sample])
        assert kwargs == dict(task="transcribe", language="en", target_language=None, source_language=None)
        inside = [(a, b) for a, b in spans if window.start_sample <= a < window.end_sample]
        assert abs(seg.start - inside[0][0] / SR) <= tol, (seg.start, inside[0][0] / SR)
        assert abs(seg.end - min(inside[-1][1], window.end_sample) / SR) <= tol, seg
    for a, b in spans:  # every phrase lies within one segment (30 ms tolerance)
        assert any(seg.start - tol <= a / SR and b / SR <= seg.end + tol for seg in result.segments), (a, b)


@needs_espeak
def test_silent_windows_are_skipped() -> None:
    """12 s speech, 50 s silence, 12 s speech: silent windows are not decoded and are reported."""
    wave, spans = long_speech(12.0)
    silence = np.zeros(50 * SR, np.float32)
    audio = np.concatenate([wave, silence, wave])
    model = FakeModel()
    result = transcribe_long(model, audio, task="translate", target_language="fr", source_language="en")
    assert result.skipped, "expected silent windows"
    assert all(not w.has_speech for w in result.skipped)
    assert len(model.calls) == len(result.segments) >= 2
    n = len(result.segments)
    assert result.text == " ".join(f"w{i}" for i in range(n))
    assert result.translation == " ".join(f"t{i}" for i in range(n))
    assert all(c[1]["target_language"] == "fr" and c[1]["source_language"] == "en" for c in model.calls)
    # No segment reaches into the silence (30 ms tolerance); both speech blocks are covered.
    tol = TOLERANCE_SAMPLES / SR
    second = (len(wave) + len(silence)) / SR
    assert all(seg.end <= len(wave) / SR + tol or seg.start >= second - tol for seg in result.segments)
    assert result.segments[0].start <= spans[0][0] / SR + tol
    assert any(abs(seg.start - second) <= tol for seg in result.segments)
    assert result.segments[-1].end >= (second + spans[-1][1] / SR) - tol


def test_all_silence_gives_an_empty_transcription() -> None:
    model = FakeModel()
    result = transcribe_long(model, np.zeros(40 * SR, np.float32))
    assert (result.text, result.segments, model.calls) == ("", [], [])
    assert len(result.skipped) >= 2


def test_silence_is_decoded_when_skipping_is_off() -> None:
    model = FakeModel()
    result = transcribe_long(model, np.zeros(5 * SR, np.float32), longform=LongformOptions(skip_silent=False))
    assert result.text == "w0" and (result.segments[0].start, result.segments[0].end) == (0.0, 5.0)


def test_tqdm_like_progress_gets_total_and_updates() -> None:
    class Bar:
        total = None
        n = 0

        def update(self, k: int) -> None:
            self.n += k

    bar = Bar()
    transcribe_long(FakeModel(), np.zeros(65 * SR, np.float32), progress=bar,
                    longform=LongformOptions(skip_silent=False))
    assert bar.total == bar.n and bar.n >= 3


@pytest.mark.parametrize(
    "kwargs, problem",
    [({"task": "summarize"}, "task"), ({"task": "translate"}, "target_language")],
)
def test_bad_requests_are_clear_errors(kwargs: dict, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        transcribe_long(FakeModel(), np.zeros(SR, np.float32), **kwargs)
    with pytest.raises(ValueError, match="1-D"):
        transcribe_long(FakeModel(), np.zeros((2, SR), np.float32))
