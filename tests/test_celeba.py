"""CelebA-in-the-wild / MAFL: annotation readers, the 30 % face-box filter, splits, dataset."""
from __future__ import annotations

import importlib.util
import os
import re
import warnings

import numpy as np
import pytest
import torch

from partformer.data import DATASETS, _import_all
from partformer.data.celeba import (CelebAWildDataset, _jpeg_size, face_box_fraction_ok,
                                    prepare_celeba_splits, read_counted_table, read_image_size)
from partformer.data.io import BadImageError
from tests.fake_benchmarks import (CELEBA_EXPECTED, CELEBA_IMAGES, celeba_landmarks,
                                   write_celeba_tree)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _load_tool(name):
    spec = importlib.util.spec_from_file_location(name, os.path.join(REPO, "tools", f"{name}.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def celeba(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("celeba"))
    tree = write_celeba_tree(root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tiny tree: counts differ from the published ones
        splits = prepare_celeba_splits(root, tree["mafl"], num_val=2, progress=False)
    return root, tree["mafl"], splits


def _read(path):
    with open(path) as f:
        return f.read().split()


def test_filter_and_split_membership(celeba):
    root, _, splits = celeba
    for name, expected in CELEBA_EXPECTED.items():
        assert splits[name] == expected, name
        assert _read(os.path.join(root, "splits", f"{name}.txt")) == expected
    # val is a seeded part of trainval, train the rest; MAFL test never in trainval
    assert len(splits["val"]) == 2
    assert sorted(splits["train"] + splits["val"]) == CELEBA_EXPECTED["trainval"]
    assert not set(splits["train"]) & set(splits["val"])
    assert not set(splits["trainval"]) & set(splits["mafl_test"])
    assert os.path.isfile(os.path.join(root, "splits", "prepare_info.json"))


def test_face_box_boundary_is_inclusive():
    # exactly 30 % is kept, just below is not (compared without float rounding)
    assert face_box_fraction_ok(np.array([[50, 60]]), np.array([[100, 100]]))[0]
    assert not face_box_fraction_ok(np.array([[58, 50]]), np.array([[100, 100]]))[0]


def test_prepare_is_deterministic_and_warns_on_published_counts(celeba, tmp_path):
    root, mafl, splits = celeba
    with pytest.warns(UserWarning) as record:
        again = prepare_celeba_splits(root, mafl, num_val=2, progress=False)
    assert again == splits
    messages = " ".join(str(w.message) for w in record)
    for name, n in (("trainval", 45609), ("mafl_train", 5379), ("mafl_test", 283)):
        assert f"{name!r} has" in messages and f"published protocol has {n}" in messages


def test_prepare_tool_prints_counts(celeba, capsys):
    root, mafl, _ = celeba
    tool = _load_tool("prepare_celeba")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert tool.main(["--root", root, "--mafl", mafl, "--num-val", "1"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"trainval\s+5\s+\(published 45,609: MISMATCH\)", out)
    assert len(_read(os.path.join(root, "splits", "val.txt"))) == 1
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepare_celeba_splits(root, mafl, num_val=2, progress=False)  # restore for other tests


def test_counted_table_quirks_and_errors(tmp_path):
    root = str(tmp_path)
    write_celeba_tree(root)
    path = os.path.join(root, "Anno", "list_landmarks_celeba.txt")
    names, values = read_counted_table(path, 10)  # count + header lines, no final newline
    assert names == sorted(CELEBA_IMAGES) and values.shape == (12, 10)
    np.testing.assert_array_equal(values[0].reshape(5, 2), celeba_landmarks("000001.jpg"))

    with open(path) as f:
        lines = f.read().split("\n")
    bad_count = ["11"] + lines[1:]
    with open(path, "w") as f:
        f.write("\n".join(bad_count))
    with pytest.raises(ValueError, match=r"list_landmarks_celeba.txt.*says 11 rows.*has 12"):
        read_counted_table(path, 10)
    bad_row = lines[:4] + [lines[4].rsplit(" ", 1)[0]] + lines[5:]
    with open(path, "w") as f:
        f.write("\n".join(bad_row))
    with pytest.raises(ValueError, match=r"list_landmarks_celeba.txt, line 5: expected"):
        read_counted_table(path, 10)
    fields = lines[3].split()
    bad_value = lines[:3] + [" ".join(fields[:3] + ["x"] + fields[4:])] + lines[4:]
    with open(path, "w") as f:
        f.write("\n".join(bad_value))
    with pytest.raises(ValueError, match=r"line 4: expected 10 numbers"):
        read_counted_table(path, 10)
    os.remove(os.path.join(root, "Anno", "list_bbox_celeba.txt"))
    with pytest.raises(FileNotFoundError, match=r"(?s)list_bbox_celeba.txt not found.*"
                                                r"datasets/README.md"):
        read_counted_table(os.path.join(root, "Anno", "list_bbox_celeba.txt"), 4)


def test_image_size_from_header(celeba):
    root = celeba[0]
    for name, (w, h, *_rest) in CELEBA_IMAGES.items():
        path = os.path.join(root, "Img", "img_celeba", name)
        assert read_image_size(path) == (w, h)
        assert _jpeg_size(path) == (w, h)


def test_dataset_samples_and_resize(celeba):
    root = celeba[0]
    _import_all()
    assert DATASETS.get("celeba_wild") is CelebAWildDataset
    ds = CelebAWildDataset(root, "trainval", image_size=64)
    assert ds.names == CELEBA_EXPECTED["trainval"]  # index -> file never shuffled
    for i, name in enumerate(ds.names):
        w, h, box = CELEBA_IMAGES[name][:3]
        s = ds[i]
        assert set(s) == {"image", "keypoints", "keypoints_visible", "bbox", "label", "index",
                          "orig_size"}
        assert s["image"].shape == (3, 64, 64) and s["image"].dtype == torch.float32
        assert 0.0 <= s["image"].min() and s["image"].max() <= 1.0
        scale = np.array([64 / w, 64 / h])
        np.testing.assert_allclose(s["keypoints"].numpy(), celeba_landmarks(name) * scale,
                                   rtol=1e-6)
        assert s["keypoints_visible"].all() and s["keypoints_visible"].dtype == torch.bool
        np.testing.assert_allclose(s["bbox"].numpy(), np.array(box) * np.tile(scale, 2),
                                   rtol=1e-6)
        assert s["label"].item() == 0 and s["index"].item() == i
        assert s["orig_size"].tolist() == [h, w]
    table = ds.keypoint_table()
    assert table.keypoints.shape == (5, 5, 2) and table.visible.all()
    with pytest.raises(IndexError):
        ds[len(ds)]


def test_center_crop_marks_cropped_landmarks_invisible(celeba):
    root = celeba[0]
    ds = CelebAWildDataset(root, "mafl_train", image_size=20, resize="shorter_center_crop")
    i = ds.names.index("000005.jpg")  # 50 x 40: resized to 25 x 20, crop columns [2.5, 22.5)
    s = ds[i]
    x = celeba_landmarks("000005.jpg")[:, 0] * 20 / 40 - 2
    assert s["image"].shape == (3, 20, 20)
    np.testing.assert_array_equal(s["keypoints_visible"].numpy(), (x >= 0) & (x < 20))


def test_split_alias_and_errors(celeba, tmp_path):
    root = celeba[0]
    assert CelebAWildDataset(root, "test").names == CELEBA_EXPECTED["mafl_test"]
    with pytest.raises(ValueError, match="unknown CelebA split"):
        CelebAWildDataset(root, "testing")
    with pytest.raises(FileNotFoundError, match="datasets/README.md"):
        CelebAWildDataset(str(tmp_path / "nowhere"), "train")
    other = str(tmp_path / "unprepared")
    write_celeba_tree(other)
    with pytest.raises(FileNotFoundError, match="tools/prepare_celeba.py"):
        CelebAWildDataset(other, "train")


def test_bad_image_is_skipped_only_on_request(tmp_path):
    root = str(tmp_path)
    tree = write_celeba_tree(root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepare_celeba_splits(root, tree["mafl"], num_val=1, progress=False)
    with open(os.path.join(root, "Img", "img_celeba", "000004.jpg"), "wb") as f:
        f.write(b"\xff\xd8 truncated")
    ds = CelebAWildDataset(root, "mafl_test", image_size=32)
    with pytest.raises(BadImageError, match="000004.jpg"):
        ds[0]
    ds = CelebAWildDataset(root, "mafl_test", image_size=32, skip_bad_images=True)
    with pytest.warns(UserWarning, match="000004.jpg"):
        assert ds[0] is None
    assert ds[1]["index"].item() == 1
