"""Feature-map encoder ("pixel representations", docs/METHOD.md §1.2) and the 1x1-conv compress
head.

``FeatureMapEncoder`` wraps a timm model and returns a feature map ``[B, C, h, w]``:

- ViTs (DINO ViT-S/8, DINOv2 with registers, tiny custom configs; ``out_indices=None``): the patch
  tokens as a ``[B, C, H/p, W/p]`` map; class and register tokens are dropped (timm's
  ``num_prefix_tokens``). ``dynamic_img_size=True`` lets any input size through (the position
  embedding is resampled to the patch grid).
- Any timm model with ``features_only`` support, CNNs included (``out_indices=[...]``): the maps of
  the listed feature levels, each bilinearly resized to the grid of the finest listed level and
  concatenated along channels (a "hypercolumn": fine spatial detail from the early level, context
  from the deeper ones). ``C`` is the sum of the levels' channels and the stride ("patch size") is
  the finest level's reduction. This is how the project's own pretrained encoder
  (``tools/pretrain.py``) is built.

The input must already be normalised (``PartFormerModel`` does that).

Position-embedding resampling (``pos_embed_interp``):

- ``"timm"`` (default): the model is created at ``img_size`` (pretrained grids are resampled once
  when the weights are loaded) and timm resamples on the fly for other sizes (bicubic to a target
  size).
- ``"dino_legacy"``: the model keeps the native grid of its weights (``img_size`` is ignored; DINO
  ViT-S/8: 28x28) and the grid is resized on every forward with bicubic interpolation using the
  *scale factor* ``(g + 0.1) / g0`` per axis, as the original DINO code (and so the authors'
  released models) does. Use it for exact parity with converted official checkpoints.

Partly frozen encoders (``trainable``): PDiscoFormer (ECCV 2024) freezes the ViT's patch
embedding, blocks and final norm but trains its class / register tokens and position embedding
(``utils/training_utils/optimizer_params.py`` ``layer_group_matcher_pdisco`` with
``--freeze_backbone`` and without ``--freeze_params``). ``frozen=True, trainable=("cls_token",
"reg_token", "pos_embed")`` does that: the forward then keeps autograd on so that gradients reach
those tensors through the frozen blocks (a full backward through the ViT, as theirs does).
"""
from __future__ import annotations

import os
import sys
import types
from typing import Dict, List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

__all__ = ["FeatureMapEncoder", "CompressHead", "load_timm_state_dict", "read_state_dict",
           "EncoderWeightsError", "create_timm_model", "cached_weights_file",
           "IMAGENET_DEFAULT_MEAN", "IMAGENET_DEFAULT_STD"]

# the normalisation of every encoder here (ImageNet statistics; images come in [0, 1])
IMAGENET_DEFAULT_MEAN = (0.485, 0.456, 0.406)
IMAGENET_DEFAULT_STD = (0.229, 0.224, 0.225)

POS_EMBED_INTERP = ("timm", "dino_legacy")
FUSE_ORDERS = ("shallow_first", "deep_first")
# keys a checkpoint may hold that the feature encoder does not have (classifier removed by
# ``num_classes=0``); they are ignored when loading a local weights file
_IGNORED_PREFIXES = ("head.", "head_dist.", "pre_logits.", "fc.", "classifier.")


# ------------------------------------------------------------------------------------ weights I/O
def read_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """Read a state dict from ``.safetensors`` or a torch file (``weights_only=True``), or the
    encoder weights registered under that name (``kind: encoder`` in a weights ``index.yaml``,
    e.g. the shipped ``synthetic_resnet18_half``; see :mod:`partformer.hub`).

    Unwraps the usual containers (``state_dict``, ``model``, ``teacher``) and strips a prefix that
    every key shares (``module.``, ``backbone.``), as in DINO's own checkpoints.
    """
    if not os.path.isfile(path):
        from partformer.weights import WeightsError, resolve_weights
        try:
            path = resolve_weights(path, kind="encoder").file
        except WeightsError as e:
            raise FileNotFoundError(f"encoder weights {path!r}: not a file, and {e}") from None
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        sd = load_file(path, device="cpu")
    else:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    for container in ("state_dict", "model", "teacher"):
        if isinstance(sd, dict) and isinstance(sd.get(container), dict):
            sd = sd[container]
    if not isinstance(sd, dict) or not all(torch.is_tensor(v) for v in sd.values()):
        raise ValueError(f"{path} does not hold a state dict of tensors")
    for prefix in ("module.", "backbone."):
        if sd and all(k.startswith(prefix) for k in sd):
            sd = {k[len(prefix):]: v for k, v in sd.items()}
    return dict(sd)


def load_timm_state_dict(model: nn.Module, state_dict: Dict[str, torch.Tensor],
                         source: str = "state dict") -> None:
    """Load ``state_dict`` into a timm model; raise a ``ValueError`` listing every missing and
    unexpected key (classifier-head keys are ignored) and every shape mismatch.

    The model family's timm ``checkpoint_filter_fn`` runs first when it exists, so original
    DINO / DINOv2 checkpoints load and a position embedding of another grid is resampled.
    """
    filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if filter_fn is not None:
        state_dict = filter_fn(dict(state_dict), model)
    own = model.state_dict()
    missing = sorted(k for k in own if k not in state_dict)
    unexpected = sorted(k for k in state_dict if k not in own and not k.startswith(_IGNORED_PREFIXES))
    shapes = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
              for k, v in state_dict.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        lines = [f"{source} does not match the timm model {type(model).__name__}:"]
        if missing:
            lines.append(f"missing keys ({len(missing)}): {', '.join(missing)}")
        if unexpected:
            lines.append(f"unexpected keys ({len(unexpected)}): {', '.join(unexpected)}")
        if shapes:
            lines.append(f"shape mismatches ({len(shapes)}): {'; '.join(shapes)}")
        raise ValueError("\n".join(lines))
    model.load_state_dict({k: v for k, v in state_dict.items() if k in own}, strict=True)


def _drop_cut_stages(model: nn.Module, state_dict: Dict[str, torch.Tensor], name: str,
                     timm_kwargs) -> Dict[str, torch.Tensor]:
    """The keys of ``state_dict`` without the stages that a features-only model's ``out_indices``
    cut off: timm builds a features-only model only up to its last requested level, so weights of
    the whole network (e.g. the shipped encoder, saved with levels 1-3) name modules it lacks.
    Only modules that come after the model's last module in the full network's order are dropped;
    any other key the model does not have still fails the load."""
    kept = [n for n, _ in model.named_children()]
    ignored = {p.rstrip(".") for p in _IGNORED_PREFIXES}   # heads, skipped by the load anyway
    extra = {k.split(".", 1)[0] for k in state_dict} - set(kept) - ignored
    if not extra:
        return state_dict
    full = [n for n, _ in create_timm_model(name, False, features_only=True,
                                            **timm_kwargs).named_children()]
    last = max((full.index(n) for n in kept if n in full), default=len(full))
    cut = {n for n in extra if n in full and full.index(n) > last}
    return {k: v for k, v in state_dict.items() if k.split(".", 1)[0] not in cut}


# ------------------------------------------------------------------------- pretrained weights
class EncoderWeightsError(FileNotFoundError):
    """A timm encoder's pretrained weights are neither cached nor downloadable; the message names
    ``model.encoder.name``, the timm name and the fixes."""


def _truthy(value: Optional[str]) -> bool:
    return str(value or "").strip().upper() in ("1", "ON", "YES", "TRUE")


def hub_offline() -> bool:
    """Whether Hugging Face Hub downloads are switched off (``HF_HUB_OFFLINE``, read now rather
    than when huggingface_hub was imported)."""
    return _truthy(os.environ.get("HF_HUB_OFFLINE"))


def _weights_source(name: str):
    """``(pretrained cfg or None, "hf-hub" | "url" | None, location)`` of timm's weights for
    ``name`` (as timm resolves them: the Hugging Face Hub when the config names a repository)."""
    from timm.models import get_pretrained_cfg
    try:
        pcfg = get_pretrained_cfg(name)
    except Exception:  # noqa: BLE001 - an unknown name: timm says so itself
        return None, None, None
    if pcfg is None:
        return None, None, None
    if getattr(pcfg, "hf_hub_id", None):
        return pcfg, "hf-hub", pcfg.hf_hub_id
    if getattr(pcfg, "url", None):
        return pcfg, "url", pcfg.url
    return pcfg, None, None


def cached_weights_file(name: str) -> Optional[str]:
    """The local file timm would read for ``name``'s pretrained weights without the network (the
    Hugging Face cache, or torch hub's ``checkpoints/`` for a URL), or None."""
    pcfg, kind, loc = _weights_source(name)
    if kind == "hf-hub":
        from huggingface_hub import try_to_load_from_cache
        repo, _, revision = loc.partition("@")
        names = [pcfg.hf_hub_filename] if getattr(pcfg, "hf_hub_filename", None) else \
            ["model.safetensors", "pytorch_model.bin"]
        for f in names:
            found = try_to_load_from_cache(repo, f, revision=revision or None)
            if isinstance(found, str) and os.path.isfile(found):
                return found
        return None
    if kind == "url":
        from urllib.parse import urlparse
        path = os.path.join(torch.hub.get_dir(), "checkpoints",
                            os.path.basename(urlparse(loc).path))
        return path if os.path.isfile(path) else None
    return None


def _host_reachable(url: str, timeout: float = 3.0) -> bool:
    """One TCP connection to ``url``'s host (HTTPS port) within ``timeout`` seconds; True when a
    proxy is configured (the proxy, not this machine, reaches the host)."""
    import socket
    from urllib.parse import urlparse
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True
    host = urlparse(url).hostname
    if not host:
        return True
    try:
        socket.create_connection((host, urlparse(url).port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _weights_help(name: str, kind: Optional[str], loc: Optional[str], why: str) -> str:
    where = {"hf-hub": f"the Hugging Face Hub repository {loc}", "url": loc}.get(kind, "timm")
    return (f"model.encoder.name={name}: the pretrained weights of the timm model {name!r} (from "
            f"{where}) {why}. Either point at a local copy with model.encoder.weights="
            f"/path/to/{name.split('.')[0]}.safetensors (or .pth), or warm the cache on a machine "
            f"with network (python -c \"import timm; timm.create_model('{name}', "
            "pretrained=True)\", then copy its Hugging Face cache, ~/.cache/huggingface, here) "
            "and run with HF_HUB_OFFLINE=1")


def create_timm_model(name: str, pretrained: bool, **kwargs) -> nn.Module:
    """``timm.create_model(name, pretrained, **kwargs)``, except that pretrained weights that
    cannot be had fail at once with one message naming the fixes (:class:`EncoderWeightsError`):
    not cached and ``HF_HUB_OFFLINE=1``, not cached and the host unreachable, or a failed
    download (instead of a minute of retries and a generic message)."""
    import timm
    if not pretrained:
        return timm.create_model(name, pretrained=False, **kwargs)
    _, kind, loc = _weights_source(name)
    if kind is not None and cached_weights_file(name) is None:
        if hub_offline():
            raise EncoderWeightsError(_weights_help(
                name, kind, loc, "are not in the local cache and HF_HUB_OFFLINE=1 forbids "
                                 "downloading them"))
        if kind == "hf-hub":
            from huggingface_hub import constants
            url = constants.ENDPOINT
        else:
            url = loc
        if not _host_reachable(url):
            raise EncoderWeightsError(_weights_help(
                name, kind, loc, f"are not in the local cache and {url} cannot be reached "
                                 "(no network?)"))
    try:
        return timm.create_model(name, pretrained=True, **kwargs)
    except (OSError, ConnectionError, TimeoutError) as e:
        raise EncoderWeightsError(_weights_help(
            name, kind, loc, f"could not be downloaded ({type(e).__name__}: "
                             f"{str(e).strip().splitlines()[0] if str(e).strip() else ''})")
        ) from None


# ------------------------------------------------------------------------------ legacy pos-embed
def _dino_legacy_pos_embed(self, x: torch.Tensor) -> torch.Tensor:
    """Replacement for timm ``VisionTransformer._pos_embed`` (bound to the instance) that resizes
    the patch position grid with a bicubic *scale factor* of ``(g + 0.1) / g0`` per axis.

    ``x``: patch tokens ``[B, H, W, C]`` (timm's NHWC output with ``dynamic_img_size``).
    """
    B, H, W, C = x.shape
    to_cat = []
    if self.cls_token is not None:
        to_cat.append(self.cls_token.expand(B, -1, -1))
    if getattr(self, "reg_token", None) is not None:
        to_cat.append(self.reg_token.expand(B, -1, -1))
    x = x.reshape(B, H * W, C)
    if self.pos_embed is None:
        return self.pos_drop(torch.cat(to_cat + [x], dim=1))
    n_pos_prefix = 0 if self.no_embed_class else self.num_prefix_tokens
    prefix_pe = self.pos_embed[:, :n_pos_prefix]
    patch_pe = self.pos_embed[:, n_pos_prefix:]
    gh0, gw0 = self.patch_embed.grid_size
    if (H, W) != (gh0, gw0):
        grid = patch_pe.reshape(1, gh0, gw0, C).permute(0, 3, 1, 2).float()
        grid = F.interpolate(grid, scale_factor=((H + 0.1) / gh0, (W + 0.1) / gw0),
                             mode="bicubic", align_corners=False)
        if grid.shape[-2:] != (H, W):  # cannot happen for positive grids; guard anyway
            raise RuntimeError(f"legacy pos-embed resize gave {tuple(grid.shape[-2:])}, "
                               f"expected {(H, W)}")
        patch_pe = grid.permute(0, 2, 3, 1).reshape(1, H * W, C).to(x.dtype)
    if self.no_embed_class:
        x = x + patch_pe
        x = torch.cat(to_cat + [x], dim=1)
    else:
        x = torch.cat(to_cat + [x], dim=1)
        x = x + torch.cat([prefix_pe.to(x.dtype), patch_pe], dim=1)
    return self.pos_drop(x)


# ---------------------------------------------------------------------------------- the encoder
class FeatureMapEncoder(nn.Module):
    """A timm ViT returning its patch tokens as a feature map ``[B, C, H/p, W/p]``.

    Args:
        name: timm model name (``vit_small_patch8_224.dino``, ``vit_small_patch14_reg4_dinov2``,
            ``vit_tiny_patch16_224`` with small ``timm_kwargs`` for tests, ...).
        pretrained: load timm / hub weights (needs the network or a warm cache).
        weights: path to a local ``.pth`` / ``.safetensors`` state dict of the timm model; wins
            over ``pretrained``. Missing / unexpected keys raise a ``ValueError`` listing them
            (features-only models: keys of the stages after the last of ``out_indices`` are
            dropped first, so weights of the whole network load with fewer levels).
        frozen: no gradients (``requires_grad=False``, forward under ``torch.no_grad``) and the
            backbone stays in eval mode even when the parent module is put in train mode.
            ``frozen=False`` makes it trainable (e.g. the synthetic CPU benchmark).
        layer: ``None``: final-norm output; ``int``: output of that block (negative indices count
            from the end), passed through the final norm only when ``intermediate_norm``.
        img_size: input size the model is built for (pretrained grids are resampled once);
            ``None`` keeps timm's default. Any input size still works (``dynamic_img_size``).
        pos_embed_interp: ``"timm"`` or ``"dino_legacy"`` (see the module docstring).
        out_indices: ``None`` for a ViT's patch tokens; a list of timm ``features_only`` levels
            to fuse for any other model (e.g. ``[1, 2, 3]`` of a ResNet: strides 4, 8, 16 fused
            at stride 4). ``layer``, ``img_size`` and ``pos_embed_interp`` are ViT-only.
        center: subtract each image's mean feature over the map from every cell (off in the
            paper). It removes what a cell shares with the rest of its image (colours,
            background, identity), which otherwise dominates the features of a small
            self-supervised encoder (docs/PRETRAINING.md).
        trainable: names of timm-model parameters (``model.named_parameters()``, e.g.
            ``("cls_token", "reg_token", "pos_embed")``) that stay trainable when ``frozen``;
            everything else is frozen. Non-empty: the forward runs with autograd (see the module
            docstring); the timm model still stays in eval mode.
        fuse_order: ``features_only`` models: ``"shallow_first"`` (default) concatenates the
            levels finest first; ``"deep_first"`` deepest first (PDiscoNet's
            ``cat(upsampled layer4, layer3)``, ``models/individual_landmark_resnet.py``).
        fuse_align_corners: ``align_corners`` of the bilinear resize of the coarser levels
            (False by default and in PDiscoFormer's PDiscoNet; True in the original PDiscoNet,
            whose ``F.upsample_bilinear`` implies it).
        **timm_kwargs: passed to ``timm.create_model`` (``depth=2, embed_dim=64, ...``).

    Attributes: ``model`` (the timm module), ``embed_dim``, ``patch_size`` (the stride of the
    map), ``num_prefix_tokens`` (0 for ``features_only`` models).
    """

    def __init__(self, name: str = "vit_small_patch8_224.dino", pretrained: bool = False,
                 weights: Optional[str] = None, frozen: bool = True, layer: Optional[int] = None,
                 img_size: Optional[int] = None, pos_embed_interp: str = "timm",
                 intermediate_norm: bool = False, out_indices: Optional[Sequence[int]] = None,
                 center: bool = False, trainable: Sequence[str] = (),
                 fuse_order: str = "shallow_first", fuse_align_corners: bool = False,
                 **timm_kwargs):
        super().__init__()
        self.center = bool(center)
        if fuse_order not in FUSE_ORDERS:
            raise ValueError(f"fuse_order must be one of {FUSE_ORDERS}, got {fuse_order!r}")
        self.fuse_order = fuse_order
        self.fuse_align_corners = bool(fuse_align_corners)
        self.trainable = tuple(str(n) for n in (trainable or ()))

        self.out_indices = None if out_indices is None else [int(i) for i in out_indices]
        if self.out_indices is not None:
            self._init_features_only(name, pretrained, weights, frozen, layer, timm_kwargs)
            self._set_trainable()
            return
        if pos_embed_interp not in POS_EMBED_INTERP:
            raise ValueError(f"pos_embed_interp must be one of {POS_EMBED_INTERP}, "
                             f"got {pos_embed_interp!r}")
        kwargs = dict(num_classes=0, dynamic_img_size=True)
        kwargs.update(timm_kwargs)
        if img_size is not None and pos_embed_interp == "timm":
            kwargs["img_size"] = img_size
        self.name = name
        self.model = create_timm_model(name, bool(pretrained) and weights is None, **kwargs)
        if not hasattr(self.model, "patch_embed") or not hasattr(self.model, "num_prefix_tokens"):
            raise ValueError(f"timm model {name!r} is not a ViT-like model with patch tokens "
                             "(needs `patch_embed` and `num_prefix_tokens`)")
        if pos_embed_interp == "dino_legacy":
            if not hasattr(self.model, "_pos_embed") or not hasattr(self.model, "no_embed_class"):
                raise ValueError(f"pos_embed_interp='dino_legacy' needs a timm VisionTransformer, "
                                 f"got {type(self.model).__name__}")
            self.model._pos_embed = types.MethodType(_dino_legacy_pos_embed, self.model)
        if weights is not None:
            load_timm_state_dict(self.model, read_state_dict(weights), source=f"weights file {weights}")

        self.frozen = bool(frozen)
        self.layer = layer
        self.intermediate_norm = bool(intermediate_norm)
        self.pos_embed_interp = pos_embed_interp
        self.embed_dim = int(getattr(self.model, "embed_dim", self.model.num_features))
        ps = self.model.patch_embed.patch_size
        self.patch_size = int(ps[0] if isinstance(ps, (tuple, list)) else ps)
        self.num_prefix_tokens = int(self.model.num_prefix_tokens)
        if layer is not None:
            n = len(self.model.blocks)
            if not -n <= layer < n:
                raise ValueError(f"layer {layer} out of range for a {n}-block encoder")
        if self.frozen:
            for p in self.model.parameters():
                p.requires_grad_(False)
            self.model.eval()
        self._set_trainable()

    def _set_trainable(self) -> None:
        if not self.trainable:
            return
        if not self.frozen:
            raise ValueError("`trainable` lists the parameters a frozen encoder keeps trainable; "
                             "with frozen=False every parameter is trainable already")
        params = dict(self.model.named_parameters())
        unknown = [n for n in self.trainable if n not in params]
        if unknown:
            raise ValueError(f"trainable: {unknown} are not parameters of timm model {self.name!r} "
                             f"(it has e.g. {list(params)[:6]})")
        for n in self.trainable:
            params[n].requires_grad_(True)

    def _init_features_only(self, name: str, pretrained: bool, weights: Optional[str],
                            frozen: bool, layer: Optional[int], timm_kwargs) -> None:
        if not self.out_indices:
            raise ValueError("out_indices must list at least one feature level")
        if layer is not None:
            raise ValueError("`layer` selects a ViT block; with out_indices (features_only "
                             "models) list the levels in out_indices instead")
        self.name = name
        try:
            self.model = create_timm_model(name, bool(pretrained) and weights is None,
                                           features_only=True, out_indices=self.out_indices,
                                           **timm_kwargs)
        except EncoderWeightsError:
            raise
        except (RuntimeError, TypeError, ValueError, IndexError) as e:
            raise ValueError(f"timm model {name!r} cannot give feature levels {self.out_indices} "
                             f"(features_only): {e}") from None
        if weights is not None:
            sd = _drop_cut_stages(self.model, read_state_dict(weights), name, timm_kwargs)
            load_timm_state_dict(self.model, sd, source=f"weights file {weights}")
        info = self.model.feature_info
        self.frozen = bool(frozen)
        self.layer = None
        self.intermediate_norm = False
        self.pos_embed_interp = None
        self.embed_dim = int(sum(info.channels()))
        self.patch_size = int(min(info.reduction()))
        self.num_prefix_tokens = 0
        if self.frozen:
            for p in self.model.parameters():
                p.requires_grad_(False)
            self.model.eval()

    def train(self, mode: bool = True):
        super().train(mode)
        if self.frozen:
            self.model.eval()
        return self

    @torch.no_grad()
    def freeze_grid(self, image_size: Tuple[int, int]) -> bool:
        """For a graph of one input size (ONNX export): resample a ViT's position embedding once
        for inputs of ``image_size``, exactly as every forward would (timm's bicubic resize, or
        the ``dino_legacy`` scale-factor resize), and make that the model's own grid, so that the
        forward resamples nothing. Returns whether anything changed (CNNs and ViTs already at
        that grid: no)."""
        vit = self.model
        if self.out_indices is not None or getattr(vit, "pos_embed", None) is None:
            return False
        pe = vit.patch_embed
        old = tuple(int(v) for v in pe.grid_size)
        new = tuple(int(v) for v in self.feature_size(tuple(image_size)))
        if old == new:
            return False
        prefix = 0 if vit.no_embed_class else vit.num_prefix_tokens
        pos = vit.pos_embed
        if self.pos_embed_interp == "dino_legacy":
            grid = pos[:, prefix:].reshape(1, old[0], old[1], -1).permute(0, 3, 1, 2).float()
            grid = F.interpolate(grid, scale_factor=((new[0] + 0.1) / old[0],
                                                     (new[1] + 0.1) / old[1]),
                                 mode="bicubic", align_corners=False)
            patch = grid.permute(0, 2, 3, 1).reshape(1, new[0] * new[1], -1).to(pos.dtype)
            resized = torch.cat([pos[:, :prefix], patch], dim=1)
        else:
            from timm.layers import resample_abs_pos_embed
            resized = resample_abs_pos_embed(pos, new_size=list(new), old_size=list(old),
                                             num_prefix_tokens=prefix)
        vit.pos_embed = nn.Parameter(resized.detach().clone(), requires_grad=pos.requires_grad)
        pe.grid_size = new
        pe.num_patches = new[0] * new[1]
        pe.img_size = tuple(int(v) for v in image_size)
        return True

    def feature_size(self, image_size: Tuple[int, int]) -> Tuple[int, int]:
        """Feature-grid size ``(h, w)`` for an input of ``image_size = (H, W)``.

        ``features_only`` models: ``ceil(H / stride)``, the size of a stride-``s`` convolution
        stack with "same" padding (ResNet stems and stages)."""
        if self.out_indices is not None:
            s = self.patch_size
            return -(-int(image_size[0]) // s), -(-int(image_size[1]) // s)
        pe = self.model.patch_embed
        if hasattr(pe, "dynamic_feat_size"):
            return tuple(int(v) for v in pe.dynamic_feat_size(tuple(image_size)))
        return image_size[0] // self.patch_size, image_size[1] // self.patch_size

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        B, _, H, W = x.shape
        if self.out_indices is not None:
            levels = list(self.model(x))  # timm returns them in module order, finest first
            if self.fuse_order == "deep_first":
                levels = levels[::-1]
            return fuse_feature_levels(levels, align_corners=self.fuse_align_corners)
        if self.layer is None:
            tokens = self.model.forward_features(x)  # [B, prefix + h*w, C], final norm applied
            h, w = self.feature_size((H, W))
            tokens = tokens[:, self.num_prefix_tokens:]
            if tokens.shape[1] != h * w:
                raise RuntimeError(f"encoder returned {tokens.shape[1]} patch tokens, expected "
                                   f"{h}x{w}; check num_prefix_tokens of {self.name!r}")
            return tokens.reshape(B, h, w, -1).permute(0, 3, 1, 2).contiguous()
        (fmap,) = self.model.forward_intermediates(
            x, indices=[self.layer], norm=self.intermediate_norm, stop_early=True,
            output_fmt="NCHW", intermediates_only=True)
        return fmap

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x``: normalised images ``[B, 3, H, W]`` -> ``[B, C, H/p, W/p]``.

        A frozen encoder runs under ``torch.inference_mode`` (no autograd bookkeeping at all; under
        ``torch.compile``, which cannot trace inference mode, ``torch.no_grad``); its output is
        returned as an ordinary tensor (a copy, small next to the forward) so that trainable
        modules after it (the compress head) can record their own gradients. A frozen encoder
        with ``trainable`` tensors runs with autograd, so that they receive gradients."""
        if self.frozen and not self.trainable:
            mode = torch.no_grad() if torch.compiler.is_compiling() else torch.inference_mode()
            with mode:
                out = self._centred(self._forward(x))
            return out.clone()
        return self._centred(self._forward(x))

    def _centred(self, f: torch.Tensor) -> torch.Tensor:
        return f - f.mean(dim=(2, 3), keepdim=True) if self.center else f


def fuse_feature_levels(maps: Sequence[torch.Tensor], align_corners: bool = False) -> torch.Tensor:
    """Feature levels ``[B, C_i, h_i, w_i]`` -> ``[B, sum C_i, h, w]`` on the grid of the largest
    level (coarser levels resized bilinearly with ``align_corners``), in the given order."""
    h, w = max((m.shape[-2], m.shape[-1]) for m in maps)
    return torch.cat([m if m.shape[-2:] == (h, w) else
                      F.interpolate(m, size=(h, w), mode="bilinear", align_corners=align_corners)
                      for m in maps], dim=1)


# --------------------------------------------------------------------------------- compress head
COMPRESS_VARIANTS = ("cub", "celeba", "single")


class CompressHead(nn.Sequential):
    """1x1-conv head mapping encoder channels to the part-feature dim D (docs/METHOD.md §1.2).

    - ``cub``:    conv, ReLU, BN, conv, ReLU, BN, conv   (indices 0..6 for two hidden layers)
    - ``celeba``: conv, BN, ReLU, conv, BN, ReLU, conv
    - ``single``: one conv in -> out (PartImageNet)

    A plain ``nn.Sequential``, so the authors' ``compress_layer.<i>.*`` keys map 1:1 onto
    ``<i>.*``. Convs have biases unless ``bias=False`` (MPAE's ``compress_layer``: one 1x1 conv
    768 -> 256 without bias, ``MPAE.py`` ``MPAE.__init__``).
    """

    def __init__(self, in_dim: int, out_dim: int = 64, variant: str = "cub",
                 hidden: Sequence[int] = (256, 128), bias: bool = True):
        if variant not in COMPRESS_VARIANTS:
            raise ValueError(f"compress variant must be one of {COMPRESS_VARIANTS}, got {variant!r}")
        layers: List[nn.Module] = []
        prev = in_dim
        if variant != "single":
            for h in hidden:
                h = int(h)
                layers.append(nn.Conv2d(prev, h, kernel_size=1, bias=bias))
                if variant == "cub":
                    layers += [nn.ReLU(inplace=True), nn.BatchNorm2d(h)]
                else:
                    layers += [nn.BatchNorm2d(h), nn.ReLU(inplace=True)]
                prev = h
        layers.append(nn.Conv2d(prev, out_dim, kernel_size=1, bias=bias))
        super().__init__(*layers)
        self.variant = variant
        self.in_dim = in_dim
        self.out_dim = out_dim


def build_encoder(encoder_cfg, image_size: Optional[int] = None) -> FeatureMapEncoder:
    """A ``FeatureMapEncoder`` from the ``model.encoder`` config section (``EncoderConfig``, a
    mapping of ``FeatureMapEncoder`` arguments, or None), read with
    :func:`partformer.config.section_kwargs`; the section's nested ``kwargs`` mapping (timm
    arguments and the ViT-only options) is merged in. ``image_size`` is the ``img_size`` unless the
    section sets one. Used by ``PartFormerModel``, the k-means baseline and encoder pretraining."""
    from partformer.config import section_kwargs

    enc = section_kwargs(encoder_cfg, FeatureMapEncoder, "model.encoder")
    enc.update(enc.pop("kwargs", None) or {})
    if enc.get("img_size") is None and image_size is not None:
        enc["img_size"] = int(image_size)
    return FeatureMapEncoder(**enc)
