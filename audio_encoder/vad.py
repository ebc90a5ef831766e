"""Voice activity detection with webrtcvad: per-frame speech flags and pause finding.

Used by long-form cutting (`asr.longform`) and by streaming. Everything works on 16 kHz float32
waveforms, the rate the rest of the pipeline uses; webrtcvad itself wants 16-bit PCM in frames of
10, 20 or 30 ms, so the conversion happens here, once.

    flags = speech_flags(waveform, VadOptions())          # one bool per frame, True = speech
    pauses = find_pauses(waveform, VadOptions(), 300)     # [(start_sample, end_sample), ...]
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import webrtcvad

# Same value as audio_encoder.audio.SAMPLE_RATE; webrtcvad also accepts 8/32/48 kHz, but the
# pipeline only ever holds 16 kHz audio, so one rate keeps frame arithmetic simple.
SAMPLE_RATE = 16000

_FRAME_MS_ALLOWED = (10, 20, 30)  # the only frame lengths webrtcvad accepts


@dataclass(frozen=True)
class VadOptions:
    """How speech is detected.

    aggressiveness: webrtcvad mode 0 (least eager to call noise non-speech) .. 3 (most).
    frame_ms: frame length, 10, 20 or 30 ms.
    min_speech_frames: speech runs shorter than this many frames are treated as non-speech when
        pauses are found (a one-frame click inside a pause should not split the pause). 1 = off.
    """

    aggressiveness: int = 2
    frame_ms: int = 30
    min_speech_frames: int = 2

    def __post_init__(self) -> None:
        if not isinstance(self.aggressiveness, int) or not 0 <= self.aggressiveness <= 3:
            raise ValueError(
                f"VadOptions.aggressiveness must be an int in 0..3, got {self.aggressiveness!r}"
            )
        if self.frame_ms not in _FRAME_MS_ALLOWED:
            raise ValueError(
                f"VadOptions.frame_ms must be one of {_FRAME_MS_ALLOWED} (webrtcvad's frame sizes), "
                f"got {self.frame_ms!r}"
            )
        if not isinstance(self.min_speech_frames, int) or self.min_speech_frames < 1:
            raise ValueError(
                f"VadOptions.min_speech_frames must be an int >= 1, got {self.min_speech_frames!r}"
            )

    @property
    def frame_samples(self) -> int:
        """Samples per frame at 16 kHz (480 for 30 ms)."""
        return SAMPLE_RATE * self.frame_ms // 1000


def _check_waveform(waveform: np.ndarray, what: str = "waveform") -> np.ndarray:
    waveform = np.asarray(waveform)
    if waveform.ndim != 1:
        raise ValueError(f"{what} must be 1-D (mono, 16 kHz), got shape {waveform.shape}")
    if not np.issubdtype(waveform.dtype, np.floating):
        raise ValueError(
            f"{what} must be float samples in [-1, 1] at 16 kHz, got dtype {waveform.dtype}"
        )
    if not np.all(np.isfinite(waveform)):
        raise ValueError(f"{what} contains NaN or infinite samples")
    return waveform


def _to_pcm16(waveform: np.ndarray) -> bytes:
    # Clip first: resampling can overshoot 1.0 slightly, and int16 would wrap around.
    pcm = np.clip(waveform, -1.0, 1.0) * 32767.0
    return np.round(pcm).astype("<i2").tobytes()


def _flags_for_frames(vad: webrtcvad.Vad, pcm: bytes, frame_samples: int) -> np.ndarray:
    frame_bytes = 2 * frame_samples
    n_frames = len(pcm) // frame_bytes
    flags = np.zeros(n_frames, dtype=bool)
    for i in range(n_frames):
        flags[i] = vad.is_speech(pcm[i * frame_bytes : (i + 1) * frame_bytes], SAMPLE_RATE)
    return flags


def speech_flags(waveform: np.ndarray, options: VadOptions = VadOptions()) -> np.ndarray:
    """One bool per whole frame of `waveform` (float, 16 kHz, mono), True = speech.

    Frame i covers samples [i * frame_samples, (i + 1) * frame_samples); a partial frame at the
    end is not classified (at most frame_ms - 1 ms of audio). Flags are raw webrtcvad decisions;
    `smooth_flags` removes short blips.
    """
    waveform = _check_waveform(waveform)
    vad = webrtcvad.Vad(options.aggressiveness)
    return _flags_for_frames(vad, _to_pcm16(waveform), options.frame_samples)


class VadStream:
    """Incremental `speech_flags`: push audio in pieces of any size, get flags for new whole frames.

    The flags of all pushes concatenated equal `speech_flags` of the whole waveform: webrtcvad
    keeps its own state across frames, and one Vad instance lives as long as the stream.
    """

    def __init__(self, options: VadOptions = VadOptions()) -> None:
        self.options = options
        self._vad = webrtcvad.Vad(options.aggressiveness)
        self._leftover = b""  # PCM bytes of the incomplete frame at the end
        self.frames_done = 0  # frames classified so far; frame k starts at sample k * frame_samples

    def push(self, waveform: np.ndarray) -> np.ndarray:
        """Classify the whole frames completed by `waveform`; returns their flags (may be empty)."""
        waveform = _check_waveform(waveform, "pushed audio")
        pcm = self._leftover + _to_pcm16(waveform)
        frame_bytes = 2 * self.options.frame_samples
        n_whole = len(pcm) // frame_bytes * frame_bytes
        self._leftover = pcm[n_whole:]
        flags = _flags_for_frames(self._vad, pcm[:n_whole], self.options.frame_samples)
        self.frames_done += len(flags)
        return flags

    @property
    def pending_samples(self) -> int:
        """Samples waiting for their frame to fill up."""
        return len(self._leftover) // 2


def smooth_flags(flags: np.ndarray, min_speech_frames: int) -> np.ndarray:
    """Turn speech runs shorter than `min_speech_frames` into non-speech (blip removal)."""
    flags = np.asarray(flags, dtype=bool)
    if min_speech_frames <= 1 or flags.size == 0:
        return flags.copy()
    out = flags.copy()
    for start, end in _runs(flags, True):
        if end - start < min_speech_frames:
            out[start:end] = False
    return out


def _runs(flags: np.ndarray, value: bool) -> list[tuple[int, int]]:
    """Half-open frame ranges [start, end) where flags == value."""
    padded = np.concatenate(([False], flags == value, [False])).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return [(int(s), int(e)) for s, e in zip(edges[0::2], edges[1::2])]


def pauses_from_flags(
    flags: np.ndarray, options: VadOptions = VadOptions(), min_pause_ms: float = 300.0
) -> list[tuple[int, int]]:
    """Pauses as (start_sample, end_sample): non-speech runs of at least `min_pause_ms`.

    `flags` are frame flags (from `speech_flags` or a `VadStream`) taken with `options`; speech
    blips shorter than `options.min_speech_frames` are ignored first. A pause at the very start or
    end of the flags is included (leading/trailing silence).
    """
    if min_pause_ms < 0:
        raise ValueError(f"min_pause_ms must be >= 0, got {min_pause_ms}")
    smoothed = smooth_flags(flags, options.min_speech_frames)
    fs = options.frame_samples
    min_frames = max(1, int(np.ceil(min_pause_ms / options.frame_ms - 1e-9)))
    return [
        (start * fs, end * fs)
        for start, end in _runs(smoothed, False)
        if end - start >= min_frames
    ]


# webrtcvad keeps calling frames speech for a few frames after speech stops (its built-in
# "overhang": 3 frames of 30 ms in mode 2, 5 in mode 0, and its smoothed features add about one
# more), and is_speech() does not say which frames are overhang. When the waveform is at hand,
# pause starts are pulled back over trailing frames that are as quiet as the pause itself.
_OVERHANG_LOOKBACK_MS = 240
_QUIET_FLOOR_RMS = 3e-4  # about -70 dBFS: quieter than this is silence even in a digital-zero pause


def _frame_rms(waveform: np.ndarray, start: int, end: int, frame_samples: int) -> np.ndarray:
    n = (end - start) // frame_samples
    if n <= 0:
        return np.zeros(1)
    frames = waveform[start : start + n * frame_samples].reshape(n, frame_samples)
    return np.sqrt(np.mean(frames.astype(np.float64) ** 2, axis=1))


def trim_overhang(
    waveform: np.ndarray, pauses: list[tuple[int, int]], options: VadOptions = VadOptions()
) -> list[tuple[int, int]]:
    """Move each pause start back over the quiet frames webrtcvad's overhang called speech.

    A frame counts as quiet when its RMS is at most twice the pause's median frame RMS (or below
    about -70 dBFS); the frame where speech actually ends stays speech, so the pause start lands on
    the first whole silent frame.
    """
    waveform = _check_waveform(waveform)
    fs = options.frame_samples
    max_back = _OVERHANG_LOOKBACK_MS // options.frame_ms
    trimmed: list[tuple[int, int]] = []
    prev_end = 0
    for start, end in pauses:
        noise = float(np.median(_frame_rms(waveform, start, end, fs)))
        threshold = max(2.0 * noise, _QUIET_FLOOR_RMS)
        new_start = start
        for _ in range(max_back):
            if new_start - fs < prev_end:
                break
            if _frame_rms(waveform, new_start - fs, new_start, fs)[0] > threshold:
                break
            new_start -= fs
        trimmed.append((new_start, end))
        prev_end = end
    return trimmed


def find_pauses(
    waveform: np.ndarray, options: VadOptions = VadOptions(), min_pause_ms: float = 300.0
) -> list[tuple[int, int]]:
    """Pauses of at least `min_pause_ms` in a 16 kHz waveform, as (start_sample, end_sample).

    Pause starts are corrected for webrtcvad's overhang (`trim_overhang`) before the length test,
    so a 400 ms silence counts as 400 ms even in mode 0, whose overhang hides up to ~180 ms of it.
    """
    flags = speech_flags(waveform, options)
    candidates = pauses_from_flags(flags, options, max(0.0, min_pause_ms - _OVERHANG_LOOKBACK_MS))
    min_samples = min_pause_ms * SAMPLE_RATE / 1000
    return [
        (start, end)
        for start, end in trim_overhang(waveform, candidates, options)
        if end - start >= min_samples - 1e-6
    ]


def regions_between(pauses: list[tuple[int, int]], n_samples: int) -> list[tuple[int, int]]:
    """The spans of [0, n_samples) not covered by the sorted, disjoint `pauses`."""
    regions, pos = [], 0
    for start, end in pauses:
        if start > pos:
            regions.append((pos, min(start, n_samples)))
        pos = max(pos, end)
    if pos < n_samples:
        regions.append((pos, n_samples))
    return [(a, b) for a, b in regions if b > a]


def speech_regions(
    waveform: np.ndarray, options: VadOptions = VadOptions(), min_pause_ms: float = 300.0
) -> list[tuple[int, int]]:
    """The complement of `find_pauses` over the classified frames: (start_sample, end_sample).

    Speech separated by less than `min_pause_ms` of non-speech forms one region. The partial frame
    at the end of the waveform (if any) is never part of a region.
    """
    n_classified = len(waveform) // options.frame_samples * options.frame_samples
    return regions_between(find_pauses(waveform, options, min_pause_ms), n_classified)
