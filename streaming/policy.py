"""Commit policy for streaming decoding: LocalAgreement-2, as pure functions over word lists.

Each update re-decodes the uncommitted window and yields a hypothesis (a list of words). A word is
committed (becomes final, never changes again) once two consecutive hypotheses agree on it: the longest
common prefix of the last two hypotheses, after the words already committed, is committed; the rest of
the newest hypothesis is the partial. At a pause (VAD) or the end of the stream there is no next
hypothesis to wait for, so everything is committed.

    state = AgreementState()
    state, step = agree(state, ["the", "cat"])            # step.committed == () (nothing to compare yet)
    state, step = agree(state, ["the", "cat", "sat"])     # step.committed == ("the", "cat"), partial ("sat",)
    state, step = commit_all(state, ["the", "cat", "sat", "down"])   # at a pause
"""
from __future__ import annotations

import re
import string
from dataclasses import dataclass, replace
from typing import Callable, Sequence

Key = Callable[[str], str]
_PUNCT = re.compile(f"[{re.escape(string.punctuation)}¡¿«»“”‘’…]+")
SENTENCE_END = (".", "?", "!", "。", "？", "！", "…")


def exact(word: str) -> str:
    return word


def loose(word: str) -> str:
    """Compare words without case and punctuation ("Hello," == "hello")."""
    return _PUNCT.sub("", word).casefold()


def common_prefix_length(a: Sequence[str], b: Sequence[str], key: Key = exact) -> int:
    """Number of leading words on which a and b agree."""
    n = 0
    for x, y in zip(a, b):
        if key(x) != key(y):
            break
        n += 1
    return n


def drop_committed_overlap(hypothesis: Sequence[str], committed: Sequence[str], max_ngram: int = 5,
                           key: Key = exact) -> list[str]:
    """Remove a repeat of the committed tail from the head of a hypothesis.

    When the decoder re-reads audio that was already committed, its hypothesis may start with the
    last few committed words again; the longest such n-gram (up to max_ngram words) is dropped.
    """
    hyp = list(hypothesis)
    for n in range(min(max_ngram, len(committed), len(hyp)), 0, -1):
        if [key(w) for w in committed[-n:]] == [key(w) for w in hyp[:n]]:
            return hyp[n:]
    return hyp


@dataclass(frozen=True)
class AgreementState:
    """committed: every word committed so far; previous: the last hypothesis of the uncommitted part."""

    committed: tuple[str, ...] = ()
    previous: tuple[str, ...] | None = None


@dataclass(frozen=True)
class Step:
    """What one update decided: newly committed words (to send as a final) and the partial."""

    committed: tuple[str, ...]
    partial: tuple[str, ...]


def agree(state: AgreementState, hypothesis: Sequence[str], key: Key = exact) -> tuple[AgreementState, Step]:
    """LocalAgreement-2: commit the longest common prefix of the previous and this hypothesis.

    `hypothesis` covers only the uncommitted audio (committed text is a forced prefix, not part of it).
    The committed words are taken from the newest hypothesis.
    """
    hyp = tuple(hypothesis)
    n = 0 if state.previous is None else common_prefix_length(state.previous, hyp, key)
    new = hyp[:n]
    rest = hyp[n:]
    return AgreementState(state.committed + new, rest), Step(new, rest)


def commit_all(state: AgreementState, hypothesis: Sequence[str]) -> tuple[AgreementState, Step]:
    """At a pause or the end of the stream: the whole hypothesis becomes final; nothing stays pending."""
    hyp = tuple(hypothesis)
    return AgreementState(state.committed + hyp, None), Step(hyp, ())


def reset_previous(state: AgreementState) -> AgreementState:
    """Forget the last hypothesis (after the window was trimmed, old hypotheses no longer compare)."""
    return replace(state, previous=None)


def last_sentence_end(words: Sequence[str]) -> int:
    """Number of leading words up to and including the last one that ends a sentence (0 if none).

    A window trim point: after committing through a sentence end, the audio before it can be dropped.
    """
    for i in range(len(words) - 1, -1, -1):
        if words[i].rstrip("\"')]»”’").endswith(SENTENCE_END):
            return i + 1
    return 0


def repetition_loop(words: Sequence[str], max_ngram: int = 4, min_repeats: int = 3, key: Key = loose) -> int:
    """Guard against decoder loops: if the hypothesis ends with an n-gram (n <= max_ngram) repeated at least
    min_repeats times in a row, return the number of words to keep (through its first occurrence);
    otherwise len(words)."""
    keys = [key(w) for w in words]
    for n in range(1, max_ngram + 1):
        reps = 1
        while len(keys) >= n * (reps + 1) and keys[-n * (reps + 1):-n * reps] == keys[-n:]:
            reps += 1
        if reps >= min_repeats:
            return len(keys) - n * (reps - 1)
    return len(words)


def join_words(words: Sequence[str]) -> str:
    """Words back to text (the decoder's words are whitespace-split, so a single space joins them)."""
    return " ".join(words)
