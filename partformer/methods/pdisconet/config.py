"""PDiscoNet's settings (van der Klis et al., ICCV 2023) as PDiscoFormer's repository runs it.

Sources:
- ananthu-aniraj/pdiscoformer @ f039c15 (the reference): ``models/individual_landmark_resnet.py``
  ``IndividualLandmarkResNet`` built by ``load_model.py`` (``--model_arch resnet101
  --use_torchvision_resnet_model``; ``hubconf.py``: ``pdisconet_resnet_torchvision_bb``,
  modulation ``original``, no Gumbel), trained by the same ``PDiscoTrainer._run_batch`` as
  PDiscoFormer. The repository does not document a PDiscoNet command: the loss weights and lr
  factors below are the defaults of its ``argument_parser_pdisconet.py`` at 61b082a
  (2024-03-05; renamed to argument_parser_train.py at b108391): lr 1e-4, scratch ×100,
  finer ×10, modulation ×100, concentration 1000, presence 1, equivariance 1, orthogonality 1,
  TV / entropy / background presence 0. Image size 448 for ResNets on CUB/NABirds, 224 elsewhere
  (training_instructions.md).
- robertdvdk/part_detection @ eec53f2 (the original): see :data:`ORIGINAL`.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any, Dict, Optional, Tuple

__all__ = ["PDiscoNetConfig", "ORIGINAL", "DATASET_PRESETS"]

IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)


@dataclass
class PDiscoNetConfig:
    # ------------------------------------------------------------------ model
    num_parts: int = 8                   # K (+1 background map, last); CUB 4/8/16, NABirds 4/8/11
    num_classes: int = 200
    image_size: int = 448                # any size works (fully convolutional)
    encoder: str = "resnet101"           # timm name; same modules and key names as torchvision's
    encoder_pretrained: bool = True      # theirs: torchvision ResNet101_Weights.DEFAULT (IMAGENET1K_V2)
    encoder_weights: Optional[str] = None  # a torchvision resnet101 state dict loads as is (fc.* ignored)
    encoder_kwargs: Dict[str, Any] = field(default_factory=dict)
    # the ResNet stages whose maps are concatenated (None: layer3 and the upsampled layer4, theirs);
    # the shared model.encoder.out_indices
    encoder_out_indices: Optional[Tuple[int, ...]] = None
    freeze_backbone: bool = False        # the whole ResNet is trained
    fuse_align_corners: bool = False     # layer4 upsampled to layer3 bilinearly; original: True
    modulation: str = "original"         # elementwise scale [1, 3072, K+1], init 1
    part_dropout: float = 0.3
    gumbel: bool = False                 # plain softmax maps
    gumbel_tau: float = 1.0
    gumbel_hard: bool = False
    gumbel_at_test: bool = False
    normalize_at_test: bool = True
    orth_on_modulated: bool = False      # orthogonality on the unmodulated part features
    mean: Tuple[float, float, float] = IMAGENET_DEFAULT_MEAN   # original: no normalisation
    std: Tuple[float, float, float] = IMAGENET_DEFAULT_STD

    # ------------------------------------------------------------------ losses (weights)
    w_classification: float = 1.0        # original: 2
    label_smoothing: float = 0.0
    w_presence: float = 1.0
    presence_type: str = "original"
    presence_beta: float = 0.1
    presence_crop: int = 0               # original: 2 (maps[:, :, 2:-2, 2:-2])
    presence_include_background: bool = False   # original: True (all K+1 maps)
    w_concentration: float = 1000.0
    w_equivariance: float = 1.0
    w_orthogonality: float = 1.0
    w_total_variation: float = 0.0
    tv_cache_normaliser: bool = False
    w_background_presence: float = 0.0
    background_presence_type: str = "enforced_presence"
    w_pixel_entropy: float = 0.0
    equiv_degrees: float = 90.0
    equiv_translate: Tuple[float, float] = (0.11, 0.11)
    equiv_scale: Tuple[float, float] = (0.8, 1.4)
    equiv_translate_pixels: Optional[float] = None   # original: 50 (floor(U(±50)) px)

    # ------------------------------------------------------------------ optimisation
    optimizer: str = "adam"
    lr: float = 1e-4
    betas: Tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0
    lr_mult_backbone: float = 1.0
    lr_mult_prototypes: float = 10.0     # original: 1
    lr_mult_modulation: float = 100.0
    lr_mult_classifier: float = 100.0    # original: 10
    scheduler: str = "step"              # original: torch StepLR(5, 0.5) per epoch (CUB, PIN)
    lr_step_epochs: int = 5
    lr_gamma: float = 0.5
    warmup_epochs: int = 0
    epochs: int = 28                     # original: CUB 28, PartImageNet 20, CelebA 15
    batch_size: int = 16                 # original README: 15 (CUB), 20 (CelebA, PartImageNet)
    grad_clip_norm: float = 0.0          # 61b082a parser default (none)
    grad_accumulation_steps: int = 1

    # ------------------------------------------------------------------ data (as PDiscoFormer)
    hflip: float = 0.5
    aug_degrees: float = 90.0
    aug_translate: Tuple[float, float] = (0.2, 0.2)
    aug_scale: Tuple[float, float] = (0.8, 1.2)

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "PDiscoNetConfig":
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise KeyError(f"unknown {cls.__name__} keys {unknown}; known: {sorted(known)}")
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()})

    def for_dataset(self, name: str, **overrides) -> "PDiscoNetConfig":
        if name not in DATASET_PRESETS:
            raise KeyError(f"no PDiscoNet preset for {name!r}; known: {sorted(DATASET_PRESETS)}")
        return replace(self, **{**DATASET_PRESETS[name], **overrides})

    def original(self, **overrides) -> "PDiscoNetConfig":
        """A copy with :data:`ORIGINAL` (robertdvdk/part_detection) applied, then ``overrides``."""
        return replace(self, **{**ORIGINAL, **overrides})


# robertdvdk/part_detection @ eec53f2 (main.py, train.py, nets.py, datasets.py): what differs
ORIGINAL: Dict[str, Any] = dict(
    fuse_align_corners=True,                      # F.upsample_bilinear
    mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),    # ToDtype(float32, scale=True) only
    w_classification=2.0,                         # loss_hyperparams l_class 2
    presence_crop=2, presence_include_background=True,
    equiv_translate_pixels=50.0,                  # floor(rand*100 - 50) px
    lr_mult_prototypes=1.0, lr_mult_classifier=10.0, lr_mult_modulation=100.0,
    lr_step_epochs=5, lr_gamma=0.5, batch_size=15, grad_clip_norm=0.0,
)

DATASET_PRESETS: Dict[str, Dict[str, Any]] = {
    "cub": dict(image_size=448, num_classes=200),
    "nabirds": dict(image_size=448, num_classes=555),
    "part_imagenet_ood": dict(image_size=224, num_classes=109),
    "part_imagenet_seg": dict(image_size=224, num_classes=158),
    "flowers102": dict(image_size=224, num_classes=102),
}
