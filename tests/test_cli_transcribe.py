"""`asr transcribe` / `asr translate` / `asr info` / `asr init-random` as a user runs them."""
import json
import subprocess
import sys

import pytest

from conftest import SHARED_AUDIO

AUDIO = sorted(p for p in SHARED_AUDIO.iterdir() if p.suffix in {".wav", ".flac", ".aiff", ".mp3", ".ogg"})


def asr(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "asr", *map(str, args)], capture_output=True, text=True,
                          cwd=cwd, timeout=600)


def test_shared_audio_present():
    assert len(AUDIO) >= 5, f"expected the shared recordings in {SHARED_AUDIO}"


def test_transcribe_every_shared_file_in_every_format(random_checkpoint, tmp_path):
    out = tmp_path / "out"
    r = asr("transcribe", *AUDIO, "--model", random_checkpoint, "--format", "all", "--output-dir", out,
            "--max-new-tokens", "8")
    assert r.returncode == 0, r.stderr
    for audio in AUDIO:
        for fmt in ("txt", "json", "srt", "vtt"):
            assert (out / f"{audio.stem}.{fmt}").exists(), f"{audio.stem}.{fmt} not written"
        data = json.loads((out / f"{audio.stem}.json").read_text())
        assert data["source"] == str(audio) and data["task"] == "transcribe"
        assert all(0 <= s["start"] <= s["end"] for s in data["segments"])
        assert (out / f"{audio.stem}.vtt").read_text().startswith("WEBVTT")
    assert not [p for p in out.iterdir() if p.name.startswith(".")], "temporary files left behind"


def test_text_file_gives_one_line_error(random_checkpoint, tmp_path):
    bad = tmp_path / "notes.txt"
    bad.write_text("this is not audio\n")
    r = asr("transcribe", bad, "--model", random_checkpoint, "--output-dir", tmp_path)
    assert r.returncode != 0
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "notes.txt" in lines[0] and "Traceback" not in r.stderr


def test_bad_file_among_good_ones_is_skipped(random_checkpoint, tmp_path):
    bad = tmp_path / "empty.wav"
    bad.write_bytes(b"")
    r = asr("transcribe", bad, AUDIO[0], "--model", random_checkpoint, "--output-dir", tmp_path,
            "--max-new-tokens", "4")
    assert r.returncode == 1
    assert "empty.wav" in r.stderr and "Traceback" not in r.stderr
    assert (tmp_path / f"{AUDIO[0].stem}.txt").exists()


def test_translate_writes_translation_field(random_checkpoint, tmp_path):
    r = asr("translate", AUDIO[0], "--model", random_checkpoint, "--target-language", "en",
            "--source-language", "es", "--format", "json", "--output-dir", tmp_path, "--max-new-tokens", "6")
    assert r.returncode == 0, r.stderr
    data = json.loads((tmp_path / f"{AUDIO[0].stem}.json").read_text())
    assert data["task"] == "translate" and data["target_language"] == "en"
    assert "translation" in data


@pytest.mark.parametrize("args, message", [
    (["--model", "/nonexistent/dir"], "not a directory"),
    (["--format", "docx"], "--format"),
    (["--dtype", "int3"], "dtype"),
    (["--beam-size", "0"], "beam_size"),
    (["--beam-size", "2", "--temperature", "0.7"], "temperature 0"),
])
def test_user_mistakes_are_one_line_errors(random_checkpoint, tmp_path, args, message):
    base = ["transcribe", AUDIO[0], "--output-dir", tmp_path]
    if "--model" not in args:
        base += ["--model", random_checkpoint]
    r = asr(*base, *args)
    assert r.returncode == 2
    assert message in r.stderr and "Traceback" not in r.stderr


def test_info_describes_the_model(random_checkpoint):
    r = asr("info", "--model", random_checkpoint)
    assert r.returncode == 0, r.stderr
    assert "conformer layers" in r.stdout and "parameters" in r.stdout and str(random_checkpoint) in r.stdout


def test_model_without_tokenizer_loads_but_cannot_transcribe(random_checkpoint, tmp_path):
    import shutil

    import numpy as np

    import asr as api
    from asr.model import TokenizerMissing

    bare = tmp_path / "bare"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(random_checkpoint / name, bare / name)
    model = api.load_model(bare)
    assert model.tokenizer is None
    with pytest.raises(TokenizerMissing, match="tokenizer.model or tokenizer.json"):
        model.transcribe(np.zeros(16000, dtype=np.float32) + 0.01 * np.random.randn(16000).astype(np.float32))
