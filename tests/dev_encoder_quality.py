"""Development measurement: how good must a frozen encoder be for PartFormer to find parts?

Not collected by `pytest` (the file name does not start with test_); run it explicitly:

    pytest -q -s tests/dev_encoder_quality.py      # 5 settings, ~3 min each on one free core

The learning test's setting (tests/test_learning.py: birds only, K = 5, 240 steps, GT part masks
coded into the images), with an encoder whose 32-channel features are the one-hot GT part of each
stride-2 cell, plus a per-image offset (a random vector of norm ~``offset``, the same on every cell
of an image and on both views of it: what a weak self-supervised encoder shows, features that
cluster by image first), plus N(0, ``noise``^2) per channel and cell. The image's identity is coded
in the green channel (PNG bytes, so lossless). For each (offset, noise) it prints PartFormer's and
k-means' keypoint / pixel NMI on the test split and the linear probe of the cells' labels
(`partformer.pretrain.probe.linear_probe`, the pretraining probe's, on the test split here: the
features are fixed, nothing is selected), which ties these settings to the probe of a real encoder.
Measured 2026-12-02 (docs/PRETRAINING.md, "How good must the encoder be?")."""
import glob
import os

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from partformer.models.kmeans import KMeansModel
from partformer.data import build_dataset
from partformer.engine.evaluator import evaluate
from partformer.pretrain.probe import linear_probe
from tests.test_learning import (GENERATOR, LEVEL, NUM_GT_PARTS, PartMaskEncoder,
                                 train_and_evaluate)

CHANNELS = 32


class OffsetPartEncoder(PartMaskEncoder):
    """Coded image -> one-hot GT part (stride 2) + per-image offset + cell noise, 32 channels."""

    def __init__(self, offset: float, noise: float, seed: int = 0):
        super().__init__(noise, seed)
        g = torch.Generator().manual_seed(1234)
        self.table = torch.randn(256, CHANNELS, generator=g) / CHANNELS ** 0.5 * offset
        self.embed_dim = CHANNELS

    @torch.no_grad()
    def forward(self, x):
        f = self.part_map(x)
        f = F.pad(f, (0, 0, 0, 0, 0, CHANNELS - f.shape[1]))
        green = (x * self.std + self.mean)[:, 1] * 255
        image_id = green.flatten(1).median(dim=1).values.round().clamp(0, 255).long()
        f = f + self.table[image_id][:, :, None, None]
        return f + self.noise * torch.randn(f.shape, generator=self.generator)


@pytest.fixture(scope="module")
def coded_root(tmp_path_factory):
    from partformer.data.synthetic import SyntheticConfig, ensure_synthetic
    root = ensure_synthetic(str(tmp_path_factory.mktemp("quality") / "syn"),
                            SyntheticConfig(**GENERATOR), verbose=False)
    rng = np.random.default_rng(0)
    for path in sorted(glob.glob(os.path.join(root, "images", "*", "*.jpg"))):
        mask = cv2.imread(path.replace(os.sep + "images" + os.sep, os.sep + "part_masks" + os.sep)
                          [:-4] + ".png", cv2.IMREAD_GRAYSCALE)
        coded = np.repeat((mask.astype(np.uint8) * LEVEL)[..., None], 3, axis=2)
        coded[..., 1] = rng.integers(1, 256)          # the image's identity (BGR: green)
        cv2.imencode(".png", coded)[1].tofile(path)   # lossless bytes under the .jpg name
    return root


@pytest.mark.parametrize("offset,noise", [(0.0, 0.2), (1.0, 0.2), (1.0, 0.3), (1.0, 0.4),
                                          (1.0, 0.5)])
def test_quality(offset, noise, coded_root, tmp_path, monkeypatch):
    protocols = ["kp_nmi_with_bg", "px_nmi_with_bg"]
    pf, cfg = train_and_evaluate(coded_root, tmp_path, monkeypatch,
                                 lambda: OffsetPartEncoder(offset, noise), protocols)
    test = build_dataset(cfg.data, "test", skip_bad_images=False)
    encoder = OffsetPartEncoder(offset, noise)
    km_model = KMeansModel(NUM_GT_PARTS, encoder).fit(build_dataset(cfg.data, "train"))
    km = evaluate(lambda b: km_model.predict(b["image"]), test, NUM_GT_PARTS, protocols=protocols, batch_size=32)
    lin = linear_probe(km_model.features, test, NUM_GT_PARTS)
    print(f"\nRESULT offset {offset} noise {noise}: linear probe {lin['linear_bal_acc']:.1f} | "
          f"PartFormer kp/px NMI {pf['kp_nmi_with_bg']['value']:.2f} / "
          f"{pf['px_nmi_with_bg']['value']:.2f} | k-means {km['kp_nmi_with_bg']['value']:.2f} / "
          f"{km['px_nmi_with_bg']['value']:.2f}")
