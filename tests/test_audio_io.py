"""audio_encoder.audio: decoding, mono mixing, resampling, raw PCM, and clear errors."""
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from audio_encoder.audio import SAMPLE_RATE, AudioLoadError, decode_pcm, load_audio, resample, to_mono

DATA = Path("/work/shared/data/audio")
AUDIO_FILES = sorted(p for p in DATA.glob("*") if p.suffix in (".wav", ".flac", ".aiff", ".ogg", ".mp3"))


@pytest.mark.skipif(not AUDIO_FILES, reason="shared audio data not present")
@pytest.mark.parametrize("path", AUDIO_FILES, ids=lambda p: p.name)
def test_every_shared_file_loads_as_16k_mono_float32(path):
    """Each file decodes to float32 mono 16 kHz, with the duration soundfile reports (+-1 sample)
    and samples in range."""
    info = sf.info(str(path))
    waveform = load_audio(path)
    assert waveform.dtype == np.float32 and waveform.ndim == 1
    expected = info.frames * SAMPLE_RATE / info.samplerate
    assert abs(waveform.size - expected) <= 1, (waveform.size, expected)
    assert 0.5 < waveform.size / SAMPLE_RATE < 60
    assert np.abs(waveform).max() <= 1.05 and np.abs(waveform).max() > 1e-3


@pytest.mark.skipif(not (DATA / "audio-stereo-16-bit-44100Hz.wav").exists(), reason="shared audio data not present")
def test_stereo_is_mean_of_channels():
    """Stereo mixes to the mean of the two channels before resampling."""
    data, rate = sf.read(str(DATA / "audio-stereo-16-bit-44100Hz.wav"), dtype="float32", always_2d=True)
    expected = resample(data.mean(axis=1).astype(np.float32), rate)
    np.testing.assert_allclose(load_audio(DATA / "audio-stereo-16-bit-44100Hz.wav"), expected, atol=1e-6)


@pytest.mark.parametrize("subtype", ["PCM_16", "PCM_24", "PCM_32", "FLOAT"])
def test_wav_subtypes_and_resampling(tmp_path, subtype):
    """A 440 Hz tone at 8 kHz in any WAV sample format comes back as the same tone at 16 kHz."""
    t = np.arange(8000) / 8000
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    path = tmp_path / f"tone_{subtype}.wav"
    sf.write(str(path), tone, 8000, subtype=subtype)
    out = load_audio(path)
    assert out.size == 16000
    ref = 0.5 * np.sin(2 * np.pi * 440 * np.arange(16000) / 16000)
    # soxr's filter delay is compensated; away from the edges the tone matches to 1e-2
    np.testing.assert_allclose(out[500:-500], ref[500:-500], atol=1e-2)


def test_text_file_is_rejected_with_name(tmp_path):
    path = tmp_path / "english.txt"
    path.write_text("hello, this is not audio\n" * 20)
    with pytest.raises(AudioLoadError, match=r"english\.txt: not an audio file soundfile can read"):
        load_audio(path)


def test_empty_file_is_rejected(tmp_path):
    path = tmp_path / "empty.wav"
    path.write_bytes(b"")
    with pytest.raises(AudioLoadError, match=r"empty\.wav"):
        load_audio(path)


def test_missing_file_is_rejected(tmp_path):
    with pytest.raises(AudioLoadError, match=r"nothere\.wav: no such file"):
        load_audio(tmp_path / "nothere.wav")


def test_zero_length_wav_is_rejected(tmp_path):
    path = tmp_path / "zero.wav"
    sf.write(str(path), np.zeros(0, dtype=np.float32), 16000)
    with pytest.raises(AudioLoadError, match=r"zero\.wav: contains no audio samples"):
        load_audio(path)


def test_audio_load_error_is_value_error():
    assert issubclass(AudioLoadError, ValueError)


def test_to_mono_and_resample_shapes():
    stereo = np.stack([np.ones(10), -np.ones(10) * 0.5], axis=1)
    np.testing.assert_allclose(to_mono(stereo), 0.25)
    assert to_mono(np.zeros(5, dtype=np.float64)).dtype == np.float32
    with pytest.raises(ValueError, match="shape"):
        to_mono(np.zeros((2, 2, 2)))
    assert resample(np.zeros(48000, dtype=np.float32), 48000).size == 16000
    with pytest.raises(ValueError, match="sample rate"):
        resample(np.zeros(10, dtype=np.float32), 0)


def test_decode_pcm_s16le_and_f32le():
    """Interleaved stereo int16 and float32 frames decode to the mean of the channels in [-1, 1]."""
    pcm = np.array([[16384, -16384], [32767, 32767], [-32768, 0]], dtype="<i2")
    out = decode_pcm(pcm.tobytes(), "pcm_s16le", channels=2)
    np.testing.assert_allclose(out, [0.0, 32767 / 32768, -0.5], atol=1e-7)
    f = np.array([0.25, -0.75, 1.0], dtype="<f4")
    np.testing.assert_array_equal(decode_pcm(f.tobytes(), "pcm_f32le"), f)


def test_decode_pcm_rejects_bad_input():
    with pytest.raises(ValueError, match="whole number"):
        decode_pcm(b"\x00\x01\x02", "pcm_s16le", channels=1)
    with pytest.raises(ValueError, match="unknown PCM encoding"):
        decode_pcm(b"", "mulaw")
    with pytest.raises(ValueError, match="channels"):
        decode_pcm(b"", "pcm_s16le", channels=0)
