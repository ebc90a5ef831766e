"""Command-line options shared by every command that loads a model (`asr transcribe`, `serve`, `eval`, ...),
defined once so their names, choices and help agree. Imported by `asr.cli` and by the commands above `asr`."""
from __future__ import annotations

import argparse

from lm.quant import QUANT_MODES
from lm.submodel import SPEC_HELP

SUBMODEL_METAVAR = "NAME|ffn=..;skip=.."


def add_model_options(p: argparse.ArgumentParser, submodel_help: str | None = SPEC_HELP) -> None:
    """--model, --device, --dtype, --quantize, and --submodel unless `submodel_help` is None."""
    p.add_argument("--model", help="checkpoint directory (default: the bundled model)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N (default: cpu)")
    p.add_argument("--dtype", default="float32", help="float32 or bfloat16 (default: float32)")
    p.add_argument("--quantize", choices=QUANT_MODES,
                   help="weight-only quantized text decoder: int8 (per channel) or int4 (groups of 64); "
                        "activations stay in --dtype (default: float weights)")
    if submodel_help is not None:
        add_submodel_option(p, submodel_help)


def add_submodel_option(p: argparse.ArgumentParser, help_text: str = SPEC_HELP) -> None:
    p.add_argument("--submodel", metavar=SUBMODEL_METAVAR, help=help_text)
