"""Writing safetensors checkpoints tensor by tensor, in shards of bounded size.

`safetensors.torch.save_file` needs every tensor of a file in memory at once; a sliced Gemma 3n checkpoint
holds a 4 GB per-layer embedding table. Here each output tensor is described up front (name, dtype, shape)
and produces its bytes as a sequence of row blocks, so the header can be written first and memory stays at
one block whatever the checkpoint's size. The files are ordinary safetensors files (readable by
`safetensors.safe_open`, transformers and `asr.checkpoint`); several shards get the Hugging Face index.
"""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch

from .checkpoint import INDEX_FILE, SINGLE_FILE

DTYPE_NAMES = {
    torch.float64: "F64", torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16",
    torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
    torch.bool: "BOOL",
}


@dataclass(frozen=True)
class OutTensor:
    """One tensor to write. `blocks()` yields it as consecutive slices along dim 0 (the whole tensor for
    0-d ones), each with `dtype`; their concatenation must be exactly `shape`."""
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    blocks: Callable[[], Iterator[torch.Tensor]]

    @property
    def nbytes(self) -> int:
        count = 1
        for s in self.shape:
            count *= s
        return count * self.dtype.itemsize


def shard_names(count: int) -> list[str]:
    """Hugging Face's names: one file is model.safetensors, several are model-0000i-of-0000n."""
    if count == 1:
        return [SINGLE_FILE]
    return [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


def group_shards(tensors: list[OutTensor], max_shard_bytes: int) -> list[list[OutTensor]]:
    """Consecutive groups of at most `max_shard_bytes` each; a tensor larger than that gets a shard of its
    own (a safetensors tensor cannot span files)."""
    shards: list[list[OutTensor]] = [[]]
    size = 0
    for t in tensors:
        if shards[-1] and size + t.nbytes > max_shard_bytes:
            shards.append([])
            size = 0
        shards[-1].append(t)
        size += t.nbytes
    return shards if shards[0] else []


def write_checkpoint(directory: Path, tensors: list[OutTensor], max_shard_bytes: int,
                     on_bytes: Callable[[int], None] = lambda n: None) -> list[str]:
    """Write `tensors` into `directory` (which must exist) as one file or as shards plus the index.
    `on_bytes(n)` is called after every block written (progress). Returns the file names written."""
    seen: set[str] = set()
    for t in tensors:
        if t.name in seen:
            raise ValueError(f"tensor {t.name!r} appears twice")
        if t.dtype not in DTYPE_NAMES:
            raise ValueError(f"tensor {t.name!r}: dtype {t.dtype} cannot be written to safetensors here")
        seen.add(t.name)
    groups = group_shards(tensors, max_shard_bytes)
    names = shard_names(len(groups))
    weight_map: dict[str, str] = {}
    for name, group in zip(names, groups):
        _write_file(directory / name, group, on_bytes)
        weight_map.update({t.name: name for t in group})
    if len(names) > 1:
        index = {"metadata": {"total_size": sum(t.nbytes for t in tensors)}, "weight_map": weight_map}
        (directory / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
        return names + [INDEX_FILE]
    return names


def _header(tensors: Iterable[OutTensor]) -> bytes:
    header: dict = {"__metadata__": {"format": "pt"}}
    offset = 0
    for t in tensors:
        header[t.name] = {"dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape),
                          "data_offsets": [offset, offset + t.nbytes]}
        offset += t.nbytes
    raw = json.dumps(header, separators=(",", ":")).encode()
    # The data section starts 8-byte aligned, as the safetensors library writes it (padding is spaces).
    return raw + b" " * (-len(raw) % 8)


def _write_file(path: Path, tensors: list[OutTensor], on_bytes: Callable[[int], None]) -> None:
    header = _header(tensors)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(header)))
        f.write(header)
        for t in tensors:
            written = 0
            for block in t.blocks():
                if block.dtype != t.dtype:
                    raise RuntimeError(f"tensor {t.name!r}: block dtype {block.dtype}, expected {t.dtype}")
                raw = block.contiguous().reshape(-1).view(torch.uint8).numpy()
                f.write(memoryview(raw))
                written += raw.nbytes
                on_bytes(raw.nbytes)
            if written != t.nbytes:  # a planning bug, never a user error: the file would be corrupt
                raise RuntimeError(f"tensor {t.name!r}: wrote {written} bytes, expected {t.nbytes}")
