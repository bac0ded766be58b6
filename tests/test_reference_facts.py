"""Facts of the reference implementations that are pinned outside the model / metric unit tests:
the authors' initialisation, the x0.5 resampling setting of every shipped config and of converted
checkpoints, and the centroid convention reaching the evaluator.

Sources (read for facts only; nothing of their code is used here):
- the PartFormer authors' code, Jiahao-UTS/UnsupervisedPart (GPL-2.0): CUB_Model.py /
  CelebA_Model.py (``_init_weights``, ``forward``), backbone/Transformer.py
  (``VisionTransformer.initialize_weights``, ``_init_weights``);
- PDiscoFormer, ananthu-aniraj/pdiscoformer (MIT): utils/get_landmark_coordinates.py,
  engine/eval_interpretability_nmi_ari_keypoint.py (``create_centers``, ``eval_kpr``).
docs/differences.md lists every step of their pipeline against ours.
"""
from __future__ import annotations

import glob
import math
import os

import numpy as np
import pytest
import torch
import torch.nn as nn

from partformer import config as cfglib
from partformer.engine.evaluator import evaluate
from partformer.methods.partformer import PartFormerModel
from partformer.methods.partformer.config import PartFormerConfig

torch.set_num_threads(1)


def tiny_model(**kw) -> PartFormerModel:
    torch.manual_seed(0)
    args = dict(num_parts=4, image_size=64,
                encoder=dict(name="vit_tiny_patch16_224", depth=1, embed_dim=32, num_heads=2),
                compress_hidden=(48, 24), feature_dim=16,
                vit=dict(patch_size=8, width=32, depth=1, heads=2), decoder=dict(channels=16))
    args.update(kw)
    return PartFormerModel(**args)


def _xavier_bound(w: torch.Tensor) -> float:
    fan_in = w.shape[1] * int(np.prod(w.shape[2:]))
    fan_out = w.shape[0] * int(np.prod(w.shape[2:]))
    return math.sqrt(6.0 / (fan_in + fan_out))


def _is_xavier_uniform(w: torch.Tensor) -> bool:
    """Inside the xavier-uniform bound and reaching most of it (PyTorch's default
    kaiming_uniform(a=sqrt(5)) bound 1/sqrt(fan_in) is smaller for every layer checked here)."""
    bound = _xavier_bound(w)
    m = w.detach().abs().max().item()
    return m <= bound + 1e-7 and m > 0.9 * bound


def test_initialisation_is_the_authors():
    """CUB_Model.py ``_init_weights`` (applied to the reconstruction block, the compress layer):
    xavier-uniform conv weights, conv biases left to PyTorch; backbone/Transformer.py
    ``initialize_weights``: xavier-uniform Linear and conv weights, zero Linear biases, LayerNorm
    1 / 0, class (part) tokens N(0, 0.02); ArcMarginProduct weight xavier-uniform."""
    model = tiny_model()
    vit = model.partformer
    assert _is_xavier_uniform(vit.patch_embed.weight)
    linears = [m for m in vit.modules() if isinstance(m, nn.Linear)]
    assert len(linears) == 1 + 3 * len(vit.blocks)          # proj + (out_proj, fc1, fc2) per block
    for m in linears:
        assert _is_xavier_uniform(m.weight)
        assert m.bias is None or torch.count_nonzero(m.bias) == 0
    for blk in vit.blocks:                                   # nn.MultiheadAttention's own init
        assert _is_xavier_uniform(blk.attn.in_proj_weight)
        assert torch.count_nonzero(blk.attn.in_proj_bias) == 0
    assert 0.01 < vit.part_tokens.std().item() < 0.03
    convs = [m for m in list(model.decoder.modules()) + list(model.compress.modules())
             if isinstance(m, nn.Conv2d)]
    assert len(convs) == 6 + 3
    for m in convs:
        assert _is_xavier_uniform(m.weight)
    # compress conv biases keep PyTorch's default U(-1/sqrt(fan_in), 1/sqrt(fan_in)), not zero
    b = model.compress[0].bias
    assert torch.count_nonzero(b) == b.numel() and b.abs().max() <= 1 / math.sqrt(32)
    assert _is_xavier_uniform(model.arcface_weight)


def test_every_shipped_config_and_conversion_use_nearest():
    """The authors' two x0.5 paths are nearest (CUB_Model.py / CelebA_Model.py ``forward``:
    ``F.interpolate(input, scale_factor=0.5)``, no mode). Every config in configs/ and the
    config stored by the converter must say so; the schema default is nearest too."""
    assert PartFormerConfig().half_resample == "nearest"
    paths = sorted(glob.glob(os.path.join(cfglib.CONFIG_DIR, "*.yaml")))
    assert len(paths) >= 10
    for path in paths:
        assert cfglib.load_config(path).partformer.half_resample == "nearest", path
    from partformer.methods.partformer.convert import official_config
    for dataset in ("cub", "celeba"):
        assert official_config(dataset, 4).partformer.half_resample == "nearest"
    with pytest.raises(cfglib.ConfigError, match="half_resample"):
        cfglib.load_config(paths[0], ["partformer.half_resample=7"])


def test_paper_configs_use_the_authors_dino_grid_resize_and_no_extras():
    """backbone/DINO.py ``interpolate_pos_encoding``: the 28 x 28 DINO position grid is resized to
    the 32 x 32 patch grid on every forward with ``F.interpolate(..., scale_factor=((32 + 0.1) /
    28, ...), mode="bicubic")`` (pinned by tests/test_models.py::test_dino_legacy_pos_embed), so
    every config that trains the paper's DINO encoder must use ``pos_embed_interp: dino_legacy``.
    tools/train_function.py: no gradient clipping, no accumulation."""
    paths = sorted(glob.glob(os.path.join(cfglib.CONFIG_DIR, "*.yaml")))
    dino = [p for p in paths
            if cfglib.load_config(p).model.encoder.name == "vit_small_patch8_224.dino"]
    assert len(dino) >= 10
    for path in dino:
        cfg = cfglib.load_config(path)
        assert cfg.model.encoder.kwargs.get("pos_embed_interp") == "dino_legacy", path
        assert cfg.train.grad_clip == 0 and cfg.train.grad_accum == 1, path


class _OneHotKeypointSet(torch.utils.data.Dataset):
    """Images 16 x 16 with one keypoint and a per-image box. The image is dark but for pixel
    (4i, 4j); ``_cell_predictor`` turns that into part 0 one-hot on cell (i, j) of a 4 x 4 map, so
    the centroid is known by hand."""

    def __init__(self, cells, boxes, extra):
        self.cells, self.boxes, self.extra = cells, boxes, extra

    def __len__(self):
        return len(self.cells)

    def __getitem__(self, n):
        i, j = self.cells[n]
        box = self.boxes[n]
        c = np.array([4.0 * j, 4.0 * i])                           # index convention, stride 4
        kp = ((c - box[:2]) / box[2:] + np.array([0.1, -0.2]) + self.extra[n]) * box[2:] + box[:2]
        image = torch.zeros(3, 16, 16)
        image[:, 4 * i, 4 * j] = 1.0
        return {"image": image, "index": torch.tensor(n),
                "keypoints": torch.tensor(kp, dtype=torch.float32)[None],
                "keypoints_visible": torch.ones(1, dtype=torch.bool),
                "bbox": torch.tensor(box, dtype=torch.float32)}


def _cell_predictor(batch):
    part = batch["image"][:, :1, ::4, ::4]                           # [B, 1, 4, 4] one-hot
    return torch.cat([part, 1.0 - part], dim=1)


def test_evaluator_regression_uses_the_centroid_convention():
    """End to end through ``evaluate``: the hand-checked case of
    tests/test_metrics_keypoints.py::test_pdisco_regression_hand_checked_case (error 5.0 with
    PDiscoFormer's integer-index centroids) and the convention recorded with the result."""
    boxes_tr = np.array([[1, 2, 10, 12], [0, 0, 16, 16], [2, 1, 12, 9], [3, 4, 8, 10],
                         [1, 1, 14, 13], [0, 3, 15, 11]], dtype=np.float64)
    train = _OneHotKeypointSet([(0, 1), (2, 3), (3, 0), (1, 2), (2, 1), (0, 3)], boxes_tr,
                               np.zeros((6, 2)))
    test = _OneHotKeypointSet([(1, 1)], np.array([[2, 2, 11, 13]], dtype=np.float64),
                              np.array([[0.03, 0.04]]))
    res = evaluate(_cell_predictor, test, 1, protocols=["kp_error_pdisco", "kp_error_huang"],
                   regressor_dataset=train, batch_size=4)
    for name in ("kp_error_pdisco", "kp_error_huang"):
        assert res[name]["value"] == pytest.approx(5.0, abs=1e-6)
        assert res[name]["centroid_convention"] == "index" and res[name]["version"] == "2"
    centre = evaluate(_cell_predictor, test, 1, protocols=["kp_error_pdisco"],
                      regressor_dataset=train, batch_size=4, centroid_convention="centre")
    assert abs(centre["kp_error_pdisco"]["value"] - 5.0) > 0.1
    assert centre["kp_error_pdisco"]["centroid_convention"] == "centre"
    with pytest.raises(ValueError, match="centroid_convention"):
        evaluate(_cell_predictor, test, 1, protocols=["kp_error_pdisco"],
                 regressor_dataset=train, centroid_convention="corner")


def test_optimizer_is_one_adamw_group_with_decay_on_everything(tmp_path_factory, tmp_path):
    """utils/Optimizer.py ``get_optimizer`` ('adamw'): ``optim.AdamW(model.parameters(),
    lr=cfg.TRAIN.LR, betas=(0.9, 0.95))``, i.e. one parameter group and PyTorch's default weight
    decay 0.01 on every parameter, norms, biases and part tokens included (the frozen encoder and
    the unused ``logit_scale`` never get a gradient, so AdamW leaves them alone). train.py steps a
    MultiStepLR(milestones, 0.2) once per epoch; ours steps per iteration at the same epochs
    (tests/test_engine.py::test_lr_schedules)."""
    from partformer.engine.trainer import Trainer
    from tests.tiny import shared_root, tiny_config

    assert torch.optim.AdamW([torch.zeros(1, requires_grad=True)]).defaults["weight_decay"] == 0.01
    root = shared_root(tmp_path_factory)
    cfg = tiny_config(root, ["train.lr=5e-4", "train.betas=[0.9,0.95]", "train.weight_decay=0.01"])
    tr = Trainer(cfg, run_dir=str(tmp_path / "run"), verbose=False)
    try:
        groups = tr.optimizer.param_groups
        assert len(groups) == 1
        g = groups[0]
        assert g["lr"] == pytest.approx(5e-4) and tuple(g["betas"]) == (0.9, 0.95)
        assert g["weight_decay"] == 0.01 and g["eps"] == 1e-8 and not g["amsgrad"]
        trainable = {id(p) for p in tr.model.parameters() if p.requires_grad}
        assert {id(p) for p in g["params"]} == trainable
        names = [n for n, p in tr.model.named_parameters() if p.requires_grad]
        assert any("norm" in n for n in names) and any(n.endswith("bias") for n in names)
        assert "partformer.part_tokens" in names and "logit_scale" not in names
    finally:
        tr.close()


def test_checkpoints_from_before_half_resample_keep_their_resampling(tmp_path):
    """A run trained before ``model.half_resample`` existed used bilinear x0.5 paths: loading its
    stored config keeps bilinear (with a warning) instead of silently switching to the new nearest
    default. A converted official checkpoint holds the authors' weights (nearest). An explicit
    override still wins."""
    import warnings

    import yaml

    from partformer.hub import config_from_checkpoint
    from tests.tiny import legacy_tree

    # the layout of the checkpoints of version 0.1.0 (before methods had config sections)
    tree = legacy_tree(cfglib.load_config(os.path.join(cfglib.CONFIG_DIR, "cub_k4.yaml")))
    del tree["model"]["half_resample"]
    old = tmp_path / "old.pt"
    torch.save({"model": {}, "config": yaml.safe_dump(tree)}, old)
    with pytest.warns(UserWarning, match="predates partformer.half_resample"):
        assert config_from_checkpoint(str(old)).partformer.half_resample == "bilinear"
    for override in ("model.half_resample=nearest", "partformer.half_resample=nearest"):
        with pytest.warns(UserWarning):
            cfg = config_from_checkpoint(str(old), [override])
        assert cfg.partformer.half_resample == "nearest", override
    for converter in ("partformer.convert", "partformer.methods.partformer.convert"):
        official = tmp_path / "official.pt"
        torch.save({"model": {}, "config": yaml.safe_dump(tree),
                    "source": {"converter": converter, "dataset": "cub"}}, official)
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert config_from_checkpoint(str(official)).partformer.half_resample == "nearest"
    tree["model"]["half_resample"] = "nearest"
    new = tmp_path / "new.pt"
    torch.save({"model": {}, "config": yaml.safe_dump(tree)}, new)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert config_from_checkpoint(str(new)).partformer.half_resample == "nearest"
