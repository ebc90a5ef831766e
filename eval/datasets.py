"""The manifest format and converters from local copies of public speech datasets.

A manifest is JSONL, one utterance per line:
    {"id": "...", "audio": "relative/to/manifest.wav", "text": "...", "language": "en",
     "translation": "...", "target_language": "de"}      # the last two only for translation sets
Audio paths are relative to the manifest's folder (absolute paths are accepted on reading).
Converters return `Utterance` lists whose audio paths are absolute; `write_manifest` makes them relative.
"""
from __future__ import annotations

import csv
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from .metrics import base_language

REQUIRED = ("id", "audio", "text", "language")


class ManifestError(ValueError):
    """A manifest or dataset file that cannot be read; the message names the file and line."""


@dataclass(frozen=True)
class Utterance:
    id: str
    audio: Path  # absolute
    text: str
    language: str
    translation: str | None = None
    target_language: str | None = None

    def to_dict(self, base: Path | None = None) -> dict:
        """JSON form; `audio` relative to `base` when given (the manifest's folder)."""
        audio = os.path.relpath(self.audio, base) if base is not None else str(self.audio)
        d = {"id": self.id, "audio": Path(audio).as_posix(), "text": self.text, "language": self.language}
        if self.translation is not None:
            d["translation"] = self.translation
        if self.target_language is not None:
            d["target_language"] = self.target_language
        return d


def _parse_line(raw: str, where: str, base: Path, check_audio: bool) -> Utterance:
    try:
        obj = json.loads(raw)
    except json.JSONDecodeError as e:
        raise ManifestError(f"{where}: malformed JSON ({e.msg} at column {e.colno})") from None
    if not isinstance(obj, dict):
        raise ManifestError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    for name in REQUIRED:
        if name not in obj:
            raise ManifestError(f"{where}: missing field {name!r} (required: {', '.join(REQUIRED)})")
        if not isinstance(obj[name], str):
            raise ManifestError(f"{where}: field {name!r} must be a string, got {type(obj[name]).__name__}")
    for name in ("translation", "target_language"):
        if obj.get(name) is not None and not isinstance(obj[name], str):
            raise ManifestError(f"{where}: field {name!r} must be a string, got {type(obj[name]).__name__}")
    if (obj.get("translation") is None) != (obj.get("target_language") is None):
        raise ManifestError(f"{where}: 'translation' and 'target_language' must be given together")
    audio = Path(os.path.normpath(base / obj["audio"]))  # normpath, not resolve: keep symlinked folders
    if check_audio and not audio.is_file():
        raise ManifestError(f"{where}: audio file not found: {audio}")
    return Utterance(obj["id"], audio, obj["text"], obj["language"], obj.get("translation"),
                     obj.get("target_language"))


def read_manifest(path: str | Path, check_audio: bool = True) -> list[Utterance]:
    """Read a JSONL manifest; blank lines are skipped; ids must be unique."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ManifestError(f"cannot read manifest {path}: {e}") from None
    out, seen = [], {}
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        where = f"{path} line {number}"
        utt = _parse_line(raw, where, path.parent.absolute(), check_audio)
        if utt.id in seen:
            raise ManifestError(f"{where}: duplicate id {utt.id!r} (first on line {seen[utt.id]})")
        seen[utt.id] = number
        out.append(utt)
    return out


def write_manifest(path: str | Path, utterances: Iterable[Utterance]) -> int:
    """Write a manifest atomically (temporary file, then rename); returns the number of lines."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    base = path.parent.absolute()
    tmp = path.with_name(path.name + ".tmp")
    count = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for utt in utterances:
            f.write(json.dumps(utt.to_dict(base), ensure_ascii=False) + "\n")
            count += 1
    os.replace(tmp, path)
    return count


def _need_audio(audio: Path, where: str) -> Path:
    if not audio.is_file():
        raise ManifestError(f"{where}: audio file not found: {audio}")
    return Path(os.path.normpath(audio.absolute()))


# ---- LibriSpeech: <root>/<speaker>/<chapter>/<speaker>-<chapter>.trans.txt + <utterance id>.flac


def from_librispeech(root: str | Path) -> list[Utterance]:
    """Every `*.trans.txt` under `root` (lines `ID TRANSCRIPT`), audio `ID.flac` beside it."""
    root = Path(root)
    transcripts = sorted(root.rglob("*.trans.txt"))
    if not transcripts:
        raise ManifestError(f"no *.trans.txt files under {root}: not a LibriSpeech tree")
    out = []
    for trans in transcripts:
        for number, line in enumerate(trans.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            uid, _, text = line.strip().partition(" ")
            where = f"{trans} line {number}"
            if not text:
                raise ManifestError(f"{where}: expected 'ID TRANSCRIPT', got {line!r}")
            out.append(Utterance(uid, _need_audio(trans.parent / f"{uid}.flac", where), text, "en"))
    return out


# ---- FLEURS: <lang>/<split>.tsv (no header) + audio in <lang>/audio/<split>/ or <lang>/<split>/
# columns: id, file name, raw transcription, normalized transcription, characters, num samples, gender

FLEURS_COLUMNS = ("id", "file_name", "raw_transcription", "transcription", "characters", "num_samples", "gender")


def _fleurs_audio_dir(tsv: Path) -> Path:
    split = tsv.stem
    for candidate in (tsv.parent / "audio" / split, tsv.parent / split, tsv.parent / "audio"):
        if candidate.is_dir():
            return candidate
    raise ManifestError(f"{tsv}: no audio folder found (looked for audio/{split}/, {split}/, audio/ beside it)")


def from_fleurs(tsv: str | Path, audio_dir: str | Path | None = None, language: str | None = None,
                normalized_text: bool = False) -> list[Utterance]:
    """One FLEURS split. Text is the raw transcription (cased, punctuated) unless `normalized_text`.
    The language defaults to the folder name (`fr_fr` -> `fr`, `cmn_hans_cn` -> `zh`)."""
    tsv = Path(tsv)
    audio_dir = Path(audio_dir) if audio_dir else _fleurs_audio_dir(tsv)
    language = language or base_language(tsv.parent.name)
    out = []
    for number, row in _tsv_rows(tsv, header=False):
        where = f"{tsv} line {number}"
        if len(row) < 4:
            raise ManifestError(f"{where}: expected at least 4 tab-separated columns "
                                f"({', '.join(FLEURS_COLUMNS[:4])}), got {len(row)}")
        text = row[3] if normalized_text else row[2]
        # sentence ids repeat (several speakers read each sentence): the file name is the unique id
        out.append(Utterance(Path(row[1]).stem, _need_audio(audio_dir / row[1], where), text, language))
    return out


def _tsv_rows(path: Path, header: bool):
    """(line number, row) pairs of a tab-separated file; Common Voice text may hold quotes, so no quoting."""
    try:
        with open(path, encoding="utf-8", newline="") as f:
            rows = list(csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE))
    except (OSError, UnicodeDecodeError) as e:
        raise ManifestError(f"cannot read {path}: {e}") from None
    start = 1 if header else 0
    return [(i + 1, row) for i, row in enumerate(rows) if i >= start and any(cell.strip() for cell in row)]


def _tsv_dicts(path: Path, required: tuple[str, ...]) -> list[tuple[int, dict]]:
    rows = _tsv_rows(path, header=False)
    if not rows:
        raise ManifestError(f"{path}: empty file, expected a header line")
    header = rows[0][1]
    missing = [c for c in required if c not in header]
    if missing:
        raise ManifestError(f"{path}: header lacks column(s) {', '.join(missing)}; found {', '.join(header)}")
    return [(n, dict(zip(header, row))) for n, row in rows[1:]]


# ---- Common Voice: <lang>/<split>.tsv with columns path, sentence (, locale ...) + <lang>/clips/


def from_common_voice(tsv: str | Path, clips_dir: str | Path | None = None,
                      language: str | None = None) -> list[Utterance]:
    """One Common Voice split (test.tsv, dev.tsv, validated.tsv ...); clips default to `clips/` beside it."""
    tsv = Path(tsv)
    clips = Path(clips_dir) if clips_dir else tsv.parent / "clips"
    out = []
    for number, row in _tsv_dicts(tsv, ("path", "sentence")):
        where = f"{tsv} line {number}"
        lang = language or row.get("locale") or tsv.parent.name
        out.append(Utterance(Path(row["path"]).stem, _need_audio(clips / row["path"], where), row["sentence"],
                             lang))
    return out


# ---- CoVoST 2: covost_v2.<src>_<tgt>[.<split>].tsv (path, sentence, translation, client_id[, split])
#      with the audio in the source language's Common Voice clips/ folder

_COVOST_NAME = re.compile(r"^covost_v2\.([a-z-]+)_([a-z-]+)(?:\.(\w+))?\.tsv$", re.IGNORECASE)


def from_covost2(tsv: str | Path, clips_dir: str | Path, split: str | None = None) -> list[Utterance]:
    """CoVoST 2 pairs for one language direction; `split` keeps only rows of that split when the
    tsv has a `split` column (the release's combined file) and is otherwise ignored."""
    tsv, clips = Path(tsv), Path(clips_dir)
    match = _COVOST_NAME.match(tsv.name)
    if not match:
        raise ManifestError(f"{tsv}: expected a name like covost_v2.fr_en.tsv or covost_v2.fr_en.test.tsv")
    source, target = match[1], match[2]
    out = []
    for number, row in _tsv_dicts(tsv, ("path", "sentence", "translation")):
        if split and row.get("split", split) != split:
            continue
        where = f"{tsv} line {number}"
        out.append(Utterance(Path(row["path"]).stem, _need_audio(clips / row["path"], where), row["sentence"],
                             source, row["translation"], target))
    return out
