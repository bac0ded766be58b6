"""The ``mpae:`` config section (defaults: the authors' CUB configuration, K = 16).

Every value below was read from the authors' code (github.com/Jiahao-UTS/MPAE, GPL-2.0; the file
and function are named next to each value). Where their code is hard-coded per dataset, the
dataclass has a field, :data:`PUBLISHED` gives their value per dataset and configs/mpae_*.yaml
are those runs:

=================  ===========  ===========  =================  =================
setting            CUB          CelebA       PartImageNet-Seg   PartImageNet-OOD
=================  ===========  ===========  =================  =================
K (Num_Part - 1)   16           16           50                 50
image size         448          224          224                224
reconstruction     256x256      128x128      128x128            128x128
predict_upsample   4            8            8                  8
presence group     8            8            64                 64
epochs / steps     100 / 80,90  20 / 15,18   70 / 50,60         70 / 50,60
=================  ===========  ===========  =================  =================

(README "Train" commands; ``Config/default.py`` ``update_config`` sets 448 for CUB only;
``train.py`` ``main_function`` passes the scale factor and the mini group per dataset.)
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, Optional, Tuple

from partformer.config import at_least, in_range, one_of

__all__ = ["MPAEPartViTConfig", "MPAEDecoderConfig", "MPAELossConfig", "MPAEAugmentConfig",
           "MPAEConfig", "PUBLISHED", "PUBLISHED_DATASETS", "VGG_LAYER_WEIGHTS"]

# MPAE.py MPAE.high_level_loss: loss_weight = [5/32, 5/16, 5/8, 5/4, 5] (5x PartFormer's)
VGG_LAYER_WEIGHTS: Tuple[float, ...] = (5.0 / 32.0, 5.0 / 16.0, 5.0 / 8.0, 5.0 / 4.0, 5.0)


@dataclass
class MPAEPartViTConfig:
    """Part-token ViT (``backbone/Transformer.py`` ``Get_vit(num_part, img_size, 14, 256, 6, 8,
    d_model)``) on the full-resolution normalised image (no downsampling)."""
    patch_size: int = 14
    width: int = 256
    depth: int = 6
    heads: int = 8
    mlp_ratio: float = 4.0


@dataclass
class MPAEDecoderConfig:
    """Masked part decoder (``backbone/MAE.py`` ``MaskedAutoencoderViT(img_size, patch_size=14,
    embed_dim=256, depth=2, num_heads=4, decoder_embed_dim=d_model, decoder_depth=2,
    decoder_num_heads=d_model // 64, mlp_ratio=4, rec_patch=8)``)."""
    patch_size: int = 14
    embed_dim: int = 256
    depth: int = 2
    num_heads: int = 4
    decoder_depth: int = 2
    decoder_num_heads: Optional[int] = None   # None: feature_dim // 64 (4 for 256)
    mlp_ratio: float = 4.0
    out_patch: int = 8


@dataclass
class MPAELossConfig:
    """``tools/train_function.py`` ``train``: total = R + 0.5 (TV + entropy) + 1.0 (background
    presence + presence) + 0.25 semantic; the terms are defined in ``losses.py``."""
    reconstruction: float = 1.0
    total_variation: float = 0.5
    entropy: float = 0.5
    background_presence: float = 1.0      # EnforcedPresenceLoss("enforced_presence")
    presence: float = 1.0                 # PresenceLoss("original") with mini groups
    semantic: float = 0.25                # ArcMarginProduct on (descriptors, tokens)
    l1_weight: float = 0.1                # 0.1 * mean |R - target| inside R
    vgg_layer_weights: Tuple[float, ...] = VGG_LAYER_WEIGHTS
    vgg_weights: Optional[str] = "imagenet"   # torchvision IMAGENET1K_V1 VGG19 (None: random, tests)
    # False: the reconstruction term is the pixel term alone (l1_weight * mean |R - T|), no VGG19
    # (machines without the ImageNet VGG19, e.g. the synthetic benchmark offline; not theirs)
    perceptual: bool = True
    presence_group_size: int = 8          # mini_group: 8 (CUB, CelebA), 64 (PartImageNet)
    arcface_scale: float = 20.0           # ArcMarginProduct s
    arcface_margin: float = 0.5           # ArcMarginProduct m
    semantic_presence_threshold: float = 1e-3   # parts with sum(map) <= this give 0 (still counted)
    # None: B*h*w of the current batch. Their TotalVariationLoss caches B*h*w of the *first* batch
    # it sees (a smaller last batch is then under-weighted); set an int to reproduce that.
    tv_num_elements: Optional[int] = None
    perceptual_autocast: bool = False     # True: VGG convs follow the caller's autocast


@dataclass
class MPAEAugmentConfig:
    """Training transforms (``Dataloader/CUB.py`` ``CUB_Dataset.__init__``, same for all sets):
    Resize(image_size) of the shorter side (antialias) -> RandomHorizontalFlip(0.5) ->
    ColorJitter() (all factors 0: a no-op) -> RandomAffine(degrees=15, translate=(0.05, 0.05),
    scale=(0.95, 1.05); uniform draws, nearest interpolation, fill 0) -> RandomCrop(image_size) ->
    ToTensor -> Normalize(ImageNet). One view per image. CelebA first squashes the image to
    image_size x image_size with cv2.resize (bilinear). Test: Resize((S, S)) only."""
    flip: float = 0.5
    rotation: float = 15.0
    translate: float = 0.05
    scale: Tuple[float, float] = (0.95, 1.05)
    interpolation: str = "nearest"


@dataclass
class MPAEConfig:
    """The ``mpae:`` section. K is ``model.num_parts`` (their ``--Num_Part`` is K+1), the image size
    ``data.image_size`` (448 on CUB, 224 otherwise), the frozen DINOv2 ``model.encoder``
    (``vit_base_patch14_reg4_dinov2`` with ``kwargs: {img_size: 518}``: DINOv2's 37x37 position
    grid, resampled on every forward), the optimiser and schedule ``train.*`` (Adam 5e-4, no weight
    decay, batch 64, MultiStepLR x0.2, gradient clipping 2.0; configs/_base_/mpae.yaml)."""
    feature_dim: int = 256                # MODEL.OUT_DIM (d_model)
    mask_ratio: float = 0.9               # MODEL.RATIO
    predict_upsample: float = 4.0         # scale_factor of the test-time bilinear upsampling
    part_vit: MPAEPartViTConfig = field(default_factory=MPAEPartViTConfig)
    decoder: MPAEDecoderConfig = field(default_factory=MPAEDecoderConfig)
    loss: MPAELossConfig = field(default_factory=MPAELossConfig)
    augment: MPAEAugmentConfig = field(default_factory=MPAEAugmentConfig)

    CHECKS: ClassVar[Dict[str, Tuple[Any, Any]]] = {
        "feature_dim": at_least(1),
        "mask_ratio": ((lambda v: 0.0 <= v < 1.0), "a number in [0, 1)"),
        "predict_upsample": ((lambda v: v > 0), "a number > 0"),
        "loss.presence_group_size": at_least(1),
        "augment.flip": in_range(0.0, 1.0),
        "augment.interpolation": one_of(("nearest", "bilinear")),
    }

    def check(self, cfg) -> Optional[Tuple[str, str]]:
        """The encoder, the part-token ViT and the masked decoder share one patch grid."""
        S = cfg.data.image_size
        for key, p in (("part_vit.patch_size", self.part_vit.patch_size),
                       ("decoder.patch_size", self.decoder.patch_size)):
            if S % p:
                return (key, f"{p} must divide data.image_size={S} (MPAE needs one patch grid "
                             "for the encoder, the part-token ViT and the masked decoder; "
                             "448 and 224 with patch 14 in the authors' code)")
        from partformer.config import encoder_patch_key, encoder_patch_size
        enc = encoder_patch_size(cfg.model.encoder)
        # an encoder with feature levels (a CNN: configs/synthetic_mpae_k4.yaml) has no patch in
        # the config; its output grid is compared with the other two when the model is built
        for key, p in (("part_vit.patch_size", self.part_vit.patch_size),
                       ("decoder.patch_size", self.decoder.patch_size)):
            if enc is not None and p != enc:
                return (key, f"{p} differs from the encoder's patch size {enc} "
                             f"({encoder_patch_key(cfg.model.encoder)}): the encoder, the "
                             "part-token ViT and the masked decoder share one patch grid; set "
                             f"mpae.{key}={enc}")
        return None


# the published runs (README "Train" commands, train.py main_function), also in configs/mpae_*.yaml
PUBLISHED_DATASETS = ("cub", "celeba", "partimagenet_seg", "partimagenet_ood")
PUBLISHED: Dict[str, Dict[str, Any]] = {
    "cub": dict(num_parts=16, image_size=448, predict_upsample=4.0, group=8,
                epochs=100, milestones=(80, 90)),
    "celeba": dict(num_parts=16, image_size=224, predict_upsample=8.0, group=8,
                   epochs=20, milestones=(15, 18)),
    "partimagenet_seg": dict(num_parts=50, image_size=224, predict_upsample=8.0, group=64,
                             epochs=70, milestones=(50, 60)),
    "partimagenet_ood": dict(num_parts=50, image_size=224, predict_upsample=8.0, group=64,
                             epochs=70, milestones=(50, 60)),
}
