"""Character and word error rates for the held-out check during training (no dependency on `eval`,
which sits above `asr`). Text is compared lower-cased, without punctuation, spaces collapsed."""
from __future__ import annotations

import re
import unicodedata

_PUNCT = re.compile(r"[^\w\s']")


def normalize(text: str) -> str:
    text = unicodedata.normalize("NFC", text).lower().replace("\u2019", "'")
    return " ".join(_PUNCT.sub(" ", text).split())


def edit_distance(a, b) -> int:
    """Levenshtein distance between two sequences (one row at a time)."""
    previous = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        current = [i]
        for j, y in enumerate(b, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1, previous[j - 1] + (x != y)))
        previous = current
    return previous[-1]


def error_rates(pairs: list[tuple[str, str]]) -> dict:
    """(reference, hypothesis) pairs -> {"cer", "wer", "n"}, errors summed over all pairs."""
    chars = words = char_errors = word_errors = 0
    for reference, hypothesis in pairs:
        ref, hyp = normalize(reference), normalize(hypothesis)
        chars += len(ref)
        words += len(ref.split())
        char_errors += edit_distance(ref, hyp)
        word_errors += edit_distance(ref.split(), hyp.split())
    return {"cer": char_errors / max(1, chars), "wer": word_errors / max(1, words), "n": len(pairs)}
