"""Tests of the synthetic part-discovery benchmark (the package partformer/data/synthetic/).

The layout checks re-implement the key properties of the shared CUB-tree validator on purpose: the
tests must not depend on files outside the repository.
"""
from __future__ import annotations

import dataclasses
import filecmp
import hashlib
import json
import math
import os

import cv2
import numpy as np
import pytest

from partformer.data import synthetic as syn
from partformer.data.synthetic import tree as syn_tree
from partformer.data.synthetic import (FAMILY_KEYPOINTS, FAMILY_PARTS, KEYPOINT_NAMES,
                                       KEYPOINT_OWNER, META_FILE, PART_NAMES, SyntheticConfig,
                                       ensure_synthetic, render_index, render_sample,
                                       write_synthetic_cub)

SMALL = dict(num_train=18, num_val=6, num_test=12)
P = len(KEYPOINT_NAMES)

# sha256 over render_index(cfg, 0..11) (image, part_mask, fg_mask, keypoints, visible, bbox, then
# class, family, facing), recorded with generator 1.0 as the single module data/synthetic.py, under
# OpenCV 5.0.0 and NumPy 2.4.6 (other versions may round differently: the test is skipped there)
GOLDEN_VERSIONS = ("5.0.0", "2.4.6")
GOLDEN = [
    (dict(seed=3, image_size=64),
     "aebdab52e5ce93949499ec075fafab38c907cba36d5f3234a3496dad3034184c"),
    (dict(seed=7, image_size=48, clutter=12, occlusion=0.9, out_of_frame=0.6, articulation=1.5,
          families=("quadruped",), outline_prob=1.0),
     "5383951a4bd415991d0febfff27f1a17639675a79630162f581705256c91d68e"),
]


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    cfg = SyntheticConfig(seed=7, **SMALL)
    root = str(tmp_path_factory.mktemp("syn") / "tree")
    write_synthetic_cub(root, cfg)
    return root, cfg


@pytest.fixture(scope="module")
def samples():
    cfg = SyntheticConfig(seed=3, num_train=120, num_val=0, num_test=0)
    return cfg, [render_index(cfg, i) for i in range(120)]


def _rows(path):
    with open(path) as f:
        return [line.split() for line in f if line.strip()]


# ------------------------------------------------------------------------------------------------
# vocabularies and config
# ------------------------------------------------------------------------------------------------

def test_vocabularies():
    assert len(set(KEYPOINT_NAMES)) == len(KEYPOINT_NAMES)
    assert set(KEYPOINT_OWNER) == set(KEYPOINT_NAMES)
    for fam, kps in FAMILY_KEYPOINTS.items():
        assert len(kps) >= 8 and len(FAMILY_PARTS[fam]) >= 4
        owners = {PART_NAMES[KEYPOINT_OWNER[k] - 1] for k in kps}
        assert owners == set(FAMILY_PARTS[fam])  # every part carries a keypoint
        assert len(kps) > len(owners)              # some parts carry several keypoints
        pairs = [k for k in kps if k.startswith("left ") and "right " + k[5:] in kps]
        assert len(pairs) >= 3                     # left/right pairs
    assert set().union(*FAMILY_KEYPOINTS.values()) == set(KEYPOINT_NAMES)


def test_config_validation_and_roundtrip():
    cfg = SyntheticConfig(num_train=3, num_val=1, num_test=2, scale_range=[0.3, 0.4])
    assert cfg.scale_range == (0.3, 0.4) and cfg.num_images == 6 and cfg.num_classes == 6
    assert SyntheticConfig(**cfg.to_dict()) == cfg
    for bad in (dict(num_train=-1), dict(num_train=0, num_val=0, num_test=0),
                dict(families=("fish",)), dict(num_schemes=0), dict(scale_range=(0.5, 0.2)),
                dict(occlusion=1.5), dict(image_format="bmp"), dict(image_size=8)):
        with pytest.raises(ValueError):
            SyntheticConfig(**bad)


# ------------------------------------------------------------------------------------------------
# rendering: determinism and ground-truth consistency
# ------------------------------------------------------------------------------------------------

def test_render_deterministic():
    cfg = SyntheticConfig(seed=11)
    for i in (0, 5, 9):
        a, b = render_index(cfg, i), render_index(cfg, i)
        for k in ("image", "part_mask", "fg_mask", "keypoints", "visible", "bbox"):
            assert np.array_equal(a[k], b[k]), k
        other = render_index(SyntheticConfig(seed=12), i)
        assert not np.array_equal(a["image"], other["image"])
    # the same generator state gives the same sample through the public render_sample too
    s1 = render_sample(np.random.default_rng([1, 2]), cfg, label=4)
    s2 = render_sample(np.random.default_rng([1, 2]), cfg, label=4)
    assert np.array_equal(s1["image"], s2["image"]) and s1["class"] == 4


@pytest.mark.parametrize("knobs", [
    dict(articulation=0.0, clutter=0, occlusion=0.0, max_rotation=0.0, noise=0, blur=0.0,
         outline_prob=0.0),
    dict(occlusion=1.0, out_of_frame=1.0, clutter=20, articulation=1.5, image_size=64),
    dict(families=("bird",), num_schemes=6, image_size=32, scale_range=(0.2, 0.3)),
    dict(families=("quadruped",), num_schemes=1, image_size=200, scale_range=(0.5, 0.6)),
])
def test_extreme_knobs(knobs):
    cfg = SyntheticConfig(num_train=12, num_val=0, num_test=0, **knobs)
    S = cfg.image_size
    for i in range(12):
        s = render_index(cfg, i)
        assert s["image"].shape == (S, S, 3) and s["fg_mask"].any()
        assert s["family"] in cfg.families and 0 <= s["class"] < cfg.num_classes
        for k in np.flatnonzero(s["visible"]):
            x, y = s["keypoints"][k]
            assert s["part_mask"][int(y), int(x)] == KEYPOINT_OWNER[KEYPOINT_NAMES[k]]


def test_ground_truth_consistency(samples):
    cfg, ss = samples
    S = cfg.image_size
    families = set()
    for s in ss:
        img, pm, fg = s["image"], s["part_mask"], s["fg_mask"]
        assert img.shape == (S, S, 3) and img.dtype == np.uint8
        assert pm.shape == (S, S) and pm.dtype == np.uint8
        assert np.array_equal(fg, pm > 0)
        assert fg.sum() > 0
        present = set(np.unique(pm[pm > 0]).tolist())
        allowed = {PART_NAMES.index(p) + 1 for p in FAMILY_PARTS[s["family"]]}
        assert present <= allowed
        families.add(s["family"])
        kp, vis = s["keypoints"], s["visible"]
        assert kp.shape == (P, 2) and vis.shape == (P,)
        assert np.all(kp[~vis] == 0)
        for k in np.flatnonzero(vis):
            name = KEYPOINT_NAMES[k]
            assert name in FAMILY_KEYPOINTS[s["family"]]
            x, y = kp[k]
            assert 0 <= x < S and 0 <= y < S
            assert pm[int(math.floor(y)), int(math.floor(x))] == KEYPOINT_OWNER[name], name
        # tight box: covers every foreground pixel and each side touches one
        x, y, w, h = s["bbox"]
        ys, xs = np.nonzero(fg)
        assert (x, y, x + w, y + h) == (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
        assert 0 <= x and 0 <= y and x + w <= S and y + h <= S
    assert families == {"bird", "quadruped"}
    # keypoints are visible most of the time, and occlusion / profile view hides some
    vis = np.stack([s["visible"] for s in ss])
    fam_kp = sum(len(FAMILY_KEYPOINTS[s["family"]]) for s in ss)
    assert 0.6 < vis.sum() / fam_kp < 0.98


def test_variation(samples):
    cfg, ss = samples
    facing = {s["facing"] for s in ss}
    assert facing == {"left", "right"}
    # objects sometimes leave the frame (their box touches the border)
    S = cfg.image_size
    touching = [s for s in ss if s["bbox"][0] == 0 or s["bbox"][1] == 0
                or s["bbox"][0] + s["bbox"][2] == S or s["bbox"][1] + s["bbox"][3] == S]
    assert 0 < len(touching) < len(ss)
    # box sizes vary (scale, rotation, articulation)
    areas = np.array([s["bbox"][2] * s["bbox"][3] for s in ss])
    assert areas.std() / areas.mean() > 0.15


def test_colour_does_not_identify_parts(samples):
    """A nearest-mean-colour classifier of the part id from the pixel colour is near chance."""
    _, ss = samples
    for fam in ("bird", "quadruped"):
        fs = [s for s in ss if s["family"] == fam]
        half = len(fs) // 2
        parts = [PART_NAMES.index(p) + 1 for p in FAMILY_PARTS[fam]]

        def pixels(group):
            X = np.concatenate([s["image"][s["part_mask"] > 0] for s in group]).astype(np.float64)
            Y = np.concatenate([s["part_mask"][s["part_mask"] > 0] for s in group])
            return X, Y

        Xtr, Ytr = pixels(fs[:half])
        Xte, Yte = pixels(fs[half:])
        means = np.stack([Xtr[Ytr == p].mean(0) for p in parts])
        pred = np.asarray(parts)[((Xte[:, None, :] - means[None]) ** 2).sum(-1).argmin(1)]
        recall = [np.mean(pred[Yte == p] == p) for p in parts]
        balanced = float(np.mean(recall))
        majority = np.bincount(Yte).max() / len(Yte)
        chance = 1.0 / len(parts)
        assert balanced < chance + 0.12, (fam, balanced, recall)
        assert np.mean(pred == Yte) < majority, fam
        # per-part mean colours lie close together relative to the colour spread
        spread = Xtr.std(0).mean()
        assert np.abs(means - means.mean(0)).max() < 0.5 * spread


# ------------------------------------------------------------------------------------------------
# the written CUB-layout tree
# ------------------------------------------------------------------------------------------------

def test_tree_files_parse(tree):
    root, cfg = tree
    N = cfg.num_images
    imgs = _rows(f"{root}/images.txt")
    assert [int(r[0]) for r in imgs] == list(range(1, N + 1))
    labels = _rows(f"{root}/image_class_labels.txt")
    split = _rows(f"{root}/train_test_split.txt")
    val = _rows(f"{root}/val_split.txt")
    boxes = _rows(f"{root}/bounding_boxes.txt")
    for rows in (labels, split, val, boxes):
        assert [int(r[0]) for r in rows] == list(range(1, N + 1))
    classes = _rows(f"{root}/classes.txt")
    assert [int(r[0]) for r in classes] == list(range(1, cfg.num_classes + 1))
    class_dir = {int(r[0]): r[1] for r in classes}
    for (_, rel), (_, c) in zip(imgs, labels):
        assert rel.split("/")[0] == class_dir[int(c)]
        assert rel.endswith("." + cfg.image_format)
    fams = {class_dir[int(c)].split(".")[1].split("_")[0] for _, c in labels}
    assert fams == {"Bird", "Quadruped"}
    # splits: val images are marked train in train_test_split.txt
    sp = np.array([int(r[1]) for r in split])
    vs = np.array([int(r[1]) for r in val])
    assert sp.sum() == cfg.num_train + cfg.num_val and vs.sum() == cfg.num_val
    assert np.all(sp[vs == 1] == 1)
    parts = _rows(f"{root}/parts/parts.txt")
    assert [int(r[0]) for r in parts] == list(range(1, P + 1))
    assert [" ".join(r[1:]) for r in parts] == list(KEYPOINT_NAMES)
    names = _rows(f"{root}/part_masks/part_names.txt")
    assert [(int(r[0]), " ".join(r[1:])) for r in names] == list(enumerate(PART_NAMES, 1))
    with open(f"{root}/{META_FILE}") as f:
        meta = json.load(f)
    assert meta["config"] == cfg.to_dict()
    assert meta["generator_version"] == syn.GENERATOR_VERSION
    assert meta["counts"] == {"train": cfg.num_train, "val": cfg.num_val, "test": cfg.num_test}
    assert not [e for e in os.listdir(os.path.dirname(root)) if ".tmp-" in e]


def test_tree_annotations_valid(tree):
    """The checks of the shared CUB-tree validator, plus part-mask consistency."""
    root, cfg = tree
    N, S = cfg.num_images, cfg.image_size
    imgs = {int(r[0]): r[1] for r in _rows(f"{root}/images.txt")}
    boxes = {int(r[0]): list(map(float, r[1:5])) for r in _rows(f"{root}/bounding_boxes.txt")}
    with open(f"{root}/parts/part_locs.txt") as f:
        lines = [line.split() for line in f if line.strip()]
    assert len(lines) == N * P
    locs = np.array([[float(v) for v in r] for r in lines])
    assert np.array_equal(locs[:, :2].astype(int),
                          np.array([[i, p] for i in range(1, N + 1) for p in range(1, P + 1)]))
    inv = [r for r in lines if r[4] == "0"]
    assert inv and all(r[2:] == ["0.0", "0.0", "0"] for r in inv)
    n_vis = 0
    for i in range(1, N + 1):
        stem = os.path.splitext(imgs[i])[0]
        im = cv2.imread(f"{root}/images/{imgs[i]}")
        assert im is not None and im.shape == (S, S, 3)
        seg = cv2.imread(f"{root}/segmentations/{stem}.png", cv2.IMREAD_UNCHANGED)
        pm = cv2.imread(f"{root}/part_masks/{stem}.png", cv2.IMREAD_UNCHANGED)
        assert seg.dtype == np.uint8 and set(np.unique(seg)) <= {0, 255}
        assert np.array_equal(seg == 255, pm > 0)
        assert pm.max() <= len(PART_NAMES)
        x, y, w, h = boxes[i]
        ys, xs = np.nonzero(seg)
        assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= S and y + h <= S
        assert xs.min() >= x and ys.min() >= y and xs.max() < x + w and ys.max() < y + h
        assert (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1) == (x, y, x + w, y + h)
        for r in locs[(locs[:, 0] == i) & (locs[:, 4] == 1)]:
            n_vis += 1
            kx, ky = r[2], r[3]
            assert 0 <= kx < S and 0 <= ky < S
            owner = KEYPOINT_OWNER[KEYPOINT_NAMES[int(r[1]) - 1]]
            assert pm[int(ky), int(kx)] == owner and seg[int(ky), int(kx)] == 255
    assert n_vis > 0.5 * N * 10


def test_tree_matches_render(tree):
    root, cfg = tree
    imgs = {int(r[0]): r[1] for r in _rows(f"{root}/images.txt")}
    for i in (1, cfg.num_images):
        s = render_index(cfg, i - 1)
        pm = cv2.imread(f"{root}/part_masks/{os.path.splitext(imgs[i])[0]}.png",
                        cv2.IMREAD_UNCHANGED)
        assert np.array_equal(pm, s["part_mask"])
        im = cv2.imread(f"{root}/images/{imgs[i]}")[:, :, ::-1].astype(int)
        assert np.abs(im - s["image"]).mean() < 4  # jpeg, quality 95, 4:4:4


def test_workers_give_identical_tree(tree, tmp_path):
    root, cfg = tree
    other = str(tmp_path / "par")
    write_synthetic_cub(other, SyntheticConfig(**{**cfg.to_dict(), "num_train": 70}),
                        num_workers=2)
    serial = str(tmp_path / "ser")
    write_synthetic_cub(serial, SyntheticConfig(**{**cfg.to_dict(), "num_train": 70}))
    cmp = filecmp.dircmp(other, serial)
    stack = [cmp]
    while stack:
        c = stack.pop()
        assert not c.left_only and not c.right_only
        _, mismatch, errors = filecmp.cmpfiles(c.left, c.right, c.common_files, shallow=False)
        assert not mismatch and not errors, mismatch
        stack += list(c.subdirs.values())


def test_generation_is_bit_identical_to_generator_1_0():
    """Trees on disk are reused while GENERATOR_VERSION is unchanged, so the same (seed, index)
    must give the same image and ground truth, byte for byte. A change that moves a byte must bump
    GENERATOR_VERSION and these digests."""
    if (cv2.__version__, np.__version__) != GOLDEN_VERSIONS:
        pytest.skip(f"digests recorded with OpenCV / NumPy {GOLDEN_VERSIONS}")
    assert syn.GENERATOR_VERSION == "1.0"
    for options, expected in GOLDEN:
        cfg = SyntheticConfig(**options)
        h = hashlib.sha256()
        for i in range(12):
            s = render_index(cfg, i)
            for key in ("image", "part_mask", "fg_mask", "keypoints", "visible", "bbox"):
                h.update(np.ascontiguousarray(s[key]).tobytes())
            h.update(f"{s['class']} {s['family']} {s['facing']}".encode())
        assert h.hexdigest() == expected, options


# ------------------------------------------------------------------------------------------------
# atomic writing, ensure_synthetic, registry, CLI
# ------------------------------------------------------------------------------------------------

def test_interrupted_write_leaves_nothing(tmp_path, monkeypatch):
    def boom(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(syn_tree, "_write_chunk", boom)
    with pytest.raises(KeyboardInterrupt):
        write_synthetic_cub(str(tmp_path / "t"), SyntheticConfig(**SMALL))
    assert os.listdir(tmp_path) == []


def test_ensure_synthetic(tmp_path):
    cfg = SyntheticConfig(seed=1, num_train=4, num_val=2, num_test=3)
    root = str(tmp_path / "a")
    assert ensure_synthetic(root, cfg, verbose=False) == os.path.abspath(root)
    mtime = os.path.getmtime(os.path.join(root, META_FILE))
    assert ensure_synthetic(root, cfg, verbose=False) == os.path.abspath(root)  # reused
    assert os.path.getmtime(os.path.join(root, META_FILE)) == mtime
    with pytest.raises(ValueError, match="seed"):
        ensure_synthetic(root, SyntheticConfig(seed=2, num_train=4, num_val=2, num_test=3),
                         verbose=False)
    with pytest.raises(FileExistsError):
        write_synthetic_cub(root, cfg)
    # a folder holding only a README (the repo's datasets/synthetic/) is filled, README kept
    holder = tmp_path / "b"
    holder.mkdir()
    (holder / "README.md").write_text("hello\n")
    ensure_synthetic(str(holder), cfg, verbose=False)
    assert (holder / "README.md").read_text() == "hello\n"
    assert (holder / META_FILE).exists() and (holder / "images.txt").exists()
    # something that is not a complete synthetic tree
    junk = tmp_path / "c"
    junk.mkdir()
    (junk / "images.txt").write_text("1 x.jpg\n")
    with pytest.raises(ValueError, match="not a complete synthetic"):
        ensure_synthetic(str(junk), cfg, verbose=False)


def test_registered_dataset(tmp_path):
    pytest.importorskip("partformer.data.cub")
    torch = pytest.importorskip("torch")
    from partformer.data import DATASETS, _import_all
    _import_all()
    build = DATASETS.get("synthetic")
    gen = dict(seed=5, num_train=6, num_val=2, num_test=4)
    root = str(tmp_path / "reg")
    ds = build(root, "train", 64, "whole", generator=gen)
    assert len(ds) == 6
    assert len(build(root, "val", 64, generator=gen)) == 2
    assert len(build(root, "test", 64, generator=gen)) == 4
    s = ds[0]
    assert tuple(s["image"].shape) == (3, 64, 64) and s["keypoints"].shape == (P, 2)
    assert s["image"].dtype == torch.float32


def test_cli(tmp_path, capsys):
    import importlib.util
    path = os.path.join(os.path.dirname(__file__), "..", "tools", "make_synthetic.py")
    spec = importlib.util.spec_from_file_location("make_synthetic", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    out = str(tmp_path / "cli")
    assert mod.main(["--out", out, "--num-train", "5", "--num-val", "1", "--num-test", "2",
                     "--image-size", "64", "--seed", "4", "--clutter", "3",
                     "--scale-range", "0.3", "0.35", "--image-format", "png"]) == 0
    text = capsys.readouterr().out
    assert "images/second" in text and "train 5, val 1, test 2" in text
    with open(os.path.join(out, META_FILE)) as f:
        c = json.load(f)["config"]
    assert (c["image_size"], c["seed"], c["clutter"], c["scale_range"], c["image_format"]) == \
        (64, 4, 3, [0.3, 0.35], "png")
    rel = _rows(os.path.join(out, "images.txt"))[0][1]
    assert cv2.imread(os.path.join(out, "images", rel)).shape == (64, 64, 3)


# ------------------------------------------------------------------------------------------------
# levels (partformer/data/synthetic/levels.py)
# ------------------------------------------------------------------------------------------------

# Recorded with the code before the levels existed (commit 9627e98, generator 1.0), under OpenCV
# 5.1.0 and NumPy 2.4.6: the sha256 over every file of the 12 / 6 / 6 default tree but
# synthetic_meta.json (each file's relative path and sha256, in sorted order), the sha256 of that
# tree's synthetic_meta.json, and the sha256 over render_index(SyntheticConfig(), i) of images of
# all three splits of the 2,000 / 300 / 600 benchmark (as GOLDEN above). The full 2,900-image tree
# was compared file by file too (datasets/synthetic/README.md, "Levels").
PRE_LEVELS_VERSIONS = ("5.1.0", "2.4.6")
PRE_LEVELS_TREE = "bed677a732e52fb36d87f00f120e513f6ad094c465706f87ad39013ff86e8b24"
PRE_LEVELS_META = "54de479754facf3fb338681b55e2b6bf27883f26cd80e238e833a330192636f3"
PRE_LEVELS_RENDER = "b9a098620ad5c52c72942b018fa2dacfd9cec730dfef8bbad7e6cf8de4d30edd"
PRE_LEVELS_INDICES = (0, 1, 2, 3, 1999, 2000, 2299, 2300, 2899)


def _tree_digest(root):
    h = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for f in sorted(filenames):
            rel = os.path.relpath(os.path.join(dirpath, f), root)
            if rel == META_FILE:
                continue
            with open(os.path.join(dirpath, f), "rb") as fh:
                h.update(rel.encode() + b"\0" + hashlib.sha256(fh.read()).digest())
    return h.hexdigest()


def test_levels_are_knob_sets_with_their_own_seeds():
    assert syn.level_names() == ("rigid", "clean", "textured", "cluttered")   # easy to hard
    assert syn.level_config("cluttered") == SyntheticConfig()     # the default benchmark
    assert syn.level_config() == SyntheticConfig()
    seeds = [syn.level_config(n).seed for n in syn.level_names()]
    assert len(set(seeds)) == len(seeds) and all(s < 1000 for s in seeds)  # pretraining: >= 1000
    base = SyntheticConfig()
    for name in syn.level_names():
        cfg = syn.level_config(name)
        # the same animals, parts, keypoints, splits and image size on every level
        for f in ("num_train", "num_val", "num_test", "image_size", "families", "num_schemes",
                  "scale_range", "flip_prob", "pattern_consistency", "noise", "blur",
                  "outline_prob", "image_format", "jpeg_quality"):
            assert getattr(cfg, f) == getattr(base, f), (name, f)
        if name != "rigid":
            assert (cfg.articulation, cfg.max_rotation) == (base.articulation, base.max_rotation)
        assert syn.level_of(cfg) == name
        assert syn.level_of(syn.level_config(name, num_train=7)) == name   # sizes do not matter
        assert syn.level_of(syn.level_config(name, clutter=cfg.clutter + 3)) is None
    clean = syn.level_config("clean")
    assert (clean.background, clean.clutter, clean.occlusion, clean.out_of_frame) == \
        ("smooth", 0, 0.0, 0.0)
    tex = syn.level_config("textured")
    assert (tex.background, tex.clutter, tex.occlusion, tex.out_of_frame) == \
        ("textured", 0, 0.0, 0.0)
    rigid = syn.level_config("rigid")
    assert {f.name: getattr(rigid, f.name) for f in dataclasses.fields(rigid)} == \
        {**clean.to_dict(), "seed": rigid.seed, "max_rotation": 0.0, "articulation": 0.0,
         "scale_range": clean.scale_range, "families": clean.families}
    with pytest.raises(ValueError, match="unknown synthetic level"):
        syn.level_config("hard")
    with pytest.raises(ValueError, match="clutterr"):
        syn.level_config("clean", clutterr=3)
    for bad in (dict(background="noise"), dict(distractors="birds")):
        with pytest.raises(ValueError):
            SyntheticConfig(**bad)


def test_cluttered_level_is_bit_identical_to_the_benchmark_before_levels(tmp_path):
    """`tools/make_synthetic.py --level cluttered` writes, byte for byte, the files the generator
    wrote before the levels existed; synthetic_meta.json only gains the level's name and the two
    new settings at their generator-1.0 values."""
    if (cv2.__version__, np.__version__) != PRE_LEVELS_VERSIONS:
        pytest.skip(f"digests recorded with OpenCV / NumPy {PRE_LEVELS_VERSIONS}")
    out = str(tmp_path / "cl")
    _cli_module().main(["--level", "cluttered", "--out", out, "--num-train", "12", "--num-val",
                        "6", "--num-test", "6"])
    assert _tree_digest(out) == PRE_LEVELS_TREE
    with open(os.path.join(out, META_FILE)) as f:
        meta = json.load(f)
    assert meta.pop("level") == "cluttered"
    added = {k: meta["config"].pop(k) for k in syn_tree.ADDED_SETTINGS}
    assert added == syn_tree.ADDED_SETTINGS
    old = (json.dumps(meta, indent=2)).encode()
    assert hashlib.sha256(old).hexdigest() == PRE_LEVELS_META
    h = hashlib.sha256()
    for i in PRE_LEVELS_INDICES:
        s = render_index(syn.level_config("cluttered"), i)
        for key in ("image", "part_mask", "fg_mask", "keypoints", "visible", "bbox"):
            h.update(np.ascontiguousarray(s[key]).tobytes())
        h.update(f"{s['class']} {s['family']} {s['facing']}".encode())
    assert h.hexdigest() == PRE_LEVELS_RENDER


def test_tree_written_before_levels_is_reused(tmp_path):
    """A tree whose synthetic_meta.json predates the new settings counts as written with their
    generator-1.0 values: reused by the cluttered level, a mismatch for the others."""
    cfg = SyntheticConfig(**SMALL)
    root = str(tmp_path / "old")
    write_synthetic_cub(root, cfg)
    path = os.path.join(root, META_FILE)
    with open(path) as f:
        meta = json.load(f)
    del meta["level"]
    for k in syn_tree.ADDED_SETTINGS:
        del meta["config"][k]
    with open(path, "w") as f:
        json.dump(meta, f)
    assert ensure_synthetic(root, syn.level_config("cluttered", **SMALL), verbose=False) == root
    with pytest.raises(ValueError, match="background: on disk 'textured', requested 'smooth'"):
        ensure_synthetic(root, syn.level_config("clean", **{**SMALL, "seed": 0}), verbose=False)


@pytest.mark.parametrize("name", ["rigid", "clean", "textured"])
def test_level_scenes(name, monkeypatch):
    """What a level promises: nothing drawn but the animal (no distractor, no occluder: every
    drawn layer carries a part id), all of the animal in the frame; `rigid` and `clean`: a
    background without structure."""
    from partformer.data.synthetic import rendering
    drawn = []
    draw = rendering._Canvas.draw

    def spy(self, poly, part, tex):
        drawn.append(part)
        draw(self, poly, part, tex)
    monkeypatch.setattr(rendering._Canvas, "draw", spy)
    cfg = syn.level_config(name, num_train=24, num_val=0, num_test=0, image_size=64)
    S = cfg.image_size
    for i in range(24):
        rng = np.random.default_rng([cfg.seed, i])
        s = render_sample(rng, cfg, label=i % cfg.num_classes)
        fg = s["fg_mask"]
        assert fg.any()
        x, y, w, h = s["bbox"]
        assert 0 < x and 0 < y and x + w < S and y + h < S, (name, i)   # never leaves the frame
        if name in ("rigid", "clean"):   # nothing but the animal on a gradient (+ noise, outlines, blur)
            img = s["image"].astype(np.float64)
            near = cv2.dilate(fg.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0  # outlines, blur
            both = ~near[:, 1:] & ~near[:, :-1]   # horizontal neighbours on the background
            step = np.abs(img[:, 1:] - img[:, :-1])[both]
            assert step.mean() < 4 and np.quantile(step, 0.99) < 16, (i, step.mean())
    assert len(drawn) > 24 * 8 and min(drawn) > 0


def test_flat_background_is_the_smooth_one_without_its_gradient():
    """``background="flat"`` draws what ``smooth`` draws (same animal, masks and keypoints: the
    random stream is unchanged) with a one-colour background texture, the smooth gradient's
    first colour; the scene's light field, noise and blur then apply as on every level."""
    from partformer.data.synthetic.rendering import _Palette
    clean = syn.level_config("clean", image_size=64)
    flat = dataclasses.replace(clean, background="flat")
    for i in range(8):
        s, f = render_index(clean, i), render_index(flat, i)
        for key in ("part_mask", "fg_mask", "keypoints", "visible", "bbox"):
            np.testing.assert_array_equal(s[key], f[key], err_msg=f"{key} of image {i}")
        assert not np.array_equal(s["image"], f["image"])
        family = ("bird", "quadruped")[i % 2]
        ps = _Palette(np.random.default_rng([1, i]), clean, family, i % 3)
        pf = _Palette(np.random.default_rng([1, i]), flat, family, i % 3)
        bs, bf = (p.textures[p.index["background"]].reshape(-1, 3) for p in (ps, pf))
        assert len(np.unique(bf, axis=0)) == 1
        assert len(np.unique(bs, axis=0)) > 20                       # the gradient
        assert (bf[0] == bs[0]).all() or (bf[0] == bs[-1]).all()     # one of its corners
    with pytest.raises(ValueError, match="background must be one of"):
        SyntheticConfig(background="gradient")


def test_object_distractors_are_not_animal_shapes():
    """``distractors="objects"`` draws few-sided polygons (3-14 vertices: rectangles, triangles,
    regular polygons, stars, crosses) with straight edges and at least one corner that turns by
    more than 40 degrees; the animal-like distractors are 16-vertex ellipses, capsules and leaves."""
    from partformer.data.synthetic.rendering import _random_object
    rng = np.random.default_rng(0)
    for _ in range(300):
        pts = _random_object(rng, 128)
        assert 3 <= len(pts) <= 14
        d0, d1 = pts - np.roll(pts, 1, 0), np.roll(pts, -1, 0) - pts
        cos = (d0 * d1).sum(1) / (np.linalg.norm(d0, axis=1) * np.linalg.norm(d1, axis=1))
        assert np.degrees(np.arccos(np.clip(cos, -1, 1))).max() > 40


def test_level_option_of_the_dataset(tmp_path):
    pytest.importorskip("partformer.data.cub")
    from partformer.data import DATASETS, _import_all
    _import_all()
    build = DATASETS.get("synthetic")
    root = str(tmp_path / "lv")
    gen = dict(level="clean", num_train=4, num_val=2, num_test=2)
    assert len(build(root, "train", 64, "whole", generator=gen)) == 4
    with open(os.path.join(root, META_FILE)) as f:
        meta = json.load(f)
    assert meta["level"] == "clean"
    assert meta["config"] == syn.level_config("clean", num_train=4, num_val=2,
                                              num_test=2).to_dict()
    with pytest.raises(ValueError, match="seed"):    # the same root asked for another level
        build(root, "train", 64, "whole", generator={**gen, "level": "textured"})
    with pytest.raises(ValueError, match="data.options.generator.level=clean"):
        build(root, "train", 64, "whole", generator=dict(num_train=4, num_val=2, num_test=2))
    cfg, workers = syn.generator_config({"level": "textured", "clutter": 4, "num_workers": 2})
    assert (cfg.seed, cfg.clutter, workers) == (syn.level_config("textured").seed, 4, 2)


def _cli_module():
    import importlib.util
    path = os.path.join(os.path.dirname(__file__), "..", "tools", "make_synthetic.py")
    spec = importlib.util.spec_from_file_location("make_synthetic", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_cli_level(tmp_path, capsys):
    out = str(tmp_path / "lv")
    assert _cli_module().main(["--level", "clean", "--out", out, "--num-train", "3", "--num-val",
                               "1", "--num-test", "2", "--image-size", "48"]) == 0
    with open(os.path.join(out, META_FILE)) as f:
        meta = json.load(f)
    assert meta["level"] is None     # another image size is not the level any more
    assert meta["config"]["background"] == "smooth" and meta["config"]["seed"] == 101
    out2 = str(tmp_path / "lv2")
    _cli_module().main(["--level", "textured", "--out", out2, "--num-train", "3", "--num-val",
                        "1", "--num-test", "2"])
    with open(os.path.join(out2, META_FILE)) as f:
        assert json.load(f)["level"] == "textured"
    assert "level textured" in capsys.readouterr().out
