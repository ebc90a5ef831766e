"""Exact incremental audio encoding: push PCM in pieces of any size, get tokens as soon as they are final.

Token k (160 ms apart) is conformer frame 4k, which depends on mel frames up to 16k + 6, i.e. on
audio up to sample 2560 k + 1473 (160 k + 92 ms): the only look-ahead is the two reverse-causal
stride-2 convs. Everything after them is causal with bounded memory, so the stream carries only:

  - the samples of the next mel frames (< 513 + one push),
  - per SSCP conv block: input rows not yet consumed by a stride, and the cumulative norm's sums,
  - per conformer layer: the last 12 projected keys/values and the last 4 light-conv inputs,
  - counters (samples pushed, mel frames made, conformer frames made = the decimation phase).

Each push costs time proportional to its own length. `flush()` pads the end like the offline path
(samples to a multiple of 128; two zero rows in each conv's input, which for conv_0 are zeros in the
log-mel domain) and returns the last tokens; all tokens together equal
`AudioEncoder(extract_features(whole clip))` on the valid positions.
"""
from __future__ import annotations

import numpy as np
import torch

from .audio import SAMPLE_RATE
from .encoder import AudioEncoder
from .features import HOP_LENGTH, PAD_TO_MULTIPLE_OF, WINDOW_SPAN, frames_for_range, num_frames

SAMPLES_PER_TOKEN = 16 * HOP_LENGTH  # 2560 samples = 160 ms
LOOKAHEAD_SAMPLES = 6 * HOP_LENGTH + WINDOW_SPAN  # 1473: mel frames 16k..16k+6, the last one 513 long


def samples_needed(token: int) -> int:
    """How many samples must have been pushed before token `token` (0-based) is returned."""
    return SAMPLES_PER_TOKEN * token + LOOKAHEAD_SAMPLES


class AudioEncoderStream:
    """push(waveform) -> new tokens [n_new, hidden]; flush() -> the remaining ones at end of stream."""

    def __init__(self, encoder: AudioEncoder, pad_to_multiple_of: int = PAD_TO_MULTIPLE_OF):
        self.encoder = encoder
        self.pad_to_multiple_of = pad_to_multiple_of
        device = encoder.device
        self._samples = torch.zeros(0, dtype=torch.float32)  # from sample HOP_LENGTH * _next_frame on
        self._total = 0  # samples pushed
        self._next_frame = 0  # next mel frame to compute
        self._subframes = 0  # conformer frames made so far (the decimation phase)
        self._tokens = 0
        self._finished = False
        self._sscp = encoder.subsample_conv_projection.initial_state(1, device)
        self._layers = [block.initial_state(1, device, encoder.dtype) for block in encoder.conformer]

    @property
    def num_samples(self) -> int:
        return self._total

    @property
    def num_tokens(self) -> int:
        """Tokens returned so far; token k covers audio from 0.16 k s."""
        return self._tokens

    @torch.no_grad()
    def push(self, waveform: np.ndarray | torch.Tensor) -> torch.Tensor:
        """Append 16 kHz mono float samples; returns the tokens they complete, [n_new, hidden]."""
        if self._finished:
            raise RuntimeError("AudioEncoderStream: push after flush(); start a new stream")
        wave = _check_chunk(waveform)
        self._samples = torch.cat([self._samples, wave])
        self._total += wave.shape[0]
        return self._encode(self._new_frames(num_frames(self._total)), final=False)

    @torch.no_grad()
    def flush(self) -> torch.Tensor:
        """End of stream: pad as the offline path does and return the remaining tokens [n, hidden]."""
        if self._finished:
            raise RuntimeError("AudioEncoderStream: flush() called twice")
        self._finished = True
        m = self.pad_to_multiple_of
        padded = -(-self._total // m) * m if m else self._total
        self._samples = torch.cat([self._samples, self._samples.new_zeros(padded - self._total)])
        return self._encode(self._new_frames(num_frames(padded)), final=True)

    def state_numel(self) -> int:
        """Elements held in carried state (for checking that it does not grow with the stream)."""
        tensors = [self._samples, self._sscp.conv_0.pending, self._sscp.conv_1.pending]
        for st in self._layers:
            tensors += [st.keys, st.values, st.valid, st.conv]
        return sum(t.numel() for t in tensors)

    def _new_frames(self, frames_total: int) -> torch.Tensor:
        """Mel frames _next_frame .. frames_total - 1 from the sample buffer, which then drops what
        no later frame needs."""
        count = frames_total - self._next_frame
        start = HOP_LENGTH * self._next_frame
        mel = frames_for_range(self._samples, self._next_frame, count, offset=start)
        if count > 0:
            self._next_frame = frames_total
            self._samples = self._samples[HOP_LENGTH * count:].clone()
        return mel

    def _encode(self, mel: torch.Tensor, final: bool) -> torch.Tensor:
        enc = self.encoder
        hidden = enc.config.hidden_size
        mel = mel.to(enc.device)
        if mel.shape[0] == 0 and not final:
            return mel.new_zeros(0, hidden, dtype=enc.dtype)
        x, self._sscp = enc.subsample_conv_projection(mel[None], self._sscp, final)
        m = x.shape[1]
        if m == 0:
            return x.new_zeros(0, hidden)
        valid = torch.ones(1, m, dtype=torch.bool, device=x.device)
        for i, block in enumerate(enc.conformer):
            x, self._layers[i] = block(x, valid, self._layers[i])
        r = enc.config.conf_reduction_factor
        keep = (torch.arange(self._subframes, self._subframes + m, device=x.device) % r) == 0
        self._subframes += m
        tokens = x[0, keep]
        self._tokens += tokens.shape[0]
        return tokens


def _check_chunk(waveform: np.ndarray | torch.Tensor) -> torch.Tensor:
    wave = torch.as_tensor(waveform)
    if wave.ndim != 1:
        raise ValueError(f"AudioEncoderStream.push expects 1-D mono samples at {SAMPLE_RATE} Hz, "
                         f"got shape {tuple(wave.shape)}")
    if not wave.is_floating_point():
        raise ValueError(f"AudioEncoderStream.push expects float samples in [-1, 1], got dtype {wave.dtype} "
                         "(decode raw PCM with audio_encoder.audio.decode_pcm)")
    return wave.detach().to("cpu", torch.float32)
