"""Optimisation shared by training and pretraining: parameter groups with learning-rate and
weight-decay multipliers, the optimiser, one learning-rate schedule, and the seeding rule.

- A method's :meth:`~partformer.methods.base.Method.param_groups` lists
  :class:`~partformer.methods.base.ParamGroup` s; group ``g`` gets ``lr = train.lr * g.lr_mult``
  and ``weight_decay = train.weight_decay * g.wd_mult`` (PDiscoFormer's layer-name groups with LR
  factors, DINO's no-decay group for biases and norms: :func:`no_decay_groups`).
- The schedule is a multiplier of every group's learning rate, a pure function of the optimiser
  step (resume-safe): warm-up, then ``multistep`` / ``step`` (epochs) / ``cosine`` / ``constant``.
  ``train.scheduler.min_lr`` is an absolute learning rate (as in DINO and timm): the cosine ends at
  ``min_lr`` for the base group and at ``lr_mult * min_lr`` for a group with a multiplier.
"""
from __future__ import annotations

import math
import random
from typing import Callable, List, Sequence

import numpy as np
import torch
import torch.nn as nn

from partformer import config as cfglib
from partformer.methods.base import ParamGroup


def seed_everything(seed: int) -> None:
    """Python, NumPy and torch's global generators from one seed (the data order and the
    augmentations use their own generators, derived from the seed and the step)."""
    random.seed(seed)
    np.random.seed(seed % (2 ** 32))
    torch.manual_seed(seed)


def no_decay_groups(model: nn.Module, lr_mult: float = 1.0) -> List[ParamGroup]:
    """The trainable parameters of ``model`` in two groups: weights, and biases / norms / tokens
    (``ndim <= 1`` or a ``.bias``) without weight decay (DINO's rule)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 or name.endswith(".bias") else decay).append(p)
    return [ParamGroup("decay", decay, lr_mult=lr_mult),
            ParamGroup("no_decay", no_decay, lr_mult=lr_mult, wd_mult=0.0)]


def torch_param_groups(groups: Sequence[ParamGroup], lr: float, weight_decay: float) -> List[dict]:
    """``torch.optim`` parameter-group dicts; empty groups are dropped, a parameter in two groups
    is an error."""
    seen = set()
    out = []
    for g in groups:
        for p in g.params:
            if id(p) in seen:
                raise ValueError(f"parameter group {g.name!r} repeats a parameter of an earlier "
                                 "group")
            seen.add(id(p))
        if g.params:
            out.append({"params": list(g.params), "lr": lr * g.lr_mult,
                        "weight_decay": weight_decay * g.wd_mult, "name": g.name,
                        "wd_mult": g.wd_mult})
    if not out:
        raise ValueError("the method has no trainable parameter")
    return out


def build_optimizer(train_cfg, groups: Sequence[ParamGroup]) -> torch.optim.Optimizer:
    """``train.optimizer`` (adamw | adam | sgd) over ``groups`` with ``train.lr``,
    ``train.betas``, ``train.momentum`` and ``train.weight_decay`` scaled per group."""
    params = torch_param_groups(groups, train_cfg.lr, train_cfg.weight_decay)
    name = train_cfg.optimizer
    if name == "adamw":
        return torch.optim.AdamW(params, lr=train_cfg.lr, betas=tuple(train_cfg.betas),
                                 weight_decay=train_cfg.weight_decay)
    if name == "adam":
        return torch.optim.Adam(params, lr=train_cfg.lr, betas=tuple(train_cfg.betas),
                                weight_decay=train_cfg.weight_decay)
    if name == "sgd":
        return torch.optim.SGD(params, lr=train_cfg.lr, momentum=train_cfg.momentum,
                               weight_decay=train_cfg.weight_decay)
    raise cfglib.ConfigError(f"train.optimizer must be one of {list(cfglib.OPTIMIZERS)}, "
                             f"got {name!r}")


def cosine(start: float, end: float, step: int, total: int) -> float:
    """Cosine from ``start`` (step 0) to ``end`` (step ``total`` and after)."""
    if total <= 0:
        return end
    t = min(max(step / total, 0.0), 1.0)
    return end + (start - end) * 0.5 * (1 + math.cos(math.pi * t))


def lr_factor(sched, lr: float, steps_per_epoch: int, total_steps: int) -> Callable[[int], float]:
    """The learning-rate multiplier of optimiser step ``step`` (the ``train.scheduler`` section;
    ``lr`` the base learning rate, which ``min_lr`` is relative to). Milestones and step sizes are
    in epochs, as the papers' schedules."""
    warmup = int(round(sched.warmup_epochs * steps_per_epoch))
    milestones = [m * steps_per_epoch for m in sched.milestones]
    step_size = max(1, int(sched.step_size) * steps_per_epoch)
    floor = sched.min_lr / lr

    def fn(step: int) -> float:
        if warmup and step < warmup:
            return (step + 1) / warmup
        if sched.name == "multistep":
            return sched.gamma ** sum(step >= m for m in milestones)
        if sched.name == "step":
            return sched.gamma ** (step // step_size)
        if sched.name == "cosine":
            return cosine(1.0, floor, step - warmup, max(1, total_steps - warmup))
        if sched.name == "constant":
            return 1.0
        raise cfglib.ConfigError(f"train.scheduler.name must be one of "
                                 f"{list(cfglib.SCHEDULERS)}, got {sched.name!r}")

    return fn
