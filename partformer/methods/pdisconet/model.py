"""PDiscoNet (van der Klis et al., ICCV 2023) as PDiscoFormer's repository implements it.

Reference: ananthu-aniraj/pdiscoformer @ f039c15 ``models/individual_landmark_resnet.py``
``IndividualLandmarkResNet`` with a torchvision ResNet-101: stem, layer1..4; z = cat(bilinear
resize of layer4 to layer3's grid, layer3) [B, 2048 + 1024, ⌈H/16⌉, ⌈W/16⌉] (layer4 channels
FIRST); then the part-prototype head (``partformer.layers.part_prototypes``) with the
``original`` modulation (a learned scale [1, 3072, K+1], init 1), plain softmax maps, part
dropout 0.3 over the K foreground parts, a bias-free Linear(3072 → classes) per part (PyTorch's
default init) averaged over the K parts.

Differences from the original PDiscoNet (robertdvdk/part_detection ``nets.py``), all options of
:class:`PDiscoNetConfig` (preset :data:`~.config.ORIGINAL`): ``upsample_bilinear`` there
(align_corners=True); no input normalisation; Dropout1d and the classifier there run over all
K+1 part vectors, but only the K foreground scores are averaged, so that is the same model
(only the number of random draws differs); an unused ``BatchNorm2d(11)`` (``batchnorm.*`` keys,
dropped by the converter).

Parameter names (ours <- theirs): ``encoder.model.<torchvision name>`` <- ``conv1.*``, ``bn1.*``,
``layer1..4.*``; ``head.prototypes.weight`` <- ``fc_landmarks.weight`` [K+1, 3072, 1, 1];
``head.modulation.scale`` <- ``modulation`` [1, 3072, K+1]; ``head.classifier.weight`` <-
``fc_class_landmarks.weight``.

``freeze_backbone=True`` freezes the ResNet *and* keeps its BatchNorm in eval mode (the
project's ``FeatureMapEncoder``); their ``--freeze_backbone`` on a ResNet only stops gradients,
the BatchNorm layers still use and update batch statistics.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Optional

from partformer.layers.part_prototypes import PartPrototypeHead, PrototypePartModel
from partformer.models.encoder import FeatureMapEncoder

from .config import PDiscoNetConfig

__all__ = ["PDiscoNetModel"]


class PDiscoNetModel(PrototypePartModel):
    """PDiscoNet with the settings of a :class:`PDiscoNetConfig` (keyword overrides win).

    Same interface as ``PDiscoFormerModel``: ``forward_train`` / ``forward`` -> dict with
    ``maps`` [B, K+1, h, w], ``part_features`` / ``modulated`` [B, 3072, K+1], ``class_logits``;
    ``predict(images)`` -> [B, K+1, h, w]; ``param_groups()``.
    """

    def __init__(self, cfg: Optional[PDiscoNetConfig] = None, **overrides: Any):
        super().__init__()
        cfg = cfg or PDiscoNetConfig()
        if overrides:
            cfg = replace(cfg, **overrides)
        self.cfg = cfg
        self.encoder = FeatureMapEncoder(cfg.encoder, pretrained=cfg.encoder_pretrained,
                                         weights=cfg.encoder_weights, frozen=cfg.freeze_backbone,
                                         out_indices=list(cfg.encoder_out_indices or (3, 4)),
                                         fuse_order="deep_first",
                                         fuse_align_corners=cfg.fuse_align_corners,
                                         **dict(cfg.encoder_kwargs))
        self.token_names = ()
        self.head = PartPrototypeHead(self.encoder.embed_dim, cfg.num_parts, cfg.num_classes,
                                      modulation=cfg.modulation, part_dropout=cfg.part_dropout,
                                      gumbel=cfg.gumbel, gumbel_tau=cfg.gumbel_tau,
                                      gumbel_hard=cfg.gumbel_hard, init_classifier="default")
        self._init_common(cfg.mean, cfg.std, cfg.gumbel_at_test, cfg.normalize_at_test)
        self.orth_on_modulated = bool(cfg.orth_on_modulated)
