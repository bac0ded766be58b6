"""Feature-quality probe for model selection during pretraining.

k-means (``pretrain.probe_parts + 1`` clusters, the project's k-means baseline: fitted on
``pretrain.probe_fit_images`` training images, background = the cluster covering most of the
border) of an encoder's frozen features, scored against the ground truth of the **validation**
split (keypoint and pixel NMI/ARI, Hungarian part mIoU). The test split is never used.

With ``pretrain.probe_linear`` (and part masks in the validation split) a linear probe too: a
logistic regression (class-balanced) of each feature cell's majority ground-truth label
(background + the parts) on its L2-normalised feature, fitted on the first two thirds of the
validation images and scored on the rest (balanced accuracy x100: ``linear_bal_acc`` over all cells,
``linear_fg_bal_acc`` over part cells only). k-means only finds part identity that dominates the
features; the linear probe also sees part identity that lies along a direction next to larger
per-image differences, which PartFormer's learned compress head and tokens can pick up
(docs/PRETRAINING.md, "How good must the encoder be?").
"""
from __future__ import annotations

import copy
import warnings
from typing import Any, Dict

import numpy as np
import torch

from partformer.models.kmeans import KMeansModel
from partformer.data import build_dataset
from partformer.engine.evaluator import evaluate, num_part_classes

__all__ = ["probe_encoder", "linear_probe", "cell_labels", "PROBE_PROTOCOLS"]

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
    km = KMeansModel(cfg.pretrain.probe_parts, encoder, fit_images=len(fit),
                     seed=cfg.experiment.seed).to(device)
    km.fit(fit, batch_size=64)
    res = evaluate(lambda batch: km.predict(batch["image"].to(device)), val,
                   cfg.pretrain.probe_parts, resize=cfg.data.resize, protocols=PROBE_PROTOCOLS,
                   batch_size=64)
    out = {k: float(v["value"]) for k, v in res.items()}
    if cfg.pretrain.probe_linear:                      # {} without part masks
        out.update(linear_probe(km.features, val, num_part_classes(val), seed=cfg.experiment.seed))
    return out


def cell_labels(part_mask: torch.Tensor, grid, num_classes: int) -> torch.Tensor:
    """Majority label (0 = background, 1..``num_classes``; -1 where ignored pixels are the
    majority) of each cell of a ``grid = (h, w)`` over an ``[H, W]`` part mask (-1 = ignore)."""
    m = part_mask.long()
    onehot = torch.nn.functional.one_hot(m + 1, num_classes + 2).permute(2, 0, 1).float()
    pooled = torch.nn.functional.adaptive_avg_pool2d(onehot[None], grid)[0]
    return pooled.argmax(0) - 1


@torch.no_grad()
def linear_probe(features, dataset, num_classes: int, seed: int = 0) -> Dict[str, float]:
    """Balanced accuracy (x100) of a class-balanced logistic regression from the cells of
    ``features(images [B, 3, H, W] in [0, 1]) -> [B, C, h, w]`` to their majority ground-truth
    labels: fitted on the first two thirds of ``dataset``'s images, scored on the rest."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import balanced_accuracy_score

    X, Y = [], []
    for i in range(len(dataset)):
        sample = dataset[i]
        if "part_mask" not in sample:
            return {}
        f = features(sample["image"][None])[0].float().cpu()            # [C, h, w]
        y = cell_labels(sample["part_mask"], tuple(f.shape[-2:]), num_classes)
        X.append(f.flatten(1).t().numpy())
        Y.append(y.flatten().numpy())
    n_fit = (2 * len(X)) // 3
    if n_fit < 1 or n_fit >= len(X):
        return {}
    Xf, Yf = np.concatenate(X[:n_fit]), np.concatenate(Y[:n_fit])
    Xs, Ys = np.concatenate(X[n_fit:]), np.concatenate(Y[n_fit:])
    keep_f, keep_s = Yf >= 0, Ys >= 0
    if len(np.unique(Yf[keep_f])) < 2:
        return {}
    clf = LogisticRegression(max_iter=300, class_weight="balanced", random_state=seed)
    ys = Ys[keep_s]
    fg = ys > 0
    with warnings.catch_warnings():   # tiny splits: unconverged fits, classes absent from a side
        warnings.simplefilter("ignore")
        clf.fit(Xf[keep_f], Yf[keep_f])
        pred = clf.predict(Xs[keep_s])
        return {"linear_bal_acc": 100.0 * float(balanced_accuracy_score(ys, pred)),
                "linear_fg_bal_acc": 100.0 * float(balanced_accuracy_score(ys[fg], pred[fg]))}
