"""webrtcvad flags and pause finding on synthesized speech (espeak-ng) with inserted silences.

The synthesis helpers here are also used by tests/test_longform_*.py.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile

import numpy as np
import pytest
import soundfile as sf
import soxr

from audio_encoder.vad import (
    SAMPLE_RATE,
    VadOptions,
    VadStream,
    find_pauses,
    pauses_from_flags,
    regions_between,
    smooth_flags,
    speech_flags,
    speech_regions,
)

PHRASES = (
    "The quick brown fox jumps over the lazy dog",
    "Speech recognition works on short windows of audio",
    "Gemma listens to every word you say",
    "Numbers like one two three are easy to hear",
)
TOLERANCE_SAMPLES = 480  # 30 ms at 16 kHz: one frame of the default VAD

needs_espeak = pytest.mark.skipif(shutil.which("espeak-ng") is None, reason="espeak-ng missing")


@functools.lru_cache(maxsize=None)
def say(text: str) -> np.ndarray:
    """espeak-ng speech at 16 kHz float32, trimmed to its first and last audible sample."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "say.wav")
        subprocess.run(["espeak-ng", "-v", "en-us", "-w", path, text], check=True)
        audio, rate = sf.read(path, dtype="float32")
    audio = soxr.resample(audio, rate, SAMPLE_RATE).astype(np.float32)
    loud = np.flatnonzero(np.abs(audio) > 0.01)
    audio = audio[loud[0] : loud[-1] + 1].copy()
    audio.setflags(write=False)  # cached: callers must not modify it
    return audio


def speech_with_silences(
    phrases: tuple[str, ...], silences_s: tuple[float, ...], lead_s: float = 0.0
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    """phrase, silence, phrase, ...; returns the waveform and the inserted silences in samples."""
    pieces = [np.zeros(int(lead_s * SAMPLE_RATE), np.float32)]
    inserted = []
    pos = len(pieces[0])
    for i, phrase in enumerate(phrases):
        speech = say(phrase)
        pieces.append(speech)
        pos += len(speech)
        if i < len(silences_s):
            gap = int(silences_s[i] * SAMPLE_RATE)
            pieces.append(np.zeros(gap, np.float32))
            inserted.append((pos, pos + gap))
            pos += gap
    return np.concatenate(pieces), inserted


@needs_espeak
@pytest.mark.parametrize("aggressiveness", [0, 2, 3])
def test_pauses_found_where_inserted(aggressiveness: int) -> None:
    """Every inserted silence is found as a pause, both edges within 30 ms."""
    wave, inserted = speech_with_silences(PHRASES, (0.5, 1.0, 0.4))
    pauses = find_pauses(wave, VadOptions(aggressiveness=aggressiveness), min_pause_ms=300)
    for start, end in inserted:
        near = [p for p in pauses if p[0] < end and p[1] > start]
        assert len(near) == 1, f"inserted pause {start}-{end} matched by {near} in {pauses}"
        found_start, found_end = near[0]
        assert abs(found_start - start) <= TOLERANCE_SAMPLES, (found_start, start)
        assert abs(found_end - end) <= TOLERANCE_SAMPLES, (found_end, end)


@needs_espeak
def test_speech_is_flagged() -> None:
    """Inside a phrase, at least 80% of the frames are speech."""
    wave = say(PHRASES[0])
    flags = speech_flags(wave, VadOptions())
    assert flags.mean() >= 0.8, flags.mean()


@pytest.mark.parametrize("frame_ms", [10, 20, 30])
@pytest.mark.parametrize("aggressiveness", [0, 1, 2, 3])
def test_silence_is_not_speech(frame_ms: int, aggressiveness: int) -> None:
    """Digital silence: no speech frame. Faint noise (-70 and -60 dBFS): one pause covers it all.

    (webrtcvad calls the first frames of noise speech before its noise model adapts; that run is
    as quiet as the rest, so the overhang correction folds it into the pause.)
    """
    options = VadOptions(aggressiveness=aggressiveness, frame_ms=frame_ms)
    n_frames = 2 * SAMPLE_RATE // options.frame_samples
    flags = speech_flags(np.zeros(2 * SAMPLE_RATE, np.float32), options)
    assert len(flags) == n_frames and not flags.any()
    rng = np.random.default_rng(frame_ms + aggressiveness)
    for level in (3e-4, 1e-3):
        noise = rng.normal(0, level, 2 * SAMPLE_RATE).astype(np.float32)
        assert find_pauses(noise, options, 300) == [(0, n_frames * options.frame_samples)]


@needs_espeak
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_stream_matches_one_call(seed: int) -> None:
    """Pushes of random sizes (including 0 and 1 sample) give exactly the one-call flags."""
    wave, _ = speech_with_silences(PHRASES[:2], (0.6,), lead_s=0.3)
    options = VadOptions(aggressiveness=seed % 4, frame_ms=(10, 20, 30)[seed])
    expected = speech_flags(wave, options)
    rng = np.random.default_rng(seed)
    stream = VadStream(options)
    got, pos = [], 0
    while pos < len(wave):
        size = int(rng.choice([0, 1, 7, 160, 479, 480, 1000, 3333]))
        got.append(stream.push(wave[pos : pos + size]))
        pos += size
    flags = np.concatenate(got)
    np.testing.assert_array_equal(flags, expected)
    assert stream.frames_done == len(expected)
    assert stream.pending_samples == len(wave) - len(expected) * options.frame_samples


def test_smoothing_drops_blips_only() -> None:
    """Speech runs shorter than min_speech_frames vanish; longer runs are untouched."""
    flags = np.array([0, 1, 0, 0, 1, 1, 0, 1, 1, 1, 0], dtype=bool)
    out = smooth_flags(flags, 3)
    np.testing.assert_array_equal(out, [0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 0])
    np.testing.assert_array_equal(smooth_flags(flags, 1), flags)


def test_pauses_from_flags_lengths_and_blips() -> None:
    """A one-frame blip does not split a pause; min_pause_ms is inclusive; samples = frames * 480."""
    options = VadOptions(frame_ms=30, min_speech_frames=2)
    #                 0  1  2  3  4  5  6  7  8  9 10 11 12 13
    flags = np.array([1, 1, 0, 0, 0, 1, 0, 0, 0, 1, 1, 0, 0, 1], dtype=bool)
    assert pauses_from_flags(flags, options, min_pause_ms=210) == [(2 * 480, 9 * 480)]
    # The last frame is a one-frame blip too, so the second pause runs to the end of the flags.
    assert pauses_from_flags(flags, options, min_pause_ms=60) == [(2 * 480, 9 * 480), (11 * 480, 14 * 480)]
    raw = VadOptions(frame_ms=30, min_speech_frames=1)
    assert pauses_from_flags(flags, raw, min_pause_ms=90) == [(2 * 480, 5 * 480), (6 * 480, 9 * 480)]


@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"aggressiveness": 4}, "aggressiveness"),
        ({"aggressiveness": -1}, "aggressiveness"),
        ({"frame_ms": 25}, "frame_ms"),
        ({"min_speech_frames": 0}, "min_speech_frames"),
    ],
)
def test_bad_options_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        VadOptions(**kwargs)


@pytest.mark.parametrize(
    "wave, problem",
    [
        (np.zeros((2, 480), np.float32), "1-D"),
        (np.zeros(480, np.int16), "dtype"),
        (np.full(480, np.nan, np.float32), "NaN"),
    ],
)
def test_bad_waveform_is_a_clear_error(wave: np.ndarray, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        speech_flags(wave)
    with pytest.raises(ValueError, match=problem):
        VadStream().push(wave)


@needs_espeak
def test_speech_regions_are_the_phrases() -> None:
    """speech_regions returns one region per phrase, edges within 30 ms of the phrase edges."""
    wave, inserted = speech_with_silences(PHRASES[:3], (0.5, 0.7), lead_s=0.45)
    regions = speech_regions(wave, VadOptions(), min_pause_ms=300)
    edges = [int(0.45 * SAMPLE_RATE)] + [s for gap in inserted for s in gap] + [len(wave)]
    expected = list(zip(edges[0::2], edges[1::2]))
    assert len(regions) == len(expected), regions
    for (got_start, got_end), (start, end) in zip(regions, expected):
        assert abs(got_start - start) <= TOLERANCE_SAMPLES, (got_start, start)
        assert abs(got_end - end) <= TOLERANCE_SAMPLES, (got_end, end)


def test_regions_between_pauses() -> None:
    assert regions_between([(0, 10), (30, 40)], 50) == [(10, 30), (40, 50)]
    assert regions_between([(5, 60)], 50) == [(0, 5)]
    assert regions_between([], 7) == [(0, 7)]
    assert regions_between([(0, 50)], 50) == []
