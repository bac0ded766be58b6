"""PDiscoFormer (Aniraj et al., ECCV 2024), re-implemented from ananthu-aniraj/pdiscoformer."""
from .config import DATASET_PRESETS, PDiscoFormerConfig, scaled_lr
from .convert import convert_state_dict, load_official, read_checkpoint
from .losses import LOSS_KEYS, PDiscoObjective
from .model import PDiscoFormerModel

__all__ = ["DATASET_PRESETS", "PDiscoFormerConfig", "scaled_lr", "convert_state_dict",
           "load_official", "read_checkpoint", "LOSS_KEYS", "PDiscoObjective", "PDiscoFormerModel"]
