"""load_model: a Hugging Face Gemma 3n checkpoint directory -> SpeechModel.

The modules are built without initializing their weights (construction only reserves address space),
then every parameter is replaced by the checkpoint tensor: a view of the memory map when the dtype and
device already match, a converted copy otherwise. The vision tower, the vision embedder and the k/v
projections of KV-shared layers (which 5.x never uses) are never read; with parts=("text",) neither are
the audio tower and embedder. With quantize="int8"/"int4" the decoder is loaded and quantized one layer at
a time (lm/quant.py), and so are the audio tower's projections.
"""
from __future__ import annotations

import contextlib
import ctypes
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from lm.quant import QuantizedWeight, check_mode, QuantSummary, quantize_linears_, quantize_text_model_, summarize
from lm.tokenizer import Tokenizer, TokenizerNotFound

from .checkpoint import Checkpoint, CheckpointError, load_module_weights
from .config import SpeechConfig
from .model import SpeechModel

_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16}


def parse_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    try:
        return _DTYPES[str(dtype).lower()]
    except KeyError:
        raise ValueError(f"unknown dtype {dtype!r}; expected one of float32, bfloat16, float16") from None


def parse_device(device: str | torch.device) -> torch.device:
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} requested but CUDA is not available on this machine")
    return device


@contextlib.contextmanager
def _skip_weight_init():
    """Module constructors fill weights with random values; we overwrite them all, so skip that work."""
    names = ["normal_", "uniform_", "kaiming_uniform_", "kaiming_normal_", "xavier_uniform_", "xavier_normal_",
             "trunc_normal_", "zeros_", "ones_", "constant_"]
    saved = {n: getattr(torch.nn.init, n) for n in names}
    for n in names:
        setattr(torch.nn.init, n, lambda tensor, *a, **k: tensor)
    try:
        yield
    finally:
        for n, f in saved.items():
            setattr(torch.nn.init, n, f)


def shared_kv_names(config: SpeechConfig, prefix: str = "model.language_model.") -> set[str]:
    """Checkpoint tensors of KV-shared layers that the 5.x reference never reads."""
    text = config.text
    first_shared = text.num_hidden_layers - text.num_kv_shared_layers
    return {f"{prefix}layers.{i}.self_attn.{p}.weight" for i in range(first_shared, text.num_hidden_layers)
            for p in ("k_proj", "v_proj", "k_norm")}


def _stop_ids(directory: Path, config: SpeechConfig, tokenizer) -> tuple[int, ...]:
    ids: list[int] = []

    def add(value):
        for v in value if isinstance(value, (list, tuple)) else [value]:
            if isinstance(v, int) and v not in ids:
                ids.append(v)

    add(config.text.eos_token_id)
    gen = directory / "generation_config.json"
    if gen.exists():
        try:
            add(json.loads(gen.read_text()).get("eos_token_id"))
        except (json.JSONDecodeError, AttributeError):
            raise CheckpointError(f"{gen}: not valid JSON") from None
    if tokenizer is not None:
        add(tokenizer.token_id("<end_of_turn>"))
    return tuple(ids)


AUDIO_PREFIXES = ("model.audio_tower.", "model.embed_audio.")
TEXT_PREFIX = "model.language_model."
VISION_PREFIXES = ("model.vision_tower.", "model.embed_vision.")
PARTS = ("audio", "text")


def check_parts(parts) -> tuple[str, ...]:
    """The parts to load, in canonical order: a subset of PARTS that includes "text"."""
    names = (parts,) if isinstance(parts, str) else tuple(parts)
    unknown = [p for p in names if p not in PARTS]
    if unknown:
        raise ValueError(f"unknown model part {unknown[0]!r}; parts must be a subset of {PARTS} "
                         "(the vision tower is never loaded)")
    if "text" not in names:
        raise ValueError(f"parts {names}: 'text' is required (the decoder writes every answer)")
    return tuple(p for p in PARTS if p in names)


@dataclass
class LoadReport:
    """What `load_model` read, kept and skipped (`model.load_report`, printed by `asr info`)."""

    parts: tuple[str, ...]
    quantize: str | None
    read: dict[str, int]  # part -> checkpoint bytes of the tensors loaded for it (the PLE table excluded)
    held: dict[str, int]  # part -> bytes its weights occupy as loaded (converted and/or quantized)
    ple_table: int  # the PLE table: left mapped from the file, resident only for the rows read
    skipped: dict[str, int]  # tensor group -> checkpoint bytes never read
    quant: QuantSummary | None = None

    def lines(self) -> list[str]:
        out = [f"loaded parts: {', '.join(self.parts)}"
               + (f", {' and '.join(self._quantized_parts())} quantized to {self.quantize}" if self.quantize else "")]
        for part in self.parts:
            out.append(f"  {part}: read {_size(self.read[part])} from the checkpoint, holds {_size(self.held[part])}")
        out.append(f"  text PLE table: {_size(self.ple_table)} left mapped (resident only for the rows in use)")
        if self.quant is not None:
            kinds = ", ".join(f"{n} {k}" for k, n in sorted(self.quant.quantized.items()))
            out.append(f"  quantized matrices: {kinds or 'none'} ({_size(self.quant.quantized_bytes)}); "
                       f"{len(self.quant.float_linears)} kept float "
                       f"({_size(self.quant.float_linear_bytes)})")
        skipped = ", ".join(f"{g} {_size(n)}" for g, n in self.skipped.items() if n) or "nothing"
        out.append(f"skipped (never read): {skipped}")
        return out

    def _quantized_parts(self) -> list[str]:
        return ["decoder"] + (["audio tower"] if "audio" in self.parts else [])


def _size(n: int) -> str:
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return f"{n} B"


def _held_bytes(module: torch.nn.Module, exclude: set[int] = frozenset()) -> int:
    seen = {id(t) for t in exclude}
    total = 0
    for t in [*module.parameters(), *module.buffers()]:
        if id(t) not in seen:
            seen.add(id(t))
            total += t.numel() * t.element_size()
    return total


def _trim_heap() -> None:
    """Hand freed float temporaries back to the OS. glibc keeps freed blocks below its (adaptive) mmap
    threshold in the heap: measured on a 69 M-parameter model, 87 MB of them outlived int8 quantization."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc


def _release_quantized(module: torch.nn.Module, prefix: str, checkpoint: Checkpoint) -> None:
    """Give back the file pages of every matrix under `module` (checkpoint names `prefix` + ...) that is
    now quantized, and the float temporaries quantizing them left in the heap."""
    for name, m in module.named_modules():
        if isinstance(m, QuantizedWeight):
            checkpoint.release(f"{prefix}{name}.weight")
    _trim_heap()


def _copy_views(module: torch.nn.Module, prefix: str, checkpoint: Checkpoint, keep: set[str] = frozenset()
                ) -> None:
    """Replace the tensors of `module` (checkpoint names `prefix` + ...) still viewing the map by private
    copies, except the names in `keep`, and give back their pages. In a quantized model the map stays open
    for the PLE table alone; a float tensor left as a view (a norm, a convolution) faulted in the pages
    around it, those of the quantized-away matrices, by the kernel's read-around whenever it was read
    (measured at E2B int8: 310 MiB of them resident after one 30 s prompt)."""
    for owner_name, owner in module.named_modules():
        for table in (owner._parameters, owner._buffers):
            for name, t in table.items():
                full = f"{owner_name}.{name}" if owner_name else name
                if t is None or full in keep or not checkpoint.views(t):
                    continue
                copy = t.detach().clone()
                table[name] = torch.nn.Parameter(copy, requires_grad=False) if table is owner._parameters else copy
                if prefix + full in checkpoint.entries:
                    checkpoint.release(prefix + full)


def _load_blockwise_quantized(module: torch.nn.Module, blocks: str, checkpoint: Checkpoint, prefix: str, device,
                              dtype, mode: str, ignore: set[str] = frozenset(), host: set[str] = frozenset()
                              ) -> tuple[int, int]:
    """Load `module` one block of its ModuleList `blocks` at a time, quantizing each block's projections and
    giving back their file pages before the next, then the rest of the module (float: the caller quantizes what
    it wants of it), so that at most
    one block's float weights exist at once next to the quantized ones. Returns load_module_weights' counts."""
    nbytes = views = 0
    layers = getattr(module, blocks)
    for i, layer in enumerate(layers):
        layer_prefix = f"{prefix}{blocks}.{i}."
        b, v = load_module_weights(layer, checkpoint, layer_prefix, device, dtype, ignore=ignore)
        quantize_linears_(layer, mode)
        _release_quantized(layer, layer_prefix, checkpoint)
        _copy_views(layer, layer_prefix, checkpoint)
        nbytes, views = nbytes + b, views + v
    in_blocks = {n for n in checkpoint.entries if n.startswith(f"{prefix}{blocks}.")}
    setattr(module, blocks, torch.nn.ModuleList())  # the rest of the module, without the blocks loaded above
    try:
        b, v = load_module_weights(module, checkpoint, prefix, device, dtype, ignore=ignore | in_blocks,
                                   as_stored=host)
    finally:
        setattr(module, blocks, layers)
    return nbytes + b, views + v


def _load_text_quantized(lm, checkpoint: Checkpoint, device, dtype, ignore: set[str], host: set[str],
                         mode: str) -> tuple[int, int]:
    """The decoder layer by layer, then its global matrices and the tied embedding/head (1 GB in E2B,
    whose pages go back slice by slice as they are quantized)."""
    counts = _load_blockwise_quantized(lm, "layers", checkpoint, TEXT_PREFIX, device, dtype, mode, ignore, host)
    embedding = TEXT_PREFIX + "embed_tokens.weight"
    quantize_text_model_(lm, mode, on_embedding_rows=lambda first, last: checkpoint.release(embedding, first, last))
    _release_quantized(lm, TEXT_PREFIX, checkpoint)
    _copy_views(lm, TEXT_PREFIX, checkpoint, keep=host)
    return counts


def _load_audio_quantized(tower, checkpoint: Checkpoint, device, dtype, mode: str) -> tuple[int, int]:
    """The audio tower block by block, then its input projection. Its projections are 1.36 GB in E2B's
    bf16, more than any part but the decoder; left float, reading them once for the first audio made them
    resident for good. The convolutions stay float."""
    prefix = AUDIO_PREFIXES[0]
    counts = _load_blockwise_quantized(tower, "conformer", checkpoint, prefix, device, dtype, mode)
    quantize_linears_(tower, mode)
    _release_quantized(tower, prefix, checkpoint)
    _copy_views(tower, prefix, checkpoint)
    return counts


def _skipped(checkpoint: Checkpoint, loaded_prefixes: tuple[str, ...], shared: set[str]) -> dict[str, int]:
    groups = {"vision": [], "shared-layer k/v": [], "audio": [], "other": []}
    for name in checkpoint.entries:
        if name in shared:
            groups["shared-layer k/v"].append(name)
        elif name.startswith(loaded_prefixes):
            continue
        elif name.startswith(VISION_PREFIXES):
            groups["vision"].append(name)
        elif name.startswith(AUDIO_PREFIXES):
            groups["audio"].append(name)
        else:
            groups["other"].append(name)
    return {g: checkpoint.nbytes(names) for g, names in groups.items()}


def load_model(path: str | Path | None = None, device: str | torch.device = "cpu",
               dtype: str | torch.dtype = torch.float32, quantize: str | None = None, parts=PARTS) -> SpeechModel:
    """Load a Gemma 3n checkpoint directory (config.json, model.safetensors or a sharded index,
    tokenizer.model and/or tokenizer.json) for speech recognition and translation.

    quantize: None (float weights in `dtype`), "int8" or "int4": the text decoder's matrices, its tied
    embedding/head and the audio tower's projections become weight-only quantized (lm/quant.py);
    activations stay in `dtype`. The audio embedder and the convolutions stay float.
    parts: ("audio", "text") or ("text",); with "text" only, the audio tower and embedder are never built
    or read, and audio calls raise AudioNotLoaded. The vision tower is never loaded.
    `model.load_report` (a LoadReport) says what was read, kept and skipped.
    path None: the model bundled with the package (asr/assets/model)."""
    if path is None:
        from .bundled import default_model_dir

        path = default_model_dir()
    directory = Path(path)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a directory (expected a Hugging Face checkpoint folder)")
    device, dtype = parse_device(device), parse_dtype(dtype)
    mode, parts = check_mode(quantize), check_parts(parts)
    config = SpeechConfig.from_file(directory)
    checkpoint = Checkpoint(directory)
    try:
        tokenizer = Tokenizer.from_dir(directory)
    except TokenizerNotFound:
        tokenizer = None
    with_audio = "audio" in parts
    with _skip_weight_init():
        model = SpeechModel(config, tokenizer, _stop_ids(directory, config, tokenizer), source=str(directory),
                            with_audio=with_audio)
    inner = model.model
    lm = inner.language_model
    shared = shared_kv_names(config)
    # The PLE table stays a host-side view of the file (lm/ple.py): only rows in use become resident.
    lm.embed_tokens_per_layer.on_host = True
    host = {"embed_tokens_per_layer.weight"}
    read, views = {}, 0
    if with_audio:
        read["audio"] = 0
        for module, prefix in zip((inner.audio_tower, inner.embed_audio), AUDIO_PREFIXES):
            if module is inner.audio_tower and mode is not None:
                nbytes, nviews = _load_audio_quantized(module, checkpoint, device, dtype, mode)
            else:
                nbytes, nviews = load_module_weights(module, checkpoint, prefix, device, dtype)
                if mode is not None:
                    _copy_views(module, prefix, checkpoint)
            read["audio"], views = read["audio"] + nbytes, views + nviews
    if mode is None:
        nbytes, nviews = load_module_weights(lm, checkpoint, TEXT_PREFIX, device, dtype, ignore=shared,
                                             as_stored=host)
    else:
        nbytes, nviews = _load_text_quantized(lm, checkpoint, device, dtype, shared, host, mode)
    for name in host:
        checkpoint.read_randomly(TEXT_PREFIX + name)
    ple = checkpoint.nbytes([TEXT_PREFIX + n for n in host])
    read["text"], views = nbytes - ple, views + nviews
    model.to(device)  # buffers computed at construction (RoPE tables and the like)
    table = lm.embed_tokens_per_layer.weight
    held = {"text": _held_bytes(lm, exclude={table})}
    if with_audio:
        held["audio"] = _held_bytes(inner.audio_tower) + _held_bytes(inner.embed_audio)
    loaded = (*(AUDIO_PREFIXES if with_audio else ()), TEXT_PREFIX)
    model.load_report = LoadReport(parts, mode, read, held, table.numel() * table.element_size(),
                                   _skipped(checkpoint, loaded, shared & set(checkpoint.entries)),
                                   summarize(inner) if mode else None)
    model.loaded_bytes = sum(read.values()) + ple
    if views:
        model.checkpoint = checkpoint  # parameters view the memory maps: keep them mapped
    else:
        checkpoint.close()  # everything was converted or copied: the file pages need not stay mapped
    return model.eval()


def load_model_for_command(directory: str | Path | None, device: str = "cpu", dtype: str = "float32",
                           quantize: str | None = None) -> SpeechModel:
    """What every command does with --model/--device/--dtype/--quantize: the bundled model when no
    directory is given; any failure becomes one ValueError that names the directory and the reason."""
    from .bundled import default_model_dir

    check_mode(quantize)  # a bad value is the user's option, not the model's fault
    directory = directory or default_model_dir()
    try:
        return load_model(directory, device=device, dtype=dtype, quantize=quantize)
    except (ValueError, RuntimeError, OSError) as e:
        message = str(e) if str(directory) in str(e) else f"{directory}: {e}"
        raise ValueError(f"cannot load the model: {message}") from None


def submodel_for_command(model: SpeechModel, spec: str | None):
    """--submodel resolved against the loaded model (None: the whole model); ValueError in one line."""
    try:
        return model.submodel(spec)
    except ValueError as e:
        raise ValueError(f"--submodel: {e}") from None
