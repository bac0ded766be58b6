"""DeepFashion In-shop Clothes Retrieval, segmentation subset (``img_highres_seg``).

Layout (as Choudhury et al. 2021 use it; see datasets/deepfashion/README.md)::

    <root>/                                   "In-shop Clothes Retrieval Benchmark"
      Anno/segmentation/                      (img_highres_seg.zip unpacked here)
        img_highres/<MEN|WOMEN>/<category>/<item id>/<nn>_<k>_<view>.jpg
        img_highres/.../<nn>_<k>_<view>_segment.png     colour-coded parts (16 colours)
        DeepFashion_segmentation_train.json
        DeepFashion_segmentation_query.json
        DeepFashion_segmentation_gallery.json

``<root>`` may also be the ``Anno/segmentation`` folder itself (option ``seg_dir`` overrides).
Split lists: either COCO-like ``{"images": [{"file_name": <path relative to Anno/segmentation>,
...}, ...]}`` (the released files) or a plain JSON list of such relative paths. The mask of
``x.jpg`` is ``x_segment.png``.

Splits: ``trainval`` (the train list), ``val`` (10 % of it: ``numpy.random.default_rng(0)
.permutation`` of the sorted train paths, first ``int(0.1 n)``, the rule of CUB's default val split;
our choice, for model selection),
``train`` (trainval minus val), ``query``, ``gallery``, ``test`` = query + gallery (6,922 images,
the evaluation set of Choudhury et al.).

Part labels (``part_mask`` int64): 0 = background, 1..15 = the 15 colours of the official README in
its order (top, skirt, leggings, dress, outer, pants, bag, neckwear, headwear, eyeglass, belt,
footwear, hair, skin, face); -1 = padding (ignore). PNGs are lossless, so colours must match
exactly; an unknown colour is an error naming the file and the colour.

Resize ``longest_pad`` (the protocol; default; ``partformer/data/transforms.py``): the longest side
to S, then pad bottom/right to S x S (image 0, ``part_mask`` -1, ``fg_mask`` 0); the image keeps its
top-left corner so pixel coordinates only scale. The other modes of docs/ARCHITECTURE.md but
``bbox_crop`` (no boxes) work too.
"""
from __future__ import annotations

import json
import os
import warnings
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import Dataset

from partformer.data import register_dataset
from partformer.data.io import (DATASETS_README, check_index, decode_or_skip, load_image,
                                relative_path)
from partformer.data.transforms import apply_resize, check_resize_mode, to_tensor_image

__all__ = ["DeepFashionDataset", "PALETTE", "PART_NAMES", "colour_mask_to_labels",
           "check_deepfashion_layout"]

# (R, G, B) -> label, in the order of the official In-shop README "COLOR MAPPING LABELS" table
PALETTE: Tuple[Tuple[Tuple[int, int, int], str], ...] = (
    ((0, 0, 0), "background"),
    ((255, 250, 250), "top"),
    ((250, 235, 215), "skirt"),
    ((70, 130, 180), "leggings"),
    ((16, 78, 139), "dress"),
    ((255, 250, 205), "outer"),
    ((255, 140, 0), "pants"),
    ((50, 205, 50), "bag"),
    ((220, 220, 220), "neckwear"),
    ((255, 0, 0), "headwear"),
    ((127, 255, 212), "eyeglass"),
    ((0, 100, 0), "belt"),
    ((255, 255, 0), "footwear"),
    ((211, 211, 211), "hair"),
    ((144, 238, 144), "skin"),
    ((245, 222, 179), "face"),
)
PART_NAMES = tuple(name for _, name in PALETTE[1:])  # label k -> PART_NAMES[k - 1]
NUM_PARTS = len(PART_NAMES)
PAD_LABEL = -1
PUBLISHED_TEST_IMAGES = 6922
VAL_FRACTION, VAL_SEED = 0.1, 0
LIST_SPLITS = ("train", "query", "gallery")
SPLITS = ("train", "val", "trainval", "query", "gallery", "test")
LIST_FILE = "DeepFashion_segmentation_{}.json"

LAYOUT = """\
<root>/Anno/segmentation/img_highres/<MEN|WOMEN>/<category>/<id>/*.jpg   (+ *_segment.png)
<root>/Anno/segmentation/DeepFashion_segmentation_{train,query,gallery}.json
(<root> = "In-shop Clothes Retrieval Benchmark"; or pass the Anno/segmentation folder as root)"""

_CODES = np.array([(r << 16) | (g << 8) | b for (r, g, b), _ in PALETTE], dtype=np.int64)
_CODE_ORDER = np.argsort(_CODES)
_SORTED_CODES = _CODES[_CODE_ORDER]


def colour_mask_to_labels(rgb: np.ndarray, path: str = "<array>") -> np.ndarray:
    """uint8 [H, W, 3] RGB colour-coded mask -> int64 [H, W] labels (0 bg, 1..15 parts).

    Raises ``ValueError`` naming ``path`` and the first unknown colour (exact match: PNG is
    lossless, so a near colour means a wrong or re-encoded file)."""
    codes = ((rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8)
             | rgb[..., 2].astype(np.int64))
    pos = np.clip(np.searchsorted(_SORTED_CODES, codes), 0, len(_SORTED_CODES) - 1)
    known = _SORTED_CODES[pos] == codes
    if not known.all():
        bad = int(codes[~known][0])
        colour = ((bad >> 16) & 255, (bad >> 8) & 255, bad & 255)
        n = int((codes == bad).sum())
        raise ValueError(f"{path}: unknown colour RGB{colour} on {n} pixels; the DeepFashion "
                         f"segmentation palette has {len(PALETTE)} colours "
                         f"(partformer.data.deepfashion.PALETTE)")
    return _CODE_ORDER[pos].astype(np.int64)


def find_seg_dir(root: str) -> str:
    """``root/Anno/segmentation`` if it exists, else ``root`` when it holds the split lists."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"DeepFashion root {root} is not a folder; expected layout:\n"
                                f"{LAYOUT}\nSee {DATASETS_README} (DeepFashion section)")
    for cand in (os.path.join(root, "Anno", "segmentation"), root):
        if os.path.isfile(os.path.join(cand, LIST_FILE.format("train"))) or \
                os.path.isdir(os.path.join(cand, "img_highres")):
            return cand
    seg = os.path.join(root, "Anno", "segmentation")
    raise FileNotFoundError(f"no DeepFashion segmentation subset under {root}: expected "
                            f"{LIST_FILE.format('train')} in {seg} (or in {root}). Expected "
                            f"layout:\n{LAYOUT}\nSee {DATASETS_README}")


def read_split_list(path: str) -> List[str]:
    """Relative image paths of a split list (COCO-like ``{"images": [{"file_name"}]}`` or a plain
    JSON list of paths / of ``{"file_name"}`` objects), in file order."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"DeepFashion split list {path} not found; expected layout:\n"
                                f"{LAYOUT}\nSee {DATASETS_README} (DeepFashion section)")
    try:
        with open(path, "r") as f:
            doc = json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from None
    entries = doc.get("images") if isinstance(doc, dict) else doc
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected {{'images': [{{'file_name': ...}}, ...]}} or a JSON "
                         f"list of relative image paths")
    out = []
    for k, e in enumerate(entries):
        name = e.get("file_name") if isinstance(e, dict) else e
        if not isinstance(name, str) or not name:
            raise ValueError(f"{path}: entry {k} has no file name: {e!r}")
        out.append(relative_path(name, f"{path}, entry {k}"))
    if len(set(out)) != len(out):
        raise ValueError(f"{path}: image paths are repeated")
    return out


def mask_path(image_path: str) -> str:
    return os.path.splitext(image_path)[0] + "_segment.png"


def official_list(seg_dir: str, name: str) -> List[str]:
    """The released list ``name`` (train / query / gallery) of relative image paths."""
    return read_split_list(os.path.join(seg_dir, LIST_FILE.format(name)))


def split_files(seg_dir: str, split: str) -> List[str]:
    """Relative image paths of ``split`` (see the module docstring for the split rules)."""
    if split in ("query", "gallery"):
        return official_list(seg_dir, split)
    if split == "test":
        return official_list(seg_dir, "query") + official_list(seg_dir, "gallery")
    trainval = official_list(seg_dir, "train")
    if split == "trainval":
        return trainval
    if split not in ("train", "val"):
        raise ValueError(f"unknown DeepFashion split {split!r}; expected one of {list(SPLITS)}")
    ordered = sorted(trainval)
    n_val = int(VAL_FRACTION * len(ordered))  # as CUB's default val split (floor)
    val = {ordered[i] for i in np.random.default_rng(VAL_SEED).permutation(len(ordered))[:n_val]}
    return [f for f in trainval if (f in val) == (split == "val")]


def check_deepfashion_layout(root: str, check_masks: bool = False) -> Dict[str, int]:
    """Count the images of every split, check that each image and mask exists (and, with
    ``check_masks``, that every mask uses only palette colours). Warns when test != 6,922."""
    seg_dir = find_seg_dir(root)
    counts = {}
    lists = {name: official_list(seg_dir, name) for name in LIST_SPLITS}
    for split, files in lists.items():
        for rel in files:
            for p in (os.path.join(seg_dir, rel), mask_path(os.path.join(seg_dir, rel))):
                if not os.path.isfile(p):
                    raise FileNotFoundError(f"{p} (listed in {LIST_FILE.format(split)}) not found;"
                                            f" expected layout:\n{LAYOUT}")
            if check_masks:
                p = mask_path(os.path.join(seg_dir, rel))
                colour_mask_to_labels(load_image(p), p)
        counts[split] = len(files)
    counts["test"] = counts["query"] + counts["gallery"]
    overlap = set(lists["train"]) & set(lists["query"] + lists["gallery"])
    if overlap:
        raise ValueError(f"{len(overlap)} images are in both train and query/gallery "
                         f"(first: {sorted(overlap)[0]})")
    if counts["test"] != PUBLISHED_TEST_IMAGES:
        warnings.warn(f"DeepFashion test (query + gallery) has {counts['test']} images; the "
                      f"protocol's test set has {PUBLISHED_TEST_IMAGES}")
    return counts


@register_dataset("deepfashion")
class DeepFashionDataset(Dataset):
    """DeepFashion In-shop segmentation subset (no keypoints).

    Sample: ``image`` float32 [3, S, S], ``part_mask`` int64 [S, S] (0 bg, 1..15 parts, -1 padding),
    ``fg_mask`` uint8 (1 = clothes / person), ``label`` 0, ``index``, ``orig_size`` (H, W).

    Args:
        root: "In-shop Clothes Retrieval Benchmark" folder (or its ``Anno/segmentation``).
        split: ``train``, ``val``, ``trainval``, ``query``, ``gallery``, ``test`` (query + gallery).
        image_size: S.
        resize: ``longest_pad`` (protocol, default) or another mode of
            ``partformer.data.transforms`` but ``bbox_crop``.
        skip_bad_images: return ``None`` for an undecodable image or mask (after a warning).
        seg_dir: override the folder holding ``img_highres`` and the split lists.
    """

    num_parts = NUM_PARTS
    part_names = PART_NAMES
    num_part_classes = NUM_PARTS  # C for the pixel protocols (labels 1..C, 0 = bg)

    def __init__(self, root: str, split: str, image_size: int = 256,
                 resize: str = "longest_pad", skip_bad_images: bool = False,
                 seg_dir: Optional[str] = None):
        check_resize_mode(resize, image_size, no_boxes="DeepFashion")
        if split not in SPLITS:
            raise ValueError(f"unknown DeepFashion split {split!r}; expected one of {list(SPLITS)}")
        self.root, self.split, self.image_size, self.resize = root, split, image_size, resize
        self.skip_bad_images = skip_bad_images
        self.seg_dir = seg_dir or find_seg_dir(root)
        self.file_names = split_files(self.seg_dir, split)
        if self.file_names and not os.path.isfile(self.image_path(0)):
            raise FileNotFoundError(f"DeepFashion image {self.image_path(0)} not found; expected "
                                    f"layout:\n{LAYOUT}\nSee {DATASETS_README}")

    def __len__(self) -> int:
        return len(self.file_names)

    def image_path(self, index: int) -> str:
        return os.path.join(self.seg_dir, self.file_names[index])

    def part_mask_full(self, index: int) -> np.ndarray:
        """int64 [H, W] labels (0 bg, 1..15) at the stored resolution."""
        path = mask_path(self.image_path(index))
        return colour_mask_to_labels(load_image(path), path)

    def __getitem__(self, index: int) -> Optional[dict]:
        check_index(index, len(self), f"DeepFashion {self.split}")
        path = self.image_path(index)
        loaded = decode_or_skip(lambda: (load_image(path), self.part_mask_full(index)),
                                self.skip_bad_images)
        if loaded is None:
            return None
        image, part_mask = loaded
        h, w = image.shape[:2]
        if part_mask.shape != (h, w):
            raise ValueError(f"{path}: image is {h}x{w} (HxW) but {mask_path(path)} is "
                             f"{part_mask.shape[0]}x{part_mask.shape[1]}")
        fg = (part_mask > 0).astype(np.uint8)
        r = apply_resize(self.resize, self.image_size, image, masks=(part_mask, fg),
                         mask_fills=(PAD_LABEL, 0))
        part_mask, fg = r.masks
        return {
            "image": to_tensor_image(r.image),
            "part_mask": torch.from_numpy(np.ascontiguousarray(part_mask)),
            "fg_mask": torch.from_numpy(np.ascontiguousarray(fg)),
            "label": torch.tensor(0, dtype=torch.int64),
            "index": torch.tensor(index, dtype=torch.int64),
            "orig_size": torch.tensor([h, w], dtype=torch.int64),
        }
