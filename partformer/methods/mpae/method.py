"""MPAE (Xia et al., ICCV 2025) behind the :class:`~partformer.methods.base.Method` interface."""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Mapping, Optional, Sequence

import torch
import torch.nn as nn

from partformer.methods.base import Method, register_method

from .augment import augment_batch
from .config import PUBLISHED, MPAEConfig
from .losses import MPAEObjective
from .model import MPAEModel, build_model


class MPAEStep(nn.Module):
    """One MPAE training forward: the on-device augmentation, the model, the six losses.
    ``forward(model, batch, generator)``; the decoder's mask noise is drawn from ``generator``
    after the augmentation's draws."""

    def __init__(self, section: MPAEConfig):
        super().__init__()
        self.augment_cfg = section.augment
        self.objective = MPAEObjective(section.loss)

    def forward(self, model: MPAEModel, batch: Mapping[str, Any],
                generator: Optional[torch.Generator] = None) -> Dict[str, torch.Tensor]:
        images = batch["image"]
        with torch.autocast(device_type=images.device.type, enabled=False):
            images = augment_batch(images, self.augment_cfg, generator)
        return self.objective(model, images, generator=generator)


@register_method
class MPAE(Method):
    """Masked Part AutoEncoder: part tokens on a frozen DINOv2, a masked decoder that restores
    the image from 10% of its patches and the part descriptors of the rest, with presence, total
    variation, entropy and ArcFace priors (docs/differences.md, "MPAE")."""

    name = "mpae"
    config_class = MPAEConfig
    official_datasets = tuple(PUBLISHED)

    def build_model(self, pretrained: bool = True) -> MPAEModel:
        encoder = self.cfg.model.encoder
        if not pretrained:
            encoder = dataclasses.replace(encoder, pretrained=False, weights=None)
        return build_model(self.config, self.num_parts, self.image_size, encoder)

    def build_objective(self) -> MPAEStep:
        return MPAEStep(self.config)

    def floor(self, model: MPAEModel, images: torch.Tensor) -> Any:
        return model.encoder(model.normalize(images))

    @classmethod
    def detect_official(cls, ckpt: Mapping[str, Any]) -> bool:
        sd = ckpt.get("state_dict", ckpt)
        if not isinstance(sd, Mapping):
            return False
        keys = [k[len("module."):] if k.startswith("module.") else k for k in sd]
        # their masked decoder and part-token ViT (PartFormer's decoder is Reconstruct_Block)
        return any(k.startswith("Decoder.decoder_pred.") for k in keys) and \
            any(k.startswith("Transformer.") for k in keys)

    @classmethod
    def convert_official(cls, path: str, dataset: Optional[str] = None,
                         base_config: Optional[str] = None, overrides: Sequence[str] = (),
                         unsafe_load: bool = False) -> Dict[str, Any]:
        from .convert import convert_checkpoint
        return convert_checkpoint(path, dataset, base_config, overrides, unsafe_load)
