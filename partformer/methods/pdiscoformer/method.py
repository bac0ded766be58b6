"""PDiscoFormer (Aniraj et al., ECCV 2024) and, through the same shape, PDiscoNet (van der Klis
et al., ICCV 2023) behind the :class:`~partformer.methods.base.Method` interface: class-supervised methods
(an image-level class label per training image), exact to PDiscoFormer's code
(ananthu-aniraj/pdiscoformer; docs/differences.md "PDiscoFormer / PDiscoNet")."""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
import torch.nn as nn

from partformer.augment import random_affine_views
from partformer.config import ConfigError, at_least, in_range, one_of
from partformer.layers.part_prototypes import MODULATIONS
from partformer.losses.priors import BACKGROUND_PRESENCE_VARIANTS, PRESENCE_VARIANTS
from partformer.methods.base import Method, ParamGroup, register_method

from .config import DATASET_PRESETS, PDiscoFormerConfig
from .losses import PDiscoObjective
from .model import PDiscoFormerModel

# settings of their one config that the shared sections own: K (model.num_parts), S
# (data.image_size), the backbone (model.encoder; frozen = their --freeze_backbone), the optimiser
# and schedule (train.*)
SHARED = {"num_parts": "model.num_parts", "image_size": "data.image_size",
          "encoder": "model.encoder.name", "encoder_pretrained": "model.encoder.pretrained",
          "encoder_weights": "model.encoder.weights", "encoder_kwargs": "model.encoder.kwargs",
          "encoder_out_indices": "model.encoder.out_indices",
          "freeze_backbone": "model.encoder.frozen", "optimizer": "train.optimizer",
          "lr": "train.lr", "betas": "train.betas", "weight_decay": "train.weight_decay",
          "scheduler": "train.scheduler.name", "lr_step_epochs": "train.scheduler.step_size",
          "lr_gamma": "train.scheduler.gamma", "warmup_epochs": "train.scheduler.warmup_epochs",
          "epochs": "train.epochs", "batch_size": "train.batch_size",
          "grad_clip_norm": "train.grad_clip", "grad_accumulation_steps": "train.grad_accum"}

PDISCO_CHECKS: Dict[str, Tuple[Any, Any]] = {
    "num_classes": at_least(1),
    "modulation": one_of(MODULATIONS),
    "part_dropout": in_range(0.0, 1.0),
    "gumbel_tau": ((lambda v: v > 0), "a number > 0"),
    "presence_type": one_of(PRESENCE_VARIANTS),
    "background_presence_type": one_of(BACKGROUND_PRESENCE_VARIANTS),
    "hflip": in_range(0.0, 1.0),
}


def section_class(full: type, name: str, doc: str) -> type:
    """The config section of a method whose authors' code keeps one flat config (``full``):
    every field of ``full`` but those the shared sections own (:data:`SHARED`), same defaults."""
    specs = []
    for f in dataclasses.fields(full):
        if f.name in SHARED:
            continue
        default = (dataclasses.field(default_factory=f.default_factory)
                   if f.default_factory is not dataclasses.MISSING
                   else dataclasses.field(default=f.default))
        specs.append((f.name, f.type, default))
    cls = dataclasses.make_dataclass(name, specs)
    cls.__module__ = full.__module__      # its annotations are names of that module
    cls.__doc__ = doc
    cls.CHECKS = PDISCO_CHECKS
    return cls


PDiscoFormerSection = section_class(
    PDiscoFormerConfig, "PDiscoFormerSection",
    "The ``pdiscoformer:`` section: PDiscoFormerConfig's fields but those the shared sections "
    "own (K, S, the encoder, the optimiser and schedule; see SHARED).")


class PDiscoStep(nn.Module):
    """One training step of PDiscoFormer / PDiscoNet: their data augmentation on the device (flip
    and RandomAffine with nearest sampling, on the [0, 1] image), then their objective on it and
    the class labels. Draws: the augmentation's, then the objective's (Gumbel noise, part dropout,
    the equivariance warp), all from the step's generator."""

    def __init__(self, full_cfg):
        super().__init__()
        self.cfg = full_cfg
        self.objective = PDiscoObjective(full_cfg)

    def forward(self, model: nn.Module, batch: Mapping[str, Any],
                generator: Optional[torch.Generator] = None) -> Dict[str, torch.Tensor]:
        c = self.cfg
        images = batch["image"]
        with torch.autocast(device_type=images.device.type, enabled=False):
            images = random_affine_views(images, c.hflip, c.aug_degrees, tuple(c.aug_translate),
                                         tuple(c.aug_scale), "nearest", generator)
        return self.objective(model, images, batch["label"], generator=generator)


class PDiscoMethodBase(Method):
    """What PDiscoFormer and PDiscoNet share: the flat config of their code rebuilt from our
    sections, the class labels, the parameter groups with their learning-rate multipliers."""

    supervision = "class-supervised"
    batch_keys = ("label",)
    full_class: type = PDiscoFormerConfig
    model_class: type = PDiscoFormerModel
    official_datasets = tuple(DATASET_PRESETS)

    def full_config(self, pretrained: bool = True):
        """Their flat config: our section plus the values the shared sections hold."""
        enc, train = self.cfg.model.encoder, self.cfg.train
        values = dataclasses.asdict(self.config)
        values.update(num_parts=self.num_parts, image_size=self.image_size, encoder=enc.name,
                      encoder_pretrained=bool(enc.pretrained and pretrained),
                      encoder_weights=enc.weights if pretrained else None,
                      encoder_kwargs=dict(enc.kwargs), freeze_backbone=bool(enc.frozen),
                      weight_decay=train.weight_decay)
        if any(f.name == "encoder_out_indices" for f in dataclasses.fields(self.full_class)):
            values["encoder_out_indices"] = (tuple(enc.out_indices) if enc.out_indices
                                             else None)
        values = {k: (tuple(v) if isinstance(v, list) else v) for k, v in values.items()}
        return self.full_class(**values)

    def build_model(self, pretrained: bool = True) -> nn.Module:
        return self.model_class(self.full_config(pretrained))

    def build_objective(self) -> PDiscoStep:
        return PDiscoStep(self.full_config(pretrained=False))

    def param_groups(self, model) -> List[ParamGroup]:
        """Their layer groups and multipliers (``utils/training_utils/optimizer_params.py``); a
        group with weight decay gets ``train.weight_decay``, the others none."""
        return [ParamGroup(g["name"], list(g["params"]), float(g["lr_mult"]),
                           1.0 if g["weight_decay"] else 0.0)
                for g in model.param_groups() if g["params"]]

    def check_data(self, dataset) -> None:
        n = getattr(dataset, "num_classes", None)
        if n is not None and n > self.config.num_classes:
            raise ConfigError(
                f"{self.name}.num_classes={self.config.num_classes}, but the training split has "
                f"{n} image classes; set {self.name}.num_classes={n}")

    def floor(self, model, images: torch.Tensor) -> Any:
        # the backbone runs on the batch and on its equivariance warp
        return model.encoder(model.normalize(torch.cat([images, images])))

    # ------------------------------------------------------------------ files
    @classmethod
    def _keys(cls, ckpt: Mapping[str, Any]) -> List[str]:
        sd = ckpt.get("model_state", ckpt)
        if not isinstance(sd, Mapping):
            return []
        return [k[len("module."):] if k.startswith("module.") else k for k in sd]

    @classmethod
    def convert_official(cls, path: str, dataset: Optional[str] = None,
                         base_config: Optional[str] = None, overrides: Sequence[str] = (),
                         unsafe_load: bool = False) -> Dict[str, Any]:
        from .convert import convert_released
        return convert_released(cls, path, dataset, base_config, list(overrides))


@register_method
class PDiscoFormer(PDiscoMethodBase):
    """Part prototypes on a frozen DINOv2 ViT-B/14-reg (tokens and position embedding trained),
    Gumbel-softmax maps, a per-part classifier; CE + presence + background presence + TV +
    entropy + orthogonality + equivariance."""

    name = "pdiscoformer"
    config_class = PDiscoFormerSection

    @classmethod
    def detect_official(cls, ckpt: Mapping[str, Any]) -> bool:
        keys = cls._keys(ckpt)
        # the ViT's own names at the top level (their IndividualLandmarkViT subclasses timm's
        # VisionTransformer): a patch embedding, with or without DINOv2's register tokens
        return "fc_landmarks.weight" in keys and any(k.startswith("patch_embed.") for k in keys)
