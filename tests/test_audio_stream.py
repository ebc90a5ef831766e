"""AudioEncoderStream: incremental encoding equals the offline encoder on the whole clip."""
import numpy as np
import pytest
import torch

from audio_encoder.config import AudioConfig
from audio_encoder.encoder import AudioEncoder
from audio_encoder.features import extract_features
from audio_encoder.stream import AudioEncoderStream, samples_needed
from reference_models import audio_config_kwargs

RTOL = 1e-4


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    enc = AudioEncoder(AudioConfig.from_dict(audio_config_kwargs())).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():  # larger than default init so every part of the state matters
        for name, p in enc.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.5 * torch.randn(p.shape, generator=g) / max(1, p[0].numel()) ** 0.5)
    return enc


def _speechlike(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(n) / 16000
    wave = 0.3 * np.sin(2 * np.pi * (250 + 150 * np.sin(2 * np.pi * 0.9 * t)) * t) * (0.5 + 0.5 * np.sin(6 * np.pi * t))
    wave += 0.02 * rng.standard_normal(n)
    wave[n // 2: n // 2 + 3000] = 0.0
    return wave.astype(np.float32)


def _ready(pos: int) -> int:
    """Tokens whose audio (up to 160 k + 92 ms) lies within the first `pos` samples."""
    return 0 if pos < samples_needed(0) else (pos - samples_needed(0)) // (samples_needed(1) - samples_needed(0)) + 1


def _offline(encoder, wave):
    features, mask = extract_features(wave)
    with torch.no_grad():
        tokens, valid = encoder(features[None], mask[None])
    return tokens[0][valid[0]]


def _streamed(encoder, wave, sizes):
    stream = AudioEncoderStream(encoder)
    out, pos, i = [], 0, 0
    while pos < len(wave):
        n = sizes[i % len(sizes)]
        chunk = wave[pos:pos + n]
        pos += len(chunk)
        i += 1
        new = stream.push(chunk)
        # a token comes back exactly once the audio it depends on has arrived
        assert stream.num_tokens == _ready(pos), (pos, stream.num_tokens)
        out.append(new)
    out.append(stream.flush())
    return torch.cat(out)


def _assert_close(got, expected, what):
    assert got.shape == expected.shape, (what, got.shape, expected.shape)
    err = float((got - expected).abs().max() / expected.abs().max().clamp_min(1e-12))
    assert err <= RTOL, f"{what}: relative error {err} > {RTOL}"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_push_sizes_equal_offline(encoder, seed):
    """Random push sizes (1 sample .. 3 s) on 4-7 s of speech-like audio: same tokens as offline (1e-4)."""
    rng = np.random.default_rng(seed)
    wave = _speechlike(int(rng.integers(64000, 112000)), seed)
    sizes = [int(s) for s in rng.choice([1, 7, 160, 333, 1600, 4801, 48000], size=50)]
    _assert_close(_streamed(encoder, wave, sizes), _offline(encoder, wave), f"seed {seed}")


def test_one_sample_pushes_on_short_clip(encoder):
    wave = _speechlike(6000 + 37, 9)
    _assert_close(_streamed(encoder, wave, [1]), _offline(encoder, wave), "1-sample pushes")


@pytest.mark.parametrize("n", [3 * 16000, 16000 + 5, 2560 * 3 + 1473])
def test_silence_and_edge_lengths(encoder, n):
    """Digital silence (all mel frames at the log floor) and lengths at token boundaries."""
    wave = np.zeros(n, dtype=np.float32)
    _assert_close(_streamed(encoder, wave, [10 * 160, 3]), _offline(encoder, wave), f"silence {n}")


def test_very_short_stream_gives_what_offline_gives(encoder):
    for n in (0, 100, 600, 1500):
        wave = _speechlike(n, 3)
        stream = AudioEncoderStream(encoder)
        got = torch.cat([stream.push(wave), stream.flush()])
        assert got.shape[0] == _offline(encoder, wave).shape[0] if n else got.shape[0] == 0


def test_state_does_not_grow(encoder):
    """Carried state after 2 s and after 20 s of pushes is the same size (bounded by the window)."""
    stream = AudioEncoderStream(encoder)
    rng = np.random.default_rng(0)
    sizes = []
    for second in range(20):
        for _ in range(10):
            stream.push((0.1 * rng.standard_normal(1600)).astype(np.float32))
        sizes.append(stream.state_numel())
    assert max(sizes[2:]) <= sizes[1] + 513, sizes
    assert stream.num_tokens == _ready(20 * 16000) == 125


def test_misuse_is_reported(encoder):
    stream = AudioEncoderStream(encoder)
    with pytest.raises(ValueError, match="1-D"):
        stream.push(np.zeros((2, 10), dtype=np.float32))
    with pytest.raises(ValueError, match="float"):
        stream.push(np.zeros(10, dtype=np.int16))
    stream.flush()
    with pytest.raises(RuntimeError, match="after flush"):
        stream.push(np.zeros(10, dtype=np.float32))


REAL = "/work/shared/data/audio/english.wav"


@pytest.mark.skipif(not __import__("os").path.exists(REAL), reason="shared audio data not present")
def test_real_speech_fp32_and_bf16(encoder):
    """Real speech in 1000-sample pushes: fp32 equals offline (1e-4); a bf16 encoder stays within 3e-2
    of its own offline run (bf16 rounding differs with the matmul shapes, as bf16 vs fp32 does)."""
    from audio_encoder.audio import load_audio

    wave = load_audio(REAL)
    _assert_close(_streamed(encoder, wave, [1000]), _offline(encoder, wave), "english.wav fp32")
    enc_bf16 = AudioEncoder(encoder.config).eval()
    enc_bf16.load_state_dict(encoder.state_dict())
    enc_bf16 = enc_bf16.to(torch.bfloat16)
    got, expected = _streamed(enc_bf16, wave, [1000]), _offline(enc_bf16, wave)
    assert got.dtype == torch.bfloat16 and got.shape == expected.shape
    err = float((got.float() - expected.float()).abs().max() / expected.float().abs().max())
    assert err <= 3e-2, f"bf16 stream vs offline relative error {err} > 3e-2"
