"""The PLE table stays a host-side view of the checkpoint file, whatever dtype the model runs in."""
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import asr
from asr.checkpoint import SINGLE_FILE


@pytest.fixture(scope="module")
def bf16_checkpoint(random_checkpoint, tmp_path_factory):
    """The random test checkpoint with every tensor stored as bfloat16, like the real Gemma 3n files."""
    out = tmp_path_factory.mktemp("bf16_model")
    for f in random_checkpoint.iterdir():
        if f.is_file() and f.name != SINGLE_FILE:
            shutil.copy(f, out / f.name)
    tensors = load_file(random_checkpoint / SINGLE_FILE)
    save_file({k: v.to(torch.bfloat16) if v.is_floating_point() else v for k, v in tensors.items()},
              out / SINGLE_FILE)
    return out


def _map_range(model) -> tuple[int, int]:
    (f,) = model.checkpoint.files.values()
    start = torch.frombuffer(f._map, dtype=torch.uint8, count=1).data_ptr()
    return start, start + len(f._map)


def test_ple_table_stays_a_view_of_the_file_in_its_stored_dtype(bf16_checkpoint):
    model = asr.load_model(bf16_checkpoint, dtype="float32")
    ple = model.model.language_model.embed_tokens_per_layer
    assert ple.on_host and ple.weight.dtype == torch.bfloat16 and ple.weight.device.type == "cpu"
    lo, hi = _map_range(model)
    assert lo <= ple.weight.data_ptr() < hi  # not a copy: pages load only when rows are read
    # Every other weight was converted to the requested dtype.
    others = {p.dtype for n, p in model.named_parameters() if "embed_tokens_per_layer" not in n}
    assert others == {torch.float32}


def test_host_table_gives_the_same_logits_as_a_converted_table(bf16_checkpoint):
    host = asr.load_model(bf16_checkpoint, dtype="float32")
    converted = asr.load_model(bf16_checkpoint, dtype="float32")
    ple = converted.model.language_model.embed_tokens_per_layer
    ple.weight = torch.nn.Parameter(ple.weight.detach().float(), requires_grad=False)
    ple.on_host = False
    ids = torch.tensor([[2, 5, 17, 40, 99, 3]])
    with torch.inference_mode():
        a = host.model.language_model(ids)
        b = converted.model.language_model(ids)
    torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_model_moves_and_casts_leave_the_host_table_alone(bf16_checkpoint):
    model = asr.load_model(bf16_checkpoint, dtype="bfloat16")
    ple = model.model.language_model.embed_tokens_per_layer
    before = ple.weight.data_ptr()
    model.to(torch.float32)
    assert ple.weight.dtype == torch.bfloat16 and ple.weight.data_ptr() == before
    assert model.model.language_model.embed_tokens.weight.dtype == torch.float32
    rows = ple(torch.tensor([[1, 2]]), torch.float32)
    assert rows.dtype == torch.float32 and rows.shape == (1, 2, ple.weight.shape[1])
