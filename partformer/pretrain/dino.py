"""DINO self-distillation (Caron et al., ICCV 2021) with a dense, correspondence-based term.

- **Global term** (DINO): a student sees every crop, an EMA teacher sees the global crops; the
  student's distribution over ``out_dim`` prototypes for one crop is pulled towards the teacher's
  (centred, sharpened) distribution for each *other* global crop of the same image.
- **Dense term** (per feature cell): the same distillation between feature *cells* that see the
  same source point in two crops. The crop geometry is known (``crops.corresponding_points``), so
  the teacher's per-cell distribution of a global crop is sampled at the position of each student
  cell; cells that fall outside the teacher's crop are ignored. This is the dense self-distillation
  of the Leopart / DenseDINO family, with DINO's centring against collapse instead of Sinkhorn.
  It trains exactly the thing PartFormer uses: a feature *map* whose cells cluster by part.

Shapes: features ``[B, C, h, w]``; head outputs ``[B, P]`` (global) or ``[B, P, h, w]`` (dense).
"""
from __future__ import annotations

from typing import Dict, List, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from partformer.engine import distributed as D

__all__ = ["ProjectionHead", "DinoLoss", "DenseDinoLoss", "DENSE_TARGETS", "sinkhorn",
           "ema_update"]


class ProjectionHead(nn.Module):
    """DINO head: MLP (``in -> hidden (x num_layers - 1) -> bottleneck``, GELU), L2
    normalisation, then a weight-normalised linear layer without bias onto ``out_dim`` prototypes
    (its norm fixed to 1).

    Works on vectors ``[N, in]`` and on maps ``[B, in, h, w]`` (applied per cell)."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 512, bottleneck_dim: int = 128,
                 num_layers: int = 3):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"num_layers must be >= 1, got {num_layers}")
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [bottleneck_dim]
        layers: list = []
        for i in range(num_layers):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < num_layers - 1:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
        self.prototypes = nn.utils.parametrizations.weight_norm(
            nn.Linear(bottleneck_dim, out_dim, bias=False))
        self.prototypes.parametrizations.weight.original0.data.fill_(1.0)
        self.prototypes.parametrizations.weight.original0.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 4:
            B, C, h, w = x.shape
            y = self.forward(x.permute(0, 2, 3, 1).reshape(-1, C))
            return y.view(B, h, w, -1).permute(0, 3, 1, 2)
        z = F.normalize(self.mlp(x), dim=-1)
        return self.prototypes(z)


class _Centred(nn.Module):
    """Teacher centring: ``softmax((t - c) / tau)``, ``c`` an EMA of the teacher's mean output."""

    def __init__(self, out_dim: int, center_momentum: float = 0.9):
        super().__init__()
        self.center_momentum = center_momentum
        self.register_buffer("center", torch.zeros(1, out_dim))

    def teacher_probs(self, t: torch.Tensor, temp: float, dim: int = -1) -> torch.Tensor:
        c = self.center if dim == -1 else self.center.view(1, -1, 1, 1)
        return F.softmax((t - c) / temp, dim=dim)

    @torch.no_grad()
    def update_center(self, t: torch.Tensor, dim: int = -1) -> None:
        """``t``: teacher outputs; the mean over every axis but ``dim`` (and over ranks)."""
        flat = t.movedim(dim, -1).reshape(-1, t.shape[dim]).float()
        total = torch.cat([flat.sum(0), flat.new_tensor([flat.shape[0]])])
        total = D.all_reduce_sum(total)
        mean = total[:-1] / total[-1].clamp(min=1)
        self.center.mul_(self.center_momentum).add_(mean[None], alpha=1 - self.center_momentum)


class DinoLoss(_Centred):
    """Global DINO loss. ``student [n_crops * B, P]`` (global crops first, then local),
    ``teacher [n_global * B, P]``; cross-entropy between every teacher global crop and every
    student crop except the same one, averaged over pairs."""

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9):
        super().__init__(out_dim, center_momentum)
        self.student_temp = student_temp

    def forward(self, student: torch.Tensor, teacher: torch.Tensor, n_global: int,
                teacher_temp: float) -> torch.Tensor:
        B = teacher.shape[0] // n_global
        s = F.log_softmax(student.float() / self.student_temp, dim=-1).split(B)
        t = self.teacher_probs(teacher.float(), teacher_temp).detach().split(B)
        total, pairs = 0.0, 0
        for i, ti in enumerate(t):
            for j, sj in enumerate(s):
                if i == j:
                    continue
                total = total + (-(ti * sj).sum(dim=-1)).mean()
                pairs += 1
        self.update_center(teacher)
        return total / pairs


class DenseDinoLoss(_Centred):
    """Dense DINO loss between corresponding feature cells of two crops.

    Teacher targets (``targets``): ``"center"`` -- DINO's centring and sharpening per cell;
    ``"image_center"`` -- the same after subtracting each teacher map's own mean logits over its
    cells, so that what a whole image shares (its colours, background, identity) cannot be a
    target: the targets have to tell the cells of one image apart;
    ``"sinkhorn"`` -- SwAV's / Leopart's balanced assignment: the teacher's cells of the whole
    batch (both global crops, every rank) are spread evenly over the prototypes by
    ``sinkhorn_iters`` Sinkhorn-Knopp normalisations of ``exp(logits / sinkhorn_eps)``. With few
    prototypes and an even spread, a prototype cannot belong to one image: it has to be a
    concept that recurs across images.

    ``forward(student_maps, teacher_maps, grids, valids, teacher_temp)``: for each (student crop,
    teacher global crop) pair, ``student_maps[i] [B, P, h, w]`` logits, the teacher's logits
    ``teacher_maps[j] [B, P, h', w']`` are turned into centred, sharpened probabilities, sampled
    (bilinear) at ``grids[(i, j)] [B, h, w, 2]``, and compared with the student's log-probabilities
    on the cells where ``valids[(i, j)]`` is true; the mean over valid cells, then over pairs.
    """

    def __init__(self, out_dim: int, student_temp: float = 0.1, center_momentum: float = 0.9,
                 targets: str = "center", sinkhorn_eps: float = 0.05, sinkhorn_iters: int = 3):
        super().__init__(out_dim, center_momentum)
        if targets not in DENSE_TARGETS:
            raise ValueError(f"dense targets must be one of {DENSE_TARGETS}, got {targets!r}")
        self.student_temp = student_temp
        self.targets = targets
        self.sinkhorn_eps = sinkhorn_eps
        self.sinkhorn_iters = sinkhorn_iters

    def target_probs(self, teacher_maps: Sequence[torch.Tensor], teacher_temp: float
                     ) -> List[torch.Tensor]:
        """Per-cell target distributions ``[B, P, h, w]`` of each teacher map (the float logits
        of ``_centred_maps``)."""
        if self.targets in ("center", "image_center"):
            return [self.teacher_probs(t, teacher_temp, dim=1).detach() for t in teacher_maps]
        flat = torch.cat([t.permute(0, 2, 3, 1).reshape(-1, t.shape[1])
                          for t in teacher_maps])                               # [N, P]
        q = sinkhorn(flat.detach(), self.sinkhorn_eps, self.sinkhorn_iters)
        out, start = [], 0
        for t in teacher_maps:
            B, P, h, w = t.shape
            out.append(q[start:start + B * h * w].view(B, h, w, P).permute(0, 3, 1, 2))
            start += B * h * w
        return out

    def _centred_maps(self, teacher_maps: Sequence[torch.Tensor]) -> List[torch.Tensor]:
        maps = [t.float() for t in teacher_maps]
        if self.targets == "image_center":
            maps = [t - t.mean(dim=(2, 3), keepdim=True) for t in maps]
        return maps

    def forward(self, student_maps: Sequence[torch.Tensor], teacher_maps: Sequence[torch.Tensor],
                grids: Dict, valids: Dict, teacher_temp: float) -> torch.Tensor:
        teacher_maps = self._centred_maps(teacher_maps)
        probs = self.target_probs(teacher_maps, teacher_temp)
        losses: List[torch.Tensor] = []
        for (i, j), grid in grids.items():
            valid = valids[(i, j)]
            if not bool(valid.any()):
                continue
            target = F.grid_sample(probs[j], grid.to(probs[j]), mode="bilinear",
                                   padding_mode="border", align_corners=False)   # [B, P, h, w]
            logp = F.log_softmax(student_maps[i].float() / self.student_temp, dim=1)
            ce = -(target * logp).sum(dim=1)                                     # [B, h, w]
            losses.append(ce[valid].mean())
        self.update_center(torch.cat([t.flatten(2) for t in teacher_maps], dim=2), dim=1)
        if not losses:
            return student_maps[0].sum() * 0.0
        return torch.stack(losses).mean()


DENSE_TARGETS = ("center", "image_center", "sinkhorn")


@torch.no_grad()
def sinkhorn(logits: torch.Tensor, eps: float = 0.05, iters: int = 3) -> torch.Tensor:
    """Balanced soft assignment (Sinkhorn-Knopp, as in SwAV): ``logits [N, P]`` of N samples (on
    this rank; sums run over every rank) -> ``[N, P]`` whose rows are distributions and whose
    columns have (nearly) equal mass."""
    # a per-sample shift is absorbed by the sample normalisation (Sinkhorn's fixed point is unique
    # up to diagonal scalings), and keeps exp() from underflowing to an all-zero row
    q = torch.exp((logits - logits.max(dim=1, keepdim=True).values) / eps).t()   # [P, N]
    n = D.all_reduce_sum(torch.tensor(float(q.shape[1]), device=q.device))
    P = q.shape[0]
    q /= D.all_reduce_sum(q.sum()).clamp(min=1e-30)
    for _ in range(iters):
        q /= D.all_reduce_sum(q.sum(dim=1, keepdim=True)).clamp(min=1e-30)
        q /= P
        q /= q.sum(dim=0, keepdim=True).clamp(min=1e-30)
        q /= n
    return (q * n).t()


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """``teacher <- momentum * teacher + (1 - momentum) * student`` for every parameter."""
    for pt, ps in zip(teacher.parameters(), student.parameters()):
        pt.mul_(momentum).add_(ps.detach(), alpha=1 - momentum)
