"""Pixel reconstruction losses: a cheap alternative to the VGG perceptual loss (CPU configs, tests).

    l1:  mean |recon − target|        mse:  mean (recon − target)²

over all elements of [B, 3, H, W]. Not the paper's loss (the authors use the perceptual loss,
docs/METHOD.md §1.6); selected with ``loss.recon=l1`` or ``loss.recon=mse``.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

PIXEL_LOSSES = ("l1", "mse")


def pixel_reconstruction_loss(recon: torch.Tensor, target: torch.Tensor, kind: str = "l1") -> torch.Tensor:
    """Mean pixel loss between recon and target, both [B, C, H, W] of the same shape; scalar float32."""
    if recon.shape != target.shape:
        raise ValueError(f"recon {tuple(recon.shape)} and target {tuple(target.shape)} must have the same shape")
    recon, target = recon.float(), target.detach().float()
    if kind == "l1":
        return F.l1_loss(recon, target)
    if kind == "mse":
        return F.mse_loss(recon, target)
    raise ValueError(f"unknown pixel reconstruction loss {kind!r}; expected one of {PIXEL_LOSSES}")


class PixelReconstructionLoss(nn.Module):
    """Thin module around :func:`pixel_reconstruction_loss`. forward(recon, target) -> scalar."""

    def __init__(self, kind: str = "l1"):
        super().__init__()
        if kind not in PIXEL_LOSSES:
            raise ValueError(f"unknown pixel reconstruction loss {kind!r}; expected one of {PIXEL_LOSSES}")
        self.kind = kind

    def forward(self, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return pixel_reconstruction_loss(recon, target, self.kind)

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}"
