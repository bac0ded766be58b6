"""Convert the authors' released PartFormer checkpoints (CUB, CelebA) into our checkpoint format.

The authors' files (docs/METHOD.md §4) come in two forms, both accepted:

- ``model_best.pth``: a plain state dict of their model (keys ``backbone1.*``, ``compress_layer.*``,
  ``Transformer.*``, ``Reconstruct_Block.*``, ``ArcMarginProduct.weight``, ``logit_scale``);
- ``checkpoint.pth``: a training dict ``{"state_dict": {"module." + key: ...}, "optimizer", "epoch",
  "perf"}`` (``module.`` from DataParallel).

The result is one of our checkpoints, ``{"model": state_dict, "config": yaml, "source": {...}}``,
which ``tools/eval.py --model`` loads without any other file: the stored config rebuilds the
model (the PartFormer method's ``build_model``) and the state dict loads strictly.

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

import math
import os
import warnings
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from partformer import config as cfglib
from partformer.fileio import sha256_file
from partformer.methods.foreign import ConversionError, load_official

__all__ = [
    "ConversionError", "OFFICIAL_DATASETS", "load_official", "official_to_ours_key",
    "infer_num_parts", "detect_dataset", "check_pos_embed", "official_config",
    "convert_state_dict", "convert_checkpoint",
]

OFFICIAL_DATASETS = ("cub", "celeba")
# recorded as `source.converter` in converted checkpoints (older ones say "partformer.convert")
CONVERTER = "partformer.methods.partformer.convert"
CONVERTERS = (CONVERTER, "partformer.convert")
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
    fixed = ("model.", "method.", "partformer.")
    bad = [o for o in overrides or [] if o.split("=", 1)[0].strip().startswith(fixed)]
    if bad:
        raise ConversionError(f"overrides {bad}: the architecture is fixed by the official "
                              "checkpoint; only data.* / eval.* / experiment.* / train.* can be "
                              "overridden")
    path = base_config or _default_base_config(dataset, num_parts)
    try:
        cfg = cfglib.load_config(path, list(overrides or []))
    except cfglib.ConfigError as e:
        raise ConversionError(f"config error: {e}") from None
    tree = cfglib.to_dict(cfg)
    vit = dict(in_scale=0.5, patch_size=16, width=256, depth=6, heads=8, mlp_ratio=4.0)
    if sincos_layout != "mae":
        # PartTokenViT supports it; the config schema must carry it for the model to rebuild
        vit["sincos_layout"] = sincos_layout
    tree["model"] = dict(
        num_parts=int(num_parts),
        encoder=dict(name=ENCODER_NAME, pretrained=False, weights=None, frozen=True, layer=None,
                     kwargs={"pos_embed_interp": "dino_legacy"}))
    tree["method"] = {"name": "partformer"}
    section = dict(tree.get("partformer") or {})
    section.update(
        feature_dim=64, compress=dataset, compress_hidden=[256, 128], alignment="dot",
        align_scale=0.8, predict_upsample=4,
        half_resample="nearest",   # their F.interpolate(x, scale_factor=0.5)
        vit=vit, decoder=dict(channels=64, num_blocks=5, upsample_after=[2, 4]))
    tree["partformer"] = section
    tree["data"]["image_size"] = int(image_size)
    tree["experiment"]["name"] = f"official_{dataset}_k{num_parts}"
    try:
        return cfglib.from_dict(tree)
    except cfglib.ConfigError as e:
        raise ConversionError(
            f"the config schema cannot express the official model ({e}). The stored "
            f"{POS_EMBED_KEY} uses the {sincos_layout!r} sin-cos layout: add `sincos_layout: str = "
            "'mae'` to partformer.methods.partformer.config.PartTokenConfig.") from None


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


def convert_checkpoint(input_path: str, dataset: Optional[str] = None,
                       base_config: Optional[str] = None, overrides: Optional[Sequence[str]] = None,
                       unsafe_load: bool = False) -> Dict[str, Any]:
    """Convert an official file in memory -> our checkpoint dict ``{"model", "config", "source"}``
    (what ``tools/convert_official.py`` writes; ``partformer.load`` uses it to read the authors'
    files on the fly). ``dataset`` (``cub`` / ``celeba``) defaults to the one the compress head
    shows."""
    from partformer.statedict import load_state_dict_strict
    from partformer.methods import build_method

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
    model = build_method(cfg).build_model(pretrained=False)
    state, report = convert_state_dict(official, model.state_dict(), num_parts, source=input_path)
    load_state_dict_strict(model, state, source=f"converted {input_path}")  # what eval.py does

    source = dict(file=os.path.basename(input_path), sha256=sha256_file(input_path),
                  dataset=dataset, method="partformer",
                  num_parts=num_parts, image_size=image_size, converter=CONVERTER,
                  **info, **report)
    return {"model": state, "config": cfglib.to_yaml(cfg), "source": source}
