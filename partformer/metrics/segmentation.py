"""Segmentation metrics: foreground IoU and Hungarian-matched part mIoU.

Both pool a confusion matrix over the whole evaluation set (not a mean of per-image scores), so
they are mergeable across processes and independent of batch size. Definitions: docs/PROTOCOLS.md.
"""
from __future__ import annotations

from typing import Dict

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment

from partformer.metrics.clustering import (ContingencyTable, _TableMetric, _check_part_maps,
                                          upsampled_labels)

__all__ = ["ConfusionMatrix", "ForegroundIoU", "HungarianPartIoU", "iou_matrix", "hungarian_miou"]


class ConfusionMatrix(ContingencyTable):
    """Pixel counts ``counts[p, g]``: predicted label ``p`` (rows) x ground-truth label ``g`` (columns).

    Same storage and methods as :class:`ContingencyTable` (``update``, ``merge``, ``all_reduce``),
    plus :meth:`iou`.
    """

    def iou(self) -> np.ndarray:
        """IoU of every (predicted, GT) label pair, float64 ``[num_pred, num_gt]``; see :func:`iou_matrix`."""
        return iou_matrix(self.counts)

    def __repr__(self) -> str:
        return f"ConfusionMatrix(num_pred={self.num_pred}, num_gt={self.num_gt}, total={self.total})"


def iou_matrix(confusion) -> np.ndarray:
    """``iou[p, g] = n_pg / (n_p + n_g - n_pg)`` from a confusion matrix; 0 where the union is empty."""
    m = confusion.detach().cpu().numpy() if torch.is_tensor(confusion) else np.asarray(confusion)
    m = m.astype(np.float64)
    union = m.sum(axis=1, keepdims=True) + m.sum(axis=0, keepdims=True) - m
    return np.divide(m, union, out=np.zeros_like(m), where=union > 0)


# --------------------------------------------------------------------------------------------
# Foreground / background IoU
# --------------------------------------------------------------------------------------------


class ForegroundIoU(_TableMetric):
    """Foreground / background IoU (PDiscoFormer's Flowers protocol), pooled over the dataset.

    Predicted foreground = pixels whose argmax over the K+1 bilinearly upsampled maps is not the
    background channel (the last one). Ground truth = the dataset's foreground mask
    (``fg_mask``: 1 = foreground, 0 = background; negative values are ignored).
    """

    def __init__(self):
        self.table = ConfusionMatrix(2, 2)  # [pred bg/fg, gt bg/fg]

    @torch.no_grad()
    def update(self, part_maps: torch.Tensor, fg_mask) -> "ForegroundIoU":
        """``part_maps``: ``[B, K+1, h, w]``; ``fg_mask``: ``[B, H, W]`` or a list of ``[H_b, W_b]``."""
        if part_maps.ndim != 4:
            raise ValueError(f"part_maps must be [B, K+1, h, w], got {tuple(part_maps.shape)}")
        bg_channel = part_maps.shape[1] - 1
        for pred, gt in upsampled_labels(part_maps, fg_mask):
            gt = torch.where(gt > 0, torch.ones_like(gt), gt)  # any positive value = foreground
            self.table.update((pred != bg_channel).long(), gt)
        return self

    def compute(self) -> Dict[str, float]:
        """``fg_iou``, ``bg_iou``, ``miou_fgbg`` (their mean), all x 100; NaN for an empty class
        union; ``num_pixels``."""
        m = self.table.counts.double()
        tn, fn, fp, tp = float(m[0, 0]), float(m[0, 1]), float(m[1, 0]), float(m[1, 1])
        fg = tp / (tp + fp + fn) if tp + fp + fn > 0 else float("nan")
        bg = tn / (tn + fp + fn) if tn + fp + fn > 0 else float("nan")
        return {"fg_iou": 100.0 * fg, "bg_iou": 100.0 * bg, "miou_fgbg": 50.0 * (fg + bg),
                "num_pixels": self.table.total}


# --------------------------------------------------------------------------------------------
# Hungarian-matched part mIoU
# --------------------------------------------------------------------------------------------


def hungarian_miou(confusion, background_matching: str = "free") -> Dict[str, object]:
    """Hungarian-matched part mIoU from a pooled ``[K+1, C+1]`` confusion matrix.

    Rows: predicted channels ``0..K-1`` (parts) and ``K`` (background). Columns: GT labels ``0``
    (background) and ``1..C`` (parts). Only GT labels with at least one pixel are evaluated.

    - ``background_matching="free"``: one-to-one matching of all K+1 channels to all evaluated GT
      labels (background included on both sides) maximising the summed IoU
      (``linear_sum_assignment`` on ``-IoU``).
    - ``"fixed"``: GT background is matched to the background channel; the K part channels are
      matched to the GT parts.

    An evaluated GT label left unmatched (fewer channels than labels) scores IoU 0.

    Returns a dict with ``miou`` (mean over evaluated GT labels, background included, x 100),
    ``miou_parts`` (mean over evaluated GT part labels 1..C only, x 100; NaN if none),
    ``per_class_iou`` (list over GT labels 0..C, x 100, NaN where not evaluated) and ``matching``
    (list over GT labels: matched channel, or -1).
    """
    if background_matching not in ("free", "fixed"):
        raise ValueError(f"background_matching must be 'free' or 'fixed', got {background_matching!r}")
    m = confusion.detach().cpu().numpy() if torch.is_tensor(confusion) else np.asarray(confusion)
    if m.ndim != 2 or m.shape[0] < 2 or m.shape[1] < 1:
        raise ValueError(f"confusion must be [K+1, C+1] with K >= 1, got shape {m.shape}")
    iou = iou_matrix(m)
    num_pred, num_gt = m.shape
    present = m.sum(axis=0) > 0
    matching = np.full(num_gt, -1, dtype=np.int64)
    per_class = np.full(num_gt, np.nan)
    per_class[present] = 0.0

    def assign(rows: np.ndarray, cols: np.ndarray) -> None:
        if len(rows) == 0 or len(cols) == 0:
            return
        r, c = linear_sum_assignment(-iou[np.ix_(rows, cols)])
        matching[cols[c]] = rows[r]
        per_class[cols[c]] = iou[rows[r], cols[c]]

    cols = np.flatnonzero(present)
    if background_matching == "fixed":
        if present[0]:
            matching[0] = num_pred - 1
            per_class[0] = iou[num_pred - 1, 0]
        assign(np.arange(num_pred - 1), cols[cols > 0])
    else:
        assign(np.arange(num_pred), cols)

    parts = present.copy()
    parts[0] = False
    return {
        "miou": 100.0 * float(per_class[present].mean()) if present.any() else float("nan"),
        "miou_parts": 100.0 * float(per_class[parts].mean()) if parts.any() else float("nan"),
        "per_class_iou": (100.0 * per_class).tolist(),
        "matching": matching.tolist(),
    }


class HungarianPartIoU(_TableMetric):
    """Part mIoU after Hungarian matching of predicted channels to GT part labels (ours; see
    docs/PROTOCOLS.md, "Hungarian part mIoU").

    Args:
        num_parts: K (maps have K+1 channels, background last).
        num_gt_classes: C; GT labels 0 = background, 1..C parts, -1 ignore.
        background_matching: ``"free"`` (default) or ``"fixed"``, see :func:`hungarian_miou`.

    The confusion matrix ``[K+1, C+1]`` is pooled over the dataset before matching, so a single
    matching is used for the whole dataset.
    """

    def __init__(self, num_parts: int, num_gt_classes: int, background_matching: str = "free"):
        if background_matching not in ("free", "fixed"):
            raise ValueError(f"background_matching must be 'free' or 'fixed', got {background_matching!r}")
        self.num_parts = int(num_parts)
        self.num_gt_classes = int(num_gt_classes)
        self.background_matching = background_matching
        self.table = ConfusionMatrix(self.num_parts + 1, self.num_gt_classes + 1)

    @torch.no_grad()
    def update(self, part_maps: torch.Tensor, gt_labels) -> "HungarianPartIoU":
        """``part_maps``: ``[B, K+1, h, w]``; ``gt_labels``: int64 ``[B, H, W]`` or a list of ``[H_b, W_b]``."""
        _check_part_maps(part_maps, self.num_parts)
        for pred, gt in upsampled_labels(part_maps, gt_labels):
            self.table.update(pred, gt)
        return self

    def compute(self) -> Dict[str, object]:
        """See :func:`hungarian_miou`; adds ``num_pixels``."""
        out = hungarian_miou(self.table.counts, self.background_matching)
        out["num_pixels"] = self.table.total
        return out
