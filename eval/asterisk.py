"""A real-speech sample set from Debian's Asterisk prompt packages (studio recordings, CC-BY-SA: never commit
the audio; install it with
    apt-get install -y --no-install-recommends asterisk-core-sounds-{en,es,fr,it}-wav asterisk-core-sounds-{en,es,fr,it}
).

Audio: /usr/share/asterisk/sounds/<lang>/<name>.wav (8 kHz; the audio loader resamples).
Transcripts: /usr/share/doc/asterisk-core-sounds-<lang>/core-sounds-<lang>.txt.gz, lines `<name>: <text>`,
`;` comments. Kept: prompts with a wav file and a plain transcript. Dropped: prompts whose transcript holds
annotations in brackets or parentheses (tones, "(beep)", translator's notes), empty transcripts, and names listed
twice with different texts (the Spanish list gives `digits/0` both "cero" and "diez").
Manifests: ASR per language, and <lang> -> en translation pairs for the prompts present in both languages.
"""
from __future__ import annotations

import gzip
import re
from pathlib import Path

from .datasets import ManifestError, Utterance, write_manifest

SOUNDS_ROOT = Path("/usr/share/asterisk/sounds")
DOC_ROOT = Path("/usr/share/doc")
LANGUAGES = ("en", "es", "fr", "it")
_ANNOTATION = re.compile(r"[\[\]<>()]")


def transcript_path(language: str, doc_root: Path = DOC_ROOT) -> Path:
    base = doc_root / f"asterisk-core-sounds-{language}" / f"core-sounds-{language}.txt"
    return base if base.is_file() else base.with_name(base.name + ".gz")


def installed(languages=LANGUAGES, sounds_root: Path = SOUNDS_ROOT, doc_root: Path = DOC_ROOT) -> bool:
    """Whether the audio and transcript packages of every language are installed."""
    return all((sounds_root / lang).is_dir() and transcript_path(lang, doc_root).is_file() for lang in languages)


def read_prompts(path: str | Path) -> dict[str, str]:
    """`name: text` lines -> {name: text}, with the exclusions listed in the module docstring."""
    path = Path(path)
    try:
        opener = gzip.open if path.suffix == ".gz" else open
        with opener(path, "rt", encoding="utf-8-sig") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ManifestError(f"cannot read Asterisk transcripts {path}: {e}") from None
    texts: dict[str, set[str]] = {}
    order: list[str] = []
    for line in lines:
        line = line.strip().lstrip("\ufeff")
        if not line or line.startswith(";") or ":" not in line:
            continue
        name, _, text = line.partition(":")
        name, text = name.strip(), " ".join(text.split())
        if not text or _ANNOTATION.search(text) or " " in name:
            continue
        if name not in texts:
            order.append(name)
        texts.setdefault(name, set()).add(text)
    return {name: next(iter(texts[name])) for name in order if len(texts[name]) == 1}


def asr_utterances(language: str, sounds_root: Path = SOUNDS_ROOT, doc_root: Path = DOC_ROOT) -> list[Utterance]:
    """One utterance per prompt of `language` that has both a transcript and a wav file."""
    prompts = read_prompts(transcript_path(language, doc_root))
    out = []
    for name, text in prompts.items():
        audio = sounds_root / language / f"{name}.wav"
        if audio.is_file():
            out.append(Utterance(f"{language}/{name}", audio.absolute(), text, language))
    return out


def translation_utterances(source: str, target: str = "en", sounds_root: Path = SOUNDS_ROOT,
                           doc_root: Path = DOC_ROOT) -> list[Utterance]:
    """Source-language recordings paired with the target-language transcript of the same prompt."""
    targets = read_prompts(transcript_path(target, doc_root))
    return [Utterance(u.id, u.audio, u.text, source, targets[u.id.split("/", 1)[1]], target)
            for u in asr_utterances(source, sounds_root, doc_root) if u.id.split("/", 1)[1] in targets]


def write_manifests(out_dir: str | Path, languages=LANGUAGES, sounds_root: Path = SOUNDS_ROOT,
                    doc_root: Path = DOC_ROOT) -> dict[str, Path]:
    """Write asr_<lang>.jsonl for every language and ast_<lang>_en.jsonl for every other one;
    returns {manifest name: path}."""
    if not installed(languages, sounds_root, doc_root):
        raise ManifestError(f"Asterisk prompts not installed under {sounds_root} and {doc_root}; install "
                            + " ".join(f"asterisk-core-sounds-{lang}-wav asterisk-core-sounds-{lang}"
                                       for lang in languages))
    out_dir = Path(out_dir)
    written = {}
    for lang in languages:
        path = out_dir / f"asr_{lang}.jsonl"
        write_manifest(path, asr_utterances(lang, sounds_root, doc_root))
        written[path.stem] = path
        if lang != "en" and "en" in languages:
            path = out_dir / f"ast_{lang}_en.jsonl"
            write_manifest(path, translation_utterances(lang, "en", sounds_root, doc_root))
            written[path.stem] = path
    return written
