"""The uint8 training-image cache (partformer/data/cache.py): it returns exactly the decoded and
resized pixels, is built once and then decodes nothing, notices changed inputs, keeps the skipped
images skipped, and a training run reading it ends with the same weights as one decoding JPEGs."""
from __future__ import annotations

import os
import types

import pytest
import torch

from partformer.data import collate
from partformer.data.cache import ImageCache, build_image_cache
from partformer.data.cub import CUBDataset
from partformer.data.transforms import images_to_float
from partformer.engine.trainer import Trainer

from tests.cub_tree import write_tiny_cub
from tests.tiny import shared_root, tiny_config


def data_cfg(root, size=40, resize="whole", options=None):
    return types.SimpleNamespace(name="cub", root=root, image_size=size, resize=resize,
                                 options=options or {})


@pytest.fixture()
def cub(tmp_path):
    tree = write_tiny_cub(str(tmp_path), n_images=9, segmentations=False, part_masks=False)
    return tree.root


def test_cache_returns_the_decoded_pixels(cub, tmp_path):
    ds = CUBDataset(cub, "trainval", 40, "whole")
    seconds = build_image_cache(ds, data_cfg(cub), "trainval", str(tmp_path / "c"), verbose=False)
    assert seconds is not None and seconds >= 0
    cache = ImageCache(ds, data_cfg(cub), "trainval", str(tmp_path / "c"))
    assert len(cache) == len(ds) and cache.shape == (len(ds), 3, 40, 40)
    assert os.path.getsize(cache.path) == len(ds) * 3 * 40 * 40
    for i in range(len(ds)):
        item = cache[i]
        assert item["image"].dtype == torch.uint8 and int(item["index"]) == i
        # the float image the training step sees equals the dataset's own, bit for bit
        assert torch.equal(images_to_float(item["image"]), ds[i]["image"])
    # a batch converted on the "device" equals the collated decoded batch
    batch = collate.collate([cache[i] for i in range(4)])
    assert torch.equal(images_to_float(batch["image"]),
                       collate.collate([ds[i] for i in range(4)])["image"])
    assert cache.image_path(3) == ds.image_path(3)          # the dataset's attributes pass through
    with pytest.raises(IndexError, match="image cache"):
        cache[len(ds)]


def test_second_use_decodes_nothing_and_changes_select_another_file(cub, tmp_path, monkeypatch):
    ds = CUBDataset(cub, "trainval", 40, "whole")
    cache_dir = str(tmp_path / "c")
    build_image_cache(ds, data_cfg(cub), "trainval", cache_dir, verbose=False)
    first = ImageCache(ds, data_cfg(cub), "trainval", cache_dir)
    expect = first[2]["image"].clone()

    import partformer.data.cub as cub_module

    def no_decoding(path):
        raise AssertionError(f"decoded {path}")

    monkeypatch.setattr(cub_module, "load_image", no_decoding)
    assert build_image_cache(ds, data_cfg(cub), "trainval", cache_dir, verbose=False) is None
    again = ImageCache(ds, data_cfg(cub), "trainval", cache_dir)
    assert again.path == first.path and torch.equal(again[2]["image"], expect)
    monkeypatch.undo()

    # another size, another file; a modified image file, another file
    ds32 = CUBDataset(cub, "trainval", 32, "whole")
    assert build_image_cache(ds32, data_cfg(cub, 32), "trainval", cache_dir, verbose=False) is not None
    assert ImageCache(ds32, data_cfg(cub, 32), "trainval", cache_dir).path != first.path
    path = ds.image_path(0)
    st = os.stat(path)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10 ** 9))
    with pytest.raises(FileNotFoundError, match="build_image_cache"):
        ImageCache(ds, data_cfg(cub), "trainval", cache_dir)


def test_skipped_images_stay_skipped_and_sizes_must_agree(cub, tmp_path):
    ds = CUBDataset(cub, "trainval", 40, "whole", skip_bad_images=True)
    with open(ds.image_path(1), "wb") as f:
        f.write(b"not a jpeg")
    with pytest.warns(UserWarning, match="undecodable"):
        build_image_cache(ds, data_cfg(cub), "trainval", str(tmp_path / "c"), verbose=False)
    cache = ImageCache(ds, data_cfg(cub), "trainval", str(tmp_path / "c"))
    assert cache.invalid == {1} and cache[1] is None
    batch = collate.collate([cache[i] for i in range(3)])
    assert int(batch["num_skipped"]) == 1 and batch["index"].tolist() == [0, 2]
    # a resize mode whose images differ in size cannot be cached
    shorter = CUBDataset(cub, "trainval", 40, "shorter", skip_bad_images=True)
    sizes = {tuple(shorter[i]["image"].shape) for i in (0, 2, 3, 4)}
    assert len(sizes) > 1
    with pytest.raises(ValueError, match="data.cache"), pytest.warns(UserWarning):
        build_image_cache(shorter, data_cfg(cub, resize="shorter"), "trainval",
                          str(tmp_path / "c2"), verbose=False)
    assert os.listdir(tmp_path / "c2") == []          # nothing half-written is left behind


def test_training_from_the_cache_gives_the_same_weights(tmp_path_factory, tmp_path):
    """Three optimiser steps with data.cache set end with exactly the weights of three steps that
    decode the images (same order, same augmentation, same pixels)."""
    root = shared_root(tmp_path_factory)
    weights, initial = {}, None
    for name, extra in (("decode", []), ("cache", [f"data.cache={tmp_path / 'cache'}"])):
        cfg = tiny_config(root, ["train.max_steps=3", "data.val_split=null"] + extra)
        tr = Trainer(cfg, run_dir=str(tmp_path / name), verbose=False)
        try:
            if name == "cache":
                assert isinstance(tr.train_set, ImageCache) and tr.train_set.build_seconds
            else:
                initial = {k: v.clone() for k, v in tr.model.state_dict().items()}
            tr.fit()
        finally:
            tr.close()
        weights[name] = {k: v.clone() for k, v in tr.model.state_dict().items()}
    assert weights["decode"].keys() == weights["cache"].keys()
    for k, v in weights["decode"].items():
        assert torch.equal(v, weights["cache"][k]), k
    assert not all(torch.equal(v, initial[k]) for k, v in weights["decode"].items())
