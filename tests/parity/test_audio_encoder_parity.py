"""AudioEncoder / AudioEmbedder against transformers' Gemma3nAudioEncoder / Gemma3nMultimodalEmbedder,
and our parameter names/shapes against the real E2B checkpoint listing."""
from pathlib import Path

import pytest
import torch

from audio_encoder.config import AudioConfig
from audio_encoder.embedder import AudioEmbedder
from audio_encoder.encoder import AudioEncoder
from reference_models import audio_config_kwargs

transformers = pytest.importorskip("transformers")
from transformers.models.gemma3n import modeling_gemma3n as ref_mod  # noqa: E402

KEYS_E2B = Path("/work/shared/reference/keys_E2B.tsv")
RTOL_FP32 = 1e-4
RTOL_BF16 = 2e-2  # bf16 keeps 8 mantissa bits; the two implementations agree far better in practice


def _rerandomize(module: torch.nn.Module, seed: int) -> None:
    """Weights large enough that every branch (norm scales, per-dim scale, position term) matters."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith("per_dim_scale"):
                p.copy_(0.5 * torch.randn(p.shape, generator=g))
            else:
                fan_in = max(1, p[0].numel())
                p.copy_(0.5 * torch.randn(p.shape, generator=g) / fan_in ** 0.5)


@pytest.fixture(scope="module")
def pair():
    torch.manual_seed(0)
    ref = ref_mod.Gemma3nAudioEncoder(transformers.Gemma3nAudioConfig(**audio_config_kwargs())).eval()
    _rerandomize(ref, 1)
    ours = AudioEncoder(AudioConfig.from_dict(audio_config_kwargs())).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    return ref, ours


def _batch(frames: int, seed: int):
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(2, frames, 128, generator=g) * 3.0 - 4.0  # log-mel-like range
    mask = torch.ones(2, frames, dtype=torch.bool)
    mask[1, frames * 2 // 3:] = False  # second clip shorter: padded frames
    return features, mask


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max() / b.float().abs().max().clamp_min(1e-12))


@pytest.mark.parametrize("frames", [1, 7, 30, 97, 250, 999])  # 999: the SSCP runs in three pieces
def test_encoder_matches_reference_fp32(pair, frames):
    """Tokens within 1e-4 relative (of the max) and the same token mask, batch of 2 with padding."""
    ref, ours = pair
    features, mask = _batch(frames, frames)
    with torch.no_grad():
        expected = ref(features, ~mask)  # the reference's mask is True = padded
        tokens, valid = ours(features, mask)
    assert tokens.shape == expected.last_hidden_state.shape
    torch.testing.assert_close(valid, ~expected.audio_mel_mask)
    err = _rel(tokens, expected.last_hidden_state)
    assert err <= RTOL_FP32, f"T={frames}: relative error {err} > {RTOL_FP32}"
    assert float(tokens[~valid].abs().sum()) == 0.0  # invalid tokens zeroed


@pytest.mark.parametrize("override", [
    dict(hidden_size=384, conf_num_attention_heads=2, conf_num_hidden_layers=1),  # head_dim 192 as in E2B
    dict(conf_attention_context_left=5, conf_attention_chunk_size=4, conf_conv_kernel_size=3,
         conf_num_hidden_layers=3, conf_reduction_factor=2),
], ids=["head192", "window5"])
def test_other_config_shapes_match_reference(override):
    """Sizes, window, conv kernel and reduction all come from the config (1e-4 relative)."""
    kwargs = {**audio_config_kwargs(), **override}
    torch.manual_seed(0)
    ref = ref_mod.Gemma3nAudioEncoder(transformers.Gemma3nAudioConfig(**kwargs)).eval()
    _rerandomize(ref, 2)
    ours = AudioEncoder(AudioConfig.from_dict(kwargs)).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    features, mask = _batch(150, 1)
    with torch.no_grad():
        expected = ref(features, ~mask).last_hidden_state
        tokens, _ = ours(features, mask)
    err = _rel(tokens, expected)
    assert tokens.shape == expected.shape and err <= RTOL_FP32, f"{override}: relative error {err}"


def test_encoder_matches_reference_bf16(pair):
    ref, ours = pair
    ref_b, ours_b = ref_mod.Gemma3nAudioEncoder(ref.config).eval(), AudioEncoder(ours.config).eval()
    ref_b.load_state_dict(ref.state_dict())
    ours_b.load_state_dict(ours.state_dict())
    ref_b, ours_b = ref_b.to(torch.bfloat16), ours_b.to(torch.bfloat16)
    features, mask = _batch(120, 5)
    with torch.no_grad():
        expected = ref_b(features, ~mask).last_hidden_state
        tokens, _ = ours_b(features, mask)
    assert tokens.dtype == torch.bfloat16
    err = _rel(tokens, expected)
    assert err <= RTOL_BF16, f"bf16 relative error {err} > {RTOL_BF16}"


def test_embedder_matches_reference():
    """embed_soft / embed_hard equal the reference embedder's inputs_embeds / input_ids paths (1e-5 rel)."""
    audio_cfg = transformers.Gemma3nAudioConfig(**audio_config_kwargs())
    text_cfg = transformers.Gemma3nTextConfig(hidden_size=48, vocab_size=1024, vocab_size_per_layer_input=512,
                                              hidden_size_per_layer_input=8, num_attention_heads=2,
                                              num_key_value_heads=1, head_dim=8, num_hidden_layers=2,
                                              intermediate_size=32, layer_types=["sliding_attention"] * 2,
                                              activation_sparsity_pattern=[0.0, 0.0], num_kv_shared_layers=0)
    ref = ref_mod.Gemma3nMultimodalEmbedder(audio_cfg, text_cfg).eval()
    _rerandomize(ref, 3)
    ours = AudioEmbedder(AudioConfig.from_dict(audio_config_kwargs()), 48, 1e-6).eval()
    ours.load_state_dict(ref.state_dict(), strict=True)
    x = torch.randn(2, 5, 32) * 4
    ids = torch.tensor([[0, 1, 127, 64]]) + audio_cfg.vocab_offset
    with torch.no_grad():
        assert _rel(ours.embed_soft(x), ref(inputs_embeds=x)) <= 1e-5
        assert _rel(ours.embed_hard(ids), ref(input_ids=ids)) <= 1e-5
    with pytest.raises(ValueError, match="audio token ids must lie in"):
        ours.embed_hard(torch.tensor([audio_cfg.vocab_offset - 1]))


def _checkpoint_shapes(prefix: str) -> dict[str, tuple[int, ...]]:
    shapes = {}
    for line in KEYS_E2B.read_text().splitlines():
        name, _, shape = line.partition("\t")
        if name.startswith(prefix):
            shapes[name[len(prefix):]] = tuple(int(s) for s in shape.strip("[]").split(",") if s.strip())
    return shapes


@pytest.mark.skipif(not KEYS_E2B.exists(), reason="checkpoint key listing not present")
def test_e2b_names_and_shapes():
    """Default (E2B) AudioEncoder and AudioEmbedder on the meta device have exactly the checkpoint's
    audio_tower / embed_audio tensor names and shapes."""
    with torch.device("meta"):
        encoder = AudioEncoder(AudioConfig())
        embedder = AudioEmbedder(AudioConfig(), 2048, 1e-6)
    for module, prefix in ((encoder, "model.audio_tower."), (embedder, "model.embed_audio.")):
        ours = {name: tuple(t.shape) for name, t in module.state_dict().items()}
        expected = _checkpoint_shapes(prefix)
        assert len(expected) > 0
        assert set(ours) == set(expected), (sorted(set(ours) ^ set(expected)))[:10]
        assert ours == expected
    assert len(encoder.state_dict()) == 269
