"""Synthetic audio: espeak-ng at 16 kHz, deterministic rendering, level/padding/noise, cached datasets."""
import dataclasses
import json
import shutil

import numpy as np
import pytest
import soundfile as sf

pytest.importorskip("wordfreq")
if shutil.which("espeak-ng") is None:
    pytest.skip("espeak-ng is not installed", allow_module_level=True)

from asr.synth import (AUDIO_SUFFIX, SAMPLE_RATE, SynthOptions, build_dataset,  # noqa: E402
                       build_heldout, example_spec, read_manifest, render, synthesize)


def test_synthesize_gives_16khz_speech():
    audio = synthesize("Hello world, this is a test.", "en")
    assert audio.dtype == np.float32 and audio.ndim == 1
    assert 0.8 < audio.size / SAMPLE_RATE < 4.0, f"duration {audio.size / SAMPLE_RATE:.2f} s"
    assert np.abs(audio).max() > 0.05, "speech must not be silent"
    with pytest.raises(ValueError, match="empty"):
        synthesize("  ", "es")
    for voice in ("xx-bogus", "es+nosuch"):  # espeak-ng itself would fall back to another voice silently
        with pytest.raises(RuntimeError, match=voice.replace("+", r"\+")):
            synthesize("hola", "es", voice=voice)


def test_render_level_padding_and_determinism():
    spec = dataclasses.replace(example_spec(0, 1), peak_db=-6.0, snr_db=None, pad_left=0.25, pad_right=0.1)
    audio = render(spec)
    assert np.array_equal(audio, render(spec)), "rendering must be bit-exact repeatable"
    assert abs(np.abs(audio).max() - 10 ** (-6 / 20)) < 1e-3, "peak at -6 dBFS (tol 1e-3)"
    assert not audio[: round(0.25 * SAMPLE_RATE)].any(), "leading silence pad is exactly zero"
    noisy = render(dataclasses.replace(spec, snr_db=20.0))
    noise = noisy - audio
    speech_rms = np.sqrt(np.mean(audio[round(0.25 * SAMPLE_RATE):-round(0.1 * SAMPLE_RATE)] ** 2))
    snr = 20 * np.log10(speech_rms / noise.std())
    assert abs(snr - 20.0) < 0.5, f"SNR {snr:.2f} dB, expected 20 +- 0.5"


def test_dataset_is_written_cached_and_guarded(tmp_path):
    options = SynthOptions(max_words=4)
    manifest = build_dataset(tmp_path / "train", count=3, seed=1, options=options, workers=2)
    records = read_manifest(manifest)
    assert [r["id"] for r in records] == [example_spec(1, i, options).id for i in range(3)]
    for r in records:
        audio, rate = sf.read(r["audio"], dtype="float32")
        assert rate == SAMPLE_RATE and audio.size > SAMPLE_RATE // 4
    first = json.loads(manifest.read_text().splitlines()[0])
    assert first["audio"] == f"audio/{first['id']}{AUDIO_SUFFIX}", "audio path is relative to the manifest"
    stamp = (tmp_path / "train" / "audio" / f"{first['id']}{AUDIO_SUFFIX}").stat().st_mtime_ns
    assert build_dataset(tmp_path / "train", count=3, seed=1, options=options) == manifest
    assert (tmp_path / "train" / "audio" / f"{first['id']}{AUDIO_SUFFIX}").stat().st_mtime_ns == stamp, "cache reused"
    with pytest.raises(ValueError, match="other settings"):
        build_dataset(tmp_path / "train", count=3, seed=2, options=options)


def test_heldout_excludes_training_texts(tmp_path):
    taken = example_spec(1_000_003, 0, dataclasses.replace(SynthOptions(), languages=("it",))).text
    manifest = build_heldout(tmp_path / "heldout", per_language=1, languages=("it", "pt"),
                             exclude_texts=[taken], workers=1)
    records = read_manifest(manifest)
    assert [r["language"] for r in records] == ["it", "pt"]
    assert all(r["voice"] in ("it", "pt") and r["speed"] == 175 for r in records)
    assert taken not in {r["text"] for r in records}
