"""Feature-quality probe for model selection during pretraining.

k-means (``pretrain.probe_parts + 1`` clusters, the project's k-means baseline: fitted on
``pretrain.probe_fit_images`` training images, background = the cluster covering most of the
border) of an encoder's frozen features, scored against the ground truth of the **validation**
split (keypoint and pixel NMI/ARI, Hungarian part mIoU). The test split is never used.
"""
from __future__ import annotations

import copy
from typing import Any, Dict

import numpy as np
import torch

from partformer.baselines.kmeans import KMeansBaseline
from partformer.data import build_dataset
from partformer.engine.evaluator import evaluate

__all__ = ["probe_encoder", "PROBE_PROTOCOLS"]

PROBE_PROTOCOLS = ["kp_nmi_with_bg", "kp_ari_with_bg", "kp_nmi_fg_only", "px_nmi_with_bg",
                   "px_nmi_fg_only", "part_miou_hungarian"]


class _InMemory(torch.utils.data.Dataset):
    """Decoded samples of a dataset, kept in memory (the probe runs many times)."""

    def __init__(self, dataset, indices):
        self.samples = [s for s in (dataset[int(i)] for i in indices) if s is not None]
        self.part_names = getattr(dataset, "part_names", None)
        self.num_part_classes = getattr(dataset, "num_part_classes", None)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i):
        return self.samples[i]


def _datasets(cfg, cache: Dict[str, Any]):
    if "val" not in cache:
        if not cfg.data.val_split:
            raise ValueError("the pretraining probe needs a validation split (data.val_split); "
                             "set pretrain.probe_every=0 to pretrain without it")
        data = copy.deepcopy(cfg.data)
        data.image_size = cfg.pretrain.global_size
        train = build_dataset(data, data.train_split, skip_bad_images=True)
        val = build_dataset(data, data.val_split, skip_bad_images=True)
        n = min(cfg.pretrain.probe_fit_images, len(train))
        order = np.random.default_rng(cfg.experiment.seed).permutation(len(train))[:n]
        cache["fit"] = _InMemory(train, order)       # images only are used by k-means
        cache["val"] = _InMemory(val, range(len(val)))
    return cache["fit"], cache["val"]


@torch.no_grad()
def probe_encoder(encoder: torch.nn.Module, cfg, device, cache: Dict[str, Any]) -> Dict[str, float]:
    """Probe metrics (x100, the evaluator's protocol names) of ``encoder`` (put in eval mode)."""
    fit, val = _datasets(cfg, cache)
    km = KMeansBaseline(cfg.pretrain.probe_parts, encoder, device=str(device),
                        fit_images=len(fit), seed=cfg.experiment.seed)
    km.fit(fit, batch_size=64)
    res = evaluate(km, val, cfg.pretrain.probe_parts, resize=cfg.data.resize,
                   protocols=PROBE_PROTOCOLS, batch_size=64)
    return {k: float(v["value"]) for k, v in res.items()}
