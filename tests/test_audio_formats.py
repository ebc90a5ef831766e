"""load_audio on every container/encoding users bring: the same tone comes back from each."""
import numpy as np
import pytest
import soundfile as sf

from audio_encoder.audio import load_audio

CASES = [("wav", "WAV", "PCM_U8"), ("wav", "WAV", "PCM_16"), ("wav", "WAV", "PCM_24"), ("wav", "WAV", "PCM_32"),
         ("wav", "WAV", "FLOAT"), ("flac", "FLAC", "PCM_16"), ("ogg", "OGG", "VORBIS"), ("aiff", "AIFF", "PCM_16"),
         ("mp3", "MP3", "MPEG_LAYER_III")]


@pytest.mark.parametrize("ext, fmt, subtype", CASES)
def test_tone_survives_each_format(tmp_path, ext, fmt, subtype):
    rate = 22050
    t = np.arange(rate) / rate
    tone = (0.5 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    path = tmp_path / f"tone.{ext}"
    sf.write(path, np.stack([tone, tone], axis=1), rate, format=fmt, subtype=subtype)
    wave = load_audio(path)
    assert wave.dtype == np.float32 and wave.ndim == 1
    assert abs(len(wave) - 16000) < 1600  # lossy codecs pad a little
    spectrum = np.abs(np.fft.rfft(wave[:16000 // 2 * 2]))
    peak_hz = np.argmax(spectrum) * 16000 / (len(wave[:16000 // 2 * 2]))
    assert abs(peak_hz - 440) < 5
    assert 0.3 < np.abs(wave).max() < 0.7
