"""Loss functions shared by the methods: pure functions on tensors plus thin modules (PartFormer's
terms, the VGG19 perceptual loss, and the part-map priors of PDiscoNet / PDiscoFormer, also used by
MPAE: :mod:`partformer.losses.priors`). A method's own composition of them (its criterion /
objective) is in its package under partformer/methods/."""
from .arcface import arcface_logits, arcface_loss
from .area import area_loss
from .concentration import concentration_loss
from .perceptual import (VGG19_LAYER_WEIGHTS, VGG19_SLICES, VGGPerceptualLoss, VGGWeightsError,
                         build_vgg19_features, load_vgg19_features, perceptual_loss)
from .priors import (BACKGROUND_PRESENCE_VARIANTS, PRESENCE_VARIANTS, TotalVariationLoss,
                     background_presence_loss, border_mask, equivariance_loss, orthogonality_loss,
                     part_presence_loss, pdisco_concentration_loss, pixel_entropy_loss,
                     total_variation_loss)
from .reconstruction import PixelReconstructionLoss, pixel_reconstruction_loss

__all__ = [
    "arcface_logits", "arcface_loss", "area_loss", "concentration_loss",
    "VGG19_LAYER_WEIGHTS", "VGG19_SLICES", "VGGPerceptualLoss", "VGGWeightsError",
    "build_vgg19_features", "load_vgg19_features", "perceptual_loss", "PixelReconstructionLoss",
    "pixel_reconstruction_loss", "BACKGROUND_PRESENCE_VARIANTS", "PRESENCE_VARIANTS",
    "TotalVariationLoss", "background_presence_loss", "border_mask", "equivariance_loss",
    "orthogonality_loss", "part_presence_loss", "pdisco_concentration_loss", "pixel_entropy_loss",
    "total_variation_loss",
]
