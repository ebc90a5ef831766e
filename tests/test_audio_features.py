"""audio_encoder.features: frame counts, masks, incremental frames, input checks."""
import numpy as np
import pytest
import torch

from audio_encoder.features import (
    FFT_LENGTH, FRAME_LENGTH, HOP_LENGTH, MEL_FLOOR, N_MELS, extract_features, frames_for_range, num_frames)


def test_derived_constants():
    assert (FRAME_LENGTH, HOP_LENGTH, FFT_LENGTH, N_MELS) == (512, 160, 1024, 128)


@pytest.mark.parametrize("seconds,frames", [(1, 97), (5, 497), (10, 997)])
def test_frame_counts(seconds, frames):
    features, mask = extract_features(np.zeros(seconds * 16000, dtype=np.float32))
    assert features.shape == (frames, 128) and features.dtype == torch.float32
    assert mask.dtype == torch.bool and mask.shape == (frames,) and bool(mask.all())


def test_silence_is_log_floor():
    features, _ = extract_features(np.zeros(16000, dtype=np.float32))
    assert torch.allclose(features, torch.full_like(features, float(np.log(MEL_FLOOR))), atol=1e-6)


def test_short_clip_gives_no_frames():
    features, mask = extract_features(np.zeros(300, dtype=np.float32))
    assert features.shape == (0, 128) and mask.shape == (0,)


def test_frames_for_range_equals_whole_clip():
    """Any frame range computed from a slice of the samples equals the same rows of the whole clip."""
    wave = torch.from_numpy(np.random.default_rng(0).standard_normal(16000).astype(np.float32)) * 0.1
    whole, _ = extract_features(wave)
    offset = HOP_LENGTH * 40
    part = frames_for_range(wave[offset:offset + HOP_LENGTH * 9 + FRAME_LENGTH], 40, 10, offset=offset)
    assert torch.equal(part, whole[40:50])
    with pytest.raises(ValueError, match="need samples"):
        frames_for_range(wave[:1000], 0, 10)


def test_input_checks():
    with pytest.raises(ValueError, match="1-D"):
        extract_features(np.zeros((2, 1600), dtype=np.float32))
    with pytest.raises(ValueError, match="float"):
        extract_features(np.zeros(1600, dtype=np.int16))
