"""A random Gemma 3n checkpoint at E2B or E4B dimensions, written once in the Hugging Face layout.

Shapes and names come from the reference module tree (transformers, built on the meta device with the vision
tower stubbed), so the file is what `save_pretrained` would write. We write it ourselves, streamed through
`asr.shard_writer`: each tensor is drawn and written in row blocks of 16 M values, so memory stays at one
block whatever the size (E4B is 15.1 GB of bfloat16; its 4.7 GB PLE table never exists in memory).
Like the real checkpoint, KV-shared layers still carry their (unused) k/v projections.
"""
from __future__ import annotations

import json
import math
import shutil
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from asr.shard_writer import OutTensor, write_checkpoint as write_shards  # noqa: E402
from reference_models import vision_stubbed  # noqa: E402,F401  (the one stub, shared with the parity tests)

SHARD_BYTES = 1 << 30
DONE_FILE = "bench_complete.json"
BLOCK_ELEMENTS = 16 << 20  # values drawn (as float32: 64 MB) and written per block

# Reference notes 4.1 (text decoder config values): what differs between the two published models.
VARIANTS = {
    "E2B": dict(text_layers=30, kv_shared_layers=10, sparse_layers=10, intermediate_size=8192),
    "E4B": dict(text_layers=35, kv_shared_layers=15, sparse_layers=10, intermediate_size=16384),
}
QUICK_LAYERS = (6, 1, 2)  # --quick: text layers, KV-shared, sparse (tiny dimensions, only to run the scripts)


@dataclass(frozen=True)
class BenchShape:
    """The model measured: E2B or E4B dimensions; the number of text layers can be lowered (the PLE table
    and the KV-shared/sparse layer counts shrink with it)."""

    variant: str = "E2B"
    text_layers: int = 30
    kv_shared_layers: int = 10
    sparse_layers: int = 10  # gaussian top-k sparsity (0.95) on the first layers
    quick: bool = False  # tiny dimensions, only to check that the script runs
    seed: int = 0

    def __post_init__(self):
        if self.variant not in VARIANTS:
            raise ValueError(f"unknown shape {self.variant!r}; expected one of {', '.join(VARIANTS)}")
        if self.text_layers < 1:
            raise ValueError(f"text layers must be at least 1, got {self.text_layers}")
        if not 0 <= self.kv_shared_layers < self.text_layers:
            raise ValueError(f"kv_shared_layers must be in [0, {self.text_layers}), got {self.kv_shared_layers}")
        if not 0 <= self.sparse_layers <= self.text_layers:
            raise ValueError(f"sparse_layers must be in [0, {self.text_layers}], got {self.sparse_layers}")
        first_shared = self.text_layers - self.kv_shared_layers
        if set(self.layer_types[first_shared:]) - set(self.layer_types[:first_shared]):
            raise ValueError(f"with {self.text_layers} layers and {self.kv_shared_layers} KV-shared ones, a shared "
                             "layer has an attention type no earlier layer produces (full iff (i+1) % 5 == 0)")

    @classmethod
    def build(cls, variant: str = "E2B", text_layers: int | None = None, kv_shared_layers: int | None = None,
              sparse_layers: int | None = None, quick: bool = False, seed: int = 0) -> "BenchShape":
        """The published variant, or with `text_layers` given, one with fewer layers whose KV-shared and
        sparse counts keep the variant's proportions (unless given too)."""
        v = variant.upper()
        if v not in VARIANTS:
            raise ValueError(f"unknown shape {variant!r}; expected one of {', '.join(VARIANTS)}")
        full = VARIANTS[v]
        if quick:
            base = dict(zip(("text_layers", "kv_shared_layers", "sparse_layers"), QUICK_LAYERS))
        else:
            base = {k: full[k] for k in ("text_layers", "kv_shared_layers", "sparse_layers")}
        n = base["text_layers"] if text_layers is None else text_layers
        scale = n / base["text_layers"]
        kv = round(base["kv_shared_layers"] * scale) if kv_shared_layers is None else kv_shared_layers
        sparse = min(n, round(base["sparse_layers"] * scale)) if sparse_layers is None else sparse_layers
        return cls(v, n, kv, sparse, quick, seed)

    @property
    def intermediate_size(self) -> int:
        return VARIANTS[self.variant]["intermediate_size"] // (16 if self.quick else 1)

    @property
    def layer_types(self) -> list[str]:
        return ["full_attention" if (i + 1) % 5 == 0 else "sliding_attention" for i in range(self.text_layers)]

    @property
    def name(self) -> str:
        kind = f"quick-{self.variant.lower()}" if self.quick else self.variant.lower()
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
    """The transformers Gemma3nConfig for `shape` (values from the reference notes, sections 2.1 and 4.1)."""
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
        text.update(hidden_size=256, hidden_size_per_layer_input=32, num_attention_heads=4,
                    num_key_value_heads=2, head_dim=64, laurel_rank=16)
    else:
        text.update(hidden_size=2048, hidden_size_per_layer_input=256,
                    num_attention_heads=8, num_key_value_heads=2, head_dim=256, laurel_rank=64)
    text["intermediate_size"] = shape.intermediate_size
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


def random_blocks(shape: tuple[int, ...], generator: torch.Generator):
    """bfloat16 weights with sane activations: matrices ~ N(0, 1/fan_in), vectors (norm scales) ~ 1 + N(0, 0.1),
    drawn in row blocks of about BLOCK_ELEMENTS (a 4.7 GB table never exists whole). The same draws in the
    same blocks as the earlier writer, which held whole shards in memory: cached checkpoints stay valid."""
    if len(shape) == 1:
        yield (1.0 + 0.1 * torch.randn(shape, generator=generator)).to(torch.bfloat16)
        return
    row = math.prod(shape[1:])
    scale = 1.0 / math.sqrt(row)
    rows = max(1, BLOCK_ELEMENTS // row)
    for start in range(0, shape[0], rows):
        block = (min(rows, shape[0] - start), *shape[1:])
        yield (torch.randn(block, generator=generator) * scale).to(torch.bfloat16)


def write_checkpoint(directory: Path, shape: BenchShape, log=print) -> Path:
    """Write config.json and bfloat16 safetensors shards (with an index when several), streamed tensor by
    tensor in row blocks; a finished directory is reused, a half-written one (no DONE_FILE) rewritten."""
    directory = Path(directory)
    if (directory / DONE_FILE).exists():
        return directory
    if directory.exists():
        shutil.rmtree(directory)  # a half-written cache from an interrupted run
    config = reference_config(shape)
    config.dtype = "bfloat16"
    shapes = tensor_shapes(config)
    total_bytes = sum(2 * math.prod(d) for d in shapes.values())
    directory.parent.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(directory.parent).free
    if free < total_bytes + (1 << 30):
        raise SystemExit(f"{directory.parent}: {free / 1e9:.1f} GB free, the {shape.variant} checkpoint needs "
                         f"{total_bytes / 1e9:.1f} GB (+1 GB spare); choose another --cache-dir")
    directory.mkdir()
    config.save_pretrained(directory)
    # Blocks are drawn lazily as the writer reaches each tensor, in order, from one generator.
    generator = torch.Generator().manual_seed(shape.seed)
    tensors = [OutTensor(name, torch.bfloat16, dims, lambda dims=dims: random_blocks(dims, generator))
               for name, dims in shapes.items()]
    done = [0, 0]

    def progress(n: int) -> None:
        done[0] += n
        if done[0] - done[1] >= 1 << 30 or done[0] == total_bytes:
            done[1] = done[0]
            log(f"  written {done[0] / 1e9:.1f} / {total_bytes / 1e9:.1f} GB")

    files = write_shards(directory, tensors, SHARD_BYTES, on_bytes=progress)
    summary = {"shape": asdict(shape), "tensors": len(shapes), "parameters": sum(math.prod(d) for d in shapes.values()),
               "bytes": total_bytes, "files": files}
    (directory / DONE_FILE).write_text(json.dumps(summary, indent=2) + "\n")
    return directory


def checkpoint_summary(directory: Path) -> dict:
    return json.loads((Path(directory) / DONE_FILE).read_text())
