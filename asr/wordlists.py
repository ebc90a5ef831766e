"""Frequent words per language, from the word lists that ship in the `wordfreq` package.

The synthetic training texts are drawn from these lists, so the vocabulary is open (thousands of words per
language) rather than a closed set of phrases. `wordfreq` is a training-time dependency only: nothing on the
transcription path imports this module.

wordfreq's lists are built from web text, so they hold digits, web fragments ("br", "co"), English words
that are frequent in other languages' web text, and French/Italian elisions split off ("l", "d", "qu").
espeak-ng would read those as letters or abbreviations, and the model would learn noise; `frequent_words`
filters them out.
"""
from __future__ import annotations

import functools
import re

LANGUAGES = ("en", "es", "fr", "it", "pt")

# Single-letter words that are real words; every other single letter is an elision fragment or an initial.
_ONE_LETTER = {
    "en": {"a", "i"}, "es": {"a", "y", "o", "e", "u"}, "fr": {"a", "à", "y"},
    "it": {"a", "e", "è", "i", "o"}, "pt": {"a", "à", "o", "e", "é"},
}
_DROP = {"fr": {"qu"}, "en": {"u.s"}}
# Letters, optionally joined by one apostrophe (don't, aujourd'hui, all'interno).
_WORD = re.compile(r"^[^\W\d_]+(?:'[^\W\d_]+)?$")
_VOWELS = set("aeiouyàáâãäåèéêëìíîïòóôõöùúûüÿœæ")
# A non-English word more than this many times as frequent in English web text is taken as English noise.
_ENGLISH_RATIO = 20.0


def _wordfreq():
    try:
        import wordfreq
    except ImportError:
        raise ImportError("the synthetic training data needs the 'wordfreq' package (pip install wordfreq); "
                          "it is used only to train a model, never to transcribe") from None
    return wordfreq


def _keep(word: str, language: str, wf) -> bool:
    if not _WORD.match(word) or word in _DROP.get(language, ()):
        return False
    if len(word) == 1:
        return word in _ONE_LETTER[language]
    if not _VOWELS & set(word):
        return False  # "br", "www", "hp": read letter by letter
    if language != "en":
        return wf.word_frequency(word, "en") <= _ENGLISH_RATIO * wf.word_frequency(word, language)
    return True


@functools.lru_cache(maxsize=None)
def frequent_words(language: str, count: int = 3000) -> tuple[str, ...]:
    """The `count` most frequent clean words of `language` (lower case), most frequent first."""
    if language not in LANGUAGES:
        raise ValueError(f"unsupported language {language!r} for synthetic data; expected one of {LANGUAGES}")
    if count < 1:
        raise ValueError(f"word count must be positive, got {count}")
    wf = _wordfreq()
    words: list[str] = []
    # Ask for more than needed: the filter drops a few percent of the list.
    for word in wf.top_n_list(language, int(count * 1.5) + 100):
        if _keep(word, language, wf):
            words.append(word)
            if len(words) == count:
                break
    if len(words) < count:
        raise ValueError(f"wordfreq has only {len(words)} clean {language} words, {count} were asked for")
    return tuple(words)
