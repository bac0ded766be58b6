"""PartFormer: a small ViT with K+1 learnable part tokens (docs/METHOD.md §1.3).

The view (already normalised) is downsampled by ``in_scale`` with ``resample`` (see
:func:`resample`; ``"nearest"`` by default, as the authors' ``F.interpolate(x,
scale_factor=0.5)``), cut into patches by a conv without bias, given a fixed 2-D sin-cos position
embedding, and K+1 learnable part tokens (zero position embedding; the last one is background) are
prepended. ``ln_pre``, ``depth`` pre-LN residual blocks (self-attention with the fused
in-projection of ``nn.MultiheadAttention``, run by ``F.scaled_dot_product_attention``; MLP with
QuickGELU), then the K+1 tokens -> LayerNorm -> Linear(width -> out_dim, no bias).

Sin-cos layout (``sincos_layout``): ``"mae"`` (default) is the MAE ``get_2d_sincos_pos_embed``
convention: for D channels, the first D/2 encode the patch *column* (x) and the last D/2 the patch
*row* (y); each half is ``[sin(pos * omega_i), cos(pos * omega_i)]`` with
``omega_i = 10000^(-i / (D/4))``, ``i = 0..D/4-1``; tokens in row-major order (the order of
``conv(x).flatten(2)``); computed in float64, cast to float32. ``"yx"`` swaps the halves (row
first). The authors' checkpoint stores its (fixed) embedding as ``Transformer.pos_embed`` of shape
``[1, K+1 + N, width]`` (``[1, 69, 256]`` for K = 4, 8x8 patches): K+1 zero rows for the part
tokens, then the patch rows; a converter should check ``pos_embed[0, K+1:]`` against
``PartTokenViT.sincos_pos_embed`` (and the zero rows) instead of loading it.

``pos_embed="learnable"`` (MPAE, Xia et al. ICCV 2025, ``backbone/Transformer.py``
``VisionTransformer``: ``pos_embed`` is an ``nn.Parameter(requires_grad=True)`` that their Adam
trains) makes the embedding a parameter ``pos_embed [1, K+1 + N, width]`` covering the part tokens
too, initialised to K+1 zero rows followed by the same sin-cos rows, and added after the part tokens
are prepended. It exists for one patch grid only (the default one); another input size is an error.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["QuickGELU", "Mlp", "FusedSelfAttention", "ResidualAttentionBlock", "PartTokenViT",
           "sincos_pos_embed_2d", "resample", "RESAMPLE_MODES"]

SINCOS_LAYOUTS = ("mae", "yx")
POS_EMBED_MODES = ("fixed", "learnable")

# ``F.interpolate`` arguments per resampling mode of the x0.5 paths (partformer.half_resample).
# "nearest" is PyTorch's default mode, i.e. what the authors' ``F.interpolate(x, scale_factor=0.5)``
# (CUB_Model.py / CelebA_Model.py ``forward``, no ``mode``) runs: output pixel (i, j) = input pixel
# (floor(i / s), floor(j / s)) = (2i, 2j) for s = 0.5, for even and odd sizes alike.
# "bilinear" (half-pixel centres, no antialiasing) is kept as an option: it was this project's
# choice before it was checked against the authors' code.
_RESAMPLE_KWARGS = {
    "nearest": {"mode": "nearest"},
    "bilinear": {"mode": "bilinear", "align_corners": False, "antialias": False},
}
RESAMPLE_MODES = tuple(_RESAMPLE_KWARGS)


def resample(x: torch.Tensor, mode: str = "nearest", *, scale_factor: Optional[float] = None,
             size: Optional[Sequence[int]] = None) -> torch.Tensor:
    """Resample images ``[B, C, H, W]`` by ``scale_factor`` or to ``size`` with ``mode``.

    With ``scale_factor`` the output is ``floor(H * s) x floor(W * s)`` and the scale itself is used
    for the sampling positions (``recompute_scale_factor`` unset), exactly PyTorch's
    ``F.interpolate(x, scale_factor=s, mode=...)``. For ``nearest`` and s = 0.5 this is
    ``x[..., 0:2*floor(H/2):2, 0:2*floor(W/2):2]``; giving ``size=(floor(H/2), floor(W/2))``
    instead selects the same pixels.
    """
    kwargs = _RESAMPLE_KWARGS.get(mode)
    if kwargs is None:
        raise ValueError(f"resampling mode must be one of {RESAMPLE_MODES}, got {mode!r}")
    if (scale_factor is None) == (size is None):
        raise ValueError("give exactly one of scale_factor and size")
    if size is not None:
        return F.interpolate(x, size=tuple(int(s) for s in size), **kwargs)
    return F.interpolate(x, scale_factor=float(scale_factor), **kwargs)


def sincos_pos_embed_2d(dim: int, grid_h: int, grid_w: int, layout: str = "mae",
                        temperature: float = 10000.0) -> torch.Tensor:
    """Fixed 2-D sin-cos position embedding ``[grid_h * grid_w, dim]`` (row-major tokens).

    See the module docstring for the channel layout.
    """
    if dim % 4 != 0:
        raise ValueError(f"sin-cos position embedding needs dim divisible by 4, got {dim}")
    if layout not in SINCOS_LAYOUTS:
        raise ValueError(f"sincos layout must be one of {SINCOS_LAYOUTS}, got {layout!r}")
    quarter = dim // 4
    omega = torch.arange(quarter, dtype=torch.float64) / quarter
    omega = 1.0 / temperature ** omega                                   # [D/4]
    ys, xs = torch.meshgrid(torch.arange(grid_h, dtype=torch.float64),
                            torch.arange(grid_w, dtype=torch.float64), indexing="ij")

    def emb_1d(pos: torch.Tensor) -> torch.Tensor:
        out = pos.reshape(-1, 1) * omega.reshape(1, -1)                  # [N, D/4]
        return torch.cat([torch.sin(out), torch.cos(out)], dim=1)        # [N, D/2]

    ex, ey = emb_1d(xs), emb_1d(ys)
    emb = torch.cat([ex, ey], dim=1) if layout == "mae" else torch.cat([ey, ex], dim=1)
    return emb.float()


class QuickGELU(nn.Module):
    """``x * sigmoid(1.702 x)`` (CLIP's GELU approximation)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class Mlp(nn.Module):
    """Linear -> QuickGELU -> Linear (official ``mlp.c_fc`` / ``mlp.c_proj`` = ``fc1`` / ``fc2``)."""

    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = QuickGELU()
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


#: on the CPU under autocast (bf16), sequences up to this length take the explicit product path
#: of :func:`explicit_attention` instead of ``F.scaled_dot_product_attention``
CPU_EXPLICIT_MAX_TOKENS = 256


def explicit_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """``softmax(q k^T / sqrt(d)) v`` as two matrix products and a float32 softmax
    (``[B, h, N, d]`` each). What ``nn.MultiheadAttention`` computes (the authors' module); on the
    CPU under bf16 autocast it is much faster than the fused kernel for the part-token ViT's short
    sequences, in training above all: forward + backward of ``[64, 4, 69, 32]`` took 6.2 ms
    against 45.1 ms (PyTorch 2.14's CPU flash-attention backward in bf16 is slow for short
    sequences; README "Performance"). The scores are scaled and normalised in float32; the
    products run in the autocast dtype. In float32 it would also be faster (10.9 against 17.5 ms)
    but is not used there: float32 keeps the fused kernel, so that fp32 results stay exactly
    what they were (a different summation order moves a training run's trajectory)."""
    s = torch.matmul(q, k.transpose(-2, -1)).float().mul_(q.shape[-1] ** -0.5)
    return torch.matmul(s.softmax(-1).to(v.dtype), v)


class FusedSelfAttention(nn.Module):
    """Multi-head self-attention with one fused in-projection, computed by
    ``F.scaled_dot_product_attention`` (flash / memory-efficient kernels where available; on the
    CPU under autocast, sequences up to :data:`CPU_EXPLICIT_MAX_TOKENS` by
    :func:`explicit_attention`, faster there).

    Parameters and state-dict keys are those of ``nn.MultiheadAttention(width, heads)``
    (``in_proj_weight [3W, W]`` with rows q, k, v; ``in_proj_bias [3W]``; ``out_proj.weight``,
    ``out_proj.bias``), which the authors' checkpoints use, and so is its initialisation, random
    draws in the same order (xavier-uniform in-projection, zero biases). The result equals the
    authors' ``attn(x, x, x)[0]`` (sequence-first) up to float rounding (tests/test_models.py),
    without ``nn.MultiheadAttention``'s layout changes and argument checks.

    ``x``: ``[B, N, W]`` -> ``[B, N, W]``.
    """

    def __init__(self, width: int, heads: int):
        super().__init__()
        if width % heads != 0:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        self.width, self.heads = width, heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, W = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)        # [B, N, 3W]
        q, k, v = qkv.view(B, N, 3, self.heads, W // self.heads).permute(2, 0, 3, 1, 4)
        if (x.device.type == "cpu" and N <= CPU_EXPLICIT_MAX_TOKENS
                and torch.is_autocast_enabled("cpu")):
            y = explicit_attention(q, k, v)                               # [B, heads, N, W/heads]
        else:
            y = F.scaled_dot_product_attention(q, k, v)
        return self.out_proj(y.transpose(1, 2).reshape(B, N, W))


class ResidualAttentionBlock(nn.Module):
    """Pre-LN block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``.

    Official names: ``ln_1`` -> ``norm1``, ``attn`` -> ``attn`` (``nn.MultiheadAttention``'s keys,
    see :class:`FusedSelfAttention`), ``ln_2`` -> ``norm2``, ``mlp.c_fc`` -> ``mlp.fc1``,
    ``mlp.c_proj`` -> ``mlp.fc2``.
    """

    def __init__(self, width: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attn = FusedSelfAttention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.mlp = Mlp(width, int(round(width * mlp_ratio)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class PartTokenViT(nn.Module):
    """PartFormer ViT: images ``[B, 3, H, W]`` (normalised) -> part tokens ``[B, K+1, out_dim]``.

    Attributes (official key -> ours): ``Transformer.conv1`` -> ``patch_embed``,
    ``Transformer.class_embedding`` -> ``part_tokens`` ``[1, K+1, width]``,
    ``Transformer.ln_pre`` -> ``norm_pre``, ``Transformer.transformer.resblocks.<i>`` ->
    ``blocks.<i>``, ``Transformer.ln_post`` -> ``norm_post``, ``Transformer.proj`` -> ``proj``
    (``nn.Linear``, weight ``[out_dim, width]``). ``sincos_pos_embed`` is a non-persistent buffer
    for the default grid (``floor(image_size * in_scale) / patch_size``); other grids are computed
    and cached on first use.

    ``resample``: how the view is downsampled by ``in_scale`` (:data:`RESAMPLE_MODES`; the model
    sets it from ``partformer.half_resample``). Initialisation as the authors' ``VisionTransformer``
    (backbone/Transformer.py ``initialize_weights``): xavier-uniform weights of every Linear (MLP,
    attention out-projection, ``proj``) and of the patch conv, zero Linear biases, part tokens
    N(0, 0.02); the attention keeps ``nn.MultiheadAttention``'s xavier in-projection with zero
    biases.

    ``pos_embed``: ``"fixed"`` (default, PartFormer: a non-persistent sin-cos buffer on the patches,
    zeros on the part tokens) or ``"learnable"`` (MPAE: a parameter ``pos_embed [1, K+1+N, width]``
    on tokens and patches, initialised to zeros + sin-cos; default grid only; see the module
    docstring).
    """

    def __init__(self, num_parts: int, in_scale: float = 0.5, patch_size: int = 16,
                 width: int = 256, depth: int = 6, heads: int = 8, mlp_ratio: float = 4.0,
                 out_dim: int = 64, image_size: int = 256, sincos_layout: str = "mae",
                 resample: str = "nearest", pos_embed: str = "fixed"):
        super().__init__()
        if num_parts < 1:
            raise ValueError(f"num_parts must be >= 1, got {num_parts}")
        if width % heads != 0:
            raise ValueError(f"width {width} is not divisible by heads {heads}")
        if sincos_layout not in SINCOS_LAYOUTS:
            raise ValueError(f"sincos_layout must be one of {SINCOS_LAYOUTS}, got {sincos_layout!r}")
        if resample not in RESAMPLE_MODES:
            raise ValueError(f"resample must be one of {RESAMPLE_MODES}, got {resample!r}")
        if in_scale <= 0:
            raise ValueError(f"in_scale must be > 0, got {in_scale}")
        if pos_embed not in POS_EMBED_MODES:
            raise ValueError(f"pos_embed must be one of {POS_EMBED_MODES}, got {pos_embed!r}")
        self.pos_embed_mode = pos_embed
        self.resample = resample
        self.num_parts = num_parts
        self.num_tokens = num_parts + 1
        self.in_scale = float(in_scale)
        self.patch_size = patch_size
        self.width = width
        self.out_dim = out_dim
        self.sincos_layout = sincos_layout

        self.patch_embed = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size, bias=False)
        self.part_tokens = nn.Parameter(torch.empty(1, self.num_tokens, width))  # reset_parameters
        grid = self.grid_size((image_size, image_size))
        self.register_buffer("sincos_pos_embed",
                             sincos_pos_embed_2d(width, *grid, layout=sincos_layout)[None],
                             persistent=False)
        self._default_grid = grid
        self._pos_cache: Dict[Tuple, torch.Tensor] = {}
        if pos_embed == "learnable":               # filled by reset_parameters
            self.pos_embed = nn.Parameter(torch.zeros(1, self.num_tokens + grid[0] * grid[1], width))
        self.norm_pre = nn.LayerNorm(width)
        self.blocks = nn.ModuleList(ResidualAttentionBlock(width, heads, mlp_ratio)
                                    for _ in range(depth))
        self.norm_post = nn.LayerNorm(width)
        self.proj = nn.Linear(width, out_dim, bias=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The authors' initialisation (see the class docstring)."""
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.xavier_uniform_(m.weight)
                if isinstance(m, nn.Linear) and m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.part_tokens, std=0.02)
        if self.pos_embed_mode == "learnable":
            with torch.no_grad():
                self.pos_embed.zero_()
                self.pos_embed[:, self.num_tokens:] = self.sincos_pos_embed

    def input_size(self, image_size: Tuple[int, int]) -> Tuple[int, int]:
        """Size of the downsampled input for an image of ``(H, W)``: ``floor(H * in_scale)``, as
        ``F.interpolate(scale_factor=in_scale)`` computes it."""
        if self.in_scale == 1.0:
            return int(image_size[0]), int(image_size[1])
        return (int(math.floor(float(image_size[0]) * self.in_scale)),
                int(math.floor(float(image_size[1]) * self.in_scale)))

    def grid_size(self, image_size: Tuple[int, int]) -> Tuple[int, int]:
        h, w = self.input_size(image_size)
        return h // self.patch_size, w // self.patch_size

    def pos_embed_for(self, gh: int, gw: int, device, dtype) -> torch.Tensor:
        """Fixed sin-cos embedding ``[1, gh*gw, width]`` for a patch grid (cached per grid)."""
        if (gh, gw) == self._default_grid:
            return self.sincos_pos_embed.to(device=device, dtype=dtype)
        key = (gh, gw, str(device), dtype)
        pe = self._pos_cache.get(key)
        if pe is None:
            if len(self._pos_cache) >= 16:
                self._pos_cache.clear()
            pe = sincos_pos_embed_2d(self.width, gh, gw, layout=self.sincos_layout)[None]
            pe = pe.to(device=device, dtype=dtype)
            self._pos_cache[key] = pe
        return pe

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: normalised images ``[B, 3, H, W]`` -> part tokens ``[B, K+1, out_dim]``."""
        if self.in_scale != 1.0:
            x = resample(x, self.resample, scale_factor=self.in_scale)
        x = self.patch_embed(x)                                   # [B, W, gh, gw]
        B, C, gh, gw = x.shape
        x = x.flatten(2).transpose(1, 2)                          # [B, gh*gw, W], row-major
        parts = self.part_tokens.expand(B, -1, -1).to(x.dtype)
        if self.pos_embed_mode == "learnable":
            if (gh, gw) != self._default_grid:
                raise ValueError(f"this part-token ViT has a learnable position embedding for a "
                                 f"{self._default_grid[0]}x{self._default_grid[1]} patch grid; "
                                 f"the input gives {gh}x{gw} (build it with the image size used)")
            x = torch.cat([parts, x], dim=1) + self.pos_embed.to(x.dtype)
        else:
            x = x + self.pos_embed_for(gh, gw, x.device, x.dtype)
            x = torch.cat([parts, x], dim=1)                      # zero position embedding
        x = self.norm_pre(x)
        for blk in self.blocks:
            x = blk(x)
        x = self.norm_post(x[:, :self.num_tokens])
        return self.proj(x)
