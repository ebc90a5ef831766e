"""MatFormer slicing (`asr slice`): the rewrite of the MatFormer Lab notebook, checked on small random
reference models (transformers' gemma3n) and on E4B's real config.

Tolerances: logits of the sliced model, ours against transformers loading the same sliced directory,
1e-4 of the logit range (fp32), as the other parity tests. The FFN prefix property (a layer cut to k
hidden units equals the full layer with units k.. removed) is checked to 1e-5 of the range.
"""
import argparse
import json
import shutil

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from reference_models import build_reference, save_reference, vision_stubbed

import asr
from asr import slicing
from asr.checkpoint import Checkpoint
from asr.slicing import PRESETS, SliceError, plan_slice, slice_checkpoint, slice_config

pytest.importorskip("transformers")

RTOL = 1e-4
LM = "model.language_model."


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


def _features(seconds: float, seed: int = 0):
    from transformers import Gemma3nAudioFeatureExtractor

    wave = np.random.default_rng(seed).standard_normal(int(16000 * seconds)).astype(np.float32) * 0.1
    out = Gemma3nAudioFeatureExtractor()([wave], sampling_rate=16000, return_tensors="pt")
    return out["input_features"], out["input_features_mask"]


def _audio_prompt(config, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    text = config.text_config.vocab_size_per_layer_input
    before = torch.randint(3, text - 8, (5,), generator=g).tolist()
    after = torch.randint(3, text - 8, (4,), generator=g).tolist()
    return torch.tensor([[config.text_config.bos_token_id, *before, config.boa_token_id,
                          *[config.audio_token_id] * config.audio_soft_tokens_per_image, config.eoa_token_id,
                          *after]])


def _load_reference(directory):
    from transformers import Gemma3nForConditionalGeneration

    with vision_stubbed():
        model, info = Gemma3nForConditionalGeneration.from_pretrained(directory, output_loading_info=True)
    return model.eval(), info


def _tensors(directory) -> dict[str, torch.Tensor]:
    ck = Checkpoint(directory)
    return {n: ck.tensor(n).clone() for n in ck.names()}


# ---- a source with KV sharing (like E4B: the shared layers' unused k/v are still in the file) ----------

SHARING_SKIP = [0, 4]  # 0: a sparse layer; 4: a KV-shared (full-attention) layer. 1 and 2 are reserved.
SHARING_FFN = [64, 96, 48, 80]  # kept layers 1, 2, 3, 5 (source width 96 each)


@pytest.fixture(scope="module")
def sharing(tmp_path_factory):
    ref = build_reference("sharing")
    src = save_reference(ref, tmp_path_factory.mktemp("sharing_src"))
    state = load_file(src / "model.safetensors")
    text = ref.config.text_config
    g = torch.Generator().manual_seed(7)
    for i in range(text.num_hidden_layers - text.num_kv_shared_layers, text.num_hidden_layers):
        p = f"{LM}layers.{i}.self_attn."
        kv = text.num_key_value_heads * text.head_dim
        state[p + "k_proj.weight"] = torch.randn(kv, text.hidden_size, generator=g)
        state[p + "v_proj.weight"] = torch.randn(kv, text.hidden_size, generator=g)
        state[p + "k_norm.weight"] = torch.randn(text.head_dim, generator=g)
    save_file(state, src / "model.safetensors", metadata={"format": "pt"})
    out = slice_checkpoint(src, tmp_path_factory.mktemp("sharing") / "sliced", SHARING_FFN, SHARING_SKIP,
                           progress=False)
    return src, out


def test_config_rewrite(sharing):
    src, out = sharing
    old = json.loads((src / "config.json").read_text())["text_config"]
    new = json.loads((out / "config.json").read_text())
    tc = new["text_config"]
    assert tc["num_hidden_layers"] == 4
    assert tc["intermediate_size"] == SHARING_FFN
    assert tc["num_kv_shared_layers"] == 2  # 3 shared, one of them (4) skipped
    assert tc["activation_sparsity_pattern"] == [0.95, 0.0, 0.0, 0.0]
    assert tc["layer_types"] == [old["layer_types"][i] for i in (1, 2, 3, 5)]
    assert new["gemma3n_speech"]["matformer_slice"] == {"source_layers": 6, "skip_layers": SHARING_SKIP,
                                                        "ffn": SHARING_FFN}
    unchanged = {k: v for k, v in tc.items() if k not in ("num_hidden_layers", "intermediate_size",
                 "num_kv_shared_layers", "activation_sparsity_pattern", "layer_types")}
    assert unchanged == {k: old[k] for k in unchanged}
    assert (out / "generation_config.json").read_text() == (src / "generation_config.json").read_text()


def test_tensors_are_the_source_slices(sharing):
    src, out = sharing
    a, b = _tensors(src), _tensors(out)
    kept, d, n = [1, 2, 3, 5], 16, 6
    expected_names = set()
    for name in a:
        if ".layers." in name:
            old = int(name.split(".layers.")[1].split(".")[0])
            if old in kept:
                expected_names.add(name.replace(f".layers.{old}.", f".layers.{kept.index(old)}."))
        else:
            expected_names.add(name)
    assert set(b) == expected_names
    for new, old in enumerate(kept):
        w = SHARING_FFN[new]
        p, q = f"{LM}layers.{new}.", f"{LM}layers.{old}."
        assert torch.equal(b[p + "mlp.gate_proj.weight"], a[q + "mlp.gate_proj.weight"][:w])
        assert torch.equal(b[p + "mlp.up_proj.weight"], a[q + "mlp.up_proj.weight"][:w])
        assert torch.equal(b[p + "mlp.down_proj.weight"], a[q + "mlp.down_proj.weight"][:, :w])
        assert torch.equal(b[p + "self_attn.q_proj.weight"], a[q + "self_attn.q_proj.weight"])
        assert torch.equal(b[f"{LM}embed_tokens_per_layer.weight"][:, new * d:(new + 1) * d],
                           a[f"{LM}embed_tokens_per_layer.weight"][:, old * d:(old + 1) * d])
        assert torch.equal(b[f"{LM}per_layer_model_projection.weight"][new * d:(new + 1) * d],
                           a[f"{LM}per_layer_model_projection.weight"][old * d:(old + 1) * d])
    assert b[f"{LM}embed_tokens_per_layer.weight"].shape[1] == len(kept) * d
    assert a[f"{LM}embed_tokens_per_layer.weight"].shape[1] == n * d
    # the unused k/v of a KV-shared layer travel with it (source layer 5 -> new layer 3), as the notebook does
    assert torch.equal(b[f"{LM}layers.3.self_attn.k_proj.weight"], a[f"{LM}layers.5.self_attn.k_proj.weight"])
    for name in a:
        if not name.startswith(LM):
            assert torch.equal(b[name], a[name]), name


def test_transformers_loads_the_slice_and_ours_matches_it(sharing):
    _, out = sharing
    ref, info = _load_reference(out)
    # 5.x declares the shared layers' k/v as ignorable unexpected keys; nothing else may be left over
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert [layer.mlp.intermediate_size for layer in ref.model.language_model.layers] == SHARING_FFN
    ours = asr.load_model(out)
    feats, mask = _features(2.0)
    ids = _audio_prompt(ref.config)
    with torch.no_grad():
        expected = ref(input_ids=ids, input_features=feats, input_features_mask=mask).logits
    got = ours.logits(ids, feats, mask)
    assert got.shape == expected.shape
    assert _rel_err(got, expected) < RTOL


def test_blocks_stay_small(sharing, monkeypatch):
    """Every output tensor is produced in blocks of at most BLOCK_BYTES (or one row): memory does not
    grow with the checkpoint, and the blocks join into the full tensor."""
    src, out = sharing
    monkeypatch.setattr(slicing, "BLOCK_BYTES", 1024)
    config = json.loads((src / "config.json").read_text())
    ck = Checkpoint(src)
    written = _tensors(out)
    for t in slicing.plan_tensors(ck, plan_slice(config, SHARING_FFN, SHARING_SKIP)):
        blocks = list(t.blocks())
        row = t.nbytes // t.shape[0] if t.shape and t.shape[0] else t.nbytes
        assert all(blk.numel() * blk.element_size() <= max(1024, row) for blk in blocks), t.name
        joined = torch.cat([blk.reshape(-1) for blk in blocks]).reshape(t.shape)
        assert torch.equal(joined, written[t.name]), t.name
    assert len(list(next(t for t in slicing.plan_tensors(ck, plan_slice(config, None, []))
                         if "embed_tokens_per_layer" in t.name).blocks())) > 1


# ---- identity, sharding, the prefix property (per-layer FFN source, no KV sharing) ---------------------

def test_full_width_no_skip_is_bit_identical(tmp_path):
    ref = build_reference("matformer", seed=1, dtype=torch.bfloat16)
    src = save_reference(ref, tmp_path / "src")
    out = slice_checkpoint(src, tmp_path / "out", None, [], progress=False)
    a, b = _tensors(src), _tensors(out)
    assert list(a) == list(b)
    for name in a:
        assert a[name].dtype == b[name].dtype == torch.bfloat16
        assert torch.equal(a[name].view(torch.int16), b[name].view(torch.int16)), name
    old = json.loads((src / "config.json").read_text())
    new = json.loads((out / "config.json").read_text())
    assert new["text_config"] == old["text_config"]
    # full width given explicitly is the same request
    out2 = slice_checkpoint(src, tmp_path / "out2", [128, 96, 64, 96, 128], [], progress=False)
    assert (out2 / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()


def _shard(directory, state: dict, parts: int) -> None:
    """Re-save `state` as `parts` shards with a Hugging Face index (independently of our writer)."""
    (directory / "model.safetensors").unlink()
    names = list(state)
    weight_map = {}
    for k in range(parts):
        file = f"model-{k + 1:05d}-of-{parts:05d}.safetensors"
        chunk = {n: state[n].contiguous() for n in names[k::parts]}
        save_file(chunk, directory / file, metadata={"format": "pt"})
        weight_map.update({n: file for n in chunk})
    (directory / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def test_sharded_source_and_sharded_output(tmp_path):
    ref = build_reference("matformer", seed=2)
    src = save_reference(ref, tmp_path / "src")
    _shard(src, load_file(src / "model.safetensors"), 3)
    limit = 64 * 1024
    out = slice_checkpoint(src, tmp_path / "out", [100, 64, 50, 128], [1], progress=False, max_shard_bytes=limit)
    index = json.loads((out / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 2 and not (out / "model.safetensors").exists()
    for f in files:
        with safe_open(out / f, "pt") as h:  # the safetensors library reads our files
            sizes = [h.get_slice(k).get_shape() for k in h.keys()]
            nbytes = sum(int(np.prod(s)) * 4 for s in sizes)
            assert nbytes <= limit or len(sizes) == 1
    assert index["metadata"]["total_size"] == sum(t.numel() * 4 for t in _tensors(out).values())
    sliced, info = _load_reference(out)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    ours = asr.load_model(out)
    ids = torch.randint(3, 512, (2, 19), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        expected = sliced(input_ids=ids).logits
    assert _rel_err(ours.logits(ids), expected) < RTOL


def test_ffn_prefix_property(tmp_path):
    """Cutting a layer's FFN to k units equals the full layer with units k.. removed (down_proj columns
    zeroed), exactly what makes MatFormer sub-models nested. Layer 0 is activation-sparse: its cut-off
    uses the statistics of all units, so it keeps its full width here."""
    ref = build_reference("matformer", seed=3)
    src = save_reference(ref, tmp_path / "src")
    widths = [128, 50, 32, 70, 100]
    out = slice_checkpoint(src, tmp_path / "out", widths, [], progress=False)
    with torch.no_grad():
        for layer, k in zip(ref.model.language_model.layers, widths):
            layer.mlp.down_proj.weight[:, k:] = 0
    ids = torch.randint(3, 512, (1, 21), generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        expected = ref(input_ids=ids).logits
    assert _rel_err(asr.load_model(out).logits(ids), expected) < 1e-5


# ---- E4B's real config: the published E2B and the notebook's formulas ---------------------------------

def _e4b_config() -> dict:
    from transformers import Gemma3nConfig

    return Gemma3nConfig().to_dict()  # class defaults = E4B (35 layers, 16384, 15 KV-shared)


def test_e2b_preset_gives_the_official_e2b_config():
    from transformers import Gemma3nTextConfig

    config = _e4b_config()
    preset = PRESETS["E2B"]
    new = slice_config(config, plan_slice(config, preset.ffn, preset.skip_layers))["text_config"]
    # E2B as the conversion script defines it (reference notes 4.1)
    e2b = Gemma3nTextConfig(intermediate_size=8192, num_hidden_layers=30, num_kv_shared_layers=10,
                            activation_sparsity_pattern=[0.95] * 10 + [0.0] * 20)
    assert new["num_hidden_layers"] == e2b.num_hidden_layers == 30
    assert new["num_kv_shared_layers"] == e2b.num_kv_shared_layers == 10
    for field in ("intermediate_size", "layer_types", "activation_sparsity_pattern"):
        assert new[field] == list(getattr(e2b, field)), field


def test_e2b_preset_has_the_notebooks_effective_parameter_count():
    """The notebook prints 1,905,495,648 effective parameters (text minus embed_tokens and the PLE table)
    for its E2B slice, counted with 4.53, which still built k/v for KV-shared layers; 5.x does not."""
    from transformers import Gemma3nTextConfig, Gemma3nTextModel

    config = _e4b_config()
    tc = slice_config(config, plan_slice(config, 8192, [20, 21, 22, 23, 24]))["text_config"]
    tc = {k: v for k, v in tc.items() if k not in ("model_type", "transformers_version")}
    with torch.device("meta"):
        model = Gemma3nTextModel(Gemma3nTextConfig(**tc))
    effective = sum(p.numel() for n, p in model.named_parameters()
                    if not n.startswith(("embed_tokens.", "embed_tokens_per_layer.")))
    shared_kv = tc["num_kv_shared_layers"] * (2 * 512 * 2048 + 256)
    assert effective + shared_kv == 1_905_495_648


@pytest.mark.parametrize("skip, whole_blocks", [([20, 21, 22, 23, 24], True), ([0, 5, 25], False),
                                                ([3, 9, 10, 34], False), ([], True), ([30, 31, 32, 33, 34], True)])
def test_matches_the_notebook_formulas_on_e4b(skip, whole_blocks):
    config = _e4b_config()
    n = 35 - len(skip)
    new = slice_config(config, plan_slice(config, 4096, skip))["text_config"]
    below10 = sum(1 for i in skip if i <= 9)
    assert new["activation_sparsity_pattern"] == [0.95] * (10 - below10) + [0] * (n - 10 + below10)
    assert new["num_kv_shared_layers"] == 15 - sum(1 for i in skip if i >= 20)
    assert new["num_hidden_layers"] == n and new["intermediate_size"] == [4096] * n
    if whole_blocks:
        # whole blocks skipped: the notebook's untouched list, cut to length, is the same
        assert new["layer_types"] == config["text_config"]["layer_types"][:n]


@pytest.mark.parametrize("ffn, skip, message", [
    ([8192] * 29, [20, 21, 22, 23, 24], "--ffn has 29 values but the sliced model has 30 layers"),
    (20000, [], "FFN width 20000 for new layer 0 (source layer 0) is larger than the source's intermediate size 16384"),
    (0, [], "FFN width 0 for new layer 0 must be a positive integer"),
    (None, [35], "skip layer 35 is out of range: the source has layers 0-34"),
    (None, [-1], "skip layer -1 is out of range"),
    (None, [19], "layer 19 cannot be skipped: layers [18, 19] are reserved"),
    (None, [18, 20], "layer 18 cannot be skipped"),
    (None, [3, 3], "skip layer 3 is listed twice"),
])
def test_bad_requests_on_e4b(ffn, skip, message):
    with pytest.raises(SliceError) as e:
        plan_slice(_e4b_config(), ffn, skip)
    assert message in str(e.value) and "\n" not in str(e.value)


# ---- errors on directories, atomic output, the command line ------------------------------------------

def test_directory_errors(tmp_path, random_checkpoint):
    with pytest.raises(SliceError, match="not a directory"):
        slice_checkpoint(tmp_path / "nope", tmp_path / "o1", None, [0], progress=False)
    (tmp_path / "empty").mkdir()
    with pytest.raises(SliceError, match="not a checkpoint \\(no config.json\\)"):
        slice_checkpoint(tmp_path / "empty", tmp_path / "o2", None, [0], progress=False)
    no_weights = tmp_path / "no_weights"
    no_weights.mkdir()
    shutil.copy(random_checkpoint / "config.json", no_weights / "config.json")
    with pytest.raises(SliceError, match="no weights found"):
        slice_checkpoint(no_weights, tmp_path / "o3", None, [0], progress=False)
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "x").write_text("x")
    with pytest.raises(SliceError, match="busy: output directory exists and is not empty"):
        slice_checkpoint(random_checkpoint, busy, None, [0], progress=False)
    (tmp_path / "bad.json").mkdir()
    (tmp_path / "bad.json" / "config.json").write_text("{")
    with pytest.raises(SliceError, match="config.json: not valid JSON"):
        slice_checkpoint(tmp_path / "bad.json", tmp_path / "o4", None, [0], progress=False)


def test_failure_leaves_no_output(tmp_path, random_checkpoint, monkeypatch):
    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(slicing, "write_checkpoint", fail)
    with pytest.raises(OSError):
        slice_checkpoint(random_checkpoint, tmp_path / "out", None, [0], progress=False)
    assert list(tmp_path.iterdir()) == []


def _cli(*argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    slicing.add_arguments(parser)
    return parser.parse_args([str(a) for a in argv])


def test_cli_slices_a_model_with_its_tokenizer(tmp_path, random_checkpoint, capsys):
    out = tmp_path / "out"
    (out).mkdir()  # an empty directory is fine
    assert slicing.run(_cli("--model", random_checkpoint, "--out", out, "--skip-layers", "0", "--ffn", "64")) == 0
    assert "3 of 4 layers (skipped [0]), FFN 64" in capsys.readouterr().out
    for f in random_checkpoint.iterdir():
        if f.name not in ("config.json", "model.safetensors"):
            assert (out / f.name).read_bytes() == f.read_bytes(), f.name
    model = asr.load_model(out)
    assert model.tokenizer is not None
    assert model.config.text.intermediate_size == (64, 64, 64)
    assert model.config.text.num_hidden_layers == 3


def test_cli_presets_and_errors(tmp_path, random_checkpoint, capsys):
    assert slicing.run(_cli("--list-presets")) == 0
    listed = capsys.readouterr().out
    assert "E2B: the official E2B inside E4B" in listed and "--skip-layers" in listed
    cases = [
        (("--preset", "E3B"), "unknown preset 'E3B'; expected one of E2B, E4B"),
        (("--preset", "E2B"), "preset E2B applies to a 35-layer E4B checkpoint"),
        (("--preset", "E2B", "--ffn", "64"), "--preset cannot be combined with --ffn or --skip-layers"),
        ((), "nothing to slice"),
        (("--ffn", "64,x"), "--ffn '64,x': expected integers separated by commas"),
        (("--ffn", "64,64"), "--ffn has 2 values but the sliced model has 4 layers"),
        (("--skip-layers", "2"), "layer 2 cannot be skipped"),
        (("--ffn", "4096"), "is larger than the source's intermediate size 128"),
    ]
    for extra, message in cases:
        assert slicing.run(_cli("--model", random_checkpoint, "--out", tmp_path / "o", *extra)) == 2
        err = capsys.readouterr().err
        assert message in err and err.count("\n") == 1 and err.startswith("asr slice: "), (extra, err)
    assert slicing.run(_cli("--out", tmp_path / "o", "--ffn", "64")) == 2
    assert "--model and --out are required" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_skip_ranges_parse():
    assert slicing._int_list("--skip-layers", "20-24,30") == [20, 21, 22, 23, 24, 30]
    assert slicing._int_list("--ffn", "2_048") == [2048]
