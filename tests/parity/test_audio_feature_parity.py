"""extract_features against transformers' Gemma3nAudioFeatureExtractor on one clip."""
from pathlib import Path

import numpy as np
import pytest

from audio_encoder.audio import SAMPLE_RATE, load_audio
from audio_encoder.features import extract_features

transformers = pytest.importorskip("transformers")

DATA = Path("/work/shared/data/audio")


@pytest.fixture(scope="module")
def reference():
    return transformers.Gemma3nAudioFeatureExtractor()


def _speechlike(seconds: float, seed: int) -> np.ndarray:
    """Noise through a moving formant, amplitude-modulated, with a silent stretch: all of the
    log-mel range (floor included) gets exercised."""
    rng = np.random.default_rng(seed)
    n = int(seconds * SAMPLE_RATE) + int(rng.integers(0, 128))  # lengths off the 128 grid too
    t = np.arange(n) / SAMPLE_RATE
    carrier = np.sin(2 * np.pi * (300 + 200 * np.sin(2 * np.pi * 0.7 * t)) * t)
    wave = 0.3 * carrier * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t)) + 0.02 * rng.standard_normal(n)
    wave[n // 3: n // 3 + 4000] = 0.0
    return wave.astype(np.float32)


CASES = [("speech1s", lambda: _speechlike(1, 0)), ("speech5s", lambda: _speechlike(5, 1)),
         ("speech29s", lambda: _speechlike(29, 2)),
         ("uniform1s", lambda: np.random.default_rng(3).uniform(-1, 1, 16000).astype(np.float32)),
         ("quiet5s", lambda: (1e-4 * np.random.default_rng(4).standard_normal(80011)).astype(np.float32))]


@pytest.mark.parametrize("name,make", CASES, ids=[c[0] for c in CASES])
def test_features_match_reference(reference, name, make):
    """Log-mel within 1e-5 absolute of the reference; mask identical."""
    wave = make()
    ref = reference(wave, return_tensors="np")
    features, mask = extract_features(wave)
    expected = ref["input_features"][0]
    assert features.shape == expected.shape and features.dtype.is_floating_point
    err = np.abs(features.numpy() - expected).max()
    assert err <= 1e-5, f"{name}: max |ours - reference| = {err} > 1e-5"
    np.testing.assert_array_equal(mask.numpy(), ref["input_features_mask"][0])


@pytest.mark.skipif(not (DATA / "english.wav").exists(), reason="shared audio data not present")
@pytest.mark.parametrize("file", ["english.wav", "chinese.flac", "french.aiff"])
def test_features_match_reference_on_real_audio(reference, file):
    wave = load_audio(DATA / file)
    features, mask = extract_features(wave)
    ref = reference(wave, return_tensors="np")
    err = np.abs(features.numpy() - ref["input_features"][0]).max()
    assert err <= 1e-5, f"{file}: max |ours - reference| = {err} > 1e-5"
    np.testing.assert_array_equal(mask.numpy(), ref["input_features_mask"][0])


def test_reference_truncates_but_we_do_not(reference):
    """40 s of audio: the reference stops at 2997 frames (30 s); we keep all 3997, and our first
    2997 equal the reference's."""
    wave = _speechlike(40, 5)[: 40 * SAMPLE_RATE]
    features, mask = extract_features(wave)
    assert features.shape[0] == 3997 > 2997 and bool(mask.all())
    ref = reference(wave, return_tensors="np")["input_features"][0]
    assert ref.shape[0] == 2997
    # the reference's last frames see its truncation padding; compare well before that
    err = np.abs(features.numpy()[:2990] - ref[:2990]).max()
    assert err <= 1e-5, f"max |ours - reference| on the first 2990 frames = {err} > 1e-5"
