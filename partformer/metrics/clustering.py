"""Clustering agreement between predicted parts and ground-truth labels (NMI / ARI).

Everything is computed from a contingency table ``counts[pred, gt]`` (int64, on the device of the
part maps) that is accumulated batch by batch without host synchronisation: memory does not grow
with the dataset, tables from several processes or shards are merged by adding them, and the
scores are exact. The scores equal scikit-learn's
``normalized_mutual_info_score`` (arithmetic-mean normalisation, the default) and
``adjusted_rand_score`` on the pooled labels, degenerate cases included.

Protocols (named variants, see docs/PROTOCOLS.md):

- ``KeypointClustering``: CUB / CelebA keypoint NMI/ARI. Variants ``with_bg`` (argmax over the
  K+1 channels), ``fg_only`` (argmax over the K foreground channels) and ``fg_bbox`` (same
  computation as ``fg_only``; the dataset must be built with ``resize='bbox_crop'``).
- ``PixelClustering``: PartImageNet / DeepFashion pixel NMI/ARI. Variants ``with_bg`` (every
  pixel, background is a GT label) and ``fg_only`` (pixels whose GT is background are dropped,
  argmax over the K foreground channels).
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

__all__ = [
    "ContingencyTable",
    "bincount_fixed",
    "nmi_from_table",
    "ari_from_table",
    "sample_at_keypoint_pixels",
    "sample_at_keypoints_map_nearest",
    "KEYPOINT_LOOKUPS",
    "KeypointClustering",
    "PixelClustering",
]

ImageSize = Union[None, Tuple[int, int], Sequence[Tuple[int, int]], torch.Tensor]


# --------------------------------------------------------------------------------------------
# Contingency table and the pure scores
# --------------------------------------------------------------------------------------------


def bincount_fixed(index: torch.Tensor, size: int, sync_free: Optional[bool] = None) -> torch.Tensor:
    """Counts ``[size]`` (int64) of the values of ``index`` (int64, all in ``[0, size)``).

    ``torch.bincount`` on the CPU. On an accelerator (``sync_free`` None and a non-CPU tensor, or
    ``sync_free=True``) ``index_add_`` into a fixed-size tensor instead: ``bincount`` there reads
    the largest value back to the host to size its output, a synchronisation per call. Integer
    additions, so both give exactly the same counts (tests/test_metrics_clustering.py)."""
    if sync_free is None:
        sync_free = index.device.type != "cpu"
    if not sync_free:
        return torch.bincount(index, minlength=size)
    out = torch.zeros(size, dtype=torch.int64, device=index.device)
    return out.index_add_(0, index, torch.ones_like(index, dtype=torch.int64))


class ContingencyTable:
    """Counts ``counts[p, g]`` of samples with predicted label ``p`` and ground-truth label ``g``.

    Args:
        num_pred: number of predicted labels (rows), labels ``0 .. num_pred-1``.
        num_gt: number of ground-truth labels (columns), labels ``0 .. num_gt-1``.

    ``counts`` is an int64 tensor ``[num_pred, num_gt]``. It starts on the CPU and moves to the
    device of the first labels it is given, where it is accumulated without reading anything back
    to the host (labels outside the ranges are then reported when ``counts`` is read; on the CPU at
    once). Empty rows / columns (labels that never occur) do not change NMI or ARI.
    ``sync_free``: force the accelerator path (``True``) or the CPU path (``False``) whatever the
    device; ``None`` (default) decides by device.
    """

    def __init__(self, num_pred: int, num_gt: int, sync_free: Optional[bool] = None):
        if num_pred < 1 or num_gt < 1:
            raise ValueError(f"ContingencyTable needs num_pred >= 1 and num_gt >= 1, got {num_pred}, {num_gt}")
        self.num_pred = int(num_pred)
        self.num_gt = int(num_gt)
        self.sync_free = sync_free
        self._counts = torch.zeros(self.num_pred, self.num_gt, dtype=torch.int64)
        self._out_of_range: Optional[torch.Tensor] = None   # device count, checked on read

    @property
    def counts(self) -> torch.Tensor:
        """The table ``[num_pred, num_gt]`` (int64, on the device it was accumulated on)."""
        if self._out_of_range is not None:
            bad = int(self._out_of_range)
            if bad:
                raise ValueError(f"{bad} labels outside the table were given to a "
                                 f"ContingencyTable({self.num_pred}, {self.num_gt}) on "
                                 f"{self._counts.device}: predicted labels must lie in "
                                 f"[0, {self.num_pred}) and ground-truth labels below "
                                 f"{self.num_gt} (negative = ignore)")
        return self._counts

    @counts.setter
    def counts(self, value: torch.Tensor) -> None:
        self._counts = value

    def reset(self) -> "ContingencyTable":
        self._counts.zero_()
        self._out_of_range = None
        return self

    @torch.no_grad()
    def update(self, pred: torch.Tensor, gt: torch.Tensor) -> "ContingencyTable":
        """Add samples. ``pred``, ``gt``: integer tensors of the same number of elements (flattened);
        entries with ``gt < 0`` are ignored. The table moves to ``pred``'s device and is updated
        there without a host synchronisation (no boolean indexing, :func:`bincount_fixed`)."""
        pred = torch.as_tensor(pred).reshape(-1)
        gt = torch.as_tensor(gt, device=pred.device).reshape(-1)
        if pred.numel() != gt.numel():
            raise ValueError(f"pred has {pred.numel()} elements but gt has {gt.numel()}")
        if pred.dtype.is_floating_point or gt.dtype.is_floating_point:
            raise TypeError(f"labels must be integer tensors, got pred {pred.dtype}, gt {gt.dtype}")
        pred, gt = pred.long(), gt.long()
        keep = gt >= 0
        in_range = (pred >= 0) & (pred < self.num_pred) & (gt < self.num_gt)
        sync_free = self.sync_free if self.sync_free is not None else pred.device.type != "cpu"
        if sync_free:
            bad = (keep & ~in_range).sum()
            self._out_of_range = bad if self._out_of_range is None else self._out_of_range + bad
        elif (keep & ~in_range).any():
            self._check_now(pred[keep], gt[keep])       # raises, naming the ranges
        size = self.num_pred * self.num_gt
        # ignored and out-of-range samples go to an extra last bin, which is dropped
        index = torch.where(keep & in_range, pred * self.num_gt + gt, torch.full_like(pred, size))
        flat = bincount_fixed(index, size + 1, sync_free)[:size]
        if self._counts.device != flat.device:
            self._counts = self._counts.to(flat.device)
        self._counts += flat.view(self.num_pred, self.num_gt)
        return self

    def _check_now(self, pred: torch.Tensor, gt: torch.Tensor) -> None:
        if pred.numel() == 0:
            return
        lo_p, hi_p = int(pred.min()), int(pred.max())
        hi_g = int(gt.max())
        if lo_p < 0 or hi_p >= self.num_pred:
            raise ValueError(f"predicted labels must lie in [0, {self.num_pred}), got range [{lo_p}, {hi_p}]")
        if hi_g >= self.num_gt:
            raise ValueError(
                f"ground-truth labels must lie in [0, {self.num_gt}) (negative = ignore), got max {hi_g}; "
                "is num_gt (num_keypoints / num_gt_classes) set correctly?"
            )

    def merge(self, other: "ContingencyTable") -> "ContingencyTable":
        """Add another table's counts (e.g. from another shard) into this one."""
        if tuple(other.counts.shape) != tuple(self.counts.shape):
            raise ValueError(f"cannot merge tables of shapes {tuple(self.counts.shape)} and {tuple(other.counts.shape)}")
        self.counts = self.counts + other.counts.to(self.counts.device)
        return self

    def all_reduce(self) -> "ContingencyTable":
        """Sum the table over all processes when torch.distributed is initialised; no-op otherwise."""
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self
        t = self.counts.clone()
        if dist.get_backend() == "nccl":  # NCCL reduces CUDA tensors only
            t = t.cuda(torch.cuda.current_device())
        else:
            t = t.cpu()
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        self.counts = t.cpu()
        return self

    @property
    def total(self) -> int:
        """Number of counted samples."""
        return int(self.counts.sum())

    def nmi(self) -> float:
        """Normalised mutual information in [0, 1] (arithmetic-mean normalisation)."""
        return nmi_from_table(self.counts)

    def ari(self) -> float:
        """Adjusted Rand index in [-0.5, 1]."""
        return ari_from_table(self.counts)

    def __repr__(self) -> str:
        return f"ContingencyTable(num_pred={self.num_pred}, num_gt={self.num_gt}, total={self.total})"


def _as_count_array(table) -> np.ndarray:
    if isinstance(table, ContingencyTable):
        table = table.counts
    if torch.is_tensor(table):
        table = table.detach().cpu().numpy()
    a = np.asarray(table)
    if a.ndim != 2:
        raise ValueError(f"a contingency table must be 2-D, got shape {a.shape}")
    if a.size and a.min() < 0:
        raise ValueError("a contingency table cannot hold negative counts")
    if a.dtype.kind == "f":
        if not np.all(a == np.round(a)):
            raise ValueError("a contingency table must hold integer counts")
        a = a.astype(np.int64)
    return a.astype(np.int64, copy=False)


def nmi_from_table(table) -> float:
    """NMI of a contingency table (rows = one labelling, columns = the other), in [0, 1].

    Equals ``sklearn.metrics.normalized_mutual_info_score(gt, pred)`` with the default arithmetic
    normalisation ``MI / ((H(pred) + H(gt)) / 2)`` on the labels the table counts, including
    sklearn's conventions: both labellings a single cluster (or no samples) -> 1.0; exactly one of
    them a single cluster -> 0.0. Natural logarithms, float64.
    """
    a = _as_count_array(table)
    rows = a.sum(axis=1)
    cols = a.sum(axis=0)
    a = a[rows > 0][:, cols > 0]  # labels that never occur do not exist for sklearn
    rows = rows[rows > 0].astype(np.float64)
    cols = cols[cols > 0].astype(np.float64)
    n_rows, n_cols = a.shape
    if (n_rows == 1 and n_cols == 1) or (n_rows == 0 and n_cols == 0):
        return 1.0  # no split on either side: a perfect match by convention
    if n_rows <= 1 or n_cols <= 1:
        return 0.0  # one side has zero entropy, so MI = 0
    n = float(rows.sum())
    log_n = math.log(n)
    i, j = np.nonzero(a)
    nij = a[i, j].astype(np.float64)
    p = nij / n
    # MI = sum_ij p_ij log(n * n_ij / (r_i c_j)); logs of counts, never of their products (overflow)
    terms = p * (np.log(nij) - log_n) + p * (2.0 * log_n - np.log(rows[i]) - np.log(cols[j]))
    terms = np.where(np.abs(terms) < np.finfo(np.float64).eps, 0.0, terms)  # as sklearn
    mi = max(float(terms.sum()), 0.0)
    if mi == 0.0:
        return 0.0
    h_rows = -float(np.sum((rows / n) * (np.log(rows) - log_n)))
    h_cols = -float(np.sum((cols / n) * (np.log(cols) - log_n)))
    return float(mi / ((h_rows + h_cols) / 2.0))


def ari_from_table(table) -> float:
    """Adjusted Rand index of a contingency table; equals ``sklearn.metrics.adjusted_rand_score``.

    Pair counts are computed with Python integers, so the result is exact (up to the final
    division) at any dataset size. Both labellings identical up to renaming, or no samples -> 1.0.
    """
    a = _as_count_array(table)
    nz = [int(v) for v in a[a > 0].tolist()]
    rows = [int(v) for v in a.sum(axis=1).tolist() if v]
    cols = [int(v) for v in a.sum(axis=0).tolist() if v]
    n = sum(nz)
    sum_sq = sum(v * v for v in nz)
    # ordered-pair confusion (sklearn's pair_confusion_matrix): both same / split one way / other way
    same_both = sum_sq - n
    same_cols_only = sum(c * c for c in cols) - sum_sq
    same_rows_only = sum(r * r for r in rows) - sum_sq
    diff_both = n * n - same_cols_only - same_rows_only - sum_sq
    tp, fp, fn, tn = same_both, same_cols_only, same_rows_only, diff_both
    if fn == 0 and fp == 0:
        return 1.0
    return 2.0 * (tp * tn - fn * fp) / ((tp + fn) * (fn + tn) + (tp + fp) * (fp + tn))


# --------------------------------------------------------------------------------------------
# Sampling part maps at keypoints
# --------------------------------------------------------------------------------------------


def _image_sizes(image_size: ImageSize, batch: int, default: Tuple[int, int], device) -> torch.Tensor:
    """Per-sample (H, W) as a float64 tensor [B, 2]. Accepts None (-> ``default``), one (H, W), a
    sequence of B pairs, or a tensor [2] / [B, 2]."""
    if image_size is None:
        sizes = torch.tensor([default], dtype=torch.float64).expand(batch, 2)
    elif torch.is_tensor(image_size):
        sizes = image_size.detach().to(torch.float64).cpu()
        if sizes.shape == (2,):
            sizes = sizes.unsqueeze(0).expand(batch, 2)
    else:
        seq = list(image_size)
        if len(seq) == 2 and all(np.isscalar(v) or (torch.is_tensor(v) and v.ndim == 0) for v in seq):
            sizes = torch.tensor([[float(seq[0]), float(seq[1])]], dtype=torch.float64).expand(batch, 2)
        else:
            sizes = torch.tensor([[float(h), float(w)] for h, w in seq], dtype=torch.float64)
    if sizes.shape != (batch, 2):
        raise ValueError(f"image_size must be (H, W) or one (H, W) per sample ({batch}), got shape {tuple(sizes.shape)}")
    if (sizes < 1).any():
        raise ValueError(f"image sizes must be positive, got {sizes.tolist()}")
    return sizes.to(device)


def _keypoint_image_sizes(part_maps: torch.Tensor, keypoints: torch.Tensor,
                          image_size: ImageSize) -> torch.Tensor:
    """Check ``part_maps [B, C, h, w]`` and ``keypoints [B, P, 2]``; per-sample (H, W) [B, 2]."""
    if part_maps.ndim != 4 or keypoints.ndim != 3 or keypoints.shape[-1] != 2:
        raise ValueError(f"expected part_maps [B,C,h,w] and keypoints [B,P,2], got {tuple(part_maps.shape)}, {tuple(keypoints.shape)}")
    b, _, h, w = part_maps.shape
    if keypoints.shape[0] != b:
        raise ValueError(f"batch sizes differ: part_maps {b}, keypoints {keypoints.shape[0]}")
    return _image_sizes(image_size, b, (h, w), part_maps.device)


@torch.no_grad()
def sample_at_keypoint_pixels(part_maps: torch.Tensor, keypoints: torch.Tensor, image_size: ImageSize = None) -> torch.Tensor:
    """Values of the part maps, bilinearly upsampled to the image, at the pixel containing each keypoint.

    Args:
        part_maps: ``[B, C, h, w]`` maps at any resolution.
        keypoints: ``[B, P, 2]`` (x, y) in image pixels of an image of size ``image_size``.
        image_size: (H, W) of the image, or one (H, W) per sample; default (h, w).

    Returns:
        ``[B, C, P]`` float32: exactly what
        ``F.interpolate(part_maps, (H, W), mode="bilinear", align_corners=False)[b, :, row, col]``
        gives with ``row = clamp(floor(y), 0, H-1)``, ``col = clamp(floor(x), 0, W-1)``
        (up to float rounding), computed with ``grid_sample`` at those pixel centres so the maps
        are never upsampled. ``padding_mode="border"`` reproduces interpolate's edge clamping.
    """
    sizes = _keypoint_image_sizes(part_maps, keypoints, image_size)  # [B, 2] (H, W)
    height, width = sizes[:, 0:1], sizes[:, 1:2]  # [B, 1]
    kp = keypoints.to(part_maps.device, torch.float64)
    col = torch.minimum(torch.floor(kp[..., 0]).clamp_min(0), width - 1)
    row = torch.minimum(torch.floor(kp[..., 1]).clamp_min(0), height - 1)
    # pixel centre (col + 0.5, row + 0.5) in grid_sample's normalised coordinates (align_corners=False)
    gx = (2.0 * col + 1.0) / width - 1.0
    gy = (2.0 * row + 1.0) / height - 1.0
    grid = torch.stack([gx, gy], dim=-1).unsqueeze(2).float()  # [B, P, 1, 2]
    out = F.grid_sample(part_maps.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out[..., 0]  # [B, C, P]


@torch.no_grad()
def sample_at_keypoints_map_nearest(part_maps: torch.Tensor, keypoints: torch.Tensor,
                                    image_size: ImageSize = None) -> torch.Tensor:
    """Values of the part maps, at their own resolution, at the map cell nearest each keypoint:
    the PartFormer authors' lookup (Jiahao-UTS/UnsupervisedPart, tools/validate_function.py
    ``validate_CUB`` and CUB_NMI.py: ``F.grid_sample(maps, (x / W, y / H) * 2 - 1,
    mode="nearest", align_corners=False)`` on the 128 x 128 maps, no upsampling).

    That is cell ``nearbyint(x * w / W - 0.5)`` (ties to even), with zeros outside the map, exactly
    as ``grid_sample`` computes it. Shapes as :func:`sample_at_keypoint_pixels`.
    """
    sizes = _keypoint_image_sizes(part_maps, keypoints, image_size)  # [B, 2] (H, W)
    kp = keypoints.to(part_maps.device, torch.float32)
    # their arithmetic, in float32: divide by the image size, then * 2 - 1
    gx = kp[..., 0] / sizes[:, 1:2].float() * 2 - 1
    gy = kp[..., 1] / sizes[:, 0:1].float() * 2 - 1
    grid = torch.stack([gx, gy], dim=-1).unsqueeze(2)  # [B, P, 1, 2]
    out = F.grid_sample(part_maps.float(), grid, mode="nearest", align_corners=False)
    return out[..., 0]  # [B, C, P]


# keypoint lookups of the keypoint NMI / ARI protocols (eval.keypoint_lookup)
KEYPOINT_LOOKUPS = {
    "pixel": sample_at_keypoint_pixels,             # PDiscoNet / PDiscoFormer: upsample, then pixel
    "map_nearest": sample_at_keypoints_map_nearest,  # the PartFormer authors' validate_CUB
}


def _check_part_maps(part_maps: torch.Tensor, num_parts: int) -> None:
    if part_maps.ndim != 4 or part_maps.shape[1] != num_parts + 1:
        raise ValueError(
            f"part_maps must be [B, K+1, h, w] with K = num_parts = {num_parts} (background last), "
            f"got shape {tuple(part_maps.shape)}"
        )


def channel_argmax(x: torch.Tensor) -> torch.Tensor:
    """``torch.argmax(x, dim=1)`` of ``[B, C, ...]`` (the first maximum; a NaN counts as the
    maximum, the first NaN wins), as a running comparison over the C channels: the part maps have
    few channels and PyTorch's CPU argmax over a non-innermost dimension is about 3x slower
    (README "Performance"). Equal to ``torch.argmax`` (tests/test_metrics_clustering.py)."""
    best = x[:, 0]
    index = torch.zeros(best.shape, dtype=torch.int64, device=x.device)
    best_nan = torch.isnan(best)
    for c in range(1, x.shape[1]):
        v = x[:, c]
        v_nan = torch.isnan(v)
        better = ((v > best) & ~best_nan) | (v_nan & ~best_nan)
        best = torch.where(better, v, best)
        best_nan = best_nan | v_nan
        index = torch.where(better, c, index)
    return index


def _upsampled_argmax(maps: torch.Tensor, size) -> torch.Tensor:
    """Argmax over channels of maps ``[B, C, h, w]`` (or one image's ``[C, h, w]``) upsampled
    bilinearly (align_corners=False) to ``size`` = (H, W); returns int64 ``[B, H, W]`` (``[H, W]``)."""
    if maps.dim() == 3:
        return _upsampled_argmax(maps[None], size)[0]
    up = F.interpolate(maps.float(), size=tuple(size), mode="bilinear", align_corners=False)
    return channel_argmax(up)


def upsampled_labels(part_maps: torch.Tensor, gt_labels, channels: slice = slice(None)):
    """Pairs ``(pred, gt)`` of per-pixel labels for a batch: the argmax over ``channels`` of the
    maps ``[B, C, h, w]`` upsampled bilinearly to the GT size, next to the GT (int64, on the maps'
    device). ``gt_labels``: a tensor ``[B, H, W]`` (one pair for the whole batch, upsampled in one
    call) or a list of B ``[H_b, W_b]`` masks of different sizes (one pair per image)."""
    if len(gt_labels) != part_maps.shape[0]:
        raise ValueError(f"batch sizes differ: part_maps {part_maps.shape[0]}, gt_labels {len(gt_labels)}")
    if torch.is_tensor(gt_labels) and gt_labels.dim() == 3:
        gt = gt_labels.to(part_maps.device, non_blocking=True).long()
        return [(_upsampled_argmax(part_maps[:, channels], gt.shape[-2:]), gt)]
    pairs = []
    for b in range(part_maps.shape[0]):
        gt = torch.as_tensor(gt_labels[b]).to(part_maps.device).long()
        if gt.ndim != 2:
            raise ValueError(f"each GT mask must be [H, W], got shape {tuple(gt.shape)}")
        pairs.append((_upsampled_argmax(part_maps[b, channels], gt.shape), gt))
    return pairs


class _TableMetric:
    """Shared shell of the accumulating metrics: all state is the count table ``self.table``."""

    table: ContingencyTable

    def merge(self, other: "_TableMetric"):
        """Add the counts of another instance (another shard of the same evaluation)."""
        self.table.merge(other.table)
        return self

    def all_reduce(self):
        """Sum the counts over all processes (no-op without torch.distributed)."""
        self.table.all_reduce()
        return self

    def reset(self):
        self.table.reset()
        return self


# --------------------------------------------------------------------------------------------
# Keypoint NMI / ARI
# --------------------------------------------------------------------------------------------


class KeypointClustering(_TableMetric):
    """Keypoint NMI / ARI (CUB, CelebA): each visible keypoint is a sample, labelled by its index.

    Args:
        num_parts: K, number of foreground parts (maps have K+1 channels, background last).
        num_keypoints: P, number of keypoint types (15 on CUB, 5 on CelebA).
        variant: ``"with_bg"`` (argmax over all K+1 channels; PDiscoNet, PDiscoFormer, PartFormer,
            MPAE "NMI"), ``"fg_only"`` (argmax over the K foreground channels; PartFormer/MPAE
            "FG-NMI"), or ``"fg_bbox"`` (Choudhury et al. 2021 "FG-NMI": computed like ``fg_only``,
            but only meaningful when the dataset was built with ``resize="bbox_crop"``).

    The predicted label of a keypoint is the argmax over channels of the maps read at the keypoint
    by ``lookup`` (:data:`KEYPOINT_LOOKUPS`): ``"pixel"`` (default; PDiscoNet, PDiscoFormer): the
    maps upsampled bilinearly (align_corners=False) to the image, at the pixel containing the
    keypoint; ``"map_nearest"``: the PartFormer authors' own code, the nearest cell of the maps at
    their own resolution (:func:`sample_at_keypoints_map_nearest`).
    """

    VARIANTS = ("with_bg", "fg_only", "fg_bbox")

    def __init__(self, num_parts: int, num_keypoints: int, variant: str = "with_bg",
                 lookup: str = "pixel"):
        if variant not in self.VARIANTS:
            raise ValueError(f"unknown keypoint-clustering variant {variant!r}; choose from {self.VARIANTS}")
        if lookup not in KEYPOINT_LOOKUPS:
            raise ValueError(f"unknown keypoint lookup {lookup!r}; choose from {sorted(KEYPOINT_LOOKUPS)}")
        self.lookup = lookup
        self.num_parts = int(num_parts)
        self.num_keypoints = int(num_keypoints)
        self.variant = variant
        self.foreground_only = variant != "with_bg"
        num_pred = self.num_parts if self.foreground_only else self.num_parts + 1
        self.table = ContingencyTable(num_pred, self.num_keypoints)

    @torch.no_grad()
    def update(self, part_maps: torch.Tensor, keypoints: torch.Tensor, visible: torch.Tensor,
               image_size: ImageSize = None) -> "KeypointClustering":
        """Add a batch.

        Args:
            part_maps: ``[B, K+1, h, w]`` softmax maps, background last.
            keypoints: ``[B, P, 2]`` (x, y) in pixels of the (resized) input image.
            visible: ``[B, P]`` bool; only visible keypoints count.
            image_size: (H, W) of the input image, or one (H, W) per sample (images of different
                sizes in one batch); default: the maps' own size.
        """
        _check_part_maps(part_maps, self.num_parts)
        if keypoints.shape[1] != self.num_keypoints:
            raise ValueError(f"expected {self.num_keypoints} keypoints per image, got {keypoints.shape[1]}")
        values = KEYPOINT_LOOKUPS[self.lookup](part_maps, keypoints, image_size)  # [B, K+1, P]
        if self.foreground_only:
            values = values[:, : self.num_parts]
        pred = values.argmax(dim=1)  # [B, P]
        vis = torch.as_tensor(visible, device=pred.device).bool()
        gt = torch.arange(self.num_keypoints, device=pred.device).expand_as(pred)
        self.table.update(pred, torch.where(vis, gt, -1))   # invisible: ignored
        return self

    def compute(self) -> Dict[str, float]:
        """``{"nmi": NMI x 100, "ari": ARI x 100, "num_keypoints": number of counted keypoints}``."""
        return {"nmi": 100.0 * self.table.nmi(), "ari": 100.0 * self.table.ari(), "num_keypoints": self.table.total}


# --------------------------------------------------------------------------------------------
# Pixel NMI / ARI
# --------------------------------------------------------------------------------------------


class PixelClustering(_TableMetric):
    """Pixel NMI / ARI against a semantic part mask (PartImageNet, DeepFashion).

    Args:
        num_parts: K, number of foreground parts (maps have K+1 channels, background last).
        num_gt_classes: C, number of foreground GT part classes; GT labels are ``0`` (background),
            ``1 .. C`` (parts) and ``-1`` (ignore).
        variant: ``"with_bg"``: every non-ignored pixel counts, GT background is a label and the
            prediction is the argmax over all K+1 channels (PartImageNet, PDiscoFormer).
            ``"fg_only"``: pixels whose GT is background are dropped and the prediction is the
            argmax over the K foreground channels (DeepFashion FG-NMI).
    """

    VARIANTS = ("with_bg", "fg_only")

    def __init__(self, num_parts: int, num_gt_classes: int, variant: str = "with_bg"):
        if variant not in self.VARIANTS:
            raise ValueError(f"unknown pixel-clustering variant {variant!r}; choose from {self.VARIANTS}")
        self.num_parts = int(num_parts)
        self.num_gt_classes = int(num_gt_classes)
        self.variant = variant
        self.foreground_only = variant == "fg_only"
        num_pred = self.num_parts if self.foreground_only else self.num_parts + 1
        self.table = ContingencyTable(num_pred, self.num_gt_classes + 1)

    @torch.no_grad()
    def update(self, part_maps: torch.Tensor, gt_labels) -> "PixelClustering":
        """Add a batch.

        Args:
            part_maps: ``[B, K+1, h, w]`` softmax maps, background last.
            gt_labels: int64 ``[B, H, W]`` (0 = background, 1..C parts, -1 ignore), or a list of B
                ``[H_b, W_b]`` masks of different sizes. The maps are upsampled bilinearly
                (align_corners=False) to each mask's size, one image at a time.
        """
        _check_part_maps(part_maps, self.num_parts)
        channels = slice(0, self.num_parts) if self.foreground_only else slice(None)
        for pred, gt in upsampled_labels(part_maps, gt_labels, channels):  # slice, then upsample
            if self.foreground_only:
                gt = torch.where(gt == 0, torch.full_like(gt, -1), gt)
            self.table.update(pred, gt)
        return self

    def compute(self) -> Dict[str, float]:
        """``{"nmi": NMI x 100, "ari": ARI x 100, "num_pixels": number of counted pixels}``."""
        return {"nmi": 100.0 * self.table.nmi(), "ari": 100.0 * self.table.ari(), "num_pixels": self.table.total}
