"""ArcFace loss on the part tokens: each foreground token p_k is its own class k
(docs/METHOD.md §1.6).

With t̂, Ŵ the L2-normalised tokens and class vectors, cos θ_nj = <t̂_n, Ŵ_j>, and the standard
additive angular margin (easy_margin = False; Deng et al., CVPR 2019):

    φ = cos(θ + m)          if cos θ > cos(π − m)
      = cos θ − sin(π − m)·m  otherwise (keeps the logit monotone in θ beyond π − m),
    logit_nj = s · (φ_nj if j = y_n else cos θ_nj),
    L = cross-entropy(logits, y), mean over tokens (and batch).

PartFormer: s = 20, m = 0.5, K learnable class vectors (xavier init, owned by the model and
passed in as ``weight``), tokens of both views.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def arcface_logits(
    tokens: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor, s: float = 20.0, m: float = 0.5
) -> torch.Tensor:
    """ArcFace logits.

    tokens: [N, D]; weight: [C, D] class vectors; labels: [N] int64 in [0, C).
    Returns [N, C] float32: s·cos θ, with s·φ(θ) (see module docstring) on each true class.
    """
    if tokens.dim() != 2 or weight.dim() != 2 or tokens.shape[1] != weight.shape[1]:
        raise ValueError(f"tokens [N, D] and weight [C, D] expected, got {tuple(tokens.shape)}, {tuple(weight.shape)}")
    cos = F.normalize(tokens.float(), dim=1) @ F.normalize(weight.float(), dim=1).t()   # [N, C]
    one_hot = F.one_hot(labels.long(), num_classes=weight.shape[0]).to(cos.dtype)
    return arcface_margin_logits(cos, one_hot, s, m)


def arcface_margin_logits(cos: torch.Tensor, one_hot: torch.Tensor, s: float = 20.0,
                          m: float = 0.5) -> torch.Tensor:
    """ArcFace logits from cosines: ``s·(one_hot·φ(θ) + (1 − one_hot)·cos θ)`` (module docstring).

    cos: ``[..., C]`` cosines (clamped to [-1, 1] here); one_hot: same shape (1 on the true class).
    Used by :func:`arcface_logits` and by MPAE, whose class vectors are the part tokens of each
    image (``partformer.methods.mpae.losses.semantic_consistency_loss``).
    """
    cos = cos.clamp(-1.0, 1.0)
    # Clamped away from 0 so that the gradient of the square root stays finite at cos = ±1.
    sin = (1.0 - cos * cos).clamp(min=1e-12).sqrt()
    phi = cos * math.cos(m) - sin * math.sin(m)                                          # cos(θ + m)
    th, mm = math.cos(math.pi - m), math.sin(math.pi - m) * m
    phi = torch.where(cos > th, phi, cos - mm)
    return s * (one_hot * phi + (1.0 - one_hot) * cos)


def arcface_loss(part_tokens: torch.Tensor, weight: torch.Tensor, s: float = 20.0, m: float = 0.5) -> torch.Tensor:
    """Cross-entropy of the ArcFace logits of the foreground tokens, token k labelled k.

    part_tokens: [B, K+1, D] (background last; only the first K = weight.shape[0] are used).
    weight: [K, D] class vectors. Returns a scalar (float32), mean over the B·K tokens.
    """
    if part_tokens.dim() != 3:
        raise ValueError(f"part_tokens must be [B, K+1, D], got {tuple(part_tokens.shape)}")
    b, k = part_tokens.shape[0], weight.shape[0]
    if part_tokens.shape[1] < k:
        raise ValueError(f"{part_tokens.shape[1]} part tokens but {k} ArcFace classes")
    tokens = part_tokens[:, :k].reshape(b * k, -1)
    labels = torch.arange(k, device=part_tokens.device).repeat(b)
    return F.cross_entropy(arcface_logits(tokens, weight, labels, s, m), labels)
