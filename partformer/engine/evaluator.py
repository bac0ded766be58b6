"""Evaluation: run a part predictor over a dataset and compute every protocol that applies.

A *predictor* is any callable ``predict(batch) -> part_maps [B, K+1, h, w]`` (softmax over parts,
background last, any resolution): a trained model, the grid baseline, k-means, a converted
checkpoint. Metrics accumulate batch by batch (contingency tables and confusion matrices), so memory
does not grow with the dataset, and merge across torchrun processes. No sample is ever dropped.

The protocols (names, which metric computes each, when it applies) are the table
:data:`partformer.metrics.protocols.PROTOCOLS`; definitions and citations: docs/PROTOCOLS.md.
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
from partformer.metrics import protocols as P

Predictor = Callable[[Dict[str, Any]], torch.Tensor]


def num_part_classes(dataset) -> int:
    """C: number of GT part classes excluding background (labels 0..C): the dataset's
    ``num_part_classes``, else the length of its ``part_names``."""
    if getattr(dataset, "num_part_classes", None):
        return int(dataset.num_part_classes)
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
    from partformer.engine.progress import make_progress, tracked
    loader = _loader(dataset, batch_size, num_workers)
    bar = make_progress(len(loader), desc, enabled=progress, unit="batch", images=batch_size,
                        leave=False)
    batches = iter(tracked(loader, bar))
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


def collect_centroids(predict: Predictor, dataset, batch_size: int = 32, num_workers: int = 0,
                      progress: bool = False, convention: str = "index",
                      skipped: Optional[List[str]] = None) -> Dict[str, np.ndarray]:
    """The regression rows (:class:`~partformer.metrics.keypoints.CentroidCollector`) of a whole
    dataset, e.g. the regressor split, merged across processes, in dataset order. ``skipped`` (a
    list, optional) receives the files of ``dataset`` that were skipped as missing or
    undecodable (merged across processes)."""
    rows = KP.CentroidCollector(convention)
    seen, count = [], 0
    for batch, maps in iterate_predictions(predict, dataset, batch_size, num_workers, progress,
                                           "centroids"):
        count += int(batch["num_skipped"])
        if maps is not None:
            seen.append(batch["index"].numpy())
            P.feed_centroids(rows, maps, batch)
    if skipped is not None:
        total = int(D.all_reduce_sum(torch.tensor([count]))[0])
        skipped[:] = skipped_files(dataset, seen) if total else []
    return rows.all_gather().arrays()


def readable_samples(dataset, num: int, start: int = 0) -> List[Dict[str, Any]]:
    """The first ``num`` samples from ``start`` that decode (skipped ones are passed over)."""
    out = []
    for i in range(start, len(dataset)):
        if len(out) >= num:
            break
        s = dataset[i]
        if s is not None:
            out.append(s)
    return out


def first_sample(dataset) -> Dict[str, Any]:
    """The first sample of ``dataset`` that decodes (a skipped image may be anywhere in a split,
    the first one included); it tells which protocols apply. Raises ``BadImageError`` when no image
    of the split can be decoded."""
    from partformer.data.io import BadImageError
    samples = readable_samples(dataset, 1)
    if samples:
        return samples[0]
    raise BadImageError(f"none of the {len(dataset)} images of {_describe(dataset)} could be "
                        "read (all missing or undecodable; see the warnings above). Check "
                        "data.root and the dataset's image folder")


def _describe(dataset) -> str:
    base = _base(dataset)
    return repr(base) if type(base).__repr__ is not object.__repr__ else type(base).__name__


def skipped_files(dataset, seen: List[np.ndarray]) -> List[str]:
    """Files of this process's share of ``dataset`` (``EvalSampler`` order) whose index is not in
    ``seen`` (the ``index`` entries of the batches): the images that were skipped, merged across
    processes, named by ``dataset.image_path(i)`` when the dataset has it."""
    base = _base(dataset)
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
    applicable) protocol of :data:`~partformer.metrics.protocols.PROTOCOLS`, in its order.

    ``info`` (a dict, optional) receives ``skipped_files`` (the images of the split that were
    skipped as missing or undecodable), ``num_images`` (those evaluated) and, when a regression
    protocol ran, ``regressor_skipped_files`` (the images of the regressor split skipped while
    fitting the keypoint / landmark regressor).
    ``centroid_convention`` (``eval.centroid_convention``): the cell positions of the regression
    protocols' centroids (``metrics.keypoints.CENTROID_CONVENTIONS``; ``index`` = PDiscoFormer).
    ``keypoint_lookup`` (``eval.keypoint_lookup``): how the keypoint NMI / ARI protocols read the
    maps (``metrics.clustering.KEYPOINT_LOOKUPS``; ``pixel`` = PDiscoFormer, ``map_nearest`` = the
    PartFormer authors' code). Both are recorded with the numbers they change.
    ``timer`` (profiling only, ``tools/benchmark.py``): an object whose ``stage(name)`` context
    times the stages ``data``, ``predict``, ``metrics`` (per batch) and ``compute`` (the scores)."""
    settings = _checked_settings(keypoint_lookup, centroid_convention)
    if max_images is not None and max_images < len(dataset):
        dataset = torch.utils.data.Subset(dataset, range(max_images))
    base = _base(dataset)
    first = first_sample(dataset)
    wanted = list(protocols) if protocols else P.applicable(
        first, resize, getattr(base, "regression_protocol", None), regressor_dataset is not None)
    accumulators = P.build_accumulators(wanted, num_parts, {
        "num_keypoints": lambda: first["keypoints"].shape[0],
        "num_gt_classes": lambda: num_part_classes(base),
        "keypoint_lookup": lambda: keypoint_lookup,
        "centroid_convention": lambda: centroid_convention})
    regressions = [n for n in wanted if P.PROTOCOLS[n].regression]
    if regressions and regressor_dataset is None:
        raise ValueError(f"{regressions} need a regressor split (data.regressor_split)")
    if not fixed_size(resize):
        batch_size = 1  # variable image sizes cannot be stacked

    tally = _accumulate(predict, dataset, accumulators, batch_size, num_workers, progress, timer)
    results = _pooled_results(wanted, accumulators, settings, timer)
    if regressions:
        # the evaluated split's centroids came from the pass above; only the regressor split is new
        reg_skipped: List[str] = []
        train = collect_centroids(predict, regressor_dataset, batch_size, num_workers, progress,
                                  centroid_convention, skipped=reg_skipped)
        if info is not None:
            info["regressor_skipped_files"] = reg_skipped
        test = accumulators[P.CENTROIDS].all_gather().arrays()
        for name in regressions:
            p = P.PROTOCOLS[name]
            results[name] = _record(p, P.regression_result(p, train, test), settings)
    results = {name: results[name] for name in P.PROTOCOLS if name in results}  # table order
    return _finish(results, dataset, tally, accumulators, info)


def _checked_settings(keypoint_lookup: str, centroid_convention: str) -> Dict[str, str]:
    if keypoint_lookup not in C.KEYPOINT_LOOKUPS:
        raise ValueError(f"eval.keypoint_lookup must be one of {sorted(C.KEYPOINT_LOOKUPS)}, "
                         f"got {keypoint_lookup!r}")
    if centroid_convention not in KP.CENTROID_CONVENTIONS:
        raise ValueError(f"eval.centroid_convention must be one of "
                         f"{sorted(KP.CENTROID_CONVENTIONS)}, got {centroid_convention!r}")
    return {"keypoint_lookup": keypoint_lookup, "centroid_convention": centroid_convention}


def _base(dataset):
    """The dataset behind a ``Subset`` (``eval.max_images``)."""
    return dataset.dataset if isinstance(dataset, torch.utils.data.Subset) else dataset


def _accumulate(predict: Predictor, dataset, accumulators, batch_size: int, num_workers: int,
                progress: bool, timer) -> Dict[str, Any]:
    """One pass of ``predict`` over ``dataset`` feeding every accumulator; returns the tally of
    skipped and evaluated images and the indices seen (for naming the skipped files)."""
    tally = {"skipped": 0, "images": 0, "seen": [], "ran": bool(accumulators)}
    if not accumulators:
        return tally
    for batch, maps in iterate_predictions(predict, dataset, batch_size, num_workers, progress,
                                           timer=timer):
        tally["skipped"] += int(batch["num_skipped"])
        if maps is None:
            continue
        tally["images"] += maps.shape[0]
        tally["seen"].append(batch["index"].numpy())
        with _stage(timer, "metrics"):
            P.update_all(accumulators, maps, batch)
    return tally


def _pooled_results(wanted: List[str], accumulators, settings: Dict[str, str],
                    timer=None, pool: bool = True) -> Dict[str, Dict[str, Any]]:
    """The scores of the accumulating (non-regression) protocols; ``pool``: from the tables summed
    over all processes (a collective call: every process must make it)."""
    results: Dict[str, Dict[str, Any]] = {}
    computed: Dict[Any, Dict[str, Any]] = {}
    with _stage(timer, "compute"):
        for name in P.PROTOCOLS:
            p = P.PROTOCOLS[name]
            if name not in wanted or p.regression:
                continue
            if p.accumulator not in computed:
                metric = accumulators[p.accumulator]
                if pool:
                    metric.all_reduce()
                computed[p.accumulator] = metric.compute()
            results[name] = _record(p, computed[p.accumulator], settings)
    return results


def _record(p, result: Dict[str, Any], settings: Dict[str, str]) -> Dict[str, Any]:
    """The results entry of protocol ``p`` from its metric's result (the JSON record)."""
    return {"value": float(result[p.value]), "protocol": p.family, "variant": p.variant,
            "version": P.PROTOCOL_VERSION, "count": int(result[p.count]),
            **{k: settings[k] for k in p.records}}


def _finish(results: Dict[str, Dict[str, Any]], dataset, tally: Dict[str, Any], accumulators,
            info: Optional[Dict[str, Any]]) -> Dict[str, Dict[str, Any]]:
    """Add the skipped-image count (summed over processes) to every result; fill ``info``."""
    counts = D.all_reduce_sum(torch.tensor([tally["skipped"], tally["images"]]))
    for r in results.values():
        r["skipped_images"] = int(counts[0])
    if info is not None:
        info["num_images"] = int(counts[1])
        info["skipped_files"] = (skipped_files(dataset, tally["seen"])
                                 if tally["ran"] and counts[0] else [])
    return results


# the protocols shown per image (W&B tables of the validation / evaluation masks)
PER_IMAGE_PROTOCOLS = ("kp_nmi_with_bg", "px_nmi_with_bg", "part_miou_hungarian", "fg_iou")


def per_image_metrics(maps: torch.Tensor, batch: Dict[str, Any], num_parts: int,
                      num_classes: Optional[int] = None) -> List[Dict[str, float]]:
    """Metrics of each image of a batch on its own (for inspection, e.g. a W&B table; the split's
    numbers are the pooled ones of :func:`evaluate`). ``maps [B, K+1, h, w]``; the batch's
    annotations decide which of :data:`PER_IMAGE_PROTOCOLS` apply (the part-mask ones need
    ``num_classes`` C); keypoint rows also get ``visible_keypoints``. Nothing is merged across
    processes."""
    names = [n for n in PER_IMAGE_PROTOCOLS
             if all(k in batch for k in P.PROTOCOLS[n].needs)
             and (num_classes or "part_mask" not in P.PROTOCOLS[n].needs)]
    context = {"num_keypoints": lambda: batch["keypoints"].shape[1],
               "num_gt_classes": lambda: num_classes, "keypoint_lookup": lambda: "pixel"}
    rows = []
    for i in range(maps.shape[0]):
        one = {k: v[i:i + 1] for k, v in batch.items()
               if torch.is_tensor(v) and v.dim() > 0 and len(v) == maps.shape[0]}
        accumulators = P.build_accumulators(names, num_parts, context)
        P.update_all(accumulators, maps[i:i + 1].float(), one)
        scores = _pooled_results(names, accumulators, {"keypoint_lookup": "pixel"}, pool=False)
        row: Dict[str, float] = {}
        for name in names:
            row[name] = scores[name]["value"]
            if name == "kp_nmi_with_bg":
                row["visible_keypoints"] = int(one["keypoints_visible"].sum())
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
    """Write ``payload`` as indented strict JSON (non-finite numbers as ``null``), atomically."""
    from partformer.fileio import atomic_open, json_safe
    with atomic_open(path, "w") as f:
        json.dump(json_safe(payload), f, indent=2, sort_keys=False, allow_nan=False)


# ------------------------------------------------------------------------------ methods -> table
def method_predictor(method, model: torch.nn.Module, device: torch.device,
                     amp_dtype: Optional[torch.dtype] = None) -> Predictor:
    """``batch -> part maps [B, K+1, h, w]`` of ``method``'s ``model`` (put in eval mode) on
    ``device``, under ``amp_dtype`` autocast (None: fp32): the predictor of validation,
    evaluation and the tools. Only the images move to the device; the method may read other keys
    of the batch (the grid reference reads the GT boxes)."""
    from partformer.engine.precision import autocast_context
    model.eval()

    def predict(batch: Dict[str, Any]) -> torch.Tensor:
        b = dict(batch)
        b["image"] = batch["image"].to(device)
        with autocast_context(device, amp_dtype):
            return method.predict(model, b)
    return predict


def fitted_predictor(cfg, name: str, device: torch.device, fit_dataset) -> Predictor:
    """The predictor of the training-free method ``name`` (the grid and k-means references),
    fitted on ``fit_dataset`` (the training split). References run in fp32, as they always did."""
    from partformer.methods import build_method
    method = build_method(cfg, name)
    model = method.build_model().to(device)
    method.fit(model, fit_dataset, device)
    return method_predictor(method, model, device, None)


def evaluate_methods(cfg, predictors: Dict[str, Any], split: Optional[str] = None,
                     out_dir: Optional[str] = None, progress: bool = False,
                     extra: Optional[Dict[str, Any]] = None) -> Dict[str, Dict[str, Any]]:
    """Evaluate every predictor on ``split`` (default: the test split); print one table and write
    ``<out_dir>/results_<split>.json`` (rank 0)."""
    import os
    import time

    from partformer.data import build_dataset
    from partformer.methods import get_method, method_names
    split = split or cfg.data.test_split
    skip = cfg.eval.skip_bad_images
    dataset = build_dataset(cfg.data, split, skip_bad_images=skip)
    reg_split = cfg.data.regressor_split  # keypoint/landmark regressors are fitted on it
    regressor = build_dataset(cfg.data, reg_split, skip_bad_images=skip) if reg_split else None
    results = {}
    timings = {}
    info: Dict[str, Any] = {}
    for name, predict in predictors.items():
        t0 = time.time()
        results[name] = evaluate(predict, dataset, cfg.model.num_parts, resize=cfg.data.resize,
                                 protocols=cfg.eval.protocols or None, regressor_dataset=regressor,
                                 batch_size=cfg.eval.batch_size, num_workers=cfg.eval.num_workers,
                                 progress=progress, max_images=cfg.eval.max_images,
                                 centroid_convention=cfg.eval.centroid_convention,
                                 keypoint_lookup=cfg.eval.keypoint_lookup, info=info)
        timings[name] = time.time() - t0
    num_images = len(dataset)
    if cfg.eval.max_images is not None:
        num_images = min(num_images, cfg.eval.max_images)
    known = set(method_names())
    supervision = {n: get_method(n).supervision for n in predictors if n in known}
    if D.is_main_process():
        title = (f"{cfg.data.name} / {split} split ({num_images} images), K = "
                 f"{cfg.model.num_parts}, S = {cfg.data.image_size}, resize = {cfg.data.resize}")
        print(format_table(results, title))
        if out_dir:
            os.makedirs(out_dir, exist_ok=True)
            payload = {"dataset": cfg.data.name, "root": cfg.data.root, "split": split,
                       "num_images": num_images, "max_images": cfg.eval.max_images,
                       "num_parts": cfg.model.num_parts,
                       "image_size": cfg.data.image_size, "resize": cfg.data.resize,
                       "regressor_split": reg_split, "protocol_version": P.PROTOCOL_VERSION,
                       "supervision": supervision,
                       "skipped_files": info.get("skipped_files", []),
                       "regressor_skipped_files": info.get("regressor_skipped_files", []),
                       "eval_seconds": timings, "results": results, **(extra or {})}
            write_json(os.path.join(out_dir, f"results_{split}.json"), payload)
    return results
