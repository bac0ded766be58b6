"""PDiscoFormer (Aniraj et al., ECCV 2024): a frozen DINOv2 ViT-B/14 with registers, part
prototypes on its patch tokens (``partformer.layers.part_prototypes``), LayerNorm modulation,
Gumbel-softmax part maps in training, a per-part classifier averaged over the K parts.

Reference: ananthu-aniraj/pdiscoformer @ f039c15, ``models/individual_landmark_vit.py``
``IndividualLandmarkViT`` (built by ``load_model.py`` ``load_model_pdisco`` with the CUB command's
flags: ``--modulation_type layer_norm --modulation_orth --gumbel_softmax --freeze_backbone``).

Their ViT forward is timm's ``forward_features`` at the fixed training size (patch embed, pos
embed added to the patch tokens only — DINOv2-reg has ``no_embed_class`` — then [cls, 4 reg,
patches], blocks, final norm); the prefix tokens are dropped and the patch tokens form
z [B, 768, S/14, S/14]. Here the timm model sits in ``FeatureMapEncoder`` (``encoder.model``),
built at ``image_size`` with ``dynamic_img_size`` (at the training size the position embedding is
used as is; other sizes are resampled by timm, theirs would fail).

Parameter names (ours <- theirs, see :mod:`.convert`): ``encoder.model.<timm name>`` <-
``<timm name>`` (cls_token, reg_token, pos_embed, patch_embed.*, blocks.*, norm.*);
``head.prototypes.weight`` <- ``fc_landmarks.weight``; ``head.modulation.*`` <- ``modulation.*``;
``head.classifier.weight`` <- ``fc_class_landmarks.weight``.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Optional

import torch

from partformer.layers.part_prototypes import PartPrototypeHead, PrototypePartModel
from partformer.models.encoder import FeatureMapEncoder

from .config import PDiscoFormerConfig

__all__ = ["PDiscoFormerModel", "TOKEN_PARAMS"]

# ViT tensors their layer_group_matcher_pdisco keeps trainable under --freeze_backbone
# ("unfrozen_layers"), in the no-weight-decay group at the base lr
TOKEN_PARAMS = ("cls_token", "reg_token", "pos_embed")


class PDiscoFormerModel(PrototypePartModel):
    """PDiscoFormer with the settings of a :class:`PDiscoFormerConfig` (keyword overrides win).

    ``forward_train(images)`` / ``forward(images)`` -> dict (see ``PrototypePartModel``):
    ``maps`` [B, K+1, h, w], ``logits``, ``part_features`` / ``modulated`` [B, 768, K+1],
    ``class_logits`` [B, classes], ``part_logits`` [B, classes, K], ``features`` [B, 768, h, w].
    ``predict(images)`` -> [B, K+1, h, w], deterministic by default.
    """

    def __init__(self, cfg: Optional[PDiscoFormerConfig] = None, **overrides: Any):
        super().__init__()
        cfg = replace(cfg or PDiscoFormerConfig(), **overrides) if overrides else (cfg or PDiscoFormerConfig())
        self.cfg = cfg
        kwargs = dict(cfg.encoder_kwargs)
        levels = list(cfg.encoder_out_indices) if cfg.encoder_out_indices else None
        self.encoder = FeatureMapEncoder(cfg.encoder, pretrained=cfg.encoder_pretrained,
                                         weights=cfg.encoder_weights, frozen=cfg.freeze_backbone,
                                         img_size=cfg.image_size, out_indices=levels, **kwargs)
        own = dict(self.encoder.model.named_parameters())
        self.token_names = tuple(n for n in TOKEN_PARAMS if n in own)
        for n in self.token_names:
            own[n].requires_grad_(bool(cfg.train_tokens))
        if cfg.freeze_backbone and cfg.train_tokens and self.token_names:
            # keep autograd on through the frozen blocks so that the tokens get gradients
            self.encoder.trainable = self.token_names
        self.head = PartPrototypeHead(self.encoder.embed_dim, cfg.num_parts, cfg.num_classes,
                                      modulation=cfg.modulation, part_dropout=cfg.part_dropout,
                                      gumbel=cfg.gumbel, gumbel_tau=cfg.gumbel_tau,
                                      gumbel_hard=cfg.gumbel_hard, init_classifier="trunc_normal")
        self._init_common(cfg.mean, cfg.std, cfg.gumbel_at_test, cfg.normalize_at_test)
        self.orth_on_modulated = bool(cfg.orth_on_modulated)

    # param_groups(): PrototypePartModel.param_groups (their layer_group_matcher_pdisco)
