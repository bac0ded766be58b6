"""PartFormer (Xia et al., TPAMI 2024) behind the :class:`~partformer.methods.base.Method`
interface: the default method (docs/METHOD.md)."""
from __future__ import annotations

import dataclasses
import warnings
from typing import Any, Dict, Mapping, Optional, Sequence

import torch
import torch.nn as nn

from partformer.augment import PairedAugmentation
from partformer.methods.base import Method, register_method

from .config import LEGACY_MODEL_KEYS, LEGACY_SECTIONS, PartFormerConfig
from .criterion import PartFormerCriterion, PartFormerObjective
from .model import PartFormerModel


def _from_command_line(origins: Dict[str, str], key: str) -> bool:
    return any(v == "command line" for k, v in origins.items()
               if k == key or k.startswith(key + "."))


def _merged(base: Any, top: Any) -> Any:
    """``top`` over ``base``, recursively for mappings."""
    if isinstance(base, dict) and isinstance(top, dict):
        return {**base, **{k: _merged(base.get(k), v) for k, v in top.items()}}
    return top


@register_method
class PartFormer(Method):
    """Frozen feature-map encoder + part-token ViT; tokens exchanged between two geometric views
    and aligned with the other view's features (reconstruction, concentration, area, ArcFace)."""

    name = "partformer"
    config_class = PartFormerConfig
    official_datasets = ("cub", "celeba")

    def build_model(self, pretrained: bool = True) -> PartFormerModel:
        c = self.config
        encoder = self.cfg.model.encoder
        if not pretrained:
            encoder = dataclasses.replace(encoder, pretrained=False, weights=None)
        return PartFormerModel(
            num_parts=self.num_parts, image_size=self.image_size, encoder=encoder,
            compress=c.compress, compress_hidden=tuple(c.compress_hidden),
            feature_dim=c.feature_dim, vit=c.vit, alignment=c.alignment,
            align_scale=c.align_scale, decoder=c.decoder, predict_upsample=c.predict_upsample,
            half_resample=c.half_resample)

    def build_objective(self) -> PartFormerObjective:
        c = self.config
        return PartFormerObjective(PairedAugmentation.from_config(c.augment),
                                   PartFormerCriterion.from_config(c.loss, self.num_parts))

    def floor(self, model: PartFormerModel, images: torch.Tensor) -> Any:
        # one encoder pass over both views (stacked), as the training forward runs it
        return model.encode(model.normalize(torch.cat([images, images])))

    # ------------------------------------------------------------------ files
    @classmethod
    def upgrade_config(cls, tree: Dict[str, Any], origins: Dict[str, str]) -> None:
        """Up to version 0.1.0 PartFormer's settings were ``model.<key>`` (``model.partformer``
        for the part-token ViT) and the ``loss`` / ``augment`` sections: move them into the
        ``partformer:`` section (``model.partformer`` -> ``partformer.vit``), so that old
        checkpoints, configs and command lines keep working."""
        section = tree.get(cls.name)
        if section is not None and not isinstance(section, dict):
            return  # the type check reports it
        moved: Dict[str, Any] = {}
        model = tree.get("model")
        if isinstance(model, dict):
            for old, new in LEGACY_MODEL_KEYS.items():
                if old in model:
                    moved[new] = (model.pop(old), f"model.{old}")
        for old, new in LEGACY_SECTIONS.items():
            if old in tree:
                moved[new] = (tree.pop(old), old)
        if not moved:
            return
        section = tree.setdefault(cls.name, {})
        for new, (value, old) in moved.items():
            if new in section:
                # a command-line override wins over what a file (or a checkpoint) stored, in
                # either layout; two files that set both layouts are ambiguous
                if _from_command_line(origins, f"{cls.name}.{new}"):
                    value = _merged(value, section[new])
                elif _from_command_line(origins, old):
                    value = _merged(section[new], value)
                else:
                    from partformer.config import ConfigError
                    raise ConfigError(f"`{old}` (the layout before version 0.2) and "
                                      f"`{cls.name}.{new}` are both set; keep "
                                      f"`{cls.name}.{new}`")
            section[new] = value
            for key in [k for k in list(origins) if k == old or k.startswith(old + ".")]:
                origins[f"{cls.name}.{new}{key[len(old):]}"] = origins[key]

    @classmethod
    def upgrade_checkpoint_config(cls, tree: Dict[str, Any], ckpt: Mapping[str, Any],
                                  path: str) -> None:
        """Checkpoints written before ``half_resample`` existed were trained with bilinear x0.5
        paths; the default is now nearest (the authors' code). Keep such a model as it was
        trained, and say so. Converted authors' checkpoints hold weights trained with nearest."""
        method = (tree.get("method") or {}).get("name", cls.name)
        model = tree.get("model")
        section = tree.get(cls.name) or {}
        if method != cls.name or not isinstance(model, dict) or "half_resample" in model \
                or "half_resample" in section or cls.name in tree:
            return
        from .convert import CONVERTERS
        official = isinstance(ckpt.get("source"), dict) and \
            ckpt["source"].get("converter") in CONVERTERS
        model["half_resample"] = "nearest" if official else "bilinear"
        if not official:
            warnings.warn(f"{path} predates partformer.half_resample and was trained with "
                          "bilinear x0.5 resampling; using partformer.half_resample=bilinear for "
                          "it (the default for new runs is nearest, as the authors' code; "
                          "docs/differences.md)", stacklevel=4)

    @classmethod
    def detect_official(cls, ckpt: Mapping[str, Any]) -> bool:
        sd = ckpt.get("state_dict", ckpt)
        if not isinstance(sd, Mapping):
            return False
        keys = [k[len("module."):] if k.startswith("module.") else k for k in sd]
        # their decoder's name (MPAE, which shares backbone1 / Transformer, calls it Decoder)
        return any(k.startswith("Reconstruct_Block.") for k in keys)

    @classmethod
    def convert_official(cls, path: str, dataset: Optional[str] = None,
                         base_config: Optional[str] = None, overrides: Sequence[str] = (),
                         unsafe_load: bool = False) -> Dict[str, Any]:
        from .convert import convert_checkpoint
        return convert_checkpoint(path, dataset, base_config, list(overrides), unsafe_load)
