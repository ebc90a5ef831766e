"""Train a small SentencePiece tokenizer laid out like Gemma 3n's, for the model the project trains and ships.

Id layout (N = the text vocabulary that SentencePiece learns):

    0 <pad>, 1 <eos>, 2 <bos>, 3 <unk>, 4 <start_of_turn>, 5 <end_of_turn>, 6 <start_of_audio>,
    newline runs ("\\n" .. "\\n\\n\\n\\n") as single pieces, byte pieces, learned pieces   ids [0, N)
    vision slots (unused here)                                                          ids [N, N + 128)
    audio slots: N+128 <end_of_audio>, N+129 <audio_soft_token>, the rest unused        ids [N + 128, N + 256)

This is Gemma 3n's layout shrunk: there the text vocabulary is 262144, the vision ids start at 262144 and
the audio ids at 262272 (audio_config.vocab_offset), <end_of_audio> is the first audio id and
<audio_soft_token> the second, and the last id (vocab_size - 1) is the audio padding slot. The vision and
audio slots are appended to the trained model as pieces too, as Gemma's tokenizer.model holds them, so a
tokenizer that maps special-token strings to ids finds <end_of_audio> and <audio_soft_token> at their ids.

Normalization is identity with no dummy prefix and no whitespace folding, as in Gemma: newlines and space
runs reach the model unchanged, and decode(encode(text)) == text for any text (byte fallback).
"""
from __future__ import annotations

import io
import json
import struct
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import sentencepiece as spm

MODEL_FILE = "tokenizer.model"
PAD, EOS, BOS, UNK = "<pad>", "<eos>", "<bos>", "<unk>"
START_OF_TURN, END_OF_TURN = "<start_of_turn>", "<end_of_turn>"
START_OF_AUDIO, END_OF_AUDIO, AUDIO_SOFT_TOKEN = "<start_of_audio>", "<end_of_audio>", "<audio_soft_token>"
NEWLINES = ("\n", "\n\n", "\n\n\n", "\n\n\n\n")  # the chat prompt's separators, one piece each
VISION_VOCAB_SIZE = 128  # Gemma 3n's vision_config.vocab_size and audio_config.vocab_size
AUDIO_VOCAB_SIZE = 128
# ModelProto.SentencePiece.Type values (sentencepiece_model.proto).
_USER_DEFINED, _UNUSED = 4, 5


@dataclass(frozen=True)
class SpecialIds:
    """The ids a config.json needs, consistent with the tokenizer that was written."""
    pad: int
    eos: int
    bos: int
    unk: int
    start_of_turn: int
    end_of_turn: int
    start_of_audio: int  # boa_token_id
    text_vocab_size: int  # N: text_config.vocab_size_per_layer_input
    vision_offset: int  # vision_config.vocab_offset
    audio_offset: int  # audio_config.vocab_offset
    end_of_audio: int  # eoa_token_id
    audio_soft_token: int  # audio_token_id
    audio_pad: int  # vocab_size - 1, the slot the reference fills unused audio positions with
    vocab_size: int  # text_config.vocab_size (embedding rows and logits)

    def config_fields(self) -> dict:
        """The config.json entries these ids fix, nested as in a Gemma 3n config.json."""
        return {
            "boa_token_id": self.start_of_audio, "eoa_token_id": self.end_of_audio,
            "audio_token_id": self.audio_soft_token,
            "text_config": {"vocab_size": self.vocab_size, "vocab_size_per_layer_input": self.text_vocab_size,
                            "pad_token_id": self.pad, "eos_token_id": self.eos, "bos_token_id": self.bos},
            "audio_config": {"vocab_offset": self.audio_offset, "vocab_size": AUDIO_VOCAB_SIZE},
            "vision_config": {"vocab_offset": self.vision_offset, "vocab_size": VISION_VOCAB_SIZE},
        }


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _piece_record(piece: str, piece_type: int) -> bytes:
    # One `repeated SentencePiece pieces = 1` entry: piece (1, string), score (2, float), type (3, enum).
    # Repeated entries may be appended to a serialized message, so no protobuf library is needed.
    text = piece.encode("utf-8")
    body = b"\x0a" + _varint(len(text)) + text + b"\x15" + struct.pack("<f", 0.0) + b"\x18" + _varint(piece_type)
    return b"\x0a" + _varint(len(body)) + body


def _tail_pieces(n: int) -> list[tuple[str, int]]:
    vision = [(f"<unused_vision_{i}>", _UNUSED) for i in range(VISION_VOCAB_SIZE)]
    audio = [(END_OF_AUDIO, _USER_DEFINED), (AUDIO_SOFT_TOKEN, _USER_DEFINED)]
    audio += [(f"<unused_audio_{i}>", _UNUSED) for i in range(2, AUDIO_VOCAB_SIZE)]
    return vision + audio


def _train_proto(texts: list[str], vocab_size: int, model_type: str, byte_fallback: bool) -> bytes:
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_writer=model, model_type=model_type, vocab_size=vocab_size,
        pad_id=0, eos_id=1, bos_id=2, unk_id=3, pad_piece=PAD, eos_piece=EOS, bos_piece=BOS, unk_piece=UNK,
        user_defined_symbols=[START_OF_TURN, END_OF_TURN, START_OF_AUDIO, *NEWLINES],
        normalization_rule_name="identity", add_dummy_prefix=False, remove_extra_whitespaces=False,
        allow_whitespace_only_pieces=True, split_digits=True, byte_fallback=byte_fallback,
        character_coverage=1.0, hard_vocab_limit=False, num_threads=2, minloglevel=2,
        # Texts are short utterances; the default cap of 4192 bytes only guards against runaway lines.
        max_sentence_length=1 << 16,
    )
    return model.getvalue()


def _write_hf_files(out: Path, ids: SpecialIds) -> None:
    # What GemmaTokenizer.save_pretrained writes, reduced to the tokens this model uses.
    names = {ids.pad: PAD, ids.eos: EOS, ids.bos: BOS, ids.unk: UNK, ids.start_of_turn: START_OF_TURN,
             ids.end_of_turn: END_OF_TURN, ids.start_of_audio: START_OF_AUDIO, ids.end_of_audio: END_OF_AUDIO,
             ids.audio_soft_token: AUDIO_SOFT_TOKEN}
    extra = {"boa_token": START_OF_AUDIO, "eoa_token": END_OF_AUDIO, "audio_token": AUDIO_SOFT_TOKEN}
    added = {str(i): {"content": name, "lstrip": False, "normalized": False, "rstrip": False,
                      "single_word": False, "special": True} for i, name in sorted(names.items())}
    config = {"tokenizer_class": "GemmaTokenizer", "add_bos_token": True, "add_eos_token": False,
              "bos_token": BOS, "eos_token": EOS, "pad_token": PAD, "unk_token": UNK,
              "extra_special_tokens": extra, "added_tokens_decoder": added, "padding_side": "left",
              "clean_up_tokenization_spaces": False, "spaces_between_special_tokens": False,
              "model_max_length": 1_000_000_000_000_000_019_884_624_838_656}
    special_map = {"bos_token": BOS, "eos_token": EOS, "pad_token": PAD, "unk_token": UNK, **extra}
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2, ensure_ascii=False) + "\n")
    (out / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2) + "\n")


def special_ids(processor: spm.SentencePieceProcessor, text_vocab_size: int) -> SpecialIds:
    """The ids of a tokenizer written by `train_tokenizer`, checked piece by piece."""
    def find(piece: str) -> int:
        i = processor.piece_to_id(piece)
        if processor.id_to_piece(i) != piece:
            raise ValueError(f"tokenizer has no piece {piece!r}")
        return i

    n, size = text_vocab_size, processor.get_piece_size()
    ids = SpecialIds(pad=find(PAD), eos=find(EOS), bos=find(BOS), unk=find(UNK),
                     start_of_turn=find(START_OF_TURN), end_of_turn=find(END_OF_TURN),
                     start_of_audio=find(START_OF_AUDIO), text_vocab_size=n, vision_offset=n,
                     audio_offset=n + VISION_VOCAB_SIZE, end_of_audio=find(END_OF_AUDIO),
                     audio_soft_token=find(AUDIO_SOFT_TOKEN), audio_pad=size - 1, vocab_size=size)
    expected = (0, 1, 2, n + VISION_VOCAB_SIZE, n + VISION_VOCAB_SIZE + 1, n + VISION_VOCAB_SIZE + AUDIO_VOCAB_SIZE)
    if (ids.pad, ids.eos, ids.bos, ids.end_of_audio, ids.audio_soft_token, size) != expected:
        raise ValueError(f"tokenizer layout differs from Gemma 3n's: {asdict(ids)}")
    return ids


def train_tokenizer(texts: Iterable[str], out_dir: str | Path, vocab_size: int = 2000,
                    model_type: str = "bpe", byte_fallback: bool = True) -> SpecialIds:
    """Train on `texts`, write tokenizer.model + tokenizer_config.json + special_tokens_map.json to out_dir.

    `vocab_size` is the learned text vocabulary (N above); a corpus too small for it yields fewer pieces
    (the returned ids tell the real size). The full vocabulary is N + 256.
    """
    texts = [t for t in texts if t]
    if not texts:
        raise ValueError("train_tokenizer: no texts to train on")
    if model_type not in ("bpe", "unigram"):
        raise ValueError(f"train_tokenizer: model_type must be 'bpe' or 'unigram', got {model_type!r}")
    minimum = 7 + len(NEWLINES) + (256 if byte_fallback else 0) + 1
    if vocab_size <= minimum:
        raise ValueError(f"train_tokenizer: vocab_size {vocab_size} leaves no room for learned pieces "
                         f"(the fixed pieces take {minimum - 1})")
    proto = _train_proto(texts, vocab_size, model_type, byte_fallback)
    n = spm.SentencePieceProcessor(model_proto=proto).get_piece_size()
    proto += b"".join(_piece_record(piece, kind) for piece, kind in _tail_pieces(n))
    ids = special_ids(spm.SentencePieceProcessor(model_proto=proto), n)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / MODEL_FILE).write_bytes(proto)
    _write_hf_files(out, ids)
    return ids


def load_special_ids(out_dir: str | Path) -> SpecialIds:
    """The ids of the tokenizer in out_dir (written by `train_tokenizer`)."""
    path = Path(out_dir) / MODEL_FILE
    if not path.exists():
        raise ValueError(f"{path}: file not found (expected a SentencePiece model written by train_tokenizer)")
    processor = spm.SentencePieceProcessor(model_file=str(path))
    return special_ids(processor, processor.get_piece_size() - VISION_VOCAB_SIZE - AUDIO_VOCAB_SIZE)
