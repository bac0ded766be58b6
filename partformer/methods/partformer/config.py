"""The ``partformer:`` config section (docs/METHOD.md §1). The defaults are the authors' CUB
settings: configs/_base_/paper.yaml adds only what a paper run needs beyond them, the dataset files
set what differs per dataset."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Dict, List, Optional, Tuple

from partformer.config import at_least, in_range, one_of

# total = recon + 0.3 concentration + 0.5 area + 0.01 ArcFace (docs/METHOD.md §1.6); the one
# definition: LossConfig's default and PartFormerCriterion's
LOSS_WEIGHTS: Dict[str, float] = {"recon": 1.0, "concentration": 0.3, "area": 0.5, "arcface": 0.01}
COMPRESS_VARIANTS = ("cub", "celeba", "single")
ALIGNMENTS = ("dot", "cosine")
HALF_RESAMPLE = ("nearest", "bilinear")
RECON_LOSSES = ("perceptual", "l1", "mse")


@dataclass
class PartTokenConfig:
    """The part-token ViT (``partformer.vit``): patch embedding of the view resampled by
    ``in_scale``, ``depth`` pre-LN blocks of ``width`` with ``heads`` heads."""
    in_scale: float = 0.5
    patch_size: int = 16
    width: int = 256
    depth: int = 6
    heads: int = 8
    mlp_ratio: float = 4.0


@dataclass
class DecoderConfig:
    channels: int = 64
    num_blocks: int = 5
    upsample_after: List[int] = field(default_factory=lambda: [2, 4])


@dataclass
class LossConfig:
    recon: str = "perceptual"         # perceptual | l1 | mse
    vgg_weights: Optional[str] = "imagenet"   # imagenet | path to a local vgg19 state dict
    vgg_channels_last: bool = True    # VGG19 convolutions in the channels-last layout (faster)
    weights: Dict[str, float] = field(default_factory=lambda: dict(LOSS_WEIGHTS))
    area_eps: float = 0.5
    area_all_maps: bool = False
    area_normalise: bool = False
    arcface_s: float = 20.0
    arcface_m: float = 0.5


@dataclass
class AugmentConfig:
    """The paired views (partformer.augment.PairedAugmentation)."""
    flip_p: float = 0.5
    rot_std: float = 15.0
    rot_max: float = 30.0
    scale_std: float = 0.05
    scale_min: float = 0.95
    scale_max: float = 1.05
    trans_std: float = 0.05
    trans_max: float = 0.05


@dataclass
class PartFormerConfig:
    feature_dim: int = 64             # D
    compress: str = "cub"             # cub | celeba | single
    compress_hidden: List[int] = field(default_factory=lambda: [256, 128])
    alignment: str = "dot"            # dot (x align_scale) | cosine (x learnable scale)
    align_scale: float = 0.8
    predict_upsample: int = 4
    # How the two x0.5 paths are downsampled: the view fed to the part-token ViT (by
    # vit.in_scale) and the reconstruction target (to the decoder's output size).
    # nearest: the authors' F.interpolate(x, scale_factor=0.5) (PyTorch's default mode; output pixel
    # (i, j) = input pixel (2i, 2j)) | bilinear (half-pixel centres, no antialiasing). See
    # docs/differences.md.
    half_resample: str = "nearest"
    vit: PartTokenConfig = field(default_factory=PartTokenConfig)
    decoder: DecoderConfig = field(default_factory=DecoderConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)

    CHECKS: ClassVar[Dict[str, Tuple[Any, Any]]] = {
        "feature_dim": at_least(1),
        "compress": one_of(COMPRESS_VARIANTS),
        "alignment": one_of(ALIGNMENTS),
        "align_scale": ((lambda v: v > 0), "a number > 0"),
        "predict_upsample": at_least(1),
        "half_resample": one_of(HALF_RESAMPLE),
        "vit.in_scale": ((lambda v: v > 0), "a number > 0"),
        "vit.patch_size": at_least(1),
        "vit.width": at_least(1),
        "vit.depth": at_least(1),
        "vit.heads": at_least(1),
        "decoder.num_blocks": at_least(1),
        "loss.recon": one_of(RECON_LOSSES),
        "loss.area_eps": ((lambda v: v > 0), "a number > 0"),
        "augment.flip_p": in_range(0.0, 1.0),
        "augment.scale_min": ((lambda v: v > 0), "a number > 0"),
    }

    def check(self, cfg) -> Optional[Tuple[str, str]]:
        """Conditions between keys: ``(key, what is wrong and how to fix it)`` or None."""
        if self.vit.width % self.vit.heads:
            return ("vit.heads", f"must divide partformer.vit.width={self.vit.width}, got "
                                 f"{self.vit.heads} (e.g. partformer.vit.heads=8)")
        bad = [i for i in self.decoder.upsample_after if not 1 <= i <= self.decoder.num_blocks]
        if bad or len(set(self.decoder.upsample_after)) != len(self.decoder.upsample_after):
            return ("decoder.upsample_after", f"must list distinct block numbers in 1.."
                    f"{self.decoder.num_blocks}, got {self.decoder.upsample_after}")
        unknown = sorted(set(self.loss.weights) - set(LOSS_WEIGHTS))
        if unknown:
            return ("loss.weights", f"unknown loss weight(s) {unknown}; known: "
                                    f"{sorted(LOSS_WEIGHTS)}")
        if self.augment.scale_min > self.augment.scale_max:
            return ("augment.scale_min", f"must be <= partformer.augment.scale_max="
                                         f"{self.augment.scale_max}")
        return None


# Keys of the layout before methods had sections (every checkpoint and config up to version
# 0.1.0): model.<key> and the loss / augment sections were PartFormer's.
LEGACY_MODEL_KEYS = {"feature_dim": "feature_dim", "compress": "compress",
                     "compress_hidden": "compress_hidden", "alignment": "alignment",
                     "align_scale": "align_scale", "predict_upsample": "predict_upsample",
                     "half_resample": "half_resample", "partformer": "vit", "decoder": "decoder"}
LEGACY_SECTIONS = {"loss": "loss", "augment": "augment"}
