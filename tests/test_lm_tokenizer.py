"""lm.tokenizer on tiny tokenizers made in the test: a SentencePiece model (as Gemma ships tokenizer.model)
and a tokenizer.json built with the tokenizers library."""
import io
import json

import pytest

from lm.tokenizer import Tokenizer, TokenizerNotFound

SPECIALS = ["<start_of_turn>", "<end_of_turn>", "<start_of_audio>", "<end_of_audio>", "<audio_soft_token>"]
CORPUS = ["the quick brown fox jumps over the lazy dog", "transcribe the following speech segment in english",
          "hello world, this is a test of the tokenizer", "model user turn audio speech text\n\nnew line",
          "numbers 1 2 3 and punctuation: yes! no? maybe."] * 20
TEXT = "<start_of_turn>user\nTranscribe this:<start_of_audio><audio_soft_token><end_of_audio>\n\nhi<end_of_turn>"


@pytest.fixture(scope="module")
def sp_dir(tmp_path_factory):
    import sentencepiece as spm

    d = tmp_path_factory.mktemp("sp")
    buf = io.BytesIO()
    # Gemma-like: byte fallback, no dummy prefix, whitespace kept as is, turn markers as user symbols.
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS), model_writer=buf, vocab_size=360, model_type="bpe",
        pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece="<pad>", eos_piece="<eos>", bos_piece="<bos>",
        unk_piece="<unk>", user_defined_symbols=SPECIALS, byte_fallback=True, add_dummy_prefix=False,
        normalization_rule_name="identity", remove_extra_whitespaces=False, minloglevel=2)
    (d / "tokenizer.model").write_bytes(buf.getvalue())
    return d


@pytest.fixture(scope="module")
def json_dir(tmp_path_factory):
    from tokenizers import Tokenizer as HF, decoders, models, pre_tokenizers, trainers

    d = tmp_path_factory.mktemp("hf")
    tok = HF(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<pad>", "<eos>", "<bos>", "<unk>", *SPECIALS],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False))
    tok.save(str(d / "tokenizer.json"))
    return d


@pytest.fixture(params=["sentencepiece", "tokenizer.json"])
def tok(request, sp_dir, json_dir):
    return Tokenizer.from_dir(sp_dir if request.param == "sentencepiece" else json_dir)


def test_special_strings_map_to_single_ids(tok):
    ids = tok.encode(TEXT)
    for piece in SPECIALS:
        assert ids.count(tok.token_id(piece)) == TEXT.count(piece)
    assert ids[0] == tok.token_id("<start_of_turn>") and ids[-1] == tok.token_id("<end_of_turn>")
    assert tok.bos_id not in ids  # no BOS added
    assert (tok.bos_id, tok.eos_id) == (tok.token_id("<bos>"), tok.token_id("<eos>"))


def test_round_trip_and_special_skipping(tok):
    plain = "the quick brown fox, hello world!\n\nyes? 123"
    assert tok.decode(tok.encode(plain)) == plain
    ids = tok.encode(TEXT)
    assert tok.decode(ids, skip_special=False) == TEXT
    assert tok.decode(ids) == "user\nTranscribe this:\n\nhi"
    assert tok.decode([tok.bos_id, *tok.encode("hi"), tok.eos_id]) == "hi"


def test_pieces_are_encoded_like_the_whole_text(tok):
    """Splitting at special tokens must not change how the text between them is tokenized."""
    left, right = "hello world", "the lazy dog"
    assert tok.encode(left + "<end_of_turn>" + right) == tok.encode(left) + [tok.token_id("<end_of_turn>")] + tok.encode(right)


def test_unknown_piece_and_vocab_size(tok):
    with pytest.raises(KeyError, match="<no_such_token>"):
        tok.token_id("<no_such_token>")
    assert tok.vocab_size >= 300
    assert 0 <= tok.token_id("<audio_soft_token>") < tok.vocab_size


def test_sentencepiece_is_preferred_and_config_names_bos(sp_dir, json_dir, tmp_path):
    (tmp_path / "tokenizer.model").write_bytes((sp_dir / "tokenizer.model").read_bytes())
    (tmp_path / "tokenizer.json").write_text("not json at all")  # would fail if it were read
    (tmp_path / "tokenizer_config.json").write_text(json.dumps({"bos_token": {"content": "<start_of_turn>"}}))
    tok = Tokenizer.from_dir(tmp_path)
    assert tok.bos_id == tok.token_id("<start_of_turn>")


def test_missing_tokenizer_names_directory_and_files(tmp_path):
    with pytest.raises(TokenizerNotFound) as err:
        Tokenizer.from_dir(tmp_path)
    message = str(err.value)
    assert str(tmp_path) in message and "tokenizer.model" in message and "tokenizer.json" in message
