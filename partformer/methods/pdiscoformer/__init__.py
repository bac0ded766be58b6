"""PDiscoFormer (Aniraj et al., ECCV 2024), re-implemented from ananthu-aniraj/pdiscoformer."""
from .config import DATASET_PRESETS, PDiscoFormerConfig, scaled_lr
from .convert import convert_released, read_checkpoint
from .losses import LOSS_KEYS, PDiscoObjective
from .method import PDiscoFormer, PDiscoFormerSection, PDiscoStep
from .model import PDiscoFormerModel

__all__ = ["PDiscoFormer", "PDiscoFormerSection", "PDiscoStep", "DATASET_PRESETS",
           "PDiscoFormerConfig", "scaled_lr", "convert_released", "read_checkpoint", "LOSS_KEYS",
           "PDiscoObjective", "PDiscoFormerModel"]
