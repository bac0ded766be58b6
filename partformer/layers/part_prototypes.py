"""The part-prototype head of PDiscoNet (ICCV 2023) and PDiscoFormer (ECCV 2024), shared by
:mod:`partformer.methods.pdisconet` and :mod:`partformer.methods.pdiscoformer`.

From a feature map z [B, C, h, w] (ViT patch tokens or ResNet layer4 ⊕ layer3):

1. logits  ℓ_k(u) = −‖z(u) − p_k‖² for K+1 prototypes p_k (a bias-free 1×1 conv), computed as
   −(‖z‖² − 2 z·p_k + ‖p_k‖²) in that order, as both codebases do
   (``models/individual_landmark_vit.py`` / ``individual_landmark_resnet.py`` ``forward``);
2. maps    A = softmax_k(ℓ) or Gumbel-softmax_k(ℓ) with temperature τ (hard: straight-through);
3. part features f_k = (1/hw) Σ_u A_k(u) z(u)   [B, C, K+1]  — a mean over all h·w cells, NOT
   divided by the mass Σ_u A_k(u);
4. modulation: ``layer_norm`` = LayerNorm over the whole [C, K+1] block of an image (one mean and
   variance for all parts together, elementwise affine [C, K+1]; PDiscoFormer), ``original`` =
   elementwise scale [1, C, K+1] initialised to 1 (PDiscoNet), or ``none``;
5. part dropout: Dropout1d(p) over the K foreground part vectors (a whole part vector is zeroed
   per image, survivors ×1/(1−p)); the background vector never reaches the classifier;
6. class logits: one bias-free Linear(C → classes) applied to each foreground part, averaged
   over the K parts: y = (1/K) Σ_k W m_k   [B, classes].

Background is the LAST channel of every [.., K+1, ..] tensor.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["MODULATIONS", "prototype_logits", "assign_parts", "sample_gumbel", "part_features",
           "PartScale", "PartPrototypeHead"]

MODULATIONS = ("layer_norm", "original", "none")


def prototype_logits(features: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """−squared Euclidean distance of every cell to every prototype.

    features: [B, C, h, w]; prototypes: [P, C, 1, 1] (1×1 conv weight) or [P, C].
    Returns [B, P, h, w] = −(‖z‖² − 2 z·p + ‖p‖²).
    """
    w = prototypes.reshape(prototypes.shape[0], -1)
    zz = features.pow(2).sum(1, keepdim=True)                                   # [B, 1, h, w]
    zp = F.conv2d(features, w[:, :, None, None])                                # [B, P, h, w]
    pp = w.pow(2).sum(1).view(1, -1, 1, 1)                                      # [1, P, 1, 1]
    return -(zz - 2 * zp + pp)


def sample_gumbel(shape, generator: Optional[torch.Generator] = None, device=None,
                  dtype=torch.float32) -> torch.Tensor:
    """Gumbel(0, 1) noise g = −log E, E ~ Exp(1), as ``F.gumbel_softmax`` draws it; drawn on the
    CPU from ``generator`` (or the global CPU generator), then moved to ``device``."""
    e = torch.empty(tuple(shape), dtype=torch.float32).exponential_(generator=generator)
    return (-e.log()).to(device=device, dtype=dtype)


def assign_parts(logits: torch.Tensor, gumbel_noise: Optional[torch.Tensor] = None,
                 tau: float = 1.0, hard: bool = False) -> torch.Tensor:
    """Maps over dim 1: softmax(logits) when ``gumbel_noise`` is None, else the Gumbel-softmax
    softmax((logits + g) / τ) (``torch.nn.functional.gumbel_softmax`` with the noise given);
    ``hard``: one-hot of the argmax in the forward, the soft gradient in the backward.

    logits, gumbel_noise: [B, P, h, w] -> [B, P, h, w].
    """
    if gumbel_noise is None:
        return logits.softmax(dim=1)
    if gumbel_noise.shape != logits.shape:
        raise ValueError(f"gumbel_noise {tuple(gumbel_noise.shape)} must match logits {tuple(logits.shape)}")
    y = ((logits + gumbel_noise) / tau).softmax(dim=1)
    if not hard:
        return y
    one_hot = torch.zeros_like(y).scatter_(1, y.argmax(dim=1, keepdim=True), 1.0)
    return one_hot - y.detach() + y


def part_features(maps: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """f[b, c, k] = (1/hw) Σ_u maps[b, k, u] · features[b, c, u].

    maps: [B, P, h, w]; features: [B, C, h, w] -> [B, C, P]. (A matrix product, which gives
    the same numbers as their broadcast-and-mean up to float rounding, without the
    [B, C, P, h, w] intermediate.)
    """
    b, c, h, w = features.shape
    return torch.bmm(features.reshape(b, c, h * w), maps.reshape(b, maps.shape[1], h * w).transpose(1, 2)) / (h * w)


class PartScale(nn.Module):
    """PDiscoNet's modulation: an elementwise scale [1, C, P] (init 1) of the part features."""

    def __init__(self, dim: int, num_maps: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(1, dim, num_maps))

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return f * self.scale


class PartPrototypeHead(nn.Module):
    """Prototypes → maps → part features → modulation → part dropout → per-part classifier.

    Args:
        dim: C, the feature channels.
        num_parts: K foreground parts (K+1 prototypes, background last).
        num_classes: classifier outputs.
        modulation: ``layer_norm`` | ``original`` | ``none`` (module docstring, step 4).
        part_dropout: p of the Dropout1d over the K foreground part vectors.
        gumbel: Gumbel-softmax maps in training (PDiscoFormer) instead of the softmax.
        gumbel_tau, gumbel_hard: its temperature and straight-through flag.

    Init as theirs: prototypes = ``nn.Conv2d`` default (Kaiming-uniform, a=√5), modulation
    LayerNorm 1/0 or scale 1, classifier truncated normal std 0.02 (``_init_weights_head``; the
    ResNet variant keeps ``nn.Linear``'s default init, see ``init_classifier``).

    Parameter names: ``prototypes.weight`` [K+1, C, 1, 1]; ``modulation.weight/bias`` [C, K+1]
    (layer_norm) or ``modulation.scale`` [1, C, K+1] (original); ``classifier.weight`` [classes, C].
    """

    def __init__(self, dim: int, num_parts: int, num_classes: int, modulation: str = "layer_norm",
                 part_dropout: float = 0.3, gumbel: bool = False, gumbel_tau: float = 1.0,
                 gumbel_hard: bool = False, init_classifier: str = "trunc_normal"):
        super().__init__()
        if modulation not in MODULATIONS:
            raise ValueError(f"modulation must be one of {MODULATIONS}, got {modulation!r}")
        if num_parts < 1:
            raise ValueError(f"num_parts must be >= 1, got {num_parts}")
        if not 0.0 <= part_dropout < 1.0:
            raise ValueError(f"part_dropout must be in [0, 1), got {part_dropout}")
        self.dim, self.num_parts, self.num_classes = int(dim), int(num_parts), int(num_classes)
        self.part_dropout = float(part_dropout)
        self.gumbel, self.gumbel_tau, self.gumbel_hard = bool(gumbel), float(gumbel_tau), bool(gumbel_hard)
        k1 = self.num_parts + 1
        self.prototypes = nn.Conv2d(self.dim, k1, kernel_size=1, bias=False)
        self.modulation_type = modulation
        if modulation == "layer_norm":
            self.modulation = nn.LayerNorm([self.dim, k1])
        elif modulation == "original":
            self.modulation = PartScale(self.dim, k1)
        else:
            self.modulation = nn.Identity()
        self.classifier = nn.Linear(self.dim, self.num_classes, bias=False)
        if init_classifier == "trunc_normal":
            nn.init.trunc_normal_(self.classifier.weight, std=0.02)
        elif init_classifier != "default":
            raise ValueError(f"init_classifier must be 'trunc_normal' or 'default', got {init_classifier!r}")

    def dropout_mask_shape(self, batch_size: int):
        """Shape of the part-dropout keep mask: [B, K, 1] (1 = keep)."""
        return (int(batch_size), self.num_parts, 1)

    def sample_dropout_mask(self, batch_size: int, generator: Optional[torch.Generator] = None,
                            device=None) -> torch.Tensor:
        """Bernoulli(1 − p) keep mask [B, K, 1] drawn on the CPU (as Dropout1d draws it)."""
        m = torch.empty(self.dropout_mask_shape(batch_size)).bernoulli_(1.0 - self.part_dropout,
                                                                        generator=generator)
        return m.to(device)

    def forward(self, features: torch.Tensor, gumbel_noise: Optional[torch.Tensor] = None,
                dropout_mask: Optional[torch.Tensor] = None,
                classify: bool = True) -> Dict[str, torch.Tensor]:
        """features [B, C, h, w] -> dict:

        - ``logits`` [B, K+1, h, w] (−squared distances), ``maps`` [B, K+1, h, w];
        - ``part_features`` [B, C, K+1] (before modulation), ``modulated`` [B, C, K+1];
        - with ``classify``: ``part_logits`` [B, classes, K] and ``class_logits`` [B, classes].

        gumbel_noise: [B, K+1, h, w] Gumbel noise, or None for the plain softmax (the caller
        decides: the models draw it in training only by default). dropout_mask: [B, K, 1] keep
        mask in {0, 1} applied as mask/(1−p), or None for no part dropout (eval).
        """
        logits = prototype_logits(features, self.prototypes.weight)
        maps = assign_parts(logits, gumbel_noise, self.gumbel_tau, self.gumbel_hard)
        feats = part_features(maps, features)
        modulated = self.modulation(feats)
        out = {"logits": logits, "maps": maps, "part_features": feats, "modulated": modulated}
        if not classify:
            return out
        fg = modulated[..., :-1].transpose(1, 2)                                   # [B, K, C]
        if dropout_mask is not None and self.part_dropout > 0:
            fg = fg * (dropout_mask.to(fg.dtype) / (1.0 - self.part_dropout))
        part_logits = self.classifier(fg).transpose(1, 2)                          # [B, classes, K]
        out["part_logits"] = part_logits
        out["class_logits"] = part_logits.mean(dim=-1)
        return out


IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)


class PrototypePartModel(nn.Module):
    """Encoder + :class:`PartPrototypeHead`, for images in [0, 1] (normalised inside).

    Subclasses (:class:`~partformer.methods.pdiscoformer.PDiscoFormerModel`,
    :class:`~partformer.methods.pdisconet.PDiscoNetModel`) build ``self.encoder`` (a module mapping
    normalised images [B, 3, H, W] to [B, C, h, w] with ``feature_size((H, W))``) and
    ``self.head``, then call :meth:`_init_common`.

    Test-time options (their behaviour on the right):

    - ``gumbel_at_test`` (False): their models draw Gumbel noise whenever ``gumbel_softmax=True``,
      in eval mode too (``forward`` has no ``self.training`` check; the torch.hub / HF models are
      built with it on). False: :meth:`predict` uses the plain softmax.
    - ``normalize_at_test`` (True): their part-discovery evaluation (``evaluate_parts.py``) feeds
      ``ToTensor()`` images, not mean/std-normalised, although training normalises. False
      reproduces that.
    """

    def _init_common(self, mean=IMAGENET_DEFAULT_MEAN, std=IMAGENET_DEFAULT_STD,
                     gumbel_at_test: bool = False, normalize_at_test: bool = True) -> None:
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1), persistent=False)
        self.gumbel_at_test = bool(gumbel_at_test)
        self.normalize_at_test = bool(normalize_at_test)

    @property
    def num_parts(self) -> int:
        return self.head.num_parts

    @property
    def num_classes(self) -> int:
        return self.head.num_classes

    def normalize(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] -> (x − mean) / std (torchvision ``Normalize``)."""
        return (images - self.mean.to(images.dtype)) / self.std.to(images.dtype)

    def feature_size(self, image_size):
        """(h, w) of the maps for inputs of ``image_size`` (H, W)."""
        return tuple(int(v) for v in self.encoder.feature_size(tuple(image_size)))

    def forward_train(self, x: torch.Tensor, gumbel_noise: Optional[torch.Tensor] = None,
                      dropout_mask: Optional[torch.Tensor] = None, classify: bool = True,
                      normalized: bool = False) -> Dict[str, torch.Tensor]:
        """The training forward: images [B, 3, H, W] (in [0, 1], or already normalised with
        ``normalized=True``) -> the head's dict (``maps``, ``logits``, ``part_features``,
        ``modulated``, ``class_logits``, ``part_logits``) plus ``features`` [B, C, h, w].
        Noise and masks come from the caller (the objective draws them), so this is
        deterministic given its inputs."""
        if not normalized:
            x = self.normalize(x)
        z = self.encoder(x)
        out = self.head(z, gumbel_noise=gumbel_noise, dropout_mask=dropout_mask, classify=classify)
        out["features"] = z
        return out

    def forward(self, images: torch.Tensor, **kwargs) -> Dict[str, torch.Tensor]:
        return self.forward_train(images, **kwargs)

    def predict(self, images: torch.Tensor, output_size=None,
                generator: Optional[torch.Generator] = None) -> torch.Tensor:
        """Part maps of images [B, 3, H, W] in [0, 1] -> [B, K+1, h, w] (background last), at
        the feature grid, or resized bilinearly (``align_corners=False``) to ``output_size``.
        Deterministic (softmax) unless ``gumbel_at_test``, which draws Gumbel noise from
        ``generator`` when the head uses Gumbel. Train / eval and grad mode: the caller's."""
        x = self.normalize(images) if self.normalize_at_test else images
        z = self.encoder(x)
        noise = None
        if self.gumbel_at_test and self.head.gumbel:
            shape = (z.shape[0], self.num_parts + 1) + tuple(z.shape[-2:])
            noise = sample_gumbel(shape, generator, device=z.device, dtype=z.dtype)
        maps = self.head(z, gumbel_noise=noise, classify=False)["maps"]
        if output_size is not None:
            if isinstance(output_size, int):
                output_size = (output_size, output_size)
            if tuple(output_size) != tuple(maps.shape[-2:]):
                maps = F.interpolate(maps, size=tuple(output_size), mode="bilinear", align_corners=False)
        return maps

    def classify(self, images: torch.Tensor) -> torch.Tensor:
        """Class logits [B, classes] of images in [0, 1] (their test path: the model's own
        ``forward`` in eval mode, ``scores.mean(-1)``; no part dropout; Gumbel as in
        :meth:`predict`)."""
        x = self.normalize(images)
        z = self.encoder(x)
        noise = None
        if self.gumbel_at_test and self.head.gumbel:
            noise = sample_gumbel((z.shape[0], self.num_parts + 1) + tuple(z.shape[-2:]), device=z.device)
        return self.head(z, gumbel_noise=noise)["class_logits"]

    def param_groups(self) -> List[Dict[str, Any]]:
        """Optimiser groups as their ``layer_group_matcher_pdisco``
        (``utils/training_utils/optimizer_params.py``), trainable tensors only, each
        ``{"name", "params", "lr_mult", "weight_decay"}`` with lr = cfg.lr × lr_mult:

        =========== ============================================ ===================== =========
        name        tensors                                       lr_mult (cfg field)   wd
        =========== ============================================ ===================== =========
        backbone    encoder weights with ndim > 1 (if trained)    lr_mult_backbone      cfg
        backbone_1d encoder biases / norm and BN params           lr_mult_backbone      0
        tokens      cls_token, reg_token, pos_embed (ViT)          lr_mult_tokens        0
        prototypes  head.prototypes (their fc_landmarks)           lr_mult_prototypes    0
        modulation  head.modulation                               lr_mult_modulation    0
        classifier  head.classifier (their fc_class_landmarks)    lr_mult_classifier    cfg
        =========== ============================================ ===================== =========

        (Theirs puts the tokens in the 1-d group, lr ×1; ``lr_mult_tokens`` = 1 is the same.)
        """
        cfg = self.cfg
        tokens = set(getattr(self, "token_names", ()))
        names = ("backbone", "backbone_1d", "tokens", "prototypes", "modulation", "classifier")
        groups: Dict[str, list] = {k: [] for k in names}
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            if name.startswith("head.prototypes"):
                groups["prototypes"].append(p)
            elif name.startswith("head.modulation"):
                groups["modulation"].append(p)
            elif name.startswith("head.classifier"):
                groups["classifier"].append(p)
            elif name.startswith("encoder.model.") and name[len("encoder.model."):] in tokens:
                groups["tokens"].append(p)
            elif p.ndim > 1:
                groups["backbone"].append(p)
            else:
                groups["backbone_1d"].append(p)
        spec = {"backbone": (cfg.lr_mult_backbone, cfg.weight_decay),
                "backbone_1d": (cfg.lr_mult_backbone, 0.0),
                "tokens": (getattr(cfg, "lr_mult_tokens", 1.0), 0.0),
                "prototypes": (cfg.lr_mult_prototypes, 0.0),
                "modulation": (cfg.lr_mult_modulation, 0.0),
                "classifier": (cfg.lr_mult_classifier, cfg.weight_decay)}
        return [{"name": k, "params": groups[k], "lr_mult": float(spec[k][0]),
                 "weight_decay": float(spec[k][1])} for k in names if groups[k]]
