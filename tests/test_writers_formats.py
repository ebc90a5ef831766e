"""Result files: exact contents of each format, output paths, atomic writes."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

import asr.writers as writers
from asr.longform import Segment, Transcription, Window
from asr.writers import FORMATS, output_path, render, timestamp, write_result

SR = 16000

SMALL = Transcription(
    text="Hello world. Ça va? <b>&",
    translation=None,
    segments=[
        Segment(1.0, 2.5, "Hello world."),
        Segment(3723.0456, 3725.9999, "Ça va?\n<b>&"),  # 1 h 2 min 3.046 s
    ],
    task="transcribe",
    language="en",
)

TRANSLATED = Transcription(
    text="Bonjour.",
    translation="Hello.",
    segments=[Segment(0.0, 1.25, "Bonjour.", "Hello."), Segment(2.0, 2.0, "", None)],
    task="translate",
    language="fr",
    target_language="en",
    skipped=[Window(0, 30 * SR)],
)

EMPTY = Transcription(text="", translation=None, segments=[])


def test_timestamps() -> None:
    assert timestamp(0) == "00:00:00,000"
    assert timestamp(1.0) == "00:00:01,000"
    assert timestamp(3723.0456, ".") == "01:02:03.046"
    assert timestamp(59.9996) == "00:01:00,000"  # rounds to the millisecond, carrying over
    assert timestamp(360000.0) == "100:00:00,000"
    with pytest.raises(ValueError, match=">= 0"):
        timestamp(-0.5)


def test_txt() -> None:
    assert render(SMALL, "txt") == "Hello world. Ça va? <b>&\n"
    assert render(TRANSLATED, "txt") == "Bonjour.\n\nHello.\n"
    assert render(EMPTY, "txt") == ""


def test_srt() -> None:
    assert render(SMALL, "srt") == (
        "1\n00:00:01,000 --> 00:00:02,500\nHello world.\n"
        "\n"
        "2\n01:02:03,046 --> 01:02:06,000\nÇa va? <b>&\n"
    )
    # The translation is the cue's second line; a segment without text makes no cue.
    assert render(TRANSLATED, "srt") == "1\n00:00:00,000 --> 00:00:01,250\nBonjour.\nHello.\n"
    assert render(EMPTY, "srt") == ""


def test_vtt() -> None:
    assert render(SMALL, "vtt") == (
        "WEBVTT\n"
        "\n00:00:01.000 --> 00:00:02.500\nHello world.\n"
        "\n01:02:03.046 --> 01:02:06.000\nÇa va? &lt;b&gt;&amp;\n"
    )
    assert render(TRANSLATED, "vtt") == "WEBVTT\n\n00:00:00.000 --> 00:00:01.250\nBonjour.\nHello.\n"
    assert render(EMPTY, "vtt") == "WEBVTT\n"


def test_json() -> None:
    meta = {"source": "talk.wav", "model": "/models/e2b", "language": None}
    doc = json.loads(render(TRANSLATED, "json", meta))
    assert doc == {
        "text": "Bonjour.",
        "translation": "Hello.",
        "task": "translate",
        "language": "fr",  # metadata's None does not blank the known language
        "target_language": "en",
        "source": "talk.wav",
        "model": "/models/e2b",
        "segments": [
            {"start": 0.0, "end": 1.25, "text": "Bonjour.", "translation": "Hello."},
            {"start": 2.0, "end": 2.0, "text": "", "translation": None},
        ],
        "skipped": [{"start": 0.0, "end": 30.0}],
    }
    text = render(SMALL, "json")
    assert "Ça va?" in text  # non-ASCII kept readable
    assert json.loads(text)["segments"][1] == {"start": 3723.046, "end": 3726.0, "text": "Ça va?\n<b>&",
                                              "translation": None}
    assert json.loads(render(EMPTY, "json"))["segments"] == []


def test_output_path(tmp_path: Path) -> None:
    assert output_path("/data/in/talk.flac", tmp_path, "srt") == tmp_path / "talk.srt"
    assert output_path("/data/in/talk.v2.wav", None, "json") == Path("/data/in/talk.v2.json")
    with pytest.raises(ValueError, match="format 'doc'"):
        output_path("a.wav", tmp_path, "doc")
    with pytest.raises(ValueError, match="overwrite the input"):
        output_path(tmp_path / "notes.txt", tmp_path, "txt")


@pytest.mark.parametrize("fmt", FORMATS)
def test_write_leaves_only_the_file(tmp_path: Path, fmt: str) -> None:
    """Each format is written with exactly the rendered contents; no temporary file remains."""
    target = tmp_path / f"out.{fmt}"
    target.write_text("old contents")
    assert write_result(SMALL, target, fmt, {"source": "x.wav"}) == target
    assert target.read_text(encoding="utf-8") == render(SMALL, fmt, {"source": "x.wav"})
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name]


def test_new_file_gets_umask_permissions(tmp_path: Path) -> None:
    target = write_result(SMALL, tmp_path / "new.txt", "txt")
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask


@pytest.mark.parametrize("broken", ["fsync", "replace"])
def test_failed_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, broken: str) -> None:
    """A failure before the rename (disk full at fsync, rename refused) leaves the old file and no temp."""
    target = tmp_path / "out.srt"
    target.write_text("old contents")

    def fail(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(writers.os, broken, fail)
    with pytest.raises(OSError, match="No space"):
        write_result(SMALL, target, "srt")
    assert target.read_text() == "old contents"
    assert [p.name for p in tmp_path.iterdir()] == ["out.srt"]


def test_bad_format_writes_nothing(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="expected one of txt, json, srt, vtt"):
        write_result(SMALL, tmp_path / "x.doc", "doc")
    assert list(tmp_path.iterdir()) == []
