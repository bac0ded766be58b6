"""MPAE's training augmentation on the device: one view per image.

Their transforms (``Dataloader/CUB.py`` ``CUB_Dataset.__init__``, the same for every dataset):
``Resize(S)`` of the shorter side -> ``RandomHorizontalFlip(0.5)`` -> ``ColorJitter()`` (every
factor 0: a no-op) -> ``RandomAffine(degrees=15, translate=(0.05, 0.05), scale=(0.95, 1.05))``
(uniform draws; the translation a whole number of pixels; nearest interpolation; fill 0, i.e.
black before the normalisation) -> ``RandomCrop(S)``. Here the flip and the affine warp run on the
batch (:func:`partformer.augment.random_affine_views`), with every draw from the step's
generator; the dataset gives the image at ``data.resize`` (docs/differences.md: their random crop
of the shorter-side resize is not reproduced).
"""
from __future__ import annotations

from typing import Optional

import torch

from partformer.augment import random_affine_views

from .config import MPAEAugmentConfig


def augment_batch(images: torch.Tensor, cfg: MPAEAugmentConfig,
                  generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """``images [B, 3, H, W]`` in [0, 1] -> one flipped and warped view each (same shape)."""
    return random_affine_views(images, cfg.flip, cfg.rotation, (cfg.translate, cfg.translate),
                               tuple(cfg.scale), cfg.interpolation, generator)
