"""`asr slice`: MatFormer (Mix-n-Match) slicing, a Gemma 3n checkpoint rewritten into a smaller one.

Gemma 3n E4B is trained as a MatFormer: each feed-forward layer's first k hidden units form a working
smaller layer, and some layers can be dropped. Google's MatFormer Lab notebook (gemma-cookbook,
`Gemma/[Gemma_3n]MatFormer_Lab.ipynb`) extracts such a sub-model offline; this module does the same
rewrite (reference notes, section 5):

config.json (text_config)
  - num_hidden_layers -= number of skipped layers; intermediate_size = the per-layer FFN list;
  - num_kv_shared_layers -= skipped layers at or after the first KV-shared layer (the notebook: `>= 20`);
  - activation_sparsity_pattern = the kept layers' entries (the notebook writes [0.95] * (10 - #skipped
    below 10) + [0] * rest, which is the same list for E4B's pattern);
  - layer_types = the kept layers' types. The notebook leaves the old, longer list, which transformers 5.23
    rejects (`validate_layer_type`); a kept layer keeps the attention type its weights were trained with, and for the published
    configurations (whole 5-layer blocks skipped) this equals the notebook's list cut to length.
weights
  - tensors of skipped `.layers.{i}.` are dropped and the rest renumbered consecutively;
  - mlp.gate_proj / mlp.up_proj keep rows [:ffn], mlp.down_proj keeps columns [:, :ffn];
  - per_layer_model_projection [L*D, H] and embed_tokens_per_layer [V, L*D] keep the D-wide blocks of
    the kept layers;
  - everything else is copied byte for byte (audio, vision, embeddings, the unused k/v of KV-shared
    layers), in its stored dtype.
The KV producers (the last non-shared layer of each attention type, E4B's 18 and 19, the notebook's
"reserved" layers) cannot be skipped: the shared layers read their keys and values. (Without KV sharing
nothing is reserved; the notebook's formula would still name the last two layers.)

The request's checks and the sliced config are `lm.submodel`'s (SubModel): the decoder runs the same
sub-model on the full weights without writing anything (elastic execution, `--submodel`).

The source is read through `asr.checkpoint` (memory-mapped views) and written by `asr.shard_writer` in row
blocks of 64 MB, so memory stays at a few blocks whatever the checkpoint's size (E4B: 15.7 GB); source
ranges already written are released from our mapping as we go.
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import re
import secrets
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

from lm.config import ConfigError, TextConfig
# PRESETS, Preset and reserved_layers lived here before lm.submodel; they are still importable from here.
from lm.submodel import (PRESETS, Preset, SubModel, SubModelError, from_preset, parse_int_list,  # noqa: F401
                         reserved_layers)
from lm.submodel import plan as plan_submodel

from .checkpoint import INDEX_FILE, Checkpoint, CheckpointError
from .config import CONFIG_FILE, METADATA_KEY, SpeechConfig
from .shard_writer import OutTensor, write_checkpoint

DEFAULT_MAX_SHARD_BYTES = 2 * 1024**3
BLOCK_BYTES = 64 * 1024**2  # source bytes read per step; bounds the memory a slice needs
# Files that hold weights in some format: never copied (they would be the unsliced model).
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".gguf", ".h5", ".msgpack", ".onnx")
_LAYER = re.compile(r"\.layers\.(\d+)\.")  # the notebook's pattern; only the language model has `.layers.N.`


class SliceError(SubModelError):
    """A slicing request that cannot be carried out; the message names the value and what was expected."""


@dataclass(frozen=True)
class SlicePlan:
    kept: tuple[int, ...]  # source layer of each new layer
    ffn: tuple[int, ...]  # FFN width of each new layer
    source: TextConfig

    @property
    def renumber(self) -> dict[int, int]:
        return {old: new for new, old in enumerate(self.kept)}

    @property
    def submodel(self) -> SubModel:
        return SubModel(self.kept, self.ffn, self.source.num_hidden_layers)


# ---- config ------------------------------------------------------------------------------------------

def plan_slice(config: dict, ffn: list[int] | tuple[int, ...] | int | None, skip_layers,
               source: str = CONFIG_FILE) -> SlicePlan:
    """Check a request against a config.json object and resolve it into kept layers and FFN widths
    (the checks are lm.submodel's, shared with elastic execution)."""
    if not isinstance(config.get("text_config"), dict):
        raise SliceError(f"{source}: no 'text_config' object; expected a Gemma 3n (model_type gemma3n) config")
    try:
        text = TextConfig.from_dict(config["text_config"], source)
        sub = plan_submodel(text, ffn, skip_layers, ffn_label="--ffn", model_label="sliced model")
    except (ConfigError, SubModelError) as e:
        raise SliceError(str(e)) from None
    return SlicePlan(sub.kept, sub.ffn, text)


def slice_config(config: dict, plan: SlicePlan) -> dict:
    """The sliced config.json object: the source's, with the per-layer fields rewritten."""
    text = plan.source
    sliced = plan.submodel.sliced_config(text)
    out = copy.deepcopy(config)
    tc = out["text_config"]
    tc["num_hidden_layers"] = sliced.num_hidden_layers
    tc["intermediate_size"] = list(sliced.intermediate_size)
    tc["num_kv_shared_layers"] = sliced.num_kv_shared_layers
    tc["activation_sparsity_pattern"] = list(sliced.activation_sparsity_pattern)
    tc["layer_types"] = list(sliced.layer_types)
    meta = out.get(METADATA_KEY)
    meta = dict(meta) if isinstance(meta, dict) else {}
    skipped = [i for i in range(text.num_hidden_layers) if i not in plan.kept]
    meta["matformer_slice"] = {"source_layers": text.num_hidden_layers, "skip_layers": skipped,
                               "ffn": list(plan.ffn)}
    out[METADATA_KEY] = meta
    try:
        SpeechConfig.from_dict(out)
    except ValueError as e:  # a slice our own checks let through; report it rather than write it
        raise SliceError(f"the sliced config is not valid: {e}") from None
    return out


# ---- weights -----------------------------------------------------------------------------------------

Blocks = Iterator[tuple[int, torch.Tensor]]  # (source rows consumed so far, next output block)


def _blocks(t: torch.Tensor, transform: Callable[[torch.Tensor], torch.Tensor] = lambda b: b) -> Blocks:
    """`transform` of `t` taken BLOCK_BYTES of source rows at a time (dim 0), with the rows consumed."""
    if t.dim() == 0 or t.numel() == 0:
        yield (t.shape[0] if t.dim() else 0), transform(t)
        return
    step = max(1, BLOCK_BYTES // (t[0].numel() * t.element_size()))
    for i in range(0, t.shape[0], step):
        block = t[i:i + step]
        yield i + block.shape[0], transform(block)


def _out_tensor(ck: Checkpoint, src: str, dst: str, shape: tuple[int, ...],
                blocks: Callable[[torch.Tensor], Blocks] = _blocks) -> OutTensor:
    entry = ck.entries[src]

    def produce() -> Iterator[torch.Tensor]:
        # Each block's source rows go back to the OS once written: otherwise every page read stays
        # charged to the process (15.7 GB for E4B, 4.7 GB for its PLE table alone).
        done = 0
        for rows, block in blocks(ck.tensor(src)):
            yield block
            ck.release(src, done, rows)
            done = rows
        ck.release(src)

    return OutTensor(dst, entry.dtype, shape, produce)


def _check_shape(ck: Checkpoint, name: str, expected: tuple[int, ...], what: str) -> None:
    shape = ck.entries[name].shape
    if tuple(shape) != tuple(expected):
        raise SliceError(f"{ck.entries[name].file}: tensor {name!r} has shape {list(shape)}, expected "
                         f"{list(expected)} ({what} from config.json)")


def plan_tensors(ck: Checkpoint, plan: SlicePlan) -> list[OutTensor]:
    """Every output tensor, in the source's order, with how to produce its bytes."""
    text = plan.source
    n, d = text.num_hidden_layers, text.hidden_size_per_layer_input
    kept = list(plan.kept)
    renumber = plan.renumber
    out: list[OutTensor] = []
    for name in ck.names():
        shape = tuple(ck.entries[name].shape)
        m = _LAYER.search(name)
        if m:
            old = int(m.group(1))
            if old >= n:
                raise SliceError(f"{ck.entries[name].file}: tensor {name!r} belongs to layer {old}, but "
                                 f"config.json has {n} layers")
            if old not in renumber:
                continue
            new = renumber[old]
            dst = name[:m.start()] + f".layers.{new}." + name[m.end():]
            width, full = plan.ffn[new], text.intermediate_size[old]
            if dst.endswith(("mlp.gate_proj.weight", "mlp.up_proj.weight")):
                _check_shape(ck, name, (full, shape[-1]), f"layer {old}'s intermediate_size")
                out.append(_out_tensor(ck, name, dst, (width, shape[1]), lambda t, w=width: _blocks(t[:w])))
            elif dst.endswith("mlp.down_proj.weight"):
                _check_shape(ck, name, (shape[0], full), f"layer {old}'s intermediate_size")
                out.append(_out_tensor(ck, name, dst, (shape[0], width),
                                       lambda t, w=width: _blocks(t, lambda b: b[:, :w].contiguous())))
            else:
                out.append(_out_tensor(ck, name, dst, shape))
        elif "per_layer_model_projection" in name:
            _check_shape(ck, name, (n * d, shape[-1]), "num_hidden_layers x hidden_size_per_layer_input")

            def projection_blocks(t: torch.Tensor) -> Blocks:
                # [L*D, H] = L blocks of D rows: the kept layers' blocks, in order.
                for i in kept:
                    for rows, block in _blocks(t[i * d:(i + 1) * d]):
                        yield i * d + rows, block

            out.append(_out_tensor(ck, name, name, (len(kept) * d, shape[1]), projection_blocks))
        elif "embed_tokens_per_layer" in name:
            _check_shape(ck, name, (shape[0], n * d), "num_hidden_layers x hidden_size_per_layer_input")
            # [V, L*D] viewed as [V, L, D]: every block of token rows keeps the kept layers' columns.
            out.append(_out_tensor(ck, name, name, (shape[0], len(kept) * d), lambda t: _blocks(
                t, lambda b: b.view(b.shape[0], n, d)[:, kept].reshape(b.shape[0], len(kept) * d))))
        else:
            out.append(_out_tensor(ck, name, name, shape))
    return out


# ---- the whole checkpoint ----------------------------------------------------------------------------

def _read_config(src: Path) -> dict:
    if not src.is_dir():
        raise SliceError(f"{src}: not a directory (expected a Gemma 3n checkpoint folder)")
    path = src / CONFIG_FILE
    try:
        config = json.loads(path.read_text())
    except FileNotFoundError:
        raise SliceError(f"{src}: not a checkpoint (no {CONFIG_FILE})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise SliceError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise SliceError(f"{path}: expected a JSON object")
    return config


def _check_out_dir(out: Path) -> None:
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SliceError(f"{out}: output directory exists and is not empty (choose a new --out)")


def _other_files(src: Path) -> list[Path]:
    """Tokenizer, generation config, chat template, ...: copied unchanged. Weights and config.json are not."""
    return sorted(p for p in src.iterdir()
                  if p.is_file() and p.name != CONFIG_FILE and p.name != INDEX_FILE
                  and not p.name.endswith(_WEIGHT_SUFFIXES))


def slice_checkpoint(src_dir: str | Path, out_dir: str | Path, ffn: list[int] | int | None,
                     skip_layers: list[int], progress: bool = True,
                     max_shard_bytes: int = DEFAULT_MAX_SHARD_BYTES) -> Path:
    """Write the MatFormer slice of `src_dir` into `out_dir` (absent or empty) and return it.

    `ffn`: one width per kept layer, one width for all, or None (each kept layer keeps its width).
    `skip_layers`: source layer indices to drop. The directory appears complete or not at all: it is
    written next to `out_dir` under a temporary name and renamed at the end.
    """
    src, out = Path(src_dir), Path(out_dir)
    config = _read_config(src)
    plan = plan_slice(config, ffn, skip_layers, str(src / CONFIG_FILE))
    _check_out_dir(out)
    new_config = slice_config(config, plan)
    try:
        ck = Checkpoint(src)
    except CheckpointError as e:
        raise SliceError(str(e)) from None
    try:
        tensors = plan_tensors(ck, plan)
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp = out.parent / f".{out.name}.partial-{secrets.token_hex(4)}"
        tmp.mkdir()  # not mkdtemp: the result should get the usual permissions, not 0700
    except BaseException:
        ck.close()
        raise
    try:
        from tqdm import tqdm

        total = sum(t.nbytes for t in tensors)
        with tqdm(total=total, unit="B", unit_scale=True, desc=f"slicing into {out.name}",
                  disable=None if progress else True) as bar:
            write_checkpoint(tmp, tensors, max_shard_bytes, bar.update)
        (tmp / CONFIG_FILE).write_text(json.dumps(new_config, indent=2) + "\n")
        for p in _other_files(src):
            shutil.copy2(p, tmp / p.name)
        os.replace(tmp, out)  # an empty `out` is replaced too
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        ck.close()
    return out


# ---- command line ------------------------------------------------------------------------------------

def _int_list(option: str, value: str) -> list[int]:
    """'20,21,22' or ranges '20-24'."""
    try:
        return parse_int_list(option, value)
    except SubModelError as e:
        raise SliceError(str(e)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", type=Path, help="source checkpoint directory (e.g. Gemma 3n E4B)")
    parser.add_argument("--out", type=Path, help="directory to write (must not exist or be empty)")
    parser.add_argument("--preset", help="a published configuration (see --list-presets)")
    parser.add_argument("--ffn", help="FFN width per kept layer, comma-separated, or one number for all "
                        "(default: unchanged)")
    parser.add_argument("--skip-layers", help="source layers to drop, e.g. 20,21,22,23,24 or 20-24")
    parser.add_argument("--max-shard-gb", type=float, default=DEFAULT_MAX_SHARD_BYTES / 1024**3,
                        help="largest output file in GiB (default: 2; a bigger single tensor gets its own file)")
    parser.add_argument("--list-presets", action="store_true", help="print the presets and exit")


def _request(args: argparse.Namespace) -> tuple[int | list[int] | None, list[int]]:
    if args.preset is not None:
        if args.ffn is not None or args.skip_layers is not None:
            raise SliceError("--preset cannot be combined with --ffn or --skip-layers")
        text = plan_slice(_read_config(args.model), None, ()).source
        try:
            sub = from_preset(args.preset, text, str(args.model))
        except SubModelError as e:
            raise SliceError(str(e)) from None
        return list(sub.ffn), sorted(sub.skip)
    if args.ffn is None and args.skip_layers is None:
        raise SliceError("nothing to slice: give --preset, --ffn and/or --skip-layers (see --list-presets)")
    ffn = None
    if args.ffn is not None:
        widths = _int_list("--ffn", args.ffn)
        ffn = widths[0] if len(widths) == 1 else widths
    skip = _int_list("--skip-layers", args.skip_layers) if args.skip_layers is not None else []
    return ffn, skip


def run(args: argparse.Namespace) -> int:
    """Entry point of `asr slice`: 0 on success, 2 on a bad request, 1 when writing failed."""
    if args.list_presets:
        for p in PRESETS.values():
            print(f"{p.name}: {p.description}")
        print("Other configurations: --ffn W1,W2,... (one per kept layer) or --ffn W, and --skip-layers.")
        return 0
    try:
        if args.model is None or args.out is None:
            raise SliceError("--model and --out are required")
        if not args.max_shard_gb > 0:
            raise SliceError(f"--max-shard-gb must be positive, got {args.max_shard_gb}")
        ffn, skip = _request(args)
        out = slice_checkpoint(args.model, args.out, ffn, skip, max_shard_bytes=int(args.max_shard_gb * 1024**3))
    except (SliceError, ConfigError) as e:
        print(f"asr slice: {e}", file=sys.stderr)
        return 2
    except OSError as e:
        print(f"asr slice: writing {args.out} failed: {e}", file=sys.stderr)
        return 1
    config = json.loads((out / CONFIG_FILE).read_text())
    done = config[METADATA_KEY]["matformer_slice"]
    widths = sorted(set(done["ffn"]))
    print(f"wrote {out}: {len(done['ffn'])} of {done['source_layers']} layers"
          f" (skipped {done['skip_layers'] or 'none'}), FFN {widths[0] if len(widths) == 1 else done['ffn']}")
    return 0
