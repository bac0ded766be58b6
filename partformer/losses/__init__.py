"""PartFormer losses: pure functions on tensors plus thin modules (docs/METHOD.md §1.6)."""
from .arcface import arcface_logits, arcface_loss
from .area import area_loss
from .concentration import concentration_loss
from .criterion import DEFAULT_LOSS_WEIGHTS, PartFormerCriterion
from .perceptual import (VGG19_LAYER_WEIGHTS, VGG19_SLICES, VGGPerceptualLoss, VGGWeightsError,
                         build_vgg19_features, load_vgg19_features, perceptual_loss)
from .reconstruction import PixelReconstructionLoss, pixel_reconstruction_loss

__all__ = [
    "arcface_logits", "arcface_loss", "area_loss", "concentration_loss", "DEFAULT_LOSS_WEIGHTS",
    "PartFormerCriterion", "VGG19_LAYER_WEIGHTS", "VGG19_SLICES", "VGGPerceptualLoss", "VGGWeightsError",
    "build_vgg19_features", "load_vgg19_features", "perceptual_loss", "PixelReconstructionLoss",
    "pixel_reconstruction_loss",
]
