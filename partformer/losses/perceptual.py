"""VGG19 perceptual loss (PartFormer's reconstruction loss, docs/METHOD.md §1.6).

    L = Σ_l w_l · mean |VGG_l(recon) − VGG_l(target)|

with VGG_l the l-th consecutive slice of torchvision's ``vgg19().features``: [0:2], [2:7], [7:12],
[12:21], [21:30], i.e. the outputs relu1_1, relu2_1, relu3_1, relu4_1, relu5_1, weighted
1/32, 1/16, 1/8, 1/4, 1. Only ``features[:30]`` is built (nothing after relu5_1, no classifier).

Inputs are expected to be **already ImageNet-normalised** (mean/std), exactly as in the authors'
code, where the decoder output is compared with the normalised view and VGG is fed both as they are.
The network is frozen and kept in eval mode whatever ``.train()`` is called with.
"""
from __future__ import annotations

import os
from typing import Dict, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

# torchvision's vgg19 "E" configuration up to (and including) relu5_1; "M" = 2x2 max-pool.
_VGG19_CFG_TO_RELU5_1 = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512)

VGG19_SLICES: Tuple[Tuple[int, int], ...] = ((0, 2), (2, 7), (7, 12), (12, 21), (21, 30))
VGG19_SLICE_NAMES: Tuple[str, ...] = ("relu1_1", "relu2_1", "relu3_1", "relu4_1", "relu5_1")
VGG19_LAYER_WEIGHTS: Tuple[float, ...] = (1 / 32, 1 / 16, 1 / 8, 1 / 4, 1.0)

# torchvision's VGG19_Weights.IMAGENET1K_V1 (kept here so that the error message can name the file
# without importing torchvision's weight registry).
IMAGENET_VGG19_URL = "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"

WeightsSpec = Union[None, str, os.PathLike]


class VGGWeightsError(RuntimeError):
    """The requested VGG19 weights could not be found or do not fit the network."""


def build_vgg19_features(num_layers: int = 30) -> nn.Sequential:
    """The first ``num_layers`` modules of torchvision's ``vgg19().features``, randomly initialised.

    Module indices (hence state-dict keys ``"<i>.weight"``) are the same as torchvision's, so its
    ``vgg19().features`` state dict loads into this one. Initialisation follows torchvision's VGG
    (Kaiming-normal fan-out conv weights, zero biases). Building only the features avoids the 120M
    parameter classifier that ``torchvision.models.vgg19()`` would allocate.
    """
    layers = []
    in_ch = 3
    for v in _VGG19_CFG_TO_RELU5_1:
        if v == "M":
            layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
        else:
            conv = nn.Conv2d(in_ch, v, kernel_size=3, padding=1)
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
            layers += [conv, nn.ReLU(inplace=True)]
            in_ch = v
    if not 0 < num_layers <= len(layers):
        raise ValueError(f"num_layers must be in [1, {len(layers)}], got {num_layers}")
    return nn.Sequential(*layers[:num_layers])


# torchvision names its weight files <name>-<first 8 hex digits of the file's sha256>.pth; that
# prefix is the only digest it publishes, and it is checked on every load (cached files included)
IMAGENET_VGG19_SHA256_PREFIX = "dcbb9e9d"


def _imagenet_cache_path() -> str:
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(IMAGENET_VGG19_URL))


def _offline_help() -> str:
    return ("Fix it with one of:\n"
            f"  * download {IMAGENET_VGG19_URL} on a machine with internet access and put it at "
            f"{_imagenet_cache_path()} (the torch hub cache; set TORCH_HOME to move it), or pass "
            "the file explicitly with `loss.vgg_weights=/path/to/vgg19-dcbb9e9d.pth`;\n"
            "  * or train with a pixel reconstruction loss instead: `loss.recon=l1` (or `mse`).")


def _download_imagenet_weights(path: str) -> None:
    """Fetch torchvision's file into the hub cache (temporary file + rename, hash-checked by
    torch while downloading)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.partial-{os.getpid()}"
    try:
        torch.hub.download_url_to_file(IMAGENET_VGG19_URL, tmp,
                                       hash_prefix=IMAGENET_VGG19_SHA256_PREFIX, progress=False)
        os.replace(tmp, path)
    except Exception as e:  # offline (URLError, socket errors), hash mismatch, full disk, ...
        raise VGGWeightsError(
            "The perceptual loss needs ImageNet-pretrained VGG19 weights (torchvision "
            f"IMAGENET1K_V1); {_imagenet_cache_path()} does not exist and downloading it failed "
            f"({type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]}).\n" + _offline_help()
        ) from None
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _load_imagenet_state_dict() -> Dict[str, torch.Tensor]:
    """torchvision's ImageNet VGG19 weights from the torch hub cache (downloaded if missing and
    online). The cached file is never unpickled as code: its SHA-256 must start with torchvision's
    published prefix and it is read with ``torch.load(weights_only=True)`` (``torch.hub``'s own
    loader checks no hash for a cached file and, in torch 2.14, unpickles it with
    ``weights_only=False``)."""
    from partformer.fileio import sha256_file

    path = _imagenet_cache_path()
    if not os.path.isfile(path):
        _download_imagenet_weights(path)
    digest = sha256_file(path)
    if not digest.startswith(IMAGENET_VGG19_SHA256_PREFIX):
        raise VGGWeightsError(
            f"{path} is not torchvision's VGG19 file: its SHA-256 starts with {digest[:8]}, "
            f"torchvision's with {IMAGENET_VGG19_SHA256_PREFIX} (a truncated download or a "
            "replaced file; it was not read). Delete it to download it again.\n" + _offline_help())
    return _load_local_state_dict(path)


def _load_local_state_dict(path: str) -> Dict[str, torch.Tensor]:
    if not os.path.isfile(path):
        raise VGGWeightsError(
            f"VGG19 weights file not found: {path!r}. `vgg_weights` must be 'imagenet' (torch hub "
            "cache / download), a path to a torchvision vgg19 state dict, or None (random init, "
            "tests only)."
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise VGGWeightsError(
            f"could not read VGG19 weights from {path!r} ({type(e).__name__}: {e}). Expected a file "
            "written by torch.save(torchvision.models.vgg19(...).state_dict(), path)."
        ) from e
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise VGGWeightsError(f"{path!r} holds a {type(state).__name__}, expected a state dict")
    return state


def _select_feature_keys(
    state: Dict[str, torch.Tensor], features: nn.Sequential, source: str
) -> Dict[str, torch.Tensor]:
    """Keep the ``features.<i>`` entries with i < len(features); strict about everything else.

    Accepts a full torchvision vgg19 state dict (``features.*`` + ``classifier.*``) or a
    ``vgg19().features`` one (``<i>.weight``). Keys of the layers deliberately not built (features
    after relu5_1, the classifier) are dropped; anything else that is missing or unexpected, or a
    shape mismatch, is an error naming the keys.
    """
    expected = features.state_dict()
    has_prefix = any(k.startswith("features.") for k in state)
    selected: Dict[str, torch.Tensor] = {}
    unexpected = []
    for key, value in state.items():
        if has_prefix:
            if key.startswith("classifier."):
                continue
            if not key.startswith("features."):
                unexpected.append(key)
                continue
            sub = key[len("features."):]
        else:
            sub = key
        idx = sub.split(".", 1)[0]
        if sub in expected:
            selected[sub] = value
        elif idx.isdigit() and int(idx) >= len(features) and int(idx) < 37:
            continue  # vgg19 layers after relu5_1: not needed
        else:
            unexpected.append(key)
    missing = sorted(set(expected) - set(selected), key=lambda k: (int(k.split(".")[0]), k))
    bad_shapes = [
        f"{k}: file {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
        for k, v in selected.items()
        if tuple(v.shape) != tuple(expected[k].shape)
    ]
    if missing or unexpected or bad_shapes:
        prefix = "features." if has_prefix else ""
        lines = [f"VGG19 weights from {source} do not match torchvision's vgg19().features[:{len(features)}]:"]
        if missing:
            lines.append("  missing keys: " + ", ".join(prefix + k for k in missing))
        if unexpected:
            lines.append("  unexpected keys: " + ", ".join(sorted(unexpected)[:20])
                         + (f" ... ({len(unexpected)} in all)" if len(unexpected) > 20 else ""))
        if bad_shapes:
            lines.append("  shape mismatches: " + "; ".join(bad_shapes))
        lines.append("Expected torch.save(torchvision.models.vgg19(...).state_dict(), path) "
                     "(or of its `.features`).")
        raise VGGWeightsError("\n".join(lines))
    return selected


def load_vgg19_features(weights: WeightsSpec = "imagenet", num_layers: int = 30) -> nn.Sequential:
    """``vgg19().features[:num_layers]`` with the requested weights.

    weights: ``"imagenet"`` (torchvision IMAGENET1K_V1 from the torch hub cache, downloaded if
    online; a clear :class:`VGGWeightsError` otherwise), a path to a local state dict (loaded
    strictly), or ``None`` (random initialisation; tests only).
    """
    features = build_vgg19_features(num_layers)
    if weights is None:
        return features
    if isinstance(weights, str) and weights.lower() == "imagenet":
        state, source = _load_imagenet_state_dict(), f"the ImageNet checkpoint ({_imagenet_cache_path()})"
    else:
        path = os.fspath(weights)
        state, source = _load_local_state_dict(path), repr(path)
    features.load_state_dict(_select_feature_keys(state, features, source), strict=True)
    return features


def perceptual_loss(
    slices: Sequence[nn.Module],
    recon: torch.Tensor,
    target: torch.Tensor,
    layer_weights: Sequence[float],
    memory_format: torch.memory_format = torch.contiguous_format,
) -> torch.Tensor:
    """Σ_l w_l · mean|f_l(recon) − f_l(target)| with f_l = slices[l] ∘ … ∘ slices[0].

    recon, target: [B, 3, H, W] (same shape, ImageNet-normalised). The target branch runs without
    gradient. ``memory_format``: the layout the convolutions run in (``torch.channels_last`` for
    slices converted to it; the values are the same up to float rounding). The absolute
    differences are taken in float32, also under autocast. Returns a scalar (float32).
    """
    if recon.shape != target.shape:
        raise ValueError(f"recon {tuple(recon.shape)} and target {tuple(target.shape)} must have the same shape")
    if len(slices) != len(layer_weights):
        raise ValueError(f"{len(slices)} slices but {len(layer_weights)} layer weights")
    x = recon.contiguous(memory_format=memory_format)
    y = target.detach().contiguous(memory_format=memory_format)
    loss = recon.new_zeros((), dtype=torch.float32)
    for block, w in zip(slices, layer_weights):
        x = block(x)
        with torch.no_grad():
            y = block(y)
        loss = loss + w * F.l1_loss(x.float(), y.float())
    return loss


class VGGPerceptualLoss(nn.Module):
    """Frozen VGG19 perceptual loss; see the module docstring for the formula.

    Args:
        weights: "imagenet" | path to a vgg19 state dict | None (random init, tests only).
        layers: (start, end) slices of ``vgg19().features``, consecutive and starting at 0
            (default relu1_1 … relu5_1). Only ``features[:layers[-1][1]]`` is built.
        layer_weights: one weight per slice (default 1/32, 1/16, 1/8, 1/4, 1).
        channels_last: run the convolutions in the channels-last layout (faster on CPUs with
            oneDNN and on GPUs with tensor cores; measured in README "Performance"). The loss is
            the same up to float rounding (tests/test_losses.py).

    forward(recon [B,3,H,W], target [B,3,H,W]) -> scalar, both ImageNet-normalised.
    """

    def __init__(
        self,
        weights: WeightsSpec = "imagenet",
        layers: Sequence[Tuple[int, int]] = VGG19_SLICES,
        layer_weights: Sequence[float] = VGG19_LAYER_WEIGHTS,
        channels_last: bool = True,
    ):
        super().__init__()
        layers = [tuple(int(i) for i in s) for s in layers]
        if not layers or layers[0][0] != 0 or any(a[1] != b[0] for a, b in zip(layers, layers[1:])) \
                or any(s[1] <= s[0] for s in layers):
            raise ValueError(f"layers must be consecutive non-empty slices starting at 0, got {layers}")
        if len(layer_weights) != len(layers):
            raise ValueError(f"{len(layers)} layers but {len(layer_weights)} layer_weights")
        features = load_vgg19_features(weights, num_layers=layers[-1][1])
        self.slices = nn.ModuleList(features[a:b] for a, b in layers)
        self.layers = tuple(layers)
        self.layer_weights = tuple(float(w) for w in layer_weights)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.slices.to(memory_format=self.memory_format)
        for p in self.parameters():
            p.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> "VGGPerceptualLoss":
        # Frozen feature extractor: always in eval mode.
        return super().train(False)

    def forward(self, recon: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return perceptual_loss(self.slices, recon, target, self.layer_weights, self.memory_format)

    def extra_repr(self) -> str:
        return (f"layers={self.layers}, layer_weights={self.layer_weights}, "
                f"channels_last={self.memory_format == torch.channels_last}")
