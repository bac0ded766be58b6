"""CUB-200-2011 loader, the shared annotation / image readers and the image-folder dataset, on tiny
trees written in the real on-disk format (tests/cub_tree.py)."""
import os
import shutil
import types
import warnings

import cv2
import numpy as np
import pytest
import torch

from partformer import config as cfglib
from partformer.data import DATASETS, build_dataset
from partformer.data.collate import collate
from partformer.data.cub import CUBDataset, default_val_ids
from partformer.data.image_folder import ImageFolderDataset
from partformer.data.io import BadImageError, load_image, load_mask, read_table, require_file
from partformer.data.transforms import RESIZE_MODES
from tests.cub_tree import write_tiny_cub


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    return write_tiny_cub(str(tmp_path_factory.mktemp("cub")), n_images=6)


def fresh(tmp_path, **kw):
    return write_tiny_cub(str(tmp_path), **kw)


def edit_line(path, lineno, new):
    with open(path) as f:
        lines = f.read().split("\n")
    lines[lineno - 1] = new(lines[lineno - 1]) if callable(new) else new
    with open(path, "w") as f:
        f.write("\n".join(lines))


# ----------------------------------------------------------------------------- splits
def test_splits_with_val_file(tiny):
    for split in ("train", "val", "trainval", "test"):
        ds = CUBDataset(tiny.root, split, image_size=32)
        np.testing.assert_array_equal(ds.image_ids, tiny.split_ids(split))
    assert len(CUBDataset(tiny.root, "val", 32)) == 1
    assert len(CUBDataset(tiny.root, "trainval", 32)) == tiny.is_train.sum() == 4
    assert len(CUBDataset(tiny.root, "test", 32)) == 2


def test_splits_without_val_file_are_deterministic(tmp_path):
    t = fresh(tmp_path, n_images=30, val_split=False)
    train_ids = t.ids[t.is_train]
    assert len(train_ids) == 20
    val = CUBDataset(t.root, "val", 32).image_ids
    expect = np.sort(np.random.default_rng(0).permutation(np.sort(train_ids))[:2])
    np.testing.assert_array_equal(val, expect)
    np.testing.assert_array_equal(val, default_val_ids(train_ids))
    train = CUBDataset(t.root, "train", 32).image_ids
    assert len(train) == 18 and not set(train) & set(val)
    assert set(train) | set(val) == set(train_ids)
    assert len(CUBDataset(t.root, "val", 32, val_fraction=0.25)) == 5


def test_val_image_marked_test_is_an_error(tmp_path):
    t = fresh(tmp_path, val_flags=[0, 1, 0, 0, 0, 0])  # image 2 is a test image
    with pytest.raises(ValueError, match=r"val_split\.txt.*image 2 .*test image"):
        CUBDataset(t.root, "train", 32)


def test_unknown_split(tiny):
    with pytest.raises(ValueError, match="unknown CUB split 'valid'"):
        CUBDataset(tiny.root, "valid", 32)


# ----------------------------------------------------------------------------- samples
def test_sample_contract(tiny):
    ds = CUBDataset(tiny.root, "trainval", image_size=32)
    assert ds.num_keypoints == 15 and ds.keypoint_names[6] == "left eye"
    assert ds.num_classes == 3 and ds.class_names == tiny.class_names
    assert ds.part_names == tiny.keypoint_names
    s = ds[1]
    row = int(ds.image_ids[1]) - 1
    assert set(s) == {"image", "keypoints", "keypoints_visible", "bbox", "label", "fg_mask",
                      "part_mask", "index", "orig_size"}
    assert s["image"].shape == (3, 32, 32) and s["image"].dtype == torch.float32
    assert 0 <= s["image"].min() and s["image"].max() <= 1
    assert s["keypoints"].shape == (15, 2) and s["keypoints"].dtype == torch.float32
    assert s["keypoints_visible"].dtype == torch.bool
    assert s["bbox"].shape == (4,) and s["bbox"].dtype == torch.float32
    assert s["label"].dtype == torch.int64 and s["label"].ndim == 0
    assert int(s["label"]) == tiny.labels[row]
    assert s["fg_mask"].dtype == torch.uint8 and set(s["fg_mask"].unique().tolist()) == {0, 1}
    assert s["part_mask"].dtype == torch.int64 and s["part_mask"].shape == (32, 32)
    assert int(s["index"]) == 1 and s["index"].dtype == torch.int64
    assert s["orig_size"].tolist() == tiny.sizes[row].tolist()
    H, W = tiny.sizes[row]
    np.testing.assert_allclose(s["bbox"].numpy(), tiny.bbox[row] * ([32 / W, 32 / H] * 2),
                               rtol=1e-5)
    batch = collate([ds[0], ds[1], ds[2]])
    assert batch["image"].shape == (3, 3, 32, 32) and int(batch["num_skipped"]) == 0


@pytest.mark.parametrize("mode", RESIZE_MODES)
def test_every_resize_mode_keeps_keypoints_masks_and_boxes_together(tiny, mode):
    for split in ("trainval", "test"):
        ds = CUBDataset(tiny.root, split, image_size=32, resize=mode)
        for i in range(len(ds)):
            s = ds[i]
            pm, fg = s["part_mask"].numpy(), s["fg_mask"].numpy()
            H, W = pm.shape
            assert s["image"].shape[1:] == (H, W) == fg.shape
            if mode == "bbox_crop":
                assert H % 16 == 0 and W % 16 == 0
            kp, vis = s["keypoints"].numpy(), s["keypoints_visible"].numpy()
            assert vis.any()
            for k in np.flatnonzero(vis):
                x, y = kp[k]
                assert pm[min(int(y), H - 1), min(int(x), W - 1)] == k + 1, (mode, i, k)
            assert (kp[~vis] == 0).all()
            # segmentation is thresholded at > 127 (the grey ring around the bird is background),
            # and the box covers it up to nearest sampling's half pixel
            ys, xs = np.nonzero(fg)
            bx, by, bw, bh = s["bbox"].numpy()
            assert xs.min() >= bx - 0.5 - 1e-4 and xs.max() + 1 <= bx + bw + 0.5 + 1e-4
            assert ys.min() >= by - 0.5 - 1e-4 and ys.max() + 1 <= by + bh + 0.5 + 1e-4


def test_keypoint_table_at_original_resolution(tiny):
    for split in ("train", "test"):
        ds = CUBDataset(tiny.root, split, image_size=32)
        kp, vis, bbox = ds.keypoint_table()
        rows = ds.image_ids - 1
        np.testing.assert_array_equal(vis, tiny.visible[rows])
        np.testing.assert_array_equal(kp, tiny.keypoints[rows])
        np.testing.assert_array_equal(bbox, tiny.bbox[rows])
        assert kp.dtype == np.float32 and vis.dtype == bool and kp.shape == (len(ds), 15, 2)


def test_without_masks(tmp_path, tiny):
    ds = CUBDataset(tiny.root, "test", 32, with_masks=False)
    assert "fg_mask" not in ds[0] and "part_mask" not in ds[0]
    t = fresh(tmp_path, segmentations=False, part_masks=False)
    ds = CUBDataset(t.root, "test", 32)
    assert ds.part_names is None
    assert set(ds[0]) == {"image", "keypoints", "keypoints_visible", "bbox", "label", "index",
                          "orig_size"}


def test_segmentations_beside_the_cub_folder(tmp_path):
    t = fresh(tmp_path, part_masks=False)
    shutil.move(os.path.join(t.root, "segmentations"), os.path.join(tmp_path, "segmentations"))
    s = CUBDataset(t.root, "test", 32)[0]
    assert "fg_mask" in s and s["fg_mask"].sum() > 0


def test_missing_mask_names_the_file(tmp_path):
    t = fresh(tmp_path)
    os.remove(os.path.join(t.root, "segmentations", t.paths[1][:-4] + ".png"))
    ds = CUBDataset(t.root, "test", 32)  # image 2 is the first test image
    with pytest.raises(FileNotFoundError, match=t.paths[1][:-4] + ".png"):
        ds[0]


def test_root_may_be_the_parent_folder(tiny):
    parent = os.path.dirname(tiny.root)
    assert len(CUBDataset(parent, "test", 32)) == 2


def test_registry_and_build_dataset(tiny):
    cfg = types.SimpleNamespace(name="cub", root=tiny.root, image_size=32, resize="shorter",
                                options={"with_masks": False},
                                skip_bad_images=False)
    ds = build_dataset(cfg, "test")
    assert isinstance(ds, CUBDataset) and "cub" in DATASETS and "image_folder" in DATASETS
    assert min(ds[0]["image"].shape[1:]) == 32


# ----------------------------------------------------------------------------- file formats
@pytest.mark.parametrize("quirk", [dict(final_newline=False), dict(blank_lines=True),
                                   dict(final_newline=False, blank_lines=True)])
def test_no_final_newline_and_blank_lines_parse_the_same(tmp_path, tiny, quirk):
    t = fresh(tmp_path, **quirk)
    with open(os.path.join(t.root, "parts", "part_locs.txt")) as f:
        text = f.read()
    assert text.endswith("\n") == quirk.get("final_newline", True)
    assert ("\n\n" in text) == quirk.get("blank_lines", False)
    for split in ("train", "val", "test"):
        a, b = CUBDataset(t.root, split, 32), CUBDataset(tiny.root, split, 32)
        np.testing.assert_array_equal(a.image_ids, b.image_ids)
        assert a.class_names == b.class_names and a.part_names == b.part_names
        for x, y in zip(a.keypoint_table(), b.keypoint_table()):
            np.testing.assert_array_equal(x, y)


REAL_FORMAT = {  # two images in the exact formatting of the distributed files, no final newline
    "images.txt": "1 001.Black_footed_Albatross/Black_Footed_Albatross_0046_18.jpg\n"
                  "2 001.Black_footed_Albatross/Black_Footed_Albatross_0009_34.jpg",
    "image_class_labels.txt": "1 1\n2 1",
    "classes.txt": "1 001.Black_footed_Albatross",
    "train_test_split.txt": "1 0\n2 1",
    "bounding_boxes.txt": "1 60.0 27.0 325.0 304.0\n2 139.0 30.0 153.0 264.0",
    "parts/parts.txt": "\n".join(f"{k + 1} {n}" for k, n in enumerate(
        ["back", "beak", "belly", "breast", "crown", "forehead", "left eye", "left leg",
         "left wing", "nape", "right eye", "right leg", "right wing", "tail", "throat"])),
}


def test_real_format_quirks(tmp_path):
    root = tmp_path / "CUB_200_2011"
    for rel, text in REAL_FORMAT.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    rng = np.random.default_rng(0)
    locs = []
    for i in (1, 2):
        for k in range(1, 16):
            if rng.random() < 0.6:
                x, y = float(rng.integers(140, 280)), float(rng.integers(40, 280))
                locs.append(f"{i} {k} {x} {y} 1")
            else:
                locs.append(f"{i} {k} 0.0 0.0 0")
    (root / "parts" / "part_locs.txt").write_text("\n".join(locs))
    for rel in REAL_FORMAT["images.txt"].split("\n"):
        p = root / "images" / rel.split()[1]
        p.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(p), np.full((340, 400, 3), 128, np.uint8))
    test = CUBDataset(str(root), "test", 64)
    assert test.image_ids.tolist() == [1] and test.keypoint_names[10] == "right eye"
    assert test.class_names == ["001.Black_footed_Albatross"]
    kp, vis, bbox = test.keypoint_table()
    assert bbox.tolist() == [[60.0, 27.0, 325.0, 304.0]]
    assert vis.sum() == sum(1 for l in locs[:15] if l.endswith(" 1"))
    s = test[0]
    assert s["orig_size"].tolist() == [340, 400] and int(s["label"]) == 0
    assert len(CUBDataset(str(root), "trainval", 64)) == 1


@pytest.mark.parametrize("rel, lineno, new, match", [
    ("bounding_boxes.txt", 3, "3 1.0 2.0 3.0",
     r"bounding_boxes\.txt, line 3: expected 5 .*found 4"),
    ("parts/part_locs.txt", 17, lambda l: l.rsplit(" ", 1)[0] + " yes",
     r"part_locs\.txt, line 17: column 5 \(visible\) expected an integer, found 'yes'"),
    ("parts/part_locs.txt", 20, lambda l: " ".join(l.split()[:2] + ["abc"] + l.split()[3:]),
     r"part_locs\.txt, line 20: column 3 \(x\) expected a finite number, found 'abc'"),
    ("image_class_labels.txt", 2, "2 1.5", r"image_class_labels\.txt, line 2: column 2"),
    ("images.txt", 4, "4", r"images\.txt, line 4: expected 2 "),
    ("train_test_split.txt", 1, "1 2", r"train_test_split\.txt: image 1 has flag 2"),
    ("parts/part_locs.txt", 5, lambda l: l[:-1] + "3", r"part_locs\.txt, line 5: visible must be"),
])
def test_malformed_line_names_file_and_line(tmp_path, rel, lineno, new, match):
    t = fresh(tmp_path)
    edit_line(os.path.join(t.root, rel), lineno, new)
    with pytest.raises(ValueError, match=match):
        CUBDataset(t.root, "train", 32)


@pytest.mark.parametrize("rel", ["images.txt", "train_test_split.txt", "bounding_boxes.txt",
                                 "image_class_labels.txt", "parts/parts.txt",
                                 "parts/part_locs.txt"])
def test_missing_file_names_it(tmp_path, rel):
    t = fresh(tmp_path, segmentations=False, part_masks=False)
    os.remove(os.path.join(t.root, rel))
    with pytest.raises(FileNotFoundError) as e:
        CUBDataset(t.root, "train", 32)
    msg = str(e.value)
    assert os.path.join(t.root, rel) in msg and "datasets/README.md" in msg
    assert "Expected layout" in msg and "part_locs.txt" in msg


def test_missing_root(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a directory.*datasets/cub/README.md"):
        CUBDataset(str(tmp_path / "nowhere"), "train", 32)


def test_ids_disagree_across_files(tmp_path):
    t = fresh(tmp_path, segmentations=False, part_masks=False)
    edit_line(os.path.join(t.root, "bounding_boxes.txt"), 6, lambda l: "7" + l[1:])
    with pytest.raises(ValueError, match=r"bounding_boxes\.txt: image ids do not match.*6"):
        CUBDataset(t.root, "train", 32)


def test_part_locs_wrong_order(tmp_path):
    t = fresh(tmp_path, segmentations=False, part_masks=False)
    path = os.path.join(t.root, "parts", "part_locs.txt")
    with open(path) as f:
        lines = f.read().split("\n")
    lines[16], lines[17] = lines[17], lines[16]  # image 2, parts 2 and 3
    with open(path, "w") as f:
        f.write("\n".join(lines))
    with pytest.raises(ValueError, match=r"part_locs\.txt: rows must be in \(image id, part id\) "
                                         r"order.*line 17: found image 2 part 3, expected image 2 "
                                         r"part 2"):
        CUBDataset(t.root, "train", 32)


def test_part_locs_wrong_count(tmp_path):
    t = fresh(tmp_path, segmentations=False, part_masks=False)
    path = os.path.join(t.root, "parts", "part_locs.txt")
    with open(path) as f:
        lines = f.read().rstrip("\n").split("\n")
    del lines[30]  # image 3, part 1
    with open(path, "w") as f:
        f.write("\n".join(lines))
    with pytest.raises(ValueError, match=r"part_locs\.txt: 89 rows, expected 6 images x 15 parts "
                                         r"= 90.*line 31: found image 3 part 2"):
        CUBDataset(t.root, "train", 32)


# ----------------------------------------------------------------------------- bad images
def test_bad_image_raises_or_is_skipped(tmp_path):
    t = fresh(tmp_path)
    bad = os.path.join(t.root, "images", t.paths[1])  # image 2: first test image
    with open(bad, "wb") as f:
        f.write(b"\xff\xd8\xff\xe0 this is not really a jpeg")
    ds = CUBDataset(t.root, "test", 32)
    with pytest.raises(BadImageError, match=f"{bad}.*skip_bad_images=True"):
        ds[0]
    ds = CUBDataset(t.root, "test", 32, skip_bad_images=True)
    with pytest.warns(UserWarning, match=f"skipping undecodable file.*{t.paths[1]}"):
        assert ds[0] is None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        batch = collate([ds[0], ds[1]])
    assert int(batch["num_skipped"]) == 1 and batch["image"].shape[0] == 1
    assert batch["index"].tolist() == [1]


# ----------------------------------------------------------------------------- io helpers
def test_read_table_text_columns_and_line_numbers(tmp_path):
    p = tmp_path / "t.txt"
    p.write_text("\ufeff1 left eye \r\n\r\n  2   right\twing\r\n3 tail")
    (ids, names), lines = read_table(p, 2, (int, str), return_line_numbers=True,
                                     rest_of_line=True)
    assert ids.tolist() == [1, 2, 3] and names == ["left eye", "right\twing", "tail"]
    assert lines.tolist() == [1, 3, 4]
    # without rest_of_line (a path column) an extra field is an error naming the line
    with pytest.raises(ValueError, match=r"t\.txt, line 1: expected 2 .*found 3: '1 left eye'"):
        read_table(p, 2, (int, str))
    p.write_text("")
    ids, names = read_table(p, 2, (int, str))
    assert len(ids) == 0 and names == []


def test_images_txt_line_with_extra_column_is_rejected(tmp_path):
    """Issue 9: `1 a/b.jpg extra` used to become the path 'a/b.jpg extra'; now the dataset stops
    naming images.txt, the line and the fix (through build_dataset: data.root and the split)."""
    from partformer.data.io import DatasetError
    t = fresh(tmp_path)
    path = os.path.join(t.root, "images.txt")
    with open(path) as f:
        lines = f.read().splitlines()
    lines[2] = lines[2] + " extra"
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")
    with pytest.raises(ValueError, match=r"images\.txt, line 3: expected 2 .*found 3.*Fix or remove "
                                         r"that line \(a text field here cannot contain spaces\)"):
        CUBDataset(t.root, "train", 32)
    cfg = cfglib.DataConfig(name="cub", root=t.root, image_size=32)
    with pytest.raises(DatasetError, match=r"data\.name=cub split 'train' at data\.root=.*"
                                           r"images\.txt, line 3"):
        build_dataset(cfg, "train")


def test_read_table_numeric_errors(tmp_path):
    p = tmp_path / "n.txt"
    p.write_text("1 2.5\n\n  \n2 -3e2")
    (a, b), lines = read_table(p, 2, (int, float), return_line_numbers=True)
    assert a.dtype == np.int64 and b.dtype == np.float64 and b.tolist() == [2.5, -300.0]
    assert lines.tolist() == [1, 4]
    p.write_text("1 2.5\n\n2 nan\n")
    with pytest.raises(ValueError,
                       match=r"n\.txt, line 3: column 2 \(b\) expected a finite number"):
        read_table(p, 2, (int, float), names=("a", "b"))
    p.write_text("1 2.5\n2 3 4")
    with pytest.raises(ValueError, match=r"line 2: expected 2 whitespace-separated columns "
                                         r"<a:integer> <b:number>, found 3"):
        read_table(p, 2, (int, float), names=("a", "b"))
    p.write_bytes(b"\xff\xfe\x00\x01")
    with pytest.raises(ValueError, match="not a UTF-8 text file"):
        read_table(p, 2, (int, float))


def test_require_file(tmp_path):
    assert require_file(__file__) == __file__
    with pytest.raises(FileNotFoundError, match=r"(?s)x\.txt not found.*Expected layout:.*"
                                                r"root/.*datasets/README\.md"):
        require_file(tmp_path / "x.txt", "root/\n  x.txt")


def test_load_image_and_mask(tmp_path):
    grey = tmp_path / "g.png"
    cv2.imwrite(str(grey), np.full((4, 5), 200, np.uint8))
    im = load_image(grey)
    assert im.shape == (4, 5, 3) and im.dtype == np.uint8 and (im == 200).all()
    colour = tmp_path / "c.png"
    bgr = np.zeros((4, 5, 3), np.uint8)
    bgr[..., 2] = 255  # red in BGR
    cv2.imwrite(str(colour), bgr)
    assert load_image(colour)[0, 0].tolist() == [255, 0, 0]  # RGB
    assert load_mask(grey).shape == (4, 5)
    with pytest.raises(BadImageError, match="colour image"):
        load_mask(colour)
    junk = tmp_path / "j.jpg"
    junk.write_bytes(b"junk")
    with pytest.raises(BadImageError, match="cannot decode image .*j.jpg"):
        load_image(junk)
    with pytest.raises(FileNotFoundError, match="nope.jpg"):
        load_image(tmp_path / "nope.jpg")


# ----------------------------------------------------------------------------- image folder
def write_folder(root, rels, size=(40, 60)):
    for rel in rels:
        p = os.path.join(root, rel)
        os.makedirs(os.path.dirname(p), exist_ok=True)
        cv2.imwrite(p, np.full((*size, 3), 90, np.uint8))


def test_image_folder(tmp_path):
    write_folder(tmp_path, ["b/2.JPG", "a/1.png", "a/deeper/3.jpeg", ".hidden/4.jpg", "a/._5.jpg"])
    (tmp_path / "notes.txt").write_text("not an image")
    ds = ImageFolderDataset(str(tmp_path), "train", image_size=32)
    assert ds.paths == ["a/1.png", "a/deeper/3.jpeg", "b/2.JPG"]
    s = ds[2]
    assert set(s) == {"image", "label", "index", "orig_size", "path"}
    assert s["image"].shape == (3, 32, 32) and int(s["label"]) == 0 and s["path"] == "b/2.JPG"
    assert s["orig_size"].tolist() == [40, 60]
    batch = collate([ds[0], ds[1]])
    assert batch["path"] == ["a/1.png", "a/deeper/3.jpeg"]
    assert ImageFolderDataset(str(tmp_path), "a", 32, resize="shorter").paths[0] == "1.png"
    assert ImageFolderDataset(str(tmp_path), "a", 32, resize="shorter")[0]["image"].shape == \
        (3, 32, 48)


def test_image_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no image found under .*empty"):
        ImageFolderDataset(str(tmp_path / "empty"), "train", 32)
    with pytest.raises(FileNotFoundError, match="not a directory"):
        ImageFolderDataset(str(tmp_path / "missing"), "train", 32)
    with pytest.raises(ValueError, match="needs boxes"):
        ImageFolderDataset(str(tmp_path), "train", 32, resize="bbox_crop")
    write_folder(tmp_path / "imgs", ["ok.png"])
    (tmp_path / "imgs" / "broken.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(BadImageError, match="broken.png"):
        ImageFolderDataset(str(tmp_path / "imgs"), "train", 32)[0]
    ds = ImageFolderDataset(str(tmp_path / "imgs"), "train", 32, skip_bad_images=True)
    with pytest.warns(UserWarning, match="broken.png"):
        assert ds[0] is None
