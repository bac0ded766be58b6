"""DeepFashion In-shop segmentation subset: palette decoding, splits, layout check (the longest_pad
resize: tests/test_transforms.py)."""
from __future__ import annotations

import importlib.util
import json
import os
import re
import warnings

import cv2
import numpy as np
import pytest
import torch

from partformer.data import DATASETS, _import_all
from partformer.data.deepfashion import (PALETTE, PART_NAMES, DeepFashionDataset,
                                         check_deepfashion_layout, colour_mask_to_labels)
from partformer.data.transforms import resize_mask
from tests.fake_benchmarks import (DEEPFASHION_COLOURS, DF_H, DF_W, deepfashion_label_map,
                                   write_deepfashion_tree)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
COUNTS = {"train": 12, "query": 2, "gallery": 3}


@pytest.fixture(scope="module")
def df(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("deepfashion"))
    return root, write_deepfashion_tree(root, COUNTS)


def test_palette_is_the_readme_table():
    assert [c for c, _ in PALETTE] == DEEPFASHION_COLOURS
    assert len(PALETTE) == 16 and len(set(c for c, _ in PALETTE)) == 16
    assert PART_NAMES[0] == "top" and PART_NAMES[-1] == "face" and len(PART_NAMES) == 15


def test_colour_decoding_exact_and_errors():
    rgb = np.array([[[0, 0, 0], [255, 250, 250], [245, 222, 179]],
                    [[255, 140, 0], [0, 100, 0], [255, 255, 0]]], dtype=np.uint8)
    np.testing.assert_array_equal(colour_mask_to_labels(rgb), [[0, 1, 15], [6, 11, 12]])
    near = rgb.copy()
    near[1, 1] = (0, 101, 0)  # PNG is lossless: a near colour is an error, not a match
    with pytest.raises(ValueError, match=r"m_segment.png: unknown colour RGB\(0, 101, 0\) on 1"):
        colour_mask_to_labels(near, "m_segment.png")


def test_dataset_samples(df):
    root, files = df
    _import_all()
    assert DATASETS.get("deepfashion") is DeepFashionDataset
    ds = DeepFashionDataset(root, "test", image_size=DF_H)   # longest side kept: no scaling
    assert ds.file_names == files["query"] + files["gallery"]
    for i in range(len(ds)):
        s = ds[i]
        assert set(s) == {"image", "part_mask", "fg_mask", "label", "index", "orig_size"}
        k = COUNTS["train"] + i                                  # writer's running image number
        pm = s["part_mask"].numpy()
        assert s["image"].shape == (3, DF_H, DF_H) and pm.shape == (DF_H, DF_H)
        np.testing.assert_array_equal(pm[:, :DF_W], deepfashion_label_map(k))
        assert (pm[:, DF_W:] == -1).all()
        assert s["part_mask"].dtype == torch.int64 and s["fg_mask"].dtype == torch.uint8
        np.testing.assert_array_equal(s["fg_mask"].numpy(), pm > 0)
        assert s["label"].item() == 0 and s["index"].item() == i
        assert s["orig_size"].tolist() == [DF_H, DF_W]


@pytest.mark.parametrize("resize,size", [("longest_pad", 32), ("whole", 24),
                                         ("shorter_center_crop", 16)])
def test_masks_follow_the_resize(df, resize, size):
    root, _ = df
    ds = DeepFashionDataset(root, "query", image_size=size, resize=resize)
    s = ds[0]
    full = ds.part_mask_full(0)
    assert s["part_mask"].shape == s["image"].shape[1:] == (size, size)
    if resize == "longest_pad":
        nw = int(np.floor(DF_W * size / DF_H + 0.5))
        np.testing.assert_array_equal(s["part_mask"][:, :nw].numpy(), resize_mask(full, size, nw))
        # the padding is black in the image
        assert (s["image"][:, :, nw:] == 0).all()
    elif resize == "whole":
        np.testing.assert_array_equal(s["part_mask"].numpy(), resize_mask(full, size, size))


def test_splits(df, tmp_path):
    root, files = df
    n = {s: len(DeepFashionDataset(root, s, image_size=16)) for s in
         ("train", "val", "trainval", "query", "gallery", "test")}
    assert n == {"train": 11, "val": 1, "trainval": 12, "query": 2, "gallery": 3, "test": 5}
    train = DeepFashionDataset(root, "train", image_size=16).file_names
    val = DeepFashionDataset(root, "val", image_size=16).file_names
    assert sorted(train + val) == sorted(files["train"]) and not set(train) & set(val)
    assert DeepFashionDataset(root, "val", image_size=16).file_names == val  # deterministic
    # the Anno/segmentation folder itself works as root; a plain JSON list works as split file
    seg = os.path.join(root, "Anno", "segmentation")
    assert DeepFashionDataset(seg, "query", image_size=16).file_names == files["query"]
    plain = str(tmp_path / "plain")
    listed = write_deepfashion_tree(plain, {"train": 2, "query": 1, "gallery": 1},
                                    list_format="list")
    assert DeepFashionDataset(plain, "test", image_size=16).file_names == \
        listed["query"] + listed["gallery"]


def test_layout_check_and_tool(df, capsys):
    root, _ = df
    with pytest.warns(UserWarning, match="6922"):
        counts = check_deepfashion_layout(root, check_masks=True)
    assert counts == {"train": 12, "query": 2, "gallery": 3, "test": 5}
    spec = importlib.util.spec_from_file_location(
        "prepare_deepfashion", os.path.join(REPO, "tools", "prepare_deepfashion.py"))
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert tool.main(["--root", root]) == 0
    assert re.search(r"test\s+5\s+\(protocol 6,922: MISMATCH\)", capsys.readouterr().out)


def test_errors_name_files(tmp_path):
    root = str(tmp_path / "df")
    files = write_deepfashion_tree(root, {"train": 2, "query": 1, "gallery": 1})
    seg = os.path.join(root, "Anno", "segmentation")
    with pytest.raises(FileNotFoundError, match="datasets/README.md"):
        DeepFashionDataset(str(tmp_path / "missing"), "test")
    with pytest.raises(ValueError, match="unknown DeepFashion split"):
        DeepFashionDataset(root, "validation")
    with pytest.raises(ValueError, match="not available for DeepFashion"):
        DeepFashionDataset(root, "test", resize="bbox_crop")
    # an unknown colour in a mask: error names the mask file and the colour
    mask = os.path.join(seg, files["query"][0][:-4] + "_segment.png")
    bad = cv2.imread(mask)
    bad[0, 0] = (1, 2, 3)  # BGR
    cv2.imwrite(mask, bad)
    ds = DeepFashionDataset(root, "query")
    with pytest.raises(ValueError, match=r"_segment.png: unknown colour RGB\(3, 2, 1\)"):
        ds[0]
    with pytest.raises(ValueError, match="unknown colour"):
        check_deepfashion_layout(root, check_masks=True)
    # a missing mask is named by the layout check
    os.remove(mask)
    with pytest.raises(FileNotFoundError, match=r"_segment.png \(listed in "
                                                r"DeepFashion_segmentation_query.json\)"):
        check_deepfashion_layout(root)
    # a malformed split list
    with open(os.path.join(seg, "DeepFashion_segmentation_gallery.json"), "w") as f:
        json.dump({"images": [{"id": 0}]}, f)
    with pytest.raises(ValueError, match="gallery.json: entry 0 has no file name"):
        DeepFashionDataset(root, "gallery")
