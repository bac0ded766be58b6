"""Unlabeled images for encoder pretraining, held in memory as one uint8 tensor.

Sources (``pretrain.sources`` is implicit in the config):
- the training split of any registered dataset (``data.name`` / ``data.train_split``), through the
  dataset's own loader; only the ``image`` of each sample is kept (no labels, boxes, keypoints,
  masks or class ids reach the pretraining);
- the training splits of ``pretrain.extra_data`` (partial ``data`` sections on top of ``data``,
  e.g. the other levels of the synthetic benchmark), read the same way;
- for the synthetic benchmark, ``pretrain.extra_synthetic`` more images rendered by its generator
  with ``pretrain.extra_seed``, a seed that no benchmark split uses (the benchmark's images are
  ``(data seed, index)``; these are ``(extra_seed, index)``), cached as ``.npy`` so a resumed run
  does not render them again. With ``pretrain.extra_levels``, that many images of each listed
  level, level ``i`` under seed ``extra_seed + i``; no such seed may be the seed of any level or
  of any synthetic tree read above (the same seed under other settings draws the same colours
  and classes first).
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import sys
from multiprocessing import get_context
from typing import Optional

import numpy as np
import torch
from torch.utils.data import DataLoader

from partformer.data import build_dataset
from partformer.data.collate import collate

__all__ = ["load_split_images", "render_extra_synthetic", "build_image_bank"]


def load_split_images(data_cfg, size: int, num_workers: int = 0, progress: bool = False
                      ) -> torch.Tensor:
    """Every readable image of ``data_cfg.train_split`` resized (``data_cfg.resize``) to
    ``size`` -> uint8 ``[N, size, size, 3]``. Undecodable images are skipped (and counted by the
    dataset's own warning)."""
    cfg = copy.deepcopy(data_cfg)
    cfg.image_size = int(size)
    ds = build_dataset(cfg, cfg.train_split, skip_bad_images=True)
    from partformer.engine.progress import make_progress, tracked
    loader = DataLoader(ds, batch_size=64, num_workers=num_workers, collate_fn=collate)
    bar = make_progress(len(loader), f"reading {cfg.name}/{cfg.train_split}", enabled=progress,
                        unit="batch", images=64, leave=False)
    loader = tracked(loader, bar)
    out = []
    for batch in loader:
        if "image" in batch:
            img = batch["image"]
            if img.shape[-2:] != (size, size):
                raise ValueError(f"pretraining needs square images of {size} px; data.resize="
                                 f"{cfg.resize!r} gave {tuple(img.shape[-2:])}. Use data.resize=whole "
                                 "or shorter_center_crop.")
            out.append((img * 255).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1))
    if not out:
        raise ValueError(f"no readable image in {cfg.name}/{cfg.train_split} ({cfg.root})")
    return torch.cat(out)


def _render_chunk(args):
    from partformer.data.synthetic import render_index
    gen_cfg, start, stop = args
    return np.stack([render_index(gen_cfg, i)["image"] for i in range(start, stop)])


def render_extra_synthetic(count: int, seed: int, size: int, generator_options: Optional[dict],
                           cache_dir: Optional[str] = None, workers: int = 1) -> torch.Tensor:
    """``count`` synthetic images (``render_index(SyntheticConfig(seed=seed, ...), i)["image"]``
    for ``i < count``) -> uint8 ``[count, size, size, 3]``; cached in ``cache_dir``."""
    from partformer.data.synthetic import generator_config
    opts = dict(generator_options or {})
    opts.update(seed=int(seed), image_size=int(size))   # the level's knobs, another seed
    gen_cfg, _ = generator_config(opts)
    path = None
    if cache_dir:
        from partformer.data.synthetic.config import ADDED_SETTINGS
        # settings at their generator-1.0 values are left out: caches written before they existed
        # hold the same images
        settings = {k: v for k, v in gen_cfg.to_dict().items()
                    if not (k in ADDED_SETTINGS and v == ADDED_SETTINGS[k])}
        key = hashlib.sha256(json.dumps(settings, sort_keys=True, default=str)
                             .encode()).hexdigest()[:10]
        path = os.path.join(cache_dir, f"synthetic_extra_s{seed}_n{count}_{size}px_{key}.npy")
        if os.path.isfile(path):
            arr = np.load(path, mmap_mode="r")
            if arr.shape == (count, size, size, 3):
                return torch.from_numpy(np.ascontiguousarray(arr))
    mb = count * size * size * 3 / 1e6
    where = (f"cached in {os.path.abspath(path)} ({mb:,.1f} MB on disk, reused by later runs; "
             "pretrain.cache_dir=DIR puts it elsewhere, pretrain.cache_dir=null keeps it in "
             "memory only)" if path else f"kept in memory only ({mb:,.1f} MB; "
                                         "pretrain.cache_dir=DIR caches it for later runs)")
    print(f"[pretrain] rendering {count} extra synthetic images (pretrain.extra_synthetic, seed "
          f"{seed}, {size}px), {where}", file=sys.stderr, flush=True)
    chunk = 500
    jobs = [(gen_cfg, s, min(count, s + chunk)) for s in range(0, count, chunk)]
    if workers > 1:
        with get_context("spawn").Pool(workers) as pool:
            parts = pool.map(_render_chunk, jobs)
    else:
        parts = [_render_chunk(j) for j in jobs]
    arr = np.concatenate(parts) if parts else np.zeros((0, size, size, 3), np.uint8)
    if path:
        os.makedirs(cache_dir, exist_ok=True)
        tmp = path + f".tmp{os.getpid()}.npy"
        np.save(tmp, arr)
        os.replace(tmp, path)
    return torch.from_numpy(arr)


def extra_data_config(data_cfg, entry, index: int = 0):
    """``pretrain.extra_data[index]`` (a partial ``data`` section) on top of ``data_cfg``."""
    import dataclasses

    from partformer.config import ConfigError
    if not isinstance(entry, dict):
        raise ConfigError(f"pretrain.extra_data[{index}] must be a mapping (a partial data "
                          f"section), got {entry!r}")
    fields = {f.name for f in dataclasses.fields(data_cfg)}
    bad = sorted(set(entry) - fields)
    if bad:
        raise ConfigError(f"pretrain.extra_data[{index}]: unknown data key(s) {bad}; known: "
                          f"{sorted(fields)}")
    cfg = copy.deepcopy(data_cfg)
    if "name" in entry and "options" not in entry:
        cfg.options = {}          # another dataset: data's options are not its options
    for k, v in entry.items():
        setattr(cfg, k, copy.deepcopy(v))
    return cfg


def _synthetic_seeds(data_cfgs) -> dict:
    """Every seed the benchmark's images use: each level's, and each synthetic tree's read here
    -> what it is (for the error message)."""
    from partformer.data.synthetic import LEVELS, generator_config, level_config
    seeds = {level_config(n).seed: f"level {n!r}" for n in LEVELS}
    for d in data_cfgs:
        if d.name == "synthetic":
            seeds.setdefault(generator_config(d.options.get("generator"))[0].seed,
                             f"the tree in {d.root}")
    return seeds


def build_image_bank(cfg, cache_dir: Optional[str] = None, progress: bool = False) -> torch.Tensor:
    """All pretraining images of a config -> uint8 ``[N, S, S, 3]``, ``S = pretrain.source_size``:
    ``data``'s training split, those of ``pretrain.extra_data``, then the extra generator images."""
    p = cfg.pretrain
    sources = [cfg.data] + [extra_data_config(cfg.data, e, i) for i, e in enumerate(p.extra_data)]
    if p.extra_synthetic > 0:   # check the seeds before anything is read or rendered
        if cfg.data.name != "synthetic":
            raise ValueError("pretrain.extra_synthetic renders images of the synthetic benchmark; "
                             f"it needs data.name=synthetic (got {cfg.data.name!r})")
        from partformer.data.synthetic import level_config
        for name in p.extra_levels:
            level_config(name)            # an unknown level fails here, before any work
        used = _synthetic_seeds(sources)
        jobs = ([(p.extra_seed + i, {"level": name}) for i, name in enumerate(p.extra_levels)]
                or [(p.extra_seed, cfg.data.options.get("generator"))])
        for seed, _ in jobs:
            if seed in used:
                raise ValueError(f"pretrain.extra_seed={p.extra_seed} gives seed {seed}, the "
                                 f"benchmark's own seed of {used[seed]}: the extra images would "
                                 "repeat benchmark images (test included). Choose another seed.")
    bank = [load_split_images(d, p.source_size, num_workers=d.num_workers, progress=progress)
            for d in sources]
    if p.extra_synthetic > 0:
        for seed, options in jobs:
            bank.append(render_extra_synthetic(p.extra_synthetic, seed, p.source_size, options,
                                               cache_dir, workers=max(1, cfg.data.num_workers)))
    return torch.cat(bank)
