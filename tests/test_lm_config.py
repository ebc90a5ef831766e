"""TextConfig.from_dict: the text_config section of config.json as transformers 4.x and 5.x write it."""
import pytest

from lm.config import FULL, SLIDING, ConfigError, TextConfig


def e2b_text_config() -> dict:
    """The E2B text_config as transformers 5.23 writes it (to_dict of the conversion script's variant)."""
    n = 30
    return {
        "model_type": "gemma3n_text", "vocab_size": 262400, "vocab_size_per_layer_input": 262144,
        "hidden_size": 2048, "hidden_size_per_layer_input": 256, "num_hidden_layers": n,
        "num_attention_heads": 8, "num_key_value_heads": 2, "head_dim": 256, "intermediate_size": [8192] * n,
        "layer_types": [FULL if (i + 1) % 5 == 0 else SLIDING for i in range(n)],
        "activation_sparsity_pattern": [0.95] * 10 + [0.0] * 20, "num_kv_shared_layers": 10,
        "rope_parameters": {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                            "full_attention": {"rope_type": "default", "rope_theta": 1000000.0}},
        "sliding_window": 512, "rms_norm_eps": 1e-6, "final_logit_softcapping": 30.0, "laurel_rank": 64,
        "altup_num_inputs": 4, "altup_active_idx": 0, "altup_correct_scale": True, "altup_coef_clip": 120.0,
        "hidden_activation": "gelu_pytorch_tanh", "pad_token_id": 0, "eos_token_id": 1, "bos_token_id": 2,
        "max_position_embeddings": 32768, "tie_word_embeddings": True, "dtype": "bfloat16",
    }


def test_e2b_fields_and_kv_sharing():
    c = TextConfig.from_dict(e2b_text_config())
    assert c.num_hidden_layers == 30 and c.intermediate_size == (8192,) * 30
    assert [i for i, t in enumerate(c.layer_types) if t == FULL] == [4, 9, 14, 19, 24, 29]
    assert c.kv_producers == {SLIDING: 18, FULL: 19}
    assert [c.kv_source(i) for i in (17, 20, 24, 29)] == [17, 18, 19, 19]
    assert c.rope_theta == 1e6 and c.rope_local_base_freq == 1e4
    assert c.eos_token_id == (1,) and c.extra["dtype"] == "bfloat16"


def test_old_rope_spelling_and_eos_list():
    d = e2b_text_config()
    del d["rope_parameters"]
    d.update(rope_theta=5e5, rope_local_base_freq=2e4, eos_token_id=[1, 106])
    c = TextConfig.from_dict(d)
    assert (c.rope_theta, c.rope_local_base_freq, c.eos_token_id) == (5e5, 2e4, (1, 106))


def test_int_intermediate_size_and_default_layer_types():
    d = e2b_text_config()
    d["intermediate_size"] = 4096
    del d["layer_types"], d["activation_sparsity_pattern"]
    c = TextConfig.from_dict(d)
    assert c.intermediate_size == (4096,) * 30
    assert c.layer_types[4] == FULL and c.layer_types[0] == SLIDING  # 5.x rule: full iff (i+1) % 5 == 0
    assert c.activation_sparsity_pattern == (0.95,) * 10 + (0.0,) * 20


def test_matformer_slice_keeps_old_layer_types_length():
    d = e2b_text_config()
    d.update(num_hidden_layers=25, intermediate_size=[4096] * 25, activation_sparsity_pattern=[0.95] * 10 + [0.0] * 15,
             num_kv_shared_layers=5)
    c = TextConfig.from_dict(d)  # layer_types still lists 30 entries
    assert len(c.layer_types) == 25 and c.layer_types == tuple(e2b_text_config()["layer_types"][:25])


@pytest.mark.parametrize("field, value, words", [
    ("intermediate_size", [8192] * 29, "intermediate_size"),
    ("intermediate_size", "8192", "intermediate_size"),
    ("hidden_size", 2048.5, "hidden_size"),
    ("num_hidden_layers", True, "num_hidden_layers"),
    ("eos_token_id", [1, "x"], "eos_token_id"),
    ("layer_types", "sliding_attention", "layer_types"),
    ("layer_types", ["sliding_attention"] * 29 + ["local"], "layer_types"),
    ("activation_sparsity_pattern", [0.95] * 3, "activation_sparsity_pattern"),
    ("rms_norm_eps", None, "rms_norm_eps"),
    ("rope_parameters", {"full_attention": {"rope_type": "yarn", "rope_theta": 1.0}}, "rope_type"),
])
def test_wrong_field_is_named(field, value, words):
    d = e2b_text_config()
    d[field] = value
    with pytest.raises(ConfigError, match=words):
        TextConfig.from_dict(d, source="ckpt/config.json")


def test_shared_layer_without_producer_is_rejected():
    d = e2b_text_config()
    d.update(num_hidden_layers=5, intermediate_size=64, activation_sparsity_pattern=[0.0] * 5, num_kv_shared_layers=1,
             layer_types=[SLIDING] * 4 + [FULL])
    with pytest.raises(ConfigError, match="KV-shared layer 4"):
        TextConfig.from_dict(d)
