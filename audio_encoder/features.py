"""Log-mel features exactly as Gemma 3n's feature extractor computes them, without its 30 s cut.

Frame i looks at samples [160 i, 160 i + 513) of the waveform (zero-padded to a multiple of 128
samples): HTK pre-emphasis inside the frame (the 513th sample only counts for the frame count),
a periodic Hann window of 512, |rfft| with n = 1024, an HTK mel filterbank (125-7600 Hz, no area
normalisation) and log with a floor of 1e-5. No statistic crosses frames, so `frames_for_range`
lets a stream compute frames incrementally and get the same numbers.
"""
from __future__ import annotations

import math
from functools import lru_cache

import numpy as np
import torch

from .audio import SAMPLE_RATE

N_MELS = 128
FRAME_LENGTH = round(SAMPLE_RATE * 32 / 1000)  # 32 ms -> 512 samples
HOP_LENGTH = round(SAMPLE_RATE * 10 / 1000)  # 10 ms -> 160 samples
WINDOW_SPAN = FRAME_LENGTH + 1  # the reference unfolds 513 samples per frame
# Next power of two, doubled ("fft_overdrive"): 1024, i.e. 513 rfft bins.
FFT_LENGTH = 2 * 2 ** math.ceil(math.log2(FRAME_LENGTH))
MIN_FREQUENCY = 125.0
MAX_FREQUENCY = 7600.0
PREEMPHASIS = 0.97
MEL_FLOOR = 1e-5
PAD_TO_MULTIPLE_OF = 128  # the reference pads every clip to a multiple of 128 samples


def _hz_to_mel(f: float) -> float:
    return 2595.0 * math.log10(1.0 + f / 700.0)


@lru_cache(maxsize=8)
def _mel_filters(device: torch.device) -> torch.Tensor:
    """Triangular HTK filters [FFT_LENGTH // 2 + 1, N_MELS] in float64, evaluated at the bin centres."""
    n_freqs = FFT_LENGTH // 2 + 1
    bin_hz = torch.arange(n_freqs, dtype=torch.float64) * (SAMPLE_RATE / FFT_LENGTH)
    mel_pts = torch.from_numpy(np.linspace(_hz_to_mel(MIN_FREQUENCY), _hz_to_mel(MAX_FREQUENCY), N_MELS + 2))
    hz_pts = 700.0 * (10.0 ** (mel_pts / 2595.0) - 1.0)
    width = hz_pts[1:] - hz_pts[:-1]
    slopes = hz_pts[None, :] - bin_hz[:, None]  # [n_freqs, N_MELS + 2]
    down = -slopes[:, :-2] / width[:-1]
    up = slopes[:, 2:] / width[1:]
    return torch.clamp(torch.minimum(down, up), min=0.0).to(device)


@lru_cache(maxsize=8)
def _window(device: torch.device) -> torch.Tensor:
    # Periodic Hann, evaluated step by step in numpy float32 as the reference does: a window that
    # differs in the last bit moves the weak low-frequency bins by up to 5e-5 after pre-emphasis.
    n = np.arange(FRAME_LENGTH, dtype=np.float32)
    window = (0.5 * (1 - np.cos(2 * np.pi * n / FRAME_LENGTH))).astype(np.float32)
    return torch.from_numpy(window).to(device)


def num_frames(num_samples: int) -> int:
    """Frames the reference makes from `num_samples` (already padded) samples."""
    return max(0, (num_samples - WINDOW_SPAN) // HOP_LENGTH + 1)


def log_mel_frames(windows: torch.Tensor) -> torch.Tensor:
    """[..., >= 512] float32 sample windows (frame starts) -> [..., 128] float32 log-mel."""
    x = windows[..., :FRAME_LENGTH].to(torch.float32)
    # HTK pre-emphasis within the frame: the first sample is scaled, the others differenced.
    first = x[..., :1] * (1.0 - PREEMPHASIS)
    rest = x[..., 1:] - PREEMPHASIS * x[..., :-1]
    frames = torch.cat([first, rest], dim=-1) * _window(x.device)
    # float64 FFT and filterbank: the reference's float32 FFT (numpy pocketfft) is accurate to float32
    # rounding, torch's float32 FFT is not always; float64 lands within 1e-6 of the reference.
    spectrum = torch.fft.rfft(frames.to(torch.float64), n=FFT_LENGTH).abs()
    mel = spectrum @ _mel_filters(x.device)
    return torch.log(torch.clamp(mel, min=MEL_FLOOR)).to(torch.float32)


def frames_for_range(samples: torch.Tensor, first_frame: int, count: int, offset: int = 0) -> torch.Tensor:
    """Log-mel frames first_frame .. first_frame + count - 1 of a signal whose sample `offset` is
    samples[0]. The samples must cover [160 * first_frame, 160 * (first_frame + count - 1) + 512)."""
    if count <= 0:
        return torch.zeros(0, N_MELS, dtype=torch.float32, device=samples.device)
    start = HOP_LENGTH * first_frame - offset
    stop = start + HOP_LENGTH * (count - 1) + FRAME_LENGTH
    if start < 0 or stop > samples.shape[-1]:
        raise ValueError(f"frames {first_frame}..{first_frame + count - 1} need samples "
                         f"[{start + offset}, {stop + offset}), have [{offset}, {offset + samples.shape[-1]})")
    windows = samples[start:stop].unfold(0, FRAME_LENGTH, HOP_LENGTH)
    return log_mel_frames(windows)


def extract_features(waveform: np.ndarray | torch.Tensor,
                     pad_to_multiple_of: int = PAD_TO_MULTIPLE_OF) -> tuple[torch.Tensor, torch.Tensor]:
    """16 kHz mono waveform -> (features [T, 128] float32, mask [T] bool, True = valid frame).

    Same numbers as the reference extractor on one clip, but any length (no 30 s truncation).
    """
    wave = torch.as_tensor(waveform)
    if wave.ndim != 1:
        raise ValueError(f"extract_features expects a 1-D mono waveform, got shape {tuple(wave.shape)}")
    if not wave.is_floating_point():
        raise ValueError(f"waveform must hold float samples in [-1, 1], got dtype {wave.dtype}")
    wave = wave.to(torch.float32)
    n = wave.shape[0]
    padded = -(-n // pad_to_multiple_of) * pad_to_multiple_of if pad_to_multiple_of else n
    wave = torch.nn.functional.pad(wave, (0, padded - n))
    count = num_frames(padded)
    features = frames_for_range(wave, 0, count)
    # Frame i is valid iff its first sample is a real one (the reference samples the mask every hop).
    mask = torch.arange(count, device=wave.device) * HOP_LENGTH < n
    return features, mask
