"""Paired geometric views of a batch, keeping the matrices (docs/METHOD.md §1.1).

From each image: one **shared** random horizontal flip (probability ``flip_p``; both views flipped
together), then an **independent** random affine warp per view about the image centre:

- rotation θ ~ N(0, rot_std) degrees, clipped to ±rot_max (positive θ turns the content
  anticlockwise on screen, as kornia / OpenCV ``getRotationMatrix2D``);
- isotropic scale s ~ N(1, scale_std), clipped to [scale_min, scale_max] (s > 1 enlarges the content);
- translation (t_x, t_y) ~ N(0, trans_std), each clipped to ±trans_max, times the image width / height.

The distributions are truncated by clipping (values beyond the bound sit on the bound), as the
authors' code does. Sampling is bilinear with zero padding (pixels that come from outside the image
are black, i.e. 0 in the [0, 1] image).

Coordinates follow docs/ARCHITECTURE.md: (x, y), x = column, continuous, 0-based, pixel (i, j)
covers [j, j+1) × [i, i+1) so its centre is (j + 0.5, i + 0.5). A returned matrix M [B, 3, 3] maps
original-image coordinates to view coordinates (flip included):

    M = T(c + t) · s·R(θ) · T(−c) · Flip,    c = (W/2, H/2),    Flip: x ↦ W − x (or identity)

kornia's pixel coordinates put pixel centres on integers, so the warp uses
T(−½) · M · T(+½) (see :func:`warp_images`); the returned M is the one the images were warped with.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Mapping, Optional, Tuple

import torch
import torch.nn as nn
from kornia.geometry.transform import warp_affine


# ---------------------------------------------------------------------------------- matrices
def flip_matrix(flip: torch.Tensor, width: float) -> torch.Tensor:
    """[B, 3, 3]: x ↦ width − x where ``flip`` [B] (bool) is true, identity elsewhere."""
    b = flip.shape[0]
    m = torch.eye(3, dtype=torch.float64).repeat(b, 1, 1)
    f = flip.to(torch.float64)
    m[:, 0, 0] = 1.0 - 2.0 * f
    m[:, 0, 2] = f * float(width)
    return m


def centred_affine_matrix(
    angle_deg: torch.Tensor, scale: torch.Tensor, translate: torch.Tensor, size: Tuple[int, int]
) -> torch.Tensor:
    """[B, 3, 3] mapping p ↦ s·R(θ)(p − c) + c + t, c = (W/2, H/2) the image centre.

    angle_deg [B] (positive = anticlockwise on screen, y pointing down), scale [B],
    translate [B, 2] in pixels (x, y), size (H, W). Computed in float64.
    """
    h, w = size
    a = angle_deg.to(torch.float64) * (math.pi / 180.0)
    s = scale.to(torch.float64)
    t = translate.to(torch.float64)
    cos, sin = s * torch.cos(a), s * torch.sin(a)
    cx, cy = w / 2.0, h / 2.0
    m = torch.eye(3, dtype=torch.float64).repeat(a.shape[0], 1, 1)
    m[:, 0, 0], m[:, 0, 1] = cos, sin
    m[:, 1, 0], m[:, 1, 1] = -sin, cos
    m[:, 0, 2] = cx - (cos * cx + sin * cy) + t[:, 0]
    m[:, 1, 2] = cy - (-sin * cx + cos * cy) + t[:, 1]
    return m


def warp_points(M: torch.Tensor, pts: torch.Tensor) -> torch.Tensor:
    """Apply M [B, 3, 3] to points pts [B, P, 2] (x, y); returns [B, P, 2] (divided by w)."""
    M = M.to(pts.dtype)
    out = pts @ M[:, :2, :2].transpose(1, 2) + M[:, None, :2, 2]
    w = pts @ M[:, 2:3, :2].transpose(1, 2) + M[:, None, 2:3, 2]
    return out / w


def relative_transform(M1: torch.Tensor, M2: torch.Tensor) -> torch.Tensor:
    """M2 · M1⁻¹ [B, 3, 3]: maps view-1 coordinates to view-2 coordinates."""
    return M2 @ torch.linalg.inv(M1)


def warp_images(
    images: torch.Tensor,
    M: torch.Tensor,
    output_size: Optional[Tuple[int, int]] = None,
    mode: str = "bilinear",
    padding_mode: str = "zeros",
) -> torch.Tensor:
    """Warp images [B, C, H, W] with M [B, 3, 3] (affine, source → destination, in the half-pixel
    coordinates of docs/ARCHITECTURE.md); output [B, C, H', W'], default the input size.

    kornia's pixel coordinates are ours minus ½ (pixel centres on integers), hence
    M_kornia = T(−½) · M · T(+½); ``align_corners=True`` is kornia's pixel-centre convention for
    that matrix, so the sampling positions are exactly M⁻¹ of the output pixel centres.
    """
    if images.dim() != 4 or M.shape != (images.shape[0], 3, 3):
        raise ValueError(f"images [B, C, H, W] and M [B, 3, 3] expected, got {tuple(images.shape)}, {tuple(M.shape)}")
    out_size = tuple(output_size) if output_size is not None else tuple(images.shape[-2:])
    shift = torch.eye(3, dtype=M.dtype, device=M.device)
    shift[:2, 2] = 0.5
    unshift = torch.eye(3, dtype=M.dtype, device=M.device)
    unshift[:2, 2] = -0.5
    m_kornia = unshift @ M @ shift
    # Warp in float32 (float64 when given): half-precision matrices would misplace pixels.
    work_dtype = torch.float64 if images.dtype == torch.float64 else torch.float32
    out = warp_affine(images.to(work_dtype), m_kornia[:, :2, :].to(work_dtype), out_size,
                      mode=mode, padding_mode=padding_mode, align_corners=True)
    return out.to(images.dtype) if images.is_floating_point() else out


# ---------------------------------------------------------------------------------- sampling
def _clipped_normal(noise: torch.Tensor, mean: float, std: float, lo: float, hi: float) -> torch.Tensor:
    return (mean + std * noise).clamp(lo, hi)


class PairedAugmentation(nn.Module):
    """Two geometric views of each image with a shared flip and independent affine warps.

    forward(images [B, C, H, W] in [0, 1], generator=None) -> (view1, view2, M1, M2):
    views [B, C, H, W] on the images' device; M1, M2 [B, 3, 3] float32 mapping original-image
    coordinates to view coordinates (see the module docstring). Random parameters are drawn with
    torch on the CPU (from ``generator`` when given, else torch's global CPU generator), so a seeded
    generator gives the same views on any device. Applied in train and eval mode alike.
    """

    def __init__(
        self,
        flip_p: float = 0.5,
        rot_std: float = 15.0,
        rot_max: float = 30.0,
        scale_std: float = 0.05,
        scale_min: float = 0.95,
        scale_max: float = 1.05,
        trans_std: float = 0.05,
        trans_max: float = 0.05,
    ):
        super().__init__()
        if not 0.0 <= flip_p <= 1.0:
            raise ValueError(f"flip_p must be in [0, 1], got {flip_p}")
        if min(rot_std, rot_max, scale_std, trans_std, trans_max) < 0:
            raise ValueError("rot_std, rot_max, scale_std, trans_std and trans_max must be >= 0")
        if not 0 < scale_min <= scale_max:
            raise ValueError(f"need 0 < scale_min <= scale_max, got {scale_min}, {scale_max}")
        self.flip_p = float(flip_p)
        self.rot_std, self.rot_max = float(rot_std), float(rot_max)
        self.scale_std, self.scale_min, self.scale_max = float(scale_std), float(scale_min), float(scale_max)
        self.trans_std, self.trans_max = float(trans_std), float(trans_max)

    @classmethod
    def from_config(cls, cfg: Any, prefix: str = "partformer.augment") -> "PairedAugmentation":
        """Build from an ``AugmentConfig`` dataclass (PartFormer's ``partformer.augment``), a
        mapping with the same keys, or None; ``prefix`` names the section in errors."""
        from partformer.config import section_kwargs
        return cls(**section_kwargs(cfg, cls, prefix))

    def sample_params(self, batch_size: int, generator: Optional[torch.Generator] = None) -> Dict[str, torch.Tensor]:
        """Random parameters on the CPU: ``flip`` [B] bool, and per view i in {1, 2}: ``angle{i}`` [B]
        degrees, ``scale{i}`` [B], ``translate{i}`` [B, 2] as fractions of (W, H).

        The draws (one uniform [B], one normal [2, B, 4]) do not depend on the settings, so a seeded
        generator gives the same stream whatever the bounds.
        """
        u = torch.rand(batch_size, generator=generator, dtype=torch.float64)
        z = torch.randn(2, batch_size, 4, generator=generator, dtype=torch.float64)
        params = {"flip": u < self.flip_p}
        for i in (0, 1):
            v = str(i + 1)
            params["angle" + v] = _clipped_normal(z[i, :, 0], 0.0, self.rot_std, -self.rot_max, self.rot_max)
            params["scale" + v] = _clipped_normal(z[i, :, 1], 1.0, self.scale_std, self.scale_min, self.scale_max)
            params["translate" + v] = _clipped_normal(z[i, :, 2:], 0.0, self.trans_std,
                                                      -self.trans_max, self.trans_max)
        return params

    @staticmethod
    def matrices(params: Mapping[str, torch.Tensor], size: Tuple[int, int]) -> Tuple[torch.Tensor, torch.Tensor]:
        """(M1, M2) [B, 3, 3] float64 from :meth:`sample_params` output for images of size (H, W)."""
        h, w = size
        flip = flip_matrix(params["flip"], w)
        scale_xy = torch.tensor([w, h], dtype=torch.float64)
        out = []
        for i in (1, 2):
            aff = centred_affine_matrix(params[f"angle{i}"], params[f"scale{i}"],
                                        params[f"translate{i}"].to(torch.float64) * scale_xy, size)
            out.append(aff @ flip)
        return out[0], out[1]

    def forward(
        self, images: torch.Tensor, generator: Optional[torch.Generator] = None
    ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        if images.dim() != 4:
            raise ValueError(f"images must be [B, C, H, W], got {tuple(images.shape)}")
        size = tuple(images.shape[-2:])
        params = self.sample_params(images.shape[0], generator)
        m1, m2 = (m.to(device=images.device, dtype=torch.float32) for m in self.matrices(params, size))
        views = warp_images(torch.cat([images, images]), torch.cat([m1, m2]))  # one warp for both views
        return views[: images.shape[0]], views[images.shape[0]:], m1, m2

    def extra_repr(self) -> str:
        return (f"flip_p={self.flip_p}, rot_std={self.rot_std}, rot_max={self.rot_max}, "
                f"scale_std={self.scale_std}, scale=[{self.scale_min}, {self.scale_max}], "
                f"trans_std={self.trans_std}, trans_max={self.trans_max}")


# ------------------------------------------------------- torchvision-convention rigid warps
def torchvision_affine_matrix(
    angle_deg: torch.Tensor, translate: torch.Tensor, scale: torch.Tensor, size: Tuple[int, int]
) -> torch.Tensor:
    """[B, 3, 3] float64: the map that ``torchvision.transforms.functional.affine(img, angle,
    translate, scale, shear=0)`` applies to image content, in our half-pixel coordinates:

        p ↦ c + t + s·R(θ)(p − c),   R(θ) = [[cos θ, −sin θ], [sin θ, cos θ]],   c = (W/2, H/2)

    i.e. positive θ turns the content *clockwise* on screen (torchvision's convention, the
    opposite of :func:`centred_affine_matrix`, of which this is ``centred_affine_matrix(−θ, ...)``).
    angle_deg [B], translate [B, 2] pixels (x, y), scale [B], size (H, W).
    """
    return centred_affine_matrix(-angle_deg.to(torch.float64), scale, translate, size)


def translation_matrix(translate: torch.Tensor) -> torch.Tensor:
    """[B, 3, 3] float64: p ↦ p + t for translate [B, 2] (x, y)."""
    t = translate.to(torch.float64)
    m = torch.eye(3, dtype=torch.float64).repeat(t.shape[0], 1, 1)
    m[:, :2, 2] = t
    return m


def warp_images_grid(
    images: torch.Tensor, M: torch.Tensor, mode: str = "bilinear", padding_mode: str = "zeros"
) -> torch.Tensor:
    """Warp images [B, C, H, W] with M [B, 3, 3] (source → destination, half-pixel coordinates),
    output the input size, like :func:`warp_images` but with the sampling grid built the way
    ``torchvision.transforms.functional.affine`` builds it for tensors (``_gen_affine_grid``):
    output pixel centres in centre-origin coordinates (``linspace(−W/2 + ½, W/2 − ½, W)``), times
    the inverse map, divided by (W/2, H/2), then ``grid_sample(align_corners=False)``.

    Same mathematics as :func:`warp_images` (kornia); the point of this second path is the float
    arithmetic: with ``mode="nearest"`` a sample that falls exactly between two pixels (e.g. a
    shift of half a cell, which PDisco's equivariance loss produces whenever the translation in
    pixels is an odd multiple of half the patch size) rounds the way torchvision's does, so
    PDiscoFormer's / PDiscoNet's ``rigid_transform`` is reproduced bit for bit.
    """
    if images.dim() != 4 or M.shape != (images.shape[0], 3, 3):
        raise ValueError(f"images [B, C, H, W] and M [B, 3, 3] expected, got {tuple(images.shape)}, {tuple(M.shape)}")
    b, _, h, w = images.shape
    dtype = images.dtype if images.is_floating_point() else torch.float32
    centre = translation_matrix(torch.tensor([[w / 2.0, h / 2.0]], dtype=torch.float64)).to(M.device)
    m_inv = torch.linalg.inv(M.to(torch.float64))
    # destination -> source, both with the origin at the image centre
    theta = (torch.linalg.inv(centre) @ m_inv @ centre)[:, :2, :].to(dtype)        # [B, 2, 3]
    xs = torch.linspace(-w * 0.5 + 0.5, w * 0.5 - 0.5, steps=w, device=images.device)
    ys = torch.linspace(-h * 0.5 + 0.5, h * 0.5 - 0.5, steps=h, device=images.device)
    base = torch.empty(1, h, w, 3, dtype=dtype, device=images.device)
    base[..., 0] = xs
    base[..., 1] = ys[:, None]
    base[..., 2] = 1.0
    scale = torch.tensor([0.5 * w, 0.5 * h], dtype=dtype, device=images.device)
    grid = base.view(1, h * w, 3).expand(b, -1, -1).bmm(theta.transpose(1, 2) / scale)
    out = torch.nn.functional.grid_sample(images.to(dtype), grid.view(b, h, w, 2), mode=mode,
                                          padding_mode=padding_mode, align_corners=False)
    return out.to(images.dtype) if images.is_floating_point() else out


class RigidWarp:
    """One rotation + isotropic scale + translation about the image centre, shared by a whole
    batch: PDiscoNet's / PDiscoFormer's equivariance warp (``utils/data_utils/
    reversible_affine_transform.py``: ``generate_affine_trans_params``, ``rigid_transform``).

    ``angle`` in degrees, torchvision convention (positive = clockwise on screen, see
    :func:`torchvision_affine_matrix`); ``translate`` (t_x, t_y) in pixels of the warped images;
    ``scale`` > 1 enlarges the content.
    """

    def __init__(self, angle: float, translate: Tuple[float, float], scale: float):
        self.angle = float(angle)
        self.translate = (float(translate[0]), float(translate[1]))
        self.scale = float(scale)

    def __repr__(self) -> str:
        return f"RigidWarp(angle={self.angle}, translate={self.translate}, scale={self.scale})"

    @classmethod
    def sample(
        cls,
        image_size: Tuple[int, int],
        degrees: float = 90.0,
        translate: Tuple[float, float] = (0.11, 0.11),
        scale: Tuple[float, float] = (0.8, 1.4),
        translate_pixels: Optional[float] = None,
        generator: Optional[torch.Generator] = None,
    ) -> "RigidWarp":
        """Draw one warp, as ``generate_affine_trans_params`` does (four scalar draws, in this
        order): θ ~ U(−degrees, degrees); t_x = round(U(−a, a)) with a = translate[0]·H and
        t_y = round(U(−b, b)) with b = translate[1]·W (their ``img_size[0]`` is the height, so for
        non-square images the axes are swapped; Python's round, half to even); s ~ U(scale).

        ``translate_pixels=P`` instead draws t = floor(U(−P, P)) per axis (the original PDiscoNet,
        ``train.py`` ``equiv_loss``: ``floor(rand·100 − 50)``, P = 50, whatever the image size).
        With the same generator state as their global RNG, the values are theirs.
        """
        h, w = int(image_size[0]), int(image_size[1])

        def uniform(lo: float, hi: float) -> float:
            return float(torch.empty(1).uniform_(float(lo), float(hi), generator=generator).item())

        angle = uniform(-degrees, degrees)
        if translate_pixels is not None:
            tx = math.floor(uniform(-translate_pixels, translate_pixels))
            ty = math.floor(uniform(-translate_pixels, translate_pixels))
        else:
            tx = int(round(uniform(-translate[0] * h, translate[0] * h)))
            ty = int(round(uniform(-translate[1] * w, translate[1] * w)))
        s = uniform(scale[0], scale[1])
        return cls(angle, (tx, ty), s)

    def matrix(self, size: Tuple[int, int], batch_size: int = 1) -> torch.Tensor:
        """[B, 3, 3] float64 forward matrix for images of ``size`` (H, W)."""
        b = int(batch_size)
        return torchvision_affine_matrix(torch.full((b,), self.angle, dtype=torch.float64),
                                         torch.tensor([self.translate] * b, dtype=torch.float64),
                                         torch.full((b,), self.scale, dtype=torch.float64), size)

    def warp(self, images: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
        """images [B, C, H, W] -> warped [B, C, H, W], zero padding (their forward
        ``rigid_transform(..., invert=False)``: one bilinear torchvision ``affine``)."""
        m = self.matrix(tuple(images.shape[-2:]), images.shape[0]).to(images.device)
        return warp_images_grid(images, m, mode=mode)

    def unwarp_maps(self, maps: torch.Tensor, image_width: int, mode: str = "nearest") -> torch.Tensor:
        """Undo the warp on maps [B, C, h, w] computed from the warped images (their
        ``rigid_transform(..., invert=True)``). As theirs, in two resamplings, both
        nearest-neighbour (torchvision's default interpolation, which their inverse does not
        override): first a translation by −t·w/W (both components scaled by the *width* ratio of
        map to image), then a rotation by −θ with scale 1/s about the map centre. Two nearest
        steps are not one step with the composed matrix.
        """
        b, _, h, w = maps.shape
        ratio = w / float(image_width)
        t = torch.tensor([[-self.translate[0] * ratio, -self.translate[1] * ratio]] * b, dtype=torch.float64)
        out = warp_images_grid(maps, translation_matrix(t).to(maps.device), mode=mode)
        rot = torchvision_affine_matrix(torch.full((b,), -self.angle, dtype=torch.float64),
                                        torch.zeros(b, 2, dtype=torch.float64),
                                        torch.full((b,), 1.0 / self.scale, dtype=torch.float64), (h, w))
        return warp_images_grid(out, rot.to(maps.device), mode=mode)


# ------------------------------------------------------------------ one random view per image
def random_affine_views(images: torch.Tensor, flip_p: float, degrees: float,
                        translate: Tuple[float, float], scale: Tuple[float, float],
                        mode: str = "nearest",
                        generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """One randomly flipped and warped view of each image, with torchvision's ``RandomAffine``
    draws (uniform: angle in ±``degrees``, translation in ±``translate`` x size per axis rounded to
    whole pixels, scale in ``scale``; no shear) about the image centre, sampled with ``mode``
    (``nearest`` as the MPAE / PDiscoFormer data pipelines ask torchvision for) and zero fill
    (black in the [0, 1] image). ``images [B, C, H, W]`` -> same shape. Draws (CPU, in this
    order): flip ``[B]``, angle ``[B]``, ``t_x [B]``, ``t_y [B]``, scale ``[B]``."""
    B, _, H, W = images.shape

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(B, generator=generator, dtype=torch.float64)

    flip = torch.rand(B, generator=generator) < flip_p
    angle = uniform(-degrees, degrees)
    tx = uniform(-translate[0] * W, translate[0] * W).round()
    ty = uniform(-translate[1] * H, translate[1] * H).round()
    s = uniform(scale[0], scale[1])
    M = centred_affine_matrix(angle, s, torch.stack([tx, ty], dim=1), (H, W)) @ flip_matrix(flip, W)
    return warp_images(images, M.to(images.device), mode=mode, padding_mode="zeros")
