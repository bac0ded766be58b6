"""Reconstruction decoder (docs/METHOD.md §1.5).

``num_blocks`` blocks of [3x3 conv (no bias) -> channels-first LayerNorm (eps 1e-6) -> ReLU], a x2
bilinear upsampling after each block listed in ``upsample_after`` (1-based), then a 1x1 conv (with
bias) to ``out_channels``. The module is a plain ``nn.Sequential`` whose indices match the authors'
``Reconstruct_Block``: with the defaults, 0, 1 blocks, 2 upsample, 3, 4 blocks, 5 upsample,
6 block, 7 the 1x1 conv; each block is itself ``Sequential(conv, norm, relu)``.

Initialisation as the authors' ``_init_weights`` (CUB_Model.py / CelebA_Model.py): xavier-uniform
conv weights; the final conv's bias keeps PyTorch's default; LayerNorms 1 / 0.
"""
from __future__ import annotations

from typing import List, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["LayerNorm2d", "ReconstructionDecoder"]


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channel dim of a ``[B, C, H, W]`` tensor (weight / bias of shape [C])."""

    def __init__(self, num_channels: int, eps: float = 1e-6):
        super().__init__(num_channels, eps=eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.permute(0, 2, 3, 1)
        x = F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class ReconstructionDecoder(nn.Sequential):
    """Part-feature map ``[B, in_dim, h, w]`` -> image ``[B, out_channels, h*f, w*f]``,
    ``f = 2 ** len(upsample_after)`` (``upscale``)."""

    def __init__(self, in_dim: int = 64, channels: int = 64, num_blocks: int = 5,
                 upsample_after: Sequence[int] = (2, 4), out_channels: int = 3,
                 upsample_align_corners: bool = False):
        upsample_after = tuple(int(i) for i in upsample_after)
        bad = [i for i in upsample_after if not 1 <= i <= num_blocks]
        if bad or len(set(upsample_after)) != len(upsample_after):
            raise ValueError(f"upsample_after must list distinct block numbers in 1..{num_blocks}, "
                             f"got {list(upsample_after)}")
        layers: List[nn.Module] = []
        prev = in_dim
        for i in range(1, num_blocks + 1):
            layers.append(nn.Sequential(
                nn.Conv2d(prev, channels, kernel_size=3, padding=1, bias=False),
                LayerNorm2d(channels, eps=1e-6),
                nn.ReLU(inplace=True),
            ))
            prev = channels
            if i in upsample_after:
                layers.append(nn.Upsample(scale_factor=2, mode="bilinear",
                                          align_corners=upsample_align_corners))
        layers.append(nn.Conv2d(prev, out_channels, kernel_size=1))
        super().__init__(*layers)
        self.in_dim = in_dim
        self.upsample_after = upsample_after
        self.upscale = 2 ** len(upsample_after)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)
