"""The PartFormer model: encoder + compress head, part-token ViT, alignment and decoder.

Training forward (docs/METHOD.md §1; the output dict: docs/ARCHITECTURE.md): two views in [0, 1].
Test time (docs/METHOD.md §2): ``predict(images)`` -> soft part maps ``[B, K+1, H', W']``,
background last.

Both x0.5 paths, the view fed to the part-token ViT and the reconstruction target, are resampled
with ``half_resample`` (``partformer.half_resample``): ``"nearest"`` by default, which is what the
authors' ``F.interpolate(x, scale_factor=0.5)`` (no ``mode``; CUB_Model.py / CelebA_Model.py
``forward``) does, i.e. output pixel (i, j) = input pixel (2i, 2j).

Differences from the authors' code, on purpose (full list: docs/differences.md):
- the frozen encoder runs once on ``cat([view1, view2])`` under ``torch.inference_mode``
  (theirs: twice); the compress head still runs once per view, so its BatchNorm sees per-view
  batch statistics as in their code; the part-token ViT and the decoder (per-sample LayerNorms
  only) run on both views at once, which gives the same result as two calls;
- every size follows from the constructor (K, image size, feature grid, decoder output).

Parameter names (ours <- official CUB / CelebA checkpoint):
``encoder.model.*`` <- ``backbone1.*`` (with ``pos_embed_interp="dino_legacy"``, so that the
28x28 DINO grid is kept); ``compress.<i>.*`` <- ``compress_layer.<i>.*``;
``partformer.*`` <- ``Transformer.*`` (see ``PartTokenViT``; ``Transformer.pos_embed`` is fixed
and not loaded); ``decoder.*`` <- ``Reconstruct_Block.*``; ``arcface_weight`` <-
``ArcMarginProduct.weight``; ``logit_scale`` <- ``logit_scale``.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from partformer.config import section_kwargs
from partformer.models.decoder import ReconstructionDecoder
from partformer.models.encoder import (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, CompressHead,
                                       build_encoder)
from partformer.models.partformer_vit import RESAMPLE_MODES, PartTokenViT, resample

from .config import ALIGNMENTS

__all__ = ["PartFormerModel", "IMAGENET_DEFAULT_MEAN", "IMAGENET_DEFAULT_STD"]

# PartTokenViT arguments that the model derives (from the config key named)
_SET_BY_MODEL = {"num_parts": "model.num_parts", "out_dim": "partformer.feature_dim",
                 "image_size": "data.image_size", "resample": "partformer.half_resample"}


class PartFormerModel(nn.Module):
    """PartFormer (Xia et al., TPAMI 2024) with configurable sizes.

    Args:
        num_parts: K foreground parts (K+1 tokens / maps, background last).
        image_size: S, the training input size (sets the encoder's pos-embed grid and the
            part-token ViT's default sin-cos grid; other sizes still work).
        encoder: the ``model.encoder`` section (``EncoderConfig`` or a mapping of
            ``FeatureMapEncoder`` arguments; a nested ``kwargs`` mapping is merged in, see
            :func:`~partformer.models.encoder.build_encoder`), a timm name, or a ready
            ``nn.Module`` that maps normalised images to ``[B, C, h, w]`` and has ``embed_dim``.
        compress: compress-head variant, ``cub`` | ``celeba`` | ``single``.
        compress_hidden: hidden widths of the compress head.
        feature_dim: D, the part-feature dim.
        vit: the ``partformer.vit`` section (``PartTokenConfig`` or a mapping of
            ``PartTokenViT`` arguments: ``in_scale, patch_size, width, depth, heads, mlp_ratio,
            sincos_layout``).
        alignment: ``dot`` (``align_scale * <P, F>``) or ``cosine`` (cosine similarity x
            ``exp(logit_scale)``, ``logit_scale`` learnable, initialised to ``logit_scale_init``).
        align_scale: the fixed scale of ``dot`` alignment (0.8).
        logit_scale_init: initial ``logit_scale`` (``ln(1/0.07)``). With ``dot`` it is kept as a
            frozen, unused parameter (``requires_grad=False``) because the official CUB / CelebA
            checkpoints have it; frozen so that DDP does not see an unused trainable parameter.
        decoder: the ``partformer.decoder`` section (``DecoderConfig`` or a mapping of
            ``ReconstructionDecoder`` arguments: ``channels, num_blocks, upsample_after,
            out_channels, upsample_align_corners``).

    The sections are read with :func:`partformer.config.section_kwargs`: a key the constructor
    does not take, or one the model sets itself (``vit.num_parts``, ``decoder.in_dim``, ...),
    is an error naming it.
        mean, std: input normalisation (images come in [0, 1]).
        predict_upsample: factor by which ``predict`` upsamples the feature map before the
            alignment; ``None``: the decoder's total upsampling (4 by default), i.e. the
            resolution of the training reconstructions.
        half_resample: ``nearest`` (the authors' code) | ``bilinear``: how the normalised view is
            downsampled for the part-token ViT (by ``partformer.in_scale``) and for the
            reconstruction target (to the decoder's output size); one setting for both places.

    Initialisation of the trainable parts follows the authors' ``_init_weights``: xavier-uniform
    weights for the compress-head convs (default biases) and the decoder (see
    ``ReconstructionDecoder``), the part-token ViT as ``PartTokenViT.reset_parameters``, xavier
    ``arcface_weight``.
    """

    def __init__(self, num_parts: int = 4, image_size: int = 256,
                 encoder: Union[None, str, Any, nn.Module] = None,
                 compress: str = "cub", compress_hidden: Sequence[int] = (256, 128),
                 feature_dim: int = 64, vit: Optional[Any] = None,
                 alignment: str = "dot", align_scale: float = 0.8,
                 logit_scale_init: float = math.log(1 / 0.07),
                 decoder: Optional[Any] = None,
                 mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
                 std: Sequence[float] = IMAGENET_DEFAULT_STD,
                 predict_upsample: Optional[int] = None,
                 half_resample: str = "nearest"):
        super().__init__()
        if half_resample not in RESAMPLE_MODES:
            raise ValueError(f"partformer.half_resample must be one of {RESAMPLE_MODES}, "
                             f"got {half_resample!r}")
        self.half_resample = half_resample
        if alignment not in ALIGNMENTS:
            raise ValueError(f"alignment must be one of {ALIGNMENTS}, got {alignment!r}")
        if num_parts < 1:
            raise ValueError(f"num_parts must be >= 1, got {num_parts}")
        self.num_parts = int(num_parts)
        self.image_size = int(image_size)
        self.feature_dim = int(feature_dim)
        self.alignment = alignment
        self.align_scale = float(align_scale)

        # feature-map encoder + compress head
        if isinstance(encoder, nn.Module):
            self.encoder = encoder
        else:
            enc = {"name": encoder} if isinstance(encoder, str) else encoder
            self.encoder = build_encoder(enc, image_size=self.image_size)
        self.compress = CompressHead(self.encoder.embed_dim, self.feature_dim, variant=compress,
                                     hidden=tuple(compress_hidden))
        for m in self.compress.modules():           # the authors' init: xavier weights only
            if isinstance(m, nn.Conv2d):
                nn.init.xavier_uniform_(m.weight)

        # part-token ViT
        pf = section_kwargs(vit, PartTokenViT, "partformer.vit", exclude=_SET_BY_MODEL)
        self.partformer = PartTokenViT(self.num_parts, out_dim=self.feature_dim,
                                       image_size=self.image_size, resample=half_resample, **pf)

        # alignment scale, ArcFace class vectors
        self.logit_scale = nn.Parameter(torch.tensor(float(logit_scale_init)),
                                        requires_grad=(alignment == "cosine"))
        self.arcface_weight = nn.Parameter(torch.empty(self.num_parts, self.feature_dim))
        nn.init.xavier_uniform_(self.arcface_weight)

        # decoder
        dec = section_kwargs(decoder, ReconstructionDecoder, "partformer.decoder",
                             exclude={"in_dim": "partformer.feature_dim"})
        self.decoder = ReconstructionDecoder(in_dim=self.feature_dim, **dec)
        self.predict_upsample = int(predict_upsample) if predict_upsample is not None \
            else self.decoder.upscale

        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1),
                             persistent=False)

    # ------------------------------------------------------------------------------ pieces
    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> normalised (mean / std)."""
        return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)

    def feature_grid(self, image_hw: Tuple[int, int]) -> Tuple[int, int]:
        """Feature-map size ``(h, w)`` for an input of size ``(H, W)``."""
        if hasattr(self.encoder, "feature_size"):
            return tuple(self.encoder.feature_size(tuple(image_hw)))
        p = self.encoder.patch_size
        return image_hw[0] // p, image_hw[1] // p

    def alignment_logits(self, tokens: torch.Tensor, fmap: torch.Tensor) -> torch.Tensor:
        """``tokens [B, K+1, D]``, ``fmap [B, D, h, w]`` -> logits ``[B, K+1, h, w]``.

        Computed in float32 even under autocast (cheap; the softmax maps feed every loss)."""
        with torch.autocast(device_type=tokens.device.type, enabled=False):
            tokens, fmap = tokens.float(), fmap.float()
            if self.alignment == "cosine":
                tokens = F.normalize(tokens, dim=-1)
                fmap = F.normalize(fmap, dim=1)
                scale = self.logit_scale.float().exp()
            else:
                scale = self.align_scale
            return scale * torch.einsum("bkd,bdhw->bkhw", tokens, fmap)

    def assign(self, tokens: torch.Tensor, fmap: torch.Tensor) -> torch.Tensor:
        """Soft assignment ``softmax_k(scale * <P[k], F[:, u]>)`` -> ``[B, K+1, h, w]``."""
        return self.alignment_logits(tokens, fmap).softmax(dim=1)

    @staticmethod
    def compose(assign: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """``R[:, u] = sum_k assign[k, u] * P[k]`` -> ``[B, D, h, w]``."""
        return torch.einsum("bkhw,bkd->bdhw", assign, tokens)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images -> encoder map ``[B, C, h, w]`` (no gradient when frozen)."""
        return self.encoder(x)

    # ------------------------------------------------------------------------------ forward
    def forward(self, view1: torch.Tensor, view2: torch.Tensor) -> Dict[str, torch.Tensor]:
        """Training forward on two views ``[B, 3, S, S]`` in [0, 1]; see docs/ARCHITECTURE.md."""
        if view1.shape != view2.shape:
            raise ValueError(f"the two views must have the same shape, got {tuple(view1.shape)} "
                             f"and {tuple(view2.shape)}")
        B = view1.shape[0]
        x = self.normalize(torch.cat([view1, view2], dim=0))
        feats = self.encode(x)                                    # one encoder pass, both views
        fmap1 = self.compress(feats[:B])                          # per view: BN statistics as
        fmap2 = self.compress(feats[B:])                          # in the authors' code
        tokens = self.partformer(x)
        tok1, tok2 = tokens[:B], tokens[B:]

        assign12 = self.assign(tok1, fmap2)                       # tokens of view 1 on map 2
        assign21 = self.assign(tok2, fmap1)
        recon = self.decoder(torch.cat([self.compose(assign12, tok1),
                                        self.compose(assign21, tok2)], dim=0))
        # the reconstruction target: the normalised views at the decoder's output size (x0.5 in
        # the paper), resampled like the part-token ViT's input (the authors use the same tensor)
        target = x if tuple(recon.shape[-2:]) == tuple(x.shape[-2:]) else \
            resample(x, self.half_resample, size=recon.shape[-2:])
        return {
            "part_tokens1": tok1, "part_tokens2": tok2,
            "feature_map1": fmap1, "feature_map2": fmap2,
            "assign12": assign12, "assign21": assign21,
            "recon2": recon[:B], "recon1": recon[B:],
            "target2": target[B:], "target1": target[:B],
            "arcface_weight": self.arcface_weight,
        }

    def predict(self, images: torch.Tensor,
                output_size: Union[None, int, Tuple[int, int]] = None) -> torch.Tensor:
        """Soft part maps of ``images`` ``[B, 3, H, W]`` in [0, 1] -> ``[B, K+1, H', W']``.

        Tokens and feature map of the same image; the map is upsampled (bilinear) by
        ``predict_upsample`` before the alignment; the softmax maps are then resized (bilinear,
        ``align_corners=False``) to ``output_size`` when given. Background is the last channel.
        Gradient mode and train / eval mode are the caller's choice (use ``model.eval()``).
        """
        x = self.normalize(images)
        fmap = self.compress(self.encode(x))
        tokens = self.partformer(x)
        if self.predict_upsample != 1:
            h, w = fmap.shape[-2:]
            fmap = F.interpolate(fmap, size=(h * self.predict_upsample, w * self.predict_upsample),
                                 mode="bilinear", align_corners=False)
        maps = self.assign(tokens, fmap)
        if output_size is not None:
            if isinstance(output_size, int):
                output_size = (output_size, output_size)
            output_size = tuple(int(s) for s in output_size)
            if output_size != tuple(maps.shape[-2:]):
                maps = F.interpolate(maps, size=output_size, mode="bilinear", align_corners=False)
        return maps

    def trainable_parameters(self):
        return [p for p in self.parameters() if p.requires_grad]
