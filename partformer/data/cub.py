"""CUB-200-2011 (Wah et al. 2011): birds with 15 keypoints, boxes and (separately) segmentations.

Layout, splits and the optional extras (``val_split.txt``, ``part_masks/``) are fixed in
docs/ARCHITECTURE.md; download instructions are in datasets/cub/README.md. Annotations are parsed
once at construction (vectorised; the real ``part_locs.txt`` has 176,820 rows); images and masks are
decoded lazily in ``__getitem__``.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, NamedTuple, Optional

import numpy as np
import torch
from torch.utils.data import Dataset

from partformer.data import register_dataset
from partformer.data.io import (check_index, decode_or_skip, load_image, load_mask, read_table,
                                relative_path, require_file)
from partformer.data.transforms import apply_resize, check_resize_mode, to_tensor_image

__all__ = ["CUBDataset", "KeypointTable", "CUB_LAYOUT", "SPLITS", "default_val_ids"]

SPLITS = ("train", "val", "trainval", "test")

CUB_LAYOUT = """\
CUB_200_2011/                 <- data.root points here (or at its parent directory)
  images/<class_dir>/<file>.jpg
  images.txt                  <image_id> <relative image path>
  image_class_labels.txt      <image_id> <class_id>
  classes.txt                 <class_id> <class_name>
  train_test_split.txt        <image_id> <1 = train, 0 = test>
  bounding_boxes.txt          <image_id> <x> <y> <w> <h>
  parts/parts.txt             <part_id> <name>
  parts/part_locs.txt         <image_id> <part_id> <x> <y> <visible>
  segmentations/<class_dir>/<file>.png   optional (separate download; also found beside
                                         CUB_200_2011/)
  val_split.txt               optional: <image_id> <1 = validation, 0 = not>
  part_masks/<class_dir>/<file>.png      optional, with part_masks/part_names.txt <id> <name>
Download and setup: datasets/cub/README.md"""


class KeypointTable(NamedTuple):
    """Annotations of a split at original resolution, in dataset order."""
    keypoints: np.ndarray  # float32 [N, P, 2] (x, y) as stored in CUB; (0, 0) where invisible
    visible: np.ndarray    # bool [N, P]
    bbox: np.ndarray       # float32 [N, 4] (x, y, w, h)


def default_val_ids(train_ids: np.ndarray, val_fraction: float = 0.1) -> np.ndarray:
    """The validation ids used when ``val_split.txt`` is absent (real CUB), sorted.

    ``numpy.random.default_rng(0).permutation`` of the sorted train ids, first
    ``int(val_fraction * n)`` of them (docs/ARCHITECTURE.md).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    ids = np.sort(np.asarray(train_ids, dtype=np.int64))
    n_val = int(val_fraction * len(ids))
    return np.sort(np.random.default_rng(0).permutation(ids)[:n_val])


def _resolve_root(root: str) -> str:
    root = os.path.expanduser(os.fspath(root))
    if not os.path.isdir(root):
        raise FileNotFoundError(
            f"CUB root {root} is not a directory. Download CUB-200-2011 (see "
            f"datasets/cub/README.md) and set data.root to the CUB_200_2011 folder.\n"
            f"Expected layout:\n{CUB_LAYOUT}")
    if not os.path.isfile(os.path.join(root, "images.txt")):
        inner = os.path.join(root, "CUB_200_2011")
        if os.path.isfile(os.path.join(inner, "images.txt")):
            return inner  # the user pointed at the folder the archive was extracted into
    return root


def _check_same_ids(ref_ids: np.ndarray, ids: np.ndarray, path: str, ref_name: str) -> np.ndarray:
    """Return the permutation sorting ``ids``; raise if they are not exactly ``ref_ids``."""
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    dup = sorted_ids[1:][sorted_ids[1:] == sorted_ids[:-1]]
    if len(dup):
        raise ValueError(f"{path}: image id {int(dup[0])} appears more than once")
    if len(sorted_ids) != len(ref_ids) or not np.array_equal(sorted_ids, ref_ids):
        missing = np.setdiff1d(ref_ids, sorted_ids)
        extra = np.setdiff1d(sorted_ids, ref_ids)
        detail = []
        if len(missing):
            detail.append(f"missing ids {_few(missing)}")
        if len(extra):
            detail.append(f"ids not in {ref_name}: {_few(extra)}")
        raise ValueError(f"{path}: image ids do not match {ref_name} ({'; '.join(detail)}); "
                         f"every list file must have one row per image")
    return order


def _few(a: np.ndarray, n: int = 5) -> str:
    s = ", ".join(str(int(v)) for v in a[:n])
    return f"[{s}{', ...' if len(a) > n else ''}] ({len(a)} in all)"


@register_dataset("cub")
class CUBDataset(Dataset):
    """CUB-200-2011 returning the sample dict of docs/ARCHITECTURE.md.

    Args:
        root: the ``CUB_200_2011`` folder (or the folder that contains it).
        split: ``train`` (official train minus validation), ``val``, ``trainval`` (official
            train), ``test`` (official test).
        image_size: S of the resize mode.
        resize: ``whole`` | ``shorter`` | ``shorter_center_crop`` | ``bbox_crop``
            (partformer/data/transforms.py). ``shorter`` and ``bbox_crop`` give images of varying
            size: batch them with batch size 1.
        with_masks: return ``fg_mask`` / ``part_mask`` when ``segmentations/`` / ``part_masks/``
            exist.
        skip_bad_images: on an undecodable image, warn and return ``None`` (dropped and counted by
            ``partformer.data.collate.collate``) instead of raising.
        val_fraction: fraction of the train ids held out as ``val`` when ``val_split.txt`` is
            absent (ignored when it is present).

    Attributes:
        image_ids: int64 ``[N]`` CUB image ids (1-based) of the split, ascending = dataset order.
        labels: int64 ``[N]`` 0-based class labels.
        class_names, num_classes, keypoint_names, num_keypoints, part_names (``None`` without
        part masks), root, split, image_size, resize.
    """

    def __init__(self, root: str, split: str, image_size: int = 256, resize: str = "whole",
                 with_masks: bool = True, skip_bad_images: bool = False,
                 val_fraction: float = 0.1):
        if split not in SPLITS:
            raise ValueError(f"unknown CUB split {split!r}; expected one of {list(SPLITS)}")
        check_resize_mode(resize, image_size)
        self.root = _resolve_root(root)
        self.split = split
        self.image_size = int(image_size)
        self.resize = resize
        self.skip_bad_images = bool(skip_bad_images)
        self.val_fraction = float(val_fraction)

        ann = self._read_annotations()
        is_train, is_val = ann["is_train"], ann["is_val"]
        select = {"train": is_train & ~is_val, "val": is_val, "trainval": is_train,
                  "test": ~is_train}[split]
        rows = np.flatnonzero(select)
        self._rows = rows
        self.image_ids: np.ndarray = ann["ids"][rows]
        self._paths: List[str] = [ann["paths"][r] for r in rows]
        self.labels: np.ndarray = ann["labels"][rows]
        self._keypoints: np.ndarray = ann["keypoints"][rows]
        self._visible: np.ndarray = ann["visible"][rows]
        self._bbox: np.ndarray = ann["bbox"][rows]
        self.class_names: List[str] = ann["class_names"]
        self.num_classes: int = len(self.class_names)
        self.keypoint_names: List[str] = ann["keypoint_names"]
        self.num_keypoints: int = len(self.keypoint_names)

        self._seg_dir: Optional[str] = None
        self._part_dir: Optional[str] = None
        self.part_names: Optional[List[str]] = None
        for d in (os.path.join(self.root, "segmentations"),
                  os.path.join(os.path.dirname(os.path.abspath(self.root)), "segmentations")):
            if os.path.isdir(d):
                self._seg_dir = d
                break
        part_dir = os.path.join(self.root, "part_masks")
        if os.path.isdir(part_dir):
            self._part_dir = part_dir
            self.part_names = self._read_part_names(part_dir)
        self.with_masks = bool(with_masks)

    # ------------------------------------------------------------------ annotations
    def _file(self, *rel: str) -> str:
        return require_file(os.path.join(self.root, *rel), CUB_LAYOUT)

    def _read_annotations(self) -> Dict[str, Any]:
        images_txt = self._file("images.txt")
        (ids, paths), lines = read_table(images_txt, 2, (int, str), names=("image_id", "path"),
                                         return_line_numbers=True)
        for rel, line in zip(paths, lines):
            relative_path(rel, f"{images_txt}, line {line}")
        if len(ids) == 0:
            raise ValueError(f"{images_txt} lists no images")
        order = np.argsort(ids, kind="stable")
        ids = ids[order]
        paths = [paths[i] for i in order]
        dup = ids[1:][ids[1:] == ids[:-1]]
        if len(dup):
            raise ValueError(f"{images_txt}: image id {int(dup[0])} appears more than once")

        def by_id(rel, ncols, types, names):
            path = self._file(rel) if isinstance(rel, str) else self._file(*rel)
            cols = read_table(path, ncols, types, names=names)
            perm = _check_same_ids(ids, cols[0], path, "images.txt")
            return path, [c[perm] for c in cols[1:]]

        labels_txt, (class_ids,) = by_id("image_class_labels.txt", 2, (int, int),
                                         ("image_id", "class_id"))
        split_txt, (train_flag,) = by_id("train_test_split.txt", 2, (int, int),
                                         ("image_id", "is_training_image"))
        box_txt, box_cols = by_id("bounding_boxes.txt", 5, (int, float, float, float, float),
                                  ("image_id", "x", "y", "width", "height"))
        bbox = np.stack(box_cols, axis=1).astype(np.float32)
        self._check_flags(split_txt, train_flag, ids)
        bad = np.flatnonzero((bbox[:, 2] <= 0) | (bbox[:, 3] <= 0))
        if len(bad):
            raise ValueError(f"{box_txt}: image {int(ids[bad[0]])} has a box of non-positive size "
                             f"{bbox[bad[0]].tolist()} (expected <image_id> <x> <y> <w> <h>)")
        is_train = train_flag == 1

        class_names = self._read_class_names(class_ids, paths, labels_txt)
        labels = class_ids - 1

        is_val = self._read_val(ids, is_train)
        keypoint_names, keypoints, visible = self._read_parts(ids)
        return dict(ids=ids, paths=paths, labels=labels.astype(np.int64), is_train=is_train,
                    is_val=is_val, bbox=bbox, class_names=class_names,
                    keypoint_names=keypoint_names, keypoints=keypoints, visible=visible)

    @staticmethod
    def _check_flags(path: str, flags: np.ndarray, ids: np.ndarray) -> None:
        bad = np.flatnonzero((flags != 0) & (flags != 1))
        if len(bad):
            raise ValueError(f"{path}: image {int(ids[bad[0]])} has flag {int(flags[bad[0]])}; "
                             f"expected 0 or 1")

    def _read_class_names(self, class_ids: np.ndarray, paths: List[str],
                          labels_txt: str) -> List[str]:
        classes_txt = os.path.join(self.root, "classes.txt")
        if os.path.isfile(classes_txt):
            cid, names = read_table(classes_txt, 2, (int, str), names=("class_id", "class_name"),
                                    rest_of_line=True)
            if not np.array_equal(np.sort(cid), np.arange(1, len(cid) + 1)):
                raise ValueError(f"{classes_txt}: class ids must be 1..{len(cid)} (each once)")
            class_names = [names[i] for i in np.argsort(cid)]
        else:  # classes.txt is optional: name classes after their image folders
            n = int(class_ids.max())
            class_names = [f"class_{k:03d}" for k in range(1, n + 1)]
            for c, p in zip(class_ids, paths):
                if "/" in p:
                    class_names[c - 1] = p.split("/")[0]
        bad = np.flatnonzero((class_ids < 1) | (class_ids > len(class_names)))
        if len(bad):
            raise ValueError(f"{labels_txt}: class id {int(class_ids[bad[0]])} outside "
                             f"1..{len(class_names)} (classes.txt)")
        return class_names

    def _read_val(self, ids: np.ndarray, is_train: np.ndarray) -> np.ndarray:
        val_txt = os.path.join(self.root, "val_split.txt")
        if not os.path.isfile(val_txt):
            return np.isin(ids, default_val_ids(ids[is_train], self.val_fraction))
        vid, flag = read_table(val_txt, 2, (int, int), names=("image_id", "is_validation"))
        perm = _check_same_ids(ids, vid, val_txt, "images.txt")
        flag = flag[perm]
        self._check_flags(val_txt, flag, ids)
        is_val = flag == 1
        leak = np.flatnonzero(is_val & ~is_train)
        if len(leak):
            raise ValueError(f"{val_txt}: image {int(ids[leak[0]])} is marked validation but is a "
                             f"test image in train_test_split.txt; validation images must be "
                             f"official training images")
        return is_val

    def _read_parts(self, ids: np.ndarray):
        parts_txt = self._file("parts", "parts.txt")
        pid, keypoint_names = read_table(parts_txt, 2, (int, str), names=("part_id", "name"),
                                         rest_of_line=True)  # CUB: "7 left eye"
        num_kp = len(pid)
        if num_kp == 0 or not np.array_equal(pid, np.arange(1, num_kp + 1)):
            raise ValueError(f"{parts_txt}: part ids must be 1..P in order, found {pid.tolist()}")
        locs_txt = self._file("parts", "part_locs.txt")
        (img, part, x, y, vis), lines = read_table(
            locs_txt, 5, (int, int, float, float, int),
            names=("image_id", "part_id", "x", "y", "visible"), return_line_numbers=True)
        n_expected = len(ids) * num_kp
        exp_img, exp_part = np.repeat(ids, num_kp), np.tile(np.arange(1, num_kp + 1), len(ids))
        m = min(len(img), n_expected)
        wrong = np.flatnonzero((img[:m] != exp_img[:m]) | (part[:m] != exp_part[:m]))
        first = ""
        if len(wrong):
            k = wrong[0]
            first = (f"line {int(lines[k])}: found image {int(img[k])} part {int(part[k])}, "
                     f"expected image {int(exp_img[k])} part {int(exp_part[k])}")
        if len(img) != n_expected:
            raise ValueError(f"{locs_txt}: {len(img)} rows, expected {len(ids)} images x {num_kp} "
                             f"parts = {n_expected} (one row per (image, part), in image id then "
                             f"part id order)" + (f"; first mismatch at {first}" if first else ""))
        if first:
            raise ValueError(f"{locs_txt}: rows must be in (image id, part id) order with "
                             f"{num_kp} rows per image; {first}")
        bad = np.flatnonzero((vis != 0) & (vis != 1))
        if len(bad):
            raise ValueError(f"{locs_txt}, line {int(lines[bad[0]])}: visible must be 0 or 1, "
                             f"found {int(vis[bad[0]])}")
        visible = (vis == 1).reshape(len(ids), num_kp)
        keypoints = np.stack([x, y], axis=1).astype(np.float32).reshape(len(ids), num_kp, 2)
        keypoints[~visible] = 0.0  # contract: invisible keypoints are (0, 0)
        return list(keypoint_names), keypoints, visible

    def _read_part_names(self, part_dir: str) -> List[str]:
        names_txt = require_file(os.path.join(part_dir, "part_names.txt"), CUB_LAYOUT)
        pid, names = read_table(names_txt, 2, (int, str), names=("part_id", "name"),
                                rest_of_line=True)
        if not np.array_equal(np.sort(pid), np.arange(1, len(pid) + 1)):
            raise ValueError(f"{names_txt}: part ids must be 1..C (each once; 0 is the "
                             f"background), found {sorted(pid.tolist())}")
        return [names[i] for i in np.argsort(pid)]

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return len(self.image_ids)

    def image_path(self, index: int) -> str:
        return os.path.join(self.root, "images", self._paths[index])

    def _mask_path(self, folder: str, index: int) -> str:
        return os.path.join(folder, os.path.splitext(self._paths[index])[0] + ".png")

    def keypoint_table(self) -> KeypointTable:
        """(keypoints ``[N, P, 2]``, visible ``[N, P]``, bbox ``[N, 4]``) of the split at original
        resolution, without decoding any image (e.g. for the keypoint-regression protocols)."""
        return KeypointTable(self._keypoints.copy(), self._visible.copy(), self._bbox.copy())

    def __getitem__(self, index: int) -> Optional[Dict[str, Any]]:
        check_index(index, len(self), f"CUB {self.split}")
        path = self.image_path(index)

        def load():
            image = load_image(path)
            masks = []
            if self.with_masks and self._seg_dir is not None:
                masks.append(self._load_mask(self._seg_dir, index, image.shape[:2]))
            if self.with_masks and self._part_dir is not None:
                masks.append(self._load_mask(self._part_dir, index, image.shape[:2]))
            return image, masks

        loaded = decode_or_skip(load, self.skip_bad_images)
        if loaded is None:
            return None
        image, masks = loaded

        h, w = image.shape[:2]
        out = apply_resize(self.resize, self.image_size, image, self._keypoints[index],
                           self._visible[index], self._bbox[index], masks)
        sample: Dict[str, Any] = {
            "image": to_tensor_image(out.image),
            "keypoints": torch.from_numpy(out.keypoints),
            "keypoints_visible": torch.from_numpy(out.visible),
            "bbox": torch.from_numpy(out.bbox),
            "label": torch.tensor(int(self.labels[index]), dtype=torch.int64),
        }
        k = 0
        if self.with_masks and self._seg_dir is not None:
            sample["fg_mask"] = torch.from_numpy((out.masks[k] > 127).astype(np.uint8))
            k += 1
        if self.with_masks and self._part_dir is not None:
            sample["part_mask"] = torch.from_numpy(out.masks[k].astype(np.int64))
        sample["index"] = torch.tensor(index, dtype=torch.int64)
        sample["orig_size"] = torch.tensor([h, w], dtype=torch.int64)
        return sample

    def _load_mask(self, folder: str, index: int, hw) -> np.ndarray:
        path = self._mask_path(folder, index)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"mask {path} not found: {folder} exists, so every image needs a mask there "
                f"(same relative path, .png). Complete the folder or pass with_masks=False.")
        mask = load_mask(path)
        if mask.shape != tuple(hw):
            raise ValueError(f"mask {path} is {mask.shape[1]}x{mask.shape[0]} but its image "
                             f"{self.image_path(index)} is {hw[1]}x{hw[0]} (W x H)")
        return mask

    def __repr__(self) -> str:
        return (f"CUBDataset(root={self.root!r}, split={self.split!r}, n={len(self)}, "
                f"image_size={self.image_size}, resize={self.resize!r}, "
                f"masks={'fg' if self._seg_dir else ''}{'+parts' if self._part_dir else ''})")
