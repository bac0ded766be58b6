"""CelebA "in the wild" with the MAFL landmark protocol (SCOPS; Liu et al. 2021; PartFormer).

On disk (official CelebA files, see datasets/celeba/README.md)::

    <root>/Img/img_celeba/000001.jpg ...      unaligned originals ("in the wild")
    <root>/Anno/list_landmarks_celeba.txt      wild landmark coordinates
    <root>/Anno/list_bbox_celeba.txt           face boxes (x_1 y_1 width height)
    <root>/Eval/list_eval_partition.txt        <name> <0 = train, 1 = val, 2 = test>
    <root>/splits/<split>.txt                  written by tools/prepare_celeba.py

The landmark and box files start with a count line and a column-name line; the landmark order is
left eye, right eye, nose, left mouth corner, right mouth corner. Coordinates are used as stored
(0-based pixel coordinates, no shift), like CUB's.

Splits (``tools/prepare_celeba.py`` writes them; protocol of docs/PROTOCOLS.md §5): an image is kept
only if its face box covers >= 30 % of the image area (box ``w * h`` as stored, image ``W * H`` from
the JPEG header).

- ``trainval``: CelebA train partition (0) minus the MAFL test images, filtered (published 45,609);
- ``val``: ``num_val`` (500) images of ``trainval`` drawn with ``numpy.random.default_rng(0)``
  (held out for model selection, our choice: no paper defines a CelebA-wild validation split);
- ``train``: ``trainval`` minus ``val``;
- ``mafl_train``: MAFL ``training.txt``, filtered (published 5,379; landmark-regressor fit);
- ``mafl_test``: MAFL ``testing.txt``, filtered (published 283; evaluation). ``test`` is an alias.

Every split file lists image names sorted by name; the dataset keeps that order (index -> file is
never shuffled: one public loader shuffles it unseeded).
"""
from __future__ import annotations

import os
import sys
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from partformer.data import register_dataset
from partformer.data.cub import KeypointTable
from partformer.data.io import (BadImageError, DATASETS_README, check_index, decode_or_skip,
                                load_image, relative_path, require_file, write_splits)
from partformer.data.transforms import apply_resize, check_resize_mode, to_tensor_image

__all__ = ["CelebAWildDataset", "LANDMARK_NAMES", "PUBLISHED_COUNTS", "prepare_celeba_splits",
           "read_counted_table", "face_box_fraction_ok"]

LANDMARK_NAMES = ("left_eye", "right_eye", "nose", "left_mouth", "right_mouth")
PUBLISHED_COUNTS = {"trainval": 45609, "mafl_train": 5379, "mafl_test": 283}
# face box area >= 3/10 of the image area; compared as integers-times-ten to avoid 0.3 rounding
MIN_FACE_FRACTION = (3, 10)
DEFAULT_NUM_VAL = 500
VAL_SEED = 0
SPLIT_NAMES = ("train", "val", "trainval", "mafl_train", "mafl_test")
SPLIT_ALIASES = {"test": "mafl_test"}

IMAGE_DIR = os.path.join("Img", "img_celeba")
LANDMARK_FILE = os.path.join("Anno", "list_landmarks_celeba.txt")
BBOX_FILE = os.path.join("Anno", "list_bbox_celeba.txt")
PARTITION_FILE = os.path.join("Eval", "list_eval_partition.txt")
SPLIT_DIR = "splits"

LAYOUT = """\
<root>/Img/img_celeba/*.jpg            (CelebA "In-The-Wild Images", unaligned)
<root>/Anno/list_landmarks_celeba.txt   (count line, column-name line, one row per image)
<root>/Anno/list_bbox_celeba.txt
<root>/Eval/list_eval_partition.txt
<root>/splits/{train,val,trainval,mafl_train,mafl_test}.txt   (python tools/prepare_celeba.py)
MAFL: training.txt, testing.txt (any folder; passed to tools/prepare_celeba.py --mafl)"""


# --------------------------------------------------------------------------------------------------
# readers
# --------------------------------------------------------------------------------------------------

def _lines(path: str) -> List[str]:
    with open(path, "r", encoding="utf-8-sig") as f:
        return f.read().splitlines()


def read_counted_table(path: str, ncols: int) -> Tuple[List[str], np.ndarray]:
    """Read a CelebA annotation file: line 1 = row count, line 2 = column names, then
    ``<image name> <ncols numbers>`` per line (any whitespace; blank lines and a missing final
    newline are fine).

    Returns (names, values float64 [N, ncols]). Raises ``ValueError`` naming the file and the
    1-based line for a malformed line, and when the count line disagrees with the number of rows.
    """
    require_file(path, LAYOUT)
    lines = _lines(path)
    content = [(k, ln) for k, ln in enumerate(lines, 1) if ln.strip()]
    if len(content) < 2:
        raise ValueError(f"{path}: expected a count line and a column-name line before the rows, "
                         f"found {len(content)} non-blank lines")
    (k0, count_line), (k1, header) = content[0], content[1]
    try:
        count = int(count_line.strip())
    except ValueError:
        raise ValueError(f"{path}, line {k0}: expected the number of rows (an integer), found "
                         f"{count_line.strip()!r}; is this a CelebA annotation file?") from None
    ntok = len(header.split())
    if ntok not in (ncols, ncols + 1):  # the bbox header names the image column, landmarks' not
        raise ValueError(f"{path}, line {k1}: expected {ncols} column names, found {ntok}: "
                         f"{header.strip()!r}")
    names: List[str] = []
    tokens: List[List[str]] = []
    for k, line in content[2:]:
        fields = line.split()
        if len(fields) != ncols + 1:
            raise ValueError(f"{path}, line {k}: expected <image name> and {ncols} numbers, found "
                             f"{len(fields)} fields: {line.strip()!r}")
        names.append(fields[0])
        tokens.append(fields[1:])
    try:
        values = np.array(tokens, dtype=np.float64).reshape(len(tokens), ncols)
    except ValueError:  # slow path: find the line to name
        for (k, line), row in zip(content[2:], tokens):
            try:
                [float(v) for v in row]
            except ValueError:
                raise ValueError(f"{path}, line {k}: expected {ncols} numbers after the image "
                                 f"name, found {line.strip()!r}") from None
        raise
    if count != len(names):
        raise ValueError(f"{path}: the count line (line {k0}) says {count} rows but the file has "
                         f"{len(names)}; the file is truncated or not the official one "
                         f"(see {DATASETS_README})")
    if not np.isfinite(values).all():
        r = int(np.flatnonzero(~np.isfinite(values).all(1))[0])
        raise ValueError(f"{path}, line {content[2 + r][0]}: non-finite value")
    if len(set(names)) != len(names):
        raise ValueError(f"{path}: image names are repeated")
    return names, values


def read_partition(path: str) -> Dict[str, int]:
    """``list_eval_partition.txt``: ``<name> <0|1|2>`` per line, no header."""
    require_file(path, LAYOUT)
    out: Dict[str, int] = {}
    for k, line in enumerate(_lines(path), 1):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
            raise ValueError(f"{path}, line {k}: expected <image name> <0|1|2>, found "
                             f"{line.strip()!r}")
        out[fields[0]] = int(fields[1])
    return out


def read_name_list(path: str, layout_hint: str = LAYOUT) -> List[str]:
    """A list of image names, one per line (first token; blank lines skipped)."""
    require_file(path, layout_hint)
    return [relative_path(ln.split()[0], f"{path}, line {i}")
            for i, ln in enumerate(_lines(path), 1) if ln.strip()]


def face_box_fraction_ok(box_wh: np.ndarray, image_wh: np.ndarray) -> np.ndarray:
    """True where the box area (w * h) is >= 30 % of the image area (W * H). Arrays [N, 2]."""
    num, den = MIN_FACE_FRACTION
    box_area = np.asarray(box_wh, dtype=np.float64).prod(-1)
    img_area = np.asarray(image_wh, dtype=np.float64).prod(-1)
    return box_area * den >= img_area * num


def _jpeg_size(path: str) -> Optional[Tuple[int, int]]:
    """(W, H) from the SOF marker of a baseline / progressive JPEG; None if not found."""
    with open(path, "rb") as f:
        if f.read(2) != b"\xff\xd8":
            return None
        while True:
            byte = f.read(1)
            while byte and byte != b"\xff":
                byte = f.read(1)
            while byte == b"\xff":
                byte = f.read(1)
            if not byte:
                return None
            marker = byte[0]
            if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
                continue  # markers without a length field
            seg = f.read(2)
            if len(seg) < 2:
                return None
            length = int.from_bytes(seg, "big")
            if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
                data = f.read(5)
                if len(data) < 5:
                    return None
                return int.from_bytes(data[3:5], "big"), int.from_bytes(data[1:3], "big")
            f.seek(length - 2, 1)


def read_image_size(path: str) -> Tuple[int, int]:
    """(W, H) of an image from its header only (fast for 200k JPEGs): PIL when installed, else
    the JPEG SOF marker, else a full decode."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image {path} not found; expected layout:\n{LAYOUT}\n"
                                f"See {DATASETS_README}")
    try:
        from PIL import Image
    except ImportError:
        Image = None
    try:
        if Image is not None:
            with Image.open(path) as im:
                return im.size
        size = _jpeg_size(path)
        if size is not None:
            return size
    except Exception as e:  # noqa: BLE001 - any header failure is a broken download
        raise BadImageError(f"cannot read the size of {path} ({e})") from None
    h, w = load_image(path).shape[:2]
    return w, h


def split_file(root: str, split: str) -> str:
    return os.path.join(root, SPLIT_DIR, f"{split}.txt")


# --------------------------------------------------------------------------------------------------
# preparation (tools/prepare_celeba.py)
# --------------------------------------------------------------------------------------------------

def _progress(iterable, total: int, desc: str, enabled: bool):
    if enabled:
        try:
            from tqdm import tqdm

            return tqdm(iterable, total=total, desc=desc, disable=not sys.stderr.isatty())
        except ImportError:
            pass
    return iterable


def prepare_celeba_splits(root: str, mafl_dir: str, num_val: int = DEFAULT_NUM_VAL,
                          seed: int = VAL_SEED, progress: bool = True) -> Dict[str, List[str]]:
    """Build the filtered CelebA-wild / MAFL splits and write ``<root>/splits/<split>.txt`` plus
    ``<root>/splits/prepare_info.json`` (counts, seed, source files).

    Returns the splits (sorted name lists) and warns when a count differs from the published one.
    """
    lm_names, _ = read_counted_table(os.path.join(root, LANDMARK_FILE), 10)
    bb_names, boxes = read_counted_table(os.path.join(root, BBOX_FILE), 4)
    partition = read_partition(os.path.join(root, PARTITION_FILE))
    box_of = dict(zip(bb_names, boxes))
    mafl_train, mafl_test = _mafl_lists(mafl_dir, box_of, set(lm_names), partition)
    mafl_test_set = set(mafl_test)
    trainval_candidates = sorted(n for n, p in partition.items() if p == 0
                                 and n not in mafl_test_set)
    needed = sorted(set(trainval_candidates) | set(mafl_train) | mafl_test_set)
    image_dir = os.path.join(root, IMAGE_DIR)
    if not os.path.isdir(image_dir):
        raise FileNotFoundError(f"image folder {image_dir} not found; expected layout:\n{LAYOUT}\n"
                                f"See {DATASETS_README}")
    sizes = {}
    for n in _progress(needed, len(needed), "reading image sizes", progress):
        sizes[n] = read_image_size(os.path.join(image_dir, n))

    def keep(names: Sequence[str]) -> List[str]:
        names = sorted(names)
        if not names:
            return []
        ok = face_box_fraction_ok(np.stack([box_of[n][2:] for n in names]),
                                  np.array([sizes[n] for n in names]))
        return [n for n, k in zip(names, ok) if k]

    splits = {"trainval": keep(trainval_candidates), "mafl_train": keep(mafl_train),
              "mafl_test": keep(mafl_test)}
    trainval = splits["trainval"]
    if not 0 <= num_val < len(trainval):
        raise ValueError(f"num_val={num_val} must be in [0, {len(trainval)}) (trainval size)")
    pick = np.random.default_rng(seed).permutation(len(trainval))[:num_val]
    val_set = {trainval[i] for i in pick}
    splits["val"] = [n for n in trainval if n in val_set]
    splits["train"] = [n for n in trainval if n not in val_set]

    counts = {k: len(v) for k, v in splits.items()}
    mismatched = {k: (counts[k], v) for k, v in PUBLISHED_COUNTS.items() if counts[k] != v}
    info = {"protocol": "CelebA-wild/MAFL, face box area >= 30% of the image area",
            "counts": counts, "published_counts": PUBLISHED_COUNTS,
            "val": {"num_val": num_val, "seed": seed,
                    "rule": "numpy.random.default_rng(seed).permutation(len(trainval))[:num_val]"},
            "mafl_dir": os.path.abspath(mafl_dir)}
    write_splits(os.path.join(root, SPLIT_DIR), {k: splits[k] for k in SPLIT_NAMES}, info)
    for k, (got, want) in mismatched.items():
        warnings.warn(f"CelebA split {k!r} has {got} images, the published protocol has {want}: "
                      f"check that the full official CelebA and MAFL files were used")
    return splits


def _mafl_lists(mafl_dir: str, box_of: Dict[str, np.ndarray], landmarked: set,
                partition: Dict[str, int]) -> Tuple[List[str], List[str]]:
    """MAFL's training and testing lists as CelebA names (``.jpg`` added where the list has none),
    checked: every name of them and of the partition has a box and landmarks, and the two lists
    do not overlap."""
    hint = "<mafl dir>/training.txt, <mafl dir>/testing.txt (MAFL lists of CelebA names)"

    def as_celeba_name(n: str) -> str:
        return n + ".jpg" if n not in box_of and n + ".jpg" in box_of else n

    train_list, test_list = (os.path.join(mafl_dir, f) for f in ("training.txt", "testing.txt"))
    train = [as_celeba_name(n) for n in read_name_list(train_list, hint)]
    test = [as_celeba_name(n) for n in read_name_list(test_list, hint)]
    for what, names in (("Eval/list_eval_partition.txt", partition), (train_list, train),
                        (test_list, test)):
        missing = [n for n in names if n not in box_of or n not in landmarked]
        if missing:
            raise ValueError(f"{what}: {len(missing)} image names have no row in "
                             f"{LANDMARK_FILE} / {BBOX_FILE} (first: {missing[0]!r}); are the "
                             f"files from the same CelebA release?")
    if set(train) & set(test):
        raise ValueError(f"{mafl_dir}: training.txt and testing.txt share images")
    return train, test


# --------------------------------------------------------------------------------------------------
# dataset
# --------------------------------------------------------------------------------------------------

@register_dataset("celeba_wild")
class CelebAWildDataset(Dataset):
    """CelebA in the wild with MAFL landmarks.

    Sample: ``image`` float32 [3, S, S'], ``keypoints`` float32 [5, 2] (x, y) in output pixels
    (left eye, right eye, nose, left mouth, right mouth), ``keypoints_visible`` bool [5] (all true
    except landmarks cropped away by a crop resize mode), ``bbox`` float32 [4] face box
    (x, y, w, h), ``label`` 0, ``index``, ``orig_size`` (H, W).

    Args:
        root: the CelebA folder (see the module docstring / datasets/celeba/README.md).
        split: ``train``, ``val``, ``trainval``, ``mafl_train``, ``mafl_test`` (alias ``test``).
        image_size, resize: see docs/ARCHITECTURE.md; PartFormer uses ``whole`` at 256.
        skip_bad_images: return ``None`` (after a warning naming the file) for an image that cannot
            be decoded, for ``partformer.data.collate.collate`` to drop; otherwise raise.
    """

    num_keypoints = len(LANDMARK_NAMES)
    keypoint_names = LANDMARK_NAMES

    # landmarks are evaluated with the CelebA regression protocols (inter-ocular normalisation)
    regression_protocol = "celeba"

    def __init__(self, root: str, split: str, image_size: int = 256, resize: str = "whole",
                 skip_bad_images: bool = False):
        check_resize_mode(resize, image_size)
        if not os.path.isdir(root):
            raise FileNotFoundError(f"CelebA root {root} is not a folder; expected layout:\n"
                                    f"{LAYOUT}\nSee {DATASETS_README} (CelebA section)")
        self.split = SPLIT_ALIASES.get(split, split)
        if self.split not in SPLIT_NAMES:
            raise ValueError(f"unknown CelebA split {split!r}; expected one of "
                             f"{list(SPLIT_NAMES) + list(SPLIT_ALIASES)}")
        self.root, self.image_size, self.resize = root, image_size, resize
        self.skip_bad_images = skip_bad_images

        path = split_file(root, self.split)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"CelebA split list {path} not found: build the filtered splits once with\n"
                f"    python tools/prepare_celeba.py --root {root} --mafl <folder with MAFL "
                f"training.txt and testing.txt>\nSee {DATASETS_README} (CelebA section)")
        self.names = read_name_list(path)
        lm_names, landmarks = read_counted_table(os.path.join(root, LANDMARK_FILE), 10)
        bb_names, boxes = read_counted_table(os.path.join(root, BBOX_FILE), 4)
        lm_row = {n: i for i, n in enumerate(lm_names)}
        bb_row = {n: i for i, n in enumerate(bb_names)}
        missing = [n for n in self.names if n not in lm_row or n not in bb_row]
        if missing:
            raise ValueError(f"{path}: {len(missing)} names have no annotation row (first: "
                             f"{missing[0]!r}); re-run tools/prepare_celeba.py on this root")
        rows = [lm_row[n] for n in self.names]
        self.keypoints = landmarks[rows].reshape(-1, 5, 2).astype(np.float32)
        self.boxes = boxes[[bb_row[n] for n in self.names]].astype(np.float32)
        self.image_dir = os.path.join(root, IMAGE_DIR)

    def __len__(self) -> int:
        return len(self.names)

    def image_path(self, index: int) -> str:
        return os.path.join(self.image_dir, self.names[index])

    def keypoint_table(self) -> KeypointTable:
        """(landmarks ``[N, 5, 2]``, visible ``[N, 5]`` (all true), face box ``[N, 4]``) of the
        split at original resolution, without decoding any image (for the landmark regression)."""
        return KeypointTable(self.keypoints.copy(), np.ones(self.keypoints.shape[:2], dtype=bool),
                             self.boxes.copy())

    def __getitem__(self, index: int) -> Optional[dict]:
        check_index(index, len(self), f"CelebA {self.split}")
        path = self.image_path(index)
        try:
            image = decode_or_skip(lambda: load_image(path), self.skip_bad_images)
        except FileNotFoundError:
            raise FileNotFoundError(f"CelebA image {path} not found; expected layout:\n{LAYOUT}\n"
                                    f"See {DATASETS_README}") from None
        if image is None:
            return None
        h, w = image.shape[:2]
        out = apply_resize(self.resize, self.image_size, image, keypoints=self.keypoints[index],
                           visible=np.ones(self.num_keypoints, dtype=bool),
                           bbox=self.boxes[index])
        return {
            "image": to_tensor_image(out.image),
            "keypoints": torch.from_numpy(out.keypoints),
            "keypoints_visible": torch.from_numpy(out.visible),
            "bbox": torch.from_numpy(out.bbox),
            "label": torch.tensor(0, dtype=torch.int64),
            "index": torch.tensor(index, dtype=torch.int64),
            "orig_size": torch.tensor([h, w], dtype=torch.int64),
        }
