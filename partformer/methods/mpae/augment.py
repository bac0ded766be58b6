"""MPAE's training augmentation on the device: one view per image.

Their transforms (``Dataloader/CUB.py`` ``CUB_Dataset.__init__``, the same for every dataset):
``Resize(S)`` of the shorter side -> ``RandomHorizontalFlip(0.5)`` -> ``ColorJitter()`` (every
factor 0: a no-op) -> ``RandomAffine(degrees=15, translate=(0.05, 0.05), scale=(0.95, 1.05))``
(uniform draws; the translation a whole number of pixels; nearest interpolation; fill 0, i.e.
black before the normalisation) -> ``RandomCrop(S)``. Here the flip and the affine warp run on the
batch, with every draw from the step's generator; the dataset gives the image at ``data.resize``
(docs/differences.md: their random crop of the shorter-side resize is not reproduced).
"""
from __future__ import annotations

from typing import Optional

import torch

from partformer.augment import centred_affine_matrix, flip_matrix, warp_images

from .config import MPAEAugmentConfig


def _uniform(lo: float, hi: float, n: int, generator: Optional[torch.Generator]) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=generator, dtype=torch.float64)


def augment_batch(images: torch.Tensor, cfg: MPAEAugmentConfig,
                  generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """``images [B, 3, H, W]`` in [0, 1] -> one flipped and warped view each (same shape).
    Draws (CPU, in this order): flip ``[B]``, angle ``[B]`` ~ U(±rotation), translation
    ``[B, 2]`` ~ U(±translate · size) rounded to pixels, scale ``[B]`` ~ U(scale)."""
    B, _, H, W = images.shape
    flip = torch.rand(B, generator=generator) < cfg.flip
    angle = _uniform(-cfg.rotation, cfg.rotation, B, generator)
    tx = _uniform(-cfg.translate * W, cfg.translate * W, B, generator).round()
    ty = _uniform(-cfg.translate * H, cfg.translate * H, B, generator).round()
    scale = _uniform(cfg.scale[0], cfg.scale[1], B, generator)
    M = centred_affine_matrix(angle, scale, torch.stack([tx, ty], dim=1), (H, W)) @ \
        flip_matrix(flip, W)
    return warp_images(images, M.to(images.device), mode=cfg.interpolation, padding_mode="zeros")
