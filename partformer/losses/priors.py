"""Part-map priors of PDiscoNet (ICCV 2023) and PDiscoFormer (ECCV 2024): pure functions on
tensors plus thin modules. MPAE (ICCV 2025) reuses the TV, presence and entropy priors.

Shapes: ``maps [B, K+1, h, w]``, softmax (or Gumbel-softmax) over the K+1 channels, background
LAST. Row index i runs over h, column index j over w, both 0-based cell indices.

Sources (ananthu-aniraj/pdiscoformer @ f039c15, ``engine/losses/``; robertdvdk/part_detection
@ eec53f2 ``train.py`` for the original PDiscoNet):

====================================  ===============================================  =========
function                              their code                                        weight*
====================================  ===============================================  =========
:func:`total_variation_loss`          total_variation.py ``TotalVariationLoss``         1
:func:`pixel_entropy_loss`            pixel_wise_entropy_loss.py                        1
:func:`part_presence_loss`            presence_loss.py ``PresenceLoss`` (fg maps)       1
:func:`background_presence_loss`      enforced_presence_loss.py ``EnforcedPresenceLoss``  2
:func:`orthogonality_loss`            orthogonality_loss.py                             1
:func:`equivariance_loss`             equivarance_loss.py (warp: ``augment.RigidWarp``)  1
:func:`pdisco_concentration_loss`     concentration_loss.py ``ConcentrationLoss``       0 / 1000
====================================  ===============================================  =========

(*) PDiscoFormer's CUB command (training_instructions.md); concentration 1000 for PDiscoNet.

Differences from their modules, on purpose: nothing is cached from the first batch.
``TotalVariationLoss`` there stores its normaliser B·h·w on the first call and keeps dividing by
it (a later batch of another size is mis-normalised); ``ConcentrationLoss`` and
``EnforcedPresenceLoss`` store their coordinate grids / border mask (a later map of another size
raises or is wrong). The functions here compute them per call; :class:`TotalVariationLoss` keeps
the cached normaliser as an option (``cache_normaliser=True``) for bit-level reproduction.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = [
    "total_variation_loss", "TotalVariationLoss", "pixel_entropy_loss", "part_presence_loss",
    "PRESENCE_VARIANTS", "background_presence_loss", "BACKGROUND_PRESENCE_VARIANTS",
    "border_mask", "orthogonality_loss", "equivariance_loss", "pdisco_concentration_loss",
]

PRESENCE_VARIANTS = ("original", "soft_constraint", "tanh", "soft_tanh")
BACKGROUND_PRESENCE_VARIANTS = ("enforced_presence", "log", "linear", "mse")


def _check_maps(maps: torch.Tensor, name: str = "maps") -> None:
    if maps.dim() != 4:
        raise ValueError(f"{name} must be [B, C, h, w], got {tuple(maps.shape)}")


# ----------------------------------------------------------------------------- total variation
def total_variation_loss(maps: torch.Tensor, normaliser: Optional[float] = None) -> torch.Tensor:
    """Anisotropic total variation of the maps, all channels (background included).

        L = Σ_b Σ_c [ Σ_{i,j} |A(i+1, j) − A(i, j)| + Σ_{i,j} |A(i, j+1) − A(i, j)| ] / N

    maps: [B, C, h, w]. normaliser: N; None = B·h·w of this batch (their ``reduction="mean"``:
    ``num_elements = B·H·W``, not ×C). Returns a scalar.
    """
    _check_maps(maps)
    b, _, h, w = maps.shape
    rows = (maps[..., 1:, :] - maps[..., :-1, :]).abs().sum(dim=(1, 2, 3))   # [B]
    cols = (maps[..., :, 1:] - maps[..., :, :-1]).abs().sum(dim=(1, 2, 3))   # [B]
    n = float(b * h * w) if normaliser is None else float(normaliser)
    return (rows + cols).sum() / n


class TotalVariationLoss(nn.Module):
    """:func:`total_variation_loss` as a module.

    cache_normaliser: False (default) normalises every batch by its own B·h·w. True reproduces
    PDiscoFormer's ``TotalVariationLoss``: B·h·w of the FIRST batch seen is stored and used for
    every later batch (call :meth:`reset` to forget it).
    """

    def __init__(self, cache_normaliser: bool = False):
        super().__init__()
        self.cache_normaliser = bool(cache_normaliser)
        self.cached: Optional[float] = None

    def reset(self) -> None:
        self.cached = None

    def forward(self, maps: torch.Tensor) -> torch.Tensor:
        if not self.cache_normaliser:
            return total_variation_loss(maps)
        if self.cached is None:
            self.cached = float(maps.shape[0] * maps.shape[2] * maps.shape[3])
        return total_variation_loss(maps, normaliser=self.cached)


# --------------------------------------------------------------------------------- entropy
def pixel_entropy_loss(maps: torch.Tensor) -> torch.Tensor:
    """Mean over the B·h·w cells of the entropy of the per-cell distribution over the C maps.

        p = A / Σ_c A,   H = −Σ_c p · log(clamp(p, ε, 1 − ε)),   ε = finfo(dtype).eps

    exactly what ``torch.distributions.Categorical(probs=...).entropy()`` computes (their
    ``pixel_wise_entropy_loss``), including the renormalisation and the clamp.
    maps: [B, C, h, w]. Returns a scalar.
    """
    _check_maps(maps)
    p = maps.permute(0, 2, 3, 1)
    p = p / p.sum(-1, keepdim=True)
    eps = torch.finfo(p.dtype).eps
    logp = p.clamp(min=eps, max=1 - eps).log()
    return (-(logp * p).sum(-1)).mean()


# -------------------------------------------------------------------------------- presence
def part_presence_loss(maps: torch.Tensor, variant: str = "original", beta: float = 0.1,
                       kernel: int = 3, crop: int = 0) -> torch.Tensor:
    """Every part must be strongly present somewhere in the batch.

    maps: [B, P, h, w], the maps to test (PDiscoFormer passes the K foreground maps
    ``maps[:, :-1]``; the original PDiscoNet all K+1 with ``crop=2``).
    Per map: 3×3 average pooling (stride 1, no padding) after dropping ``crop`` cells at every
    border, then the spatial maximum m_bp [B, P]; then

    - ``original``: 1 − mean_p max_b m_bp
    - ``soft_constraint``: mean_p (1 − M_p)((1 − β)·sg(M_p) + β),  M_p = max_b m_bp
    - ``tanh``: mean_p −log tanh(Σ_b m_bp)  (PIP-Net; BCE against 1, log clamped at −100)
    - ``soft_tanh``: mean_p 1 − tanh(Σ_b m_bp)

    The maximum over the batch makes it a batch-level constraint: a part absent from every image
    of a batch is penalised, one absent from some images is not. Returns a scalar.
    """
    _check_maps(maps)
    if variant not in PRESENCE_VARIANTS:
        raise ValueError(f"presence variant must be one of {PRESENCE_VARIANTS}, got {variant!r}")
    if crop:
        maps = maps[..., crop:-crop, crop:-crop]
    peak = F.adaptive_max_pool2d(F.avg_pool2d(maps, kernel, stride=1), 1).flatten(start_dim=1)  # [B, P]
    if variant == "original":
        return 1 - peak.max(dim=0)[0].mean()
    if variant == "soft_constraint":
        m = peak.max(dim=0)[0]
        return ((1 - m) * ((1 - beta) * m.detach() + beta)).mean()
    t = torch.tanh(peak.sum(dim=0))
    if variant == "tanh":
        return F.binary_cross_entropy(t.float(), torch.ones_like(t, dtype=torch.float32))
    return (1 - t).mean()


def border_mask(h: int, w: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """[h, w] squared distance from the map centre, 0 at the centre, 1 in the corners:
    r(i, j) = y_i² + x_j² divided by its maximum, y_i = 2i/(h−1) − 1, x_j = 2j/(w−1) − 1
    (their ``EnforcedPresenceLoss`` mask, on the pooled grid). Needs h, w >= 2."""
    if h < 2 or w < 2:
        raise ValueError(f"the border mask needs a grid of at least 2x2, got {h}x{w} "
                         "(background presence pools 3x3 first: maps must be >= 4x4)")
    y = torch.arange(h, device=device, dtype=dtype)
    x = torch.arange(w, device=device, dtype=dtype)
    y = y / y.max() * 2 - 1
    x = x / x.max() * 2 - 1
    r = y[:, None] ** 2 + x[None, :] ** 2
    return r / r.max()


def background_presence_loss(maps: torch.Tensor, variant: str = "enforced_presence",
                             kernel: int = 3) -> torch.Tensor:
    """The background (last channel) must be present in every image.

    maps: [B, K+1, h, w]. With b = maps[:, −1]:

    - ``enforced_presence`` (PDiscoFormer's default): a = avgpool_{3×3, stride 1}(b) · r with r the
      :func:`border_mask` of the pooled grid (0 at the centre, 1 in the corners);
      L = mean_b −log max_{i,j} a  (BCE against 1). The background must reach high values near
      the border, the corners counting most.
    - ``log``: L = mean_b −log mean_{i,j} b;  ``linear``: mean_b (1 − mean b);
      ``mse``: mean_b (1 − mean b)².

    The logs are BCE's, clamped at −100. Returns a scalar (float32).
    """
    _check_maps(maps)
    if variant not in BACKGROUND_PRESENCE_VARIANTS:
        raise ValueError(f"background presence variant must be one of "
                         f"{BACKGROUND_PRESENCE_VARIANTS}, got {variant!r}")
    if variant == "enforced_presence":
        pooled = F.avg_pool2d(maps[:, -1:], kernel, stride=1)[:, 0]                # [B, h', w']
        mask = border_mask(pooled.shape[-2], pooled.shape[-1], pooled.device, pooled.dtype)
        peak = (pooled * mask).flatten(1).max(dim=1)[0]                             # [B]
        return F.binary_cross_entropy(peak.float(), torch.ones_like(peak, dtype=torch.float32))
    mean_bg = maps[:, -1].mean(dim=(1, 2))                                           # [B]
    if variant == "log":
        return F.binary_cross_entropy(mean_bg.float(), torch.ones_like(mean_bg, dtype=torch.float32))
    if variant == "linear":
        return (1 - mean_bg).mean()
    return F.mse_loss(mean_bg, torch.ones_like(mean_bg))


# --------------------------------------------------------------------------- orthogonality
def orthogonality_loss(features: torch.Tensor) -> torch.Tensor:
    """Mean squared off-identity cosine similarity between the part features of each image.

    features: [B, D, P] (P = K+1 part vectors, background included, as in both codebases).
    L = mean_{b,p,q} (cos(f_bp, f_bq) − δ_pq)², i.e. divided by B·P² (diagonal included, which is
    ≈ 0). Returns a scalar.
    """
    if features.dim() != 3:
        raise ValueError(f"features must be [B, D, P], got {tuple(features.shape)}")
    f = F.normalize(features, dim=1)
    sim = torch.matmul(f.transpose(1, 2), f)                                       # [B, P, P]
    eye = torch.eye(features.shape[-1], device=features.device, dtype=sim.dtype)
    return torch.mean(torch.square(sim - eye))


# ----------------------------------------------------------------------------- equivariance
def equivariance_loss(maps: torch.Tensor, maps_back: torch.Tensor,
                      num_fg: Optional[int] = None) -> torch.Tensor:
    """1 − mean over (image, foreground part) of the cosine similarity of the flattened maps.

    maps: [B, K+1, h, w] of the images; maps_back: [B, K+1, h, w] of the warped images, warped
    back (:meth:`partformer.augment.RigidWarp.unwarp_maps`; cells that came from outside the
    warped image are 0). num_fg: K (default C − 1; the background channel is not compared).
    Cosine similarity as ``torch.nn.functional.cosine_similarity`` (eps 1e-8). Returns a scalar.
    """
    _check_maps(maps)
    if maps_back.shape != maps.shape:
        raise ValueError(f"maps_back {tuple(maps_back.shape)} must match maps {tuple(maps.shape)}")
    k = maps.shape[1] - 1 if num_fg is None else int(num_fg)
    a = maps[:, :k].reshape(maps.shape[0], k, -1)
    b = maps_back[:, :k].reshape(maps.shape[0], k, -1)
    return 1 - torch.mean(F.cosine_similarity(a, b, dim=-1))


# ---------------------------------------------------------------------------- concentration
def pdisco_concentration_loss(maps: torch.Tensor) -> torch.Tensor:
    """PDiscoNet's concentration loss: mean soft spatial spread of the foreground maps.

        ī_k = Σ_ij i·A_k(i, j) / sg(Σ_ij A_k),   j̄_k likewise (centroids in cell indices)
        L = mean_{b, k<K, i, j} A_k(i, j) · [((ī_k − i)/w)² + ((j̄_k − j)/h)²]

    maps: [B, K+1, h, w]; the mean runs over B·K·h·w (background excluded). As in both
    codebases the mass in the centroid's denominator is detached (sg), and the row offset is
    divided by the map *width* and the column offset by the *height* (their ``grid_x`` holds row
    indices); for square maps that is the usual normalisation. Differs from
    :func:`partformer.losses.concentration_loss` (PartFormer's: ε, no detach, sum over parts).
    Returns a scalar.
    """
    _check_maps(maps)
    _, _, h, w = maps.shape
    rows = torch.arange(h, device=maps.device).view(1, 1, h, 1)
    cols = torch.arange(w, device=maps.device).view(1, 1, 1, w)
    mass = maps.sum(3).sum(2).detach()                                             # [B, C]
    r_bar = (rows * maps).sum(3).sum(2) / mass
    c_bar = (cols * maps).sum(3).sum(2) / mass
    spread = ((r_bar[..., None, None] - rows) / w) ** 2 + ((c_bar[..., None, None] - cols) / h) ** 2
    return (spread * maps)[:, :-1].mean()
