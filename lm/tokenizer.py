"""Text <-> token ids for a Gemma 3n checkpoint directory.

tokenizer.model (SentencePiece) is used when present, else tokenizer.json (the `tokenizers` library).
`encode` adds no BOS; strings of special tokens in the text (`<start_of_turn>`, `<start_of_audio>`, ...)
become their single ids, as the reference processor's tokenizer does.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

SENTENCEPIECE_FILE = "tokenizer.model"
HF_FILE = "tokenizer.json"
CONFIG_FILE = "tokenizer_config.json"
_TAG = re.compile(r"^<[^<>\s]+>$")


class TokenizerNotFound(FileNotFoundError):
    """The directory has neither tokenizer.model nor tokenizer.json."""


class Tokenizer:
    """One interface over both backends; build it with `Tokenizer.from_dir`."""

    def __init__(self, backend, specials: dict[str, int], bos: str = "<bos>", eos: str = "<eos>", source: str = ""):
        self._backend = backend
        self.source = source
        self.specials = dict(specials)  # piece -> id, matched in text before encoding
        self._special_ids = set(self.specials.values())
        # Longest first, so a special token that contains another one wins.
        names = sorted(self.specials, key=len, reverse=True)
        self._split = re.compile("(" + "|".join(map(re.escape, names)) + ")") if names else None
        self.bos_id = self.token_id(bos)
        self.eos_id = self.token_id(eos)

    @classmethod
    def from_dir(cls, path: str | Path) -> "Tokenizer":
        directory = Path(path)
        config = _read_config(directory / CONFIG_FILE)
        bos, eos = _token_name(config.get("bos_token"), "<bos>"), _token_name(config.get("eos_token"), "<eos>")
        declared = {int(i): t["content"] for i, t in config.get("added_tokens_decoder", {}).items()
                    if isinstance(t, dict) and t.get("special") and "content" in t}
        if (directory / SENTENCEPIECE_FILE).is_file():
            backend = _SentencePiece(directory / SENTENCEPIECE_FILE)
        elif (directory / HF_FILE).is_file():
            backend = _HFTokenizers(directory / HF_FILE)
        else:
            raise TokenizerNotFound(f"{directory}: no tokenizer found (expected {SENTENCEPIECE_FILE} or {HF_FILE})")
        specials = {piece: i for i, piece in declared.items()} or backend.special_pieces()
        return cls(backend, specials, bos, eos, source=str(directory))

    @property
    def vocab_size(self) -> int:
        return self._backend.vocab_size()

    def token_id(self, piece: str) -> int:
        """The id of one vocabulary piece, e.g. '<end_of_turn>'."""
        i = self.specials.get(piece)
        if i is None:
            i = self._backend.piece_to_id(piece)
        if i is None:
            raise KeyError(f"token {piece!r} is not in the vocabulary of {self.source or 'this tokenizer'}")
        return i

    def encode(self, text: str) -> list[int]:
        """Text -> ids, no BOS. Special-token strings map to their ids; the text between is encoded piecewise."""
        if self._split is None:
            return self._backend.encode(text)
        ids: list[int] = []
        for k, part in enumerate(self._split.split(text)):
            if k % 2:
                ids.append(self.specials[part])
            elif part:
                ids.extend(self._backend.encode(part))
        return ids

    def decode(self, ids, skip_special: bool = True) -> str:
        """Ids -> text. Special tokens are dropped, or written as their pieces with skip_special=False."""
        out, run = [], []
        for i in (int(x) for x in ids):
            if i in self._special_ids:
                if not skip_special:
                    out.append(self._backend.decode(run))
                    out.append(self._backend.id_to_piece(i))
                    run = []
                continue
            run.append(i)
        out.append(self._backend.decode(run))
        return "".join(out)


class _SentencePiece:
    def __init__(self, path: Path):
        import sentencepiece

        self.sp = sentencepiece.SentencePieceProcessor()
        try:
            self.sp.Load(str(path))
        except (OSError, RuntimeError) as e:
            raise ValueError(f"{path}: not a readable SentencePiece model ({e})") from None

    def special_pieces(self) -> dict[str, int]:
        """Control symbols (<bos>, <eos>, ...) and tag-shaped user symbols (<start_of_turn>, ...).

        Used only without a tokenizer_config.json listing the special tokens. SentencePiece never matches
        control symbols in text; a user symbol is recognised by encoding to itself as one piece (its
        type is not exposed without protobuf)."""
        sp, out = self.sp, {}
        for i in range(sp.GetPieceSize()):
            piece = sp.IdToPiece(i)
            if sp.IsControl(i) or (_TAG.match(piece) and not sp.IsUnknown(i) and sp.Encode(piece) == [i]):
                out[piece] = i
        return out

    def vocab_size(self) -> int:
        return self.sp.GetPieceSize()

    def piece_to_id(self, piece: str) -> int | None:
        i = self.sp.PieceToId(piece)
        return None if i == self.sp.unk_id() and piece != self.sp.IdToPiece(i) else i

    def id_to_piece(self, i: int) -> str:
        return self.sp.IdToPiece(i)

    def encode(self, text: str) -> list[int]:
        return self.sp.Encode(text)

    def decode(self, ids: list[int]) -> str:
        return self.sp.Decode(ids) if ids else ""


class _HFTokenizers:
    def __init__(self, path: Path):
        from tokenizers import Tokenizer as HFTokenizer

        try:
            self.tok = HFTokenizer.from_file(str(path))
        except Exception as e:  # the library raises a bare Exception on bad JSON
            raise ValueError(f"{path}: not a readable tokenizer.json ({e})") from None

    def special_pieces(self) -> dict[str, int]:
        return {t.content: i for i, t in self.tok.get_added_tokens_decoder().items() if t.special}

    def vocab_size(self) -> int:
        return self.tok.get_vocab_size(with_added_tokens=True)

    def piece_to_id(self, piece: str) -> int | None:
        return self.tok.token_to_id(piece)

    def id_to_piece(self, i: int) -> str:
        return self.tok.id_to_token(i)

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: list[int]) -> str:
        return self.tok.decode(ids, skip_special_tokens=False) if ids else ""


def _read_config(path: Path) -> dict:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    return data if isinstance(data, dict) else {}


def _token_name(value, default: str) -> str:
    if isinstance(value, dict):
        value = value.get("content")
    return value if isinstance(value, str) and value else default
