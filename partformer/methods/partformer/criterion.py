"""The PartFormer training objective (docs/METHOD.md §1.6): paired views, the model, the losses.

    total = w_recon · recon + w_conc · concentration + w_area · area + w_arc · arcface
    defaults: partformer.config.LOSS_WEIGHTS (the paper's)

each term averaged over the two directions of the pair:
- recon: recon2 vs target2 and recon1 vs target1 (VGG19 perceptual by default; ``l1``/``mse`` pixel
  losses as cheap alternatives);
- concentration, area: on assign12 and assign21 (K foreground maps; area over all K+1 maps with
  ``area_all_maps``, the authors' PartImageNet variant);
- arcface: on the foreground tokens of both views against the model's ``arcface_weight``.

Both directions have the same shapes, so each term is computed once on the two directions
concatenated along the batch: a batch mean over 2B equals the average of the two batch means.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

import torch
import torch.nn as nn

from partformer.augment import PairedAugmentation
from partformer.config import section_kwargs
from partformer.losses.arcface import arcface_loss
from partformer.losses.area import area_loss
from partformer.losses.concentration import concentration_loss
from partformer.losses.perceptual import VGGPerceptualLoss, WeightsSpec
from partformer.losses.reconstruction import PIXEL_LOSSES, PixelReconstructionLoss

from .config import LOSS_WEIGHTS

DEFAULT_LOSS_WEIGHTS: Dict[str, float] = LOSS_WEIGHTS   # recon, concentration, area, arcface
RECON_LOSSES = ("perceptual",) + PIXEL_LOSSES
REQUIRED_OUTPUTS = ("part_tokens1", "part_tokens2", "assign12", "assign21",
                    "recon1", "recon2", "target1", "target2", "arcface_weight")


class PartFormerCriterion(nn.Module):
    """forward(out) -> dict(recon, concentration, area, arcface, total) of scalar tensors.

    ``out`` is the model's training output (docs/ARCHITECTURE.md): part_tokens1/2 [B, K+1, D],
    assign12/assign21 [B, K+1, h, w], recon1/2 and target1/2 [B, 3, Hr, Wr] (ImageNet-normalised),
    arcface_weight [K, D].

    Args:
        num_parts: K, foreground parts (maps and tokens have K+1 channels, background last).
        recon: "perceptual" | "l1" | "mse".
        vgg_weights: for "perceptual": "imagenet" | path to a vgg19 state dict | None (random).
        vgg_channels_last: for "perceptual": run VGG19 in the channels-last layout (faster; the
            same loss up to float rounding).
        weights: loss weights; keys recon, concentration, area, arcface (missing keys keep defaults).
        area_eps: ε of the area loss (0.5 CUB, 2.0 CelebA, 1.5 PartImageNet; for a 32×32 grid).
        area_all_maps: sum the area loss over all K+1 maps (PartImageNet variant).
        area_normalise: measure area in units of a 32×32 grid (see losses/area.py).
        arcface_s, arcface_m: ArcFace scale and margin.
    """

    def __init__(
        self,
        num_parts: int,
        recon: str = "perceptual",
        vgg_weights: WeightsSpec = "imagenet",
        vgg_channels_last: bool = True,
        weights: Optional[Mapping[str, float]] = None,
        area_eps: float = 0.5,
        area_all_maps: bool = False,
        area_normalise: bool = False,
        arcface_s: float = 20.0,
        arcface_m: float = 0.5,
    ):
        super().__init__()
        if num_parts < 1:
            raise ValueError(f"num_parts must be >= 1, got {num_parts}")
        weights = dict(weights or {})
        unknown = sorted(set(weights) - set(DEFAULT_LOSS_WEIGHTS))
        if unknown:
            raise ValueError(f"unknown loss weight(s) {unknown}; known: {sorted(DEFAULT_LOSS_WEIGHTS)}")
        self.loss_weights = {k: float(weights.get(k, v)) for k, v in DEFAULT_LOSS_WEIGHTS.items()}
        if recon == "perceptual":
            self.recon_loss: nn.Module = VGGPerceptualLoss(weights=vgg_weights,
                                                           channels_last=vgg_channels_last)
        elif recon in PIXEL_LOSSES:
            self.recon_loss = PixelReconstructionLoss(recon)
        else:
            raise ValueError(f"unknown reconstruction loss loss.recon={recon!r}; expected one of {RECON_LOSSES}")
        self.num_parts = int(num_parts)
        self.recon = recon
        self.area_eps = float(area_eps)
        self.area_all_maps = bool(area_all_maps)
        self.area_normalise = bool(area_normalise)
        self.arcface_s = float(arcface_s)
        self.arcface_m = float(arcface_m)

    @classmethod
    def from_config(cls, loss_cfg: Any, num_parts: int) -> "PartFormerCriterion":
        """Build from a ``LossConfig`` dataclass, a mapping with the same keys, or None (defaults)."""
        kwargs = section_kwargs(loss_cfg, cls, "partformer.loss", exclude=("num_parts",))
        return cls(num_parts=num_parts, **kwargs)

    def _check(self, out: Mapping[str, torch.Tensor]) -> None:
        missing = [k for k in REQUIRED_OUTPUTS if k not in out]
        if missing:
            raise KeyError(f"model output lacks {missing}; the criterion needs {list(REQUIRED_OUTPUTS)}")
        k1 = self.num_parts + 1
        for key in ("assign12", "assign21", "part_tokens1", "part_tokens2"):
            if out[key].shape[1] != k1:
                raise ValueError(f"out[{key!r}] has shape {tuple(out[key].shape)}: expected K+1 = {k1} "
                                 f"channels (num_parts = {self.num_parts}, background last)")
        if out["arcface_weight"].shape[0] != self.num_parts:
            raise ValueError(f"out['arcface_weight'] has shape {tuple(out['arcface_weight'].shape)}: "
                             f"expected [{self.num_parts}, D]")
        for a, b in (("recon1", "target1"), ("recon2", "target2"), ("recon1", "recon2"), ("assign12", "assign21")):
            if out[a].shape != out[b].shape:
                raise ValueError(f"out[{a!r}] {tuple(out[a].shape)} and out[{b!r}] {tuple(out[b].shape)} "
                                 "differ in shape")

    def forward(self, out: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Under an enclosing autocast only the reconstruction loss's network (VGG19) runs in low
        precision; its differences and the other three terms are computed in float32."""
        self._check(out)
        recon = torch.cat([out["recon2"], out["recon1"]])
        target = torch.cat([out["target2"], out["target1"]])
        k = self.num_parts
        losses = {"recon": self.recon_loss(recon, target)}
        with torch.autocast(device_type=recon.device.type, enabled=False):
            maps = torch.cat([out["assign12"], out["assign21"]]).float()
            tokens = torch.cat([out["part_tokens1"], out["part_tokens2"]]).float()
            losses["concentration"] = concentration_loss(maps, num_fg=k)
            losses["area"] = area_loss(maps, self.area_eps,
                                       num_maps=k + 1 if self.area_all_maps else k,
                                       normalise=self.area_normalise)
            losses["arcface"] = arcface_loss(tokens, out["arcface_weight"].float(),
                                             s=self.arcface_s, m=self.arcface_m)
        losses["total"] = sum(self.loss_weights[name] * value for name, value in losses.items())
        return losses

    def extra_repr(self) -> str:
        return (f"num_parts={self.num_parts}, recon={self.recon!r}, weights={self.loss_weights}, "
                f"area_eps={self.area_eps}, area_all_maps={self.area_all_maps}, "
                f"area_normalise={self.area_normalise}, arcface_s={self.arcface_s}, arcface_m={self.arcface_m}")


class PartFormerObjective(nn.Module):
    """One PartFormer training forward: paired views of the batch's images in one batched warp
    (partformer.augment), the model on both views, the criterion.

    ``forward(model, batch, generator=None)``: ``batch["image"]`` ``[B, 3, S, S]`` float in [0, 1]
    on the device. Under autocast the networks (model and the perceptual loss's VGG19) run in low
    precision; the alignment softmax and every loss term are computed in float32 (the model and
    the criterion disable autocast there). Returns the criterion's dict of scalar tensors; nothing
    here reads a value back to the host.
    """

    def __init__(self, augment: PairedAugmentation, criterion: PartFormerCriterion):
        super().__init__()
        self.augment = augment
        self.criterion = criterion

    def views(self, images: torch.Tensor, generator: Optional[torch.Generator] = None):
        """The two views ``(v1, v2)``. The warp matrices are the warp's own input, not extra
        work; PartFormer has no loss that maps one view's pixels onto the other's
        (docs/METHOD.md §1.6), so they are not used."""
        v1, v2, _, _ = self.augment(images, generator=generator)
        return v1, v2

    def forward(self, model: nn.Module, batch: Mapping[str, Any],
                generator: Optional[torch.Generator] = None) -> Dict[str, torch.Tensor]:
        images = batch["image"]
        # the warp stays in float32 under an enclosing autocast (its matrix products would
        # otherwise run in bf16 / fp16 and misplace pixels)
        with torch.autocast(device_type=images.device.type, enabled=False):
            v1, v2 = self.views(images, generator)
        out = model(v1, v2)
        out = {k: (v.float() if torch.is_tensor(v) and torch.is_floating_point(v) else v)
               for k, v in out.items()}
        return self.criterion(out)
