"""Writers of tiny fake benchmark trees in the exact on-disk formats of the real downloads.

Used by the dataset tests (and usable by any other test that needs a CelebA-wild/MAFL,
PartImageNet or DeepFashion tree). Each writer reproduces the quirks of the real files that a
loader must survive:

- CelebA: a count line and a column-name line before the rows of ``list_landmarks_celeba.txt`` /
  ``list_bbox_celeba.txt``, space-aligned columns, a missing final newline, a partition file without
  header, MAFL lists in a separate folder.
- PartImageNet (OOD release): COCO JSON whose ``file_name`` has no class folder while the images sit
  in ``images/train/<wnid>/``; a polygon with fewer than 3 points, an ``area == 0`` annotation, an
  ``iscrowd == 1`` annotation, overlapping parts, an image without any usable annotation.
- PartImageNet (Seg release): flat ``images/<split>/*.JPEG`` and ``annotations/<split>/*.png`` with
  labels 0..39 and 40 = background.
- DeepFashion In-shop segmentation subset: ``img_highres/<GENDER>/<category>/<id>/*.jpg`` with
  colour-coded ``*_segment.png`` and COCO-like ``DeepFashion_segmentation_<split>.json`` lists.

Images are tiny (tens of pixels) so that the tests stay fast. Each writer returns a small dict with
what a test needs to know about the tree (paths, expected memberships).
"""
from __future__ import annotations

import json
import os
from typing import Dict, List, Sequence, Tuple

import cv2
import numpy as np


def _write_jpeg(path: str, width: int, height: int, seed: int) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(seed)
    # smooth colours compress well and survive JPEG without surprises
    base = rng.integers(40, 216, size=3)
    yy, xx = np.mgrid[0:height, 0:width]
    img = np.empty((height, width, 3), dtype=np.uint8)
    for c in range(3):
        img[..., c] = np.clip(base[c] + (xx * (c + 1) + yy) % 32, 0, 255)
    if not cv2.imwrite(path, img[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90]):
        raise OSError(f"could not write {path}")


def _write_png(path: str, array: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if array.ndim == 3:
        array = array[:, :, ::-1]  # RGB -> cv2's BGR
    if not cv2.imwrite(path, np.ascontiguousarray(array)):
        raise OSError(f"could not write {path}")


def _write_text(path: str, lines: Sequence[str], final_newline: bool = True) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    text = "\n".join(lines) + ("\n" if final_newline else "")
    with open(path, "w") as f:
        f.write(text)


# --------------------------------------------------------------------------------------------------
# CelebA in the wild + MAFL
# --------------------------------------------------------------------------------------------------

# name: (width, height, face box (x, y, w, h), eval partition, MAFL list or None)
# The box / image area ratio decides the >= 30 % filter; the comment gives it.
CELEBA_IMAGES: Dict[str, Tuple[int, int, Tuple[int, int, int, int], int, str]] = {
    "000001.jpg": (40, 50, (5, 5, 25, 40), 0, ""),            # 0.50  keep -> trainval
    "000002.jpg": (40, 50, (10, 10, 20, 20), 0, ""),          # 0.20  drop
    "000003.jpg": (100, 100, (20, 20, 50, 60), 0, ""),        # 0.30  exactly: keep -> trainval
    "000004.jpg": (40, 40, (4, 4, 32, 30), 0, "testing"),     # 0.60  MAFL test (not in trainval)
    "000005.jpg": (50, 40, (5, 5, 40, 20), 0, "training"),    # 0.40  MAFL train and trainval
    "000006.jpg": (40, 50, (5, 5, 25, 40), 1, "training"),    # 0.50  MAFL train only
    "000007.jpg": (40, 50, (5, 5, 25, 40), 2, "testing"),     # 0.50  MAFL test
    "000008.jpg": (40, 50, (5, 5, 10, 20), 2, "testing"),     # 0.10  MAFL test, dropped
    "000009.jpg": (100, 100, (10, 10, 58, 50), 0, ""),        # 0.29  drop (just below)
    "000010.jpg": (30, 30, (1, 1, 27, 27), 0, ""),            # 0.81  keep -> trainval
    "000011.jpg": (40, 50, (5, 5, 25, 40), 1, ""),            # 0.50  val partition, no MAFL: unused
    "000012.jpg": (40, 50, (2, 2, 30, 30), 0, "training"),    # 0.45  MAFL train and trainval
}
CELEBA_EXPECTED = {
    "trainval": ["000001.jpg", "000003.jpg", "000005.jpg", "000010.jpg", "000012.jpg"],
    "mafl_train": ["000005.jpg", "000006.jpg", "000012.jpg"],
    "mafl_test": ["000004.jpg", "000007.jpg"],
}


def celeba_landmarks(name: str) -> np.ndarray:
    """The fake landmarks of ``name``: float [5, 2] (x, y) inside its face box, in the CelebA order
    left eye, right eye, nose, left mouth, right mouth (integers, as in the real file)."""
    _, _, (x, y, w, h), _, _ = CELEBA_IMAGES[name]
    rel = np.array([[0.3, 0.35], [0.7, 0.35], [0.5, 0.55], [0.35, 0.75], [0.65, 0.75]])
    return np.round(np.array([x, y]) + rel * np.array([w, h])).astype(np.float64)


def write_celeba_tree(root: str, mafl_dir: str = None) -> Dict[str, str]:
    """Write ``Img/img_celeba``, ``Anno`` and ``Eval`` under ``root`` and the MAFL lists under
    ``mafl_dir`` (default ``root/MAFL``). Returns ``{"root": ..., "mafl": ...}``."""
    mafl_dir = mafl_dir or os.path.join(root, "MAFL")
    names = sorted(CELEBA_IMAGES)
    for i, name in enumerate(names):
        w, h = CELEBA_IMAGES[name][:2]
        _write_jpeg(os.path.join(root, "Img", "img_celeba", name), w, h, seed=i)

    lm_header = ("lefteye_x lefteye_y righteye_x righteye_y nose_x nose_y "
                 "leftmouth_x leftmouth_y rightmouth_x rightmouth_y")
    lm_rows = []
    for name in names:
        vals = celeba_landmarks(name).reshape(-1).astype(int)
        # the real file pads columns with spaces to align them
        lm_rows.append(name + " " + " ".join(f"{v:>4d}" for v in vals))
    # the real list files are inconsistent about the final newline: leave it out here
    _write_text(os.path.join(root, "Anno", "list_landmarks_celeba.txt"),
                [str(len(names)), lm_header] + lm_rows, final_newline=False)

    bb_rows = []
    for name in names:
        x, y, w, h = CELEBA_IMAGES[name][2]
        bb_rows.append(f"{name}    {x:>3d} {y:>3d} {w:>3d} {h:>3d}")
    _write_text(os.path.join(root, "Anno", "list_bbox_celeba.txt"),
                [str(len(names)), "image_id x_1 y_1 width height"] + bb_rows)

    _write_text(os.path.join(root, "Eval", "list_eval_partition.txt"),
                [f"{name} {CELEBA_IMAGES[name][3]}" for name in names])

    for which in ("training", "testing"):
        listed = [n for n in names if CELEBA_IMAGES[n][4] == which]
        _write_text(os.path.join(mafl_dir, f"{which}.txt"), listed)
    return {"root": root, "mafl": mafl_dir}


# --------------------------------------------------------------------------------------------------
# PartImageNet
# --------------------------------------------------------------------------------------------------

PARTIMAGENET_SUPERCATEGORIES = {
    "Aeroplane": ["Head", "Body", "Engine", "Wing", "Tail"],
    "Bicycle": ["Head", "Body", "Seat", "Tier"],
    "Biped": ["Head", "Body", "Hand", "Foot", "Tail"],
    "Bird": ["Head", "Body", "Wing", "Foot", "Tail"],
    "Boat": ["Body", "Sail"],
    "Bottle": ["Mouth", "Body"],
    "Car": ["Body", "Tier", "Side Mirror"],
    "Fish": ["Head", "Body", "Fin", "Tail"],
    "Quadruped": ["Head", "Body", "Foot", "Tail"],
    "Reptile": ["Head", "Body", "Foot", "Tail"],
    "Snake": ["Head", "Body"],
}


def partimagenet_categories() -> List[dict]:
    """40 part categories, ids 0..39, in the COCO ``categories`` format of the release."""
    cats = []
    for sup, parts in PARTIMAGENET_SUPERCATEGORIES.items():
        for part in parts:
            cats.append({"id": len(cats), "name": f"{sup} {part}", "supercategory": sup})
    assert len(cats) == 40
    return cats


PARTIMAGENET_WNIDS = ["n01440764", "n02085620", "n04037443"]  # fish, dog, car: 3 fake classes
PIN_W, PIN_H = 24, 20  # every fake PartImageNet image is 24 x 20 (W x H)


def _rect(x0, y0, x1, y1) -> List[float]:
    return [x0, y0, x1, y0, x1, y1, x0, y1]


def write_partimagenet_ood_tree(root: str, images_per_class: int = 10,
                                json_in_annotations_dir: bool = True) -> Dict[str, object]:
    """Write the OOD release's *train* split (the one part papers re-split) under ``root``:

    ``root/images/train/<wnid>/<wnid>_<k>.JPEG`` and ``root/annotations/train.json`` (or
    ``root/train.json`` and ``root/train/<wnid>/`` with ``json_in_annotations_dir=False``, the other
    layout the zip has been seen in). ``file_name`` in the JSON is the bare file name, as in the
    release. Every image gets a body rectangle (category 1 + 4 * class index) and a head rectangle.

    Quirks, all on the first image of the first class (``<wnid0>_0.JPEG``, id 0):
      - a second "head" annotation whose polygon has 2 points -> the loader replaces it with its box
        ``(16, 2, 4, 4)``;
      - an ``area == 0`` annotation and an ``iscrowd == 1`` annotation covering the top-left corner
        (must be ignored);
      - its head and body overlap on ``x in [8, 12), y in [6, 10)``: equal counts there, so the
        tie rule (first maximum = the lower category id, the head) decides.
    The last image of the last class has only an ``area == 0`` annotation (no usable annotation).

    Returns ``{"json": path, "image_dir": path, "file_names": [...], "cats": (head, body)
    category ids of image 0, "no_annotation": file name}``.
    """
    if json_in_annotations_dir:
        json_path = os.path.join(root, "annotations", "train.json")
        image_dir = os.path.join(root, "images", "train")
    else:
        json_path = os.path.join(root, "train.json")
        image_dir = os.path.join(root, "train")
    images, anns, file_names = [], [], []

    def add_ann(image_id, cat, seg, bbox, area, iscrowd=0):
        anns.append({"id": len(anns), "image_id": image_id, "category_id": cat,
                     "segmentation": seg, "bbox": bbox, "area": area, "iscrowd": iscrowd})

    # class c uses supercategory parts: fish -> "Fish" ids, dog -> "Quadruped", car -> "Car"
    cats = partimagenet_categories()
    by_name = {c["name"]: c["id"] for c in cats}
    class_parts = [("Fish Head", "Fish Body"), ("Quadruped Head", "Quadruped Body"),
                   ("Car Side Mirror", "Car Body")]
    for c, wnid in enumerate(PARTIMAGENET_WNIDS):
        head, body = (by_name[n] for n in class_parts[c])
        for k in range(images_per_class):
            image_id = len(images)
            fname = f"{wnid}_{k}.JPEG"
            file_names.append(fname)
            _write_jpeg(os.path.join(image_dir, wnid, fname), PIN_W, PIN_H, seed=100 + image_id)
            images.append({"id": image_id, "file_name": fname, "height": PIN_H, "width": PIN_W})
            last = c == len(PARTIMAGENET_WNIDS) - 1 and k == images_per_class - 1
            if last:  # no usable annotation at all
                add_ann(image_id, body, [_rect(2, 2, 10, 10)], [2, 2, 8, 8], 0)
                continue
            # body: x in [4, 12), y in [6, 18); head: x in [8, 16), y in [4, 10)
            add_ann(image_id, body, [_rect(4, 6, 12, 18)], [4, 6, 8, 12], 96.0)
            add_ann(image_id, head, [_rect(8, 4, 16, 10)], [8, 4, 8, 6], 48.0)
            if image_id == 0:
                # fewer than 3 points: replaced by the box (16, 2, 4, 4) -> x in [16,20), y in [2,6)
                add_ann(image_id, head, [[16.0, 2.0, 20.0, 6.0]], [16, 2, 4, 4], 16.0)
                add_ann(image_id, head, [_rect(0, 0, 3, 3)], [0, 0, 3, 3], 0)       # area 0
                add_ann(image_id, body, [_rect(0, 0, 3, 3)], [0, 0, 3, 3], 9.0, 1)  # crowd
    data = {"images": images, "annotations": anns, "categories": cats}
    os.makedirs(os.path.dirname(json_path), exist_ok=True)
    with open(json_path, "w") as f:
        json.dump(data, f)
    head0, body0 = (by_name[n] for n in class_parts[0])
    return {"json": json_path, "image_dir": image_dir, "file_names": file_names,
            "cats": (head0, body0), "no_annotation": file_names[-1]}


def write_partimagenet_seg_tree(root: str, counts: Dict[str, int] = None) -> Dict[str, object]:
    """Write the Seg release: ``root/images/<split>/<wnid>_<k>.JPEG`` and
    ``root/annotations/<split>/<wnid>_<k>.png`` (uint8, part ids 0..39, 40 = background).

    Image ``k`` of every class gets a part rectangle: label ``4 * class + (k % 4)`` on
    ``x in [4, 14), y in [5, 15)`` and label 39 on the single pixel (row 0, col 0).
    Returns ``{"split": [stems...]}`` per split.
    """
    counts = counts or {"train": 2, "val": 1, "test": 2}
    out: Dict[str, object] = {}
    seed = 500
    for split, n in counts.items():
        stems = []
        for c, wnid in enumerate(PARTIMAGENET_WNIDS):
            for k in range(n):
                stem = f"{wnid}_{1000 * (split == 'test') + 100 * (split == 'val') + k}"
                seed += 1
                _write_jpeg(os.path.join(root, "images", split, stem + ".JPEG"), PIN_W, PIN_H,
                            seed=seed)
                label = np.full((PIN_H, PIN_W), 40, dtype=np.uint8)
                label[5:15, 4:14] = 4 * c + (k % 4)
                label[0, 0] = 39
                _write_png(os.path.join(root, "annotations", split, stem + ".png"), label)
                stems.append(stem)
        out[split] = sorted(stems)
    return out


# --------------------------------------------------------------------------------------------------
# DeepFashion In-shop, segmentation subset (img_highres_seg)
# --------------------------------------------------------------------------------------------------

# (R, G, B) of the 16 colours of the official README (black = background)
DEEPFASHION_COLOURS = [
    (0, 0, 0), (255, 250, 250), (250, 235, 215), (70, 130, 180), (16, 78, 139), (255, 250, 205),
    (255, 140, 0), (50, 205, 50), (220, 220, 220), (255, 0, 0), (127, 255, 212), (0, 100, 0),
    (255, 255, 0), (211, 211, 211), (144, 238, 144), (245, 222, 179),
]
DF_W, DF_H = 30, 44  # portrait, like the real 750 x 1101 high-res images


def deepfashion_label_map(k: int) -> np.ndarray:
    """The fake label map (0..15, README colour order) of the ``k``-th image: background, a "top"
    block, a "pants" block and a one-pixel "face" at (row 2, col 2); image ``k`` also shows colour
    ``1 + k % 15`` at (row 40, col 25)."""
    lab = np.zeros((DF_H, DF_W), dtype=np.int64)
    lab[8:20, 6:24] = 1
    lab[20:38, 8:22] = 6
    lab[2, 2] = 15
    lab[40, 25] = 1 + k % 15
    return lab


def write_deepfashion_tree(root: str, counts: Dict[str, int] = None,
                           list_format: str = "coco") -> Dict[str, List[str]]:
    """Write ``root/Anno/segmentation/img_highres/...`` images and ``*_segment.png`` masks and the
    split lists ``root/Anno/segmentation/DeepFashion_segmentation_<split>.json``.

    ``list_format="coco"``: ``{"images": [{"id", "file_name", "height", "width"}], ...}`` (the
    released form); ``"list"``: a plain JSON list of relative paths. Returns the file names per
    split (relative to ``Anno/segmentation``) in list order.
    """
    counts = counts or {"train": 6, "query": 2, "gallery": 2}
    seg = os.path.join(root, "Anno", "segmentation")
    out: Dict[str, List[str]] = {}
    k = 0
    for split, n in counts.items():
        files = []
        for i in range(n):
            gender = "WOMEN" if k % 2 == 0 else "MEN"
            rel = f"img_highres/{gender}/Dresses/id_{k:08d}/0{i % 4 + 1}_{k % 7 + 1}_front.jpg"
            _write_jpeg(os.path.join(seg, rel), DF_W, DF_H, seed=300 + k)
            colours = np.array(DEEPFASHION_COLOURS, dtype=np.uint8)
            _write_png(os.path.join(seg, rel[:-4] + "_segment.png"),
                       colours[deepfashion_label_map(k)])
            files.append(rel)
            k += 1
        if list_format == "coco":
            doc = {"images": [{"id": j, "file_name": f, "height": DF_H, "width": DF_W}
                              for j, f in enumerate(files)],
                   "annotations": [], "categories": []}
        else:
            doc = files
        with open(os.path.join(seg, f"DeepFashion_segmentation_{split}.json"), "w") as f:
            json.dump(doc, f)
        out[split] = files
    return out
