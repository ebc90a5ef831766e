"""Error rates (WER/CER) and translation scores (BLEU/chrF++) computed exactly as the field's tools do.

WER/CER: the edit counts and alignment come from jiwer itself (its default transforms: runs of whitespace
collapsed, ends stripped, split on spaces for words; stripped and split into characters for CER), because
equal-cost alignments can split errors differently (`a b` -> `b a` is one deletion + one insertion for jiwer,
not two substitutions) and published numbers follow jiwer. Corpus rates sum the edits over all utterances and
divide by the summed reference length, never an average of per-utterance rates.

Empty references: a reference with no words contributes 0 to the denominator and its hypothesis words count as
insertions. When the whole corpus has no reference words the rate is the number of insertions (0 when the
hypotheses are empty too), which is jiwer 4's convention, so our numbers never disagree with jiwer's.

BLEU and chrF++ come from sacrebleu (13a tokenizer, `char` for languages written without spaces) on raw text;
every score carries sacrebleu's signature string so a reader can reproduce it.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Iterable, Sequence

import jiwer

# Languages written without spaces between words: CER replaces WER and BLEU tokenizes characters.
CHAR_LANGUAGES = frozenset({"zh", "ja", "th", "lo", "my"})
# Three-letter and dataset-specific spellings of those languages (FLEURS uses e.g. `cmn_hans_cn`).
_ALIASES = {"cmn": "zh", "yue": "zh", "zho": "zh", "chi": "zh", "jpn": "ja", "tha": "th",
            "lao": "lo", "mya": "my", "bur": "my"}


def base_language(language: str | None) -> str:
    """`zh-CN`, `cmn_hans_cn`, `ja_jp` -> `zh`, `zh`, `ja`; empty for None."""
    if not language:
        return ""
    head = language.replace("-", "_").split("_")[0].lower()
    return _ALIASES.get(head, head)


def error_unit(language: str | None) -> str:
    """'cer' for zh, ja, th, lo, my (no spaces between words), else 'wer'."""
    return "cer" if base_language(language) in CHAR_LANGUAGES else "wer"


def bleu_tokenizer(language: str | None) -> str:
    """sacrebleu tokenizer name: 'char' for zh, ja, th, lo, my, else the default '13a'."""
    return "char" if base_language(language) in CHAR_LANGUAGES else "13a"


@dataclass(frozen=True)
class EditCounts:
    """Levenshtein edit counts; `reference_length` = hits + substitutions + deletions."""
    hits: int = 0
    substitutions: int = 0
    deletions: int = 0
    insertions: int = 0
    hypothesis_length: int = 0

    @property
    def reference_length(self) -> int:
        return self.hits + self.substitutions + self.deletions

    @property
    def errors(self) -> int:
        return self.substitutions + self.deletions + self.insertions

    @property
    def rate(self) -> float:
        """Errors / reference length; jiwer's convention (the insertion count) when the reference is empty."""
        if self.reference_length == 0:
            return float(self.insertions)
        return self.errors / self.reference_length

    def __add__(self, other: "EditCounts") -> "EditCounts":
        return EditCounts(self.hits + other.hits, self.substitutions + other.substitutions,
                          self.deletions + other.deletions, self.insertions + other.insertions,
                          self.hypothesis_length + other.hypothesis_length)

    def to_dict(self) -> dict:
        return {**asdict(self), "reference_length": self.reference_length, "errors": self.errors}

    @classmethod
    def from_dict(cls, d: dict) -> "EditCounts":
        try:
            return cls(int(d["hits"]), int(d["substitutions"]), int(d["deletions"]), int(d["insertions"]),
                       int(d.get("hypothesis_length", 0)))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"edit counts need integer hits/substitutions/deletions/insertions, got {d!r}") from e


@dataclass(frozen=True)
class AlignmentOp:
    """One run of the alignment: `kind` is equal, substitute, delete or insert; token index ranges [start, end)."""
    kind: str
    ref_start: int
    ref_end: int
    hyp_start: int
    hyp_end: int


_KINDS = {"equal": "equal", "replace": "substitute", "substitute": "substitute", "delete": "delete",
          "insert": "insert"}  # jiwer names substitutions "substitute" in its chunks


@dataclass(frozen=True)
class Alignment:
    """The edit counts of one utterance with the tokens (words or characters) and how they align."""
    unit: str
    counts: EditCounts
    reference: tuple[str, ...]
    hypothesis: tuple[str, ...]
    ops: tuple[AlignmentOp, ...]

    def pairs(self) -> list[tuple[str | None, str | None]]:
        """(reference token, hypothesis token) per aligned position; None marks an insertion/deletion."""
        out: list[tuple[str | None, str | None]] = []
        for op in self.ops:
            refs = list(self.reference[op.ref_start:op.ref_end])
            hyps = list(self.hypothesis[op.hyp_start:op.hyp_end])
            n = max(len(refs), len(hyps))
            out += [(refs[i] if i < len(refs) else None, hyps[i] if i < len(hyps) else None) for i in range(n)]
        return out

    def to_dict(self) -> dict:
        return {"unit": self.unit, "counts": self.counts.to_dict(), "reference": list(self.reference),
                "hypothesis": list(self.hypothesis), "ops": [asdict(op) for op in self.ops]}


def align(reference: str, hypothesis: str, unit: str = "wer") -> Alignment:
    """Align one reference with one hypothesis by words ('wer') or characters ('cer'), as jiwer does."""
    if unit not in ("wer", "cer"):
        raise ValueError(f"unit must be 'wer' or 'cer', got {unit!r}")
    if not isinstance(reference, str) or not isinstance(hypothesis, str):
        raise TypeError(f"reference and hypothesis must be str, got {type(reference).__name__} "
                        f"and {type(hypothesis).__name__}")
    out = (jiwer.process_words if unit == "wer" else jiwer.process_characters)(reference, hypothesis)
    ops = tuple(AlignmentOp(_KINDS[c.type], c.ref_start_idx, c.ref_end_idx, c.hyp_start_idx, c.hyp_end_idx)
                for c in out.alignments[0])
    ref_tokens, hyp_tokens = tuple(out.references[0]), tuple(out.hypotheses[0])
    counts = EditCounts(out.hits, out.substitutions, out.deletions, out.insertions, len(hyp_tokens))
    return Alignment(unit, counts, ref_tokens, hyp_tokens, ops)


def edit_counts(reference: str, hypothesis: str, unit: str = "wer") -> EditCounts:
    return align(reference, hypothesis, unit).counts


@dataclass(frozen=True)
class ErrorRate:
    """A corpus-level WER or CER: summed edits over summed reference tokens."""
    metric: str
    value: float
    counts: EditCounts
    utterances: int

    def to_dict(self) -> dict:
        return {"metric": self.metric, "value": self.value, "utterances": self.utterances,
                **self.counts.to_dict()}


def sum_counts(counts: Iterable[EditCounts]) -> EditCounts:
    total = EditCounts()
    for c in counts:
        total = total + c
    return total


def error_rate(references: Sequence[str], hypotheses: Sequence[str], unit: str = "wer") -> ErrorRate:
    """Corpus WER ('wer') or CER ('cer') of paired lists."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    total = sum_counts(edit_counts(r, h, unit) for r, h in zip(references, hypotheses))
    return ErrorRate(unit, total.rate, total, len(references))


def wer(references: Sequence[str], hypotheses: Sequence[str]) -> ErrorRate:
    return error_rate(references, hypotheses, "wer")


def cer(references: Sequence[str], hypotheses: Sequence[str]) -> ErrorRate:
    return error_rate(references, hypotheses, "cer")


@dataclass(frozen=True)
class TranslationScore:
    """sacrebleu corpus score; `signature` lets anyone reproduce it with the sacrebleu CLI."""
    metric: str  # 'bleu' or 'chrf++'
    value: float
    signature: str
    segments: int
    details: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _check_pairs(hypotheses: Sequence[str], references: Sequence[str]) -> None:
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    if not references:
        raise ValueError("cannot score an empty corpus (no segments)")


def bleu(hypotheses: Sequence[str], references: Sequence[str], language: str | None = None) -> TranslationScore:
    """Corpus BLEU on raw text; `language` is the target language and picks the tokenizer."""
    from sacrebleu.metrics import BLEU

    _check_pairs(hypotheses, references)
    metric = BLEU(tokenize=bleu_tokenizer(language))
    score = metric.corpus_score(list(hypotheses), [list(references)])
    details = {"precisions": list(score.precisions), "bp": score.bp, "sys_len": score.sys_len,
               "ref_len": score.ref_len}
    return TranslationScore("bleu", score.score, metric.get_signature().format(), len(references), details)


def chrf(hypotheses: Sequence[str], references: Sequence[str], language: str | None = None) -> TranslationScore:
    """Corpus chrF++ (character 6-grams + word bigrams, sacrebleu's CHRF(word_order=2)) on raw text."""
    from sacrebleu.metrics import CHRF

    del language  # chrF needs no tokenizer; kept so every metric has the same call
    _check_pairs(hypotheses, references)
    metric = CHRF(word_order=2)
    score = metric.corpus_score(list(hypotheses), [list(references)])
    return TranslationScore("chrf++", score.score, metric.get_signature().format(), len(references))
