"""Reading Hugging Face safetensors checkpoints without copying them into memory.

A safetensors file is an 8-byte little-endian header length, a JSON header (name -> dtype, shape, byte
range), then the raw tensor bytes. We parse the header ourselves and view tensors straight out of a
private (copy-on-write) memory map, so only the bytes a computation touches ever become resident, and a
truncated or mismatched file is reported with the file, the tensor and what was expected.
"""
from __future__ import annotations

import json
import mmap
import struct
from dataclasses import dataclass
from pathlib import Path

import torch

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"

_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


class CheckpointError(ValueError):
    """A checkpoint file is missing, truncated, or does not match the model's config."""


@dataclass(frozen=True)
class TensorEntry:
    file: Path
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    end: int


class SafetensorsFile:
    """One memory-mapped safetensors file; tensors are views into the map (no copy)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        try:
            size = self.path.stat().st_size
            with open(self.path, "rb") as f:
                head = f.read(8)
                if len(head) < 8:
                    raise CheckpointError(f"{self.path}: truncated (only {size} bytes, no safetensors header)")
                (header_len,) = struct.unpack("<Q", head)
                if 8 + header_len > size:
                    raise CheckpointError(
                        f"{self.path}: truncated or not a safetensors file "
                        f"(header says {header_len} bytes, file has {size})")
                header = json.loads(f.read(header_len))
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_COPY) if size else None
                # Address range of the map, to tell views of it from copies (a temporary view gives the base).
                start = torch.frombuffer(self._map, dtype=torch.uint8, count=1).data_ptr() if size else 0
                self.span = (start, start + size)
        except FileNotFoundError:
            raise CheckpointError(f"{self.path}: file not found") from None
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{self.path}: not a safetensors file (bad header: {e})") from None
        header.pop("__metadata__", None)
        base = 8 + header_len
        self.entries: dict[str, TensorEntry] = {}
        for name, info in header.items():
            try:
                dtype = _DTYPES[info["dtype"]]
                begin, end = info["data_offsets"]
                shape = tuple(int(s) for s in info["shape"])
            except (KeyError, TypeError, ValueError):
                raise CheckpointError(f"{self.path}: tensor {name!r} has a malformed header entry: {info}") from None
            if base + end > size:
                raise CheckpointError(
                    f"{self.path}: truncated: tensor {name!r} needs bytes up to {base + end}, file has {size}")
            self.entries[name] = TensorEntry(self.path, dtype, shape, base + begin, base + end)

    def tensor(self, name: str) -> torch.Tensor:
        e = self.entries[name]
        count = 1
        for s in e.shape:
            count *= s
        if count == 0:
            return torch.empty(e.shape, dtype=e.dtype)
        flat = torch.frombuffer(self._map, dtype=e.dtype, count=count, offset=e.start)
        return flat.view(e.shape)


class Checkpoint:
    """All tensors of a checkpoint directory (single file or sharded with an index)."""

    def __init__(self, directory: str | Path):
        self.directory = Path(directory)
        if not self.directory.is_dir():
            raise CheckpointError(f"{self.directory}: not a directory (expected a Hugging Face checkpoint folder)")
        index = self.directory / INDEX_FILE
        if index.exists():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (json.JSONDecodeError, KeyError, TypeError) as e:
                raise CheckpointError(f"{index}: malformed index ({e}); expected a 'weight_map' object") from None
            shard_names = sorted(set(weight_map.values()))
        elif (self.directory / SINGLE_FILE).exists():
            weight_map, shard_names = None, [SINGLE_FILE]
        else:
            raise CheckpointError(
                f"{self.directory}: no weights found (expected {SINGLE_FILE} or {INDEX_FILE})")
        self.files = {n: SafetensorsFile(self.directory / n) for n in shard_names}
        self.entries: dict[str, TensorEntry] = {}
        for f in self.files.values():
            self.entries.update(f.entries)
        if weight_map is not None:
            for name, shard in weight_map.items():
                if name not in self.files[shard].entries:
                    raise CheckpointError(f"{self.directory / shard}: index lists tensor {name!r} but the shard lacks it")

    def names(self) -> list[str]:
        return list(self.entries)

    def tensor(self, name: str) -> torch.Tensor:
        entry = self.entries[name]
        return self.files[entry.file.name].tensor(name)

    def views(self, t: torch.Tensor) -> bool:
        """Whether tensor `t` lies in one of this checkpoint's memory maps."""
        return any(start <= t.data_ptr() < end for start, end in (f.span for f in self.files.values()))

    def nbytes(self, names) -> int:
        return sum(self.entries[n].end - self.entries[n].start for n in names)

    def read_randomly(self, name: str) -> None:
        """Tell the kernel that tensor `name` is read a few rows at a time (the PLE table: one 15 kB row per
        token in E2B), so a page fault reads that page, not the readahead window around it."""
        self._advise(name, getattr(mmap, "MADV_RANDOM", None))

    def release(self, name: str, first_row: int = 0, last_row: int | None = None) -> None:
        """Give back the resident file pages of rows [first_row, last_row) of tensor `name` (all of it by
        default) once they were converted or copied. The map is private and never written, so a page
        touched again is simply re-read from the file; without this, everything read once stays charged to
        the process for as long as the map is open (and it stays open while the PLE table views it)."""
        self._advise(name, getattr(mmap, "MADV_DONTNEED", None), first_row, last_row)

    def _advise(self, name: str, advice: int | None, first_row: int = 0, last_row: int | None = None) -> None:
        """madvise the whole pages of rows [first_row, last_row) of tensor `name` (no-op without the map or
        the advice on this platform)."""
        entry = self.entries[name]
        m = self.files[entry.file.name]._map
        if m is None or advice is None or not entry.shape:
            return
        row = (entry.end - entry.start) // max(1, entry.shape[0])
        start = entry.start + first_row * row
        end = entry.end if last_row is None else entry.start + last_row * row
        start -= start % mmap.PAGESIZE  # whole pages; a shared edge page is only re-read if touched again
        if end > start:
            m.madvise(advice, start, end - start)

    def close(self) -> None:
        """Unmap the files. Only when no tensor views them any more: a view of a closed map is invalid."""
        for f in self.files.values():
            if f._map is not None:
                f._map.close()
                f._map = None


def load_module_weights(module: torch.nn.Module, checkpoint: Checkpoint, prefix: str,
                        device: torch.device, dtype: torch.dtype, ignore: set[str] = frozenset(),
                        as_stored: set[str] = frozenset()) -> tuple[int, int]:
    """Fill a module built on the meta device with the checkpoint tensors `prefix + name`.

    Every parameter and buffer the module declares must be present with the same shape; checkpoint
    tensors under `prefix` that the module does not declare are an error unless listed in `ignore`.
    Floating tensors are cast to `dtype`; a tensor already in that dtype on the CPU stays a view of the
    memory map. Names in `as_stored` stay views of the map whatever `dtype` and `device` say (the host-side
    PLE table). Returns (bytes read from the checkpoint, how many tensors still view the memory map).
    """
    state: dict[str, torch.Tensor] = {}
    views = 0
    expected = dict(module.named_parameters())
    expected.update({n: b for n, b in module.named_buffers() if n in module.state_dict()})
    for name, target in expected.items():
        full = prefix + name
        entry = checkpoint.entries.get(full)
        if entry is None:
            raise CheckpointError(
                f"{checkpoint.directory}: tensor {full!r} is missing (expected shape {list(target.shape)})")
        if tuple(entry.shape) != tuple(target.shape):
            raise CheckpointError(
                f"{entry.file}: tensor {full!r} has shape {list(entry.shape)}, expected {list(target.shape)} "
                f"from config.json")
        mapped = checkpoint.tensor(full)
        if name in as_stored:
            state[name] = mapped
        else:
            t = mapped.to(dtype) if mapped.is_floating_point() else mapped
            state[name] = t.to(device)
        if state[name] is mapped:
            views += 1
        else:
            checkpoint.release(full)  # converted: the file pages are no longer needed
    unexpected = [n for n in checkpoint.entries
                  if n.startswith(prefix) and n[len(prefix):] not in expected and n not in ignore]
    if unexpected:
        raise CheckpointError(
            f"{checkpoint.directory}: {len(unexpected)} tensor(s) under {prefix!r} that config.json does not "
            f"describe, e.g. {unexpected[0]!r}; is config.json from the same model?")
    module.load_state_dict(state, strict=True, assign=True)
    return checkpoint.nbytes(prefix + n for n in expected), views
