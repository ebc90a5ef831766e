"""The Gemma 3n chat prompt around an audio clip, and parsing of the model's answer.

The reference renders the chat template to text, expands the audio placeholder to
"\\n\\n<start_of_audio>" + <audio_soft_token> x 188 + "<end_of_audio>\\n\\n", then tokenizes the string,
splitting it at special tokens. We build the same id sequence directly: text between special tokens is
encoded piecewise, and the audio ids come from config.json, so no id is hard-coded here.
"""
from __future__ import annotations

import re
from dataclasses import dataclass

# ISO 639-1 codes people pass on the command line -> the English names the prompt uses.
LANGUAGE_NAMES = {
    "en": "English", "es": "Spanish", "fr": "French", "it": "Italian", "pt": "Portuguese", "de": "German",
    "nl": "Dutch", "pl": "Polish", "ru": "Russian", "uk": "Ukrainian", "cs": "Czech", "sv": "Swedish",
    "da": "Danish", "no": "Norwegian", "fi": "Finnish", "el": "Greek", "tr": "Turkish", "ar": "Arabic",
    "he": "Hebrew", "hi": "Hindi", "bn": "Bengali", "ur": "Urdu", "fa": "Persian", "zh": "Chinese",
    "ja": "Japanese", "ko": "Korean", "th": "Thai", "vi": "Vietnamese", "id": "Indonesian", "ms": "Malay",
    "ro": "Romanian", "hu": "Hungarian", "ca": "Catalan", "sw": "Swahili", "ta": "Tamil", "te": "Telugu",
}

TRANSCRIBE = "Transcribe the following speech segment in {language}:"
TRANSCRIBE_ANY = "Transcribe the following speech segment:"
TRANSLATE = "Transcribe the following speech segment in {source}, then translate it into {target}:"
TRANSLATE_ANY = "Transcribe the following speech segment, then translate it into {target}:"


def language_name(language: str) -> str:
    """'es' -> 'Spanish'; a full name ('Spanish', 'spanish') is accepted as is."""
    lang = language.strip()
    if lang.lower() in LANGUAGE_NAMES:
        return LANGUAGE_NAMES[lang.lower()]
    for name in LANGUAGE_NAMES.values():
        if lang.lower() == name.lower():
            return name
    if len(lang) <= 3:
        known = ", ".join(sorted(LANGUAGE_NAMES))
        raise ValueError(f"unknown language code {language!r}; use one of {known} or a full language name")
    return lang[:1].upper() + lang[1:]


def instruction(task: str, language: str | None = None, target_language: str | None = None) -> str:
    """The user's request text for `task` ('transcribe' or 'translate')."""
    if task == "transcribe":
        return TRANSCRIBE.format(language=language_name(language)) if language else TRANSCRIBE_ANY
    if task == "translate":
        if not target_language:
            raise ValueError("task 'translate' needs a target language")
        target = language_name(target_language)
        if language:
            return TRANSLATE.format(source=language_name(language), target=target)
        return TRANSLATE_ANY.format(target=target)
    raise ValueError(f"unknown task {task!r}; expected 'transcribe' or 'translate'")


@dataclass(frozen=True)
class PromptTokens:
    """Ids the prompt needs: from the tokenizer (turn markers) and config.json (audio ids)."""

    bos: int
    start_of_turn: int
    end_of_turn: int
    start_of_audio: int
    end_of_audio: int
    audio_soft: int


@dataclass(frozen=True)
class Prompt:
    """prefix ids, then `n_audio` audio slots, then suffix ids (`<end_of_audio>` ... `model\\n`)."""

    prefix: tuple[int, ...]
    n_audio: int
    suffix: tuple[int, ...]
    audio_soft: int

    @property
    def ids(self) -> list[int]:
        return [*self.prefix, *([self.audio_soft] * self.n_audio), *self.suffix]

    @property
    def audio_start(self) -> int:
        return len(self.prefix)


def build_prompt(tokenizer, tokens: PromptTokens, request: str, n_audio: int) -> Prompt:
    """<bos><start_of_turn>user\\n{request}\\n\\n<start_of_audio>[slots]<end_of_audio>\\n\\n<end_of_turn>\\n
    <start_of_turn>model\\n, as the reference chat template and processor produce it."""
    prefix = ([tokens.bos, tokens.start_of_turn] + tokenizer.encode("user\n" + request.strip() + "\n\n")
              + [tokens.start_of_audio])
    suffix = ([tokens.end_of_audio] + tokenizer.encode("\n\n") + [tokens.end_of_turn]
              + tokenizer.encode("\n") + [tokens.start_of_turn] + tokenizer.encode("model\n"))
    return Prompt(tuple(prefix), n_audio, tuple(suffix), tokens.audio_soft)


_LABEL_WORDS = ["transcription", "transcript", "translation", "original", *(n.lower() for n in LANGUAGE_NAMES.values())]
_LABEL = re.compile(r"^\s*(\*\*)?(" + "|".join(_LABEL_WORDS) + r")( \w+)?(\*\*)?\s*:\s*(\*\*)?\s*", re.IGNORECASE)


def split_translation(answer: str) -> tuple[str, str]:
    """Split a chain-of-thought answer into (transcript, translation).

    The model writes the transcript, a blank line (or a newline), then the translation; either part may
    carry a label such as 'Spanish:' or 'Translation:', which is removed. With a single line the whole
    answer is taken as the transcript and the translation is empty.
    """
    text = answer.strip()
    parts = re.split(r"\n\s*\n", text, maxsplit=1)
    if len(parts) == 1:
        parts = text.split("\n", 1)
    transcript = _LABEL.sub("", parts[0], count=1).strip()
    translation = _LABEL.sub("", parts[1], count=1).strip() if len(parts) > 1 else ""
    return transcript, translation
