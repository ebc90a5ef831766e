"""load_model: a Hugging Face Gemma 3n checkpoint directory -> SpeechModel.

The modules are built without initializing their weights (construction only reserves address space),
then every parameter is replaced by the checkpoint tensor: a view of the memory map when the dtype and
device already match, a converted copy otherwise. The vision tower, the vision embedder and the k/v
projections of KV-shared layers (which 5.x never uses) are never read.
"""
from __future__ import annotations

import contextlib
import json
from pathlib import Path

import torch

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


def load_model(path: str | Path, device: str | torch.device = "cpu",
               dtype: str | torch.dtype = torch.float32) -> SpeechModel:
    """Load a Gemma 3n checkpoint directory (config.json, model.safetensors or a sharded index,
    tokenizer.model and/or tokenizer.json) for speech recognition and translation."""
    directory = Path(path)
    if not directory.is_dir():
        raise CheckpointError(f"{directory}: not a directory (expected a Hugging Face checkpoint folder)")
    device, dtype = parse_device(device), parse_dtype(dtype)
    config = SpeechConfig.from_file(directory)
    checkpoint = Checkpoint(directory)
    try:
        tokenizer = Tokenizer.from_dir(directory)
    except TokenizerNotFound:
        tokenizer = None
    with _skip_weight_init():
        model = SpeechModel(config, tokenizer, _stop_ids(directory, config, tokenizer), source=str(directory))
    inner = model.model
    parts = [(inner.audio_tower, "model.audio_tower.", frozenset()),
             (inner.embed_audio, "model.embed_audio.", frozenset()),
             (inner.language_model, "model.language_model.", shared_kv_names(config))]
    # The PLE table stays a host-side view of the file (lm/ple.py): only rows in use become resident.
    inner.language_model.embed_tokens_per_layer.on_host = True
    host = {"embed_tokens_per_layer.weight"}
    kept = views = 0
    for module, prefix, ignore in parts:
        nbytes, nviews = load_module_weights(module, checkpoint, prefix, device, dtype, ignore=ignore,
                                             as_stored=host if module is inner.language_model else frozenset())
        kept, views = kept + nbytes, views + nviews
    model.to(device)  # buffers computed at construction (RoPE tables and the like)
    model.loaded_bytes = kept
    if views:
        model.checkpoint = checkpoint  # parameters view the memory maps: keep them mapped
    else:
        checkpoint.close()  # everything was converted or copied: the file pages need not stay mapped
    return model.eval()


def load_model_for_command(directory: str | Path | None, device: str = "cpu", dtype: str = "float32") -> SpeechModel:
    """What every command does with --model/--device/--dtype: the bundled model when no directory is
    given; any failure becomes one ValueError that names the directory and the reason."""
    from .bundled import default_model_dir

    directory = directory or default_model_dir()
    try:
        return load_model(directory, device=device, dtype=dtype)
    except (ValueError, RuntimeError, OSError) as e:
        message = str(e) if str(directory) in str(e) else f"{directory}: {e}"
        raise ValueError(f"cannot load the model: {message}") from None
