"""Writing the synthetic benchmark to disk in the CUB-200-2011 layout (plus part masks, foreground
masks and ``val_split.txt``), atomically, and finding or generating it on first use."""
from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np

from partformer.data.synthetic.config import (ADDED_SETTINGS, FAMILY_KEYPOINTS, FAMILY_PARTS,
                                              KEYPOINT_NAMES, KEYPOINT_OWNER, PART_NAMES,
                                              SyntheticConfig)
from partformer.data.synthetic.levels import level_of
from partformer.data.synthetic.rendering import render_index

GENERATOR_VERSION = "1.0"
META_FILE = "synthetic_meta.json"


def _class_dirs(cfg: SyntheticConfig) -> List[str]:
    return [f"{i + 1:03d}.{n}" for i, n in enumerate(cfg.class_names())]


def _rel_path(cfg: SyntheticConfig, index: int, dirs: Sequence[str]) -> str:
    label = index % cfg.num_classes
    name = cfg.class_names()[label]
    return f"{dirs[label]}/{name}_{index + 1:05d}.{cfg.image_format}"


def _write_chunk(args) -> List[Tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """Render and write images ``start..stop-1`` into ``tmp``; return their annotations."""
    tmp, cfg_dict, start, stop = args
    cv2.setNumThreads(1)
    cfg = SyntheticConfig(**cfg_dict)
    dirs = _class_dirs(cfg)
    enc = []
    if cfg.image_format == "jpg":  # no chroma subsampling: textures are fine and colourful
        enc = [cv2.IMWRITE_JPEG_QUALITY, int(cfg.jpeg_quality)]
        if hasattr(cv2, "IMWRITE_JPEG_SAMPLING_FACTOR"):
            enc += [cv2.IMWRITE_JPEG_SAMPLING_FACTOR, cv2.IMWRITE_JPEG_SAMPLING_FACTOR_444]
    out = []
    for index in range(start, stop):
        s = render_index(cfg, index)
        rel = _rel_path(cfg, index, dirs)
        stem = os.path.splitext(rel)[0]
        _imwrite(os.path.join(tmp, "images", rel), s["image"][:, :, ::-1], enc)
        _imwrite(os.path.join(tmp, "segmentations", stem + ".png"),
                 s["fg_mask"].astype(np.uint8) * 255, [])
        _imwrite(os.path.join(tmp, "part_masks", stem + ".png"), s["part_mask"], [])
        out.append((index, s["bbox"], s["keypoints"], s["visible"]))
    return out


def _imwrite(path: str, arr: np.ndarray, params) -> None:
    if not cv2.imwrite(path, np.ascontiguousarray(arr), params):
        raise OSError(f"could not write {path}")


def _write_lines(path: str, lines: Sequence[str]) -> None:
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def write_synthetic_cub(out_dir: str, cfg: Optional[SyntheticConfig] = None, num_workers: int = 1,
                        overwrite: bool = False, verbose: bool = False) -> Dict[str, Any]:
    """Generate the dataset into ``out_dir`` (CUB-200-2011 layout plus the synthetic extras).

    The tree is written into a temporary directory beside ``out_dir`` and renamed into place at the
    end (``synthetic_meta.json`` written last), so an interrupted run never leaves a tree that looks
    complete. If ``out_dir`` exists but holds nothing but a README / hidden files, the finished
    entries are moved into it (metadata last). Returns a summary dict (counts, seconds, images/s).
    """
    cfg = cfg or SyntheticConfig()
    out_dir = os.path.abspath(os.path.expanduser(os.fspath(out_dir)))
    if os.path.exists(out_dir) and not _is_placeholder_dir(out_dir):
        if not overwrite:
            raise FileExistsError(f"{out_dir} already exists; delete it, pass overwrite=True, or "
                                  f"choose another output directory")
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp-", dir=parent)
    t0 = time.perf_counter()
    try:
        results = _render_images(tmp, cfg, num_workers, verbose)
        t_render = time.perf_counter() - t0
        _write_tables(tmp, cfg, results)
        meta = _meta(cfg)
        with open(os.path.join(tmp, META_FILE), "w") as f:
            json.dump(meta, f, indent=2)
        _install(tmp, out_dir, overwrite)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    dt = time.perf_counter() - t0
    N = cfg.num_images
    return {"root": out_dir, "num_images": N, "counts": meta["counts"], "seconds": dt,
            "render_seconds": t_render, "images_per_second": N / max(dt, 1e-9)}


def _render_images(tmp: str, cfg: SyntheticConfig, num_workers: int, verbose: bool
                   ) -> List[Tuple[int, np.ndarray, np.ndarray, np.ndarray]]:
    """Render and write every image and mask into ``tmp`` in chunks of 64 (in ``num_workers``
    processes); returns ``(index, bbox, keypoints, visible)`` per image, in index order."""
    for sub in ("images", "segmentations", "part_masks"):
        for d in _class_dirs(cfg):
            os.makedirs(os.path.join(tmp, sub, d))
    os.makedirs(os.path.join(tmp, "parts"))
    N = cfg.num_images
    cfg_dict = cfg.to_dict()
    chunk = 64
    jobs = [(tmp, cfg_dict, s, min(s + chunk, N)) for s in range(0, N, chunk)]
    results: List[Tuple[int, np.ndarray, np.ndarray, np.ndarray]] = []
    num_workers = max(1, int(num_workers))
    if num_workers == 1 or len(jobs) == 1:
        for j in jobs:
            results += _write_chunk(j)
            if verbose:
                print(f"  {len(results)}/{N} images", file=sys.stderr, flush=True)
    else:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor
        method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
        with ProcessPoolExecutor(num_workers, mp_context=mp.get_context(method)) as ex:
            for res in ex.map(_write_chunk, jobs):
                results += res
                if verbose:
                    print(f"  {len(results)}/{N} images", file=sys.stderr, flush=True)
    results.sort(key=lambda r: r[0])
    return results


def _write_tables(tmp: str, cfg: SyntheticConfig, results) -> None:
    """The CUB annotation tables (classes, images, labels, splits, boxes, keypoints) and the part
    names of the masks."""
    N = cfg.num_images
    dirs = _class_dirs(cfg)
    _write_lines(os.path.join(tmp, "classes.txt"), [f"{i + 1} {d}" for i, d in enumerate(dirs)])
    _write_lines(os.path.join(tmp, "images.txt"),
                 [f"{i + 1} {_rel_path(cfg, i, dirs)}" for i in range(N)])
    _write_lines(os.path.join(tmp, "image_class_labels.txt"),
                 [f"{i + 1} {i % cfg.num_classes + 1}" for i in range(N)])
    _write_lines(os.path.join(tmp, "train_test_split.txt"),
                 [f"{i + 1} {0 if cfg.split_of(i) == 'test' else 1}" for i in range(N)])
    _write_lines(os.path.join(tmp, "val_split.txt"),
                 [f"{i + 1} {1 if cfg.split_of(i) == 'val' else 0}" for i in range(N)])
    _write_lines(os.path.join(tmp, "bounding_boxes.txt"),
                 [f"{i + 1} {b[0]:.1f} {b[1]:.1f} {b[2]:.1f} {b[3]:.1f}"
                  for i, b, _, _ in results])
    _write_lines(os.path.join(tmp, "parts", "parts.txt"),
                 [f"{k + 1} {n}" for k, n in enumerate(KEYPOINT_NAMES)])
    locs = []
    for i, _, kp, vis in results:
        for k in range(len(KEYPOINT_NAMES)):
            if vis[k]:
                locs.append(f"{i + 1} {k + 1} {kp[k, 0]:.2f} {kp[k, 1]:.2f} 1")
            else:
                locs.append(f"{i + 1} {k + 1} 0.0 0.0 0")
    _write_lines(os.path.join(tmp, "parts", "part_locs.txt"), locs)
    _write_lines(os.path.join(tmp, "part_masks", "part_names.txt"),
                 [f"{k + 1} {n}" for k, n in enumerate(PART_NAMES)])


def _meta(cfg: SyntheticConfig) -> Dict[str, Any]:
    """``synthetic_meta.json``: the settings and vocabularies the tree was made with."""
    return {
        "generator": "partformer.data.synthetic",
        "generator_version": GENERATOR_VERSION,
        "level": level_of(cfg),   # the named knob set (levels.py) it matches, or None
        "config": cfg.to_dict(),
        "num_images": cfg.num_images,
        "counts": {"train": cfg.num_train, "val": cfg.num_val, "test": cfg.num_test},
        "classes": cfg.class_names(),
        "families": list(cfg.families),
        "keypoints": list(KEYPOINT_NAMES),
        "keypoint_owner": {k: PART_NAMES[v - 1] for k, v in KEYPOINT_OWNER.items()},
        "family_keypoints": {f: list(FAMILY_KEYPOINTS[f]) for f in cfg.families},
        "parts": list(PART_NAMES),
        "family_parts": {f: list(FAMILY_PARTS[f]) for f in cfg.families},
    }


def _is_placeholder_dir(path: str) -> bool:
    """An existing directory with nothing but README files / hidden entries (e.g. the repo's
    ``datasets/synthetic/`` folder) counts as absent."""
    if not os.path.isdir(path):
        return False
    return all(e.startswith(".") or e.lower().startswith("readme") for e in os.listdir(path))


def _install(tmp: str, out_dir: str, overwrite: bool) -> None:
    if os.path.isdir(out_dir) and _is_placeholder_dir(out_dir):
        # keep the README: move the finished entries in, metadata last
        entries = sorted(os.listdir(tmp), key=lambda e: e == META_FILE)
        for e in entries:
            os.replace(os.path.join(tmp, e), os.path.join(out_dir, e))
        os.rmdir(tmp)
        return
    if os.path.exists(out_dir) and overwrite:
        old = out_dir + f".old-{os.getpid()}"
        os.rename(out_dir, old)
        os.rename(tmp, out_dir)
        shutil.rmtree(old, ignore_errors=True)
        return
    os.rename(tmp, out_dir)  # raises if another process installed a tree meanwhile


def read_meta(root: str) -> Optional[Dict[str, Any]]:
    path = os.path.join(os.fspath(root), META_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def _stored_config(meta: Dict[str, Any]) -> Dict[str, Any]:
    """The settings of a tree on disk; a setting added after generator 1.0 that its
    ``synthetic_meta.json`` lacks (a tree written before it existed) has the value that reproduces
    generator 1.0 (``ADDED_SETTINGS``), so such trees stay valid."""
    return {**ADDED_SETTINGS, **(meta.get("config") or {})}


def _meta_matches(meta: Dict[str, Any], cfg: SyntheticConfig) -> bool:
    return (meta.get("generator_version") == GENERATOR_VERSION
            and _stored_config(meta) == cfg.to_dict())


def ensure_synthetic(root: str, cfg: Optional[SyntheticConfig] = None, num_workers: int = 1,
                     verbose: bool = True) -> str:
    """Return ``root`` after making sure it holds the synthetic tree of ``cfg``.

    Generates the tree when ``root`` is missing (or holds only a README). Raises ``ValueError`` when
    ``root`` holds a synthetic tree of different settings or generator version, or something that
    is not a complete synthetic tree.
    """
    cfg = cfg or SyntheticConfig()
    root = os.path.abspath(os.path.expanduser(os.fspath(root)))
    meta = read_meta(root)
    if meta is not None:
        if _meta_matches(meta, cfg):
            return root
        raise ValueError(_mismatch_message(root, meta, cfg))
    if os.path.exists(root) and not _is_placeholder_dir(root):
        raise ValueError(
            f"{root} exists but has no {META_FILE}: it is not a complete synthetic dataset "
            f"(an interrupted copy, or another dataset). Delete it or choose another data.root.")
    if verbose:
        print(f"[synthetic] generating {cfg.num_images} images ({cfg.num_train} train / "
              f"{cfg.num_val} val / {cfg.num_test} test, {cfg.image_size}px) into {root}",
              file=sys.stderr, flush=True)
    try:
        info = write_synthetic_cub(root, cfg, num_workers=num_workers)
    except OSError:
        # another process may have finished the same tree first
        meta = read_meta(root)
        if meta is not None and _meta_matches(meta, cfg):
            return root
        raise
    if verbose:
        print(f"[synthetic] done in {info['seconds']:.1f}s ({info['images_per_second']:.0f} "
              f"images/s)", file=sys.stderr, flush=True)
    return root


def _mismatch_message(root: str, meta: Dict[str, Any], cfg: SyntheticConfig) -> str:
    want = cfg.to_dict()
    have = _stored_config(meta)
    diffs = [f"{k}: on disk {have.get(k)!r}, requested {v!r}" for k, v in want.items()
             if have.get(k) != v]
    diffs += [f"{k}: on disk {have[k]!r}, not a current setting" for k in have if k not in want]
    if meta.get("generator_version") != GENERATOR_VERSION:
        diffs.insert(0, f"generator_version: on disk {meta.get('generator_version')!r}, "
                        f"this code {GENERATOR_VERSION!r}")
    hint = ""
    if meta.get("level") and meta.get("level") != level_of(cfg):
        hint = (f"\nIt is the level {meta['level']!r}: to use it, set "
                f"data.options.generator.level={meta['level']}.")
    return (f"the synthetic dataset in {root} was generated with different settings:\n  "
            + "\n  ".join(diffs) + hint + f"\nDelete {root} to regenerate it, or choose another "
            f"data.root for these settings.")


