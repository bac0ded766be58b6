"""Colour maps, overlays and grids for part masks (numpy uint8 RGB, ready for PNG or W&B)."""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

# distinct colours for up to 20 parts; background (last channel) is drawn black
_BASE = np.array([
    [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
    [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212],
    [0, 128, 128], [220, 190, 255], [170, 110, 40], [255, 250, 200], [128, 0, 0],
    [170, 255, 195], [128, 128, 0], [255, 215, 180], [0, 0, 128], [128, 128, 128]], np.uint8)


def part_palette(num_parts: int) -> np.ndarray:
    """``[K+1, 3]`` uint8 colours: K distinct part colours, then black for background."""
    reps = int(np.ceil(num_parts / len(_BASE)))
    cols = np.concatenate([_BASE] * max(reps, 1))[:num_parts]
    return np.concatenate([cols, np.zeros((1, 3), np.uint8)])


def colorize(labels: np.ndarray, num_parts: int) -> np.ndarray:
    """``[H, W]`` part ids (K = background) -> ``[H, W, 3]`` uint8."""
    return part_palette(num_parts)[np.clip(labels, 0, num_parts)]


def overlay(image: np.ndarray, labels: np.ndarray, num_parts: int, alpha: float = 0.55) -> np.ndarray:
    """Blend part colours over an ``[H, W, 3]`` uint8 image; background pixels stay untouched."""
    col = colorize(labels, num_parts).astype(np.float32)
    out = image.astype(np.float32).copy()
    fg = labels < num_parts
    out[fg] = (1 - alpha) * out[fg] + alpha * col[fg]
    return out.clip(0, 255).astype(np.uint8)


def mask_grid(images: torch.Tensor, part_maps: torch.Tensor,
              gt_masks: Optional[torch.Tensor] = None, max_items: int = 8) -> np.ndarray:
    """A grid with one column per image: image, predicted-part overlay, argmax mask (and GT part
    mask when given). ``images [B, 3, H, W]`` in [0, 1]; ``part_maps [B, K+1, h, w]``."""
    B = min(images.shape[0], max_items)
    K = part_maps.shape[1] - 1
    H, W = images.shape[-2:]
    maps = F.interpolate(part_maps[:B].float(), size=(H, W), mode="bilinear", align_corners=False)
    labels = maps.argmax(1).cpu().numpy()
    imgs = (images[:B].permute(0, 2, 3, 1).cpu().numpy() * 255).clip(0, 255).astype(np.uint8)
    cols = []
    for i in range(B):
        rows: Sequence[np.ndarray] = [imgs[i], overlay(imgs[i], labels[i], K), colorize(labels[i], K)]
        if gt_masks is not None:
            gt = gt_masks[i].cpu().numpy().astype(np.int64)
            ncls = int(gt.max()) if gt.size else 0
            pal = part_palette(max(ncls, 1))
            g = np.where(gt > 0, gt - 1, len(pal) - 1)
            rows = list(rows) + [pal[np.clip(g, 0, len(pal) - 1)]]
        cols.append(np.concatenate(rows, axis=0))
    sep = np.full((cols[0].shape[0], 2, 3), 255, np.uint8)
    out = []
    for i, c in enumerate(cols):
        out.append(c)
        if i + 1 < len(cols):
            out.append(sep)
    return np.concatenate(out, axis=1)


def save_png(path: str, rgb: np.ndarray) -> None:
    import cv2
    cv2.imwrite(path, cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR))
