"""Result files: txt, json, srt and vtt, each written atomically.

Formats (all UTF-8, "\\n" line ends):
- txt: the transcript on one line; when there is a translation, a blank line and the translation.
  An empty transcript (and no translation) gives an empty file.
- json: {"text", "translation", "task", "language", "target_language", ...metadata (e.g. "source",
  "model"), "segments": [{"start", "end", "text", "translation"}], "skipped": [{"start", "end"}]},
  times in seconds rounded to the millisecond, non-ASCII kept as is.
- srt: numbered cues, `HH:MM:SS,mmm --> HH:MM:SS,mmm`, the text, then the translation as a second
  line when present; cues separated by a blank line.
- vtt: `WEBVTT` header, cues `HH:MM:SS.mmm --> HH:MM:SS.mmm`, same lines; &, < and > escaped as
  WebVTT requires (which also keeps "-->" out of cue text).
Segments with neither text nor translation make no cue. Hours are never wrapped (100 h = "100:").

Atomic: the file is written to a hidden temporary file in the target directory, fsynced, then
renamed over the target with os.replace, so a crash leaves either the old file or the new one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

FORMATS = ("txt", "json", "srt", "vtt")

# Files get the permissions a plain open() would give (umask applied), not mkstemp's 0600.
_UMASK = os.umask(0)
os.umask(_UMASK)


def _check_format(fmt: str) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"unknown output format {fmt!r}: expected one of {', '.join(FORMATS)}")
    return fmt


def output_path(input_path: str | os.PathLike, output_dir: str | os.PathLike | None, fmt: str) -> Path:
    """`output_dir/<input stem>.<fmt>` (next to the input when output_dir is None).

    Refuses to name the input file itself (e.g. notes.txt -> notes.txt).
    """
    source = Path(input_path)
    target = Path(output_dir if output_dir is not None else source.parent) / f"{source.stem}.{_check_format(fmt)}"
    if target.resolve() == source.resolve():
        raise ValueError(f"output file {target} would overwrite the input {source}; choose another output directory")
    return target


def _one_line(text: str | None) -> str:
    # A newline inside a cue would end it (srt/vtt) or break the one-line txt layout.
    return " ".join(text.split()) if text else ""


def timestamp(seconds: float, decimal: str = ",") -> str:
    """`HH:MM:SS,mmm` (srt) or with decimal='.' `HH:MM:SS.mmm` (vtt)."""
    if not seconds >= 0:
        raise ValueError(f"timestamps must be >= 0 seconds, got {seconds!r}")
    ms = int(round(seconds * 1000))
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{decimal}{ms:03d}"


def _cues(transcription: Any, decimal: str, escape) -> list[str]:
    cues = []
    for seg in transcription.segments:
        lines = [escape(_one_line(t)) for t in (seg.text, seg.translation) if _one_line(t)]
        if not lines:
            continue
        end = max(seg.end, seg.start)  # a zero-length segment still gets a valid cue
        times = f"{timestamp(seg.start, decimal)} --> {timestamp(end, decimal)}"
        cues.append("\n".join([times, *lines]) + "\n")
    return cues


def render_txt(transcription: Any) -> str:
    parts = [_one_line(transcription.text)]
    if _one_line(transcription.translation):
        parts.append(_one_line(transcription.translation))
    body = "\n\n".join(parts)
    return body + "\n" if body else ""


def render_srt(transcription: Any) -> str:
    cues = _cues(transcription, ",", lambda s: s)
    return "\n".join(f"{i}\n{cue}" for i, cue in enumerate(cues, start=1))


def _vtt_escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def render_vtt(transcription: Any) -> str:
    return "WEBVTT\n" + "".join("\n" + cue for cue in _cues(transcription, ".", _vtt_escape))


def render_json(transcription: Any, metadata: dict | None = None) -> str:
    doc: dict[str, Any] = {
        "text": transcription.text,
        "translation": transcription.translation,
        "task": getattr(transcription, "task", None),
        "language": getattr(transcription, "language", None),
        "target_language": getattr(transcription, "target_language", None),
    }
    for key, value in (metadata or {}).items():
        if value is not None or key not in doc:  # metadata fills gaps, never blanks a known value
            doc[key] = value
    doc["segments"] = [
        {"start": round(s.start, 3), "end": round(s.end, 3), "text": s.text, "translation": s.translation}
        for s in transcription.segments
    ]
    doc["skipped"] = [
        {"start": round(w.start, 3), "end": round(w.end, 3)} for w in getattr(transcription, "skipped", [])
    ]
    return json.dumps(doc, ensure_ascii=False, indent=2) + "\n"


def render(transcription: Any, fmt: str, metadata: dict | None = None) -> str:
    """The file contents for `fmt`; `metadata` (source file, model, ...) only goes into json."""
    fmt = _check_format(fmt)
    if fmt == "json":
        return render_json(transcription, metadata)
    return {"txt": render_txt, "srt": render_srt, "vtt": render_vtt}[fmt](transcription)


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` (UTF-8) to `path` so that readers only ever see the old or the new file."""
    path = Path(path)
    try:
        mode = path.stat().st_mode & 0o7777  # keep the permissions of the file we replace
    except FileNotFoundError:
        mode = 0o666 & ~_UMASK
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())  # the data is on disk before the rename makes it visible
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(directory: Path) -> None:
    # Makes the rename itself durable; not possible on every platform/filesystem, hence best effort.
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def write_result(
    transcription: Any, path: str | os.PathLike, fmt: str, metadata: dict | None = None
) -> Path:
    """Render `transcription` as `fmt` and write it atomically to `path`; returns the path."""
    return atomic_write_text(path, render(transcription, fmt, metadata))
