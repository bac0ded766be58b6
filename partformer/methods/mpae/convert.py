"""Convert the authors' MPAE checkpoints into ``MPAEModel`` state dicts (strict).

Their files (``utils/save.py`` ``save_checkpoint``, ``Evaluation.py``): the released ``*.pth``
(``CUB_K16.pth``, ``CelebA_K16.pth``, ``PartImage_S_K50.pth``, ``PartImage_O_K50.pth``) and
``model_best.pth`` are a plain ``MPAE.state_dict()`` (Evaluation.py loads them with
``model.module.load_state_dict(torch.load(file))``); the training ``checkpoint.pth`` is a dict
with ``state_dict`` (keys prefixed ``module.`` by DataParallel), ``best_state_dict`` (no prefix),
``optimizer``, ``epoch``, ``perf``, ``model``. Both are read by
:func:`partformer.convert.load_official`.

Key mapping (theirs -> ours). Every key of theirs is consumed by exactly one rule, every key of
ours is filled, shapes are checked; anything else stops the conversion with a list:

==========================================  =================================================
``backbone1.cls_token`` + ``pos_embed[:, :1]``  ``encoder.model.cls_token`` (timm keeps no class
                                            position; DINOv2 adds it to the class token)
``backbone1.pos_embed[:, 1:]``              ``encoder.model.pos_embed`` (37x37 grid kept)
``backbone1.register_tokens``               ``encoder.model.reg_token``
``backbone1.mask_token``                    dropped (DINOv2's iBOT mask token, unused)
``backbone1.<rest>``                        ``encoder.model.<rest>`` (same block names)
``compress_layer.weight``                   ``compress.0.weight``
``Transformer.conv1.weight``                ``part_vit.patch_embed.weight``
``Transformer.class_embedding``             ``part_vit.part_tokens``
``Transformer.pos_embed``                   ``part_vit.pos_embed`` (trained: loaded)
``Transformer.ln_pre`` / ``ln_post`` / ``proj``   ``part_vit.norm_pre`` / ``norm_post`` / ``proj``
``Transformer.transformer.resblocks.<i>``   ``part_vit.blocks.<i>`` (``ln_1`` -> ``norm1``,
                                            ``ln_2`` -> ``norm2``, ``mlp.c_fc`` -> ``mlp.fc1``,
                                            ``mlp.c_proj`` -> ``mlp.fc2``, ``attn.*`` 1:1)
``Decoder.patch_embed.proj.*``              ``decoder.patch_embed.*``
``Decoder.<blocks, norm, decoder_*>``       ``decoder.<same>``
``Decoder.pos_embed``, ``decoder_pos_embed``  not loaded: checked against our fixed sin-cos
``Decoder.cls_token``, ``Decoder.mask_token``, ``ArcMarginProduct.weight``
                                            dropped: parameters their forward never uses
==========================================  =================================================
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch

from partformer.methods.foreign import ConversionError, load_official
from partformer.fileio import sha256_file
from partformer.models.partformer_vit import sincos_pos_embed_2d

from .config import MPAEConfig, MPAEDecoderConfig, MPAEPartViTConfig

__all__ = ["ConversionError", "UNUSED_KEYS", "official_to_ours", "infer_config",
           "check_fixed_pos_embeds", "convert_state_dict", "convert_checkpoint", "detect_dataset"]

# parameters of their MPAE that no forward reads (never trained: their grads stay None)
UNUSED_KEYS = ("ArcMarginProduct.weight", "Decoder.cls_token", "Decoder.mask_token",
               "backbone1.mask_token")
# fixed sin-cos buffers (requires_grad=False parameters in their MAE): checked, not loaded
FIXED_KEYS = ("Decoder.pos_embed", "Decoder.decoder_pos_embed")
POS_EMBED_ATOL = 1e-5

_PREFIXES: List[Tuple[str, str]] = [
    ("compress_layer.weight", "compress.0.weight"),
    ("Transformer.conv1.", "part_vit.patch_embed."),
    ("Transformer.class_embedding", "part_vit.part_tokens"),
    ("Transformer.pos_embed", "part_vit.pos_embed"),
    ("Transformer.ln_pre.", "part_vit.norm_pre."),
    ("Transformer.ln_post.", "part_vit.norm_post."),
    ("Transformer.proj.", "part_vit.proj."),
    ("Transformer.transformer.resblocks.", "part_vit.blocks."),
    ("Decoder.patch_embed.proj.", "decoder.patch_embed."),
    ("Decoder.", "decoder."),
    ("backbone1.", "encoder.model."),
]
_BLOCK_NAMES = ((".ln_1.", ".norm1."), (".ln_2.", ".norm2."), (".mlp.c_fc.", ".mlp.fc1."),
                (".mlp.c_proj.", ".mlp.fc2."))


def official_to_ours(key: str) -> Optional[str]:
    """Our name for one of their keys by the renaming rules (``None``: no rule). The DINOv2
    class / position / register tokens and the dropped / fixed keys are handled separately."""
    for old, new in _PREFIXES:
        if key == old or (old.endswith(".") and key.startswith(old)):
            out = new + key[len(old):]
            if out.startswith("part_vit.blocks."):
                for a, b in _BLOCK_NAMES:
                    out = out.replace(a, b)
            return out
    return None


def _need(sd: Mapping[str, torch.Tensor], key: str, ndim: int) -> torch.Tensor:
    if key not in sd:
        raise ConversionError(f"missing key `{key}`: not an MPAE checkpoint of the authors' code")
    if sd[key].dim() != ndim:
        raise ConversionError(f"`{key}` has shape {tuple(sd[key].shape)}, expected {ndim} dims")
    return sd[key]


def _count(sd: Mapping[str, torch.Tensor], prefix: str) -> int:
    idx = {k[len(prefix):].split(".", 1)[0] for k in sd if k.startswith(prefix)}
    return len([i for i in idx if i.isdigit()])


def infer_config(sd: Mapping[str, torch.Tensor]) -> Tuple[MPAEConfig, int, int, Dict[str, Any]]:
    """``(mpae section, K, image size, encoder kwargs)`` from the shapes of their state dict: K from
    ``Transformer.class_embedding``, D from ``compress_layer.weight``, the image size from
    ``Decoder.pos_embed`` (g² tokens of 14 px), depths / widths / heads from the blocks.
    ``predict_upsample`` is not stored: their choice gives 128x128 maps (4 at 448 px, 8 at 224 px),
    so ``128 / g`` is used. The encoder kwargs are the timm arguments of the DINOv2 it holds
    (``img_size: 518`` and, for other sizes than ViT-B/14, its width and depth)."""
    parts = _need(sd, "Transformer.class_embedding", 3)
    compress = _need(sd, "compress_layer.weight", 4)
    dec_pos = _need(sd, "Decoder.pos_embed", 3)
    conv1 = _need(sd, "Transformer.conv1.weight", 4)
    pred = _need(sd, "Decoder.decoder_pred.weight", 2)
    L = dec_pos.shape[1]
    g = int(round(math.sqrt(L)))
    if g * g != L:
        raise ConversionError(f"`Decoder.pos_embed` has {L} tokens, not a square grid")
    patch = int(conv1.shape[-1])
    out_patch = int(round(math.sqrt(pred.shape[0] / 3)))
    width = int(conv1.shape[0])
    d_model = int(compress.shape[0])
    cfg = MPAEConfig(feature_dim=d_model,
                     predict_upsample=(128.0 / g) if 128 % g == 0 else 1.0)
    heads_pv = max(1, width // 32)  # not stored: their Get_vit uses 8 heads at width 256
    cfg.part_vit = MPAEPartViTConfig(
        patch_size=patch, width=width, depth=_count(sd, "Transformer.transformer.resblocks."),
        heads=8 if width == 256 else heads_pv,
        mlp_ratio=_need(sd, "Transformer.transformer.resblocks.0.mlp.c_fc.weight", 2).shape[0]
        / width)
    emb = int(_need(sd, "Decoder.patch_embed.proj.weight", 4).shape[0])
    cfg.decoder = MPAEDecoderConfig(
        patch_size=int(sd["Decoder.patch_embed.proj.weight"].shape[-1]), embed_dim=emb,
        depth=_count(sd, "Decoder.blocks."), num_heads=4 if emb == 256 else max(1, emb // 64),
        decoder_depth=_count(sd, "Decoder.decoder_blocks."), decoder_num_heads=d_model // 64,
        mlp_ratio=_need(sd, "Decoder.blocks.0.mlp.fc1.weight", 2).shape[0] / emb,
        out_patch=out_patch)
    # the DINOv2 ViT-B/14-reg of their code; other sizes (tests) from the shapes (heads: C / 64)
    encoder_kwargs: Dict[str, Any] = {"img_size": 518}
    enc_dim = int(_need(sd, "backbone1.pos_embed", 3).shape[-1])
    enc_depth = _count(sd, "backbone1.blocks.")
    if (enc_dim, enc_depth) != (768, 12):
        encoder_kwargs.update(embed_dim=enc_dim, depth=enc_depth, num_heads=max(1, enc_dim // 64))
    return cfg, int(parts.shape[1]) - 1, g * patch, encoder_kwargs


def check_fixed_pos_embeds(sd: Mapping[str, torch.Tensor], atol: float = POS_EMBED_ATOL
                           ) -> Dict[str, float]:
    """Their MAE's ``pos_embed`` / ``decoder_pos_embed`` against our sin-cos (MAE layout: first
    half of the channels the column, second half the row). Returns the max abs differences;
    raises when one exceeds ``atol``."""
    out = {}
    for key in FIXED_KEYS:
        t = _need(sd, key, 3)
        L, dim = t.shape[1], t.shape[2]
        g = int(round(math.sqrt(L)))
        ours = sincos_pos_embed_2d(dim, g, g)[None]
        diff = float((t.float() - ours).abs().max())
        if diff > atol:
            raise ConversionError(f"`{key}` differs from the fixed sin-cos embedding by {diff:.3g} "
                                  f"(> {atol}): not the authors' MaskedAutoencoderViT")
        out[key] = diff
    return out


def convert_state_dict(official: Mapping[str, torch.Tensor],
                       expected: Optional[Mapping[str, torch.Tensor]] = None
                       ) -> Dict[str, torch.Tensor]:
    """Their MPAE state dict (no ``module.`` prefix) -> an ``MPAEModel`` state dict.

    ``expected``: our model's ``state_dict()`` (or any mapping of key -> tensor with the right
    shapes); when given, every one of its keys must be produced with the same shape and nothing
    else. Without it only the consumption of their keys is checked.
    """
    sd = dict(official)
    out: Dict[str, torch.Tensor] = {}
    problems: List[str] = []
    consumed = set()

    # DINOv2 -> timm (no_embed_class ViT with registers)
    if "backbone1.pos_embed" in sd:
        pos = _need(sd, "backbone1.pos_embed", 3)
        cls = _need(sd, "backbone1.cls_token", 3)
        out["encoder.model.cls_token"] = cls + pos[:, :1]
        out["encoder.model.pos_embed"] = pos[:, 1:]
        consumed |= {"backbone1.pos_embed", "backbone1.cls_token"}
        if "backbone1.register_tokens" in sd:
            out["encoder.model.reg_token"] = sd["backbone1.register_tokens"]
            consumed.add("backbone1.register_tokens")

    check_fixed_pos_embeds(sd)
    consumed |= set(FIXED_KEYS)
    for key in UNUSED_KEYS:
        if key in sd:
            consumed.add(key)
        else:
            problems.append(f"missing key `{key}` (an unused parameter every MPAE checkpoint has)")

    for key, value in sd.items():
        if key in consumed:
            continue
        new = official_to_ours(key)
        if new is None:
            problems.append(f"unexpected key `{key}`: no rule maps it")
            continue
        if new in out:
            problems.append(f"`{key}` maps onto `{new}`, which another key already filled")
            continue
        out[new] = value
    if expected is not None:
        missing = sorted(set(expected) - set(out))
        extra = sorted(set(out) - set(expected))
        shapes = [f"{k}: converted {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
                  for k, v in out.items() if k in expected
                  and tuple(v.shape) != tuple(expected[k].shape)]
        if missing:
            problems.append(f"model keys not filled ({len(missing)}): {', '.join(missing[:20])}")
        if extra:
            problems.append(f"converted keys the model does not have ({len(extra)}): "
                            f"{', '.join(extra[:20])}")
        if shapes:
            problems.append(f"shape mismatches ({len(shapes)}): {'; '.join(shapes[:20])}"
                            + (" — build the encoder with img_size=518 (DINOv2's 37x37 grid)"
                               if any(s.startswith("encoder.model.pos_embed") for s in shapes)
                               else ""))
    if problems:
        raise ConversionError("cannot convert the MPAE checkpoint:\n  " + "\n  ".join(problems))
    return out


ENCODER_NAME = "vit_base_patch14_reg4_dinov2"


def detect_dataset(num_parts: int, image_size: int) -> Optional[str]:
    """Which published run a file with K parts at S px is (README "Train" commands): CUB is
    K = 16 at 448, CelebA K = 16 at 224; the two PartImageNet releases (K = 50) look alike."""
    from .config import PUBLISHED
    found = [d for d, p in PUBLISHED.items()
             if (p["num_parts"], p["image_size"]) == (num_parts, image_size)]
    return found[0] if len(found) == 1 else None


def convert_checkpoint(input_path: str, dataset: Optional[str] = None,
                       base_config: Optional[str] = None, overrides: Sequence[str] = (),
                       unsafe_load: bool = False) -> Dict[str, Any]:
    """Their file (plain state dict or training checkpoint) as one of our checkpoints
    ``{"model", "config", "source"}``: the sizes from the file (:func:`infer_config`), the data and
    evaluation settings from the benchmark config of ``dataset`` (``configs/<dataset>_mpae_k<K>.yaml``
    unless ``base_config``), the model rebuilt from it (random, not downloaded, encoder weights)
    and the converted state dict loaded strictly."""
    from partformer import config as cfglib
    from partformer.methods import build_method
    from partformer.statedict import load_state_dict_strict

    from .config import PUBLISHED

    sd, info = load_official(input_path, unsafe=unsafe_load)
    section, K, S, enc_kwargs = infer_config(sd)
    looks = detect_dataset(K, S)
    dataset = dataset or looks
    if dataset is None:
        raise ConversionError(f"{input_path}: K = {K} at {S} px is not one published MPAE run "
                              f"alone (K = 50 is PartImageNet Seg or OOD); pass --dataset one of "
                              f"{sorted(PUBLISHED)}")
    if dataset not in PUBLISHED:
        raise ConversionError(f"--dataset must be one of {sorted(PUBLISHED)}, got {dataset!r}")
    fixed = ("model.", "method.", "mpae.")
    bad = [o for o in overrides if o.split("=", 1)[0].strip().startswith(fixed)]
    if bad:
        raise ConversionError(f"overrides {bad}: the architecture is fixed by the checkpoint")
    path = base_config or os.path.join(cfglib.CONFIG_DIR, f"{dataset}_mpae_k{K}.yaml")
    if not os.path.isfile(path):
        path = os.path.join(cfglib.CONFIG_DIR, f"{dataset}_mpae_k{PUBLISHED[dataset]['num_parts']}.yaml")
    try:
        tree = cfglib.to_dict(cfglib.load_config(path, list(overrides)), "train")
    except cfglib.ConfigError as e:
        raise ConversionError(f"config error: {e}") from None
    tree["method"] = {"name": "mpae"}
    tree["model"] = {"num_parts": K, "encoder": {"name": ENCODER_NAME, "pretrained": False,
                                                 "weights": None, "frozen": True,
                                                 "kwargs": enc_kwargs}}
    tree["data"]["image_size"] = S
    section_tree = dataclasses.asdict(section)
    section_tree["loss"] = tree.get("mpae", {}).get("loss", section_tree["loss"])
    section_tree["augment"] = tree.get("mpae", {}).get("augment", section_tree["augment"])
    tree["mpae"] = section_tree
    tree["experiment"]["name"] = f"official_mpae_{dataset}_k{K}"
    cfg = cfglib.from_dict(tree)
    model = build_method(cfg).build_model(pretrained=False)
    converted = convert_state_dict(sd, model.state_dict())
    load_state_dict_strict(model, converted, source=f"converted {input_path}")
    source = dict(file=os.path.basename(input_path), sha256=sha256_file(input_path),
                  method="mpae", dataset=dataset, num_parts=K, image_size=S,
                  converter=CONVERTER, **info)
    return {"model": converted, "config": cfglib.to_yaml(cfg), "source": source}


CONVERTER = "partformer.methods.mpae.convert"
