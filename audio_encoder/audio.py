"""Audio in: decode a file or raw PCM, mix to mono, resample to the model's 16 kHz.

Everything downstream (features, VAD, streaming) works on float32 mono waveforms in [-1, 1] at
`SAMPLE_RATE`; this module is the one place where other formats and rates are turned into that.

    waveform = load_audio("talk.flac")                       # np.float32, mono, 16 kHz
    chunk = decode_pcm(frame_bytes, "pcm_s16le", channels=2)  # a network frame -> mono float32
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf
import soxr

SAMPLE_RATE = 16000  # the rate Gemma 3n's feature extractor was trained on

# Raw PCM encodings the streaming protocol may carry: numpy dtype and the scale to [-1, 1].
_PCM_ENCODINGS = {
    "pcm_s16le": (np.dtype("<i2"), 1.0 / 32768.0),
    "pcm_f32le": (np.dtype("<f4"), 1.0),
}


class AudioLoadError(ValueError):
    """A file could not be turned into audio; the message names the file and the reason."""


def to_mono(array: np.ndarray) -> np.ndarray:
    """Mix [frames, channels] (soundfile's layout) to [frames] by the mean of the channels.

    A 1-D array is already mono and is returned as float32.
    """
    array = np.asarray(array)
    if array.ndim == 1:
        return array.astype(np.float32, copy=False)
    if array.ndim != 2:
        raise ValueError(f"audio must be [frames] or [frames, channels], got shape {array.shape}")
    return array.mean(axis=1, dtype=np.float64).astype(np.float32)


def resample(waveform: np.ndarray, rate: int) -> np.ndarray:
    """Resample a mono waveform from `rate` Hz to SAMPLE_RATE with soxr (high quality)."""
    if not isinstance(rate, (int, np.integer)) or rate <= 0:
        raise ValueError(f"sample rate must be a positive integer, got {rate!r}")
    waveform = np.asarray(waveform, dtype=np.float32)
    if waveform.ndim != 1:
        raise ValueError(f"resample expects a mono 1-D waveform, got shape {waveform.shape}")
    if rate == SAMPLE_RATE or waveform.size == 0:
        return waveform
    return soxr.resample(waveform, int(rate), SAMPLE_RATE, quality="HQ").astype(np.float32, copy=False)


def load_audio(path: str | Path) -> np.ndarray:
    """Read any file soundfile can read (WAV, FLAC, OGG, AIFF, MP3, ...) as float32 mono 16 kHz.

    Raises AudioLoadError naming the file for missing, unreadable, non-audio or empty files.
    """
    path = Path(path)
    if not path.exists():
        raise AudioLoadError(f"{path}: no such file")
    if path.is_dir():
        raise AudioLoadError(f"{path}: is a directory, not an audio file")
    try:
        data, rate = sf.read(str(path), dtype="float32", always_2d=True)
    except (sf.LibsndfileError, RuntimeError, TypeError) as err:
        raise AudioLoadError(f"{path.name}: not an audio file soundfile can read ({err})") from err
    if data.shape[0] == 0:
        raise AudioLoadError(f"{path.name}: contains no audio samples")
    waveform = resample(to_mono(data), rate)
    if not np.all(np.isfinite(waveform)):
        raise AudioLoadError(f"{path.name}: decoded audio contains NaN or infinite samples")
    return waveform


def decode_pcm(data: bytes, encoding: str = "pcm_s16le", channels: int = 1) -> np.ndarray:
    """Raw interleaved PCM bytes -> float32 mono (the rate is unchanged; resample separately).

    encoding: "pcm_s16le" (16-bit signed little-endian) or "pcm_f32le" (32-bit float little-endian).
    """
    if encoding not in _PCM_ENCODINGS:
        raise ValueError(f"unknown PCM encoding {encoding!r}; expected one of {sorted(_PCM_ENCODINGS)}")
    if not isinstance(channels, int) or channels < 1:
        raise ValueError(f"channels must be a positive integer, got {channels!r}")
    dtype, scale = _PCM_ENCODINGS[encoding]
    frame_bytes = dtype.itemsize * channels
    if len(data) % frame_bytes:
        raise ValueError(f"{len(data)} bytes of {encoding} is not a whole number of "
                         f"{channels}-channel frames ({frame_bytes} bytes each)")
    samples = np.frombuffer(data, dtype=dtype).astype(np.float32) * np.float32(scale)
    return to_mono(samples.reshape(-1, channels))
