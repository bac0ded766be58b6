"""Building blocks shared by the methods: the feature-map encoder (timm ViTs and CNNs) and its
compress head, the part-token ViT, the reconstruction decoder (docs/ARCHITECTURE.md, "Model").
A method's own model is in its package under partformer/methods/."""
from .decoder import LayerNorm2d, ReconstructionDecoder
from .encoder import (IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, CompressHead, FeatureMapEncoder,
                      load_timm_state_dict, read_state_dict)
from .partformer_vit import (Mlp, PartTokenViT, QuickGELU, ResidualAttentionBlock,
                             sincos_pos_embed_2d)

__all__ = [
    "CompressHead", "FeatureMapEncoder", "load_timm_state_dict", "read_state_dict",
    "PartTokenViT", "ResidualAttentionBlock", "Mlp", "QuickGELU", "sincos_pos_embed_2d",
    "LayerNorm2d", "ReconstructionDecoder", "IMAGENET_DEFAULT_MEAN", "IMAGENET_DEFAULT_STD",
]
