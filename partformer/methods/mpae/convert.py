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
from typing import Any, Dict, List, Mapping, Optional, Tuple

import torch

from partformer.convert import ConversionError, load_official
from partformer.models.partformer_vit import sincos_pos_embed_2d

from .config import MPAEConfig, MPAEDecoderConfig, MPAEPartViTConfig

__all__ = ["ConversionError", "UNUSED_KEYS", "official_to_ours", "infer_config",
           "check_fixed_pos_embeds", "convert_state_dict", "convert_file"]

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


def infer_config(sd: Mapping[str, torch.Tensor]) -> MPAEConfig:
    """Model settings from the shapes of their state dict: K from ``Transformer.class_embedding``,
    D from ``compress_layer.weight``, the image size from ``Decoder.pos_embed`` (g² tokens of 14
    px), depths / widths / heads from the blocks. ``predict_upsample`` is not stored: their choice
    gives 128x128 maps (4 at 448 px, 8 at 224 px), so ``128 / g`` is used."""
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
    cfg = MPAEConfig(num_parts=int(parts.shape[1]) - 1, image_size=g * patch,
                     feature_dim=d_model,
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
    enc_dim = int(_need(sd, "backbone1.pos_embed", 3).shape[-1])
    enc_depth = _count(sd, "backbone1.blocks.")
    if (enc_dim, enc_depth) != (768, 12):
        cfg.encoder = dataclasses.replace(cfg.encoder, kwargs=dict(
            embed_dim=enc_dim, depth=enc_depth, num_heads=max(1, enc_dim // 64)))
    return cfg


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


def convert_file(input_path: str, output_path: Optional[str] = None,
                 unsafe: bool = False) -> Dict[str, Any]:
    """Read their file (plain state dict or training checkpoint), build an ``MPAEModel`` of the
    inferred configuration (random, not downloaded, encoder weights), convert strictly, and
    return (and save to ``output_path`` when given) ``{"method": "mpae", "model": state_dict,
    "mpae_config": dict, "source": {...}}``."""
    from .model import build_model

    sd, info = load_official(input_path, unsafe=unsafe)
    cfg = infer_config(sd)
    cfg.encoder = dataclasses.replace(cfg.encoder, pretrained=False)
    model = build_model(cfg)
    converted = convert_state_dict(sd, model.state_dict())
    model.load_state_dict(converted, strict=True)
    cfg.encoder = dataclasses.replace(cfg.encoder, pretrained=True)
    result = {"method": "mpae", "model": converted, "mpae_config": dataclasses.asdict(cfg),
              "source": {"file": os.path.basename(input_path), **info}}
    if output_path is not None:
        torch.save(result, output_path)
    return result
