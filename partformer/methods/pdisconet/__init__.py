"""PDiscoNet (van der Klis et al., ICCV 2023) as ananthu-aniraj/pdiscoformer runs it."""
from .config import DATASET_PRESETS, ORIGINAL, PDiscoNetConfig
from .convert import convert_state_dict, load_official, read_checkpoint
from .losses import LOSS_KEYS, PDiscoNetObjective, PDiscoObjective
from .model import PDiscoNetModel

__all__ = ["DATASET_PRESETS", "ORIGINAL", "PDiscoNetConfig", "convert_state_dict", "load_official",
           "read_checkpoint", "LOSS_KEYS", "PDiscoNetObjective", "PDiscoObjective", "PDiscoNetModel"]
