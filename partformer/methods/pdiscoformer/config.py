"""PDiscoFormer's settings (Aniraj et al., ECCV 2024), defaults = their CUB run.

Sources (ananthu-aniraj/pdiscoformer @ f039c15): the CUB command of ``training_instructions.md``
(and its "Model-specific" / "Dataset-specific" notes), ``argument_parser_train.py`` defaults for
what the command leaves out, ``hubconf.py`` / ``torch_hub/load_pretrained_models.py`` for the
released models. Per-dataset values: :data:`DATASET_PRESETS`.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields, replace
from typing import Any, Dict, Optional, Tuple

__all__ = ["PDiscoFormerConfig", "DATASET_PRESETS", "scaled_lr"]

IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)


def scaled_lr(batch_size: int, base_lr: float = 1e-6, base_batch_size: int = 16) -> float:
    """Their square-root rule (training_instructions.md, "Batch Size and Learning Rate"; not
    applied by their script): lr = 1e-6 · sqrt(effective batch / 16). Batch 32 -> 1.414e-6."""
    return base_lr * math.sqrt(batch_size / base_batch_size)


@dataclass
class PDiscoFormerConfig:
    # ------------------------------------------------------------------ model
    num_parts: int = 8                  # K foreground parts (+1 background map, last); CUB: 4/8/16
    num_classes: int = 200              # image-level classes (CUB 200); from the dataset
    image_size: int = 518               # square input; fixes the ViT's position grid (518/14 = 37)
    encoder: str = "vit_base_patch14_reg4_dinov2.lvd142m"   # timm name (DINOv2 ViT-B/14, 4 registers)
    encoder_pretrained: bool = True     # timm / hub weights (their --pretrained_start_weights)
    encoder_weights: Optional[str] = None   # local state dict of the timm ViT; wins over pretrained
    encoder_kwargs: Dict[str, Any] = field(default_factory=dict)  # extra timm.create_model args
    # a CNN's feature levels fused at the finest (timm features_only; the shared
    # model.encoder.out_indices); None: a ViT's patch tokens, theirs
    encoder_out_indices: Optional[Tuple[int, ...]] = None
    freeze_backbone: bool = True        # --freeze_backbone: patch embed, blocks, final norm frozen
    train_tokens: bool = True           # cls/register tokens + pos_embed trainable (not --freeze_params)
    modulation: str = "layer_norm"      # layer_norm (LayerNorm over [C, K+1]) | original | none
    part_dropout: float = 0.3           # Dropout1d over the K foreground part vectors
    gumbel: bool = True                 # Gumbel-softmax maps in training (--gumbel_softmax)
    gumbel_tau: float = 1.0             # --gumbel_softmax_temperature
    gumbel_hard: bool = False           # --gumbel_softmax_hard (straight-through), off in the paper
    gumbel_at_test: bool = False        # theirs: True (noise in eval mode too); ours: softmax
    normalize_at_test: bool = True      # theirs (evaluate_parts.py): False, ToTensor() images only
    orth_on_modulated: bool = True      # --modulation_orth: orthogonality on the LayerNorm output
    mean: Tuple[float, float, float] = IMAGENET_DEFAULT_MEAN
    std: Tuple[float, float, float] = IMAGENET_DEFAULT_STD

    # ------------------------------------------------------------------ losses (weights)
    w_classification: float = 1.0      # cross-entropy of the part-averaged logits
    label_smoothing: float = 0.0
    w_presence: float = 1.0            # foreground part presence
    presence_type: str = "original"    # original | soft_constraint | tanh | soft_tanh
    presence_beta: float = 0.1         # soft_constraint only
    w_concentration: float = 0.0       # PDiscoNet's prior, off in PDiscoFormer
    w_equivariance: float = 1.0
    w_orthogonality: float = 1.0
    w_total_variation: float = 1.0
    tv_cache_normaliser: bool = False  # theirs: True (B*h*w of the first batch, kept forever)
    w_background_presence: float = 2.0  # --enforced_presence_loss
    background_presence_type: str = "enforced_presence"  # enforced_presence | log | linear | mse
    w_pixel_entropy: float = 1.0
    # equivariance warp (one per batch): θ ~ U(±degrees), t = round(U(±frac·size)) px, s ~ U(scale)
    equiv_degrees: float = 90.0
    equiv_translate: Tuple[float, float] = (0.11, 0.11)
    equiv_scale: Tuple[float, float] = (0.8, 1.4)
    equiv_translate_pixels: Optional[float] = None   # original PDiscoNet: floor(U(±50)) px

    # ------------------------------------------------------------------ optimisation
    optimizer: str = "adam"            # torch.optim.Adam, betas (0.9, 0.999), eps 1e-8
    lr: float = 1.414e-6               # base lr for effective batch 32 (scaled_lr(32))
    betas: Tuple[float, float] = (0.9, 0.999)
    weight_decay: float = 0.0          # their "normalised" wd: wd*sqrt(1/(iters*epochs)); 0 in the paper
    lr_mult_backbone: float = 1.0      # only when freeze_backbone=False
    lr_mult_tokens: float = 1.0        # cls/reg tokens, pos_embed (no weight decay)
    lr_mult_prototypes: float = 1e3    # fc_landmarks ("finer", --finer_lr_factor), no wd
    lr_mult_modulation: float = 1e4    # --modulation_lr_factor, no wd
    lr_mult_classifier: float = 1e4    # fc_class_landmarks ("scratch", --scratch_lr_factor)
    scheduler: str = "step"            # timm StepLRScheduler, stepped once per epoch
    lr_step_epochs: int = 4            # --scheduler_step_size
    lr_gamma: float = 0.5              # --scheduler_gamma
    warmup_epochs: int = 0
    epochs: int = 28
    batch_size: int = 32               # effective (8 per GPU x 4 GPUs in their CUB command)
    grad_clip_norm: float = 2.0        # clip_grad_norm_ over all parameters
    grad_accumulation_steps: int = 1

    # ------------------------------------------------------------------ data ("cub_original")
    # train: Resize(image_size) (shorter side) -> RandomHorizontalFlip(0.5) -> ColorJitter() (the
    # default arguments: a no-op) -> RandomAffine(degrees, translate, scale; nearest, fill 0) ->
    # RandomCrop(image_size) -> ToTensor -> Normalize; test: Resize -> CenterCrop -> ToTensor ->
    # Normalize (utils/data_utils/transform_utils.py make_train/test_transforms)
    hflip: float = 0.5
    aug_degrees: float = 90.0
    aug_translate: Tuple[float, float] = (0.2, 0.2)
    aug_scale: Tuple[float, float] = (0.8, 1.2)

    def __post_init__(self):
        if self.num_parts < 1:
            raise ValueError(f"num_parts must be >= 1, got {self.num_parts}")
        if self.presence_type not in ("original", "soft_constraint", "tanh", "soft_tanh"):
            raise ValueError(f"presence_type: unknown {self.presence_type!r}")
        if self.background_presence_type not in ("enforced_presence", "log", "linear", "mse"):
            raise ValueError(f"background_presence_type: unknown {self.background_presence_type!r}")

    @classmethod
    def from_dict(cls, d: Dict[str, Any]) -> "PDiscoFormerConfig":
        """From a mapping (a YAML section); unknown keys raise, naming the known ones."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise KeyError(f"unknown {cls.__name__} keys {unknown}; known: {sorted(known)}")
        kw = {k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()}
        return cls(**kw)

    def for_dataset(self, name: str, **overrides) -> "PDiscoFormerConfig":
        """A copy with :data:`DATASET_PRESETS` [name] applied, then ``overrides``."""
        if name not in DATASET_PRESETS:
            raise KeyError(f"no PDiscoFormer preset for {name!r}; known: {sorted(DATASET_PRESETS)}")
        return replace(self, **{**DATASET_PRESETS[name], **overrides})


# Per dataset: image size and class count (hubconf.py pretrained_image_size / num_classes,
# training_instructions.md); batch sizes are the recommended effective ones, lr from the sqrt rule.
# K values released: CUB 4/8/16, NABirds 4/8/11, PartImageNet-OOD 8/25/50, PartImageNet-Seg
# 8/16/25/41/50, Flowers 2/4/8 (model_zoo.md). Epoch counts other than CUB's 28 are not stated.
DATASET_PRESETS: Dict[str, Dict[str, Any]] = {
    "cub": dict(image_size=518, num_classes=200, batch_size=32, lr=1.414e-6),  # their command
    "nabirds": dict(image_size=518, num_classes=555, batch_size=32, lr=1.414e-6),
    "part_imagenet_ood": dict(image_size=224, num_classes=109, batch_size=128, lr=scaled_lr(128)),
    "part_imagenet_seg": dict(image_size=224, num_classes=158, batch_size=128, lr=scaled_lr(128)),
    "flowers102": dict(image_size=224, num_classes=102, batch_size=128, lr=scaled_lr(128)),
}
