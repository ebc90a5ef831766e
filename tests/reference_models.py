"""Random reference models (transformers' gemma3n) in Hugging Face format, for parity tests.

transformers is a test-only dependency. The reference vision tower needs timm, which we do not install,
so it is replaced by an empty stub module: nothing in the audio path touches it.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch

# Small vocabularies laid out like the real one: text ids, then 128 vision ids, then 128 audio ids.
TEXT_VOCAB = 512
VISION_OFFSET = TEXT_VOCAB
AUDIO_OFFSET = TEXT_VOCAB + 128
FULL_VOCAB = TEXT_VOCAB + 256


def text_config_kwargs(variant: str) -> dict:
    """Two tiny decoder shapes: 'sharing' (KV sharing, sparsity, explicit non-default layer_types) and
    'matformer' (per-layer intermediate_size list)."""
    base = dict(
        vocab_size=FULL_VOCAB,
        vocab_size_per_layer_input=TEXT_VOCAB,
        hidden_size=64,
        hidden_size_per_layer_input=16,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        laurel_rank=8,
        altup_num_inputs=4,
        sliding_window=8,
        max_position_embeddings=512,
        rms_norm_eps=1e-6,
        final_logit_softcapping=30.0,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=2,
    )
    if variant == "sharing":
        base.update(
            num_hidden_layers=6,
            intermediate_size=96,
            num_kv_shared_layers=3,
            layer_types=["sliding_attention", "full_attention", "sliding_attention",
                         "sliding_attention", "full_attention", "sliding_attention"],
            activation_sparsity_pattern=[0.95, 0.95, 0.0, 0.0, 0.0, 0.0],
        )
    elif variant == "matformer":
        base.update(
            num_hidden_layers=5,
            intermediate_size=[128, 96, 64, 96, 128],
            num_kv_shared_layers=0,
            layer_types=["sliding_attention"] * 4 + ["full_attention"],
            activation_sparsity_pattern=[0.95, 0.0, 0.0, 0.0, 0.0],
        )
    else:
        raise ValueError(variant)
    return base


def audio_config_kwargs() -> dict:
    return dict(
        hidden_size=32,
        input_feat_size=128,
        conf_num_hidden_layers=2,
        conf_num_attention_heads=4,
        conf_attention_chunk_size=12,
        conf_attention_context_left=13,
        conf_attention_context_right=0,
        conf_attention_logit_cap=50.0,
        conf_conv_kernel_size=5,
        conf_reduction_factor=4,
        conf_residual_weight=0.5,
        sscp_conv_channel_size=[16, 8],
        sscp_conv_kernel_size=[[3, 3], [3, 3]],
        sscp_conv_stride_size=[[2, 2], [2, 2]],
        vocab_size=128,
        vocab_offset=AUDIO_OFFSET,
        rms_norm_eps=1e-6,
    )


def reference_config(variant: str = "sharing"):
    from transformers import Gemma3nAudioConfig, Gemma3nConfig, Gemma3nTextConfig, Gemma3nVisionConfig

    return Gemma3nConfig(
        text_config=Gemma3nTextConfig(**text_config_kwargs(variant)),
        audio_config=Gemma3nAudioConfig(**audio_config_kwargs()),
        vision_config=Gemma3nVisionConfig(hidden_size=64, vocab_size=128, vocab_offset=VISION_OFFSET),
        audio_soft_tokens_per_image=188,
        boa_token_id=TEXT_VOCAB - 2,
        eoa_token_id=AUDIO_OFFSET,
        audio_token_id=AUDIO_OFFSET + 1,
        boi_token_id=TEXT_VOCAB - 3,
        eoi_token_id=VISION_OFFSET,
        image_token_id=VISION_OFFSET + 1,
    )


class _VisionStub(torch.nn.Module):
    """Stands in for the timm MobileNetV5 tower, which needs timm (not installed)."""

    def forward(self, *args, **kwargs):  # pragma: no cover - never called on the audio path
        raise RuntimeError("vision tower is stubbed in tests")


@contextlib.contextmanager
def vision_stubbed():
    """Make Gemma3nModel build a stub instead of the timm vision tower."""
    from transformers.models.gemma3n import modeling_gemma3n as m

    original = m.AutoModel.from_config

    def from_config(config, *args, **kwargs):
        if getattr(config, "model_type", "") == "gemma3n_vision":
            return _VisionStub()
        return original(config, *args, **kwargs)

    m.AutoModel.from_config = from_config
    try:
        yield
    finally:
        m.AutoModel.from_config = original


def build_reference(variant: str = "sharing", seed: int = 0, dtype=torch.float32):
    """A random Gemma3nForConditionalGeneration. Weights are re-drawn with a large enough std
    that every branch (AltUp, LAuReL, PLE, sparsity) moves the output measurably."""
    from transformers import Gemma3nForConditionalGeneration

    torch.manual_seed(seed)
    with vision_stubbed():
        model = Gemma3nForConditionalGeneration(reference_config(variant))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight") or "norm" in name.rsplit(".", 2)[-2]:
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.2 * torch.randn(p.shape, generator=g) / max(1, p.shape[-1]) ** 0.5 * 2)
    return model.to(dtype).eval()


def save_reference(model, directory: Path) -> Path:
    """save_pretrained in HF layout (config.json + model.safetensors)."""
    directory = Path(directory)
    model.save_pretrained(directory, safe_serialization=True)
    return directory
