"""`asr score`: score hypothesis files against reference files and print a JSON object.

REF and HYP are plain text (one utterance per line, matched by line) or JSONL (manifests or result files,
matched by `id`). WER/CER use the chosen normalizer; BLEU and chrF++ are always computed on raw text.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

from . import metrics
from .normalize import NORMALIZERS, get_normalizer

METRICS = ("wer", "cer", "bleu", "chrf")
# Fields tried in order when reading JSONL; manifests say "text"/"translation", result files say
# "reference"/"hypothesis" and "reference_translation"/"translation".
REF_FIELDS = {"error": ("text", "reference"), "translation": ("reference_translation", "translation", "text")}
HYP_FIELDS = {"error": ("hypothesis", "text"), "translation": ("translation", "text")}


class ScoreError(ValueError):
    """Input files that cannot be scored; the message names the file and the problem."""


def _is_jsonl(path: Path, lines: list[str]) -> bool:
    if path.suffix in (".jsonl", ".ndjson"):
        return True
    first = next((ln for ln in lines if ln.strip()), "")
    return first.lstrip().startswith("{")


def _read_records(path: Path, lines: list[str]) -> list[dict]:
    records = []
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw)
        except json.JSONDecodeError as e:
            raise ScoreError(f"{path} line {number}: malformed JSON ({e.msg})") from None
        if not isinstance(obj, dict) or not isinstance(obj.get("id"), str):
            raise ScoreError(f"{path} line {number}: expected a JSON object with a string 'id'")
        obj["_line"] = number
        records.append(obj)
    return records


def _field(record: dict, names: Sequence[str], path: Path) -> str:
    for name in names:
        if isinstance(record.get(name), str):
            return record[name]
    raise ScoreError(f"{path} line {record['_line']}: no text field (looked for {', '.join(names)})")


def _read(path: Path) -> tuple[list[str], list[dict] | None]:
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ScoreError(f"cannot read {path}: {e}") from None
    if _is_jsonl(path, lines):
        return lines, _read_records(path, lines)
    return lines, None


def _missing(ids: list[str], other: set[str]) -> list[str]:
    return [i for i in ids if i not in other]


def paired_texts(ref: Path, hyp: Path, kind: str = "error") -> tuple[list[str], list[str], list[dict] | None]:
    """(references, hypotheses, reference records or None) matched by id (JSONL) or by line (text)."""
    ref_lines, ref_records = _read(ref)
    hyp_lines, hyp_records = _read(hyp)
    if ref_records is not None and hyp_records is not None:
        hyp_by_id = {r["id"]: r for r in hyp_records}
        ref_ids = [r["id"] for r in ref_records]
        for a, a_path, b, b_path in ((ref_ids, ref, set(hyp_by_id), hyp), (list(hyp_by_id), hyp, set(ref_ids), ref)):
            gone = _missing(a, b)
            if gone:
                more = f" (and {len(gone) - 5} more)" if len(gone) > 5 else ""
                raise ScoreError(f"{len(gone)} id(s) in {a_path} missing from {b_path}: "
                                 f"{', '.join(gone[:5])}{more}")
        refs = [_field(r, REF_FIELDS[kind], ref) for r in ref_records]
        hyps = [_field(hyp_by_id[r["id"]], HYP_FIELDS[kind], hyp) for r in ref_records]
        return refs, hyps, ref_records
    refs = [_field(r, REF_FIELDS[kind], ref) for r in ref_records] if ref_records is not None else ref_lines
    hyps = [_field(r, HYP_FIELDS[kind], hyp) for r in hyp_records] if hyp_records is not None else hyp_lines
    if len(refs) != len(hyps):
        raise ScoreError(f"{ref} has {len(refs)} utterances but {hyp} has {len(hyps)}; "
                         "plain text files are matched line by line")
    return refs, hyps, ref_records


def _language(records: list[dict] | None, kind: str) -> str | None:
    key = "target_language" if kind == "translation" else "language"
    values = {r.get(key) for r in records or [] if r.get(key)}
    return values.pop() if len(values) == 1 else None


def score_files(ref: str | Path, hyp: str | Path, metric_names: Sequence[str] | None = None,
                normalize: str = "none", language: str | None = None) -> dict:
    """The JSON object `asr score` prints. Without `metric_names`: WER (CER for zh/ja/th/lo/my)."""
    ref, hyp = Path(ref), Path(hyp)
    normalizer = get_normalizer(normalize)
    out: dict = {"reference_file": str(ref), "hypothesis_file": str(hyp), "normalize": normalize}
    for name in metric_names or [None]:
        kind = "translation" if name in ("bleu", "chrf") else "error"
        refs, hyps, records = paired_texts(ref, hyp, kind)
        lang = language or _language(records, kind)
        out["utterances"], out["language"] = len(refs), lang
        if kind == "error":
            unit = name or metrics.error_unit(lang)
            out[unit] = metrics.error_rate([normalizer(t) for t in refs], [normalizer(t) for t in hyps],
                                           unit).to_dict()
        else:
            try:
                score = (metrics.bleu if name == "bleu" else metrics.chrf)(hyps, refs, lang)
            except ValueError as e:
                raise ScoreError(f"cannot compute {name}: {e}") from None
            out[name] = {**score.to_dict(), "on_raw_text": True}
    return out


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ref", required=True, type=Path, help="reference: text (one per line) or JSONL with id")
    parser.add_argument("--hyp", required=True, type=Path, help="hypothesis: text (one per line) or JSONL with id")
    parser.add_argument("--metric", action="append", choices=METRICS,
                        help="repeatable; default: wer (cer for zh, ja, th, lo, my)")
    parser.add_argument("--normalize", default="none", choices=NORMALIZERS + ("basic-nodiacritics",),
                        help="text normalizer applied before WER/CER (never before BLEU/chrF); default none")
    parser.add_argument("--language", help="language of the texts (target language for bleu/chrf)")


def run(args: argparse.Namespace) -> int:
    """Entry point for `asr score`; prints the JSON object, returns the exit status (2 on bad input)."""
    try:
        result = score_files(args.ref, args.hyp, args.metric, args.normalize, args.language)
    except ScoreError as e:
        print(f"asr score: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, ensure_ascii=False, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="asr score", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
