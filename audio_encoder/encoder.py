"""AudioEncoder: Gemma 3n's audio tower (USM-style conformer), log-mel -> one vector per 160 ms.

    mel [B, T, 128] --SSCP (2 stride-2 convs)--> [B, ceil(T/4), hidden] --conformer x L-->
    keep every 4th frame --> tokens [B, ceil(ceil(T/4)/4), hidden]

Parameter names equal the checkpoint's minus `model.audio_tower.`. Masks are True = valid here;
the reference passes the inverse internally, the results are the same (invalid tokens zeroed).
"""
from __future__ import annotations

import torch
from torch import nn

from .config import AudioConfig
from .conformer import ConformerBlock
from .subsampling import SubSampleConvProjection

SSCP_ROWS = 400  # mel rows (4 s) per piece of the offline subsampling (any size: the same tokens up to rounding)


class AudioEncoder(nn.Module):
    def __init__(self, config: AudioConfig):
        super().__init__()
        self.config = config
        self.subsample_conv_projection = SubSampleConvProjection(config)
        self.conformer = nn.ModuleList(ConformerBlock(config) for _ in range(config.conf_num_hidden_layers))

    @property
    def dtype(self) -> torch.dtype:
        return self.subsample_conv_projection.conv_0.conv.weight.dtype  # convolutions are never quantized

    @property
    def device(self) -> torch.device:
        return self.subsample_conv_projection.conv_0.conv.weight.device

    def forward(self, features: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """features [B, T, 128] float, mask [B, T] bool (True = valid frame) ->
        (tokens [B, N, hidden] in the weights' dtype, token_mask [B, N] bool), N = ceil(ceil(T/4)/4)."""
        self._check(features, mask)
        mask = mask.to(device=features.device, dtype=torch.bool)
        batch, frames = mask.shape
        if frames == 0:
            return (features.new_zeros(batch, 0, self.config.hidden_size, dtype=self.dtype),
                    mask.new_zeros(batch, 0))
        x = self._subsample(features)
        # A conformer frame is valid iff the first mel frame of its stride is.
        stride = self.config.time_stride
        index = torch.clamp(torch.arange(x.shape[1], device=mask.device) * stride, max=frames - 1)
        valid = mask[:, index]
        for block in self.conformer:
            x, _ = block(x, valid)
        r = self.config.conf_reduction_factor
        x, valid = x[:, ::r], valid[:, ::r]  # plain decimation, as the reference does
        return x.masked_fill(~valid.unsqueeze(-1), 0.0), valid

    def _subsample(self, features: torch.Tensor) -> torch.Tensor:
        """The SSCP in pieces of SSCP_ROWS mel rows, carrying its stream state (the code a live stream runs;
        only the float32 rounding of the cumulative norm's running sums differs from one pass, ~1e-6).
        Its first convolution's output is 32x the input's size ([B, C, T/2, 64] for 128 mel bins, 47 MiB
        in float32 for 30 s) and the cumulative norm makes several temporaries of it; in pieces they stay
        a few MiB, which lowers the peak memory of a whole-clip encode."""
        state, parts = None, []
        for lo in range(0, features.shape[1], SSCP_ROWS):
            final = lo + SSCP_ROWS >= features.shape[1]
            x, state = self.subsample_conv_projection(features[:, lo:lo + SSCP_ROWS], state, final=final)
            parts.append(x)
        return torch.cat(parts, dim=1)

    def _check(self, features: torch.Tensor, mask: torch.Tensor) -> None:
        feat = self.config.input_feat_size
        if features.ndim != 3 or features.shape[-1] != feat:
            raise ValueError(f"AudioEncoder expects features [batch, frames, {feat}], got {tuple(features.shape)}")
        if not features.is_floating_point():
            raise ValueError(f"AudioEncoder features must be floating point, got {features.dtype}")
        if tuple(mask.shape) != tuple(features.shape[:2]):
            raise ValueError(f"AudioEncoder mask must be [batch, frames] = {tuple(features.shape[:2])} "
                             f"(True = valid), got {tuple(mask.shape)}")
        if mask.dtype != torch.bool:
            raise ValueError(f"AudioEncoder mask must be bool (True = valid frame), got {mask.dtype}")
