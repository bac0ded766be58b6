"""PartFormer (Xia et al., "Unsupervised Part Discovery via Dual Representation Alignment", TPAMI
2024): the method as the authors' code runs it (docs/METHOD.md, docs/differences.md)."""
from .config import LOSS_WEIGHTS, PartFormerConfig
from .criterion import DEFAULT_LOSS_WEIGHTS, PartFormerCriterion, PartFormerObjective
from .method import PartFormer
from .model import PartFormerModel

__all__ = ["PartFormer", "PartFormerConfig", "PartFormerModel", "PartFormerCriterion",
           "PartFormerObjective", "LOSS_WEIGHTS", "DEFAULT_LOSS_WEIGHTS"]
