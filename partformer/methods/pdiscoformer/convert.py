"""Released PDiscoFormer checkpoints -> our state dict (strict).

Their formats (ananthu-aniraj/pdiscoformer @ f039c15):

- GitHub release ``<K>_parts_snapshot_best.pt`` (torch.hub, ``load_model.py``
  ``pdiscoformer_vit``): a trainer snapshot ``{"model_state": state_dict, "optimizer_state",
  "scaler_state" (newer), "finished_epoch", "epoch_test_accuracies"}``
  (``engine/distributed_trainer_pdisco.py`` ``_save_snapshot``), or a bare state dict; the hub
  loader accepts both (``'model_state' in snapshot_data``).
- Hugging Face ``ananthu-aniraj/pdiscoformer_<dataset>_k_<K>``: ``model.safetensors`` with the
  same keys (``PyTorchModelHubMixin``; ``_from_pretrained`` loads it with ``strict=False``).
- With ``--averaging_type ema`` the snapshot holds timm ``ModelEmaV3``'s state dict, every key
  prefixed ``module.``; a DDP-wrapped save would be too. The prefix is stripped.

Keys of ``IndividualLandmarkViT`` (the timm ViT's own names at the top level, no ``head``):
``cls_token`` [1,1,768], ``reg_token`` [1,4,768], ``pos_embed`` [1,(S/14)²,768],
``patch_embed.proj.{weight,bias}``, ``blocks.<i>.{norm1,attn.qkv,attn.proj,ls1.gamma,norm2,
mlp.fc1,mlp.fc2,ls2.gamma}.*``, ``norm.{weight,bias}``, ``fc_landmarks.weight`` [K+1,768,1,1],
``modulation.{weight,bias}`` [768,K+1] (layer_norm) or ``modulation`` [1,768,K+1] (original),
``fc_class_landmarks.weight`` [classes,768].
"""
from __future__ import annotations

import os
from typing import Dict, Iterable, Mapping, Union

import torch

__all__ = ["read_checkpoint", "convert_state_dict", "load_official", "HEAD_KEYS", "VIT_PREFIXES"]

VIT_PREFIXES = ("cls_token", "reg_token", "pos_embed", "patch_embed.", "blocks.", "norm.", "norm_pre.")
# their head names -> ours; "modulation" alone is the 'original' modulation Parameter
HEAD_KEYS = {
    "fc_landmarks.weight": "head.prototypes.weight",
    "modulation.weight": "head.modulation.weight",
    "modulation.bias": "head.modulation.bias",
    "modulation": "head.modulation.scale",
    "fc_class_landmarks.weight": "head.classifier.weight",
}


def read_checkpoint(src: Union[str, Mapping[str, torch.Tensor]]) -> Dict[str, torch.Tensor]:
    """A state dict of their model from a path (``.pt`` / ``.pth`` snapshot or state dict,
    ``.safetensors``) or an already loaded object: unwraps ``model_state`` and strips a
    ``module.`` prefix shared by every key."""
    if isinstance(src, (str, os.PathLike)):
        path = os.fspath(src)
        if path.endswith(".safetensors"):
            from safetensors.torch import load_file
            obj = load_file(path, device="cpu")
        else:
            obj = torch.load(path, map_location="cpu", weights_only=True)
    else:
        obj = src
    if isinstance(obj, Mapping) and isinstance(obj.get("model_state"), Mapping):
        obj = obj["model_state"]
    if not isinstance(obj, Mapping) or not all(torch.is_tensor(v) for v in obj.values()):
        raise ValueError(f"{src if isinstance(src, str) else 'checkpoint'}: expected a state dict "
                         "or a snapshot with 'model_state'")
    sd = dict(obj)
    if sd and all(k.startswith("module.") for k in sd):
        sd = {k[len("module."):]: v for k, v in sd.items()}
    return sd


def convert_state_dict(sd: Mapping[str, torch.Tensor],
                       backbone_prefixes: Iterable[str] = VIT_PREFIXES,
                       drop_prefixes: Iterable[str] = (),
                       source: str = "PDiscoFormer checkpoint") -> Dict[str, torch.Tensor]:
    """Rename their keys to ours: backbone keys -> ``encoder.model.<key>``, head keys by
    :data:`HEAD_KEYS`; keys under ``drop_prefixes`` are dropped; anything else raises a
    ``KeyError`` listing it."""
    backbone_prefixes = tuple(backbone_prefixes)
    drop_prefixes = tuple(drop_prefixes)
    out, unknown = {}, []
    for k, v in sd.items():
        if k in HEAD_KEYS:
            out[HEAD_KEYS[k]] = v
        elif drop_prefixes and k.startswith(drop_prefixes):
            continue
        elif k.startswith(backbone_prefixes):
            out["encoder.model." + k] = v
        else:
            unknown.append(k)
    if unknown:
        raise KeyError(f"{source}: keys this converter does not know ({len(unknown)}): "
                       f"{', '.join(sorted(unknown)[:20])}. Only the 'linear' classifier is "
                       "supported (not classifier_type='independent_mlp').")
    return out


def load_official(model: torch.nn.Module, src, **convert_kwargs) -> None:
    """Convert ``src`` (see :func:`read_checkpoint`) and load it into ``model`` strictly; a
    mismatch raises a ``ValueError`` naming the missing / unexpected keys and shape mismatches
    (e.g. ``pos_embed`` of another grid: build the model with their ``image_size``)."""
    sd = convert_state_dict(read_checkpoint(src), **convert_kwargs)
    own = model.state_dict()
    missing = sorted(set(own) - set(sd))
    unexpected = sorted(set(sd) - set(own))
    shapes = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
              for k, v in sd.items() if k in own and v.shape != own[k].shape]
    if missing or unexpected or shapes:
        lines = [f"checkpoint does not match {type(model).__name__}:"]
        if missing:
            lines.append(f"missing ({len(missing)}): {', '.join(missing[:20])}")
        if unexpected:
            lines.append(f"unexpected ({len(unexpected)}): {', '.join(unexpected[:20])}")
        if shapes:
            lines.append(f"shape mismatches: {'; '.join(shapes[:10])} (num_parts, num_classes, "
                         "image_size and modulation must be the checkpoint's)")
        raise ValueError("\n".join(lines))
    model.load_state_dict(sd, strict=True)


# the released models' class counts (hubconf.py num_classes) -> the dataset they were trained on
CLASSES_TO_DATASET = {200: "cub", 555: "nabirds", 109: "part_imagenet_ood",
                      158: "part_imagenet_seg", 102: "flowers102"}
# our configs of those datasets (the others have no loader here: the config of CUB's layout is
# used, data.* to be given on the command line)
DATASET_CONFIG = {"cub": "cub", "part_imagenet_ood": "partimagenet_ood",
                  "part_imagenet_seg": "partimagenet_seg"}
CONVERTER = "partformer.methods.pdiscoformer.convert"


def convert_released(method_cls, path: str, dataset=None, base_config=None, overrides=()):
    """A released PDiscoFormer / PDiscoNet file (:func:`read_checkpoint`) as one of our
    checkpoints ``{"model", "config", "source"}``: K, the class count and the modulation from the
    shapes, the image size from the ViT's position grid (PDiscoNet: the dataset's, any size
    works), the dataset from the class count unless given; the model is rebuilt and loaded
    strictly."""
    import math

    import yaml

    from partformer import config as cfglib
    from partformer.fileio import sha256_file
    from partformer.methods import build_method
    from partformer.methods.foreign import ConversionError

    from .config import DATASET_PRESETS

    try:
        sd = read_checkpoint(path)
    except Exception as e:  # noqa: BLE001 - unreadable or not a state dict: one message
        raise ConversionError(f"cannot read {path}: {e}") from None
    name = method_cls.name
    if "fc_landmarks.weight" not in sd or "fc_class_landmarks.weight" not in sd:
        raise ConversionError(f"{path} is not a released {name} checkpoint (no fc_landmarks / "
                              "fc_class_landmarks)")
    K = int(sd["fc_landmarks.weight"].shape[0]) - 1
    classes = int(sd["fc_class_landmarks.weight"].shape[0])
    dataset = dataset or CLASSES_TO_DATASET.get(classes)
    if dataset not in DATASET_PRESETS:
        raise ConversionError(f"{path}: {classes} classes is no released dataset; pass --dataset "
                              f"one of {sorted(DATASET_PRESETS)}")
    if "pos_embed" in sd:
        # (S / p)^2 patch rows (DINOv2-reg: no class row; other timm ViTs: one more)
        n = int(sd["pos_embed"].shape[1])
        g = math.isqrt(n) if math.isqrt(n) ** 2 == n else math.isqrt(n - 1)
        patch = int(sd["patch_embed.proj.weight"].shape[-1]) if "patch_embed.proj.weight" in sd \
            else 14
        S = g * patch
    else:
        S = None      # a CNN works at any size: the benchmark config's (the published one)
    modulation = ("layer_norm" if "modulation.weight" in sd else
                  "original" if "modulation" in sd else "none")
    fixed = ("model.", "method.", f"{name}.")
    bad = [o for o in overrides if o.split("=", 1)[0].strip().startswith(fixed)]
    if bad:
        raise ConversionError(f"overrides {bad}: the architecture is fixed by the checkpoint")
    candidates = [base_config] if base_config else [
        os.path.join(cfglib.CONFIG_DIR, f"{DATASET_CONFIG.get(dataset, dataset)}_{name}_k{K}.yaml"),
        os.path.join(cfglib.CONFIG_DIR, "_base_", f"{name}.yaml")]
    cfg_path = next((p for p in candidates if p and os.path.isfile(p)), None)
    if cfg_path is None:
        raise ConversionError(f"no config for {name} on {dataset} (looked for {candidates})")
    tree = cfglib.to_dict(cfglib.load_config(cfg_path, list(overrides)), "train")
    tree["method"] = {"name": name}
    tree["model"]["num_parts"] = K
    tree["model"]["encoder"].update(pretrained=False, weights=None)
    if S is not None:
        tree["data"]["image_size"] = S
    S = tree["data"]["image_size"]
    tree[name].update(num_classes=classes, modulation=modulation)
    tree["experiment"]["name"] = f"official_{name}_{dataset}_k{K}"
    cfg = cfglib.from_dict(yaml.safe_load(yaml.safe_dump(tree)))
    model = build_method(cfg).build_model(pretrained=False)
    try:
        load_official(model, sd, **({} if name == "pdiscoformer" else dict(
            backbone_prefixes=("conv1.", "bn1.", "layer1.", "layer2.", "layer3.", "layer4."),
            drop_prefixes=("batchnorm.",), source="PDiscoNet checkpoint")))
    except (KeyError, ValueError) as e:
        raise ConversionError(f"{path}: {e.args[0] if e.args else e}") from None
    source = dict(file=os.path.basename(path), sha256=sha256_file(path), method=name,
                  dataset=dataset, num_parts=K, num_classes=classes, image_size=S,
                  converter=CONVERTER)
    return {"model": model.state_dict(), "config": cfglib.to_yaml(cfg), "source": source}
