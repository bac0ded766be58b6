"""Multi-crop views with known geometry, for self-supervised encoder pretraining.

Every crop is an axis-aligned box of the source image (optionally mirrored), resampled with
``F.grid_sample`` (bilinear, ``align_corners=False``). A crop is described by its affine matrix
``theta [2, 3]`` in normalised coordinates: a point ``(u, v)`` of the crop (``[-1, 1]``, pixel
centres at ``(2j + 1) / w - 1``) is the source point ``theta @ (u, v, 1)``. Because the matrices
are kept, the source position of every feature cell is known, and so is the cell of another crop
that sees the same source point: this is what the dense loss compares (see ``corresponding_points``).

Photometric changes (brightness, contrast, saturation, channel permutation, inversion, grayscale,
blur, solarisation) act per crop and never move pixels.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

__all__ = ["CropSpec", "sample_boxes", "crop", "cell_centres", "corresponding_points",
           "photometric", "PHOTOMETRIC_DEFAULTS"]


@dataclass(frozen=True)
class CropSpec:
    """One kind of crop: ``count`` crops of ``size`` px whose area is a fraction in ``scale`` of
    the source and whose aspect ratio is in ``ratio`` (log-uniform), mirrored with ``flip_p``."""
    count: int
    size: int
    scale: Tuple[float, float]
    ratio: Tuple[float, float] = (3 / 4, 4 / 3)
    flip_p: float = 0.5


def sample_boxes(n: int, spec: CropSpec, generator: torch.Generator,
                 within: Optional[torch.Tensor] = None) -> torch.Tensor:
    """``n`` random crops -> ``theta [n, 2, 3]`` (see the module docstring).

    Area fraction ``s ~ U(scale)``, aspect ``r = w/h`` log-uniform in ``ratio``; the box side
    fractions ``w = sqrt(s r)``, ``h = sqrt(s / r)`` are clipped to 1; the centre is uniform over
    the positions that keep the box inside the source, or, with ``within`` (crops ``[n, 2, 3]``),
    uniform inside those crops' boxes and then moved just enough to keep the box in the source.
    A mirrored crop has a negative x scale.
    """
    s = torch.empty(n).uniform_(spec.scale[0], spec.scale[1], generator=generator)
    logr = torch.empty(n).uniform_(math.log(spec.ratio[0]), math.log(spec.ratio[1]),
                                   generator=generator)
    r = logr.exp()
    w = (s * r).sqrt().clamp(max=1.0)
    h = (s / r).sqrt().clamp(max=1.0)
    ux = torch.rand(n, generator=generator) * 2 - 1
    uy = torch.rand(n, generator=generator) * 2 - 1
    if within is None:
        cx, cy = ux * (1 - w), uy * (1 - h)
    else:
        within = within.to(torch.float32)
        cx = (within[:, 0, 2] + ux * within[:, 0, 0].abs()).clamp(-(1 - w), 1 - w)
        cy = (within[:, 1, 2] + uy * within[:, 1, 1].abs()).clamp(-(1 - h), 1 - h)
    flip = torch.where(torch.rand(n, generator=generator) < spec.flip_p, -1.0, 1.0)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = w * flip
    theta[:, 0, 2] = cx
    theta[:, 1, 1] = h
    theta[:, 1, 2] = cy
    return theta


def crop(images: torch.Tensor, theta: torch.Tensor, size: int) -> torch.Tensor:
    """``images [B, C, H, W]`` -> crops ``[B, C, size, size]`` described by ``theta [B, 2, 3]``."""
    grid = F.affine_grid(theta.to(images), [images.shape[0], images.shape[1], size, size],
                         align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border",
                         align_corners=False)


def cell_centres(h: int, w: int, device=None) -> torch.Tensor:
    """Normalised centres ``[h, w, 2]`` (x, y) of an ``h x w`` grid (``align_corners=False``)."""
    ys = (torch.arange(h, device=device, dtype=torch.float32) * 2 + 1) / h - 1
    xs = (torch.arange(w, device=device, dtype=torch.float32) * 2 + 1) / w - 1
    gy, gx = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([gx, gy], dim=-1)


def corresponding_points(theta_from: torch.Tensor, theta_to: torch.Tensor, h: int, w: int
                         ) -> Tuple[torch.Tensor, torch.Tensor]:
    """Where the cell centres of an ``h x w`` map of crop A fall in crop B.

    Args:
        theta_from: ``[B, 2, 3]`` crop A; theta_to: ``[B, 2, 3]`` crop B.
    Returns:
        grid ``[B, h, w, 2]``: normalised (x, y) positions in crop B (usable by ``grid_sample``
        with ``align_corners=False``); valid ``[B, h, w]`` bool: the position lies inside crop B.
    """
    pts = cell_centres(h, w, theta_from.device).reshape(1, -1, 2)            # [1, hw, 2]
    src = pts @ theta_from[:, :, :2].transpose(1, 2) + theta_from[:, None, :, 2]  # [B, hw, 2]
    a = theta_to[:, :, :2]
    inv = torch.linalg.inv(a)
    dst = (src - theta_to[:, None, :, 2]) @ inv.transpose(1, 2)
    grid = dst.reshape(-1, h, w, 2)
    valid = (grid.abs() <= 1).all(dim=-1)
    return grid, valid


PHOTOMETRIC_DEFAULTS = dict(jitter_p=0.8, brightness=0.4, contrast=0.4, saturation=0.4,
                            permute_p=0.5, invert_p=0.2, gray_p=0.2, solarize_p=0.0,
                            blur_p=0.5, blur_sigma=(0.1, 1.5))


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-image isotropic Gaussian blur: ``x [B, C, H, W]``, ``sigma [B]`` (0 = unchanged)."""
    radius = max(1, int(math.ceil(2 * float(sigma.max()))))
    t = torch.arange(-radius, radius + 1, dtype=x.dtype, device=x.device)
    k = torch.exp(-0.5 * (t[None] / sigma.clamp(min=1e-3)[:, None].to(x)) ** 2)   # [B, 2r+1]
    k = k / k.sum(dim=1, keepdim=True)
    k = torch.where(sigma[:, None].to(x.device) > 0, k, (t[None] == 0).to(x))
    B, C, H, W = x.shape
    y = x.reshape(1, B * C, H, W)
    kk = k.repeat_interleave(C, dim=0)
    y = F.pad(y, (radius, radius, 0, 0), mode="reflect")
    y = F.conv2d(y, kk[:, None, None, :], groups=B * C)
    y = F.pad(y, (0, 0, radius, radius), mode="reflect")
    y = F.conv2d(y, kk[:, None, :, None], groups=B * C)
    return y.reshape(B, C, H, W)


def photometric(x: torch.Tensor, generator: torch.Generator, jitter_p: float = 0.8,
                brightness: float = 0.4, contrast: float = 0.4, saturation: float = 0.4,
                permute_p: float = 0.5, invert_p: float = 0.2, gray_p: float = 0.2,
                solarize_p: float = 0.0, blur_p: float = 0.5,
                blur_sigma: Sequence[float] = (0.1, 1.5)) -> torch.Tensor:
    """Random colour changes of crops ``x [B, 3, H, W]`` in [0, 1] (per crop, in this order):
    colour jitter (brightness, contrast, saturation factors ``U(1 - a, 1 + a)``, together with
    probability ``jitter_p``), a random permutation of the RGB channels, inversion, grayscale,
    Gaussian blur (``sigma ~ U(blur_sigma)`` in pixels), solarisation (``v -> 1 - v`` above 0.5).
    The synthetic benchmark draws colours per image, so strong colour changes keep the encoder
    from describing parts by colour."""
    B = x.shape[0]

    def coin(p):
        return (torch.rand(B, generator=generator) < p).view(B, 1, 1, 1).to(x.device)

    def factor(a):
        return torch.empty(B).uniform_(1 - a, 1 + a, generator=generator).view(B, 1, 1, 1).to(x)

    gray = lambda t: (0.299 * t[:, 0:1] + 0.587 * t[:, 1:2] + 0.114 * t[:, 2:3])  # noqa: E731
    jit = coin(jitter_p)
    y = x * factor(brightness)
    mean = gray(y).mean(dim=(2, 3), keepdim=True)
    y = (y - mean) * factor(contrast) + mean
    y = (y - gray(y)) * factor(saturation) + gray(y)
    x = torch.where(jit, y.clamp(0, 1), x)
    perms = torch.tensor([[0, 1, 2], [0, 2, 1], [1, 0, 2], [1, 2, 0], [2, 0, 1], [2, 1, 0]],
                         device=x.device)
    choice = perms[torch.randint(6, (B,), generator=generator).to(x.device)]
    permuted = torch.gather(x, 1, choice.view(B, 3, 1, 1).expand_as(x))
    x = torch.where(coin(permute_p), permuted, x)
    x = torch.where(coin(invert_p), 1 - x, x)
    x = torch.where(coin(gray_p), gray(x).expand_as(x), x)
    if blur_p > 0:
        sigma = torch.empty(B).uniform_(blur_sigma[0], blur_sigma[1], generator=generator)
        sigma = torch.where(torch.rand(B, generator=generator) < blur_p, sigma, torch.zeros(B))
        if bool((sigma > 0).any()):
            x = _gaussian_blur(x, sigma)
    if solarize_p > 0:
        x = torch.where(coin(solarize_p) & (x > 0.5), 1 - x, x)
    return x
