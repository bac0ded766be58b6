"""MPAE: Masked Part AutoEncoder (Xia, Wu, Huang, Zhang, Zhang, "Unsupervised Part Discovery via
Descriptor-Based Masked Image Restoration with Optimized Constraints", ICCV 2025), re-implemented
from the facts of the authors' code (github.com/Jiahao-UTS/MPAE).

- :mod:`.config`: ``MPAEConfig`` (CUB defaults) and ``published_config(dataset)``;
- :mod:`.model`: ``MPAEModel`` (``forward`` for training, ``predict`` for soft part maps);
- :mod:`.decoder`: ``MaskedPartDecoder`` (restoration from 10% of the patches + part features);
- :mod:`.losses`: the loss terms as pure functions and ``MPAEObjective``;
- :mod:`.convert`: the authors' checkpoints -> ``MPAEModel`` state dicts;
- :func:`param_groups`: what the optimiser trains.
"""
from .config import MPAEConfig, published_config
from .model import MPAEModel, build_model

__all__ = ["MPAEConfig", "published_config", "MPAEModel", "build_model", "param_groups",
           "build_optimizer", "build_lr_scheduler"]


def param_groups(model, cfg=None):
    """One group: every trainable parameter, ``lr = cfg.optim.lr`` (5e-4), no weight decay, no
    multipliers (``utils/Optimizer.py`` ``get_optimizer``: ``Adam(model.parameters(), lr)``; the
    frozen DINOv2 has no gradients)."""
    cfg = cfg if cfg is not None else MPAEConfig()
    return [{"params": [p for p in model.parameters() if p.requires_grad],
             "lr": float(cfg.optim.lr), "weight_decay": float(cfg.optim.weight_decay)}]


def build_optimizer(model, cfg=None):
    """``torch.optim.Adam`` as the authors' (betas 0.9 / 0.999, eps 1e-8, no weight decay)."""
    import torch

    cfg = cfg if cfg is not None else MPAEConfig()
    if cfg.optim.optimizer != "adam":
        raise ValueError(f"mpae.optim.optimizer: only 'adam' (the authors') is implemented, "
                         f"got {cfg.optim.optimizer!r}")
    return torch.optim.Adam(param_groups(model, cfg), lr=cfg.optim.lr,
                            betas=tuple(cfg.optim.betas), eps=cfg.optim.eps)


def build_lr_scheduler(optimizer, cfg=None):
    """``MultiStepLR(milestones, gamma=0.2)``, stepped once per *epoch* (``train.py``)."""
    import torch

    cfg = cfg if cfg is not None else MPAEConfig()
    return torch.optim.lr_scheduler.MultiStepLR(optimizer, list(cfg.optim.lr_milestones),
                                                cfg.optim.lr_gamma)
