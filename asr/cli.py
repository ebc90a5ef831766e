"""The `asr` command. Each subcommand parses its options and hands them to the module that does the work;
streaming and evaluation commands are imported lazily (they sit above `asr` in the layering)."""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace
from pathlib import Path

from .cli_options import add_model_options


class UserError(Exception):
    """A mistake in the command line or its inputs: reported in one line, exit status 2."""


def load_for_cli(args):
    from .loading import load_model_for_command

    try:
        return load_model_for_command(args.model, args.device, args.dtype, getattr(args, "quantize", None))
    except ValueError as e:
        raise UserError(str(e)) from None


def _add_transcribe(sub) -> None:
    for name, help_text in (("transcribe", "transcribe audio files"),
                            ("translate", "transcribe audio files, then translate them")):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("files", nargs="+", metavar="FILE", help="audio files (wav, flac, ogg, aiff, mp3, ...)")
        add_model_options(p)
        if name == "transcribe":
            p.add_argument("--language", help="spoken language, e.g. en or English (default: let the model decide)")
        else:
            p.add_argument("--target-language", required=True, help="language to translate into, e.g. en")
            p.add_argument("--source-language", help="spoken language (default: let the model decide)")
        p.add_argument("--format", default="txt", help="txt, json, srt, vtt, or several joined by commas, or all")
        p.add_argument("--output-dir", default=".", help="where output files go (default: current directory)")
        p.add_argument("--max-new-tokens", type=int, default=256, help="token budget per 30 s window")
        p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
        p.add_argument("--top-k", type=int, default=0)
        p.add_argument("--top-p", type=float, default=1.0)
        p.add_argument("--beam-size", type=int, default=1, help="beam search width (default 1: greedy)")
        p.set_defaults(func=run_transcribe)


def _formats(value: str) -> list[str]:
    from .writers import FORMATS

    if value == "all":
        return list(FORMATS)
    formats = [f.strip() for f in value.split(",") if f.strip()]
    bad = [f for f in formats if f not in FORMATS]
    if bad or not formats:
        raise UserError(f"--format {value!r}: expected txt, json, srt, vtt (comma-separated) or all")
    return formats


def run_transcribe(args) -> int:
    from tqdm import tqdm

    from audio_encoder.audio import AudioLoadError, load_audio
    from lm.sampling import SamplingOptions

    from .loading import submodel_for_command
    from .model import DecodeOptions
    from .writers import output_path, write_result

    formats = _formats(args.format)
    try:
        options = DecodeOptions(max_new_tokens=args.max_new_tokens, sampling=SamplingOptions(
            temperature=args.temperature, top_k=args.top_k, top_p=args.top_p), beam_size=args.beam_size)
    except ValueError as e:
        raise UserError(str(e)) from None
    model = load_for_cli(args)
    try:
        submodel = submodel_for_command(model, args.submodel)
    except ValueError as e:
        raise UserError(str(e)) from None
    options = replace(options, submodel=submodel)
    if args.command == "translate":
        try:
            model.check_task("translate")
        except ValueError as e:
            raise UserError(str(e)) from None
    out_dir = Path(args.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    failed = 0
    files = tqdm(args.files, desc="files", unit="file", disable=len(args.files) < 2 or None)
    for name in files:
        try:
            waveform = load_audio(name)
            with tqdm(desc=Path(name).name, unit="window", leave=False, disable=None) as bar:
                if args.command == "translate":
                    result = model.translate(waveform, args.target_language, args.source_language,
                                             options=options, progress=bar.update)
                else:
                    result = model.transcribe(waveform, args.language, options=options, progress=bar.update)
            meta = {"source": str(name), "task": args.command, "model": model.source,
                    "language": getattr(args, "language", None) or getattr(args, "source_language", None),
                    "target_language": getattr(args, "target_language", None)}
            if submodel is not None:
                meta["submodel"] = str(submodel)
            for fmt in formats:
                write_result(result, output_path(name, out_dir, fmt), fmt, metadata=meta)
        except (AudioLoadError, ValueError, OSError) as e:
            failed += 1
            reason = str(e) if isinstance(e, AudioLoadError) else f"{name}: {e}"
            tqdm.write(f"asr: skipped {reason}", file=sys.stderr)
            continue
        prefix = f"{name}: " if len(args.files) > 1 else ""
        tqdm.write(prefix + result.text)
        if result.translation:
            tqdm.write(prefix + result.translation)
    if failed and len(args.files) > 1:
        print(f"asr: {failed} of {len(args.files)} files failed", file=sys.stderr)
    return 1 if failed else 0


def _add_init_random(sub) -> None:
    p = sub.add_parser("init-random", help="write a small random checkpoint with a working tokenizer")
    p.add_argument("out", metavar="DIR")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=run_init_random)


def run_init_random(args) -> int:
    from .random_checkpoint import write_random_checkpoint

    path = write_random_checkpoint(args.out, seed=args.seed)
    print(f"wrote a random checkpoint to {path}")
    return 0


def _add_info(sub) -> None:
    p = sub.add_parser("info", help="describe a model")
    add_model_options(p, submodel_help=None)
    p.set_defaults(func=run_info)


def run_info(args) -> int:
    from .info import describe

    print(describe(load_for_cli(args)))
    return 0


def _add_lazy(sub, name: str, module: str, help_text: str) -> None:
    """Subcommands whose code lives above `asr` (streaming, eval) or is heavy (train)."""
    import importlib

    p = sub.add_parser(name, help=help_text)
    mod = importlib.import_module(module)
    mod.add_arguments(p)
    p.set_defaults(func=mod.run)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="asr", description="Gemma 3n speech recognition and translation")
    sub = parser.add_subparsers(dest="command", required=True)
    _add_transcribe(sub)
    _add_init_random(sub)
    _add_info(sub)
    for name, module, help_text in LAZY_COMMANDS:
        _add_lazy(sub, name, module, help_text)
    return parser


LAZY_COMMANDS = [
    ("serve", "streaming.server", "serve live captions over websockets"),
    ("stream", "streaming.client", "stream an audio file or stdin to a server"),
    ("eval", "eval.runner_cli", "run an ASR/AST benchmark from a manifest"),
    ("score", "eval.score", "score hypothesis against reference files"),
    ("train", "asr.train", "train the small bundled model"),
    ("slice", "asr.slicing", "MatFormer: slice a Gemma 3n checkpoint (e.g. E4B) into a smaller one"),
]


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except UserError as e:
        print(f"asr: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("asr: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
