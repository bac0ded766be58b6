"""PartImageNet (He et al., ECCV 2022): OOD release (COCO polygons) and Seg release (PNG labels).

Assumed layouts (see datasets/partimagenet/README.md; every path below is an option where the real
downloads have been seen to differ)::

    <root>/ood/                          contents of PartImageNet_OOD.zip ("PartImageNet/" folder)
        annotations/train.json           COCO: images[{id, file_name, height, width}],
                                         annotations[{image_id, category_id 0..39, segmentation
                                         (polygons), bbox, area, iscrowd}], categories[40]
        images/train/<wnid>/<file_name>  file_name is "<wnid>_<n>.JPEG" (no class folder)
        splits/{train,val,test}.txt      written by tools/prepare_partimagenet.py
      (also accepted: train.json + train/<wnid>/ at the top level, as unzipped from some mirrors)
    <root>/seg/                          contents of PartImageNet_Seg.zip ("PartImageNet/" folder)
        images/{train,val,test}/<stem>.JPEG
        annotations/{train,val,test}/<stem>.png     uint8: 0..39 = part, 40 = background

``<root>`` may also be the release folder itself, or hold ``PartImageNet_OOD`` /
``PartImageNet_Seg``.

Labels of ``part_mask`` (int64): 0 = background, ``c + 1`` = part category ``c`` (0..39), so
1..40. Seg PNGs map 40 -> 0 and p -> p + 1. OOD polygons are rasterised by pixel-centre sampling
(pixel (i, j) is inside a polygon when its centre (j + 0.5, i + 0.5) is, even-odd rule, half-open on
the right/bottom edges: an axis-aligned w x h box covers exactly w x h pixels, as with pycocotools,
which the PDiscoFormer evaluation uses); the label of a pixel is the argmax over the 40 per-category
coverage counts (annotations of one category add up) and a constant 0.1 background channel
(docs/PROTOCOLS.md), ties between parts going to the first maximum, i.e. the lowest category id.
Annotations with ``area == 0`` or ``iscrowd == 1`` are skipped; a polygon with fewer than 3 points
is replaced by the annotation's box.

OOD splits are ours unless imported: the OOD release's own val/test splits hold classes unseen in
train, so part papers re-split its train split (109 classes, 16,540 images). ``tools/
prepare_partimagenet.py`` either imports PDiscoFormer's published re-split file
(``--split-file train_test_split_pimagenet_ood.txt``) or draws a seeded 10 % test split per class;
both carve ``val`` (10 % per class, seeded) from the remaining training images, and both drop
images without any usable annotation (as PDiscoFormer's loader does).
"""
from __future__ import annotations

import json
import math
import os
import warnings
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from partformer.data import register_dataset
from partformer.data.io import (DATASETS_README, check_index, decode_or_skip, load_image, load_mask,
                                relative_path, require_file, write_splits)
from partformer.data.transforms import apply_resize, check_resize_mode, to_tensor_image

__all__ = ["PartImageNetDataset", "NUM_PART_CATEGORIES", "rasterize_polygon", "rasterize_parts",
           "seg_png_to_part_mask", "find_release_dir", "prepare_partimagenet_ood",
           "check_partimagenet_seg"]

NUM_PART_CATEGORIES = 40
SEG_BACKGROUND = 40
BACKGROUND_SCORE = 0.1  # docs/PROTOCOLS.md: constant background channel in the per-pixel argmax
PUBLISHED = {"ood_train_images": 16540, "ood_train_classes": 109, "seg_test_images": 2405}
DEFAULT_TEST_FRACTION = 0.1
DEFAULT_VAL_FRACTION = 0.1
DEFAULT_SEED = 0
RELEASES = ("ood", "seg")
OOD_SPLITS = ("train", "val", "test", "trainval")
SEG_SPLITS = ("train", "val", "test")
SPLIT_DIR = "splits"

_RELEASE_FOLDERS = {"ood": ("ood", "PartImageNet_OOD"), "seg": ("seg", "PartImageNet_Seg")}
# where the OOD train annotations / images have been seen, relative to the release folder
OOD_JSON_CANDIDATES = ("annotations/train.json", "train.json", "annotations/train/train.json")
OOD_IMAGE_DIR_CANDIDATES = ("images/train", "train")

LAYOUT = """\
<root>/ood/annotations/train.json          (PartImageNet_OOD, COCO polygons)
<root>/ood/images/train/<wnid>/<wnid>_<n>.JPEG
<root>/ood/splits/{train,val,test}.txt     (python tools/prepare_partimagenet.py --root <root>)
<root>/seg/images/{train,val,test}/<stem>.JPEG         (PartImageNet_Seg)
<root>/seg/annotations/{train,val,test}/<stem>.png      (0..39 parts, 40 = background)"""


# --------------------------------------------------------------------------------------------------
# layout
# --------------------------------------------------------------------------------------------------

def _is_release_dir(path: str, release: str) -> bool:
    if release == "ood":
        return any(os.path.isfile(os.path.join(path, c)) for c in OOD_JSON_CANDIDATES)
    return any(os.path.isdir(os.path.join(path, "annotations", s)) for s in SEG_SPLITS)


def find_release_dir(root: str, release: str) -> str:
    """The folder of ``release`` under ``root``: ``root/<ood|seg>``, ``root/PartImageNet_<OOD|Seg>``
    (each optionally with a ``PartImageNet`` subfolder, as the zips unpack) or ``root`` itself."""
    if release not in RELEASES:
        raise ValueError(f"unknown PartImageNet release {release!r}; expected one of {RELEASES}")
    if not os.path.isdir(root):
        raise FileNotFoundError(f"PartImageNet root {root} is not a folder; expected layout:\n"
                                f"{LAYOUT}\nSee {DATASETS_README} (PartImageNet section)")
    tried = []
    for sub in _RELEASE_FOLDERS[release]:
        for cand in (os.path.join(root, sub), os.path.join(root, sub, "PartImageNet")):
            tried.append(cand)
            if _is_release_dir(cand, release):
                return cand
    tried.append(root)
    if _is_release_dir(root, release):
        return root
    what = ("annotations/train.json (or train.json)" if release == "ood"
            else "annotations/{train,val,test}/")
    raise FileNotFoundError(f"PartImageNet {release.upper()} release not found: none of "
                            f"{tried} holds {what}. Expected layout:\n{LAYOUT}\n"
                            f"See {DATASETS_README} (PartImageNet section)")


def _first_existing(base: str, candidates: Sequence[str], kind: str) -> str:
    for c in candidates:
        p = os.path.join(base, c)
        if (os.path.isfile(p) if kind == "file" else os.path.isdir(p)):
            return p
    raise FileNotFoundError(f"none of {[os.path.join(base, c) for c in candidates]} exists; "
                            f"expected layout:\n{LAYOUT}\nSee {DATASETS_README}")


def _wnid(file_name: str) -> str:
    return os.path.basename(file_name).split("_")[0]


def _resolve_image(image_dir: str, file_name: str) -> str:
    """``image_dir/file_name`` or ``image_dir/<wnid>/<basename>`` (the OOD JSON omits the class
    folder its images sit in); the first that exists, else the class-folder form."""
    direct = os.path.join(image_dir, file_name)
    if os.path.isfile(direct):
        return direct
    return os.path.join(image_dir, _wnid(file_name), os.path.basename(file_name))


# --------------------------------------------------------------------------------------------------
# rasterisation
# --------------------------------------------------------------------------------------------------

def rasterize_polygon(xy: np.ndarray, height: int, width: int) -> np.ndarray:
    """bool [H, W]: pixels whose centre lies inside the polygon ``xy`` float [V, 2] (x, y).

    Scanline fill at pixel centres, even-odd rule, edges half-open (a point exactly on a left/top
    edge is inside, on a right/bottom edge outside), so a box polygon ``(x0, y0)-(x1, y1)`` with
    integer corners covers columns x0..x1-1 and rows y0..y1-1.
    """
    out = np.zeros((height, width), dtype=bool)
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    if len(xy) < 3 or height == 0 or width == 0:
        return out
    x0, y0 = xy[:, 0], xy[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    lo = max(int(math.floor(y0.min() - 0.5)), 0)
    hi = min(int(math.ceil(y0.max() - 0.5)) + 1, height)
    if lo >= hi:
        return out
    yc = (np.arange(lo, hi, dtype=np.float64) + 0.5)[:, None]            # [R, 1] row centres
    cross = ((y0 <= yc) & (yc < y1)) | ((y1 <= yc) & (yc < y0))          # [R, E]
    rows, edges = np.nonzero(cross)
    if len(rows) == 0:
        return out
    t = (yc[rows, 0] - y0[edges]) / (y1[edges] - y0[edges])  # crossing edges are never horizontal
    xs = x0[edges] + t * (x1[edges] - x0[edges])
    order = np.lexsort((xs, rows))
    rows, xs = rows[order], xs[order]
    # every row is crossed an even number of times: consecutive crossings pair into spans
    span_rows = rows[0::2]
    start = np.clip(np.ceil(xs[0::2] - 0.5), 0, width).astype(np.int64)   # first j: j + .5 >= xa
    stop = np.clip(np.ceil(xs[1::2] - 0.5), 0, width).astype(np.int64)    # first j: j + .5 >= xb
    diff = np.zeros((hi - lo, width + 1), dtype=np.int32)
    np.add.at(diff, (span_rows, start), 1)
    np.add.at(diff, (span_rows, stop), -1)
    out[lo:hi] = np.cumsum(diff[:, :width], axis=1) > 0
    return out


def rasterize_parts(height: int, width: int,
                    annotations: Sequence[Tuple[int, Sequence[np.ndarray]]]) -> np.ndarray:
    """int64 [H, W] part label map: 0 = background, ``c + 1`` for part category ``c``.

    ``annotations``: (category id 0..39, polygons [V, 2] with V >= 3) per usable annotation. The
    polygons of one annotation are united; annotations of one category add up; the label is the
    argmax over the 40 counts and a constant 0.1 background score, ties to the lowest category id.
    """
    counts: Dict[int, np.ndarray] = {}
    for cat, polygons in annotations:
        m = np.zeros((height, width), dtype=bool)
        for poly in polygons:
            m |= rasterize_polygon(poly, height, width)
        if cat in counts:
            counts[cat] += m
        else:
            counts[cat] = m.astype(np.int32)
    label = np.zeros((height, width), dtype=np.int64)
    if not counts:
        return label
    cats = sorted(counts)
    stack = np.stack([counts[c] for c in cats])       # [C, H, W], category ids ascending
    best = stack.argmax(0)                              # first maximum = lowest id on ties
    hit = np.take_along_axis(stack, best[None], 0)[0] > BACKGROUND_SCORE
    label[hit] = np.asarray(cats, dtype=np.int64)[best[hit]] + 1
    return label


_SEG_LUT = np.full(256, -2, dtype=np.int64)
_SEG_LUT[:NUM_PART_CATEGORIES] = np.arange(1, NUM_PART_CATEGORIES + 1)
_SEG_LUT[SEG_BACKGROUND] = 0


def seg_png_to_part_mask(png: np.ndarray, path: str = "<array>") -> np.ndarray:
    """Seg release label PNG (0..39 parts, 40 background) -> int64 part mask (0 bg, 1..40)."""
    if png.dtype != np.uint8:
        if png.max(initial=0) > 255:
            raise ValueError(f"{path}: label value {int(png.max())} outside 0..40")
        png = png.astype(np.uint8)
    out = _SEG_LUT[png]
    if (out < 0).any():
        bad = int(png[out < 0][0])
        raise ValueError(f"{path}: label value {bad} outside 0..39 (parts) / 40 (background); is "
                         f"this a PartImageNet_Seg annotation PNG?")
    return out


# --------------------------------------------------------------------------------------------------
# COCO annotations (OOD release)
# --------------------------------------------------------------------------------------------------

def load_coco(path: str) -> dict:
    require_file(path, LAYOUT)
    try:
        with open(path, "r") as f:
            data = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e}); is the download complete?") from None
    for key in ("images", "annotations"):
        if not isinstance(data, dict) or key not in data:
            raise ValueError(f"{path}: expected a COCO JSON object with 'images' and "
                             f"'annotations' lists, key {key!r} missing")
    for k, im in enumerate(data["images"]):
        if not isinstance(im, dict) or not isinstance(im.get("file_name"), str):
            raise ValueError(f"{path}: images[{k}] has no 'file_name' string")
        relative_path(im["file_name"], f"{path}, images[{k}] (id {im.get('id')})")
    return data


def _usable(ann: dict) -> bool:
    return ann.get("area", 1) != 0 and ann.get("iscrowd", 0) != 1


def _ann_polygons(ann: dict, path: str) -> List[np.ndarray]:
    """Polygons [V, 2] of a usable annotation; one with < 3 points is replaced by the box."""
    seg = ann.get("segmentation")
    if isinstance(seg, dict):
        raise ValueError(f"{path}: annotation id {ann.get('id')} has an RLE segmentation; only "
                         f"polygons are expected in PartImageNet (iscrowd == 0)")
    if not isinstance(seg, list):
        raise ValueError(f"{path}: annotation id {ann.get('id')}: 'segmentation' must be a list "
                         f"of polygons, got {type(seg).__name__}")
    x, y, w, h = (float(v) for v in ann["bbox"])
    box = np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]])
    polys = []
    for p in seg or [[]]:
        p = np.asarray(p, dtype=np.float64).reshape(-1)
        if len(p) % 2:
            raise ValueError(f"{path}: annotation id {ann.get('id')}: polygon with an odd number "
                             f"of coordinates ({len(p)})")
        polys.append(p.reshape(-1, 2) if len(p) >= 6 else box)
    return polys


class _PackedAnnotations:
    """Polygons of many images in flat numpy arrays (cheap to share with DataLoader workers)."""

    def __init__(self, per_image: List[List[Tuple[int, List[np.ndarray]]]]):
        cats, ann_poly, poly_pt, pts, img_ann = [], [0], [0], [], [0]
        for anns in per_image:
            for cat, polys in anns:
                cats.append(cat)
                for p in polys:
                    pts.append(p)
                    poly_pt.append(poly_pt[-1] + len(p))
                ann_poly.append(len(poly_pt) - 1)
            img_ann.append(len(cats))
        self.cats = np.asarray(cats, dtype=np.int64)
        self.ann_poly = np.asarray(ann_poly, dtype=np.int64)
        self.poly_pt = np.asarray(poly_pt, dtype=np.int64)
        self.points = (np.concatenate(pts).astype(np.float32) if pts
                       else np.zeros((0, 2), np.float32))
        self.img_ann = np.asarray(img_ann, dtype=np.int64)

    def image(self, i: int) -> List[Tuple[int, List[np.ndarray]]]:
        out = []
        for a in range(self.img_ann[i], self.img_ann[i + 1]):
            polys = [self.points[self.poly_pt[p]:self.poly_pt[p + 1]]
                     for p in range(self.ann_poly[a], self.ann_poly[a + 1])]
            out.append((int(self.cats[a]), polys))
        return out


def _group_usable(data: dict, path: str) -> Dict[int, List[Tuple[int, List[np.ndarray]]]]:
    by_image: Dict[int, List[Tuple[int, List[np.ndarray]]]] = {}
    for ann in data["annotations"]:
        if not _usable(ann):
            continue
        cat = int(ann["category_id"])
        if not 0 <= cat < NUM_PART_CATEGORIES:
            raise ValueError(f"{path}: annotation id {ann.get('id')} has category_id {cat}; "
                             f"expected 0..{NUM_PART_CATEGORIES - 1}")
        by_image.setdefault(int(ann["image_id"]), []).append((cat, _ann_polygons(ann, path)))
    return by_image


# --------------------------------------------------------------------------------------------------
# preparation (tools/prepare_partimagenet.py)
# --------------------------------------------------------------------------------------------------

def _split_counts(n: int, fraction: float) -> int:
    return int(math.floor(fraction * n + 0.5))


def read_pdiscoformer_split(path: str) -> Dict[int, Tuple[int, str]]:
    """PDiscoFormer's ``train_test_split_pimagenet_ood.txt``: tab-separated
    ``<image_id> <is_test 0|1> <label_id> <wnid> <file_name>``
    -> {image_id: (is_test, file_name)}."""
    require_file(path, "PDiscoFormer split file: <image_id>\\t<is_test>\\t<label_id>\\t<wnid>\\t"
                       "<file_name> per line")
    out = {}
    with open(path, "r", encoding="utf-8-sig") as f:
        for k, line in enumerate(f, 1):
            fields = line.split()
            if not fields:
                continue
            if len(fields) != 5 or fields[1] not in ("0", "1"):
                raise ValueError(f"{path}, line {k}: expected <image_id> <is_test 0|1> <label_id> "
                                 f"<wnid> <file_name>, found {line.strip()!r}")
            try:
                out[int(fields[0])] = (int(fields[1]), fields[4])
            except ValueError:
                raise ValueError(f"{path}, line {k}: image id {fields[0]!r} is not an "
                                 f"integer") from None
    return out


def prepare_partimagenet_ood(root: str, split_file: Optional[str] = None,
                             test_fraction: float = DEFAULT_TEST_FRACTION,
                             val_fraction: float = DEFAULT_VAL_FRACTION, seed: int = DEFAULT_SEED,
                             annotation_file: Optional[str] = None,
                             image_dir: Optional[str] = None) -> Dict[str, object]:
    """Re-split the OOD release's train split into train / val / test and write
    ``<release dir>/splits/{train,val,test}.txt`` (sorted ``file_name`` values of the JSON) and
    ``prepare_info.json``. Returns the info dict (counts, source, rule)."""
    release_dir = find_release_dir(root, "ood") if annotation_file is None else root
    json_path = annotation_file or _first_existing(release_dir, OOD_JSON_CANDIDATES, "file")
    image_dir = image_dir or _first_existing(release_dir, OOD_IMAGE_DIR_CANDIDATES, "dir")
    data = load_coco(json_path)
    usable = _group_usable(data, json_path)
    images = data["images"]
    names = [im["file_name"] for im in images]
    if len(set(names)) != len(names):
        raise ValueError(f"{json_path}: file names are repeated")
    missing = [n for n in names if not os.path.isfile(_resolve_image(image_dir, n))]
    if missing:
        raise FileNotFoundError(f"{len(missing)} of {len(names)} images listed in {json_path} are "
                                f"not under {image_dir} (first: {missing[0]}); expected layout:\n"
                                f"{LAYOUT}")
    kept = [im for im in images if int(im["id"]) in usable]
    dropped = len(images) - len(kept)

    by_class: Dict[str, List[str]] = {}
    for im in kept:
        by_class.setdefault(_wnid(im["file_name"]), []).append(im["file_name"])
    if split_file:
        test = _published_test_files(split_file, images, kept, json_path)
        source = f"PDiscoFormer published split ({os.path.basename(split_file)})"
    else:
        test = _draw_per_class(by_class, test_fraction, seed)
        source = (f"ours: per class, numpy.random.default_rng({seed}).permutation of the sorted "
                  f"file names, first floor({test_fraction} * n + 0.5) -> test")
    val = _draw_per_class(by_class, val_fraction, seed + 1, exclude=test)
    all_kept = sorted(im["file_name"] for im in kept)
    splits = {"test": [n for n in all_kept if n in test],
              "val": [n for n in all_kept if n in val],
              "train": [n for n in all_kept if n not in test and n not in val]}

    out_dir = os.path.join(release_dir, SPLIT_DIR)
    info = {"annotation_file": os.path.abspath(json_path), "split_dir": os.path.abspath(out_dir),
            "test_split": source,
            "val_split": (f"per class, numpy.random.default_rng({seed + 1}).permutation of the "
                          f"sorted non-test file names, first floor({val_fraction} * n + 0.5) -> val"),
            "images_in_json": len(images), "classes": len(by_class),
            "dropped_without_usable_annotation": dropped,
            "counts": {k: len(v) for k, v in splits.items()}}
    write_splits(out_dir, splits, info)
    if len(images) != PUBLISHED["ood_train_images"] or \
            len({_wnid(n) for n in names}) != PUBLISHED["ood_train_classes"]:
        warnings.warn(f"{json_path}: {len(images)} images of {len({_wnid(n) for n in names})} "
                      f"classes; the OOD train split has {PUBLISHED['ood_train_images']} images of "
                      f"{PUBLISHED['ood_train_classes']} classes: is this the OOD release's "
                      f"train.json?")
    return info


def _published_test_files(split_file: str, images, kept, json_path: str) -> set:
    """The test files of PDiscoFormer's split file (checked against every image of the JSON)."""
    published = read_pdiscoformer_split(split_file)
    for im in images:
        iid = int(im["id"])
        if iid not in published:
            raise ValueError(f"{split_file}: no row for image id {iid} ({im['file_name']}) of "
                             f"{json_path}; the split file belongs to another annotation file")
        if os.path.basename(published[iid][1]) != os.path.basename(im["file_name"]):
            raise ValueError(f"{split_file}: image id {iid} is {published[iid][1]!r} there but "
                             f"{im['file_name']!r} in {json_path}: not the same release")
    return {im["file_name"] for im in kept if published[int(im["id"])][0] == 1}


def _draw_per_class(by_class: Dict[str, List[str]], fraction: float, seed: int,
                    exclude: Optional[set] = None) -> set:
    """Per class (classes in sorted order), ``floor(fraction * n + 0.5)`` of its sorted files not
    in ``exclude``, the first of ``numpy.random.default_rng(seed)``'s permutation."""
    rng = np.random.default_rng(seed)
    out: set = set()
    for wnid in sorted(by_class):
        files = sorted(f for f in by_class[wnid] if not exclude or f not in exclude)
        pick = rng.permutation(len(files))[:_split_counts(len(files), fraction)]
        out.update(files[i] for i in pick)
    return out


def _seg_dirs(release_dir: str, split: str) -> Tuple[str, str]:
    return (os.path.join(release_dir, "annotations", split),
            os.path.join(release_dir, "images", split))


def _seg_stems(ann_dir: str) -> List[str]:
    if not os.path.isdir(ann_dir):
        raise FileNotFoundError(f"PartImageNet_Seg annotation folder {ann_dir} not found; expected "
                                f"layout:\n{LAYOUT}\nSee {DATASETS_README}")
    return sorted(f[:-4] for f in os.listdir(ann_dir) if f.lower().endswith(".png"))


_IMAGE_EXTS = (".JPEG", ".jpg", ".jpeg", ".JPG", ".png")


def _seg_image(image_dir: str, stem: str) -> Optional[str]:
    for sub in ("", _wnid(stem)):
        for ext in _IMAGE_EXTS:
            p = os.path.join(image_dir, sub, stem + ext)
            if os.path.isfile(p):
                return p
    return None


def check_partimagenet_seg(root: str, check_masks: bool = False) -> Dict[str, int]:
    """Count the Seg release's images per split, check each label PNG has its image (and, with
    ``check_masks``, that label values are in 0..40). Warns when test is not 2,405 images."""
    release_dir = find_release_dir(root, "seg")
    counts = {}
    for split in SEG_SPLITS:
        ann_dir, image_dir = _seg_dirs(release_dir, split)
        if not os.path.isdir(ann_dir):
            continue
        stems = _seg_stems(ann_dir)
        missing = [s for s in stems if _seg_image(image_dir, s) is None]
        if missing:
            raise FileNotFoundError(f"{len(missing)} label PNGs of {ann_dir} have no image in "
                                    f"{image_dir} (first: {missing[0]}); expected layout:\n"
                                    f"{LAYOUT}")
        if check_masks:
            for s in stems:
                p = os.path.join(ann_dir, s + ".png")
                seg_png_to_part_mask(load_mask(p), p)
        counts[split] = len(stems)
    if "test" not in counts:
        raise FileNotFoundError(f"{release_dir}/annotations/test not found; expected layout:\n"
                                f"{LAYOUT}")
    if counts["test"] != PUBLISHED["seg_test_images"]:
        warnings.warn(f"PartImageNet_Seg test has {counts['test']} images, the official test split "
                      f"has {PUBLISHED['seg_test_images']}")
    return counts


# --------------------------------------------------------------------------------------------------
# dataset
# --------------------------------------------------------------------------------------------------

@register_dataset("partimagenet")
class PartImageNetDataset(Dataset):
    """PartImageNet part segmentation (no keypoints).

    Sample: ``image`` float32 [3, S, S'], ``part_mask`` int64 [S, S'] (0 = background, 1..40 =
    part category + 1), ``fg_mask`` uint8 (part_mask > 0), ``label``, ``index``, ``orig_size``.

    Args:
        root: see the module docstring / datasets/partimagenet/README.md.
        split: OOD release: ``train``, ``val``, ``test``, ``trainval`` (our or PDiscoFormer's
            re-split of the OOD train split, written by tools/prepare_partimagenet.py); Seg release:
            the official ``train``, ``val``, ``test``.
        image_size, resize: docs/ARCHITECTURE.md resize modes (masks use nearest).
        release: ``"ood"`` or ``"seg"``.
        class_conditioned: when true, ``label`` is the ImageNet class of the image, 0-based among
            the release's training classes sorted by WordNet id (``self.class_names``; 109 for OOD,
            those of the Seg train/val/test folders for Seg), for class-conditioned methods
            (PDiscoFormer-style classification heads). When false (default) ``label`` is 0 for
            every image, as for the other unlabelled part-discovery sets, so that an unsupervised
            trainer cannot use class supervision by accident; ``self.class_labels`` still holds
            the class of every image.
        skip_bad_images: return ``None`` for an undecodable image (after a warning naming it).
        annotation_file, image_dir: OOD only; override the auto-detected train.json / image folder.
    """

    num_part_categories = NUM_PART_CATEGORIES
    num_part_classes = NUM_PART_CATEGORIES  # C for the pixel protocols (labels 1..C, 0 = bg)

    def __init__(self, root: str, split: str, image_size: int = 256, resize: str = "whole",
                 release: str = "ood", class_conditioned: bool = False,
                 skip_bad_images: bool = False, annotation_file: Optional[str] = None,
                 image_dir: Optional[str] = None):
        check_resize_mode(resize, image_size, no_boxes="PartImageNet")
        if release not in RELEASES:
            raise ValueError(f"unknown PartImageNet release {release!r}; expected one of "
                             f"{list(RELEASES)}")
        valid = OOD_SPLITS if release == "ood" else SEG_SPLITS
        if split not in valid:
            raise ValueError(f"unknown PartImageNet {release.upper()} split {split!r}; "
                             f"expected one of {list(valid)}")
        self.root, self.split, self.release = root, split, release
        self.image_size, self.resize = image_size, resize
        self.class_conditioned, self.skip_bad_images = class_conditioned, skip_bad_images
        if release == "ood":
            self._init_ood(root, split, annotation_file, image_dir)
        else:
            self._init_seg(root, split)
        index = {w: i for i, w in enumerate(self.class_names)}
        self.class_labels = np.asarray([index[_wnid(n)] for n in self.file_names], dtype=np.int64)
        if len(self.file_names):
            first = self.image_path(0)
            if not os.path.isfile(first):
                raise FileNotFoundError(f"PartImageNet image {first} not found; expected layout:\n"
                                        f"{LAYOUT}\nSee {DATASETS_README}")

    # ---- OOD: COCO polygons + our split lists
    def _init_ood(self, root, split, annotation_file, image_dir):
        release_dir = find_release_dir(root, "ood") if annotation_file is None else root
        json_path = annotation_file or _first_existing(release_dir, OOD_JSON_CANDIDATES, "file")
        self.image_dir = image_dir or _first_existing(release_dir, OOD_IMAGE_DIR_CANDIDATES, "dir")
        parts = ("train", "val") if split == "trainval" else (split,)
        wanted: List[str] = []
        for s in parts:
            path = os.path.join(release_dir, SPLIT_DIR, f"{s}.txt")
            if not os.path.isfile(path):
                raise FileNotFoundError(
                    f"PartImageNet OOD split list {path} not found: make the re-split once with\n"
                    f"    python tools/prepare_partimagenet.py --root {root}\n"
                    f"See {DATASETS_README} (PartImageNet section)")
            with open(path) as f:
                wanted += [ln.strip() for ln in f if ln.strip()]
        if split == "trainval":
            wanted = sorted(wanted)
        data = load_coco(json_path)
        by_name = {im["file_name"]: im for im in data["images"]}
        unknown = [n for n in wanted if n not in by_name]
        if unknown:
            raise ValueError(f"{len(unknown)} file names of the {split} split list are not in "
                             f"{json_path} (first: {unknown[0]!r}); re-run "
                             f"tools/prepare_partimagenet.py")
        usable = _group_usable(data, json_path)
        self.class_names = sorted({_wnid(im["file_name"]) for im in data["images"]})
        self.file_names = wanted
        images = [by_name[n] for n in wanted]
        self.sizes = np.asarray([(int(im["height"]), int(im["width"])) for im in images],
                                dtype=np.int64).reshape(-1, 2)
        self._anns = _PackedAnnotations([usable.get(int(im["id"]), []) for im in images])

    # ---- Seg: PNG label maps, official splits
    def _init_seg(self, root, split):
        release_dir = find_release_dir(root, "seg")
        self.ann_dir, self.image_dir = _seg_dirs(release_dir, split)
        self.file_names = _seg_stems(self.ann_dir)
        wnids = set()
        for s in SEG_SPLITS:
            d = _seg_dirs(release_dir, s)[0]
            if os.path.isdir(d):
                wnids.update(_wnid(n) for n in _seg_stems(d))
        self.class_names = sorted(wnids)

    def __len__(self) -> int:
        return len(self.file_names)

    def image_path(self, index: int) -> str:
        if self.release == "ood":
            return _resolve_image(self.image_dir, self.file_names[index])
        stem = self.file_names[index]
        return _seg_image(self.image_dir, stem) or os.path.join(self.image_dir, stem + ".JPEG")

    def part_mask_full(self, index: int) -> np.ndarray:
        """int64 [H, W] part labels (0 bg, 1..40) at the stored image resolution."""
        if self.release == "ood":
            h, w = (int(v) for v in self.sizes[index])
            return rasterize_parts(h, w, self._anns.image(index))
        path = os.path.join(self.ann_dir, self.file_names[index] + ".png")
        return seg_png_to_part_mask(load_mask(path), path)

    def __getitem__(self, index: int) -> Optional[dict]:
        check_index(index, len(self), f"PartImageNet {self.split}")
        path = self.image_path(index)
        image = decode_or_skip(lambda: load_image(path), self.skip_bad_images)
        if image is None:
            return None
        h, w = image.shape[:2]
        part_mask = self.part_mask_full(index)
        if part_mask.shape != (h, w):
            raise ValueError(f"{path}: image is {h}x{w} (HxW) but its part annotation is "
                             f"{part_mask.shape[0]}x{part_mask.shape[1]}")
        fg = (part_mask > 0).astype(np.uint8)
        out = apply_resize(self.resize, self.image_size, image, masks=(part_mask, fg))
        label = int(self.class_labels[index]) if self.class_conditioned else 0
        return {
            "image": to_tensor_image(out.image),
            "part_mask": torch.from_numpy(np.ascontiguousarray(out.masks[0])),
            "fg_mask": torch.from_numpy(np.ascontiguousarray(out.masks[1])),
            "label": torch.tensor(label, dtype=torch.int64),
            "index": torch.tensor(index, dtype=torch.int64),
            "orig_size": torch.tensor([h, w], dtype=torch.int64),
        }
