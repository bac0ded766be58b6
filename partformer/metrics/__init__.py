"""Evaluation metrics for part discovery; every protocol variant is a named option.

- ``clustering``: exact, mergeable NMI / ARI from contingency tables; keypoint and pixel protocols.
- ``keypoints``: part centroids and the CUB / CelebA keypoint-regression protocols.
- ``segmentation``: foreground IoU and Hungarian-matched part mIoU.
- ``protocols``: every reported number by name (``PROTOCOLS``), which metric computes it and
  when it applies; the evaluator runs from this table.

Accumulating metrics share one interface: ``update(...)`` per batch, ``merge(other)``,
``all_reduce()`` (sum over processes), ``compute() -> dict``. Build them by name::

    metric = build_metric("keypoint_clustering", num_parts=8, num_keypoints=15, variant="fg_only")

Definitions and citations of every protocol: docs/PROTOCOLS.md.
"""
from __future__ import annotations

from partformer.metrics.clustering import (
    KEYPOINT_LOOKUPS,
    ContingencyTable,
    KeypointClustering,
    PixelClustering,
    ari_from_table,
    nmi_from_table,
    sample_at_keypoint_pixels,
    sample_at_keypoints_map_nearest,
)
from partformer.metrics.keypoints import (
    CELEBA_VARIANTS,
    CENTROID_CONVENTIONS,
    CUB_VARIANTS,
    CentroidCollector,
    celeba_landmark_regression,
    cub_keypoint_regression,
    part_centroids,
)
from partformer.metrics.segmentation import (
    ConfusionMatrix,
    ForegroundIoU,
    HungarianPartIoU,
    hungarian_miou,
    iou_matrix,
)
from partformer.metrics.protocols import (
    METRICS,
    PROTOCOL_VERSION,
    PROTOCOLS,
    REGRESSION_PROTOCOLS,
    Protocol,
    build_metric,
)


__all__ = [
    "ContingencyTable",
    "ConfusionMatrix",
    "KeypointClustering",
    "PixelClustering",
    "ForegroundIoU",
    "HungarianPartIoU",
    "CentroidCollector",
    "nmi_from_table",
    "ari_from_table",
    "sample_at_keypoint_pixels",
    "sample_at_keypoints_map_nearest",
    "KEYPOINT_LOOKUPS",
    "part_centroids",
    "cub_keypoint_regression",
    "celeba_landmark_regression",
    "hungarian_miou",
    "iou_matrix",
    "CUB_VARIANTS",
    "CELEBA_VARIANTS",
    "CENTROID_CONVENTIONS",
    "METRICS",
    "REGRESSION_PROTOCOLS",
    "build_metric",
    "Protocol",
    "PROTOCOLS",
    "PROTOCOL_VERSION",
]
