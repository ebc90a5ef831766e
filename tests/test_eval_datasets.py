"""Manifest reading/writing and the dataset converters, on tiny fake dataset trees."""
import json
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from eval import datasets
from eval.datasets import ManifestError, Utterance, read_manifest, write_manifest


def silence(path: Path, seconds: float = 0.1, fmt: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(path, np.zeros(int(16000 * seconds), dtype=np.float32), 16000, format=fmt)
    return path


def test_manifest_round_trip_with_relative_paths(tmp_path):
    a = silence(tmp_path / "audio" / "a.wav")
    utts = [Utterance("a", a, "hello", "en"), Utterance("b", a, "bonjour", "fr", "hello", "en")]
    manifest = tmp_path / "sets" / "m.jsonl"
    assert write_manifest(manifest, utts) == 2
    first = json.loads(manifest.read_text().splitlines()[0])
    assert first == {"id": "a", "audio": "../audio/a.wav", "text": "hello", "language": "en"}
    assert read_manifest(manifest) == [Utterance("a", a.absolute(), "hello", "en"),
                                       Utterance("b", a.absolute(), "bonjour", "fr", "hello", "en")]


@pytest.mark.parametrize("line,message", [
    ('{"id": "x", "audio": "a.wav", "text": "t"', "line 2: malformed JSON"),
    ('["not", "an", "object"]', "line 2: expected a JSON object"),
    ('{"id": "x", "audio": "a.wav", "language": "en"}', "line 2: missing field 'text'"),
    ('{"id": 3, "audio": "a.wav", "text": "t", "language": "en"}', "line 2: field 'id' must be a string"),
    ('{"id": "x", "audio": "nope.wav", "text": "t", "language": "en"}', "line 2: audio file not found"),
    ('{"id": "a", "audio": "a.wav", "text": "t", "language": "en"}', "line 2: duplicate id 'a' \\(first on line 1\\)"),
    ('{"id": "x", "audio": "a.wav", "text": "t", "language": "en", "translation": "u"}',
     "line 2: 'translation' and 'target_language' must be given together"),
])
def test_manifest_errors_name_the_line(tmp_path, line, message):
    silence(tmp_path / "a.wav")
    m = tmp_path / "m.jsonl"
    m.write_text('{"id": "a", "audio": "a.wav", "text": "t", "language": "en"}\n' + line + "\n")
    with pytest.raises(ManifestError, match=message):
        read_manifest(m)


def test_librispeech(tmp_path):
    chapter = tmp_path / "LibriSpeech" / "test-clean" / "1089" / "134686"
    for i in range(2):
        silence(chapter / f"1089-134686-000{i}.flac", fmt="FLAC")
    (chapter / "1089-134686.trans.txt").write_text("1089-134686-0000 HE HOPED THERE\n1089-134686-0001 STUFF IT\n")
    utts = datasets.from_librispeech(tmp_path / "LibriSpeech")
    assert [(u.id, u.text, u.language) for u in utts] == [("1089-134686-0000", "HE HOPED THERE", "en"),
                                                          ("1089-134686-0001", "STUFF IT", "en")]
    assert utts[0].audio == (chapter / "1089-134686-0000.flac").absolute()
    (chapter / "1089-134686-0001.flac").unlink()
    with pytest.raises(ManifestError, match="1089-134686.trans.txt line 2: audio file not found"):
        datasets.from_librispeech(tmp_path)


def test_fleurs(tmp_path):
    lang = tmp_path / "fleurs" / "fr_fr"
    silence(lang / "audio" / "test" / "123.wav")
    silence(lang / "audio" / "test" / "124.wav")
    (lang / "test.tsv").write_text(
        "7\t123.wav\tBonjour, le Monde.\tbonjour le monde\tb o n j o u r |\t1600\tFEMALE\n"
        "7\t124.wav\tBonjour, le Monde.\tbonjour le monde\tb o n j o u r |\t1600\tMALE\n")
    utts = datasets.from_fleurs(lang / "test.tsv")
    assert [(u.id, u.text, u.language) for u in utts] == [("123", "Bonjour, le Monde.", "fr"),
                                                          ("124", "Bonjour, le Monde.", "fr")]
    assert datasets.from_fleurs(lang / "test.tsv", normalized_text=True)[0].text == "bonjour le monde"
    (lang / "test.tsv").write_text("7\t123.wav\n")
    with pytest.raises(ManifestError, match="test.tsv line 1: expected at least 4"):
        datasets.from_fleurs(lang / "test.tsv")


def test_common_voice(tmp_path):
    cv = tmp_path / "cv-corpus" / "de"
    silence(cv / "clips" / "common_voice_de_1.mp3", fmt="MP3")
    (cv / "test.tsv").write_text('client_id\tpath\tsentence\tup_votes\tlocale\n'
                                 'abc\tcommon_voice_de_1.mp3\tEr sagte "Hallo".\t2\tde\n')
    utts = datasets.from_common_voice(cv / "test.tsv")
    assert [(u.id, u.text, u.language) for u in utts] == [("common_voice_de_1", 'Er sagte "Hallo".', "de")]
    (cv / "bad.tsv").write_text("client_id\tfile\n")
    with pytest.raises(ManifestError, match="header lacks column\\(s\\) path, sentence"):
        datasets.from_common_voice(cv / "bad.tsv")


def test_covost2(tmp_path):
    clips = tmp_path / "fr" / "clips"
    silence(clips / "c1.mp3", fmt="MP3")
    silence(clips / "c2.mp3", fmt="MP3")
    tsv = tmp_path / "covost_v2.fr_en.tsv"
    tsv.write_text("path\tsentence\ttranslation\tclient_id\tsplit\n"
                   "c1.mp3\tBonjour.\tHello.\tx\ttest\n"
                   "c2.mp3\tMerci.\tThanks.\ty\ttrain\n")
    utts = datasets.from_covost2(tsv, clips, split="test")
    assert utts == [Utterance("c1", (clips / "c1.mp3").absolute(), "Bonjour.", "fr", "Hello.", "en")]
    assert len(datasets.from_covost2(tsv, clips)) == 2
    with pytest.raises(ManifestError, match="expected a name like covost_v2.fr_en.tsv"):
        datasets.from_covost2(tmp_path / "pairs.tsv", clips)


def test_prepare_command(tmp_path, capsys):
    from eval import prepare

    chapter = tmp_path / "ls" / "1" / "2"
    silence(chapter / "1-2-0000.flac", fmt="FLAC")
    (chapter / "1-2.trans.txt").write_text("1-2-0000 A WORD\n")
    out = tmp_path / "sets" / "ls.jsonl"
    assert prepare.main(["librispeech", str(tmp_path / "ls"), "--out", str(out)]) == 0
    assert [u.text for u in read_manifest(out)] == ["A WORD"]
    assert prepare.main(["librispeech", str(tmp_path / "sets"), "--out", str(out)]) == 2
    assert "no *.trans.txt files under" in capsys.readouterr().err
