"""Synthetic texts: clean frequent-word lists, deterministic specs, texts drawn from the lists."""
import re

import pytest

pytest.importorskip("wordfreq")

from asr.synth import HELDOUT_OPTIONS, LANGUAGES, VOICES, SynthOptions, example_spec  # noqa: E402
from asr.wordlists import frequent_words  # noqa: E402


@pytest.mark.parametrize("language", LANGUAGES)
def test_word_lists_are_clean_and_frequent(language):
    words = frequent_words(language, 3000)
    assert len(words) == len(set(words)) == 3000
    assert all(re.fullmatch(r"[^\W\d_]+('[^\W\d_]+)?", w) for w in words), "only letters (and one apostrophe)"
    assert all(w == w.lower() for w in words)
    assert {"en": "the", "es": "que", "fr": "les", "it": "che", "pt": "não"}[language] in words[:50]
    if language != "en":
        assert "the" not in words and "of" not in words, "English web noise must be filtered out"
    if language in ("fr", "it"):
        assert "l" not in words and "d" not in words, "split elisions must be filtered out"


def test_unknown_language_is_named():
    with pytest.raises(ValueError, match="'de'"):
        frequent_words("de")
    with pytest.raises(ValueError, match="languages"):
        SynthOptions(languages=("en", "xx"))


def test_specs_are_deterministic_and_independent():
    assert example_spec(7, 3) == example_spec(7, 3)
    assert example_spec(7, 3) != example_spec(7, 4)
    assert example_spec(7, 3) != example_spec(8, 3)


def test_texts_come_from_the_word_lists_within_length_bounds():
    options = SynthOptions()
    seen_languages = set()
    for index in range(200):
        spec = example_spec(0, index, options)
        seen_languages.add(spec.language)
        assert spec.text[0].isupper() and spec.text.endswith("."), spec.text
        words = spec.text[:-1].lower().split()
        assert options.min_words <= len(words) <= options.max_words, spec.text
        vocab = set(frequent_words(spec.language, options.vocabulary))
        assert all(w in vocab for w in words), (spec.text, [w for w in words if w not in vocab])
        assert spec.voice.split("+")[0] in VOICES[spec.language]
        assert options.speed[0] <= spec.speed <= options.speed[1]
    assert seen_languages == set(LANGUAGES)


def test_heldout_options_use_the_main_voice_at_default_settings():
    for index in range(20):
        spec = example_spec(5, index, HELDOUT_OPTIONS)
        assert spec.voice == VOICES[spec.language][0]
        assert (spec.speed, spec.pitch, spec.snr_db, spec.peak_db) == (175, 50, None, None)
