"""Whole-model parity: a random reference Gemma3nForConditionalGeneration saved in HF format, loaded with
asr.load_model, gives the same logits (1e-4 relative, fp32) and the same greedy tokens (20 steps)."""
import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from reference_models import build_reference, save_reference

import asr
from lm.generate import generate

pytest.importorskip("transformers")

RTOL = 1e-4


def _features(waves):
    from transformers import Gemma3nAudioFeatureExtractor

    fe = Gemma3nAudioFeatureExtractor()
    out = fe(waves, sampling_rate=16000, return_tensors="pt")
    return out["input_features"], out["input_features_mask"]


def _prompt_ids(config, batch: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    text = config.text_config.vocab_size_per_layer_input
    rows = []
    for _ in range(batch):
        before = torch.randint(3, text - 8, (5,), generator=g).tolist()
        after = torch.randint(3, text - 8, (4,), generator=g).tolist()
        rows.append([config.text_config.bos_token_id, *before, config.boa_token_id,
                     *[config.audio_token_id] * config.audio_soft_tokens_per_image, config.eoa_token_id, *after])
    return torch.tensor(rows)


def _rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / b.abs().max())


@pytest.fixture(scope="module", params=["sharing", "matformer"])
def pair(request, tmp_path_factory):
    ref = build_reference(request.param)
    directory = save_reference(ref, tmp_path_factory.mktemp(request.param))
    if request.param == "sharing":
        # Real checkpoints still carry k/v for KV-shared layers (5.x never reads them): add them, so that
        # loading proves it skips them.
        state = load_file(directory / "model.safetensors")
        text = ref.config.text_config
        for i in range(text.num_hidden_layers - text.num_kv_shared_layers, text.num_hidden_layers):
            p = f"model.language_model.layers.{i}.self_attn."
            kv = text.num_key_value_heads * text.head_dim
            state[p + "k_proj.weight"] = torch.randn(kv, text.hidden_size)
            state[p + "v_proj.weight"] = torch.randn(kv, text.hidden_size)
            state[p + "k_norm.weight"] = torch.randn(text.head_dim)
        save_file(state, directory / "model.safetensors", metadata={"format": "pt"})
    return ref, asr.load_model(directory), directory


def test_logits_match_reference_with_audio(pair):
    ref, ours, _ = pair
    rng = np.random.default_rng(0)
    waves = [rng.standard_normal(16000 * 3).astype(np.float32) * 0.1,
             rng.standard_normal(int(16000 * 1.7)).astype(np.float32) * 0.1]
    feats, mask = _features(waves)
    ids = _prompt_ids(ref.config, 2)
    with torch.no_grad():
        expected = ref(input_ids=ids, input_features=feats, input_features_mask=mask).logits
    got = ours.logits(ids, feats, mask)
    assert got.shape == expected.shape
    assert _rel_err(got, expected) < RTOL


def test_text_only_logits_match(pair):
    ref, ours, _ = pair
    ids = torch.randint(3, ref.config.text_config.vocab_size_per_layer_input, (1, 23))
    with torch.no_grad():
        expected = ref(input_ids=ids).logits
    assert _rel_err(ours.logits(ids), expected) < RTOL


def test_greedy_generation_token_identical(pair):
    ref, ours, _ = pair
    rng = np.random.default_rng(1)
    feats, mask = _features([rng.standard_normal(16000 * 2).astype(np.float32) * 0.1])
    ids = _prompt_ids(ref.config, 1, seed=3)
    with torch.no_grad():
        out = ref.generate(input_ids=ids, input_features=feats, input_features_mask=mask, max_new_tokens=20,
                           do_sample=False, eos_token_id=None, pad_token_id=0,
                           suppress_tokens=list(ours.non_text_ids()))
    expected = out[0, ids.shape[1]:].tolist()
    emb = ours.merged_embeddings(ids, feats, mask)
    with torch.inference_mode():
        got = generate(ours.language_model, ids, inputs_embeds=emb, max_new_tokens=20, stop_ids=(),
                       embed=ours.embed_ids, suppress_ids=ours.non_text_ids())
    assert len(expected) == 20
    assert got == expected


def test_bfloat16_as_close_as_the_reference_bfloat16(pair):
    """bf16 is not bit-exact between implementations (kernel choices round differently), and with random
    weights the reference's own bf16 logits are 5-20% (of the range) off its fp32 ones. So: our bf16 run
    must be no further from the fp32 reference than the reference's bf16 run is (x1.5)."""
    ref, _, directory = pair
    ours16 = asr.load_model(directory, dtype=torch.bfloat16)
    assert ours16.dtype == torch.bfloat16
    ref16 = build_reference("sharing" if ref.config.text_config.num_kv_shared_layers else "matformer")
    ref16 = ref16.to(torch.bfloat16)
    rng = np.random.default_rng(2)
    feats, mask = _features([rng.standard_normal(16000 * 2).astype(np.float32) * 0.1])
    ids = _prompt_ids(ref.config, 1, seed=5)
    with torch.no_grad():
        exact = ref(input_ids=ids, input_features=feats, input_features_mask=mask).logits
        theirs = ref16(input_ids=ids, input_features=feats.to(torch.bfloat16), input_features_mask=mask).logits
    got = ours16.logits(ids, feats, mask)
    assert got.dtype == torch.bfloat16
    assert _rel_err(got.float(), exact) <= 1.5 * _rel_err(theirs.float(), exact)
