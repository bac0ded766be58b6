"""Keypoint / landmark regression from part centroids (CUB and CelebA protocols).

A linear map from the K foreground part centroids of an image to its ground-truth keypoints is fit
on a training split and evaluated on a test split; the error says how well the parts localise
semantic keypoints. Definitions, variants and citations: docs/PROTOCOLS.md.

Coordinate convention: (x, y) image pixels, x = column, 0-based, pixel (row i, col j) covers
[j, j+1) x [i, i+1). A centroid is the map-weighted mean of the positions of the map's cells; the
position given to cell (i, j) of an ``h x w`` map over an ``H x W`` image is a named convention
(:data:`CENTROID_CONVENTIONS`), ``((j + o) * W / w, (i + o) * H / h)`` with

- ``index`` (o = 0, the default): the integer cell index, as PDiscoFormer
  (ananthu-aniraj/pdiscoformer, ``utils/get_landmark_coordinates.py`` ``landmark_coordinates``,
  scaled by input size / map size in ``engine/eval_interpretability_nmi_ari_keypoint.py``
  ``create_centers``) and the PartFormer authors' CelebA evaluation (Jiahao-UTS/UnsupervisedPart,
  ``utils/unsupervised_NME.py`` ``segment_to_landmark`` with ``arange(128)`` grids);
- ``one_based`` (o = 1): Huang & Li's original CUB code (zxhuang1698/interpretability-by-parts,
  ``src/cub200/eval_interp.py`` ``calc_center``: ``arange(1, w + 1)`` times the stride);
- ``centre`` (o = 0.5): the geometric cell centre.

The box / inter-ocular normalisation divides by a per-image length, so o is not absorbed by the
regression's standardisation (except in ``scops_pixel``, which fits in pixels).
"""
from __future__ import annotations

from collections import defaultdict
from typing import Dict, List, Mapping, Optional, Tuple

import numpy as np
import torch
from sklearn.linear_model import LinearRegression
from sklearn.preprocessing import StandardScaler

from partformer.metrics.clustering import ImageSize, _image_sizes

__all__ = [
    "part_centroids",
    "CentroidCollector",
    "cub_keypoint_regression",
    "celeba_landmark_regression",
    "CUB_VARIANTS",
    "CELEBA_VARIANTS",
    "CENTROID_CONVENTIONS",
]

CUB_VARIANTS = ("huang", "pdisco")
CELEBA_VARIANTS = ("iod_normalised", "scops_pixel")
# position of map cell (i, j) = ((j + o) * W / w, (i + o) * H / h); see the module docstring
CENTROID_CONVENTIONS = {"index": 0.0, "one_based": 1.0, "centre": 0.5}


@torch.no_grad()
def part_centroids(part_maps: torch.Tensor, image_size: ImageSize = None,
                   convention: str = "index") -> Tuple[torch.Tensor, torch.Tensor]:
    """Soft centroids and presence of the K foreground parts.

    Args:
        part_maps: ``[B, K+1, h, w]`` softmax maps, background last.
        image_size: (H, W) of the image the maps cover, or one (H, W) per sample; default (h, w).
        convention: position of map cell (i, j) (:data:`CENTROID_CONVENTIONS`): ``index``
            ``(j, i)`` (PDiscoFormer; default), ``one_based`` ``(j + 1, i + 1)`` (Huang & Li),
            ``centre`` ``(j + 0.5, i + 0.5)``; then scaled by ``(W / w, H / h)``.

    Returns:
        centroids: float32 ``[B, K, 2]`` (x, y) in image pixels: the map-weighted mean of the
            cells' positions, scaled by ``(W / w, H / h)``. Computed on the maps at their own
            resolution (no upsampling), in float64. A map with zero mass gets the centroid of a
            uniform map.
        presence: float32 ``[B, K]``: the maximum of each foreground map (at its own resolution);
            the ``pdisco`` regression variant calls a part inactive when this is <= 0.5.
    """
    if part_maps.ndim != 4 or part_maps.shape[1] < 2:
        raise ValueError(f"part_maps must be [B, K+1, h, w] with K >= 1, got {tuple(part_maps.shape)}")
    if convention not in CENTROID_CONVENTIONS:
        raise ValueError(f"unknown centroid convention {convention!r}; choose from "
                         f"{sorted(CENTROID_CONVENTIONS)}")
    offset = CENTROID_CONVENTIONS[convention]
    b, _, h, w = part_maps.shape
    fg = part_maps[:, :-1].double()  # [B, K, h, w]
    sizes = _image_sizes(image_size, b, (h, w), part_maps.device)  # [B, 2] (H, W)
    xs = torch.arange(w, dtype=torch.float64, device=fg.device) + offset
    ys = torch.arange(h, dtype=torch.float64, device=fg.device) + offset
    mass = fg.sum(dim=(2, 3))  # [B, K]
    safe = mass.clamp_min(torch.finfo(torch.float64).tiny)
    cx = (fg.sum(dim=2) * xs).sum(dim=-1) / safe  # map cells
    cy = (fg.sum(dim=3) * ys).sum(dim=-1) / safe
    cx = torch.where(mass > 0, cx, torch.full_like(cx, (w - 1) / 2.0 + offset)) * (sizes[:, 1:2] / w)
    cy = torch.where(mass > 0, cy, torch.full_like(cy, (h - 1) / 2.0 + offset)) * (sizes[:, 0:1] / h)
    centroids = torch.stack([cx, cy], dim=-1).float()
    presence = fg.amax(dim=(2, 3)).float()
    return centroids, presence


class CentroidCollector:
    """Part centroids and presences next to per-image annotations, batch by batch: the rows the
    regression protocols fit and evaluate on.

    ``update(part_maps, image_size, index=..., keypoints=..., visible=..., bbox=...)`` (CUB) or
    ``update(part_maps, image_size, keypoints=...)`` (CelebA landmarks) adds one batch; tensors stay
    on their device until :meth:`arrays` (no host synchronisation per batch). :meth:`all_gather`
    merges the rows of all processes when torch.distributed is initialised. :meth:`arrays` returns
    the dict of numpy arrays that :func:`cub_keypoint_regression` /
    :func:`celeba_landmark_regression` take, in dataset order when ``index`` was collected (whatever
    way the processes split the dataset). Memory: O(N * (K + P)). ``convention``: the centroid
    convention of :func:`part_centroids`.
    """

    def __init__(self, convention: str = "index"):
        if convention not in CENTROID_CONVENTIONS:
            raise ValueError(f"unknown centroid convention {convention!r}; choose from "
                             f"{sorted(CENTROID_CONVENTIONS)}")
        self.convention = convention
        self._chunks: Dict[str, list] = defaultdict(list)

    def update(self, part_maps: torch.Tensor, image_size: ImageSize = None,
               **annotations) -> "CentroidCollector":
        """Add a batch: ``part_maps [B, K+1, h, w]``, the image size(s) they cover, and per-image
        annotations (tensors or arrays with B rows)."""
        centroids, presence = part_centroids(part_maps, image_size, self.convention)
        return self.add(centroids=centroids, presence=presence, **annotations)

    def add(self, **arrays) -> "CentroidCollector":
        """Store already computed per-image arrays (first dimension = images)."""
        for key, value in arrays.items():
            self._chunks[key].append(value.detach() if torch.is_tensor(value)
                                     else np.asarray(value))
        return self

    def arrays(self) -> Dict[str, np.ndarray]:
        out = {k: np.concatenate([v.cpu().numpy() if torch.is_tensor(v) else v for v in chunks])
               for k, chunks in self._chunks.items()}
        sizes = {k: len(v) for k, v in out.items()}
        if len(set(sizes.values())) > 1:
            raise ValueError(f"collected arrays have different numbers of images: {sizes}")
        if "index" in out:
            order = np.argsort(out["index"], kind="stable")
            out = {k: v[order] for k, v in out.items()}
        return out

    def all_gather(self) -> "CentroidCollector":
        import torch.distributed as dist

        if not (dist.is_available() and dist.is_initialized()):
            return self
        mine = self.arrays() if self._chunks else {}
        shards: List[Optional[dict]] = [None] * dist.get_world_size()
        dist.all_gather_object(shards, mine)
        self._chunks = defaultdict(list)
        for shard in shards:
            for key, value in (shard or {}).items():
                self._chunks[key].append(value)
        return self

    def reset(self) -> "CentroidCollector":
        self._chunks = defaultdict(list)
        return self


def _get(split: Mapping, key: str, name: str) -> np.ndarray:
    if key not in split:
        raise KeyError(f"{name} split has no {key!r}; it has {sorted(split)}")
    value = split[key]
    if torch.is_tensor(value):
        value = value.detach().cpu().numpy()
    return np.asarray(value)


def _fit_predict(x_train: np.ndarray, y_train: np.ndarray, x_test: np.ndarray,
                 mask_train: Optional[np.ndarray] = None, mask_test: Optional[np.ndarray] = None) -> np.ndarray:
    """StandardScaler on inputs and targets (fit on train), LinearRegression(fit_intercept=False),
    inverse transform. ``mask_*`` (same shape as ``x_*``, bool): standardised inputs where the mask
    is False are set to 0 (PDisco gating)."""
    scaler_x = StandardScaler().fit(x_train)
    scaler_y = StandardScaler().fit(y_train)
    xs_train = scaler_x.transform(x_train)
    xs_test = scaler_x.transform(x_test)
    if mask_train is not None:
        xs_train = np.where(mask_train, xs_train, 0.0)
        xs_test = np.where(mask_test, xs_test, 0.0)
    regressor = LinearRegression(fit_intercept=False).fit(xs_train, scaler_y.transform(y_train))
    return scaler_y.inverse_transform(regressor.predict(xs_test))


def _box_normalise(points: np.ndarray, bbox: np.ndarray) -> np.ndarray:
    """(x, y) -> ((x - bx) / bw, (y - by) / bh); ``points [N, M, 2]``, ``bbox [N, 4]`` (x, y, w, h)."""
    if (bbox[:, 2:] <= 0).any():
        bad = np.flatnonzero((bbox[:, 2:] <= 0).any(axis=1))[:5]
        raise ValueError(f"boxes must have positive width and height; images {bad.tolist()} do not")
    return (points - bbox[:, None, :2]) / bbox[:, None, 2:]


def cub_keypoint_regression(train: Mapping, test: Mapping, variant: str = "huang",
                            presence_threshold: float = 0.5) -> Dict[str, object]:
    """CUB keypoint regression error (Huang & Li 2020; PDiscoNet / PDiscoFormer).

    Args:
        train, test: dicts of arrays with ``centroids [N, K, 2]`` (x, y pixels), ``presence [N, K]``
            (map maxima; only used by ``pdisco``), ``keypoints [N, P, 2]`` (x, y pixels),
            ``visible [N, P]`` (bool) and ``bbox [N, 4]`` (x, y, w, h pixels), all in the same
            image coordinates per image.
        variant: ``"huang"`` or ``"pdisco"`` (parts with presence <= ``presence_threshold`` get
            their standardised centroid set to 0, in train and test).

    Centroids and keypoints are normalised by the GT box; for each keypoint p, a regression
    (StandardScaler on inputs and targets fit on the training images where p is visible,
    LinearRegression without intercept, inverse transform) maps the 2K centroid coordinates to p.

    Returns:
        ``error``: mean Euclidean distance (box-normalised units) over all visible test
        (image, keypoint) pairs, x 100; ``per_keypoint``: the same per keypoint (NaN when a
        keypoint is never visible in test); ``num_pairs``: number of visible test pairs.
    """
    if variant not in CUB_VARIANTS:
        raise ValueError(f"unknown CUB regression variant {variant!r}; choose from {CUB_VARIANTS}")
    data = {}
    for name, split in (("train", train), ("test", test)):
        c = _get(split, "centroids", name).astype(np.float64)
        kp = _get(split, "keypoints", name).astype(np.float64)
        vis = _get(split, "visible", name).astype(bool)
        box = _get(split, "bbox", name).astype(np.float64)
        n, k = c.shape[:2]
        if c.shape != (n, k, 2) or kp.shape[0] != n or kp.shape[2:] != (2,) or vis.shape != kp.shape[:2] or box.shape != (n, 4):
            raise ValueError(f"{name}: inconsistent shapes centroids {c.shape}, keypoints {kp.shape}, "
                             f"visible {vis.shape}, bbox {box.shape}")
        x = _box_normalise(c, box).reshape(n, 2 * k)  # (x_0, y_0, x_1, y_1, ...)
        active = None
        if variant == "pdisco":
            pres = _get(split, "presence", name).astype(np.float64)
            if pres.shape != (n, k):
                raise ValueError(f"{name}: presence must be [N, K] = {(n, k)}, got {pres.shape}")
            active = np.repeat(pres > presence_threshold, 2, axis=1)  # per coordinate, same order as x
        data[name] = (x, _box_normalise(kp, box), vis, active)
    x_tr, y_tr, vis_tr, act_tr = data["train"]
    x_te, y_te, vis_te, act_te = data["test"]
    if x_tr.shape[1] != x_te.shape[1] or y_tr.shape[1] != y_te.shape[1]:
        raise ValueError(f"train and test differ in K or P: {x_tr.shape}, {y_tr.shape} vs {x_te.shape}, {y_te.shape}")

    total, count, per_keypoint = 0.0, 0, []
    for p in range(y_tr.shape[1]):
        tr, te = vis_tr[:, p], vis_te[:, p]
        if not te.any():
            per_keypoint.append(float("nan"))
            continue
        if not tr.any():
            raise ValueError(f"keypoint {p} is visible in {int(te.sum())} test images but in no training image")
        pred = _fit_predict(x_tr[tr], y_tr[tr, p], x_te[te],
                            None if act_tr is None else act_tr[tr], None if act_te is None else act_te[te])
        dist = np.linalg.norm(pred - y_te[te, p], axis=1)
        total += float(dist.sum())
        count += int(dist.size)
        per_keypoint.append(100.0 * float(dist.mean()))
    error = 100.0 * total / count if count else float("nan")
    return {"error": error, "per_keypoint": per_keypoint, "num_pairs": count}


def _inter_ocular(landmarks: np.ndarray, name: str) -> np.ndarray:
    iod = np.linalg.norm(landmarks[:, 0] - landmarks[:, 1], axis=1)
    if (iod <= 0).any():
        bad = np.flatnonzero(iod <= 0)[:5]
        raise ValueError(f"{name}: zero inter-ocular distance (landmarks 0 and 1 coincide) in images {bad.tolist()}")
    return iod


def celeba_landmark_regression(train: Mapping, test: Mapping, variant: str = "iod_normalised") -> Dict[str, object]:
    """CelebA (MAFL) landmark regression error in % of the inter-ocular distance.

    Args:
        train, test: dicts with ``centroids [N, K, 2]`` and ``landmarks [N, L, 2]`` (x, y pixels of
            the same image; L = 5, landmarks 0 and 1 the eyes). Fit on ``train`` (MAFL-train),
            evaluate on ``test`` (MAFL-test).
        variant: ``"iod_normalised"``: each image's centroids and landmarks are divided by its
            inter-ocular distance, then StandardScaler on both, one joint
            LinearRegression(fit_intercept=False) from 2K to 2L numbers; error = mean L2 over
            landmarks x images (in IOD units). ``"scops_pixel"``: the same regression in pixel
            space; each test image's mean pixel error is divided by its inter-ocular distance.

    Returns:
        ``error`` (x 100), ``per_landmark`` (mean IOD-normalised error per landmark, x 100; their
        mean is ``error`` in both variants) and ``num_images``.
    """
    if variant not in CELEBA_VARIANTS:
        raise ValueError(f"unknown CelebA regression variant {variant!r}; choose from {CELEBA_VARIANTS}")
    prepared = {}
    for name, split in (("train", train), ("test", test)):
        c = _get(split, "centroids", name).astype(np.float64)
        lm = _get(split, "landmarks", name).astype(np.float64)
        n = c.shape[0]
        if c.ndim != 3 or c.shape[2] != 2 or lm.ndim != 3 or lm.shape[0] != n or lm.shape[2] != 2 or lm.shape[1] < 2:
            raise ValueError(f"{name}: expected centroids [N, K, 2] and landmarks [N, L, 2], got {c.shape}, {lm.shape}")
        iod = _inter_ocular(lm, name)
        if variant == "iod_normalised":
            c, lm = c / iod[:, None, None], lm / iod[:, None, None]
        prepared[name] = (c.reshape(n, -1), lm, iod)
    x_tr, lm_tr, _ = prepared["train"]
    x_te, lm_te, iod_te = prepared["test"]
    if x_tr.shape[1] != x_te.shape[1] or lm_tr.shape[1] != lm_te.shape[1]:
        raise ValueError("train and test differ in K or in the number of landmarks")
    pred = _fit_predict(x_tr, lm_tr.reshape(len(lm_tr), -1), x_te).reshape(lm_te.shape)
    dist = np.linalg.norm(pred - lm_te, axis=2)  # [N, L]; IOD units or pixels
    if variant == "scops_pixel":
        dist = dist / iod_te[:, None]  # mean_l(d_l) / iod == mean_l(d_l / iod)
    return {"error": 100.0 * float(dist.mean()), "per_landmark": (100.0 * dist.mean(axis=0)).tolist(),
            "num_images": int(dist.shape[0])}
