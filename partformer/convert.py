"""Convert the authors' released PartFormer checkpoints (CUB, CelebA) into our checkpoint format.

The authors' files (docs/METHOD.md §4) come in two forms, both accepted:

- ``model_best.pth``: a plain state dict of their model (keys ``backbone1.*``, ``compress_layer.*``,
  ``Transformer.*``, ``Reconstruct_Block.*``, ``ArcMarginProduct.weight``, ``logit_scale``);
- ``checkpoint.pth``: a training dict ``{"state_dict": {"module." + key: ...}, "optimizer", "epoch",
  "perf"}`` (``module.`` from DataParallel).

The result is one of our checkpoints, ``{"model": state_dict, "config": yaml, "source": {...}}``,
which ``tools/eval.py --checkpoint`` loads without any other file: the stored config rebuilds the
model (``partformer.models.build_model``) and the state dict loads strictly.

Key mapping (official -> ours), applied in order; every official key must be consumed and every one
of our keys filled, with equal shapes, or the conversion stops with a list of what is wrong:

================================================  ==============================================
``backbone1.*``                                   ``encoder.model.*`` (timm ViT-S/8 names agree)
``compress_layer.<i>.*``                          ``compress.<i>.*``
``Reconstruct_Block.*``                           ``decoder.*``
``ArcMarginProduct.weight``                       ``arcface_weight``
``logit_scale``                                   ``logit_scale`` (unused by dot alignment)
``Transformer.conv1.*``                           ``partformer.patch_embed.*``
``Transformer.class_embedding``                   ``partformer.part_tokens``
``Transformer.ln_pre`` / ``ln_post`` / ``proj``   ``partformer.norm_pre`` / ``norm_post`` / ``proj``
``Transformer.transformer.resblocks.<i>.*``       ``partformer.blocks.<i>.*`` with ``ln_1`` ->
                                                  ``norm1``, ``ln_2`` -> ``norm2``, ``mlp.c_fc``
                                                  -> ``mlp.fc1``, ``mlp.c_proj`` -> ``mlp.fc2``
                                                  (``attn.in_proj_*`` / ``attn.out_proj.*`` 1:1)
``Transformer.pos_embed`` ``[1, K+1+N, W]``       not loaded: checked against our fixed sin-cos
                                                  embedding (see ``check_pos_embed``)
================================================  ==============================================

The encoder is configured with ``pos_embed_interp: dino_legacy`` (28x28 DINO grid resized on every
forward with a bicubic scale factor of ``(g + 0.1) / 28``, as the authors' DINO does) so that the
soft part maps match theirs; ``tests/test_convert.py`` checks this against an independent
functional re-implementation of their forward pass.
"""
from __future__ import annotations

import argparse
import math
import os
import re
import sys
import warnings
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from partformer import config as cfglib
from partformer.fileio import sha256_file

__all__ = [
    "ConversionError", "OFFICIAL_DATASETS", "load_official", "official_to_ours_key",
    "infer_num_parts", "detect_dataset", "check_pos_embed", "official_config",
    "convert_state_dict", "convert_checkpoint", "convert_file", "main",
]

OFFICIAL_DATASETS = ("cub", "celeba")
ENCODER_NAME = "vit_small_patch8_224.dino"
# the part-token ViT sees the view downsampled x0.5 (docs/METHOD.md §1.3)
PARTFORMER_IN_SCALE = 0.5
# tolerance for the stored sin-cos embedding vs ours (float32 rounding of the same formula)
POS_EMBED_ATOL = 1e-5

# where the BatchNorm layers of the compress head sit (docs/METHOD.md §1.2)
_COMPRESS_BN = {"cub": (2, 5), "celeba": (1, 4)}

# official name -> ours: a key that starts with the left prefix (or equals it, for names without a
# trailing dot) gets the right one instead; in the part-token ViT's blocks, the inner names are
# renamed too. The inverse (for error messages) is the same table read right to left.
_NAMES: List[Tuple[str, str]] = [
    ("backbone1.", "encoder.model."),
    ("compress_layer.", "compress."),
    ("Reconstruct_Block.", "decoder."),
    ("ArcMarginProduct.weight", "arcface_weight"),
    ("logit_scale", "logit_scale"),
    ("Transformer.conv1.", "partformer.patch_embed."),
    ("Transformer.class_embedding", "partformer.part_tokens"),
    ("Transformer.ln_pre.", "partformer.norm_pre."),
    ("Transformer.ln_post.", "partformer.norm_post."),
    ("Transformer.proj.", "partformer.proj."),
    ("Transformer.transformer.resblocks.", "partformer.blocks."),
]
_BLOCK_NAMES: List[Tuple[str, str]] = [
    (".ln_1.", ".norm1."), (".ln_2.", ".norm2."), (".mlp.c_fc.", ".mlp.fc1."),
    (".mlp.c_proj.", ".mlp.fc2."),
]
_BLOCKS = ("Transformer.transformer.resblocks.", "partformer.blocks.")
POS_EMBED_KEY = "Transformer.pos_embed"


class ConversionError(ValueError):
    """The file is not an official PartFormer checkpoint we can convert; the message says why."""


# ------------------------------------------------------------------------------------ reading
def _numpy_safe_globals() -> List[Any]:
    """numpy scalar / dtype reconstructors: harmless, and what a ``perf`` value computed with numpy
    pickles to. Allow-listed for ``weights_only`` loading (PyTorch's documented mechanism)."""
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        return []
    out: List[Any] = [np.dtype]
    for mod in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            m = __import__(mod, fromlist=["scalar"])
            out.append(m.scalar)
            break
        except (ImportError, AttributeError):
            continue
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        out += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")]
    return out


def _torch_load(path: str, unsafe: bool) -> Any:
    if unsafe:
        warnings.warn(f"--unsafe-load: reading {path} with weights_only=False, which can run "
                      "arbitrary code from the file; do this only for files from a trusted source",
                      stacklevel=3)
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - classified below
        first = e
    msg = str(first)
    if "Unsupported global" not in msg:
        raise ConversionError(
            f"cannot read {path} ({type(first).__name__}: {_first_line(msg)}). The file is "
            "truncated, corrupt or not a torch checkpoint; download it again and compare its "
            "size / checksum with the authors' release.") from None
    # a non-tensor object (often a numpy scalar in `perf`): retry with numpy scalars allowed
    safe_globals = getattr(torch.serialization, "safe_globals", None)
    if safe_globals is not None:
        try:
            with safe_globals(_numpy_safe_globals()):
                return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001
            msg = str(e)
    found = re.findall(r"Unsupported global: GLOBAL ([\w.]+)", msg)
    raise ConversionError(
        f"{path} holds Python objects that torch.load(weights_only=True) refuses "
        f"({', '.join(sorted(set(found))) or _first_line(msg)}); the authors' files should hold "
        "only tensors and numbers (their training checkpoint's `perf` / `optimizer` entries are "
        "the usual culprits). If you trust the file, rerun with --unsafe-load "
        "(weights_only=False: the file can then run arbitrary code).") from None


def _first_line(msg: str) -> str:
    lines = [ln.strip() for ln in msg.splitlines() if ln.strip()]
    for ln in lines:  # torch puts the useful part after a long preamble
        if "error" in ln.lower() and len(ln) < 300:
            return ln
    return (lines[0] if lines else "")[:300]


def _plain(v: Any) -> Any:
    """A value made YAML / weights_only friendly (numbers stay numbers, the rest becomes str)."""
    if isinstance(v, (bool, int, float, str)) or v is None:
        return v
    if torch.is_tensor(v):
        return v.item() if v.numel() == 1 else v.tolist()
    if hasattr(v, "item") and callable(v.item):  # numpy scalar
        try:
            return v.item()
        except Exception:  # noqa: BLE001
            pass
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return str(v)


def load_official(path: str, unsafe: bool = False,
                  ) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """Read an official file -> ``(state_dict without prefix, info)``.

    ``info``: ``format`` (``model_best`` = plain state dict | ``training_checkpoint``), and for the
    latter ``epoch`` / ``perf`` when present.
    """
    if not os.path.isfile(path):
        raise ConversionError(f"input file not found: {path}")
    obj = _torch_load(path, unsafe)
    if not isinstance(obj, Mapping):
        raise ConversionError(f"{path} holds a {type(obj).__name__}; expected the authors' "
                              "state dict (model_best.pth) or training dict (checkpoint.pth)")
    info: Dict[str, Any] = {}
    if isinstance(obj.get("state_dict"), Mapping):
        info["format"] = "training_checkpoint"
        for k in ("epoch", "perf"):
            if k in obj:
                info[k] = _plain(obj[k])
        sd = obj["state_dict"]
    elif "model" in obj and "config" in obj:
        raise ConversionError(f"{path} is already one of our checkpoints (it has `model` and "
                              "`config`); pass it to tools/eval.py --checkpoint directly")
    else:
        info["format"] = "model_best"
        sd = obj
    bad = [k for k, v in sd.items() if not torch.is_tensor(v)]
    if bad:
        top = ", ".join(sorted(map(str, obj.keys()))[:10])
        raise ConversionError(f"{path}: not a state dict of tensors (non-tensor entries: "
                              f"{', '.join(map(str, bad[:10]))}; top-level keys: {top})")
    keys = list(sd.keys())
    if keys and all(k.startswith("module.") for k in keys):
        sd = {k[len("module."):]: v for k, v in sd.items()}
        info["prefix"] = "module."
    elif any(k.startswith("module.") for k in keys):
        raise ConversionError(f"{path}: some keys start with `module.` and some do not; "
                              "expected all (DataParallel) or none")
    return dict(sd), info


# ---------------------------------------------------------------------------------- inspection
def _rename(key: str, names: Sequence[Tuple[str, str]], blocks: str,
            block_names: Sequence[Tuple[str, str]]) -> Optional[str]:
    """``key`` renamed by the first matching ``(old, new)`` of ``names`` (a prefix ending in a dot,
    else the whole name); inside ``blocks`` the ``block_names`` too. ``None``: no rule matches."""
    for old, new in names:
        if key == old or (old.endswith(".") and key.startswith(old)):
            out = new + key[len(old):]
            if out.startswith(blocks):
                for b_old, b_new in block_names:
                    out = out.replace(b_old, b_new)
            return out
    return None


def official_to_ours_key(key: str) -> Optional[str]:
    """Our parameter name for an official key; ``None`` for ``Transformer.pos_embed`` (checked,
    not loaded) and for keys no rule knows (reported as unexpected)."""
    if key == POS_EMBED_KEY:
        return None
    return _rename(key, _NAMES, _BLOCKS[1], _BLOCK_NAMES)


def ours_to_official_key(key: str) -> str:
    """The official name of one of our parameters (the rules of :func:`official_to_ours_key` read
    backwards; for error messages); the key itself when no rule covers it."""
    flip = [(new, old) for old, new in _NAMES]
    return _rename(key, flip, _BLOCKS[0], [(n, o) for o, n in _BLOCK_NAMES]) or key


def _need(sd: Mapping[str, torch.Tensor], key: str, ndim: int) -> torch.Tensor:
    if key not in sd:
        raise ConversionError(f"missing key `{key}`: this does not look like an official "
                              "PartFormer CUB / CelebA checkpoint")
    t = sd[key]
    if t.dim() != ndim:
        raise ConversionError(f"`{key}` has shape {tuple(t.shape)}, expected {ndim} dims")
    return t


def infer_num_parts(sd: Mapping[str, torch.Tensor]) -> int:
    """K from ``ArcMarginProduct.weight`` ``[K, D]`` and ``Transformer.class_embedding``
    ``[1, K+1, W]``, which must agree."""
    k_arc = int(_need(sd, "ArcMarginProduct.weight", 2).shape[0])
    k_tok = int(_need(sd, "Transformer.class_embedding", 3).shape[1]) - 1
    if k_arc != k_tok:
        raise ConversionError(f"inconsistent number of parts: ArcMarginProduct.weight has "
                              f"{k_arc} rows (K) but Transformer.class_embedding has {k_tok + 1} "
                              f"tokens (K+1 = {k_arc + 1} expected)")
    if k_arc < 1:
        raise ConversionError("ArcMarginProduct.weight has no rows")
    return k_arc


def detect_dataset(sd: Mapping[str, torch.Tensor]) -> Optional[str]:
    """``cub`` / ``celeba`` from where the compress head's BatchNorms sit (conv, ReLU, BN vs conv,
    BN, ReLU); ``None`` when neither pattern is there."""
    found = [name for name, idx in _COMPRESS_BN.items()
             if all(f"compress_layer.{i}.running_mean" in sd for i in idx)]
    return found[0] if len(found) == 1 else None


def _infer_image_size(sd: Mapping[str, torch.Tensor], num_parts: int) -> int:
    pe = _need(sd, POS_EMBED_KEY, 3)
    patch = int(_need(sd, "Transformer.conv1.weight", 4).shape[-1])
    n = int(pe.shape[1]) - (num_parts + 1)
    g = int(round(math.sqrt(max(n, 0))))
    if n <= 0 or g * g != n:
        raise ConversionError(f"{POS_EMBED_KEY} has {pe.shape[1]} rows: expected K+1 = "
                              f"{num_parts + 1} part-token rows plus a square patch grid")
    size = g * patch / PARTFORMER_IN_SCALE
    return int(round(size))


def check_pos_embed(pos_embed: torch.Tensor, num_parts: int,
                    atol: float = POS_EMBED_ATOL) -> Tuple[str, float, torch.Tensor]:
    """Compare the official fixed embedding ``[1, K+1+N, W]`` with ours.

    Returns ``(layout, max_abs_diff, part_rows)``: the ``sincos_layout`` of ``PartTokenViT`` that
    matches the patch rows (``mae`` = column first, or ``yx``) and the K+1 part-token rows (zeros in
    the authors' model). Raises ``ConversionError`` when the patch rows match no layout.
    """
    from partformer.models.partformer_vit import SINCOS_LAYOUTS, sincos_pos_embed_2d

    pe = pos_embed.detach().float().cpu()[0]
    part_rows, patch_rows = pe[:num_parts + 1], pe[num_parts + 1:]
    n, width = patch_rows.shape
    g = int(round(math.sqrt(n)))
    diffs = {}
    for layout in SINCOS_LAYOUTS:
        ours = sincos_pos_embed_2d(width, g, g, layout=layout)
        diffs[layout] = float((ours - patch_rows).abs().max())
    best = min(diffs, key=diffs.get)
    if diffs[best] > atol:
        raise ConversionError(
            f"{POS_EMBED_KEY}[0, K+1:] (the patch rows, {g}x{g} grid, width {width}) matches none "
            f"of our fixed 2-D sin-cos layouts (max abs difference: "
            + ", ".join(f"{k} {v:.3g}" for k, v in diffs.items())
            + f"; tolerance {atol:g}). The converted model would not reproduce the authors' part "
            "maps: the embedding layout of partformer/models/partformer_vit.py must be extended "
            "to this one first.")
    return best, diffs[best], part_rows


# --------------------------------------------------------------------------------------- config
def _default_base_config(dataset: str, num_parts: int) -> str:
    for name in (f"{dataset}_k{num_parts}.yaml", os.path.join("_base_", f"{dataset}.yaml")):
        path = os.path.join(cfglib.CONFIG_DIR, name)
        if os.path.isfile(path):
            return path
    raise ConversionError(
        f"no config for dataset {dataset!r} found in {cfglib.CONFIG_DIR} (looked for "
        f"{dataset}_k{num_parts}.yaml and _base_/{dataset}.yaml); pass --config with the "
        "benchmark config (data.name, data.root, splits) to store in the converted checkpoint")


def official_config(dataset: str, num_parts: int, image_size: int = 256,
                    base_config: Optional[str] = None,
                    overrides: Optional[Sequence[str]] = None,
                    sincos_layout: str = "mae") -> cfglib.Config:
    """Our resolved config for an official model: the benchmark config of ``dataset`` (data, loss,
    evaluation settings; ``configs/<dataset>_k<K>.yaml`` or ``configs/_base_/<dataset>.yaml`` unless
    ``base_config`` is given) with every architecture field set to the authors' model
    (docs/METHOD.md §1: DINO ViT-S/8 with the legacy position-grid resize, compress 384 -> 256 ->
    128 -> 64, part-token ViT width 256, depth 6, 8 heads, patch 16 on the x0.5 view; decoder 5
    blocks)."""
    if dataset not in OFFICIAL_DATASETS:
        raise ConversionError(f"dataset must be one of {OFFICIAL_DATASETS}, got {dataset!r}")
    bad = [o for o in overrides or [] if o.split("=", 1)[0].strip().startswith("model.")]
    if bad:
        raise ConversionError(f"overrides {bad}: the model section is fixed by the official "
                              "checkpoint; only data.* / eval.* / experiment.* can be overridden")
    path = base_config or _default_base_config(dataset, num_parts)
    try:
        cfg = cfglib.load_config(path, list(overrides or []))
    except cfglib.ConfigError as e:
        raise ConversionError(f"config error: {e}") from None
    tree = cfglib.to_dict(cfg)
    partformer = dict(in_scale=0.5, patch_size=16, width=256, depth=6, heads=8, mlp_ratio=4.0)
    if sincos_layout != "mae":
        # PartTokenViT supports it; the config schema must carry it for the model to rebuild
        partformer["sincos_layout"] = sincos_layout
    tree["model"] = dict(
        num_parts=int(num_parts), feature_dim=64, compress=dataset,
        compress_hidden=[256, 128], alignment="dot", align_scale=0.8,
        predict_upsample=4, half_resample="nearest",   # their F.interpolate(x, scale_factor=0.5)
        encoder=dict(name=ENCODER_NAME, pretrained=False, weights=None, frozen=True, layer=None,
                     kwargs={"pos_embed_interp": "dino_legacy"}),
        partformer=partformer,
        decoder=dict(channels=64, num_blocks=5, upsample_after=[2, 4]),
    )
    tree["data"]["image_size"] = int(image_size)
    tree["experiment"]["name"] = f"official_{dataset}_k{num_parts}"
    try:
        return cfglib.from_dict(tree)
    except cfglib.ConfigError as e:
        raise ConversionError(
            f"the config schema cannot express the official model ({e}). The stored "
            f"{POS_EMBED_KEY} uses the {sincos_layout!r} sin-cos layout: add `sincos_layout: str = "
            "'mae'` to partformer.config.PartTokenConfig.") from None


# ----------------------------------------------------------------------------------- conversion
def convert_state_dict(official: Mapping[str, torch.Tensor],
                       target: Mapping[str, torch.Tensor], num_parts: int,
                       source: str = "official checkpoint",
                       ) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """Map an official state dict (no ``module.`` prefix) onto ``target`` (our model's state dict,
    meta tensors are fine: only names, shapes and dtypes are read).

    Returns ``(state_dict, report)``; raises ``ConversionError`` listing every missing, unexpected
    and mis-shaped key. Floating tensors are cast to our dtype; values are cloned.
    """
    out: Dict[str, torch.Tensor] = {}
    origin: Dict[str, str] = {}
    unexpected: List[str] = []
    duplicates: List[str] = []
    report: Dict[str, Any] = {}
    for key, value in official.items():
        if key == POS_EMBED_KEY:
            continue
        new = official_to_ours_key(key)
        if new is None or new not in target:
            unexpected.append(key if new is None else f"{key} (-> {new})")
            continue
        if new in out:
            duplicates.append(f"{origin[new]} and {key} -> {new}")
            continue
        out[new] = value
        origin[new] = key
    missing = sorted(k for k in target if k not in out)
    shapes = [f"{origin[k]} {tuple(v.shape)} -> {k} {tuple(target[k].shape)}"
              for k, v in out.items() if tuple(v.shape) != tuple(target[k].shape)]
    if POS_EMBED_KEY not in official:
        missing_pe = [POS_EMBED_KEY]
    else:
        missing_pe = []
    if missing or unexpected or shapes or duplicates or missing_pe:
        lines = [f"{source} does not match the PartFormer model (K = {num_parts}):"]
        if missing or missing_pe:
            names = missing_pe + [f"{ours_to_official_key(k)} (our {k})" for k in missing]
            lines.append(f"missing keys ({len(names)}): " + ", ".join(names))
        if unexpected:
            lines.append(f"unexpected keys ({len(unexpected)}): " + ", ".join(sorted(unexpected)))
        if shapes:
            lines.append(f"shape mismatches ({len(shapes)}): " + "; ".join(shapes))
        if duplicates:
            lines.append("keys mapping onto the same parameter: " + "; ".join(duplicates))
        raise ConversionError("\n".join(lines))

    layout, diff, part_rows = check_pos_embed(official[POS_EMBED_KEY], num_parts)
    report.update(pos_embed_layout=layout, pos_embed_max_abs_diff=diff)
    if float(part_rows.abs().max()) > 0:
        # the embedding is added to the tokens before ln_pre and nowhere else: folding the rows
        # into the part tokens is exact at inference
        warnings.warn(f"{POS_EMBED_KEY}: the {num_parts + 1} part-token rows are not zero (max "
                      f"|v| {float(part_rows.abs().max()):.3g}); folded into part_tokens",
                      stacklevel=2)
        out["partformer.part_tokens"] = out["partformer.part_tokens"] + part_rows[None].to(
            out["partformer.part_tokens"].dtype)
        report["pos_embed_part_rows_folded"] = True

    converted = {}
    for k, v in out.items():
        t = target[k]
        v = v.detach()
        if v.is_floating_point() and t.is_floating_point():
            v = v.to(t.dtype)
        elif v.dtype != t.dtype:
            raise ConversionError(f"{origin.get(k, k)}: dtype {v.dtype}, expected {t.dtype}")
        converted[k] = v.clone().contiguous()
    return converted, report


def convert_file(input_path: str, output_path: str, dataset: str,
                 base_config: Optional[str] = None, overrides: Optional[Sequence[str]] = None,
                 unsafe_load: bool = False, overwrite: bool = False) -> Dict[str, Any]:
    """Convert ``input_path`` (an official file) into our checkpoint at ``output_path``.

    Returns the written checkpoint's ``source`` dict (plus ``output``). The config is the benchmark
    config of ``dataset`` (or ``base_config``) with the authors' architecture and K inferred from
    the file; the model is rebuilt from it and loaded strictly before anything is written.
    """
    from partformer.engine.checkpoint import atomic_torch_save

    if dataset not in OFFICIAL_DATASETS:
        raise ConversionError(f"--dataset must be one of {OFFICIAL_DATASETS}, got {dataset!r}")
    if os.path.exists(output_path) and not overwrite:
        raise ConversionError(f"{output_path} exists; pass --overwrite to replace it")
    if os.path.abspath(output_path) == os.path.abspath(input_path):
        raise ConversionError("--output must differ from --input")
    ckpt = convert_checkpoint(input_path, dataset, base_config, overrides, unsafe_load)
    atomic_torch_save(ckpt, output_path)
    return dict(ckpt["source"], output=output_path)


def convert_checkpoint(input_path: str, dataset: Optional[str] = None,
                       base_config: Optional[str] = None, overrides: Optional[Sequence[str]] = None,
                       unsafe_load: bool = False) -> Dict[str, Any]:
    """Convert an official file in memory -> our checkpoint dict ``{"model", "config", "source"}``
    (what :func:`convert_file` writes; ``partformer.load`` uses it to read the authors' files on
    the fly). ``dataset`` (``cub`` / ``celeba``) defaults to the one the compress head shows."""
    from partformer.engine.checkpoint import load_state_dict_strict
    from partformer.models import build_model

    official, info = load_official(input_path, unsafe=unsafe_load)
    if dataset is None:
        dataset = detect_dataset(official) or "cub"  # unrecognised: the check below explains

    num_parts = infer_num_parts(official)
    looks_like = detect_dataset(official)
    if looks_like is None:
        raise ConversionError(
            f"{input_path}: cannot recognise the compress head (BatchNorm statistics expected at "
            "compress_layer.2/.5 for CUB or compress_layer.1/.4 for CelebA); keys found: "
            + ", ".join(sorted(k for k in official if k.startswith("compress_layer."))[:20]))
    if looks_like != dataset:
        raise ConversionError(
            f"{input_path} has the {looks_like} compress head (BatchNorm at compress_layer."
            f"{_COMPRESS_BN[looks_like][0]}), but --dataset {dataset} was given (BatchNorm at "
            f"compress_layer.{_COMPRESS_BN[dataset][0]}); use --dataset {looks_like}")
    image_size = _infer_image_size(official, num_parts)
    if image_size != 256:
        warnings.warn(f"the part-token grid implies {image_size}x{image_size} inputs (the authors' "
                      "models use 256)", stacklevel=2)
    layout, _, _ = check_pos_embed(_need(official, POS_EMBED_KEY, 3), num_parts)

    # only K and the image size are read from the file; every other size is the authors'
    # architecture, so a file missing whole blocks fails the key check instead of shrinking
    # the model
    cfg = official_config(dataset, num_parts, image_size=image_size, base_config=base_config,
                          overrides=overrides, sincos_layout=layout)
    model = build_model(cfg.model, image_size=cfg.data.image_size)
    state, report = convert_state_dict(official, model.state_dict(), num_parts, source=input_path)
    load_state_dict_strict(model, state, source=f"converted {input_path}")  # what eval.py does

    source = dict(file=os.path.basename(input_path), sha256=sha256_file(input_path),
                  dataset=dataset,
                  num_parts=num_parts, image_size=image_size, converter="partformer.convert",
                  **info, **report)
    return {"model": state, "config": cfglib.to_yaml(cfg), "source": source}


# ------------------------------------------------------------------------------------------ CLI
def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="convert_official.py",
        description="Convert the authors' released PartFormer checkpoint (model_best.pth or "
                    "checkpoint.pth; CUB or CelebA) into a partformer checkpoint for "
                    "tools/eval.py --checkpoint. K and the image size are read from the file.")
    p.add_argument("--dataset", required=True, choices=OFFICIAL_DATASETS,
                   help="which official model: picks the compress-head order and the benchmark "
                        "config stored in the output (checked against the file)")
    p.add_argument("--input", required=True, help="the authors' model_best.pth or checkpoint.pth")
    p.add_argument("--output", required=True, help="converted checkpoint to write (.pt)")
    p.add_argument("--config", default=None,
                   help="benchmark config for data / eval settings (default: "
                        "configs/<dataset>_k<K>.yaml, else configs/_base_/<dataset>.yaml)")
    p.add_argument("overrides", nargs="*", default=[],
                   help="dotted overrides of the stored config, e.g. data.root=/data/CUB_200_2011 "
                        "(model.* is fixed by the file)")
    p.add_argument("--unsafe-load", action="store_true",
                   help="read the input with torch.load(weights_only=False); only for trusted "
                        "files that hold non-tensor Python objects")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --output")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    from partformer.engine.checkpoint import CheckpointError

    args = build_parser().parse_args(argv)
    try:
        src = convert_file(args.input, args.output, args.dataset, base_config=args.config,
                           overrides=args.overrides, unsafe_load=args.unsafe_load,
                           overwrite=args.overwrite)
    except (ConversionError, CheckpointError) as e:
        if args.debug:
            raise
        print(f"conversion failed: {e}", file=sys.stderr)
        return 2  # the exit status of every CLI's expected errors
    extra = "".join(f", {k} {src[k]}" for k in ("epoch", "perf") if k in src)
    print(f"converted {args.input} ({src['format']}{extra}; sha256 {src['sha256'][:16]}...)\n"
          f"  dataset {src['dataset']}, K = {src['num_parts']}, image size {src['image_size']}, "
          f"sin-cos layout {src['pos_embed_layout']} (max abs diff "
          f"{src['pos_embed_max_abs_diff']:.2g})\n"
          f"  wrote {args.output}\n"
          f"evaluate with: python tools/eval.py --checkpoint {args.output}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
