"""AudioEmbedder: audio vectors and audio token ids into the decoder's embedding space.

The reference `Gemma3nMultimodalEmbedder` for audio (`model.embed_audio`):
    soft: post_norm(projection(soft_norm(tokens)))
    hard: post_norm(projection(hard_norm(embedding[id - vocab_offset])))
post_norm is an RMSNorm without scale; no sqrt(hidden) factor on either path.
"""
from __future__ import annotations

import torch
from torch import nn

from .config import AudioConfig
from .norm import RMSNorm


class AudioEmbedder(nn.Module):
    def __init__(self, config: AudioConfig, text_hidden_size: int, text_rms_norm_eps: float = 1e-6):
        super().__init__()
        d = config.hidden_size
        # The reference uses the audio config's eps for all four norms; the text eps is accepted so
        # callers need not know that, and only matters if a config ever sets them apart.
        eps = config.rms_norm_eps
        self.vocab_offset = config.vocab_offset
        self.vocab_size = config.vocab_size
        self.text_rms_norm_eps = text_rms_norm_eps
        self.embedding = nn.Embedding(config.vocab_size, d)
        self.hard_embedding_norm = RMSNorm(d, eps)
        self.soft_embedding_norm = RMSNorm(d, eps)
        self.embedding_projection = nn.Linear(d, text_hidden_size, bias=False)
        self.embedding_post_projection_norm = RMSNorm(text_hidden_size, eps, with_scale=False)

    def embed_soft(self, tokens: torch.Tensor) -> torch.Tensor:
        """Audio encoder outputs [..., hidden] -> [..., text_hidden]."""
        if tokens.shape[-1] != self.embedding.embedding_dim:
            raise ValueError(f"embed_soft expects [..., {self.embedding.embedding_dim}] audio vectors, "
                             f"got {tuple(tokens.shape)}")
        x = self.soft_embedding_norm(tokens.to(self.embedding_projection.weight.dtype))
        return self.embedding_post_projection_norm(self.embedding_projection(x))

    def embed_hard(self, ids: torch.Tensor) -> torch.Tensor:
        """Absolute audio token ids in [vocab_offset, vocab_offset + vocab_size) -> [..., text_hidden]."""
        index = ids - self.vocab_offset
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= self.vocab_size):
            hi = self.vocab_offset + self.vocab_size
            raise ValueError(f"audio token ids must lie in [{self.vocab_offset}, {hi}), "
                             f"got ids from {int(ids.min())} to {int(ids.max())}")
        x = self.hard_embedding_norm(self.embedding(index))
        return self.embedding_post_projection_norm(self.embedding_projection(x))
