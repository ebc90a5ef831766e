"""`python -m eval.prepare SOURCE ...`: turn a local dataset copy into a manifest (see docs/eval.md).

    python -m eval.prepare librispeech LibriSpeech/test-clean --out test-clean.jsonl
    python -m eval.prepare fleurs fleurs/fr_fr/test.tsv --out fleurs_fr.jsonl
    python -m eval.prepare common-voice cv/de/test.tsv --out cv_de.jsonl
    python -m eval.prepare covost2 covost_v2.fr_en.tsv --clips cv/fr/clips --split test --out covost_fr_en.jsonl
    python -m eval.prepare asterisk --out-dir sets/asterisk
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from . import asterisk, datasets


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="source", required=True)
    p = sub.add_parser("librispeech", help="a LibriSpeech tree (*.trans.txt + .flac)")
    p.add_argument("root", type=Path)
    p = sub.add_parser("fleurs", help="a FLEURS split tsv")
    p.add_argument("tsv", type=Path)
    p.add_argument("--audio-dir", type=Path)
    p.add_argument("--language")
    p.add_argument("--normalized-text", action="store_true", help="use the normalized transcription column")
    p = sub.add_parser("common-voice", help="a Common Voice split tsv")
    p.add_argument("tsv", type=Path)
    p.add_argument("--clips", type=Path)
    p.add_argument("--language")
    p = sub.add_parser("covost2", help="a covost_v2.<src>_<tgt>.tsv with Common Voice clips")
    p.add_argument("tsv", type=Path)
    p.add_argument("--clips", type=Path, required=True)
    p.add_argument("--split")
    for name in ("librispeech", "fleurs", "common-voice", "covost2"):
        sub.choices[name].add_argument("--out", type=Path, required=True, help="manifest to write")
    p = sub.add_parser("asterisk", help="the installed Debian Asterisk prompts (en, es, fr, it)")
    p.add_argument("--out-dir", type=Path, required=True)


def run(args: argparse.Namespace) -> int:
    try:
        if args.source == "asterisk":
            for path in asterisk.write_manifests(args.out_dir).values():
                print(path)
            return 0
        if args.source == "librispeech":
            utts = datasets.from_librispeech(args.root)
        elif args.source == "fleurs":
            utts = datasets.from_fleurs(args.tsv, args.audio_dir, args.language, args.normalized_text)
        elif args.source == "common-voice":
            utts = datasets.from_common_voice(args.tsv, args.clips, args.language)
        else:
            utts = datasets.from_covost2(args.tsv, args.clips, args.split)
    except datasets.ManifestError as e:
        print(f"eval.prepare: {e}", file=sys.stderr)
        return 2
    count = datasets.write_manifest(args.out, utts)
    print(f"{args.out}: {count} utterances")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m eval.prepare", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
