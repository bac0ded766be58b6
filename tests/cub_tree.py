"""Writer of tiny CUB-200-2011 trees in the real on-disk format, for tests (not a conftest).

``write_tiny_cub(tmp_path)`` writes ``tmp_path/CUB_200_2011`` with a few small JPEGs and every list
file of the real layout (docs/ARCHITECTURE.md), plus ``segmentations/``, ``part_masks/`` and
``val_split.txt`` on request, and returns the ground truth it wrote.

Geometry, chosen so tests can check every resize mode exactly:
- the foreground is an axis-aligned rectangle ``[x0, x1) x [y0, y1)`` (255 in the segmentation,
  with a ring of grey 100 around it that the > 127 threshold must reject), and the box is exactly
  that rectangle;
- the keypoints lie on a 4 x 4 grid inside the rectangle; in ``part_masks/`` keypoint k is a
  9 x 9 square of label k + 1 centred on the pixel containing it (squares never overlap), so after
  any resize down to 1/5 the pixel containing a transformed visible keypoint still carries k + 1.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import List, Optional, Sequence

import cv2
import numpy as np

CUB_PART_NAMES = ["back", "beak", "belly", "breast", "crown", "forehead", "left eye", "left leg",
                  "left wing", "nape", "right eye", "right leg", "right wing", "tail", "throat"]
SQUARE_RADIUS = 4


@dataclass
class TinyCub:
    root: str                    # the CUB_200_2011 folder
    ids: np.ndarray              # int64 [N], 1..N
    paths: List[str]             # relative image paths
    sizes: np.ndarray            # int64 [N, 2] (H, W)
    labels: np.ndarray           # int64 [N] 0-based
    is_train: np.ndarray         # bool [N]
    is_val: np.ndarray           # bool [N] (all False when no val_split.txt was written)
    keypoints: np.ndarray        # float32 [N, P, 2], 0 where invisible
    visible: np.ndarray          # bool [N, P]
    bbox: np.ndarray             # float32 [N, 4]
    keypoint_names: List[str] = field(default_factory=list)
    class_names: List[str] = field(default_factory=list)

    def split_ids(self, split: str) -> np.ndarray:
        sel = {"train": self.is_train & ~self.is_val, "val": self.is_val,
               "trainval": self.is_train, "test": ~self.is_train}[split]
        return self.ids[sel]


def _write(path: str, lines: Sequence[str], final_newline: bool, blank_lines: bool) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    lines = list(lines)
    if blank_lines:  # an empty line after the first row and a whitespace-only line at the end
        lines = lines[:1] + [""] + lines[1:] + ["   "]
    text = "\n".join(lines) + ("\n" if final_newline else "")
    with open(path, "w", encoding="utf-8") as f:
        f.write(text)


def write_tiny_cub(parent: str, n_images: int = 6, *, seed: int = 0, num_classes: int = 3,
                   num_keypoints: int = 15, final_newline: bool = True, blank_lines: bool = False,
                   val_split: bool = True, segmentations: bool = True, part_masks: bool = True,
                   train_flags: Optional[Sequence[int]] = None,
                   val_flags: Optional[Sequence[int]] = None) -> TinyCub:
    """Write ``parent/CUB_200_2011`` and return its ground truth (see the module docstring).

    By default images ``i % 3 == 1`` (0-based) are test images and the first training image is
    the validation image (when ``val_split``). Image sizes are random in [96, 160] per side.
    """
    rng = np.random.default_rng(seed)
    root = os.path.join(os.fspath(parent), "CUB_200_2011")
    os.makedirs(root, exist_ok=True)
    n, P = n_images, num_keypoints
    ids = np.arange(1, n + 1, dtype=np.int64)
    is_train = (np.array(train_flags, bool) if train_flags is not None
                else np.array([i % 3 != 1 for i in range(n)]))
    if val_flags is not None:
        is_val = np.array(val_flags, bool)
    elif val_split:
        is_val = np.zeros(n, bool)
        is_val[np.flatnonzero(is_train)[0]] = True
    else:
        is_val = np.zeros(n, bool)
    class_names = [f"{c:03d}.Tiny_Bird_{c}" for c in range(1, num_classes + 1)]
    labels = np.arange(n, dtype=np.int64) % num_classes
    names = (CUB_PART_NAMES + [f"extra part {k}" for k in range(15, P)])[:P]

    paths, sizes, boxes = [], [], []
    keypoints = np.zeros((n, P, 2), np.float32)
    visible = np.zeros((n, P), bool)
    for i in range(n):
        H, W = (int(v) for v in rng.integers(96, 161, size=2))
        x0, x1 = int(rng.integers(2, W // 6 + 1)), int(rng.integers(W - W // 6, W - 1))
        y0, y1 = int(rng.integers(2, H // 6 + 1)), int(rng.integers(H - H // 6, H - 1))
        cname = class_names[labels[i]]
        rel = f"{cname}/{cname[4:]}_{i + 1:04d}_{1000 + i}.jpg"
        paths.append(rel)
        sizes.append((H, W))
        boxes.append((x0, y0, x1 - x0, y1 - y0))

        image = rng.integers(0, 256, size=(H, W, 3), dtype=np.uint8)
        image[y0:y1, x0:x1] = (image[y0:y1, x0:x1] // 4 + np.array([40, 150, 60], np.uint8))
        ipath = os.path.join(root, "images", rel)
        os.makedirs(os.path.dirname(ipath), exist_ok=True)
        cv2.imwrite(ipath, image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])

        # 4 x 4 grid of cells inside the box; keypoint k in cell k, jittered within its cell centre
        gx = x0 + 5 + (np.arange(4) + 0.5) * (x1 - x0 - 10) / 4
        gy = y0 + 5 + (np.arange(4) + 0.5) * (y1 - y0 - 10) / 4
        vis = rng.random(P) < 0.75
        vis[rng.integers(P)] = True
        for k in range(P):
            if vis[k]:
                keypoints[i, k] = (gx[k % 4] + rng.uniform(-1.5, 1.5),
                                   gy[(k // 4) % 4] + rng.uniform(-1.5, 1.5))
        visible[i] = vis
        seg = np.zeros((H, W), np.uint8)
        seg[max(y0 - 1, 0):y1 + 1, max(x0 - 1, 0):x1 + 1] = 100
        seg[y0:y1, x0:x1] = 255
        if segmentations:
            spath = os.path.join(root, "segmentations", rel[:-4] + ".png")
            os.makedirs(os.path.dirname(spath), exist_ok=True)
            cv2.imwrite(spath, seg)
        if part_masks:
            pm = np.zeros((H, W), np.uint8)
            r = SQUARE_RADIUS
            for k in np.flatnonzero(vis):
                cx, cy = int(keypoints[i, k, 0]), int(keypoints[i, k, 1])
                pm[max(cy - r, 0):cy + r + 1, max(cx - r, 0):cx + r + 1] = k + 1
            ppath = os.path.join(root, "part_masks", rel[:-4] + ".png")
            os.makedirs(os.path.dirname(ppath), exist_ok=True)
            cv2.imwrite(ppath, pm)

    w = lambda rel, lines: _write(os.path.join(root, rel), lines, final_newline, blank_lines)
    w("images.txt", [f"{i} {p}" for i, p in zip(ids, paths)])
    w("image_class_labels.txt", [f"{i} {l + 1}" for i, l in zip(ids, labels)])
    w("classes.txt", [f"{c + 1} {nm}" for c, nm in enumerate(class_names)])
    w("train_test_split.txt", [f"{i} {int(t)}" for i, t in zip(ids, is_train)])
    w("bounding_boxes.txt", [f"{i} " + " ".join(f"{v:.1f}" for v in b) for i, b in zip(ids, boxes)])
    w("parts/parts.txt", [f"{k + 1} {nm}" for k, nm in enumerate(names)])
    w("parts/part_locs.txt", [
        f"{i} {k + 1} {keypoints[r, k, 0]:.6f} {keypoints[r, k, 1]:.6f} 1" if visible[r, k]
        else f"{i} {k + 1} 0.0 0.0 0" for r, i in enumerate(ids) for k in range(P)])
    if val_split:
        w("val_split.txt", [f"{i} {int(v)}" for i, v in zip(ids, is_val)])
    if part_masks:
        w("part_masks/part_names.txt", [f"{k + 1} {nm}" for k, nm in enumerate(names)])
    # keypoints as written (6 decimals), so comparisons with the loader are exact
    kp = np.vectorize(lambda v: float(f"{v:.6f}"))(keypoints.astype(np.float64)).astype(np.float32)
    return TinyCub(root=root, ids=ids, paths=paths, sizes=np.array(sizes, np.int64), labels=labels,
                   is_train=is_train, is_val=is_val, keypoints=kp, visible=visible,
                   bbox=np.array(boxes, np.float32), keypoint_names=names, class_names=class_names)
