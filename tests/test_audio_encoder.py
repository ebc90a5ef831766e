"""AudioEncoder without the reference: token counts, input checks, causality."""
import pytest
import torch

from audio_encoder.config import AudioConfig
from audio_encoder.encoder import AudioEncoder
from reference_models import audio_config_kwargs


@pytest.fixture(scope="module")
def encoder():
    torch.manual_seed(0)
    return AudioEncoder(AudioConfig.from_dict(audio_config_kwargs())).eval()


@pytest.mark.parametrize("frames,tokens", [(0, 0), (1, 1), (97, 7), (197, 13), (497, 32), (2997, 188)])
def test_token_count(encoder, frames, tokens):
    """N = ceil(ceil(T / 4) / 4): 1 s -> 7 tokens, 5 s -> 32, 30 s -> 188."""
    with torch.no_grad():
        out, valid = encoder(torch.zeros(1, frames, 128), torch.ones(1, frames, dtype=torch.bool))
    assert out.shape == (1, tokens, 32) and valid.shape == (1, tokens)


def test_prefix_is_causal_up_to_lookahead(encoder):
    """Token k depends on mel frames up to 16 k + 6 only: a longer clip leaves earlier tokens unchanged (1e-5)."""
    feats = torch.randn(1, 200, 128)
    full_mask = torch.ones(1, 200, dtype=torch.bool)
    with torch.no_grad():
        full, _ = encoder(feats, full_mask)
        part, _ = encoder(feats[:, :103], full_mask[:, :103])  # token 6 needs frames 0 .. 102
    torch.testing.assert_close(part[:, :7], full[:, :7], atol=1e-5, rtol=1e-5)


def test_input_checks(encoder):
    with pytest.raises(ValueError, match=r"features \[batch, frames, 128\]"):
        encoder(torch.zeros(1, 10, 80), torch.ones(1, 10, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask must be"):
        encoder(torch.zeros(1, 10, 128), torch.ones(1, 9, dtype=torch.bool))
    with pytest.raises(ValueError, match="mask must be bool"):
        encoder(torch.zeros(1, 10, 128), torch.ones(1, 10))


@pytest.mark.parametrize("rows", [37, 400])
def test_subsampling_in_pieces_equals_one_pass(encoder, monkeypatch, rows):
    """The offline SSCP runs in pieces of SSCP_ROWS mel rows (lower peak memory); any piece size gives the
    tokens of a single pass, up to float32 rounding of the cumulative norm's sums (1e-5)."""
    import audio_encoder.encoder as module

    feats = torch.randn(2, 1001, 128) * 3 - 4
    mask = torch.ones(2, 1001, dtype=torch.bool)
    mask[1, 700:] = False
    with torch.no_grad():
        monkeypatch.setattr(module, "SSCP_ROWS", 10**9)
        whole, valid_whole = encoder(feats, mask)
        monkeypatch.setattr(module, "SSCP_ROWS", rows)
        pieces, valid = encoder(feats, mask)
    assert torch.equal(valid, valid_whole)
    torch.testing.assert_close(pieces, whole, atol=1e-5, rtol=1e-5)
