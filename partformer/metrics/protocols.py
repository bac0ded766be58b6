"""Every evaluation protocol by name, in one table (docs/PROTOCOLS.md).

A protocol is one reported number: the value ``value`` of the result of an accumulating metric of
:data:`partformer.metrics.METRICS` (``metric``, built with the protocol's ``options``), or of a
regression fitted on the part centroids of two splits (``metric`` one of
:data:`REGRESSION_PROTOCOLS`). Protocols that read the same metric with the same options share one
accumulator: ``kp_nmi_with_bg`` and ``kp_ari_with_bg`` are two values of one contingency table.

:func:`applicable` says which protocols a dataset allows (the keys of its samples, the resize
mode, its regression kind, whether a regressor split exists); :func:`build_accumulators` builds the
accumulators of a list of protocols and :func:`update_all` feeds them a batch. The evaluator
(:func:`partformer.engine.evaluator.evaluate`) is these three calls around the prediction loop.
The order of :data:`PROTOCOLS` is the order of every results table and JSON file.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import torch

from partformer.metrics.clustering import KeypointClustering, PixelClustering
from partformer.metrics.keypoints import (CentroidCollector, celeba_landmark_regression,
                                          cub_keypoint_regression)
from partformer.metrics.segmentation import ForegroundIoU, HungarianPartIoU
from partformer.registry import Registry

__all__ = ["Protocol", "PROTOCOLS", "PROTOCOL_VERSION", "METRICS", "REGRESSION_PROTOCOLS",
           "CENTROIDS", "build_metric", "applicable", "check_names", "build_accumulators",
           "update_all", "feed_centroids", "regression_result"]

# 2: regression centroids use the integer cell index (PDiscoFormer) instead of the cell centre
PROTOCOL_VERSION = "2"

METRICS: Registry = Registry("metric")
METRICS.register("keypoint_clustering")(KeypointClustering)
METRICS.register("pixel_clustering")(PixelClustering)
METRICS.register("foreground_iou")(ForegroundIoU)
METRICS.register("part_miou_hungarian")(HungarianPartIoU)


def build_metric(name: str, **kwargs):
    """Instantiate the accumulating metric registered as ``name`` (see ``METRICS.names()``)."""
    return METRICS.get(name)(**kwargs)


def _celeba(train: Mapping, test: Mapping, variant: str) -> Dict[str, Any]:
    """The CelebA regression on collected rows (the landmarks are the samples' ``keypoints``)."""
    rows = [{"centroids": s["centroids"], "landmarks": s["keypoints"]} for s in (train, test)]
    return celeba_landmark_regression(rows[0], rows[1], variant)


# regressions on the part centroids of a fitting split and an evaluated split:
# name -> f(train rows, test rows, variant) -> {"error", count, ...}
REGRESSION_PROTOCOLS: Dict[str, Callable[[Mapping, Mapping, str], Dict[str, Any]]] = {
    "cub_keypoint_regression": cub_keypoint_regression,
    "celeba_landmark_regression": _celeba,
}


@dataclass(frozen=True)
class Protocol:
    """One reported number.

    ``family`` / ``variant``: recorded in the results (``protocol`` and ``variant`` keys);
    ``metric``: a :data:`METRICS` or :data:`REGRESSION_PROTOCOLS` name; ``options``: its arguments
    (``(("variant", "with_bg"),)``); ``value`` / ``count``: keys of its result; ``needs``: sample
    keys the dataset must return; ``resize``: ``"any"``, ``"bbox_crop"`` (only on box crops) or
    ``"not_bbox_crop"``; ``regression``: for regression protocols, the dataset's
    ``regression_protocol`` it applies to (``"cub"`` for datasets that do not name one);
    ``records``: the evaluation settings (``eval.keypoint_lookup``, ``eval.centroid_convention``)
    that change this number, recorded with it."""
    name: str
    family: str
    variant: str
    metric: str
    value: str
    count: str
    needs: Tuple[str, ...]
    options: Tuple[Tuple[str, Any], ...] = ()
    resize: str = "any"
    regression: Optional[str] = None
    records: Tuple[str, ...] = ()     # evaluation settings written next to the value


    @property
    def accumulator(self) -> Tuple[str, Tuple[Tuple[str, Any], ...]]:
        """Protocols with the same key read one accumulator (regressions: one centroid store)."""
        return CENTROIDS if self.regression else (self.metric, self.options)


# the accumulator key of the regression protocols: one CentroidCollector of the evaluated split
CENTROIDS: Tuple[str, Tuple] = ("centroids", ())


def _table() -> Dict[str, Protocol]:
    out: List[Protocol] = []
    for variant, resize in (("with_bg", "not_bbox_crop"), ("fg_only", "not_bbox_crop"),
                            ("fg_bbox", "bbox_crop")):
        for value in ("nmi", "ari"):
            out.append(Protocol(f"kp_{value}_{variant}", "keypoint_clustering", variant,
                                "keypoint_clustering", value, "num_keypoints", ("keypoints",),
                                (("variant", variant),), resize, records=("keypoint_lookup",)))
    for variant in ("with_bg", "fg_only"):
        for value in ("nmi", "ari"):
            out.append(Protocol(f"px_{value}_{variant}", "pixel_clustering", variant,
                                "pixel_clustering", value, "num_pixels", ("part_mask",),
                                (("variant", variant),)))
    out.append(Protocol("part_miou_hungarian", "hungarian_part_miou", "with_bg",
                        "part_miou_hungarian", "miou", "num_pixels", ("part_mask",)))
    out.append(Protocol("fg_iou", "foreground_iou", "argmax_not_background", "foreground_iou",
                        "fg_iou", "num_pixels", ("fg_mask",)))
    for name, variant in (("kp_error_huang", "huang"), ("kp_error_pdisco", "pdisco")):
        out.append(Protocol(name, "cub_keypoint_regression", variant, "cub_keypoint_regression",
                            "error", "num_pairs", ("keypoints", "bbox"), (("variant", variant),),
                            "not_bbox_crop", "cub", ("centroid_convention",)))
    for name, variant in (("lm_error_iod", "iod_normalised"), ("lm_error_scops", "scops_pixel")):
        out.append(Protocol(name, "celeba_landmark_regression", variant,
                            "celeba_landmark_regression", "error", "num_images", ("keypoints",),
                            (("variant", variant),), "not_bbox_crop", "celeba",
                            ("centroid_convention",)))
    return {p.name: p for p in out}


PROTOCOLS: Dict[str, Protocol] = _table()


def applicable(sample: Mapping[str, Any], resize: str, regression: Optional[str],
               has_regressor_split: bool) -> List[str]:
    """Names of the protocols that a dataset allows, in table order: its sample has their
    ``needs``, the resize mode fits, and (regressions) a regressor split exists and the dataset's
    ``regression_protocol`` (``None``: ``"cub"``) matches."""
    def fits(p: Protocol) -> bool:
        if not all(k in sample for k in p.needs):
            return False
        if p.resize != "any" and (resize == "bbox_crop") != (p.resize == "bbox_crop"):
            return False
        return p.regression is None or (has_regressor_split
                                         and p.regression == (regression or "cub"))

    return [name for name, p in PROTOCOLS.items() if fits(p)]


def check_names(names) -> None:
    unknown = [n for n in names if n not in PROTOCOLS]
    if unknown:
        raise ValueError(f"unknown protocol(s) {unknown}; known: {sorted(PROTOCOLS)}")


def build_accumulators(names, num_parts: int, context: Mapping[str, Callable[[], Any]]
                       ) -> Dict[Tuple, Any]:
    """One accumulator per distinct :attr:`Protocol.accumulator` of ``names``. ``context``: lazily
    evaluated settings the metrics take besides the protocol's options: ``num_keypoints``,
    ``num_gt_classes``, ``keypoint_lookup``, ``centroid_convention`` (callables, so that e.g. the
    number of GT part classes is only asked for when a pixel protocol runs)."""
    check_names(names)
    out: Dict[Tuple, Any] = {}
    for name in names:
        p = PROTOCOLS[name]
        if p.accumulator in out:
            continue
        if p.regression:
            out[p.accumulator] = CentroidCollector(context["centroid_convention"]())
            continue
        kwargs: Dict[str, Any] = dict(p.options)
        if p.metric != "foreground_iou":
            kwargs["num_parts"] = num_parts
        if p.metric == "keypoint_clustering":
            kwargs.update(num_keypoints=context["num_keypoints"](),
                          lookup=context["keypoint_lookup"]())
        elif p.metric in ("pixel_clustering", "part_miou_hungarian"):
            kwargs["num_gt_classes"] = context["num_gt_classes"]()
        out[p.accumulator] = build_metric(p.metric, **kwargs)
    return out


def _image_size(batch: Mapping[str, Any]) -> Tuple[int, int]:
    return tuple(batch["image"].shape[-2:])


def feed_centroids(collector: CentroidCollector, maps: torch.Tensor,
                   batch: Mapping[str, Any]) -> None:
    """Add a batch's part centroids and the annotations the regressions fit on to ``collector``."""
    extra = {"bbox": batch["bbox"]} if "bbox" in batch else {}
    collector.update(maps, _image_size(batch), index=batch["index"], keypoints=batch["keypoints"],
                     visible=batch["keypoints_visible"], **extra)


# what each kind of accumulator reads from a batch (the sample keys of docs/ARCHITECTURE.md)
_FEEDS: Dict[str, Callable[[Any, torch.Tensor, Mapping[str, Any]], Any]] = {
    "keypoint_clustering": lambda m, maps, b: m.update(maps, b["keypoints"],
                                                       b["keypoints_visible"], _image_size(b)),
    "pixel_clustering": lambda m, maps, b: m.update(maps, b["part_mask"]),
    "part_miou_hungarian": lambda m, maps, b: m.update(maps, b["part_mask"]),
    "foreground_iou": lambda m, maps, b: m.update(maps, b["fg_mask"]),
    "centroids": feed_centroids,
}


def update_all(accumulators: Mapping[Tuple, Any], maps: torch.Tensor,
               batch: Mapping[str, Any]) -> None:
    """Feed one batch (``maps [B, K+1, h, w]`` and the collated samples) to every accumulator."""
    for (kind, _), acc in accumulators.items():
        _FEEDS[kind](acc, maps, batch)


def regression_result(p: Protocol, train: Mapping, test: Mapping) -> Dict[str, Any]:
    """Fit / evaluate regression protocol ``p`` on the rows of a :class:`CentroidCollector` of the
    fitting split (``train``) and of the evaluated split (``test``)."""
    return REGRESSION_PROTOCOLS[p.metric](train, test, dict(p.options)["variant"])
