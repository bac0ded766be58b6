"""Released PDiscoNet checkpoints -> our state dict (strict).

- PDiscoFormer's repository (the reference): ``pdisconet_resnet_nabirds_weights/<K>_parts_
  snapshot_best.pt`` (torch.hub ``pdisconet_resnet_nabirds_k_{4,8,11}``, ``load_model.py``
  ``pdisconet_resnet101``): a trainer snapshot with ``model_state`` or a bare state dict of
  ``IndividualLandmarkResNet``: torchvision ResNet-101 names ``conv1.weight``, ``bn1.*``,
  ``layer1..4.*`` (no ``fc.*``), ``fc_landmarks.weight`` [K+1, 3072, 1, 1], ``modulation``
  [1, 3072, K+1], ``fc_class_landmarks.weight`` [classes, 3072].
- The original repository (robertdvdk/part_detection ``main.py`` saves ``net.state_dict()``):
  the same names plus an unused ``batchnorm.*`` (BatchNorm2d(11)), dropped here.

(``pdisconet_vit_nabirds_k_*`` are ViT models: load them into ``PDiscoFormerModel`` with
``modulation="original", gumbel=False, orth_on_modulated=False`` and PDiscoFormer's converter.)
"""
from __future__ import annotations

from typing import Dict, Mapping

import torch

from partformer.methods.pdiscoformer.convert import (convert_state_dict as _convert,
                                                     load_official as _load, read_checkpoint)

__all__ = ["RESNET_PREFIXES", "read_checkpoint", "convert_state_dict", "load_official"]

RESNET_PREFIXES = ("conv1.", "bn1.", "layer1.", "layer2.", "layer3.", "layer4.")
_DROP = ("batchnorm.",)


def convert_state_dict(sd: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    return _convert(sd, backbone_prefixes=RESNET_PREFIXES, drop_prefixes=_DROP,
                    source="PDiscoNet checkpoint")


def load_official(model: torch.nn.Module, src) -> None:
    _load(model, src, backbone_prefixes=RESNET_PREFIXES, drop_prefixes=_DROP,
          source="PDiscoNet checkpoint")
