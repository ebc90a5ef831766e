"""Long-form transcription: cut a waveform at VAD pauses into windows of at most 30 s, decode each.

The model sees at most 30 s at a time (188 audio slots of 160 ms), so a long file is cut where
people pause. For each window the cut goes in the middle of the best pause near the window's end;
without a pause it falls hard at the limit. Windows without speech are skipped, not decoded.

    plan = plan_windows(waveform)                  # [Window(start_sample, end_sample, ...), ...]
    result = transcribe_long(model, waveform)      # Transcription(text, translation, segments)

`model` needs one method, `transcribe_window(waveform, task=, language=, target_language=,
source_language=) -> object with .text and .translation` (asr.model.SpeechModel has it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from audio_encoder.vad import SAMPLE_RATE, VadOptions, find_pauses, regions_between

TASKS = ("transcribe", "translate")


@dataclass(frozen=True)
class LongformOptions:
    """Where long audio is cut.

    max_window_s: no window is longer than this.
    min_pause_ms: shorter silences are not cut points (nor do they separate speech).
    search_s: a pause in the last `search_s` of a window is preferred (the longest one there);
        otherwise the pause closest to the window's end is taken.
    min_window_s: never cut closer than this to a window's start (no tiny windows).
    skip_silent: skip windows in which VAD finds no speech.
    """

    max_window_s: float = 30.0
    min_pause_ms: float = 200.0
    search_s: float = 10.0
    min_window_s: float = 2.0
    skip_silent: bool = True
    vad: VadOptions = field(default_factory=VadOptions)

    def __post_init__(self) -> None:
        for name in ("max_window_s", "search_s", "min_window_s", "min_pause_ms"):
            if not getattr(self, name) >= 0:
                raise ValueError(f"LongformOptions.{name} must be >= 0, got {getattr(self, name)!r}")
        if not self.max_window_s > 0:
            raise ValueError(f"LongformOptions.max_window_s must be > 0, got {self.max_window_s!r}")
        if self.min_window_s >= self.max_window_s:
            raise ValueError(
                f"LongformOptions.min_window_s ({self.min_window_s}) must be below "
                f"max_window_s ({self.max_window_s})"
            )


@dataclass(frozen=True)
class Window:
    """Samples [start_sample, end_sample) of the file; speech_* bound the speech inside (or None)."""

    start_sample: int
    end_sample: int
    speech_start_sample: int | None = None
    speech_end_sample: int | None = None

    @property
    def has_speech(self) -> bool:
        return self.speech_start_sample is not None

    @property
    def start(self) -> float:
        return self.start_sample / SAMPLE_RATE

    @property
    def end(self) -> float:
        return self.end_sample / SAMPLE_RATE

    @property
    def duration(self) -> float:
        return (self.end_sample - self.start_sample) / SAMPLE_RATE


@dataclass(frozen=True)
class Segment:
    """One decoded window: times in seconds from the start of the file."""

    start: float
    end: float
    text: str
    translation: str | None = None


@dataclass(frozen=True)
class Transcription:
    """The result for one file. `translation` is None unless the task is 'translate'."""

    text: str
    translation: str | None
    segments: list[Segment]
    task: str = "transcribe"
    language: str | None = None
    target_language: str | None = None
    skipped: list[Window] = field(default_factory=list)  # windows without speech, not decoded


def _best_cut(
    pauses: list[tuple[int, int]], lo: int, limit: int, search_from: int
) -> int | None:
    """Cut point in (lo, limit] inside a pause, or None when no pause reaches into the range."""
    candidates = []  # (clipped length, cut sample)
    for start, end in pauses:
        a, b = max(start, lo), min(end, limit)
        if b <= a:
            continue
        # The middle of the part inside the window: a long pause straddling the limit is cut
        # inside the window, and its far side becomes the next window's (silent) start.
        candidates.append((b - a, (a + b) // 2))
    if not candidates:
        return None
    late = [c for c in candidates if c[1] >= search_from]
    if late:
        return max(late)[1]  # longest; among equals, the later one
    return max(cut for _, cut in candidates)


def _cut_points(n_samples: int, pauses: list[tuple[int, int]], options: LongformOptions) -> list[int]:
    max_len = int(options.max_window_s * SAMPLE_RATE)
    cuts, pos = [], 0
    while n_samples - pos > max_len:
        limit = pos + max_len
        lo = pos + int(options.min_window_s * SAMPLE_RATE)
        search_from = limit - int(options.search_s * SAMPLE_RATE)
        cut = _best_cut(pauses, lo, limit, search_from)
        pos = limit if cut is None else cut
        cuts.append(pos)
    return cuts


def _speech_bounds(
    regions: list[tuple[int, int]], start: int, end: int
) -> tuple[int | None, int | None]:
    inside = [(max(a, start), min(b, end)) for a, b in regions if a < end and b > start]
    if not inside:
        return None, None
    return inside[0][0], inside[-1][1]


def plan_windows(waveform: np.ndarray, options: LongformOptions = LongformOptions()) -> list[Window]:
    """All windows covering `waveform` (16 kHz mono float) end to end, silent ones included."""
    n = len(waveform)
    if n == 0:
        return []
    pauses = find_pauses(waveform, options.vad, options.min_pause_ms)
    n_classified = n // options.vad.frame_samples * options.vad.frame_samples
    regions = regions_between(pauses, n_classified)
    edges = [0, *_cut_points(n, pauses, options), n]
    return [
        Window(a, b, *_speech_bounds(regions, a, b)) for a, b in zip(edges[:-1], edges[1:])
    ]


def _report(progress: Any, total: int) -> None:
    """One window done: tqdm-like objects get update(1) (and their total), callables get 1."""
    if progress is None:
        return
    if hasattr(progress, "update"):
        if getattr(progress, "total", 0) is None:
            progress.total = total
        progress.update(1)
    else:
        progress(1)


def _check_request(waveform: np.ndarray, task: str, target_language: str | None) -> np.ndarray:
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if task == "translate" and not target_language:
        raise ValueError("task 'translate' needs target_language")
    waveform = np.asarray(waveform)
    if waveform.ndim != 1 or not np.issubdtype(waveform.dtype, np.floating):
        raise ValueError(
            f"waveform must be 1-D float samples at 16 kHz, got shape {waveform.shape} "
            f"dtype {waveform.dtype}"
        )
    return waveform.astype(np.float32, copy=False)


def transcribe_long(
    model: Any,
    waveform: np.ndarray,
    task: str = "transcribe",
    language: str | None = None,
    target_language: str | None = None,
    source_language: str | None = None,
    progress: Callable[[int], Any] | Any | None = None,
    options: Any = None,
    longform: LongformOptions = LongformOptions(),
) -> Transcription:
    """Transcribe (or translate) a waveform of any length window by window.

    progress: a tqdm bar (its total is set, update(1) per decoded window) or a callable called
    with 1 per decoded window (e.g. `bar.update`). options: passed on to
    `model.transcribe_window(..., options=options)` when given (the model's DecodeOptions).
    """
    waveform = _check_request(waveform, task, target_language)
    windows = plan_windows(waveform, longform)
    todo = [w for w in windows if w.has_speech or not longform.skip_silent]
    extra = {} if options is None else {"options": options}
    segments = []
    for window in todo:
        result = model.transcribe_window(
            waveform[window.start_sample : window.end_sample],
            task=task,
            language=language,
            target_language=target_language,
            source_language=source_language,
            **extra,
        )
        segments.append(_segment(window, result, task))
        _report(progress, len(todo))
    segments = [s for s in segments if s.text or s.translation]
    return Transcription(
        text=" ".join(s.text for s in segments if s.text),
        translation=" ".join(s.translation for s in segments if s.translation)
        if task == "translate"
        else None,
        segments=segments,
        task=task,
        language=language or source_language,
        target_language=target_language,
        skipped=[w for w in windows if w not in todo],
    )


def _segment(window: Window, result: Any, task: str) -> Segment:
    # Segment times bound the speech, not the window: windows carry half a pause on each side.
    start = window.speech_start_sample if window.has_speech else window.start_sample
    end = window.speech_end_sample if window.has_speech else window.end_sample
    translation = getattr(result, "translation", None) if task == "translate" else None
    return Segment(
        start=start / SAMPLE_RATE,
        end=end / SAMPLE_RATE,
        text=" ".join(str(result.text).split()),
        translation=" ".join(translation.split()) if translation else None,
    )
