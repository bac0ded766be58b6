"""tools/eval.py's evaluation path on tiny trees of every benchmark, in the real on-disk formats.

An *oracle* predictor built from the ground truth must score perfectly under every protocol that
applies, and each benchmark must get exactly its own protocols (with names and versions) in the JSON.
"""
import json
import os
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from partformer.config import load_config
from partformer.engine.evaluator import evaluate_methods
from tests.fake_benchmarks import (write_celeba_tree, write_deepfashion_tree,
                                   write_partimagenet_ood_tree)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _cfg(name, root, *extra):
    return load_config(os.path.join(REPO, "configs", name),
                       [f"data.root={root}", "data.image_size=64", "eval.batch_size=4",
                        "eval.num_workers=0", "logging.progress=false", *extra])


def mask_oracle(num_parts):
    """Part maps copied from the GT part mask: label p (1..C) -> channel p-1, background -> K."""
    def predict(batch):
        m = batch["part_mask"].clone()
        lab = torch.where(m > 0, m - 1, torch.full_like(m, num_parts)).clamp(min=0)
        return F.one_hot(lab, num_parts + 1).permute(0, 3, 1, 2).float()
    return predict


def landmark_oracle(num_parts):
    """One small Gaussian blob per landmark (channel k = landmark k), background elsewhere."""
    def predict(batch):
        B, _, H, W = batch["image"].shape
        ys, xs = torch.meshgrid(torch.arange(H) + 0.5, torch.arange(W) + 0.5, indexing="ij")
        maps = torch.zeros(B, num_parts + 1, H, W)
        kp = batch["keypoints"]
        for k in range(kp.shape[1]):
            d2 = (xs - kp[:, k, 0, None, None]) ** 2 + (ys - kp[:, k, 1, None, None]) ** 2
            maps[:, k] = 20 * torch.exp(-d2 / 2.0)
        return torch.softmax(maps, dim=1)
    return predict


def _check_json(out_dir, split, expected):
    with open(os.path.join(out_dir, f"results_{split}.json")) as f:
        payload = json.load(f)
    res = payload["results"]["oracle"]
    assert sorted(res) == sorted(expected)
    for name, r in res.items():
        assert r["version"] and r["protocol"] and r["variant"], name
    return res


def test_partimagenet_pixel_protocols(tmp_path):
    root = str(tmp_path / "pin")
    write_partimagenet_ood_tree(os.path.join(root, "ood"))
    from partformer.data.partimagenet import prepare_partimagenet_ood
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepare_partimagenet_ood(root)
    K = 40
    cfg = _cfg("partimagenet_ood_k8.yaml", os.path.join(root, "ood"), f"model.num_parts={K}")
    results = evaluate_methods(cfg, {"oracle": mask_oracle(K)}, out_dir=str(tmp_path))
    res = _check_json(str(tmp_path), cfg.data.test_split,
                      ["px_nmi_with_bg", "px_ari_with_bg", "px_nmi_fg_only", "px_ari_fg_only",
                       "part_miou_hungarian", "fg_iou"])
    for name in res:
        assert res[name]["value"] == pytest.approx(100.0, abs=1e-6), name
    assert results["oracle"]["px_nmi_with_bg"]["count"] > 0


def test_deepfashion_fg_only_with_padding(tmp_path):
    root = str(tmp_path / "df")
    write_deepfashion_tree(root)
    K = 15
    cfg = _cfg("deepfashion_k4.yaml", root, f"model.num_parts={K}")
    evaluate_methods(cfg, {"oracle": mask_oracle(K)}, out_dir=str(tmp_path))
    res = _check_json(str(tmp_path), cfg.data.test_split,
                      ["px_nmi_with_bg", "px_ari_with_bg", "px_nmi_fg_only", "px_ari_fg_only",
                       "part_miou_hungarian", "fg_iou"])
    # padding pixels are ignored (-1), so the oracle is perfect on every pixel protocol
    for name in res:
        assert res[name]["value"] == pytest.approx(100.0, abs=1e-6), name


def test_celeba_landmark_protocols(tmp_path):
    root = str(tmp_path / "celeba")
    tree = write_celeba_tree(root)
    from partformer.data.celeba import prepare_celeba_splits
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepare_celeba_splits(root, tree["mafl"], num_val=2, progress=False)
    K = 5
    cfg = _cfg("celeba_k4.yaml", root, f"model.num_parts={K}")
    evaluate_methods(cfg, {"oracle": landmark_oracle(K)}, out_dir=str(tmp_path))
    res = _check_json(str(tmp_path), cfg.data.test_split,
                      ["kp_nmi_with_bg", "kp_ari_with_bg", "kp_nmi_fg_only", "kp_ari_fg_only",
                       "lm_error_iod", "lm_error_scops"])
    assert res["kp_nmi_with_bg"]["value"] == pytest.approx(100.0, abs=1e-6)
    assert res["kp_ari_fg_only"]["value"] == pytest.approx(100.0, abs=1e-6)
    # the tiny tree has 3 MAFL-train images (too few to fit 2K -> 10 regressors exactly; the
    # regression itself is verified in test_metrics_keypoints.py): both variants are computed on
    # the 2 MAFL-test images
    for name in ("lm_error_iod", "lm_error_scops"):
        assert np.isfinite(res[name]["value"]) and res[name]["value"] >= 0
        assert res[name]["count"] == 2
