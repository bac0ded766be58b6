"""One training step's objective of PDiscoFormer (and PDiscoNet, with other weights).

Reference: ananthu-aniraj/pdiscoformer @ f039c15, ``engine/distributed_trainer_pdisco.py``
``PDiscoTrainer._run_batch`` (train branch), which in this order:

1. runs the model on the (normalised) batch x: maps A, part features f, modulated m, logits;
2. draws ONE warp for the whole batch (``generate_affine_trans_params``: θ, t_x, t_y, s), warps
   the normalised images with a bilinear torchvision ``affine`` (zero fill, i.e. the mean colour)
   and runs the model again (train mode: new Gumbel noise, new part-dropout mask, whose class
   scores are unused); only its maps A' are kept;
3. adds the weighted terms (all on the first forward's maps except equivariance):

   ======================= ============================================= =====================
   key                     term                                           CUB weight
   ======================= ============================================= =====================
   classification          CE(class_logits, labels)                        1
   concentration           pdisco_concentration_loss(A)                    0 (PDiscoNet 1000)
   total_variation         total_variation_loss(A) (all K+1 maps)          1
   presence                part_presence_loss(A[:, :K])                    1
   orthogonality           orthogonality_loss(m if modulation_orth else f)  1
   equivariance            equivariance_loss(A, unwarp(A'))                1
   background_presence     background_presence_loss(A)                     2
   pixel_entropy           pixel_entropy_loss(A)                           1
   ======================= ============================================= =====================

   and ``total`` = their sum (divided by the accumulation steps in their trainer: that is the
   engine's business here). Gradients flow through both forwards.

In eval mode the objective returns what their eval branch computes: the cross-entropy only.

Random draws (in their order: Gumbel noise of forward 1, its part-dropout mask, the warp, Gumbel
noise of forward 2) come from the ``generator`` passed to :meth:`PDiscoObjective.forward`, or are
injected with ``draws`` (see :meth:`PDiscoObjective.sample_draws`).
"""
from __future__ import annotations

from typing import Any, Dict, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from partformer.augment import RigidWarp
from partformer.layers.part_prototypes import sample_gumbel
from partformer.losses.priors import (TotalVariationLoss, background_presence_loss,
                                      equivariance_loss, orthogonality_loss, part_presence_loss,
                                      pdisco_concentration_loss, pixel_entropy_loss)

__all__ = ["PDiscoObjective", "LOSS_KEYS"]

LOSS_KEYS = ("classification", "concentration", "total_variation", "presence", "orthogonality",
             "equivariance", "background_presence", "pixel_entropy")
_SUM_ORDER = ("concentration", "presence", "classification", "orthogonality", "equivariance",
              "total_variation", "background_presence", "pixel_entropy")


class PDiscoObjective(nn.Module):
    """The loss of one PDisco training step, from a config with the ``w_*`` / ``equiv_*`` /
    ``presence_*`` fields of :class:`~partformer.methods.pdiscoformer.PDiscoFormerConfig` (or
    ``PDiscoNetConfig``).

    forward(model, images [B, 3, H, W] in [0, 1], labels [B] int64, generator=None, draws=None)
    -> dict of float32 scalars: the weighted terms of :data:`LOSS_KEYS` and ``total``.
    ``model``: a ``PrototypePartModel`` (``normalize``, ``forward_train``, ``head``).
    """

    def __init__(self, cfg: Any):
        super().__init__()
        self.cfg = cfg
        self.tv = TotalVariationLoss(cache_normaliser=bool(getattr(cfg, "tv_cache_normaliser", False)))
        self.presence_crop = int(getattr(cfg, "presence_crop", 0))
        self.presence_include_background = bool(getattr(cfg, "presence_include_background", False))

    # ------------------------------------------------------------------------------ draws
    def sample_draws(self, model, images: torch.Tensor,
                     generator: Optional[torch.Generator] = None) -> Dict[str, Any]:
        """All random draws of one step, on the CPU, in their order:

        - ``gumbel1`` [B, K+1, h, w] (None without Gumbel), ``dropout1`` [B, K, 1] keep mask
          (None without part dropout),
        - ``warp`` (:class:`~partformer.augment.RigidWarp`),
        - ``gumbel2`` [B, K+1, h, w] (None without Gumbel).
        """
        b, _, hh, ww = images.shape
        h, w = model.feature_size((hh, ww))
        shape = (b, model.num_parts + 1, h, w)
        head = model.head
        cfg = self.cfg
        d: Dict[str, Any] = {}
        d["gumbel1"] = sample_gumbel(shape, generator) if head.gumbel else None
        d["dropout1"] = head.sample_dropout_mask(b, generator) if head.part_dropout > 0 else None
        d["warp"] = RigidWarp.sample((hh, ww), degrees=cfg.equiv_degrees, translate=tuple(cfg.equiv_translate),
                                     scale=tuple(cfg.equiv_scale),
                                     translate_pixels=getattr(cfg, "equiv_translate_pixels", None),
                                     generator=generator)
        d["gumbel2"] = sample_gumbel(shape, generator) if head.gumbel else None
        return d

    # ---------------------------------------------------------------------------- forward
    def forward(self, model, images: torch.Tensor, labels: torch.Tensor,
                generator: Optional[torch.Generator] = None,
                draws: Optional[Dict[str, Any]] = None) -> Dict[str, torch.Tensor]:
        cfg = self.cfg
        x = model.normalize(images)
        if not model.training:
            # their eval branch: plain CE of the eval forward (no dropout; Gumbel as the model's
            # gumbel_at_test says)
            logits = model.classify(images)
            ce = F.cross_entropy(logits.float(), labels)
            return {"classification": ce, "total": ce}
        if draws is None:
            draws = self.sample_draws(model, images, generator)
        dev = images.device

        def on(t):
            return None if t is None else t.to(device=dev, dtype=x.dtype)

        out = model.forward_train(x, normalized=True, gumbel_noise=on(draws.get("gumbel1")),
                                  dropout_mask=on(draws.get("dropout1")))
        warp: RigidWarp = draws["warp"]
        x_warped = warp.warp(x)
        maps_warped = model.forward_train(x_warped, normalized=True, gumbel_noise=on(draws.get("gumbel2")),
                                          classify=False)["maps"]
        maps = out["maps"]
        zero = maps.new_zeros(())

        def term(weight: float, fn):
            return fn() * weight if weight else zero

        k = model.num_parts
        orth_feats = out["modulated"] if getattr(model, "orth_on_modulated", False) else out["part_features"]
        pres_maps = maps if self.presence_include_background else maps[:, :k]
        losses = {
            "classification": term(cfg.w_classification, lambda: F.cross_entropy(
                out["class_logits"], labels, label_smoothing=float(getattr(cfg, "label_smoothing", 0.0)))),
            "concentration": term(cfg.w_concentration, lambda: pdisco_concentration_loss(maps)),
            "total_variation": term(cfg.w_total_variation, lambda: self.tv(maps)),
            "presence": term(cfg.w_presence, lambda: part_presence_loss(
                pres_maps, cfg.presence_type, cfg.presence_beta, crop=self.presence_crop)),
            "orthogonality": term(cfg.w_orthogonality, lambda: orthogonality_loss(orth_feats)),
            "equivariance": term(cfg.w_equivariance, lambda: equivariance_loss(
                maps, warp.unwarp_maps(maps_warped, images.shape[-1]), num_fg=k)),
            "background_presence": term(cfg.w_background_presence, lambda: background_presence_loss(
                maps, cfg.background_presence_type)),
            "pixel_entropy": term(cfg.w_pixel_entropy, lambda: pixel_entropy_loss(maps)),
        }
        losses = {k_: v.float() for k_, v in losses.items()}
        total = zero.float()
        for k_ in _SUM_ORDER:  # their order of addition
            total = total + losses[k_]
        losses["total"] = total
        return losses
