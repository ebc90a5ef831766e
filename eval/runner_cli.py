"""`asr eval`: run a benchmark from a manifest, or compare two finished runs (`--compare A B`)."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from asr.cli_options import add_model_options

from .datasets import ManifestError, read_manifest
from .report import ReportError, compare
from .runner import MODES, TASKS, check_beam_size, run_eval


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--manifest", type=Path, help="JSONL manifest (see docs/eval.md)")
    add_model_options(parser)
    parser.add_argument("--task", default="transcribe", choices=TASKS)
    parser.add_argument("--mode", default="offline", choices=MODES)
    parser.add_argument("--out", type=Path, default=Path("runs/eval"),
                        help="run folder: results.jsonl, report.json, report.md, plots (default: runs/eval); "
                             "rerunning into the same folder resumes")
    parser.add_argument("--beam-size", type=int, default=1,
                        help="beam search width for offline decoding (default 1: greedy)")
    parser.add_argument("--limit", type=int, help="only the first N utterances of the manifest")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--compare", nargs=2, type=Path, metavar=("A", "B"),
                        help="print two runs (folders or report.json files) side by side and exit")


def _load_model(args):
    from asr.loading import load_model_for_command

    try:
        return load_model_for_command(args.model, args.device, args.dtype, getattr(args, "quantize", None))
    except ValueError as e:
        raise ManifestError(str(e)) from None


def _submodel(model, spec):
    from asr.loading import submodel_for_command

    try:
        return submodel_for_command(model, spec)
    except ValueError as e:
        raise ManifestError(str(e)) from None


def run(args: argparse.Namespace) -> int:
    """Entry point for `asr eval`; returns the exit status (2 on bad input)."""
    try:
        if args.compare:
            a, b = args.compare
            print(compare(a, b, names=(str(a), str(b))), end="")
            return 0
        if args.manifest is None:
            raise ManifestError("--manifest is required (or --compare A B)")
        if args.limit is not None and args.limit < 1:
            raise ManifestError(f"--limit must be at least 1, got {args.limit}")
        check_beam_size(args.beam_size, args.mode)
        read_manifest(args.manifest)  # bad lines fail before the (slow) model load
        model = _load_model(args)
        submodel = _submodel(model, getattr(args, "submodel", None))
        run_eval(model, args.manifest, task=args.task, mode=args.mode, out_dir=args.out, limit=args.limit,
                 progress=not args.no_progress, submodel=submodel, beam_size=args.beam_size)
    except (ManifestError, ReportError, NotImplementedError) as e:
        print(f"asr eval: {e}", file=sys.stderr)
        return 2
    print(f"report: {args.out / 'report.md'}")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="asr eval", description=__doc__.splitlines()[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
