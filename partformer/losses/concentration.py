"""Concentration loss: the spatial variance of each foreground part map (docs/METHOD.md §1.6).

For a map A_k over an h×w grid with coordinates x_j = j/w·2 − 1, y_i = i/h·2 − 1 (i, j 0-based;
the authors' i/(S/8)·2 − 1, which is not centred on 0 but variance does not care),

    x̄_k = Σ_u A_k(u) x_u / Σ_u A_k(u),      ȳ_k likewise,
    L = mean_b Σ_k Σ_u A_k(u) [(x_u − x̄_k)² + (y_u − ȳ_k)²] / Σ_u A_k(u),

summed over the K foreground maps only (the background channel is last and skipped).
"""
from __future__ import annotations

from typing import Optional

import torch

_EPS = 1e-8


def concentration_loss(maps: torch.Tensor, num_fg: Optional[int] = None, eps: float = _EPS) -> torch.Tensor:
    """Soft spatial variance of the foreground maps, summed over parts, mean over the batch.

    maps: [B, C, h, w] part maps (softmax over C, background last).
    num_fg: how many leading channels are foreground parts (K); None = all but the last channel.
    eps: added to the mass Σ_u A_k(u) in the denominators (a vanished part gives 0, not NaN).
    Returns a scalar (float32).
    """
    if maps.dim() != 4:
        raise ValueError(f"maps must be [B, C, h, w], got {tuple(maps.shape)}")
    num_fg = maps.shape[1] - 1 if num_fg is None else int(num_fg)
    if not 0 < num_fg <= maps.shape[1]:
        raise ValueError(f"num_fg={num_fg} does not fit maps with {maps.shape[1]} channels")
    a = maps[:, :num_fg].float()
    h, w = a.shape[-2:]
    ys = torch.arange(h, device=a.device, dtype=a.dtype) / h * 2 - 1  # [h]
    xs = torch.arange(w, device=a.device, dtype=a.dtype) / w * 2 - 1  # [w]
    mass = a.sum(dim=(2, 3)) + eps                                     # [B, K]
    a_y = a.sum(dim=3)                                                 # [B, K, h] row marginals
    a_x = a.sum(dim=2)                                                 # [B, K, w] column marginals
    y_bar = (a_y * ys).sum(-1) / mass                                  # [B, K]
    x_bar = (a_x * xs).sum(-1) / mass
    var_y = (a_y * (ys - y_bar[..., None]) ** 2).sum(-1)
    var_x = (a_x * (xs - x_bar[..., None]) ** 2).sum(-1)
    return ((var_x + var_y) / mass).sum(dim=1).mean()
