"""audio_encoder.config.AudioConfig: defaults, reading config.json's audio_config, errors naming fields."""
import json

import pytest

from audio_encoder.config import AudioConfig
from reference_models import audio_config_kwargs


def test_defaults_equal_reference_defaults():
    """Our defaults are Gemma3nAudioConfig's (the E2B/E4B values)."""
    transformers = pytest.importorskip("transformers")
    ref = transformers.Gemma3nAudioConfig().to_dict()
    ours = AudioConfig()
    assert AudioConfig.from_dict(json.loads(json.dumps(ref))) == ours
    for name in ("hidden_size", "conf_num_hidden_layers", "vocab_offset", "conf_attention_context_left",
                 "sscp_conv_group_norm_eps", "rms_norm_eps", "gradient_clipping"):
        assert getattr(ours, name) == ref[name], name


def test_from_dict_reads_tiny_config_and_ignores_unknown_keys():
    d = json.loads(json.dumps(audio_config_kwargs()))  # JSON turns tuples into lists
    d.update(model_type="gemma3n_audio", torch_dtype="bfloat16")
    cfg = AudioConfig.from_dict(d)
    assert cfg.hidden_size == 32 and cfg.conf_num_hidden_layers == 2
    assert cfg.sscp_conv_channel_size == (16, 8) and cfg.sscp_conv_kernel_size == ((3, 3), (3, 3))
    assert cfg.head_dim == 8 and cfg.time_stride == 4
    assert isinstance(cfg.rms_norm_eps, float)
    with pytest.raises(Exception):
        cfg.hidden_size = 5  # frozen


@pytest.mark.parametrize("field,value,match", [
    ("hidden_size", "1536", "audio_config.hidden_size must be an integer"),
    ("conf_num_hidden_layers", 2.5, "conf_num_hidden_layers must be an integer"),
    ("rms_norm_eps", "tiny", "audio_config.rms_norm_eps must be a number"),
    ("sscp_conv_channel_size", [16, "8"], "sscp_conv_channel_size must hold"),
    ("sscp_conv_kernel_size", [[3, 3], [3]], "sscp_conv_kernel_size must hold 2 integers"),
    ("conf_attention_context_right", 2, "conf_attention_context_right must be 0"),
    ("conf_num_attention_heads", 7, "divisible"),
])
def test_wrong_values_name_the_field(field, value, match):
    with pytest.raises(ValueError, match=match):
        AudioConfig.from_dict({field: value})


def test_not_a_dict():
    with pytest.raises(ValueError, match="JSON object"):
        AudioConfig.from_dict([1, 2])
