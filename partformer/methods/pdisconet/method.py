"""PDiscoNet (van der Klis et al., ICCV 2023) as implemented in PDiscoFormer's repository, behind the
:class:`~partformer.methods.base.Method` interface (shares PDiscoFormer's adapter)."""
from __future__ import annotations

from typing import Any, Mapping

from partformer.methods.base import register_method
from partformer.methods.pdiscoformer.method import PDiscoMethodBase, section_class

from .config import DATASET_PRESETS, PDiscoNetConfig
from .model import PDiscoNetModel

PDiscoNetSection = section_class(
    PDiscoNetConfig, "PDiscoNetSection",
    "The ``pdisconet:`` section: PDiscoNetConfig's fields but those the shared sections own "
    "(K, S, the encoder, the optimiser and schedule).")


@register_method
class PDiscoNet(PDiscoMethodBase):
    """Part prototypes on a ResNet-101 (layer3 with the upsampled layer4), softmax maps, a learned
    modulation vector; CE + presence + concentration + orthogonality + equivariance."""

    name = "pdisconet"
    config_class = PDiscoNetSection
    full_class = PDiscoNetConfig
    model_class = PDiscoNetModel
    official_datasets = tuple(DATASET_PRESETS)

    @classmethod
    def detect_official(cls, ckpt: Mapping[str, Any]) -> bool:
        keys = cls._keys(ckpt)
        return "fc_landmarks.weight" in keys and any(k.startswith("layer4.") for k in keys)
