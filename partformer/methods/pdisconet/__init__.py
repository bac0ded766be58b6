"""PDiscoNet (van der Klis et al., ICCV 2023) as ananthu-aniraj/pdiscoformer runs it."""
from .config import DATASET_PRESETS, ORIGINAL, PDiscoNetConfig
from .convert import read_checkpoint
from .losses import LOSS_KEYS, PDiscoNetObjective, PDiscoObjective
from .method import PDiscoNet, PDiscoNetSection
from .model import PDiscoNetModel

__all__ = ["PDiscoNet", "PDiscoNetSection", "DATASET_PRESETS", "ORIGINAL", "PDiscoNetConfig",
           "LOSS_KEYS", "PDiscoNetObjective", "PDiscoNetModel"]
