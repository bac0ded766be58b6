"""Area loss: keeps parts from vanishing (docs/METHOD.md §1.6).

    S_k = Σ_u A_k(u) + 1e-8,      L = mean_b Σ_k 1 / (1 + S_k / ε)

over the K foreground maps (CUB ε = 0.5, CelebA ε = 2.0), or over all K+1 maps for the authors'
PartImageNet variant (ε = 1.5; ``num_maps=K+1``).

S_k is a *sum* over the h×w grid, so these ε values are tied to the authors' 32×32 map
(S = 256, stride 8): on a 16×16 grid the same soft area is 4× smaller and the loss pushes 4× harder.
``normalise=True`` rescales S_k by (32·32)/(h·w), i.e. measures area in units of a 32×32 grid, so
that a configuration with another grid keeps the meaning of ε. It is off by default (the authors'
formula) and is an identity at 32×32.
"""
from __future__ import annotations

from typing import Optional

import torch

REFERENCE_GRID_CELLS = 32 * 32  # the authors' feature-map grid (256 / 8)


def area_loss(
    maps: torch.Tensor,
    eps_area: float,
    num_maps: Optional[int] = None,
    normalise: bool = False,
) -> torch.Tensor:
    """Σ_k 1 / (1 + S_k / ε), mean over the batch.

    maps: [B, C, h, w] part maps (softmax over C, background last).
    eps_area: ε (> 0), in units of grid cells of a 32×32 map.
    num_maps: how many leading channels to sum over; None = the foreground ones (all but the last);
        C = all maps including background (the authors' PartImageNet variant).
    normalise: rescale S_k by (32·32)/(h·w) (see the module docstring); False = authors' formula.
    Returns a scalar (float32).
    """
    if maps.dim() != 4:
        raise ValueError(f"maps must be [B, C, h, w], got {tuple(maps.shape)}")
    if eps_area <= 0:
        raise ValueError(f"eps_area must be > 0, got {eps_area}")
    num_maps = maps.shape[1] - 1 if num_maps is None else int(num_maps)
    if not 0 < num_maps <= maps.shape[1]:
        raise ValueError(f"num_maps={num_maps} does not fit maps with {maps.shape[1]} channels")
    a = maps[:, :num_maps].float()
    s = a.sum(dim=(2, 3)) + 1e-8                                       # [B, num_maps]
    if normalise:
        s = s * (REFERENCE_GRID_CELLS / (a.shape[-2] * a.shape[-1]))
    return (1.0 / (1.0 + s / eps_area)).sum(dim=1).mean()
