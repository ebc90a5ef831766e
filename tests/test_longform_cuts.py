"""Where long audio is cut, on pause lists given by hand (no VAD involved)."""

from __future__ import annotations

import numpy as np
import pytest

from asr.longform import LongformOptions, Window, _cut_points, plan_windows

SR = 16000


def s(seconds: float) -> int:
    return int(round(seconds * SR))


def pauses(*spans: tuple[float, float]) -> list[tuple[int, int]]:
    return [(s(a), s(b)) for a, b in spans]


def test_short_audio_is_not_cut() -> None:
    assert _cut_points(s(30), pauses((10, 11)), LongformOptions()) == []


def test_longest_pause_in_the_last_stretch_wins() -> None:
    """In the last 10 s of the window the longest pause is taken, cut in its middle."""
    spans = pauses((5, 8), (21, 21.4), (24, 25), (28, 28.5))
    assert _cut_points(s(50), spans, LongformOptions())[0] == s(24.5)


def test_without_late_pause_the_latest_pause_wins() -> None:
    """No pause in the last 10 s: the one closest to the end, even if another is longer."""
    spans = pauses((3, 6), (12, 12.5))
    assert _cut_points(s(50), spans, LongformOptions())[0] == s(12.25)


def test_no_pause_means_a_hard_cut_at_the_limit() -> None:
    assert _cut_points(s(75), [], LongformOptions()) == [s(30), s(60)]
    # A pause before min_window_s of the window does not count.
    assert _cut_points(s(40), pauses((0.5, 1.5)), LongformOptions(min_window_s=2.0)) == [s(30)]


def test_pause_straddling_the_limit_is_cut_inside_the_window() -> None:
    spans = pauses((28, 34))
    cut = _cut_points(s(60), spans, LongformOptions())[0]
    assert cut == s(29), cut  # middle of [28, 30], the part inside the first window


@pytest.mark.parametrize("max_window_s", [5.0, 12.5, 30.0])
def test_windows_never_exceed_the_limit(max_window_s: float) -> None:
    rng = np.random.default_rng(int(max_window_s * 10))
    starts = np.sort(rng.uniform(0, 200, 40))
    spans = [(float(a), float(a + rng.uniform(0.2, 3.0))) for a in starts]
    options = LongformOptions(max_window_s=max_window_s, search_s=max_window_s / 3, min_window_s=1.0)
    cuts = [0, *_cut_points(s(203), pauses(*spans), options), s(203)]
    lengths = np.diff(cuts)
    assert lengths.max() <= s(max_window_s), lengths.max()
    assert lengths.min() > 0


def test_silent_waveform_plans_silent_windows() -> None:
    """Silence is one long pause: windows tile the audio, none longer than 30 s, none with speech."""
    windows = plan_windows(np.zeros(s(65), np.float32))
    assert windows[0].start_sample == 0 and windows[-1].end_sample == s(65)
    assert all(a.end_sample == b.start_sample for a, b in zip(windows, windows[1:]))
    assert max(w.duration for w in windows) <= 30.0
    assert not any(w.has_speech for w in windows)
    assert plan_windows(np.zeros(0, np.float32)) == []


def test_window_times() -> None:
    w = Window(s(1.5), s(31.5), s(2), s(30))
    assert (w.start, w.end, w.duration, w.has_speech) == (1.5, 31.5, 30.0, True)


@pytest.mark.parametrize(
    "kwargs, field",
    [({"max_window_s": 0}, "max_window_s"), ({"min_window_s": 31}, "min_window_s"),
     ({"min_pause_ms": -1}, "min_pause_ms")],
)
def test_bad_options_name_the_field(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        LongformOptions(**kwargs)
