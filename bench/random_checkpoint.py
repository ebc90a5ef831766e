"""A random Gemma 3n checkpoint at E2B dimensions (fewer text layers), written once in the Hugging Face layout.

Shapes and names come from the reference module tree (transformers, built on the meta device with the vision
tower stubbed), so the file is what `save_pretrained` would write; we write it ourselves, tensor by tensor in
bfloat16 shards, because materializing the whole reference model in float32 first would need ~10 GB more.
Like the real checkpoint, KV-shared layers still carry their (unused) k/v projections.
"""
from __future__ import annotations

import json
import math
import sys
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from reference_models import vision_stubbed  # noqa: E402,F401  (the one stub, shared with the parity tests)

SHARD_BYTES = 1 << 30
DONE_FILE = "bench_complete.json"


@dataclass(frozen=True)
class BenchShape:
    """The model measured: E2B dimensions except the number of text layers (the PLE table grows with it)."""

    text_layers: int = 10
    kv_shared_layers: int = 4
    sparse_layers: int = 4  # E2B: gaussian top-k sparsity (0.95) on the first third of the layers
    quick: bool = False  # tiny dimensions, only to check that the script runs
    seed: int = 0

    def __post_init__(self):
        if not 0 <= self.kv_shared_layers < self.text_layers:
            raise ValueError(f"kv_shared_layers must be in [0, {self.text_layers}), got {self.kv_shared_layers}")
        if not 0 <= self.sparse_layers <= self.text_layers:
            raise ValueError(f"sparse_layers must be in [0, {self.text_layers}], got {self.sparse_layers}")
        first_shared = self.text_layers - self.kv_shared_layers
        if set(self.layer_types[first_shared:]) - set(self.layer_types[:first_shared]):
            raise ValueError(f"with {self.text_layers} layers and {self.kv_shared_layers} KV-shared ones, a shared "
                             "layer has an attention type no earlier layer produces (full iff (i+1) % 5 == 0)")

    @property
    def layer_types(self) -> list[str]:
        return ["full_attention" if (i + 1) % 5 == 0 else "sliding_attention" for i in range(self.text_layers)]

    @property
    def name(self) -> str:
        kind = "quick" if self.quick else "e2b"
        return f"{kind}-L{self.text_layers}-kv{self.kv_shared_layers}-sp{self.sparse_layers}-s{self.seed}"


def _vocab_layout(quick: bool) -> dict:
    """Text ids, then 128 vision ids, then 128 audio ids, as in the real vocabulary."""
    text = 4096 if quick else 262_144
    ids = dict(text=text, vision_offset=text, audio_offset=text + 128, full=text + 256)
    if quick:
        ids.update(boi=text - 3, boa=text - 2)
    else:
        ids.update(boi=255_999, boa=256_000)
    return ids


def reference_config(shape: BenchShape):
    """The transformers Gemma3nConfig for `shape` (E2B values from the reference notes, sections 2.1 and 4.1)."""
    from transformers import Gemma3nAudioConfig, Gemma3nConfig, Gemma3nTextConfig, Gemma3nVisionConfig

    v = _vocab_layout(shape.quick)
    n = shape.text_layers
    text = dict(
        vocab_size=v["full"], vocab_size_per_layer_input=v["text"], num_hidden_layers=n,
        num_kv_shared_layers=shape.kv_shared_layers,
        layer_types=shape.layer_types,
        activation_sparsity_pattern=[0.95] * shape.sparse_layers + [0.0] * (n - shape.sparse_layers),
        sliding_window=512, max_position_embeddings=32_768, final_logit_softcapping=30.0,
        pad_token_id=0, eos_token_id=1, bos_token_id=2,
    )
    if shape.quick:
        text.update(hidden_size=256, hidden_size_per_layer_input=32, intermediate_size=512, num_attention_heads=4,
                    num_key_value_heads=2, head_dim=64, laurel_rank=16)
    else:
        text.update(hidden_size=2048, hidden_size_per_layer_input=256, intermediate_size=8192,
                    num_attention_heads=8, num_key_value_heads=2, head_dim=256, laurel_rank=64)
    audio = dict(vocab_size=128, vocab_offset=v["audio_offset"])
    if shape.quick:
        audio.update(hidden_size=128, conf_num_hidden_layers=2, conf_num_attention_heads=4)
    vision = dict(vocab_size=128, vocab_offset=v["vision_offset"])
    if shape.quick:
        vision.update(hidden_size=256)
    return Gemma3nConfig(
        text_config=Gemma3nTextConfig(**text), audio_config=Gemma3nAudioConfig(**audio),
        vision_config=Gemma3nVisionConfig(**vision), audio_soft_tokens_per_image=188,
        boa_token_id=v["boa"], eoa_token_id=v["audio_offset"], audio_token_id=v["audio_offset"] + 1,
        boi_token_id=v["boi"], eoi_token_id=v["vision_offset"], image_token_id=v["vision_offset"] + 1,
        tie_word_embeddings=True,
    )


def tensor_shapes(config) -> dict[str, tuple[int, ...]]:
    """Checkpoint names and shapes: the reference's parameters (tied head left out) plus the unused k/v of
    KV-shared layers that real checkpoints carry."""
    from transformers import Gemma3nForConditionalGeneration

    with torch.device("meta"), vision_stubbed():
        model = Gemma3nForConditionalGeneration(config)
    shapes = {n: tuple(p.shape) for n, p in model.named_parameters() if n != "lm_head.weight"}
    text = config.text_config
    kv = text.num_key_value_heads * text.head_dim
    for i in range(text.num_hidden_layers - text.num_kv_shared_layers, text.num_hidden_layers):
        p = f"model.language_model.layers.{i}.self_attn."
        shapes.setdefault(p + "k_proj.weight", (kv, text.hidden_size))
        shapes.setdefault(p + "v_proj.weight", (kv, text.hidden_size))
        shapes.setdefault(p + "k_norm.weight", (text.head_dim,))
    return shapes


def random_tensor(shape: tuple[int, ...], generator: torch.Generator) -> torch.Tensor:
    """bfloat16 weights with sane activations: matrices ~ N(0, 1/fan_in), vectors (norm scales) ~ 1 + N(0, 0.1).
    Drawn in row blocks so a 1.3 GB table never exists in float32."""
    out = torch.empty(shape, dtype=torch.bfloat16)
    if len(shape) == 1:
        return out.copy_(1.0 + 0.1 * torch.randn(shape, generator=generator))
    scale = 1.0 / math.sqrt(math.prod(shape[1:]))
    rows = max(1, (16 << 20) // math.prod(shape[1:]))
    for start in range(0, shape[0], rows):
        block = out[start:start + rows]
        block.copy_(torch.randn(block.shape, generator=generator) * scale)
    return out


def write_checkpoint(directory: Path, shape: BenchShape, log=print) -> Path:
    """Write config.json and bfloat16 safetensors shards with an index; a finished directory is reused."""
    directory = Path(directory)
    if (directory / DONE_FILE).exists():
        return directory
    if directory.exists():
        shutil.rmtree(directory)  # a half-written cache from an interrupted run
    directory.mkdir(parents=True)
    config = reference_config(shape)
    config.dtype = "bfloat16"
    config.save_pretrained(directory)
    shapes = tensor_shapes(config)
    generator = torch.Generator().manual_seed(shape.seed)
    weight_map, shard, shard_bytes, files = {}, {}, 0, []

    def flush():
        nonlocal shard, shard_bytes
        if shard:
            name = f"model-{len(files) + 1:05d}.safetensors"
            save_file(shard, directory / name, metadata={"format": "pt"})
            files.append(name)
            weight_map.update({k: name for k in shard})
            log(f"  wrote {name} ({shard_bytes / 1e9:.2f} GB, {len(shard)} tensors)")
        shard, shard_bytes = {}, 0

    for name, dims in shapes.items():
        nbytes = 2 * math.prod(dims)
        if shard_bytes and shard_bytes + nbytes > SHARD_BYTES:
            flush()
        shard[name] = random_tensor(dims, generator)
        shard_bytes += nbytes
    flush()
    # Shards are named in the HF way only once their count is known.
    total = len(files)
    renamed = {}
    for i, old in enumerate(files, 1):
        new = f"model-{i:05d}-of-{total:05d}.safetensors"
        (directory / old).rename(directory / new)
        renamed[old] = new
    total_bytes = sum(2 * math.prod(d) for d in shapes.values())
    index = {"metadata": {"total_size": total_bytes}, "weight_map": {k: renamed[v] for k, v in weight_map.items()}}
    (directory / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    summary = {"shape": asdict(shape), "tensors": len(shapes), "parameters": sum(math.prod(d) for d in shapes.values()),
               "bytes": total_bytes}
    (directory / DONE_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return directory


def checkpoint_summary(directory: Path) -> dict:
    return json.loads((Path(directory) / DONE_FILE).read_text())
