"""Colours, overlays, legends, keypoints, contact sheets and atomic PNG files for part masks.

Everything here is a pure function on numpy arrays (uint8 RGB ``[H, W, 3]``, ready for a PNG or
W&B). Part labels follow the part maps' channel order everywhere: ``k`` in ``0..K-1`` is part
``k`` (channel ``k`` of ``[K+1, H, W]`` maps) and ``K`` is the background (the last channel).

The palette (:data:`PALETTE`) is fixed, so a part keeps its colour across images, runs and tools:
50 colours chosen greedily to be as far apart as possible in CIELAB (each new colour maximises its
smallest distance to the colours before it, to the background grey and to white; sRGB grid of step
17, lightness 35..92). Any prefix is well spread: the smallest pairwise CIELAB distance is 86 among
the first 4 colours, 61 among 8, 42 among 16 and 26 among all 50 (tests/test_viz.py measures it).
The background is neutral grey. More than 50 parts reuse the colours cyclically.
"""
from __future__ import annotations

import os
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from partformer.fileio import atomic_open

PALETTE = np.array([
    [85, 0, 255], [0, 255, 0], [255, 0, 0], [255, 17, 170], [255, 204, 0],
    [0, 119, 238], [0, 119, 0], [0, 255, 204], [153, 85, 0], [255, 136, 153],
    [0, 204, 255], [204, 238, 136], [136, 68, 136], [204, 102, 255], [238, 187, 255],
    [187, 238, 0], [170, 0, 34], [238, 187, 136], [34, 153, 119], [136, 136, 0],
    [0, 221, 102], [34, 85, 136], [255, 136, 0], [34, 85, 255], [136, 68, 68],
    [85, 85, 34], [255, 0, 255], [187, 34, 102], [255, 119, 85], [170, 238, 204],
    [153, 0, 153], [238, 119, 204], [0, 136, 153], [255, 0, 102], [136, 170, 255],
    [153, 170, 119], [102, 68, 187], [119, 187, 51], [0, 238, 238], [170, 187, 221],
    [119, 17, 204], [238, 170, 68], [136, 255, 85], [238, 238, 85], [187, 119, 153],
    [238, 187, 187], [170, 136, 255], [119, 221, 136], [187, 119, 85], [51, 102, 85]],
    dtype=np.uint8)
BACKGROUND = np.array([128, 128, 128], dtype=np.uint8)   # neutral grey
MAX_DISTINCT_PARTS = len(PALETTE)

_FONT = 0  # cv2.FONT_HERSHEY_SIMPLEX


# ----------------------------------------------------------------------------------- colours
def part_palette(num_parts: int) -> np.ndarray:
    """``[K+1, 3]`` uint8: the colours of parts ``0..K-1`` (:data:`PALETTE`, cyclic beyond 50),
    then the background grey."""
    idx = np.arange(num_parts) % len(PALETTE)
    return np.concatenate([PALETTE[idx], BACKGROUND[None]])


def colorize(labels: np.ndarray, num_parts: int) -> np.ndarray:
    """``[H, W]`` part labels (``K`` = background) -> ``[H, W, 3]`` uint8 palette colours."""
    return part_palette(num_parts)[np.clip(labels, 0, num_parts)]


def part_boundaries(labels: np.ndarray, num_parts: int) -> np.ndarray:
    """bool ``[H, W]``: foreground pixels with a 4-neighbour of another label (the inner edge of
    each part; background pixels are never marked)."""
    lab = np.asarray(labels)
    edge = np.zeros(lab.shape, dtype=bool)
    dv = lab[1:] != lab[:-1]
    dh = lab[:, 1:] != lab[:, :-1]
    edge[1:] |= dv
    edge[:-1] |= dv
    edge[:, 1:] |= dh
    edge[:, :-1] |= dh
    return edge & (lab < num_parts)


def overlay(image: np.ndarray, labels: np.ndarray, num_parts: int, alpha: float = 0.55,
            boundaries: bool = True) -> np.ndarray:
    """Blend part colours over an ``[H, W, 3]`` uint8 image.

    Part pixels become ``(1 - alpha) * image + alpha * colour`` (``alpha`` in [0, 1]: 0 shows the
    image, 1 the palette colour); with ``boundaries`` each part's edge pixels (see
    :func:`part_boundaries`) are drawn in its full colour. Background pixels are left untouched.
    """
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha (overlay opacity) must be in [0, 1], got {alpha}")
    labels = np.asarray(labels)
    if labels.shape != image.shape[:2]:
        raise ValueError(f"labels {labels.shape} and image {image.shape[:2]} differ in size")
    col = colorize(labels, num_parts).astype(np.float32)
    out = image.astype(np.float32).copy()
    fg = labels < num_parts
    out[fg] = (1 - alpha) * out[fg] + alpha * col[fg]
    if boundaries:
        edge = part_boundaries(labels, num_parts)
        out[edge] = col[edge]
    return np.rint(out).clip(0, 255).astype(np.uint8)


def heatmap(image: np.ndarray, prob: np.ndarray, colour: Sequence[int]) -> np.ndarray:
    """One part's soft map on a dimmed grey copy of the image: ``grey * (1 - p) + colour * p``
    (``prob [H, W]`` in [0, 1]), so the part's colour marks where, and how surely, it is."""
    grey = image.astype(np.float32).mean(axis=2, keepdims=True) * 0.6 + 40
    p = np.clip(np.asarray(prob, dtype=np.float32), 0, 1)[..., None]
    out = grey * (1 - p) + np.asarray(colour, np.float32)[None, None] * p
    return np.rint(out).clip(0, 255).astype(np.uint8)


# ----------------------------------------------------------------------------------- text
def _text(img: np.ndarray, text: str, org: Tuple[int, int], scale: float = 0.4,
          colour=(0, 0, 0), thickness: int = 1) -> None:
    import cv2
    cv2.putText(img, text, org, _FONT, scale, tuple(int(c) for c in colour), thickness,
                cv2.LINE_AA)


def _text_width(text: str, scale: float = 0.4) -> int:
    import cv2
    return cv2.getTextSize(text, _FONT, scale, 1)[0][0]


def part_names(num_parts: int, names: Optional[Sequence[str]] = None) -> List[str]:
    """Display names of labels ``0..K``: ``part k`` (or ``names[k]``) and ``background``."""
    if names is not None and len(names) != num_parts:
        raise ValueError(f"{len(names)} part names for {num_parts} parts")
    return [str(n) for n in (names or [f"part {k}" for k in range(num_parts)])] + ["background"]


def legend(num_parts: int, names: Optional[Sequence[str]] = None, swatch: int = 12,
           columns: Optional[int] = None, width: Optional[int] = None) -> np.ndarray:
    """A white strip with one colour swatch and name per label (parts, then background),
    ``columns`` entries per row (default: as many as fit in ``width``, else one row)."""
    labels = part_names(num_parts, names)
    pal = part_palette(num_parts)
    cell = swatch + 8 + max(_text_width(t) for t in labels) + 12
    if columns is None:
        columns = max(1, (width or cell * len(labels)) // cell)
    rows = int(np.ceil(len(labels) / columns))
    h = rows * (swatch + 6) + 6
    img = np.full((h, max(width or 0, columns * cell), 3), 255, np.uint8)
    for i, (name, c) in enumerate(zip(labels, pal)):
        r, q = divmod(i, columns)
        x, y = q * cell + 6, r * (swatch + 6) + 6
        img[y:y + swatch, x:x + swatch] = c
        _text(img, name, (x + swatch + 5, y + swatch - 2))
    return img


def draw_keypoints(image: np.ndarray, keypoints: np.ndarray, visible: np.ndarray,
                   names: Optional[Sequence[str]] = None, radius: Optional[int] = None
                   ) -> np.ndarray:
    """GT keypoints with their identity: keypoint ``p`` (``(x, y)`` pixel coordinates, x =
    column) is a disc of colour ``PALETTE[p]`` with a black ring, labelled with its index (or
    ``names[p]``). Invisible keypoints are not drawn. Returns a copy."""
    import cv2
    out = np.ascontiguousarray(image.copy())
    r = radius or max(2, round(min(out.shape[:2]) / 64))
    for p, ((x, y), v) in enumerate(zip(np.asarray(keypoints), np.asarray(visible))):
        if not v:
            continue
        centre = (int(np.floor(x)), int(np.floor(y)))
        colour = tuple(int(c) for c in PALETTE[p % len(PALETTE)])
        cv2.circle(out, centre, r + 1, (0, 0, 0), -1, cv2.LINE_AA)
        cv2.circle(out, centre, r, colour, -1, cv2.LINE_AA)
        label = str(names[p]) if names is not None else str(p)
        _text(out, label, (centre[0] + r + 1, centre[1] - r), 0.3, (255, 255, 255), 2)
        _text(out, label, (centre[0] + r + 1, centre[1] - r), 0.3, (0, 0, 0), 1)
    return out


# ----------------------------------------------------------------------------------- sheets
def to_uint8_images(images) -> List[np.ndarray]:
    """``[B, 3, H, W]`` float tensors in [0, 1] (or a list of uint8 ``[H, W, 3]``) -> list of
    uint8 ``[H, W, 3]``."""
    if torch.is_tensor(images):
        arr = images.detach().float().cpu().permute(0, 2, 3, 1).numpy()
        return list(np.rint(arr * 255).clip(0, 255).astype(np.uint8))
    return [np.asarray(im) for im in images]


def maps_to_size(maps: torch.Tensor, size: Tuple[int, int]) -> torch.Tensor:
    """Part maps ``[B, K+1, h, w]`` -> ``[B, K+1, H, W]`` (bilinear, align_corners=False: the pixel
    convention of docs/ARCHITECTURE.md)."""
    maps = maps.float()
    if tuple(maps.shape[-2:]) == tuple(size):
        return maps
    return F.interpolate(maps, size=tuple(size), mode="bilinear", align_corners=False)


def _pad_to(img: np.ndarray, h: int, w: int) -> np.ndarray:
    out = np.full((h, w, 3), 255, np.uint8)
    out[:img.shape[0], :img.shape[1]] = img
    return out


def _grid(cells: List[List[np.ndarray]], gap: int = 2) -> np.ndarray:
    """Rows of images -> one image on white; each column as wide as its widest cell, each row as
    tall as its tallest (cells are placed top-left)."""
    ncol = max(len(r) for r in cells)
    widths = [max((r[j].shape[1] for r in cells if j < len(r)), default=0) for j in range(ncol)]
    heights = [max((c.shape[0] for c in r), default=0) for r in cells]
    xs = np.concatenate([[0], np.cumsum([w + gap for w in widths])])
    ys = np.concatenate([[0], np.cumsum([h + gap for h in heights])])
    out = np.full((max(int(ys[-1]) - gap, 1), max(int(xs[-1]) - gap, 1), 3), 255, np.uint8)
    for i, row in enumerate(cells):
        for j, c in enumerate(row):
            out[ys[i]:ys[i] + c.shape[0], xs[j]:xs[j] + c.shape[1]] = c
    return out


def _header(titles: Sequence[str], colours: Sequence[Optional[np.ndarray]], cw: int,
            gap: int = 2) -> np.ndarray:
    h = 16
    out = np.full((h, len(titles) * (cw + gap) - gap, 3), 255, np.uint8)
    for j, (t, c) in enumerate(zip(titles, colours)):
        x = j * (cw + gap)
        if c is not None:
            out[3:h - 3, x + 2:x + 12] = c
            x += 14
        _text(out, t, (x + 2, h - 4), 0.35)
    return out


def _enlarge(img: np.ndarray, min_size: int) -> Tuple[np.ndarray, int]:
    """Nearest-neighbour enlargement by the integer factor that brings the shorter side to at
    least ``min_size`` (small network-size images stay readable); returns (image, factor)."""
    import cv2
    f = max(1, int(np.ceil(min_size / max(1, min(img.shape[:2])))))
    if f == 1:
        return img, 1
    return cv2.resize(img, None, fx=f, fy=f, interpolation=cv2.INTER_NEAREST), f


def contact_sheet(images, part_maps, alpha: float = 0.55,
                  names: Optional[Sequence[str]] = None,
                  keypoints: Optional[Sequence[Tuple[np.ndarray, np.ndarray]]] = None,
                  min_size: int = 128) -> np.ndarray:
    """One row per image; columns: input (with GT keypoints when ``keypoints`` gives
    ``(xy [P, 2], visible [P])`` per image), part overlay, then one heat map per part (and the
    background), under a header naming each column in its colour and a legend.

    ``images``: ``[B, 3, H, W]`` in [0, 1] or a list of uint8 ``[H, W, 3]`` arrays (sizes may
    differ); ``part_maps``: ``[B, K+1, h, w]`` or a list of ``[K+1, h, w]`` (each resized to its
    image). Images smaller than ``min_size`` are enlarged by an integer factor for display."""
    imgs = to_uint8_images(images)
    K = part_maps[0].shape[0] - 1
    pal = part_palette(K)
    labels = part_names(K, names)
    rows = []
    for i, img in enumerate(imgs):
        img, f = _enlarge(img, min_size)
        maps = maps_to_size(part_maps[i][None], img.shape[:2])[0].cpu().numpy()
        lab = maps.argmax(0)
        first = img
        if keypoints is not None:
            xy, vis = keypoints[i]
            first = draw_keypoints(img, np.asarray(xy, np.float64) * f, vis)
        rows.append([first, overlay(img, lab, K, alpha)] +
                    [heatmap(img, maps[k], pal[k]) for k in range(K + 1)])
    cw = max(r[0].shape[1] for r in rows)
    grid = _grid(rows)
    head = _header(["input", "parts"] + labels, [None, None] + list(pal), cw)
    leg = legend(K, names, width=grid.shape[1])
    width = max(grid.shape[1], head.shape[1], leg.shape[1])
    return np.concatenate([_pad_to(head, head.shape[0], width), _pad_to(grid, grid.shape[0], width),
                           _pad_to(leg, leg.shape[0], width)], axis=0)


def part_view(crops: Sequence[Sequence[np.ndarray]], names: Optional[Sequence[str]] = None,
              scores: Optional[Sequence[Sequence[float]]] = None, min_size: int = 64
              ) -> np.ndarray:
    """The per-part consistency view: row ``k`` shows the crops where part ``k`` is most
    confident (``crops[k]``, uint8 images, best first; enlarged to ``min_size`` for display),
    after a label cell in the part's colour; ``scores[k][j]`` is printed under crop ``j``."""
    K = len(crops)
    pal = part_palette(K)
    labels = part_names(K, names)
    crops = [[_enlarge(c, min_size)[0] for c in row] for row in crops]
    size = max([c.shape[0] for row in crops for c in row] + [24])
    rows = []
    for k in range(K):
        tag = np.full((size, 70, 3), 255, np.uint8)
        tag[4:size - 4, 4:14] = pal[k]
        _text(tag, labels[k], (18, size // 2 + 4), 0.35)
        cells = [tag]
        for j, c in enumerate(crops[k]):
            c = _pad_to(c, size, size)
            if scores is not None:
                label = f"{scores[k][j]:.3f}"
                _text(c, label, (2, size - 4), 0.3, (255, 255, 255), 2)
                _text(c, label, (2, size - 4), 0.3, (0, 0, 0), 1)
            cells.append(c)
        rows.append(cells)
    return _grid(rows)


def mask_grid(images: torch.Tensor, part_maps: torch.Tensor,
              gt_masks: Optional[torch.Tensor] = None, max_items: int = 8) -> np.ndarray:
    """A grid with one column per image: image, predicted-part overlay, part labels (and the GT
    part mask when given). ``images [B, 3, H, W]`` in [0, 1]; ``part_maps [B, K+1, h, w]``; GT
    masks use the dataset convention (0 = background, ``c`` = part class c, drawn with colour
    ``c - 1``)."""
    B = min(images.shape[0], max_items)
    K = part_maps.shape[1] - 1
    H, W = images.shape[-2:]
    labels = maps_to_size(part_maps[:B], (H, W)).argmax(1).cpu().numpy()
    imgs = to_uint8_images(images[:B])
    cols = []
    for i in range(B):
        rows: List[np.ndarray] = [imgs[i], overlay(imgs[i], labels[i], K), colorize(labels[i], K)]
        if gt_masks is not None:
            rows.append(colorize_gt(gt_masks[i].cpu().numpy()))
        cols.append(np.concatenate(rows, axis=0))
    return _grid([cols])


def colorize_gt(mask: np.ndarray) -> np.ndarray:
    """A dataset part mask (0 = background, ``c`` = part class c, negative = ignore) in the palette:
    class ``c`` gets colour ``c - 1``, background and ignored pixels the background grey."""
    mask = np.asarray(mask).astype(np.int64)
    ncls = max(int(mask.max()), 1) if mask.size else 1
    return colorize(np.where(mask > 0, mask - 1, ncls), ncls)


# ----------------------------------------------------------------------------------- files
def encode_image(path: str, array: np.ndarray) -> bytes:
    """Encode an image for ``path``'s extension (.png, .jpg, ...) with OpenCV; RGB input."""
    import cv2
    a = np.ascontiguousarray(array)
    if a.ndim == 3:
        a = cv2.cvtColor(a, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(os.path.splitext(path)[1] or ".png", a)
    if not ok:
        raise ValueError(f"cannot encode a {a.dtype} {list(a.shape)} image as {path}")
    return buf.tobytes()


def save_png(path: str, rgb: np.ndarray, colors: Optional[int] = None) -> None:
    """Write an RGB uint8 image (PNG, or another format by extension) atomically (temporary file +
    rename): a crash never leaves a truncated image. ``colors`` (2-256, PNG only) writes an 8-bit
    palette PNG of at most that many colours (median cut): several times smaller, for figures
    committed to a repository."""
    if colors is None:
        with atomic_open(path, "wb") as f:
            f.write(encode_image(path, rgb))
        return
    if not 2 <= int(colors) <= 256 or not path.lower().endswith(".png"):
        raise ValueError(f"colors must be in 2..256 and the file a .png, got {colors} for {path}")
    import io

    from PIL import Image
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(rgb, dtype=np.uint8)).quantize(int(colors)).save(
        buf, format="PNG", optimize=True)
    with atomic_open(path, "wb") as f:
        f.write(buf.getvalue())


def save_labels(path: str, labels: np.ndarray, num_parts: int) -> None:
    """Write part labels (``k`` = part k, ``num_parts`` = background) as a single-channel PNG,
    atomically: 8 bit up to 255 parts, else 16 bit. :func:`read_labels` reads it back exactly."""
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be [H, W], got {list(labels.shape)}")
    if labels.size and (labels.min() < 0 or labels.max() > num_parts):
        raise ValueError(f"labels must lie in 0..{num_parts} (K = background)")
    if not path.lower().endswith(".png"):
        raise ValueError(f"label images must be PNG (lossless), got {path}")
    dtype = np.uint8 if num_parts <= 255 else np.uint16
    with atomic_open(path, "wb") as f:
        f.write(encode_image(path, labels.astype(dtype)))


def read_labels(path: str) -> np.ndarray:
    """A label PNG written by :func:`save_labels` -> int64 ``[H, W]``."""
    from partformer.data.io import load_mask
    return load_mask(path).astype(np.int64)
