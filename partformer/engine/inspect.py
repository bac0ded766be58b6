"""Looking at what a model found, over a dataset split: the contact sheet and the per-part
consistency view ("what is part 3?") of ``tools/visualize.py --view contact|parts``.

A *predictor* is the evaluator's ``predict(batch) -> part maps [B, K+1, h, w]`` (e.g.
:func:`partformer.engine.evaluator.method_predictor`); images come from the dataset (already resized as
the config says), so the views show what evaluation sees.
"""
from __future__ import annotations

import heapq
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from partformer import viz
from partformer.data.collate import collate
from partformer.data.transforms import fixed_size
from partformer.engine.evaluator import iterate_predictions


def contact_sheet_for(predict, samples: Sequence[Dict[str, Any]], alpha: float = 0.55
                      ) -> np.ndarray:
    """:func:`partformer.viz.contact_sheet` of dataset ``samples`` (one row each; GT keypoints
    drawn on the input when the dataset has them)."""
    images, maps, kps = [], [], []
    for s in samples:  # one at a time: sizes may differ (aspect-keeping resize modes)
        b = collate([s])
        with torch.no_grad():
            maps.append(predict(b).float().cpu()[0])
        images.append(viz.to_uint8_images(b["image"])[0])
        if "keypoints" in s:
            kps.append((s["keypoints"].numpy(), s["keypoints_visible"].numpy()))
    return viz.contact_sheet(images, maps, alpha, keypoints=kps or None)


def part_confidence(maps: torch.Tensor, window: int = 3) -> Tuple[torch.Tensor, torch.Tensor]:
    """Per image and part, how surely and where a part appears: the peak of its soft map after a
    ``window x window`` mean (a part must be confident over a region, not one pixel; softmax maps
    saturate, so a single pixel would tie), and the peak's ``(row, col)``.
    ``maps [B, K+1, H, W]`` -> ``scores [B, K]``, ``peaks [B, K, 2]`` (int64)."""
    window = window | 1  # odd: the mean is centred on the peak
    # outside the image counts as 0: a window half off the border is not inflated
    fg = F.avg_pool2d(maps[:, :-1].float(), window, stride=1, padding=window // 2,
                      count_include_pad=True)
    B, K, H, W = fg.shape
    scores, flat = fg.reshape(B, K, -1).max(dim=-1)
    return scores, torch.stack([flat // W, flat % W], dim=-1)


def top_part_crops(predict, dataset, num_parts: int, top: int = 8, crop_fraction: float = 0.4,
                   batch_size: int = 32, num_workers: int = 0, max_images: Optional[int] = None,
                   resize: str = "whole", alpha: float = 0.45, progress: bool = False
                   ) -> Tuple[List[List[np.ndarray]], List[List[float]]]:
    """For each part, the ``top`` images of the split where it is most confident
    (:func:`part_confidence` with a window of half the crop side), as square crops (side
    ``crop_fraction`` x the image's shorter side) centred on that peak, with that part's mask
    overlaid. Returns ``(crops, scores)``, one list per part, best first (fewer than ``top`` when
    the split is smaller)."""
    if max_images is not None and max_images < len(dataset):
        dataset = torch.utils.data.Subset(dataset, range(max_images))
    if not fixed_size(resize):
        batch_size = 1
    heaps: List[list] = [[] for _ in range(num_parts)]
    for batch, maps in iterate_predictions(predict, dataset, batch_size, num_workers, progress,
                                           "parts"):
        if maps is None:
            continue
        maps = viz.maps_to_size(maps, tuple(batch["image"].shape[-2:]))
        side = _crop_side(*maps.shape[-2:], crop_fraction)
        scores, peaks = part_confidence(maps, window=max(3, side // 2))
        for b, index in enumerate(batch["index"].tolist()):
            for k in range(num_parts):
                item = (float(scores[b, k]), -index, tuple(peaks[b, k].tolist()))
                if len(heaps[k]) < top:
                    heapq.heappush(heaps[k], item)
                else:
                    heapq.heappushpop(heaps[k], item)
    base = dataset.dataset if isinstance(dataset, torch.utils.data.Subset) else dataset
    crops: List[List[np.ndarray]] = []
    values: List[List[float]] = []
    for k in range(num_parts):
        row, vals = [], []
        for score, neg_index, (r, c) in sorted(heaps[k], reverse=True):
            sample = base[-neg_index]
            b = collate([sample])
            with torch.no_grad():
                m = viz.maps_to_size(predict(b).float().cpu(), tuple(b["image"].shape[-2:]))[0]
            img = viz.to_uint8_images(b["image"])[0]
            labels = m.argmax(0).numpy()
            shown = viz.overlay(img, np.where(labels == k, k, num_parts), num_parts, alpha)
            row.append(_square_crop(shown, r, c, crop_fraction))
            vals.append(score)
        crops.append(row)
        values.append(vals)
    return crops, values


def _square_crop(image: np.ndarray, row: int, col: int, fraction: float) -> np.ndarray:
    """A square of side ``fraction`` x the shorter side centred on ``(row, col)``, shifted to stay
    inside the image."""
    H, W = image.shape[:2]
    side = _crop_side(H, W, fraction)
    top = min(max(row - side // 2, 0), H - side)
    left = min(max(col - side // 2, 0), W - side)
    return image[top:top + side, left:left + side].copy()


def _crop_side(height: int, width: int, fraction: float) -> int:
    return min(max(8, int(round(fraction * min(height, width)))), height, width)
