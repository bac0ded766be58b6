"""Evaluation: run a part predictor over a dataset and compute every protocol that applies.

A *predictor* is any callable ``predict(batch) -> part_maps [B, K+1, h, w]`` (softmax over parts,
background last, any resolution): a trained model, the grid baseline, k-means, a converted
checkpoint. Metrics accumulate batch by batch (contingency tables and confusion matrices), so memory
does not grow with the dataset, and merge across torchrun processes. No sample is ever dropped.

Protocol names (docs/PROTOCOLS.md):
  kp_nmi_with_bg, kp_ari_with_bg      keypoint NMI/ARI, argmax over K+1 (PDiscoNet, PartFormer)
  kp_nmi_fg_only, kp_ari_fg_only      argmax over the K foreground maps (PartFormer "FG-NMI")
  kp_nmi_fg_bbox, kp_ari_fg_bbox      fg_only on box-cropped images (Choudhury "FG-NMI"; needs
                                      data.resize=bbox_crop)
  kp_error_huang, kp_error_pdisco     CUB keypoint regression error (box-normalised)
  lm_error_iod, lm_error_scops        CelebA landmark error (% inter-ocular distance)
  px_nmi_with_bg, px_ari_with_bg, px_nmi_fg_only, px_ari_fg_only   pixel NMI/ARI
  fg_iou                              foreground IoU (pixels not assigned to background vs GT fg)
  part_miou_hungarian                 Hungarian-matched part mIoU (ours, docs/PROTOCOLS.md)
"""
from __future__ import annotations

import json
import math
from contextlib import nullcontext
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch
from torch.utils.data import DataLoader

from partformer.data.collate import collate
from partformer.data.transforms import fixed_size
from partformer.engine import distributed as D
from partformer.metrics import clustering as C
from partformer.metrics import keypoints as KP
from partformer.metrics import segmentation as SEG

# 2: regression centroids use the integer cell index (PDiscoFormer) instead of the cell centre
PROTOCOL_VERSION = "2"

Predictor = Callable[[Dict[str, Any]], torch.Tensor]

# protocol name -> (family, variant); used for the JSON record
PROTOCOL_FAMILIES = {
    "kp_nmi_with_bg": ("keypoint_clustering", "with_bg"),
    "kp_ari_with_bg": ("keypoint_clustering", "with_bg"),
    "kp_nmi_fg_only": ("keypoint_clustering", "fg_only"),
    "kp_ari_fg_only": ("keypoint_clustering", "fg_only"),
    "kp_nmi_fg_bbox": ("keypoint_clustering", "fg_bbox"),
    "kp_ari_fg_bbox": ("keypoint_clustering", "fg_bbox"),
    "kp_error_huang": ("cub_keypoint_regression", "huang"),
    "kp_error_pdisco": ("cub_keypoint_regression", "pdisco"),
    "lm_error_iod": ("celeba_landmark_regression", "iod_normalised"),
    "lm_error_scops": ("celeba_landmark_regression", "scops_pixel"),
    "px_nmi_with_bg": ("pixel_clustering", "with_bg"),
    "px_ari_with_bg": ("pixel_clustering", "with_bg"),
    "px_nmi_fg_only": ("pixel_clustering", "fg_only"),
    "px_ari_fg_only": ("pixel_clustering", "fg_only"),
    "fg_iou": ("foreground_iou", "argmax_not_background"),
    "part_miou_hungarian": ("hungarian_part_miou", "with_bg"),
}


def applicable_protocols(sample: Dict[str, Any], resize: str, regression: Optional[str],
                         has_regressor_split: bool) -> List[str]:
    """Protocols that the keys of a dataset sample (and the resize mode) allow."""
    out: List[str] = []
    if "keypoints" in sample:
        if resize == "bbox_crop":
            out += ["kp_nmi_fg_bbox", "kp_ari_fg_bbox"]
        else:
            out += ["kp_nmi_with_bg", "kp_ari_with_bg", "kp_nmi_fg_only", "kp_ari_fg_only"]
        if has_regressor_split and resize != "bbox_crop":
            if regression == "celeba":
                out += ["lm_error_iod", "lm_error_scops"]
            elif "bbox" in sample:
                out += ["kp_error_huang", "kp_error_pdisco"]
    if "part_mask" in sample:
        out += ["px_nmi_with_bg", "px_ari_with_bg", "px_nmi_fg_only", "px_ari_fg_only",
                "part_miou_hungarian"]
    if "fg_mask" in sample:
        out += ["fg_iou"]
    return out


def num_part_classes(dataset) -> int:
    """C: number of GT part classes excluding background (labels 0..C)."""
    for attr in ("num_part_classes",):
        if getattr(dataset, attr, None):
            return int(getattr(dataset, attr))
    names = getattr(dataset, "part_names", None)
    if names:
        return len(names)
    raise ValueError(f"{type(dataset).__name__} returns part masks but exposes neither "
                     "`num_part_classes` nor `part_names`")


def _loader(dataset, batch_size: int, num_workers: int) -> DataLoader:
    # never drop samples in evaluation: EvalSampler splits without padding, drop_last=False
    return DataLoader(dataset, batch_size=batch_size, sampler=D.EvalSampler(len(dataset)),
                      num_workers=num_workers, collate_fn=collate, drop_last=False)


def _stage(timer, name: str):
    """``timer.stage(name)`` (a profiling timer, e.g. ``partformer.engine.profiling.StageTimer``)
    or nothing."""
    return nullcontext() if timer is None else timer.stage(name)


def iterate_predictions(predict: Predictor, dataset, batch_size: int, num_workers: int,
                        progress: bool = False, desc: str = "eval", timer=None):
    """``(batch, maps)`` over ``dataset`` (this process's share, no sample dropped); the maps stay
    on the predictor's device (metrics accumulate there), ``None`` for a batch whose images were
    all skipped. ``timer``: see :func:`_stage`."""
    loader = _loader(dataset, batch_size, num_workers)
    if progress and D.is_main_process():
        from tqdm import tqdm
        loader = tqdm(loader, desc=desc, leave=False, dynamic_ncols=True)
    batches = iter(loader)
    while True:
        with _stage(timer, "data"):
            batch = next(batches, None)
        if batch is None:
            return
        if "image" not in batch:  # every image in this batch failed to decode and was skipped
            yield batch, None
            continue
        with _stage(timer, "predict"), torch.no_grad():
            maps = predict(batch).float()
        yield batch, maps


def _float64_host(x):
    """A device tensor (centroids, presences) as a float64 numpy array; numpy rows as they are."""
    return x.detach().cpu().double().numpy() if torch.is_tensor(x) else x


class CentroidRows:
    """Part centroids and presences next to the GT keypoints/boxes, batch by batch; ``gather()``
    merges the ranks' rows in dataset order (for the regression protocols)."""

    KEYS = ("index", "centroids", "presence", "keypoints", "visible", "bbox")

    def __init__(self, convention: str = "index"):
        self.convention = convention   # KP.CENTROID_CONVENTIONS
        self.rows: Dict[str, list] = {k: [] for k in self.KEYS}

    def update(self, batch: Dict[str, Any], maps: torch.Tensor) -> None:
        cen, pres = KP.part_centroids(maps, tuple(batch["image"].shape[-2:]), self.convention)
        self.rows["index"].append(batch["index"].numpy())
        self.rows["centroids"].append(cen)       # on the maps' device until gather()
        self.rows["presence"].append(pres)
        self.rows["keypoints"].append(batch["keypoints"].numpy().astype(np.float64))
        self.rows["visible"].append(batch["keypoints_visible"].numpy().astype(bool))
        if "bbox" in batch:
            self.rows["bbox"].append(batch["bbox"].numpy().astype(np.float64))

    def gather(self) -> Dict[str, np.ndarray]:
        local = {k: (np.concatenate([_float64_host(x) for x in v]) if v else None)
                 for k, v in self.rows.items()}
        parts = D.all_gather_objects(local)
        merged = {}
        for k in self.KEYS:
            arrs = [p[k] for p in parts if p[k] is not None]
            merged[k] = np.concatenate(arrs) if arrs else None
        order = np.argsort(merged["index"])
        return {k: (v[order] if v is not None else None) for k, v in merged.items()}


def collect_centroids(predict: Predictor, dataset, batch_size: int = 32, num_workers: int = 0,
                      progress: bool = False, convention: str = "index") -> Dict[str, np.ndarray]:
    """:class:`CentroidRows` of a whole dataset (e.g. the regressor split)."""
    rows = CentroidRows(convention)
    for batch, maps in iterate_predictions(predict, dataset, batch_size, num_workers, progress,
                                           "centroids"):
        if maps is not None:
            rows.update(batch, maps)
    return rows.gather()


def first_sample(dataset) -> Dict[str, Any]:
    """The first sample of ``dataset`` that decodes (a skipped image may be anywhere in a split,
    the first one included); it tells which protocols apply. Raises ``BadImageError`` when no image
    of the split can be decoded."""
    from partformer.data.io import BadImageError
    for i in range(len(dataset)):
        sample = dataset[i]
        if sample is not None:
            return sample
    raise BadImageError(f"none of the {len(dataset)} images of {_describe(dataset)} could be "
                        "read (all missing or undecodable; see the warnings above). Check "
                        "data.root and the dataset's image folder")


def _describe(dataset) -> str:
    base = dataset.dataset if isinstance(dataset, torch.utils.data.Subset) else dataset
    return repr(base) if type(base).__repr__ is not object.__repr__ else type(base).__name__


def skipped_files(dataset, seen: List[np.ndarray]) -> List[str]:
    """Files of this process's share of ``dataset`` (``EvalSampler`` order) whose index is not in
    ``seen`` (the ``index`` entries of the batches): the images that were skipped, merged across
    processes, named by ``dataset.image_path(i)`` when the dataset has it."""
    base = dataset.dataset if isinstance(dataset, torch.utils.data.Subset) else dataset
    got = set(np.concatenate(seen).tolist()) if seen else set()
    mine = [i for i in D.EvalSampler(len(dataset)) if i not in got]
    name = getattr(base, "image_path", None)
    local = [name(i) if name is not None else f"index {i}" for i in mine]
    return sorted(sum(D.all_gather_objects(local), []))


def evaluate(predict: Predictor, dataset, num_parts: int, *, resize: str = "whole",
             protocols: Optional[List[str]] = None, regressor_dataset=None,
             batch_size: int = 32, num_workers: int = 0, progress: bool = False,
             max_images: Optional[int] = None,
             centroid_convention: str = "index", keypoint_lookup: str = "pixel",
             info: Optional[Dict[str, Any]] = None, timer=None) -> Dict[str, Dict[str, Any]]:
    """Evaluate ``predict`` on ``dataset``; returns ``{name: {value, protocol, variant, version,
    count, skipped_images}}`` for every requested (or, when ``protocols`` is empty, every
    applicable) protocol. ``info`` (a dict, optional) receives ``skipped_files`` (the images of the
    split that were skipped as missing or undecodable) and ``num_images`` (those evaluated).
    ``centroid_convention`` (``eval.centroid_convention``): the cell positions of the regression
    protocols' centroids (``metrics.keypoints.CENTROID_CONVENTIONS``; ``index`` = PDiscoFormer);
    recorded with each regression result. ``keypoint_lookup`` (``eval.keypoint_lookup``): how the
    keypoint NMI / ARI protocols read the maps (``metrics.clustering.KEYPOINT_LOOKUPS``; ``pixel``
    = PDiscoFormer, ``map_nearest`` = the PartFormer authors' code); recorded with each result.
    ``timer`` (profiling only, ``tools/benchmark.py``): an object whose ``stage(name)`` context
    times the stages ``data``, ``predict``, ``metrics`` (per batch) and ``compute`` (the scores)."""
    if keypoint_lookup not in C.KEYPOINT_LOOKUPS:
        raise ValueError(f"eval.keypoint_lookup must be one of {sorted(C.KEYPOINT_LOOKUPS)}, "
                         f"got {keypoint_lookup!r}")
    if centroid_convention not in KP.CENTROID_CONVENTIONS:
        raise ValueError(f"eval.centroid_convention must be one of "
                         f"{sorted(KP.CENTROID_CONVENTIONS)}, got {centroid_convention!r}")
    if max_images is not None and max_images < len(dataset):
        dataset = torch.utils.data.Subset(dataset, range(max_images))
    base = dataset.dataset if isinstance(dataset, torch.utils.data.Subset) else dataset
    first = first_sample(dataset)
    regression = getattr(base, "regression_protocol", None)
    wanted = list(protocols) if protocols else applicable_protocols(
        first, resize, regression, regressor_dataset is not None)
    unknown = [p for p in wanted if p not in PROTOCOL_FAMILIES]
    if unknown:
        raise ValueError(f"unknown protocol(s) {unknown}; known: {sorted(PROTOCOL_FAMILIES)}")
    if not fixed_size(resize):
        batch_size = 1  # variable image sizes cannot be stacked

    kp_metrics: Dict[str, Any] = {}
    px_metrics: Dict[str, Any] = {}
    K = num_parts
    if any(p.startswith("kp_nmi") or p.startswith("kp_ari") for p in wanted):
        P = first["keypoints"].shape[0]
        for variant in ("with_bg", "fg_only", "fg_bbox"):
            if f"kp_nmi_{variant}" in wanted or f"kp_ari_{variant}" in wanted:
                kp_metrics[variant] = C.KeypointClustering(K, P, variant, lookup=keypoint_lookup)
    if any(p.startswith("px_") for p in wanted):
        Cn = num_part_classes(base)
        for variant in ("with_bg", "fg_only"):
            if f"px_nmi_{variant}" in wanted or f"px_ari_{variant}" in wanted:
                px_metrics[variant] = C.PixelClustering(K, Cn, variant)
    hungarian = SEG.HungarianPartIoU(K, num_part_classes(base)) \
        if "part_miou_hungarian" in wanted else None
    fg_iou = SEG.ForegroundIoU() if "fg_iou" in wanted else None

    reg_wanted = [p for p in wanted if p.startswith("kp_error") or p.startswith("lm_error")]
    if reg_wanted and regressor_dataset is None:
        raise ValueError(f"{reg_wanted} need a regressor split (data.regressor_split)")
    test_rows = CentroidRows(centroid_convention) if reg_wanted else None

    skipped = 0
    n_images = 0
    seen: List[np.ndarray] = []
    need_pass = kp_metrics or px_metrics or hungarian or fg_iou or test_rows
    if need_pass:
        for batch, maps in iterate_predictions(predict, dataset, batch_size, num_workers, progress,
                                               timer=timer):
            skipped += int(batch["num_skipped"])
            if maps is None:
                continue
            n_images += maps.shape[0]
            seen.append(batch["index"].numpy())
            size = tuple(batch["image"].shape[-2:])
            with _stage(timer, "metrics"):
                for m in kp_metrics.values():
                    m.update(maps, batch["keypoints"], batch["keypoints_visible"], size)
                for m in px_metrics.values():
                    m.update(maps, batch["part_mask"])
                if hungarian is not None:
                    hungarian.update(maps, batch["part_mask"])
                if fg_iou is not None:
                    fg_iou.update(maps, batch["fg_mask"])
                if test_rows is not None:
                    test_rows.update(batch, maps)

    results: Dict[str, Dict[str, Any]] = {}

    def put(name: str, value: float, count: int, **extra) -> None:
        family, variant = PROTOCOL_FAMILIES[name]
        results[name] = {"value": float(value), "protocol": family, "variant": variant,
                         "version": PROTOCOL_VERSION, "count": int(count), **extra}

    with _stage(timer, "compute"):   # the scores from the pooled tables
        for prefix, metrics, count_key in (("kp", kp_metrics, "num_keypoints"),
                                           ("px", px_metrics, "num_pixels")):
            for variant, m in metrics.items():
                m.all_reduce()
                r = m.compute()
                extra = {"keypoint_lookup": keypoint_lookup} if prefix == "kp" else {}
                for key in ("nmi", "ari"):
                    if f"{prefix}_{key}_{variant}" in wanted:
                        put(f"{prefix}_{key}_{variant}", r[key], r[count_key], **extra)
        if hungarian is not None:
            hungarian.all_reduce()
            r = hungarian.compute()
            put("part_miou_hungarian", r["miou"], r.get("num_pixels", 0))
        if fg_iou is not None:
            fg_iou.all_reduce()
            r = fg_iou.compute()
            put("fg_iou", r["fg_iou"], r.get("num_pixels", 0))

    if reg_wanted:
        # the test split's centroids came from the pass above; only the regressor split is new
        train = collect_centroids(predict, regressor_dataset, batch_size, num_workers, progress,
                                  centroid_convention)
        test = test_rows.gather()
        for name in reg_wanted:
            family, variant = PROTOCOL_FAMILIES[name]
            if family == "cub_keypoint_regression":
                r = KP.cub_keypoint_regression(train, test, variant)
                put(name, r["error"], r.get("num_pairs", 0),
                    centroid_convention=centroid_convention)
            else:
                tr = {"centroids": train["centroids"], "landmarks": train["keypoints"]}
                te = {"centroids": test["centroids"], "landmarks": test["keypoints"]}
                r = KP.celeba_landmark_regression(tr, te, variant)
                put(name, r["error"], r.get("num_images", len(te["landmarks"])),
                    centroid_convention=centroid_convention)
    skipped_t = D.all_reduce_sum(torch.tensor([skipped, n_images]))
    for r in results.values():
        r["skipped_images"] = int(skipped_t[0])
    if info is not None:
        info["num_images"] = int(skipped_t[1])
        info["skipped_files"] = skipped_files(dataset, seen) if need_pass and skipped_t[0] else []
    return results


def per_image_metrics(maps: torch.Tensor, batch: Dict[str, Any], num_parts: int,
                      num_classes: Optional[int] = None) -> List[Dict[str, float]]:
    """Metrics of each image of a batch on its own (for inspection, e.g. a W&B table; the split's
    numbers are the pooled ones of :func:`evaluate`). ``maps [B, K+1, h, w]``; the batch's
    annotations decide which apply: ``kp_nmi_with_bg`` (keypoints), ``px_nmi_with_bg`` and
    ``part_miou_hungarian`` (part masks; ``num_classes`` C needed), ``fg_iou`` (fg masks)."""
    size = tuple(batch["image"].shape[-2:])
    rows = []
    for i in range(maps.shape[0]):
        m = maps[i:i + 1].float()
        row: Dict[str, float] = {}
        if "keypoints" in batch:
            vis = batch["keypoints_visible"][i:i + 1]
            kp = C.KeypointClustering(num_parts, vis.shape[1], "with_bg")
            kp.update(m, batch["keypoints"][i:i + 1], vis, size)
            row["kp_nmi_with_bg"] = kp.compute()["nmi"]
            row["visible_keypoints"] = int(vis.sum())
        if "part_mask" in batch and num_classes:
            gt = batch["part_mask"][i:i + 1]
            px = C.PixelClustering(num_parts, num_classes, "with_bg")
            row["px_nmi_with_bg"] = px.update(m, gt).compute()["nmi"]
            hung = SEG.HungarianPartIoU(num_parts, num_classes)
            hung.update(m, gt)
            row["part_miou_hungarian"] = float(hung.compute()["miou"])
        if "fg_mask" in batch:
            fg = SEG.ForegroundIoU()
            fg.update(m, batch["fg_mask"][i:i + 1])
            row["fg_iou"] = fg.compute()["fg_iou"]
        rows.append(row)
    return rows


def format_table(columns: Dict[str, Dict[str, Dict[str, Any]]], title: str = "") -> str:
    """A plain-text table: one row per protocol, one column per method."""
    names: List[str] = []
    for res in columns.values():
        for k in res:
            if k not in names:
                names.append(k)
    heads = list(columns)
    w0 = max([len("protocol")] + [len(n) for n in names])
    widths = [max(10, len(h)) for h in heads]
    lines = []
    if title:
        lines.append(title)
    lines.append("  ".join(["protocol".ljust(w0)] + [h.rjust(w) for h, w in zip(heads, widths)]))
    lines.append("  ".join(["-" * w0] + ["-" * w for w in widths]))
    for n in names:
        cells = []
        for h, w in zip(heads, widths):
            v = columns[h].get(n, {}).get("value")
            cells.append(("-" if v is None or (isinstance(v, float) and math.isnan(v))
                          else f"{v:.2f}").rjust(w))
        lines.append("  ".join([n.ljust(w0)] + cells))
    return "\n".join(lines)


def write_json(path: str, payload: Dict[str, Any]) -> None:
    """Write ``payload`` as indented JSON, atomically."""
    from partformer.fileio import atomic_open
    with atomic_open(path, "w") as f:
        json.dump(payload, f, indent=2, sort_keys=False)
