"""The memory-mapped safetensors reader: views without copies, and errors that name file, tensor, shapes."""
import json

import pytest
import torch
from safetensors.torch import save_file

from asr.checkpoint import Checkpoint, CheckpointError, load_module_weights


class Toy(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(4, 3, bias=False)
        self.norm = torch.nn.Parameter(torch.ones(3))


def _toy_state(prefix="model.toy."):
    torch.manual_seed(0)
    return {prefix + "lin.weight": torch.randn(3, 4), prefix + "norm": torch.randn(3)}


def test_loads_views_of_the_file(tmp_path):
    state = _toy_state()
    save_file(state, tmp_path / "model.safetensors")
    ck = Checkpoint(tmp_path)
    with torch.device("meta"):
        toy = Toy()
    nbytes, views = load_module_weights(toy, ck, "model.toy.", torch.device("cpu"), torch.float32)
    assert nbytes == (12 + 3) * 4 and views == 2
    assert torch.equal(toy.lin.weight, state["model.toy.lin.weight"])
    # same dtype on the CPU: the parameter is a view of the memory map, not a copy
    ptr = toy.lin.weight.data_ptr()
    assert ck.files["model.safetensors"]._map is not None
    assert torch.equal(ck.tensor("model.toy.lin.weight"), toy.lin.weight)
    assert ptr == ck.tensor("model.toy.lin.weight").data_ptr()


def test_casts_to_requested_dtype(tmp_path):
    save_file(_toy_state(), tmp_path / "model.safetensors")
    with torch.device("meta"):
        toy = Toy()
    ck = Checkpoint(tmp_path)
    _, views = load_module_weights(toy, ck, "model.toy.", torch.device("cpu"), torch.bfloat16)
    assert toy.lin.weight.dtype == torch.bfloat16 and views == 0
    ck.close()  # nothing views the map any more
    assert float(toy.lin.weight.detach().float().abs().sum()) > 0


def test_sharded_index(tmp_path):
    state = _toy_state()
    save_file({"model.toy.lin.weight": state["model.toy.lin.weight"]}, tmp_path / "a.safetensors")
    save_file({"model.toy.norm": state["model.toy.norm"]}, tmp_path / "b.safetensors")
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {"model.toy.lin.weight": "a.safetensors", "model.toy.norm": "b.safetensors"}}))
    with torch.device("meta"):
        toy = Toy()
    load_module_weights(toy, Checkpoint(tmp_path), "model.toy.", torch.device("cpu"), torch.float32)
    assert torch.equal(toy.norm, state["model.toy.norm"])


def test_missing_directory_and_weights(tmp_path):
    with pytest.raises(CheckpointError, match="not a directory"):
        Checkpoint(tmp_path / "nope")
    with pytest.raises(CheckpointError, match="no weights found"):
        Checkpoint(tmp_path)


def test_truncated_file_names_file_and_tensor(tmp_path):
    path = tmp_path / "model.safetensors"
    save_file(_toy_state(), path)
    data = path.read_bytes()
    path.write_bytes(data[:-8])
    with pytest.raises(CheckpointError, match=r"model\.safetensors: truncated: tensor 'model\.toy\.\w+"):
        Checkpoint(tmp_path)
    path.write_bytes(data[:5])
    with pytest.raises(CheckpointError, match="truncated"):
        Checkpoint(tmp_path)


def test_not_safetensors(tmp_path):
    (tmp_path / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00this is not json")
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        Checkpoint(tmp_path)


def test_missing_tensor_and_shape_mismatch(tmp_path):
    state = _toy_state()
    save_file({"model.toy.lin.weight": state["model.toy.lin.weight"]}, tmp_path / "model.safetensors")
    with torch.device("meta"):
        toy = Toy()
    with pytest.raises(CheckpointError, match=r"'model\.toy\.norm' is missing \(expected shape \[3\]\)"):
        load_module_weights(toy, Checkpoint(tmp_path), "model.toy.", torch.device("cpu"), torch.float32)
    save_file({"model.toy.lin.weight": torch.zeros(5, 4), "model.toy.norm": torch.zeros(3)},
              tmp_path / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"'model\.toy\.lin\.weight' has shape \[5, 4\], expected \[3, 4\]"):
        load_module_weights(toy, Checkpoint(tmp_path), "model.toy.", torch.device("cpu"), torch.float32)


def test_unexpected_tensor_is_an_error_unless_ignored(tmp_path):
    state = _toy_state()
    state["model.toy.extra"] = torch.zeros(2)
    save_file(state, tmp_path / "model.safetensors")
    with torch.device("meta"):
        toy = Toy()
    with pytest.raises(CheckpointError, match="model.toy.extra"):
        load_module_weights(toy, Checkpoint(tmp_path), "model.toy.", torch.device("cpu"), torch.float32)
    with torch.device("meta"):
        toy = Toy()
    load_module_weights(toy, Checkpoint(tmp_path), "model.toy.", torch.device("cpu"), torch.float32,
                        ignore={"model.toy.extra"})
