"""Models: the feature-map encoder, the part-token ViT, the reconstruction decoder and the full
PartFormer model (docs/ARCHITECTURE.md, "Model")."""
from .decoder import LayerNorm2d, ReconstructionDecoder
from .encoder import CompressHead, FeatureMapEncoder, load_timm_state_dict, read_state_dict
from .model import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, PartFormerModel, build_model
from .partformer_vit import (Mlp, PartTokenViT, QuickGELU, ResidualAttentionBlock,
                             sincos_pos_embed_2d)

__all__ = [
    "CompressHead", "FeatureMapEncoder", "load_timm_state_dict", "read_state_dict",
    "PartTokenViT", "ResidualAttentionBlock", "Mlp", "QuickGELU", "sincos_pos_embed_2d",
    "LayerNorm2d", "ReconstructionDecoder",
    "PartFormerModel", "build_model", "IMAGENET_DEFAULT_MEAN", "IMAGENET_DEFAULT_STD",
]
