"""MPAE's training losses: pure functions on tensors and a thin ``MPAEObjective``.

Read from the authors' code (``MPAE.py`` ``MPAE.forward`` / ``high_level_loss``,
``utils/total_variation.py``, ``utils/presence_loss.py``, ``backbone/Arcmagrin.py``,
``tools/train_function.py``). ``maps`` are the training part
maps ``[B, K+1, h, w]`` (softmax over parts, background last) on the DINOv2 patch grid.

=====================  ==============================================================  ======
term                   definition                                                      weight
=====================  ==============================================================  ======
reconstruction         0.1·mean|R − T| + Σ_l w_l·mean|VGG_l(R) − VGG_l(T)|,             1.0
                       w = 5/32, 5/16, 5/8, 5/4, 5 (relu1_1 … relu5_1)
total_variation        Σ_b Σ_k Σ (|Δ_y A| + |Δ_x A|) / (B·h·w), all K+1 maps           0.5
entropy                mean over cells of −Σ_k p_k log p_k                             0.5
background_presence    BCE(max_u of avg3x3(A_bg)·radial mask, 1), mean over images     1.0
presence               per mini group of images: (1 − mean_k max_b q) +                1.0
                       (1 − mean_b max_k q), q = max_u avg3x3(A_k), foreground only;
                       averaged over groups
semantic               ArcFace (s 20, m 0.5): descriptor l of an image against the     0.25
                       K foreground tokens of that image, class l; zero for parts
                       with Σ_u A_l ≤ 1e-3 (still in the mean)
=====================  ==============================================================  ======

All map-based terms are computed in float32 with autocast off. Which of these equal PDiscoFormer's
(``ananthu-aniraj/pdiscoformer`` ``engine/losses``): total variation (also its cached normaliser,
here an argument), pixel entropy and the ``enforced_presence`` variant are the same formulas;
the presence loss differs (mini groups and a second, per-image term).
"""
from __future__ import annotations

import contextlib
from typing import Dict, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from partformer.losses.arcface import arcface_margin_logits
from partformer.losses.perceptual import VGGPerceptualLoss, perceptual_loss
# PDiscoFormer's formulas, which MPAE's utils/ use unchanged (docs/differences.md "MPAE")
from partformer.losses.priors import (background_presence_loss, pixel_entropy_loss,
                                      total_variation_loss)

from .config import VGG_LAYER_WEIGHTS, MPAELossConfig

__all__ = ["part_descriptors", "total_variation_loss", "pixel_entropy_loss",
           "background_presence_loss", "grouped_presence_loss", "semantic_consistency_loss",
           "masked_reconstruction_loss", "mpae_loss_terms", "weighted_total", "MPAEObjective",
           "LOSS_TERMS"]

LOSS_TERMS = ("reconstruction", "total_variation", "entropy", "background_presence", "presence",
              "semantic")


def _check_maps(maps: torch.Tensor, name: str = "maps") -> None:
    if maps.dim() != 4:
        raise ValueError(f"{name} must be [B, K+1, h, w], got {tuple(maps.shape)}")


def part_descriptors(maps: torch.Tensor, feature_map: torch.Tensor) -> torch.Tensor:
    """Map-weighted average feature per part: ``(1 / hw) Σ_u A_k(u) F(u)`` ``[B, K+1, D]``.

    ``maps [B, K+1, h, w]``, ``feature_map [B, D, h, w]``. A plain mean over all cells (not
    normalised by the part's mass), as their ``local_part_rep`` (``MPAE.forward``); only its
    direction matters to the cosine in :func:`semantic_consistency_loss`."""
    h, w = maps.shape[-2:]
    return torch.einsum("bkhw,bdhw->bkd", maps.float(), feature_map.float()) / (h * w)


def grouped_presence_loss(fg_maps: torch.Tensor, group_size: int) -> torch.Tensor:
    """Every part in some image of each group, and some part in every image
    (``utils/presence_loss.py`` ``presence_loss_original(maps, num_group)``).

    ``q = max_u avg_pool3x3(A)`` ``[B, K]`` on the foreground maps ``[B, K, h, w]``; the batch is
    split into consecutive groups of ``group_size`` images (the last may be smaller,
    ``torch.split``); per group ``(1 − mean_k max_b q) + (1 − mean_b max_k q)``; mean over
    groups. With one group the first term is PDiscoFormer's presence loss."""
    _check_maps(fg_maps, "fg_maps")
    if group_size < 1:
        raise ValueError(f"group_size must be >= 1, got {group_size}")
    q = F.adaptive_max_pool2d(F.avg_pool2d(fg_maps.float(), 3, stride=1), 1).flatten(1)
    groups = torch.split(q, int(group_size), dim=0)
    part_term = sum(1.0 - g.max(dim=0).values.mean() for g in groups)
    image_term = sum(1.0 - g.max(dim=1).values.mean() for g in groups)
    return (part_term + image_term) / len(groups)


def semantic_consistency_loss(descriptors: torch.Tensor, tokens: torch.Tensor,
                              fg_maps: torch.Tensor, s: float = 20.0, m: float = 0.5,
                              presence_threshold: float = 1e-3) -> torch.Tensor:
    """ArcFace between the foreground part descriptors and the part tokens of the same image
    (``backbone/Arcmagrin.py`` ``ArcMarginProduct.forward(input, global_F, distribution)``; its
    ``weight`` parameter is never used).

    descriptors ``[B, K, D]`` (:func:`part_descriptors`, first K), tokens ``[B, K, D]``, fg_maps
    ``[B, K, h, w]`` (gradient-free: only the presence mask). ``cos[b, l, c] = <d̂_bl, t̂_bc>``;
    logits ``s·φ(θ)`` on the diagonal (``cos(θ + m)``, or ``cos θ − sin(π − m)·m`` past
    ``π − m``), ``s·cos θ`` elsewhere; per-descriptor cross-entropy with class l; multiplied by
    ``[Σ_u A_l(u) > presence_threshold]``; mean over all ``B·K`` (masked ones count as 0).
    Their ``−log(exp(z_l) / Σ exp(z))`` is evaluated here as ``log_softmax`` (the same value,
    without overflow)."""
    if descriptors.shape != tokens.shape or descriptors.dim() != 3:
        raise ValueError(f"descriptors and tokens must both be [B, K, D], got "
                         f"{tuple(descriptors.shape)} and {tuple(tokens.shape)}")
    B, K, _ = tokens.shape
    with torch.autocast(device_type=tokens.device.type, enabled=False):
        cos = torch.einsum("bld,bcd->blc", F.normalize(descriptors.float(), dim=-1),
                           F.normalize(tokens.float(), dim=-1))                # [B, K, K]
        eye = torch.eye(K, device=cos.device, dtype=cos.dtype).expand(B, K, K)
        logits = arcface_margin_logits(cos, eye, s, m)
        nll = -(logits.log_softmax(dim=-1) * eye).sum(dim=-1)                 # [B, K]
        present = (fg_maps.detach().float().sum(dim=(2, 3)) > presence_threshold).float()
        return (nll * present).mean()


def masked_reconstruction_loss(recon: torch.Tensor, target: torch.Tensor,
                               vgg_slices: Optional[Sequence[nn.Module]],
                               layer_weights: Sequence[float] = VGG_LAYER_WEIGHTS,
                               l1_weight: float = 0.1,
                               memory_format: torch.memory_format = torch.contiguous_format
                               ) -> torch.Tensor:
    """``l1_weight · mean|R − T| + Σ_l w_l · mean|VGG_l(R) − VGG_l(T)|`` (``MPAE.py``
    ``MPAE.high_level_loss``; VGG19 relu1_1 … relu5_1 slices, both inputs ImageNet-normalised).
    recon, target ``[B, 3, h, w]``. ``vgg_slices=None``: the pixel term alone."""
    l1 = (recon.float() - target.float()).abs().mean()
    if vgg_slices is None:
        return l1_weight * l1
    return l1_weight * l1 + perceptual_loss(vgg_slices, recon, target, layer_weights,
                                            memory_format)


def mpae_loss_terms(outputs: Dict[str, torch.Tensor], perceptual: Optional[VGGPerceptualLoss],
                    cfg: MPAELossConfig) -> Dict[str, torch.Tensor]:
    """The six unweighted terms (:data:`LOSS_TERMS`) from ``MPAEModel.forward``'s outputs.
    ``perceptual``: a frozen ``VGGPerceptualLoss`` (its slices; the weights come from ``cfg``),
    None for the pixel term alone (``loss.perceptual: false``)."""
    maps = outputs["part_maps"]
    K = maps.shape[1] - 1
    device_type = maps.device.type
    recon, target = outputs["recon"], outputs["target"]
    if cfg.perceptual_autocast:      # VGG convs under the caller's autocast, differences in fp32
        ctx = contextlib.nullcontext()
    else:
        ctx = torch.autocast(device_type=device_type, enabled=False)
        recon, target = recon.float(), target.float()
    with ctx:
        recon_loss = masked_reconstruction_loss(
            recon, target, perceptual.slices if perceptual is not None else None,
            cfg.vgg_layer_weights, cfg.l1_weight,
            perceptual.memory_format if perceptual is not None else torch.contiguous_format)
    with torch.autocast(device_type=device_type, enabled=False):
        maps = maps.float()
        desc = part_descriptors(maps, outputs["feature_map"])
        return {
            "reconstruction": recon_loss,
            "total_variation": total_variation_loss(maps, normaliser=cfg.tv_num_elements),
            "entropy": pixel_entropy_loss(maps),
            "background_presence": background_presence_loss(maps, "enforced_presence"),
            "presence": grouped_presence_loss(maps[:, :K], cfg.presence_group_size),
            "semantic": semantic_consistency_loss(
                desc[:, :K], outputs["part_tokens"][:, :K], maps[:, :K],
                cfg.arcface_scale, cfg.arcface_margin, cfg.semantic_presence_threshold),
        }


def weighted_total(terms: Dict[str, torch.Tensor], cfg: MPAELossConfig) -> torch.Tensor:
    """``Σ weight · term`` with the weights of ``cfg`` (``tools/train_function.py``:
    R + 0.5 (TV + entropy) + 1.0 (background presence + presence) + 0.25 semantic)."""
    return sum(float(getattr(cfg, name)) * terms[name] for name in LOSS_TERMS)


class MPAEObjective(nn.Module):
    """MPAE's objective: owns the frozen VGG19 and the loss settings.

    ``forward(model, images, generator=None, mask_noise=None)`` runs ``model`` (an
    ``MPAEModel``) in training mode on ``images [B, 3, S, S]`` in [0, 1] and returns the six
    unweighted terms and ``total`` (weighted sum), all float32 scalars.
    ``compute(outputs)`` does the same from a forward's outputs.
    """

    def __init__(self, cfg: Optional[MPAELossConfig] = None, channels_last: bool = True):
        super().__init__()
        self.cfg = cfg if cfg is not None else MPAELossConfig()
        self.perceptual = VGGPerceptualLoss(weights=self.cfg.vgg_weights,
                                            layer_weights=tuple(self.cfg.vgg_layer_weights),
                                            channels_last=channels_last) \
            if self.cfg.perceptual else None

    def compute(self, outputs: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        terms = mpae_loss_terms(outputs, self.perceptual, self.cfg)
        terms["total"] = weighted_total(terms, self.cfg)
        return terms

    def forward(self, model: nn.Module, images: torch.Tensor,
                generator: Optional[torch.Generator] = None,
                mask_noise: Optional[torch.Tensor] = None) -> Dict[str, torch.Tensor]:
        return self.compute(model(images, mask_noise=mask_noise, generator=generator))
