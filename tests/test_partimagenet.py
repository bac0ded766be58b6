"""PartImageNet: polygon rasterisation, the GT label rule, the OOD re-split, both releases."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import warnings

import cv2
import numpy as np
import pytest
import torch

from partformer.data import DATASETS, _import_all
from partformer.data.partimagenet import (PartImageNetDataset, check_partimagenet_seg,
                                          prepare_partimagenet_ood, rasterize_parts,
                                          rasterize_polygon, seg_png_to_part_mask)
from partformer.data.transforms import resize_mask
from tests.fake_benchmarks import (PARTIMAGENET_WNIDS, PIN_H, PIN_W, write_partimagenet_ood_tree,
                                   write_partimagenet_seg_tree)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _prepare(root, **kw):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tiny trees: counts differ from the published ones
        return prepare_partimagenet_ood(root, **kw)


@pytest.fixture(scope="module")
def pin(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("pin"))
    ood = write_partimagenet_ood_tree(os.path.join(root, "ood"))
    seg = write_partimagenet_seg_tree(os.path.join(root, "seg"))
    info = _prepare(root)
    return root, ood, seg, info


# ------------------------------------------------------------------ rasterisation

def _centres_inside(poly, h, w):
    """Brute-force even-odd test of every pixel centre (reference for the scanline fill)."""
    ys, xs = np.mgrid[0:h, 0:w] + 0.5
    inside = np.zeros((h, w), dtype=bool)
    x0, y0 = poly[:, 0], poly[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    for a, b, c, d in zip(x0, y0, x1, y1):
        crosses = (b <= ys) != (d <= ys)
        with np.errstate(divide="ignore", invalid="ignore"):
            xi = a + (ys - b) * (c - a) / (d - b)
        inside ^= crosses & (xs < xi)
    return inside


def test_box_polygon_covers_exactly_its_pixels():
    m = rasterize_polygon(np.array([[4, 6], [12, 6], [12, 18], [4, 18]]), 20, 24)
    assert m.sum() == 8 * 12
    assert m[6:18, 4:12].all()
    # fractional corners: centres 2.5..4.5 are inside [2.2, 4.7)
    m = rasterize_polygon(np.array([[2.2, 0], [4.7, 0], [4.7, 1], [2.2, 1]]), 2, 8)
    assert np.flatnonzero(m[0]).tolist() == [2, 3, 4]
    # outside the image is clipped, never wrapped
    m = rasterize_polygon(np.array([[-5, -5], [3, -5], [3, 3], [-5, 3]]), 10, 10)
    assert m.sum() == 9 and m[:3, :3].all()


def test_scanline_fill_matches_pixel_centre_test():
    rng = np.random.default_rng(0)
    for _ in range(30):
        n = int(rng.integers(3, 9))
        ang = np.sort(rng.uniform(0, 2 * np.pi, n))
        rad = rng.uniform(3, 14, n)
        poly = np.stack([16 + rad * np.cos(ang), 14 + rad * np.sin(ang)], 1)
        np.testing.assert_array_equal(rasterize_polygon(poly, 28, 32),
                                      _centres_inside(poly, 28, 32))


def test_label_rule_counts_and_ties():
    box = lambda x0, y0, x1, y1: np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]], float)  # noqa
    anns = [(5, [box(0, 0, 6, 4)]),           # category 5 once
            (3, [box(3, 0, 8, 4)]),           # category 3 overlaps 5 on x in [3, 6): tie
            (7, [box(0, 2, 2, 4)]),           # category 7 twice on x in [0, 2), y in [2, 4)
            (7, [box(0, 2, 2, 4), box(0, 0, 1, 1)])]  # two polygons of one annotation: a union
    lab = rasterize_parts(4, 10, anns)
    expected = np.array([[6, 6, 6, 4, 4, 4, 4, 4, 0, 0],   # (0, 0): 5 and 7 once each -> 5
                         [6, 6, 6, 4, 4, 4, 4, 4, 0, 0],   # x in [3, 6): 3 and 5 tie -> 3
                         [8, 8, 6, 4, 4, 4, 4, 4, 0, 0],   # 7 twice beats 5 once
                         [8, 8, 6, 4, 4, 4, 4, 4, 0, 0]])
    np.testing.assert_array_equal(lab, expected)
    assert lab.dtype == np.int64
    assert (rasterize_parts(3, 3, []) == 0).all()


def test_seg_png_mapping(tmp_path):
    png = np.array([[40, 0, 39], [5, 40, 40]], dtype=np.uint8)
    np.testing.assert_array_equal(seg_png_to_part_mask(png), [[0, 1, 40], [6, 0, 0]])
    with pytest.raises(ValueError, match=r"x.png: label value 41"):
        seg_png_to_part_mask(np.array([[41]], dtype=np.uint8), "x.png")


# ------------------------------------------------------------------ OOD re-split

def _split(root, name):
    with open(os.path.join(root, "ood", "splits", f"{name}.txt")) as f:
        return f.read().split()


def test_ood_resplit_counts_and_rules(pin):
    root, ood, _, info = pin
    assert info["counts"] == {"test": 3, "val": 3, "train": 23}
    assert info["dropped_without_usable_annotation"] == 1 and info["classes"] == 3
    splits = {s: _split(root, s) for s in ("train", "val", "test")}
    everything = sorted(sum(splits.values(), []))
    assert everything == sorted(set(ood["file_names"]) - {ood["no_annotation"]})
    for s, files in splits.items():
        assert files == sorted(files)
        per_class = {w: sum(f.startswith(w) for f in files) for w in PARTIMAGENET_WNIDS}
        if s != "train":
            assert per_class == {w: 1 for w in PARTIMAGENET_WNIDS}  # round(0.1 * 9 or 10) = 1
    assert not set(splits["test"]) & set(splits["val"])
    # deterministic
    again = _prepare(root)
    assert again["counts"] == info["counts"] and _split(root, "test") == splits["test"]


def test_ood_published_split_import(pin, tmp_path):
    root, ood, _, _ = pin
    work = str(tmp_path / "copy")
    shutil.copytree(os.path.join(root, "ood"), work)
    with open(ood["json"]) as f:
        images = json.load(f)["images"]
    test_ids = {1, 12, 25}
    path = str(tmp_path / "train_test_split_pimagenet_ood.txt")
    with open(path, "w") as f:  # PDiscoFormer's format: id, is_test, label, wnid, file name
        for im in images:
            wnid = im["file_name"].split("_")[0]
            f.write(f"{im['id']}\t{int(im['id'] in test_ids)}\t{PARTIMAGENET_WNIDS.index(wnid)}\t"
                    f"{wnid}\t{im['file_name']}\n")
    info = _prepare(work, split_file=path)
    assert "PDiscoFormer" in info["test_split"]
    with open(os.path.join(work, "splits", "test.txt")) as f:
        assert f.read().split() == sorted(images[i]["file_name"] for i in test_ids)
    with open(path) as f:
        lines = f.read().splitlines()
    with open(path, "w") as f:
        f.write("\n".join(lines[:-1]))  # a row missing -> the file is for another JSON
    with pytest.raises(ValueError, match="no row for image id 29"):
        _prepare(work, split_file=path)


def test_prepare_tool(pin, capsys):
    root = pin[0]
    spec = importlib.util.spec_from_file_location(
        "prepare_partimagenet", os.path.join(REPO, "tools", "prepare_partimagenet.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert tool.main(["--root", root, "--release", "both", "--check-masks"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"train\s+23\n", out)
    assert re.search(r"test\s+6\s+\(official 2,405: MISMATCH\)", out)


# ------------------------------------------------------------------ datasets

def test_ood_dataset_masks(pin):
    root, ood, _, _ = pin
    _import_all()
    assert DATASETS.get("partimagenet") is PartImageNetDataset
    first = ood["file_names"][0]
    split = next(s for s in ("train", "val", "test") if first in _split(root, s))
    ds = PartImageNetDataset(root, split, image_size=PIN_H, resize="shorter")  # identity
    assert ds.file_names == _split(root, split)
    i = ds.file_names.index(first)
    head, body = ood["cats"]
    assert head < body
    full = ds.part_mask_full(i)
    assert full.shape == (PIN_H, PIN_W)
    assert full[7, 9] == head + 1        # head and body overlap once each: lowest id wins
    assert full[12, 5] == body + 1       # body only
    assert full[5, 10] == head + 1       # head only
    assert (full[2:6, 16:20] == head + 1).all() and full[2:6, 20].sum() == 0  # 2-point polygon
    assert (full[0:2, 0:3] == 0).all()   # area == 0 and iscrowd == 1 skipped
    assert (full > 0).sum() == 8 * 12 + 8 * 6 - 4 * 4 + 4 * 4  # body + head - overlap + box
    s = ds[i]
    assert set(s) == {"image", "part_mask", "fg_mask", "label", "index", "orig_size"}
    assert s["orig_size"].tolist() == [PIN_H, PIN_W]
    np.testing.assert_array_equal(s["part_mask"].numpy(), full)
    assert s["part_mask"].dtype == torch.int64 and s["fg_mask"].dtype == torch.uint8
    assert s["label"].item() == 0  # class_conditioned=False


@pytest.mark.parametrize("resize,size", [("whole", 48), ("shorter", 30),
                                         ("shorter_center_crop", 16)])
def test_masks_follow_the_image_resize(pin, resize, size):
    root = pin[0]
    ds = PartImageNetDataset(root, "test", image_size=size, resize=resize)
    for i in range(len(ds)):
        s = ds[i]
        full = ds.part_mask_full(i)
        assert s["part_mask"].shape == s["image"].shape[1:]
        if resize == "whole":
            np.testing.assert_array_equal(s["part_mask"].numpy(), resize_mask(full, size, size))
        np.testing.assert_array_equal(s["fg_mask"].numpy(), (s["part_mask"] > 0).numpy())
        assert set(np.unique(s["part_mask"].numpy())) <= set(np.unique(full))


def test_class_labels_and_splits(pin):
    root = pin[0]
    ds = PartImageNetDataset(root, "trainval", image_size=16, class_conditioned=True)
    assert ds.class_names == PARTIMAGENET_WNIDS
    assert ds.file_names == sorted(_split(root, "train") + _split(root, "val"))
    for i in (0, len(ds) - 1):
        wnid = ds.file_names[i].split("_")[0]
        assert ds[i]["label"].item() == PARTIMAGENET_WNIDS.index(wnid)
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_seg_release(pin):
    root, _, seg, _ = pin
    with pytest.warns(UserWarning, match="official test split has 2405"):
        assert check_partimagenet_seg(root) == {"train": 6, "val": 3, "test": 6}
    ds = PartImageNetDataset(root, "test", image_size=PIN_H, resize="shorter", release="seg",
                             class_conditioned=True)
    assert ds.file_names == seg["test"]
    for i, stem in enumerate(ds.file_names):
        c, k = PARTIMAGENET_WNIDS.index(stem.split("_")[0]), int(stem.split("_")[1]) % 1000
        s = ds[i]
        pm = s["part_mask"].numpy()
        assert pm[0, 0] == 40 and pm[10, 10] == 4 * c + (k % 4) + 1 and pm[19, 23] == 0
        assert s["label"].item() == c
        np.testing.assert_array_equal(s["fg_mask"].numpy(), pm > 0)


def test_alternative_ood_layout_and_errors(tmp_path):
    root = str(tmp_path / "PartImageNet_OOD")
    write_partimagenet_ood_tree(root, images_per_class=6, json_in_annotations_dir=False)
    with pytest.raises(FileNotFoundError, match="tools/prepare_partimagenet.py"):
        PartImageNetDataset(str(tmp_path), "train")
    info = _prepare(str(tmp_path))
    assert info["split_dir"] == os.path.join(root, "splits")
    ds = PartImageNetDataset(str(tmp_path), "test", image_size=16)
    assert len(ds) == 3 and ds[0]["image"].shape == (3, 16, 16)
    with pytest.raises(FileNotFoundError, match=r"(?s)SEG release not found.*datasets/README.md"):
        PartImageNetDataset(str(tmp_path), "test", release="seg")
    with pytest.raises(ValueError, match="unknown PartImageNet OOD split"):
        PartImageNetDataset(str(tmp_path), "official_test")
    with pytest.raises(ValueError, match="release"):
        PartImageNetDataset(str(tmp_path), "test", release="full")


def test_bad_seg_png_names_file(tmp_path):
    root = str(tmp_path)
    write_partimagenet_seg_tree(root, {"test": 1})
    stem = sorted(os.listdir(os.path.join(root, "annotations", "test")))[0]
    cv2.imwrite(os.path.join(root, "annotations", "test", stem), np.full((PIN_H, PIN_W), 77,
                                                                         np.uint8))
    ds = PartImageNetDataset(root, "test", release="seg")
    with pytest.raises(ValueError, match=f"{stem}: label value 77"):
        ds[0]
