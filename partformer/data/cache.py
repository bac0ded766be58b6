"""A pre-resized uint8 cache of a split's images: one memory-mapped file, built once, read by every
later epoch and run, so that training decodes and resizes each JPEG once instead of once per epoch.

:func:`build_image_cache` runs a dataset built by :func:`partformer.data.build_dataset` over
every index (with ``num_workers`` loader workers) and writes its images, exactly as the dataset
returns them, to

    <cache_dir>/<data.name>_<split>_<S>_<resize>_<key>.u8     uint8 [N, 3, H, W] (C-order, raw)
    <cache_dir>/<data.name>_<split>_<S>_<resize>_<key>.json   shape, identity, undecodable indices

The data file is written to a temporary name and renamed, and the JSON is written after it (also
atomically): a cache whose JSON exists is complete. ``key`` is a hash of what decides the pixels:
the dataset class, its root, the split, image size, resize mode, ``data.options`` and, when the
dataset has ``image_path(i)``, every image's path, size and modification time. Changing any of
them selects another file, so a stale cache is never read; old files are left for the user to
delete. ``ImageCache(dataset, data_cfg, split, cache_dir)`` then serves them.

A sample of the cache is ``{"image": uint8 [3, H, W], "index": int64}``: the training loop uses
nothing else, and converts the batch to float on the device
(:func:`partformer.data.transforms.images_to_float`, the same ``x / 255`` as the datasets), so the
values are identical to the decoded ones (tests/test_cache.py). Every image of the split must have
the same size (``transforms.FIXED_SIZE_MODES``). An image the
dataset skips as undecodable (``skip_bad_images``) is recorded and comes back as ``None``, which
``partformer.data.collate`` drops and counts, as without the cache.

With torch.distributed, rank 0 builds while the others wait (``partformer.engine.trainer``).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from partformer.data.transforms import FIXED_SIZE_MODES

__all__ = ["ImageCache", "build_image_cache", "cache_identity", "CACHE_FORMAT"]

CACHE_FORMAT = 1


def cache_identity(dataset, data_cfg, split: str) -> Dict[str, Any]:
    """What decides the cached pixels (see the module docstring), as a JSON-able dict."""
    ident: Dict[str, Any] = {
        "format": CACHE_FORMAT, "dataset": type(dataset).__name__, "name": data_cfg.name,
        "root": os.path.abspath(str(getattr(dataset, "root", data_cfg.root))), "split": split,
        "image_size": int(data_cfg.image_size), "resize": data_cfg.resize,
        "options": data_cfg.options or {}, "num_images": len(dataset),
    }
    image_path = getattr(dataset, "image_path", None)
    if image_path is not None:
        files = hashlib.sha1()
        for i in range(len(dataset)):
            path = image_path(i)
            try:
                st = os.stat(path)
                files.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            except OSError:          # a missing file is the dataset's to report (or skip)
                files.update(f"{path}\0missing\n".encode())
        ident["files_sha1"] = files.hexdigest()
    return ident


class _IndexedImages(Dataset):
    """``(index, uint8 image [3, H, W] or None)`` of every index of ``dataset`` (for building)."""

    def __init__(self, dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, i: int) -> Tuple[int, Optional[torch.Tensor]]:
        sample = self.dataset[i]
        if sample is None:
            return i, None
        image = sample["image"]
        if image.dtype == torch.uint8:
            return i, image
        u8 = torch.round(image.float() * 255.0).clamp_(0, 255).to(torch.uint8)
        if not torch.equal(u8.to(torch.float32).div_(255.0), image):
            raise ValueError(f"{type(self.dataset).__name__} image {i} is not an 8-bit image "
                             "divided by 255; it cannot be cached without changing its values. "
                             "Set data.cache=null")
        return i, u8


def _as_list(batch: List[Tuple[int, Optional[torch.Tensor]]]):
    return batch


def _paths(dataset, data_cfg, split: str, cache_dir: str):
    ident = cache_identity(dataset, data_cfg, split)
    key = hashlib.sha1(json.dumps(ident, sort_keys=True, default=str).encode()).hexdigest()
    stem = f"{data_cfg.name}_{split}_{int(data_cfg.image_size)}_{data_cfg.resize}_{key[:16]}"
    return ident, os.path.join(cache_dir, stem + ".u8"), os.path.join(cache_dir, stem + ".json")


def build_image_cache(dataset, data_cfg, split: str, cache_dir: str, num_workers: int = 0,
                      verbose: bool = True) -> Optional[float]:
    """Build the cache of ``dataset`` unless it exists; returns the seconds spent building, or
    ``None`` when the cache was already there. One process at a time (rank 0 with DDP)."""
    ident, path, meta_path = _paths(dataset, data_cfg, split, cache_dir)
    if os.path.isfile(meta_path):
        return None
    os.makedirs(cache_dir, exist_ok=True)
    t0 = time.time()
    _build(dataset, ident, path, meta_path, num_workers, verbose)
    return time.time() - t0


def _build(dataset, ident: Dict[str, Any], path: str, meta_path: str, num_workers: int,
           verbose: bool) -> None:
    n = len(dataset)
    if n == 0:
        raise ValueError(f"cannot cache an empty split ({ident['split']})")
    if verbose:
        print(f"building the image cache {path} ({n} images; once per dataset, split, "
              "size and resize mode)", flush=True)
    # a private generator: building must not advance the global RNG (model initialisation and
    # everything else seeded after it stay as they would be without the cache)
    loader = DataLoader(_IndexedImages(dataset), batch_size=16, shuffle=False,
                        num_workers=num_workers, collate_fn=_as_list,
                        generator=torch.Generator().manual_seed(0))
    tmp = f"{path}.tmp{os.getpid()}"
    array: Optional[np.memmap] = None
    shape = None
    invalid: List[int] = []
    try:
        for batch in loader:
            for i, image in batch:
                if image is None:
                    invalid.append(i)
                    continue
                if array is None:
                    shape = (n,) + tuple(image.shape)
                    array = np.memmap(tmp, dtype=np.uint8, mode="w+", shape=shape)
                if tuple(image.shape) != shape[1:]:
                    raise ValueError(
                        f"data.cache needs every image of the split to have one size; image "
                        f"{i} is {tuple(image.shape)}, the first was {shape[1:]}. Use a "
                        f"fixed-size resize mode ({', '.join(FIXED_SIZE_MODES)}) or "
                        f"data.cache=null")
                array[i] = image.numpy()
        if array is None:
            raise ValueError(f"no image of the {ident['split']} split could be decoded")
        array.flush()
        del array
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    meta = {"identity": ident, "shape": list(shape), "invalid": sorted(invalid),
            "created": time.strftime("%Y-%m-%d %H:%M:%S")}
    tmp_meta = f"{meta_path}.tmp{os.getpid()}"
    with open(tmp_meta, "w") as f:
        json.dump(meta, f, indent=1, default=str)
    os.replace(tmp_meta, meta_path)


class ImageCache(Dataset):
    """The uint8 image cache of ``dataset`` (see the module docstring), built beforehand by
    :func:`build_image_cache`.

    Args:
        dataset: the split's dataset (samples with ``image`` float32 ``[3, H, W]`` in [0, 1]).
        data_cfg: the ``data`` config section (name, root, image size, resize, options).
        split: the split's name.
        cache_dir: where the cache files live.

    Attributes: ``path`` (the ``.u8`` file), ``shape`` ``(N, 3, H, W)``, ``invalid`` (indices
    that the dataset skipped). Other attributes (``image_path``, ``root`` ...) are the wrapped
    dataset's.
    """

    def __init__(self, dataset, data_cfg, split: str, cache_dir: str):
        self.dataset = dataset
        ident, self.path, self.meta_path = _paths(dataset, data_cfg, split, cache_dir)
        if not os.path.isfile(self.meta_path):
            raise FileNotFoundError(f"no image cache {self.meta_path}; build_image_cache builds it")
        with open(self.meta_path) as f:
            meta = json.load(f)
        if meta.get("identity") != json.loads(json.dumps(ident, default=str)):
            raise ValueError(f"{self.meta_path} describes another dataset than its name says; "
                             "delete it (and its .u8 file) to rebuild")
        self.shape = tuple(meta["shape"])
        expected = int(np.prod(self.shape))
        if not os.path.isfile(self.path) or os.path.getsize(self.path) != expected:
            raise ValueError(f"{self.path} is missing or has the wrong size (expected {expected} "
                             "bytes); delete it and its .json file to rebuild")
        self.invalid = frozenset(int(i) for i in meta["invalid"])
        self._array: Optional[np.memmap] = None   # opened lazily in each (worker) process

    # ------------------------------------------------------------------ access
    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index: int) -> Optional[Dict[str, Any]]:
        if not 0 <= index < len(self):
            raise IndexError(f"index {index} out of range for the image cache {self.path} "
                             f"({len(self)} images)")
        if index in self.invalid:
            return None
        if self._array is None:
            self._array = np.memmap(self.path, dtype=np.uint8, mode="r", shape=self.shape)
        return {"image": torch.from_numpy(np.array(self._array[index])),
                "index": torch.tensor(index, dtype=torch.int64)}

    def __getattr__(self, name: str):
        # only called for attributes the cache itself lacks: the wrapped dataset's (image_path ...)
        dataset = self.__dict__.get("dataset")
        if dataset is None:
            raise AttributeError(name)
        return getattr(dataset, name)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_array"] = None          # a memory map is reopened in each worker
        return state

    def __repr__(self) -> str:
        return f"ImageCache({self.path!r}, shape={self.shape}, invalid={len(self.invalid)})"
