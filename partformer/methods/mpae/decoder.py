"""MPAE's masked part decoder: masked-image restoration from part descriptors.

Facts from the authors' code (``backbone/MAE.py`` ``MaskedAutoencoderViT``, built in ``MPAE.py``
``MPAE.__init__`` with ``patch_size=14, embed_dim=256, depth=2, num_heads=4,
decoder_embed_dim=d_model, decoder_depth=2, decoder_num_heads=d_model // 64, mlp_ratio=4,
rec_patch=8``; ``random_masking``, ``forward_encoder``, ``forward_decoder``, ``unpatchify``).

Data flow for images ``[B, 3, H, W]`` (normalised) on a ``g_h x g_w`` grid of ``patch_size``
patches (``L = g_h * g_w``) and part features ``[B, L, part_dim]`` on the same grid:

1. ``x = patch_embed(images)`` (conv ``patch_size``/``patch_size`` with bias), row-major tokens,
   ``+ pos_embed`` (fixed 2-D sin-cos, ``embed_dim``; no class token).
2. Masking, per image: ``ids_shuffle = argsort(noise)`` (``noise [B, L]``, uniform [0, 1) in
   their code: ``torch.rand``), ``ids_restore = argsort(ids_shuffle)``. The first
   ``len_keep = int(L * (1 - mask_ratio))`` indices keep their image patch; the others
   ("masked") are filled with the part features at those positions.
3. The kept image tokens go through ``depth`` pre-LN ViT blocks and a LayerNorm, then
   ``decoder_embed`` (Linear ``embed_dim -> part_dim``).
4. ``[kept tokens, part features of the masked positions]`` (in ``ids_shuffle`` order) are put back
   into grid order with ``ids_restore``, ``+ decoder_pos_embed`` (fixed sin-cos, ``part_dim``),
   ``decoder_depth`` blocks, LayerNorm, ``decoder_pred`` (Linear ``part_dim -> out_patch² · 3``).
5. Unpatchify: token ``(i, j)`` becomes the ``out_patch x out_patch`` RGB patch at rows
   ``i·p .. i·p+p-1``, columns ``j·p .. j·p+p-1``: an image ``[B, 3, g_h·p, g_w·p]`` (256x256 for a
   448 input on CUB, 128x128 for 224).

The blocks are timm's ``Block(dim, heads, mlp_ratio, qkv_bias=True, norm_layer=nn.LayerNorm)``
(exactly what the authors instantiate; LayerNorm eps 1e-5, exact GELU, no dropout, no layer
scale), so the parameter names equal theirs. Their ``cls_token`` and ``mask_token`` parameters
are never used in the forward and are not created here.

Initialisation as their ``initialize_weights``: xavier-uniform on the patch conv weight viewed as
``[out, in·p·p]`` (a Linear's fan-in / fan-out, not a conv's), conv bias PyTorch's default;
xavier-uniform Linear weights (``qkv`` as one ``[3D, D]`` matrix), zero Linear biases;
LayerNorms 1 / 0.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
import torch.nn as nn

from partformer.models.partformer_vit import sincos_pos_embed_2d

__all__ = ["MaskedPartDecoder", "random_masking_indices", "num_kept"]


def num_kept(num_tokens: int, mask_ratio: float) -> int:
    """Visible image patches: ``int(L * (1 - mask_ratio))`` (``backbone/MAE.py`` ``random_masking``),
    a truncation computed in Python floats: L = 1024, ratio 0.9 -> 102; L = 256 -> 25; L = 64 -> 6."""
    return int(num_tokens * (1 - mask_ratio))


def random_masking_indices(noise: torch.Tensor, mask_ratio: float
                           ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Indices of MAE-style per-sample random masking from ``noise [B, L]`` (small = kept).

    Returns ``(ids_keep [B, n], ids_masked [B, L-n], ids_restore [B, L], mask [B, L])`` with
    ``n = num_kept(L, mask_ratio)``; ``mask`` is 1 where the image patch is hidden (and the part
    feature used), 0 where it is kept, in grid order.
    """
    if noise.dim() != 2:
        raise ValueError(f"noise must be [B, L], got {tuple(noise.shape)}")
    B, L = noise.shape
    n = num_kept(L, mask_ratio)
    ids_shuffle = torch.argsort(noise, dim=1)
    ids_restore = torch.argsort(ids_shuffle, dim=1)
    mask = torch.ones(B, L, device=noise.device)
    mask[:, :n] = 0
    mask = torch.gather(mask, 1, ids_restore)
    return ids_shuffle[:, :n], ids_shuffle[:, n:], ids_restore, mask


def _gather_tokens(x: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """``x [B, L, D]``, ``ids [B, n]`` -> ``x[b, ids[b]]`` ``[B, n, D]``."""
    return torch.gather(x, 1, ids.unsqueeze(-1).expand(-1, -1, x.shape[-1]))


class MaskedPartDecoder(nn.Module):
    """Restores the image from its visible patches (a fraction ``1 - mask_ratio``) and the part
    features of the hidden ones; see the module docstring.

    Args:
        image_size: ``(H, W)`` or an int: the input size (fixes the grid and the sin-cos buffers).
        patch_size: image patch size (14, as the DINOv2 grid, so the part features line up).
        embed_dim, depth, num_heads: the visible-patch encoder (256, 2, 4).
        part_dim, decoder_depth, decoder_num_heads: the decoder (``d_model`` = 256, 2,
            ``d_model // 64`` = 4).
        mlp_ratio: 4.
        out_patch: side of the RGB patch each token predicts (8: ``rec_patch``).

    ``forward(images, part_features, noise, mask_ratio)`` -> ``{"recon": [B, 3, g_h·p, g_w·p],
    "mask": [B, L]}``.
    """

    def __init__(self, image_size, patch_size: int = 14, embed_dim: int = 256, depth: int = 2,
                 num_heads: int = 4, part_dim: int = 256, decoder_depth: int = 2,
                 decoder_num_heads: Optional[int] = None, mlp_ratio: float = 4.0,
                 out_patch: int = 8, in_chans: int = 3):
        super().__init__()
        from timm.models.vision_transformer import Block

        if isinstance(image_size, int):
            image_size = (image_size, image_size)
        H, W = (int(s) for s in image_size)
        if H % patch_size or W % patch_size:
            raise ValueError(f"image size {H}x{W} is not a multiple of the patch size {patch_size}")
        if decoder_num_heads is None:
            decoder_num_heads = max(1, part_dim // 64)
        self.image_size = (H, W)
        self.patch_size = int(patch_size)
        self.grid = (H // patch_size, W // patch_size)
        self.num_tokens = self.grid[0] * self.grid[1]
        self.embed_dim, self.part_dim = int(embed_dim), int(part_dim)
        self.out_patch, self.in_chans = int(out_patch), int(in_chans)

        self.patch_embed = nn.Conv2d(in_chans, embed_dim, kernel_size=patch_size, stride=patch_size)
        self.register_buffer("pos_embed", sincos_pos_embed_2d(embed_dim, *self.grid)[None],
                             persistent=False)
        self.blocks = nn.ModuleList(
            Block(embed_dim, num_heads, mlp_ratio, qkv_bias=True, norm_layer=nn.LayerNorm)
            for _ in range(depth))
        self.norm = nn.LayerNorm(embed_dim)
        self.decoder_embed = nn.Linear(embed_dim, part_dim)
        self.register_buffer("decoder_pos_embed", sincos_pos_embed_2d(part_dim, *self.grid)[None],
                             persistent=False)
        self.decoder_blocks = nn.ModuleList(
            Block(part_dim, decoder_num_heads, mlp_ratio, qkv_bias=True, norm_layer=nn.LayerNorm)
            for _ in range(decoder_depth))
        self.decoder_norm = nn.LayerNorm(part_dim)
        self.decoder_pred = nn.Linear(part_dim, out_patch * out_patch * in_chans)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The authors' ``initialize_weights`` (see the module docstring)."""
        w = self.patch_embed.weight.data
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    @property
    def output_size(self) -> Tuple[int, int]:
        """Size of the restored image: ``(g_h · out_patch, g_w · out_patch)``."""
        return self.grid[0] * self.out_patch, self.grid[1] * self.out_patch

    def unpatchify(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, L, p·p·C]`` (per token: rows, columns, channels) -> ``[B, C, g_h·p, g_w·p]``."""
        B = x.shape[0]
        gh, gw = self.grid
        p, c = self.out_patch, self.in_chans
        x = x.reshape(B, gh, gw, p, p, c).permute(0, 5, 1, 3, 2, 4)
        return x.reshape(B, c, gh * p, gw * p)

    def forward(self, images: torch.Tensor, part_features: torch.Tensor, noise: torch.Tensor,
                mask_ratio: float) -> Dict[str, torch.Tensor]:
        """images ``[B, 3, H, W]`` (normalised, ``H, W = image_size``); part_features
        ``[B, L, part_dim]`` (grid order, row-major); noise ``[B, L]`` (argsorted: the smallest
        ``int(L·(1-mask_ratio))`` positions keep their image patch)."""
        B = images.shape[0]
        if tuple(images.shape[-2:]) != self.image_size:
            raise ValueError(f"the masked decoder was built for {self.image_size[0]}x"
                             f"{self.image_size[1]} images, got {tuple(images.shape[-2:])}")
        if part_features.shape != (B, self.num_tokens, self.part_dim):
            raise ValueError(f"part_features must be [B, {self.num_tokens}, {self.part_dim}], got "
                             f"{tuple(part_features.shape)}")
        if noise.shape != (B, self.num_tokens):
            raise ValueError(f"noise must be [{B}, {self.num_tokens}], got {tuple(noise.shape)}")
        ids_keep, ids_masked, ids_restore, mask = random_masking_indices(noise, mask_ratio)

        x = self.patch_embed(images).flatten(2).transpose(1, 2)          # [B, L, E]
        x = x + self.pos_embed.to(x.dtype)
        x = _gather_tokens(x, ids_keep)                                    # visible patches
        for blk in self.blocks:
            x = blk(x)
        x = self.decoder_embed(self.norm(x))                               # [B, n, D]
        fill = _gather_tokens(part_features.to(x.dtype), ids_masked)       # [B, L-n, D]
        x = _gather_tokens(torch.cat([x, fill], dim=1), ids_restore)       # grid order
        x = x + self.decoder_pos_embed.to(x.dtype)
        for blk in self.decoder_blocks:
            x = blk(x)
        x = self.decoder_pred(self.decoder_norm(x))                        # [B, L, p*p*3]
        return {"recon": self.unpatchify(x), "mask": mask}
