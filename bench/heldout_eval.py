"""Held-out check of a trained model (issue 5's bar: CER <= 10 %, WER <= 25 % per language).

    python bench/heldout_eval.py --model DIR --train-manifest DATA/train/manifest.jsonl \
        --heldout /tmp/heldout --per-language 50 [--json out.json]

Synthesizes (once, cached) `per-language` sentences per language at espeak-ng's default settings, none of
them a training text, transcribes each with `asr.load_model(DIR).transcribe(..., language=...)` and prints
CER/WER per language. The same manifest also feeds the project's own evaluation:
`asr eval --manifest HELDOUT/manifest.jsonl --model DIR`.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import asr  # noqa: E402
from asr.synth import LANGUAGES, build_heldout, read_manifest  # noqa: E402
from asr.train_eval import error_rates  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, type=Path)
    parser.add_argument("--train-manifest", type=Path, help="training manifest whose texts are excluded")
    parser.add_argument("--heldout", type=Path, default=Path("/tmp/heldout_eval"))
    parser.add_argument("--per-language", type=int, default=50)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    exclude = [r["text"] for r in read_manifest(args.train_manifest)] if args.train_manifest else []
    manifest = build_heldout(args.heldout, args.per_language, exclude_texts=exclude)
    model = asr.load_model(args.model)
    started = time.perf_counter()
    pairs: dict[str, list[tuple[str, str]]] = {lang: [] for lang in LANGUAGES}
    for record in read_manifest(manifest):
        hypothesis = model.transcribe(record["audio"], language=record["language"]).text
        pairs[record["language"]].append((record["text"], hypothesis))
    results = {lang: error_rates(p) for lang, p in pairs.items() if p}
    for lang, r in results.items():
        ok = "ok" if r["cer"] <= 0.10 and r["wer"] <= 0.25 else "ABOVE BAR"
        print(f"{lang}: CER {r['cer']:.3f}  WER {r['wer']:.3f}  ({r['n']} sentences)  {ok}")
    print(f"{manifest} | {time.perf_counter() - started:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"model": str(args.model), "manifest": str(manifest), "results": results},
                                        indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
