"""Deterministic resize modes shared by every dataset: pure functions on numpy arrays.

Inputs: ``image`` uint8 ``[H, W, 3]`` RGB; ``keypoints`` float ``[P, 2]`` as (x, y); ``visible``
bool ``[P]``; ``bbox`` (x, y, w, h); ``masks`` 2-D ``[H, W]`` arrays (any integer dtype). Pixel
coordinates follow docs/ARCHITECTURE.md: x = column, pixel (i, j) covers x in [j, j+1),
y in [i, i+1), and resizing W x H -> W' x H' maps x -> x * W'/W, y -> y * H'/H.

Resize modes (``size`` = S):

- ``whole``: the whole image to S x S (PartFormer).
- ``shorter``: shorter side to S, aspect kept, longer side ``int(S * long / short)`` as
  torchvision's ``Resize(S)`` does (PDiscoNet).
- ``shorter_center_crop``: ``shorter`` then a centred S x S crop with torchvision's
  ``CenterCrop`` offsets ``round((H' - S) / 2)`` (PDiscoFormer).
- ``bbox_crop``: crop the pixels covered by the GT box (columns ``floor(x) .. ceil(x + w) - 1``,
  clipped to the image), shorter side to S, then trim each side to a multiple of 16 by removing
  ``(n % 16) // 2`` pixels first and the rest at the end (Choudhury et al. 2021 FG-NMI).
- ``longest_pad``: longer side to S, the shorter one ``floor(S * short / long + 0.5)``, then padded
  at the bottom / right to S x S (image 0, masks with their ``mask_fills``; the DeepFashion
  protocol).

Every mode is "crop window in the input -> resize -> crop window in the resized image" (a window
that reaches past the resized image pads it). :data:`FIXED_SIZE_MODES` give every image the
output size S x S, so that a batch can be stacked; the others give one image at a time.
Images use bilinear interpolation (``cv2.INTER_LINEAR``); masks use nearest neighbour sampled at
pixel centres (like ``cv2.INTER_NEAREST_EXACT`` / PIL ``NEAREST``, consistent with the coordinate
map above). In the crop modes, a keypoint whose transformed position lies outside the output
image ``[0, W') x [0, H')`` becomes invisible and the box is clipped to the output image; the
non-crop modes keep the dataset's visibility flags and box as given (coordinates are only scaled).
Invisible keypoints always come out as (0, 0).
"""
from __future__ import annotations

import math
from typing import NamedTuple, Optional, Sequence, Tuple

import cv2
import numpy as np
import torch

__all__ = ["RESIZE_MODES", "FIXED_SIZE_MODES", "fixed_size", "Resized", "ResizePlan",
           "check_resize_mode", "plan_resize", "apply_resize", "resize_image", "resize_mask",
           "to_tensor_image", "images_to_float"]

RESIZE_MODES = ("whole", "shorter", "shorter_center_crop", "bbox_crop", "longest_pad")
# modes whose output is S x S for every input (a batch stacks); the others keep the aspect ratio
FIXED_SIZE_MODES = ("whole", "shorter_center_crop", "longest_pad")
_CROP_MODES = ("shorter_center_crop", "bbox_crop")
_BBOX_MULTIPLE = 16  # Choudhury et al. trim the box crop to a multiple of the network stride


class Resized(NamedTuple):
    """Output of :func:`apply_resize`; fields are ``None`` where the input was ``None``."""
    image: np.ndarray                   # uint8 [H', W', 3]
    keypoints: Optional[np.ndarray]     # float32 [P, 2], (0, 0) where invisible
    visible: Optional[np.ndarray]       # bool [P]
    bbox: Optional[np.ndarray]          # float32 [4] (x, y, w, h)
    masks: Tuple[Optional[np.ndarray], ...]  # same order and dtypes as the input masks


class ResizePlan(NamedTuple):
    """Integer geometry of a resize mode: crop ``crop0`` of the input, resize it to
    ``resized_hw``, crop ``crop1`` of the result. Crops are (top, left, height, width)."""
    crop0: Tuple[int, int, int, int]
    resized_hw: Tuple[int, int]
    crop1: Tuple[int, int, int, int]

    @property
    def output_hw(self) -> Tuple[int, int]:
        return self.crop1[2], self.crop1[3]


def fixed_size(mode: str) -> bool:
    """Whether resize ``mode`` gives every image the same size S x S (batches can be stacked)."""
    return mode in FIXED_SIZE_MODES


def check_resize_mode(mode: str, size: int, no_boxes: Optional[str] = None) -> None:
    """Raise ``ValueError`` for an unknown mode or a size the mode cannot produce. ``no_boxes``:
    the name of a dataset without object boxes, for which ``bbox_crop`` is refused too."""
    if mode not in RESIZE_MODES:
        raise ValueError(f"unknown resize mode {mode!r}; expected one of {list(RESIZE_MODES)} "
                         f"(see docs/ARCHITECTURE.md, 'Resize modes')")
    if mode == "bbox_crop" and no_boxes:
        raise ValueError(f"resize mode 'bbox_crop' is not available for {no_boxes}: it needs "
                         f"boxes, and {no_boxes} has none; use one of "
                         f"{[m for m in RESIZE_MODES if m != 'bbox_crop']}")
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size < 1:
        raise ValueError(f"image size must be a positive integer, got {size!r}")
    if mode == "bbox_crop" and size < _BBOX_MULTIPLE:
        raise ValueError(f"resize mode 'bbox_crop' trims to a multiple of {_BBOX_MULTIPLE}: "
                         f"image size must be >= {_BBOX_MULTIPLE}, got {size}")


def _shorter_side_hw(h: int, w: int, size: int) -> Tuple[int, int]:
    # torchvision Resize(int): shorter side = size, longer side truncated
    if h <= w:
        return size, max(1, int(size * w / h))
    return max(1, int(size * h / w)), size


def plan_resize(mode: str, size: int, height: int, width: int,
                bbox: Optional[Sequence[float]] = None) -> ResizePlan:
    """The crop / resize / crop geometry of ``mode`` for a ``height x width`` input."""
    check_resize_mode(mode, size)
    size = int(size)
    if mode == "whole":
        return ResizePlan((0, 0, height, width), (size, size), (0, 0, size, size))
    if mode == "shorter":
        rh, rw = _shorter_side_hw(height, width, size)
        return ResizePlan((0, 0, height, width), (rh, rw), (0, 0, rh, rw))
    if mode == "shorter_center_crop":
        rh, rw = _shorter_side_hw(height, width, size)
        # torchvision CenterCrop offsets
        top, left = int(round((rh - size) / 2.0)), int(round((rw - size) / 2.0))
        return ResizePlan((0, 0, height, width), (rh, rw), (top, left, size, size))
    if mode == "longest_pad":
        scale = size / max(height, width)
        rh = size if height >= width else max(1, int(math.floor(height * scale + 0.5)))
        rw = size if width >= height else max(1, int(math.floor(width * scale + 0.5)))
        return ResizePlan((0, 0, height, width), (rh, rw), (0, 0, size, size))  # pads
    # bbox_crop
    if bbox is None:
        raise ValueError("resize mode 'bbox_crop' needs the ground-truth box (bbox=(x, y, w, h))")
    bx, by, bw, bh = (float(v) for v in bbox)
    if not all(math.isfinite(v) for v in (bx, by, bw, bh)):
        raise ValueError(f"resize mode 'bbox_crop': box {tuple(bbox)} is not finite")
    left = min(max(int(math.floor(bx)), 0), width - 1)
    top = min(max(int(math.floor(by)), 0), height - 1)
    right = min(max(int(math.ceil(bx + bw)), left + 1), width)
    bottom = min(max(int(math.ceil(by + bh)), top + 1), height)
    ch, cw = bottom - top, right - left
    rh, rw = _shorter_side_hw(ch, cw, size)
    th, tw = rh - rh % _BBOX_MULTIPLE, rw - rw % _BBOX_MULTIPLE
    return ResizePlan((top, left, ch, cw), (rh, rw), ((rh % _BBOX_MULTIPLE) // 2,
                                                      (rw % _BBOX_MULTIPLE) // 2, th, tw))


def resize_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize (``cv2.INTER_LINEAR``) of ``[H, W, C]`` to ``[height, width, C]``."""
    if image.shape[:2] == (height, width):
        return image.copy()
    return cv2.resize(np.ascontiguousarray(image), (width, height), interpolation=cv2.INTER_LINEAR)


def _nearest_index(n_in: int, n_out: int, start: int = 0,
                   count: Optional[int] = None) -> np.ndarray:
    """Source index of output pixels ``start .. start + count - 1`` (nearest, pixel centres)."""
    count = n_out if count is None else count
    centres = (np.arange(start, start + count, dtype=np.float64) + 0.5) * (n_in / n_out)
    return np.clip(np.floor(centres).astype(np.int64), 0, n_in - 1)


def resize_mask(mask: np.ndarray, height: int, width: int) -> np.ndarray:
    """Nearest-neighbour resize of a 2-D mask (any dtype), sampled at output pixel centres."""
    h, w = mask.shape[:2]
    rows, cols = _nearest_index(h, height), _nearest_index(w, width)
    return mask[rows[:, None], cols[None, :]]


def _check_inputs(image, keypoints, visible, bbox, masks) -> None:
    if not (isinstance(image, np.ndarray) and image.ndim == 3 and image.shape[2] == 3
            and image.dtype == np.uint8):
        got = (f"{image.dtype} {list(image.shape)}" if isinstance(image, np.ndarray)
               else type(image).__name__)
        raise ValueError(f"image must be a uint8 [H, W, 3] RGB array, got {got}")
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise ValueError(f"image is empty: shape {list(image.shape)}")
    if (keypoints is None) != (visible is None):
        raise ValueError("keypoints and visible must be given together")
    if keypoints is not None:
        kp = np.asarray(keypoints)
        vis = np.asarray(visible)
        if kp.ndim != 2 or kp.shape[1] != 2 or vis.shape != (kp.shape[0],):
            raise ValueError(f"keypoints must be [P, 2] and visible [P], got {list(kp.shape)} and "
                             f"{list(vis.shape)}")
    if bbox is not None and np.asarray(bbox).shape != (4,):
        raise ValueError(f"bbox must be (x, y, w, h), got shape {list(np.asarray(bbox).shape)}")
    for k, m in enumerate(masks):
        if m is not None and (not isinstance(m, np.ndarray) or m.shape != image.shape[:2]):
            got = list(m.shape) if isinstance(m, np.ndarray) else type(m).__name__
            raise ValueError(f"mask {k} must be a 2-D array of the image size "
                             f"{list(image.shape[:2])}, got {got}")


def _padded(arr: np.ndarray, height: int, width: int, fill) -> np.ndarray:
    """``arr`` (the top-left part of the output) padded at the bottom / right with ``fill``."""
    if arr.shape[:2] == (height, width):
        return arr
    out = np.full((height, width) + arr.shape[2:], fill, dtype=arr.dtype)
    out[:arr.shape[0], :arr.shape[1]] = arr
    return out


def apply_resize(mode: str, size: int, image: np.ndarray,
                 keypoints: Optional[np.ndarray] = None, visible: Optional[np.ndarray] = None,
                 bbox: Optional[Sequence[float]] = None,
                 masks: Sequence[Optional[np.ndarray]] = (),
                 mask_fills: Optional[Sequence[int]] = None) -> Resized:
    """Apply resize ``mode`` with target ``size`` to an image and its annotations.

    Args:
        mode: one of :data:`RESIZE_MODES`.
        size: S, the target side (see the module docstring for each mode's output size).
        image: uint8 ``[H, W, 3]`` RGB.
        keypoints: float ``[P, 2]`` (x, y) in input pixels, with ``visible`` bool ``[P]``.
        bbox: (x, y, w, h) in input pixels; required by ``bbox_crop``.
        masks: 2-D ``[H, W]`` arrays (``None`` entries pass through), resized with nearest.
        mask_fills: per mask, the value of padded pixels (``longest_pad``); default 0.

    Returns:
        :class:`Resized` (image, keypoints, visible, bbox, masks) in output pixels.
    """
    masks = tuple(masks)
    fills = tuple(mask_fills) if mask_fills is not None else (0,) * len(masks)
    if len(fills) != len(masks):
        raise ValueError(f"{len(masks)} masks but {len(fills)} mask_fills")
    _check_inputs(image, keypoints, visible, bbox, masks)
    h, w = image.shape[:2]
    plan = plan_resize(mode, size, h, w, bbox)
    (t0, l0, h0, w0), (rh, rw), (t1, l1, h1, w1) = plan

    # the part of the output window inside the resized image (all of it unless the plan pads)
    vh, vw = min(h1, rh - t1), min(w1, rw - l1)
    out_image = resize_image(image[t0:t0 + h0, l0:l0 + w0], rh, rw)[t1:t1 + vh, l1:l1 + vw]
    out_image = np.ascontiguousarray(_padded(out_image, h1, w1, 0))

    out_masks = []
    rows, cols = _nearest_index(h0, rh, t1, vh) + t0, _nearest_index(w0, rw, l1, vw) + l0
    for m, fill in zip(masks, fills):
        out_masks.append(None if m is None else _padded(m[rows[:, None], cols[None, :]], h1, w1,
                                                        fill))

    sx, sy = rw / w0, rh / h0
    crop = mode in _CROP_MODES

    out_kp = out_vis = None
    if keypoints is not None:
        kp = np.asarray(keypoints, dtype=np.float64)
        vis = np.asarray(visible).astype(bool)
        x = (kp[:, 0] - l0) * sx - l1
        y = (kp[:, 1] - t0) * sy - t1
        if crop:
            vis = vis & (x >= 0) & (x < w1) & (y >= 0) & (y < h1)
        out_kp = np.where(vis[:, None], np.stack([x, y], axis=1), 0.0).astype(np.float32)
        out_vis = vis

    out_bbox = None
    if bbox is not None:
        bx, by, bw, bh = (float(v) for v in bbox)
        x0, x1 = (bx - l0) * sx - l1, (bx + bw - l0) * sx - l1
        y0, y1 = (by - t0) * sy - t1, (by + bh - t0) * sy - t1
        if crop:
            x0, x1 = min(max(x0, 0.0), w1), min(max(x1, 0.0), w1)
            y0, y1 = min(max(y0, 0.0), h1), min(max(y1, 0.0), h1)
        out_bbox = np.array([x0, y0, x1 - x0, y1 - y0], dtype=np.float32)

    return Resized(out_image, out_kp, out_vis, out_bbox, tuple(out_masks))


def to_tensor_image(image: np.ndarray) -> torch.Tensor:
    """uint8 ``[H, W, 3]`` -> float32 ``[3, H, W]`` in [0, 1] (no normalisation)."""
    if image.ndim != 3 or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 [H, W, C] image, got {image.dtype} {list(image.shape)}")
    return images_to_float(torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1))))


def images_to_float(images: torch.Tensor) -> torch.Tensor:
    """uint8 images (any shape, e.g. ``[B, 3, H, W]``) -> float32 in [0, 1], ``x / 255``; float
    images pass through unchanged. The one place where 8-bit pixels become the package's float
    images, on the CPU (datasets) or on the device (batches from the uint8 image cache), with the
    same float32 division, so both give identical values."""
    if images.dtype != torch.uint8:
        return images
    return images.to(torch.float32).div_(255.0)
