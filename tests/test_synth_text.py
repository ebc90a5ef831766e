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


def test_language_weights_draw_languages_in_proportion_and_are_checked():
    from collections import Counter

    weighted = SynthOptions(language_weights=(("fr", 3.0),))
    counts = Counter(example_spec(0, i, weighted).language for i in range(2100))
    assert 800 <= counts["fr"] <= 1000, counts  # expected 3/7 of 2100 = 900
    assert all(250 <= counts[lang] <= 350 for lang in LANGUAGES if lang != "fr"), counts
    # No weights: the uniform draw of before, so older datasets and models keep their texts.
    uniform = Counter(example_spec(0, i).language for i in range(2100))
    assert all(350 <= n <= 490 for n in uniform.values()), uniform
    with pytest.raises(ValueError, match="de=2"):
        SynthOptions(language_weights=(("de", 2.0),))
    with pytest.raises(ValueError, match="fr=0"):
        SynthOptions(language_weights=(("fr", 0),))


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


def test_heldout_excludes_the_texts_a_model_was_trained_on(tmp_path):
    import json

    from asr.synth import build_dataset, main, read_manifest, trained_texts, training_texts

    train = build_dataset(tmp_path / "train", 12, seed=3)
    assert training_texts(12, seed=3) == [r["text"] for r in read_manifest(train)]
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"gemma3n_speech": {"trained": {"data": {"utterances": 400,
                                                                                          "seed": 3}}}}))
    assert trained_texts(model) == training_texts(400, seed=3)
    main([str(tmp_path / "heldout"), "--heldout", "3", "--exclude-model", str(model)])
    heldout = {r["text"] for r in read_manifest(tmp_path / "heldout" / "manifest.jsonl")}
    assert len(heldout) == 15 and not heldout & set(training_texts(400, seed=3))
    # A model trained with language weights: its texts are those of the weighted draw.
    (model / "config.json").write_text(json.dumps({"gemma3n_speech": {"trained": {"data": {
        "utterances": 400, "seed": 3, "language_weights": {"fr": 2.0}}}}}))
    weighted = training_texts(400, seed=3, options=SynthOptions(language_weights=(("fr", 2.0),)))
    assert trained_texts(model) == weighted != training_texts(400, seed=3)


def test_exclude_model_without_a_training_record_is_a_clear_error(tmp_path, capsys):
    import pytest

    from asr.synth import main

    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(SystemExit):
        main([str(tmp_path / "out"), "--heldout", "1", "--exclude-model", str(tmp_path)])
    assert "no gemma3n_speech.trained.data record" in capsys.readouterr().err
