"""Losses: pure functions on tensors plus thin modules. PartFormer's (docs/METHOD.md §1.6) and the
part-map priors of PDiscoNet / PDiscoFormer (:mod:`partformer.losses.priors`)."""
from .arcface import arcface_logits, arcface_loss
from .area import area_loss
from .concentration import concentration_loss
from .criterion import DEFAULT_LOSS_WEIGHTS, PartFormerCriterion
from .perceptual import (VGG19_LAYER_WEIGHTS, VGG19_SLICES, VGGPerceptualLoss, VGGWeightsError,
                         build_vgg19_features, load_vgg19_features, perceptual_loss)
from .priors import (BACKGROUND_PRESENCE_VARIANTS, PRESENCE_VARIANTS, TotalVariationLoss,
                     background_presence_loss, border_mask, equivariance_loss, orthogonality_loss,
                     part_presence_loss, pdisco_concentration_loss, pixel_entropy_loss,
                     total_variation_loss)
from .reconstruction import PixelReconstructionLoss, pixel_reconstruction_loss

__all__ = [
    "arcface_logits", "arcface_loss", "area_loss", "concentration_loss", "DEFAULT_LOSS_WEIGHTS",
    "PartFormerCriterion", "VGG19_LAYER_WEIGHTS", "VGG19_SLICES", "VGGPerceptualLoss", "VGGWeightsError",
    "build_vgg19_features", "load_vgg19_features", "perceptual_loss", "PixelReconstructionLoss",
    "pixel_reconstruction_loss", "BACKGROUND_PRESENCE_VARIANTS", "PRESENCE_VARIANTS", "TotalVariationLoss",
    "background_presence_loss", "border_mask", "equivariance_loss", "orthogonality_loss",
    "part_presence_loss", "pdisco_concentration_loss", "pixel_entropy_loss", "total_variation_loss",
]
