"""Text normalizers applied to both reference and hypothesis before a normalized WER/CER.

`EnglishNormalizer` follows the rules of Whisper's English text normalizer (written here from their description,
see docs/eval.md for the full list); `BasicNormalizer` is the language-independent one: lowercase, NFKC,
punctuation and symbols removed, diacritics optionally removed. BLEU/chrF are computed on raw text, never on these.
"""
from __future__ import annotations

import re
import unicodedata
from dataclasses import dataclass
from typing import Callable

from .english_numbers import normalize_numbers
from .spelling import BRITISH_TO_AMERICAN

# Letters that NFKD does not decompose into base + mark but that readers consider "accented" Latin letters.
_LIGATURES = {"æ": "ae", "œ": "oe", "ø": "o", "ß": "ss", "ł": "l", "đ": "d", "ð": "d", "þ": "th", "ı": "i",
              "Æ": "AE", "Œ": "OE", "Ø": "O", "Ł": "L", "Đ": "D", "Ð": "D", "Þ": "TH"}
_BRACKETED = re.compile(r"[<\[][^>\]]*[>\]]")  # [noise], <unk>
_PARENTHESIZED = re.compile(r"\([^)]*\)")
_APOSTROPHES = str.maketrans({"\u2019": "'", "\u2018": "'", "\u02bc": "'", "`": "'", "\u00b4": "'"})


def _collapse(text: str) -> str:
    return " ".join(text.split())


def _strip_diacritics(text: str) -> str:
    decomposed = unicodedata.normalize("NFKD", text)
    kept = "".join(_LIGATURES.get(c, c) for c in decomposed if unicodedata.category(c) != "Mn")
    return unicodedata.normalize("NFC", kept)


def _symbols_to_spaces(text: str, keep: str = "") -> str:
    """Punctuation (P*) and symbols (S*) become spaces, except the characters in `keep`."""
    return "".join(" " if c not in keep and unicodedata.category(c)[0] in "PS" else c for c in text)


@dataclass(frozen=True)
class BasicNormalizer:
    """Lowercase, NFKC, bracketed text removed, punctuation/symbols -> spaces, optional diacritics removal.

    Combining marks are kept unless `remove_diacritics`: in Indic and Southeast Asian scripts they are vowels,
    not accents, so dropping them (as Whisper's basic normalizer does) would merge different words.
    """
    remove_diacritics: bool = False

    def __call__(self, text: str) -> str:
        s = unicodedata.normalize("NFKC", text).lower()
        s = _PARENTHESIZED.sub(" ", _BRACKETED.sub(" ", s))
        s = _symbols_to_spaces(s)
        if self.remove_diacritics:
            s = _strip_diacritics(s)
        return _collapse(s)


FILLERS = ("hmm", "hm", "mm", "mmm", "mhm", "uh", "uhm", "um", "umm", "erm")

# Fixed contractions, colloquialisms and titles, tried before the general suffix rules (won't -> will not,
# not "wo not"). Titles lose their period later with the rest of the punctuation.
_SPECIFIC = [
    (r"\bwon't\b", "will not"), (r"\bcan't\b", "can not"), (r"\bshan't\b", "shall not"),
    (r"\blet's\b", "let us"), (r"\bain't\b", "aint"), (r"\by'all\b", "you all"), (r"\bma'am\b", "madam"),
    (r"\bwanna\b", "want to"), (r"\bgotta\b", "got to"), (r"\bgonna\b", "going to"),
    (r"\bi'ma\b", "i am going to"), (r"\bimma\b", "i am going to"), (r"\bwoulda\b", "would have"),
    (r"\bcoulda\b", "could have"), (r"\bshoulda\b", "should have"),
    (r"\bmr\b", "mister"), (r"\bmrs\b", "missus"), (r"\bst\b", "saint"), (r"\bdr\b", "doctor"),
    (r"\bprof\b", "professor"), (r"\bcapt\b", "captain"), (r"\bgov\b", "governor"), (r"\bald\b", "alderman"),
    (r"\bgen\b", "general"), (r"\bsen\b", "senator"), (r"\brep\b", "representative"), (r"\bpres\b", "president"),
    (r"\brev\b", "reverend"), (r"\bhon\b", "honorable"), (r"\basst\b", "assistant"), (r"\bassoc\b", "associate"),
    (r"\blt\b", "lieutenant"), (r"\bcol\b", "colonel"), (r"\bjr\b", "junior"), (r"\bsr\b", "senior"),
    (r"\besq\b", "esquire"),
    # perfect tenses: 's and 'd before been/gone/done/got are has/had, not is/would
    (r"'d been\b", " had been"), (r"'s been\b", " has been"), (r"'d gone\b", " had gone"),
    (r"'s gone\b", " has gone"), (r"'d done\b", " had done"), (r"'s got\b", " has got"),
]
# General suffixes; 's is read as "is" (Whisper's rule), which also turns possessives into "is" on both sides.
_GENERAL = [(r"n't\b", " not"), (r"'re\b", " are"), (r"'s\b", " is"), (r"'d\b", " would"), (r"'ll\b", " will"),
            (r"'t\b", " not"), (r"'ve\b", " have"), (r"'m\b", " am")]
_REPLACEMENTS = [(re.compile(p), r) for p, r in _SPECIFIC + _GENERAL]
_FILLER_RE = re.compile(r"\b(?:" + "|".join(FILLERS) + r")\b")
_CURRENCY_AND_PERIOD = ".$¢€£"


def _expand_contractions(s: str) -> str:
    s = re.sub(r"\s+'", "'", s)  # "don 't" -> "don't"
    for pattern, replacement in _REPLACEMENTS:
        s = pattern.sub(replacement, s)
    return s


def _split_digits_from_letters(s: str) -> str:
    s = re.sub(r"([a-z])(\d)", r"\1 \2", s)
    s = re.sub(r"(\d)([a-z])", r"\1 \2", s)
    return re.sub(r"(\d) (st|nd|rd|th|s)\b", r"\1\2", s)  # ...but 21st and 1990s stay whole


def _american(s: str) -> str:
    return " ".join(BRITISH_TO_AMERICAN.get(w, w) for w in s.split())


@dataclass(frozen=True)
class EnglishNormalizer:
    """Whisper-style English normalization; the steps run in the order of `__call__`."""

    def __call__(self, text: str) -> str:
        s = text.translate(_APOSTROPHES).lower()
        s = _PARENTHESIZED.sub(" ", _BRACKETED.sub(" ", s))
        s = _FILLER_RE.sub(" ", s)
        s = _expand_contractions(s)
        s = re.sub(r"(\d),(\d)", r"\1\2", s)  # 1,000 -> 1000
        s = re.sub(r"\.(?!\d)", " ", s)  # a period is kept only as a decimal point
        s = _strip_diacritics(_symbols_to_spaces(s, keep=_CURRENCY_AND_PERIOD + "%"))
        s = _split_digits_from_letters(s)
        s = normalize_numbers(_collapse(s))
        s = _american(s)
        s = re.sub(r"[.$¢€£](?!\d)", " ", s)  # currency signs and periods survive only before digits
        s = re.sub(r"(?<!\d)%", " ", s)  # and percent only after them
        return _collapse(s)


def _identity(text: str) -> str:
    return text


NORMALIZERS = ("english", "basic", "none")


def get_normalizer(name: str) -> Callable[[str], str]:
    """'english', 'basic' (diacritics kept), 'basic-nodiacritics' or 'none'."""
    if name == "english":
        return EnglishNormalizer()
    if name == "basic":
        return BasicNormalizer()
    if name == "basic-nodiacritics":
        return BasicNormalizer(remove_diacritics=True)
    if name == "none":
        return _identity
    raise ValueError(f"unknown normalizer {name!r}; expected one of {', '.join(NORMALIZERS)}")


def normalizer_for_language(language: str | None) -> Callable[[str], str]:
    """The normalizer used for the 'normalized' WER of a report: English rules for en, basic otherwise."""
    from .metrics import base_language

    return EnglishNormalizer() if base_language(language) == "en" else BasicNormalizer()
