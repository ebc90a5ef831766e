"""The trained SentencePiece tokenizer: Gemma 3n's id layout, special tokens as single ids, exact round trips."""
import json

import pytest
import sentencepiece as spm

from lm.spm_train import (AUDIO_VOCAB_SIZE, VISION_VOCAB_SIZE, SpecialIds, load_special_ids,
                          train_tokenizer)

SAMPLES = {
    "en": "I don't think the weather will change before the evening.",
    "es": "¿Dónde está la estación? Mañana vamos a España con nuestros niños.",
    "fr": "Ça fait déjà trois années que nous habitons près de la forêt.",
    "it": "Perché non è venuto? Però la città è più bella d'estate.",
    "pt": "Não sei se ele já chegou à estação, mas amanhã ligarei ao irmão.",
}
PROMPT = ("<start_of_turn>user\nTranscribe the following speech segment in French:\n\n<start_of_audio>"
          "<audio_soft_token><audio_soft_token><end_of_audio>\n\n<end_of_turn>\n<start_of_turn>model\n")


def _corpus() -> list[str]:
    try:
        from asr.synth import example_spec
        return [example_spec(0, i).text for i in range(3000)]
    except ImportError:  # wordfreq missing: a smaller corpus still exercises every rule
        return [s for s in SAMPLES.values() for _ in range(20)]


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    ids = train_tokenizer(_corpus() + [PROMPT], out, vocab_size=1000)
    return out, ids, spm.SentencePieceProcessor(model_file=str(out / "tokenizer.model"))


def test_layout_matches_gemma3n(trained):
    out, ids, sp = trained
    assert (ids.pad, ids.eos, ids.bos) == (0, 1, 2)
    assert (sp.pad_id(), sp.eos_id(), sp.bos_id(), sp.unk_id()) == (0, 1, 2, ids.unk)
    n = ids.text_vocab_size
    assert 500 < n <= 1000
    assert ids.vision_offset == n and ids.audio_offset == n + VISION_VOCAB_SIZE
    assert (ids.end_of_audio, ids.audio_soft_token) == (ids.audio_offset, ids.audio_offset + 1)
    assert ids.vocab_size == sp.get_piece_size() == n + VISION_VOCAB_SIZE + AUDIO_VOCAB_SIZE
    assert ids.audio_pad == ids.vocab_size - 1
    fields = ids.config_fields()
    assert fields["audio_config"]["vocab_offset"] + fields["audio_config"]["vocab_size"] == \
        fields["text_config"]["vocab_size"]
    assert load_special_ids(out) == ids


def test_special_tokens_are_single_ids(trained):
    _, ids, sp = trained
    for piece, expected in [("<start_of_turn>", ids.start_of_turn), ("<end_of_turn>", ids.end_of_turn),
                            ("<start_of_audio>", ids.start_of_audio), ("<end_of_audio>", ids.end_of_audio),
                            ("<audio_soft_token>", ids.audio_soft_token)]:
        assert sp.encode(piece) == [expected], piece
        assert sp.id_to_piece(expected) == piece
    assert len(sp.encode("\n")) == 1 and len(sp.encode("\n\n")) == 1, "newline runs are single pieces"
    prompt_ids = sp.encode(PROMPT)
    assert prompt_ids.count(ids.audio_soft_token) == 2 and prompt_ids.count(ids.start_of_turn) == 2


@pytest.mark.parametrize("language", sorted(SAMPLES))
def test_round_trip_is_exact(trained, language):
    _, _, sp = trained
    for text in (SAMPLES[language], SAMPLES[language].upper(), "  " + SAMPLES[language] + "\n\n\n x  y\n"):
        assert sp.decode(sp.encode(text)) == text


def test_round_trip_of_prompt_and_unseen_characters(trained):
    _, ids, sp = trained
    assert sp.decode(sp.encode(PROMPT)) == PROMPT
    odd = "Straße 42: 漢字, ñandú — «œuvre» ½\t\ttab"
    encoded = sp.encode(odd)
    assert ids.unk not in encoded, "byte fallback: no <unk>"
    assert sp.decode(encoded) == odd


def test_hf_side_files_name_the_ids(trained):
    out, ids, _ = trained
    config = json.loads((out / "tokenizer_config.json").read_text())
    decoder = {int(k): v["content"] for k, v in config["added_tokens_decoder"].items()}
    assert decoder[ids.bos] == config["bos_token"] == "<bos>"
    assert decoder[ids.eos] == "<eos>" and decoder[ids.pad] == "<pad>"
    assert decoder[ids.end_of_audio] == config["extra_special_tokens"]["eoa_token"] == "<end_of_audio>"
    assert decoder[ids.audio_soft_token] == "<audio_soft_token>"
    assert decoder[ids.start_of_audio] == "<start_of_audio>"
    special = json.loads((out / "special_tokens_map.json").read_text())
    assert special["audio_token"] == "<audio_soft_token>" and special["boa_token"] == "<start_of_audio>"


def test_unigram_and_small_corpus(tmp_path):
    ids = train_tokenizer([s for s in SAMPLES.values() for _ in range(5)], tmp_path, vocab_size=4000,
                          model_type="unigram")
    assert isinstance(ids, SpecialIds) and ids.text_vocab_size < 4000, "a small corpus yields fewer pieces"
    sp = spm.SentencePieceProcessor(model_file=str(tmp_path / "tokenizer.model"))
    assert all(sp.decode(sp.encode(s)) == s for s in SAMPLES.values())
    assert sp.encode("<end_of_audio>") == [ids.end_of_audio]


def test_bad_arguments_are_named(tmp_path):
    with pytest.raises(ValueError, match="no texts"):
        train_tokenizer([], tmp_path)
    with pytest.raises(ValueError, match="model_type"):
        train_tokenizer(["a b c"], tmp_path, model_type="wordpiece")
    with pytest.raises(ValueError, match="vocab_size"):
        train_tokenizer(["a b c"], tmp_path, vocab_size=100)
    with pytest.raises(ValueError, match="tokenizer.model"):
        load_special_ids(tmp_path / "missing")
