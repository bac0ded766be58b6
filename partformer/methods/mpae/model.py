"""MPAE: Masked Part AutoEncoder (Xia, Wu, Huang, Zhang, Zhang, ICCV 2025).

Re-implemented from the facts of the authors' code (``MPAE.py`` ``MPAE.forward``; GPL-2.0, not
copied). For a normalised image ``x [B, 3, S, S]`` (S a multiple of 14,
grid ``g = S / 14``, ``L = g²``):

1. ``feature_map = compress(DINOv2(x))``: frozen DINOv2 ViT-B/14-reg patch tokens after the final
   norm (``x_norm_patchtokens``) as ``[B, 768, g, g]``, a 1x1 conv without bias -> ``[B, D, g, g]``
   (D = 256).
2. ``part_tokens = part_vit(x)``: PartFormer's part-token ViT on the full-resolution image (patch
   14, width 256, depth 6, 8 heads, learnable position embedding) -> ``[B, K+1, D]``, background
   last.
3. ``part_maps = softmax_k(<part_tokens[k], feature_map[:, u]>)`` (plain dot product, no scale)
   ``[B, K+1, g, g]``.
4. ``part_features[u] = sum_k part_maps[k, u] · part_tokens[k]`` ``[B, L, D]``: each cell described
   by the tokens of its parts.
5. The masked decoder restores the image from 10% of its patches plus the part features of the
   other 90% (:class:`MaskedPartDecoder`); the target is ``x`` bilinearly resized to the decoder's
   output ``(g·8)²`` (their data loaders' ``Small_input``: 256 for 448, 128 for 224).

Test time (``predict``): ``feature_map`` is bilinearly upsampled by ``predict_upsample`` (a scale
factor: 4 on CUB, 8 otherwise, so 128x128 maps), then the softmax of step 3.

Parameter names (ours <- theirs): ``encoder.model.*`` <- ``backbone1.*`` (DINOv2 -> timm, see
``convert.py``), ``compress.0.weight`` <- ``compress_layer.weight``, ``part_vit.*`` <-
``Transformer.*``, ``decoder.*`` <- ``Decoder.*``.
"""
from __future__ import annotations

from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from partformer.models.encoder import (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, CompressHead,
                                       build_encoder)
from partformer.models.partformer_vit import PartTokenViT

from .config import MPAEConfig
from .decoder import MaskedPartDecoder

__all__ = ["MPAEModel", "build_model", "part_logits", "compose_part_features"]


def part_logits(part_tokens: torch.Tensor, feature_map: torch.Tensor) -> torch.Tensor:
    """``part_tokens [B, K+1, D]``, ``feature_map [B, D, h, w]`` -> ``<P[k], F[:, u]>``
    ``[B, K+1, h, w]`` in float32 (also under autocast; the maps feed every loss)."""
    with torch.autocast(device_type=part_tokens.device.type, enabled=False):
        return torch.einsum("bkd,bdhw->bkhw", part_tokens.float(), feature_map.float())


def compose_part_features(part_maps: torch.Tensor, part_tokens: torch.Tensor) -> torch.Tensor:
    """``part_maps [B, K+1, h, w]``, ``part_tokens [B, K+1, D]`` -> per-cell part features
    ``sum_k maps[k, u] · P[k]`` as tokens ``[B, h·w, D]`` (row-major cells)."""
    return torch.einsum("bkl,bkd->bld", part_maps.flatten(2).to(part_tokens.dtype), part_tokens)


class MPAEModel(nn.Module):
    """MPAE with configurable sizes; see the module docstring.

    Args:
        num_parts: K foreground parts (K+1 tokens / maps, background last).
        image_size: S, the training input size (multiple of 14): fixes the part-token ViT's
            learnable position embedding and the masked decoder's grid.
        feature_dim: D (their ``d_model`` / ``OUT_DIM``, 256).
        encoder: ``FeatureMapEncoder`` arguments (a mapping or the ``model.encoder`` section; nested
            ``kwargs`` are timm arguments) or a ready ``nn.Module`` with ``embed_dim`` mapping
            normalised images to ``[B, C, S/14, S/14]``.
        part_vit: ``PartTokenViT`` arguments (``patch_size, width, depth, heads, mlp_ratio``).
        decoder: ``MaskedPartDecoder`` arguments (``patch_size, embed_dim, depth, num_heads,
            decoder_depth, decoder_num_heads, mlp_ratio, out_patch``).
        mask_ratio: fraction of image patches hidden from the decoder (0.9).
        predict_upsample: scale factor of the test-time bilinear upsampling of the feature map.
        mean, std: input normalisation (images come in [0, 1]).

    Initialisation as the authors': xavier-uniform compress conv; the part-token ViT as
    ``PartTokenViT.reset_parameters`` (plus the sin-cos-initialised learnable position embedding);
    the decoder as ``MaskedPartDecoder.reset_parameters``.
    """

    def __init__(self, num_parts: int = 16, image_size: int = 448, feature_dim: int = 256,
                 encoder: Union[None, Mapping[str, Any], Any, nn.Module] = None,
                 part_vit: Union[None, Mapping[str, Any], Any] = None,
                 decoder: Union[None, Mapping[str, Any], Any] = None,
                 mask_ratio: float = 0.9, predict_upsample: float = 4.0,
                 mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
                 std: Sequence[float] = IMAGENET_DEFAULT_STD):
        super().__init__()
        from partformer.config import section_kwargs

        if num_parts < 1:
            raise ValueError(f"num_parts must be >= 1, got {num_parts}")
        if not 0.0 <= mask_ratio < 1.0:
            raise ValueError(f"mask_ratio must be in [0, 1), got {mask_ratio}")
        self.num_parts = int(num_parts)
        self.image_size = int(image_size)
        self.feature_dim = int(feature_dim)
        self.mask_ratio = float(mask_ratio)
        self.predict_upsample = float(predict_upsample)

        if isinstance(encoder, nn.Module):
            self.encoder = encoder
        else:
            self.encoder = build_encoder(encoder if encoder is not None else
                                         {"name": "vit_base_patch14_reg4_dinov2", "img_size": 518})
        self.compress = CompressHead(self.encoder.embed_dim, self.feature_dim, variant="single",
                                     bias=False)
        nn.init.xavier_uniform_(self.compress[0].weight)

        pv = section_kwargs(part_vit, PartTokenViT, "mpae.part_vit",
                            exclude={"num_parts": "model.num_parts", "out_dim": "mpae.feature_dim",
                                     "image_size": "data.image_size", "in_scale": "",
                                     "pos_embed": "", "resample": "", "sincos_layout": ""})
        pv.setdefault("patch_size", 14)
        self.part_vit = PartTokenViT(self.num_parts, in_scale=1.0, out_dim=self.feature_dim,
                                     image_size=self.image_size, pos_embed="learnable", **pv)

        dec = section_kwargs(decoder, MaskedPartDecoder, "mpae.decoder",
                             exclude={"image_size": "data.image_size",
                                      "part_dim": "mpae.feature_dim", "in_chans": ""})
        self.decoder = MaskedPartDecoder(self.image_size, part_dim=self.feature_dim, **dec)

        grid = self.decoder.grid
        vit_grid = self.part_vit.grid_size((self.image_size, self.image_size))
        enc_grid = self._encoder_grid((self.image_size, self.image_size))
        if not (tuple(grid) == tuple(vit_grid) == tuple(enc_grid)):
            raise ValueError(f"the encoder ({enc_grid}), the part-token ViT ({vit_grid}) and the "
                             f"masked decoder ({grid}) must share one patch grid at image size "
                             f"{self.image_size}: give them the same patch size (14)")

        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1),
                             persistent=False)

    # ------------------------------------------------------------------------------ pieces
    def _encoder_grid(self, hw: Tuple[int, int]) -> Tuple[int, int]:
        if hasattr(self.encoder, "feature_size"):
            return tuple(int(v) for v in self.encoder.feature_size(tuple(hw)))
        p = self.encoder.patch_size
        return hw[0] // p, hw[1] // p

    @property
    def grid(self) -> Tuple[int, int]:
        """The patch grid ``(g, g)`` of the training image size."""
        return self.decoder.grid

    @property
    def reconstruction_size(self) -> Tuple[int, int]:
        """Size of the restored image and of the reconstruction target (``g · out_patch``)."""
        return self.decoder.output_size

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> normalised (``(x - mean) / std``, torchvision's Normalize)."""
        return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)

    def encode(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Normalised images -> ``(feature_map [B, D, g, g], part_tokens [B, K+1, D])``."""
        return self.compress(self.encoder(x)), self.part_vit(x)

    def draw_mask_noise(self, batch: int, device: torch.device,
                        generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Uniform noise ``[B, L]`` whose argsort decides the mask (their ``torch.rand(N, L)``).

        Drawn on the generator's device (the global RNG of ``device`` without one), then moved."""
        L = self.decoder.num_tokens
        if generator is None:
            return torch.rand(batch, L, device=device)
        return torch.rand(batch, L, generator=generator, device=generator.device).to(device)

    # ------------------------------------------------------------------------------ forward
    def forward(self, images: torch.Tensor, mask_noise: Optional[torch.Tensor] = None,
                generator: Optional[torch.Generator] = None) -> Dict[str, torch.Tensor]:
        """Training forward. ``images [B, 3, S, S]`` in [0, 1].

        ``mask_noise [B, L]`` fixes the decoder mask (tests, parity); otherwise it is drawn from
        ``generator`` (or the global RNG). Returns:

        - ``part_tokens [B, K+1, D]``, ``feature_map [B, D, g, g]``;
        - ``part_maps [B, K+1, g, g]`` float32 softmax over parts, background last;
        - ``recon [B, 3, 8g, 8g]`` restored image, ``target`` (same shape: the normalised input
          resized bilinearly, ``align_corners=False``), ``mask [B, L]`` (1 = patch hidden),
          ``mask_noise [B, L]``.
        """
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
        x = self.normalize(images)
        feature_map, part_tokens = self.encode(x)
        part_maps = part_logits(part_tokens, feature_map).softmax(dim=1)
        features = compose_part_features(part_maps, part_tokens)
        if mask_noise is None:
            mask_noise = self.draw_mask_noise(x.shape[0], x.device, generator)
        dec = self.decoder(x, features, mask_noise.to(x.device), self.mask_ratio)
        target = F.interpolate(x, size=dec["recon"].shape[-2:], mode="bilinear",
                               align_corners=False)
        return {"part_tokens": part_tokens, "feature_map": feature_map, "part_maps": part_maps,
                "recon": dec["recon"], "target": target, "mask": dec["mask"],
                "mask_noise": mask_noise}

    def predict(self, images: torch.Tensor,
                output_size: Union[None, int, Tuple[int, int]] = None) -> torch.Tensor:
        """Soft part maps ``[B, K+1, h', w']`` of ``images [B, 3, H, W]`` in [0, 1], background
        last (their test path: ``MPAE.forward(trainable=False)``).

        The feature map is upsampled by ``F.interpolate(scale_factor=predict_upsample,
        mode="bilinear", align_corners=False)`` before the dot product with the tokens (128x128
        maps at the published sizes); then the softmax over parts. ``output_size``: the maps are
        resized (bilinear) to it afterwards. Train / eval and grad mode are the caller's.
        """
        x = self.normalize(images)
        feature_map, part_tokens = self.encode(x)
        if self.predict_upsample != 1.0:
            feature_map = F.interpolate(feature_map, scale_factor=self.predict_upsample,
                                        mode="bilinear", align_corners=False)
        maps = part_logits(part_tokens, feature_map).softmax(dim=1)
        if output_size is not None:
            if isinstance(output_size, int):
                output_size = (output_size, output_size)
            output_size = tuple(int(s) for s in output_size)
            if output_size != tuple(maps.shape[-2:]):
                maps = F.interpolate(maps, size=output_size, mode="bilinear", align_corners=False)
        return maps

    def trainable_parameters(self):
        return [p for p in self.parameters() if p.requires_grad]


def build_model(section: MPAEConfig, num_parts: int, image_size: int,
                encoder: Union[Mapping[str, Any], Any]) -> MPAEModel:
    """An ``MPAEModel`` from the ``mpae:`` section, K, S and the ``model.encoder`` section."""
    return MPAEModel(num_parts=num_parts, image_size=image_size,
                     feature_dim=section.feature_dim, encoder=encoder, part_vit=section.part_vit,
                     decoder=section.decoder, mask_ratio=section.mask_ratio,
                     predict_upsample=section.predict_upsample)
