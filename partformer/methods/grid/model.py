"""Grid baseline: split the ground-truth box into a fixed rows x cols grid of K parts.

It uses the GT box, so it is an *oracle-box* reference: anything a method discovers should beat a
partition that only knows where the object is.
"""
from __future__ import annotations

import math
from typing import Tuple

import torch


def grid_shape(num_parts: int) -> Tuple[int, int]:
    """rows x cols with rows * cols == K, as square as possible, cols >= rows (K=4: 2x2, K=8: 2x4)."""
    rows = int(math.isqrt(num_parts))
    while num_parts % rows:
        rows -= 1
    return rows, num_parts // rows


def grid_part_maps(bbox: torch.Tensor, size: Tuple[int, int], num_parts: int) -> torch.Tensor:
    """One-hot part maps ``[B, K+1, H, W]`` from boxes ``[B, 4]`` (x, y, w, h in pixels of an
    ``H x W`` image): cell (r, c) of the box grid is part ``r * cols + c``; outside the box is
    background (last channel). A pixel belongs to the cell containing its centre."""
    H, W = size
    rows, cols = grid_shape(num_parts)
    B = bbox.shape[0]
    x0, y0, bw, bh = [bbox[:, i].view(B, 1, 1).float() for i in range(4)]
    ys = (torch.arange(H, dtype=torch.float32) + 0.5).view(1, H, 1)
    xs = (torch.arange(W, dtype=torch.float32) + 0.5).view(1, 1, W)
    u = (xs - x0) / bw.clamp(min=1e-6)
    v = (ys - y0) / bh.clamp(min=1e-6)
    inside = (u >= 0) & (u < 1) & (v >= 0) & (v < 1)
    col = (u * cols).floor().clamp(0, cols - 1).long()
    row = (v * rows).floor().clamp(0, rows - 1).long()
    label = torch.where(inside, row * cols + col, torch.full_like(col, num_parts))
    return torch.nn.functional.one_hot(label, num_parts + 1).permute(0, 3, 1, 2).float()


class GridModel(torch.nn.Module):
    """No parameters: the maps come from the batch's GT boxes (``predict(images, bbox)``)."""

    def __init__(self, num_parts: int):
        super().__init__()
        self.num_parts = int(num_parts)

    def predict(self, images: torch.Tensor, bbox: torch.Tensor) -> torch.Tensor:
        return grid_part_maps(bbox, tuple(images.shape[-2:]), self.num_parts).to(images.device)
