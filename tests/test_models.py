"""Tests of partformer.models: tiny configs, CPU, no network."""
from __future__ import annotations

import dataclasses
import math
import os
import re
from typing import Any, Dict, List, Optional

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest
import torch
import torch.nn.functional as F

from partformer.methods.partformer import PartFormerModel
from partformer.models import (CompressHead, FeatureMapEncoder, PartTokenViT, QuickGELU,
                               ReconstructionDecoder, sincos_pos_embed_2d)
from partformer.models.partformer_vit import FusedSelfAttention

torch.set_num_threads(1)

OUT_KEYS = {"part_tokens1", "part_tokens2", "feature_map1", "feature_map2", "assign12", "assign21",
            "recon2", "recon1", "target2", "target1", "arcface_weight"}

# tiny encoders: (timm kwargs, patch size)
ENC_P16 = dict(name="vit_tiny_patch16_224", depth=1, embed_dim=32, num_heads=2)
ENC_P8 = dict(name="vit_small_patch8_224.dino", depth=1, embed_dim=32, num_heads=2)
ENC_REG = dict(name="vit_small_patch14_reg4_dinov2", depth=1, embed_dim=48, num_heads=2)
TINY_PF = dict(patch_size=8, width=32, depth=1, heads=2)


def tiny_model(num_parts=4, image_size=64, encoder=None, **kw) -> PartFormerModel:
    torch.manual_seed(0)
    args = dict(num_parts=num_parts, image_size=image_size, encoder=dict(encoder or ENC_P16),
                compress_hidden=(32, 16), feature_dim=16, vit=dict(TINY_PF),
                decoder=dict(channels=16))
    args.update(kw)
    return PartFormerModel(**args)


def views(b=2, s=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(b, 3, s, s, generator=g), torch.rand(b, 3, s, s, generator=g)


# ------------------------------------------------------------------------------------ shapes
@pytest.mark.parametrize("num_parts,size,enc,patch", [
    (2, 64, ENC_P16, 16),
    (4, 96, ENC_P8, 8),
    (8, 128, ENC_P16, 16),
    (4, 56, ENC_REG, 14),   # DINOv2 with 4 registers; 56 * 0.5 = 28 is not a multiple of 8
])
def test_forward_shapes(num_parts, size, enc, patch):
    model = tiny_model(num_parts, size, enc)
    v1, v2 = views(2, size)
    out = model(v1, v2)
    assert set(out) == OUT_KEYS
    K1, h = num_parts + 1, size // patch
    assert model.encoder.feature_size((size, size)) == (h, h)
    for i in (1, 2):
        assert out[f"part_tokens{i}"].shape == (2, K1, 16)
        assert out[f"feature_map{i}"].shape == (2, 16, h, h)   # h*w tokens: prefix tokens dropped
        assert out[f"recon{i}"].shape == (2, 3, 4 * h, 4 * h)
        assert out[f"target{i}"].shape == (2, 3, 4 * h, 4 * h)
    for key in ("assign12", "assign21"):
        assert out[key].shape == (2, K1, h, h)
        torch.testing.assert_close(out[key].sum(1), torch.ones(2, h, h))
    assert out["arcface_weight"].shape == (num_parts, 16)
    assert out["arcface_weight"] is model.arcface_weight


def test_register_tokens_dropped():
    enc = FeatureMapEncoder(**ENC_REG, img_size=56)
    assert enc.num_prefix_tokens == 5  # cls + 4 registers
    x = torch.randn(1, 3, 70, 84)
    fmap = enc(x)
    assert fmap.shape == (1, 48, 5, 6)
    tokens = enc.model.forward_features(x)
    assert tokens.shape[1] == 5 + 30
    torch.testing.assert_close(fmap.flatten(2).transpose(1, 2), tokens[:, 5:])


def test_targets_are_normalised_resized_views():
    """Default (partformer.half_resample=nearest): the target at the decoder's output size is the
    normalised view sampled at the top-left pixel of every 2x2 / 4x4 block; bilinear on request."""
    model = tiny_model()                         # patch 16 at 64 px: 4x4 map, 16x16 target (x0.25)
    v1, v2 = views()
    out = model(v1, v2)
    for i, v in ((1, v1), (2, v2)):
        assert torch.equal(out[f"target{i}"], model.normalize(v)[..., ::4, ::4])
    bil = tiny_model(half_resample="bilinear")
    out = bil(v1, v2)
    for i, v in ((1, v1), (2, v2)):
        expect = F.interpolate(bil.normalize(v), size=out[f"recon{i}"].shape[-2:],
                               mode="bilinear", align_corners=False, antialias=False)
        torch.testing.assert_close(out[f"target{i}"], expect)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    torch.testing.assert_close(model.normalize(v1), (v1 - mean) / std)
    with pytest.raises(ValueError, match="partformer.half_resample"):
        tiny_model(half_resample="area")


def _noise_off_even_grid(v, seed=5):
    """``v`` with every pixel whose row or column is odd replaced by noise; the (even, even)
    pixels are kept bit for bit."""
    g = torch.Generator().manual_seed(seed)
    noisy = torch.rand(v.shape, generator=g)
    keep = torch.zeros(v.shape[-2:], dtype=torch.bool)
    keep[::2, ::2] = True
    return torch.where(keep, v, noisy)


def test_half_paths_see_only_the_even_even_pixels():
    """The authors' x0.5 is ``F.interpolate(x, scale_factor=0.5)`` with no mode, i.e. PyTorch's
    default nearest: output pixel (i, j) = input pixel (2i, 2j). It is applied to the view fed to
    the part-token ViT and to the reconstruction target, which is that same downsampled tensor
    (Jiahao-UTS/UnsupervisedPart, CUB_Model.py and CelebA_Model.py, ``forward``:
    ``input = F.interpolate(input, scale_factor=0.5)`` then ``self.Transformer(input)`` and
    ``self.high_level_loss(R_img, input, VGG)``; the same for ``input_pair``). So noise on every
    pixel outside the even-even grid leaves the part tokens and the target bit-identical, and the
    tokens are those of the even-even subsampling fed at full resolution."""
    model = tiny_model(encoder=ENC_P8)   # 64 px, patch 8: 8x8 map, decoder x4 -> 32x32 = x0.5
    v1, v2 = views()
    n1 = _noise_off_even_grid(v1)
    assert not torch.equal(n1, v1)
    out, out_noisy = model(v1, v2), model(n1, v2)
    assert torch.equal(out_noisy["part_tokens1"], out["part_tokens1"])
    assert torch.equal(out_noisy["target1"], out["target1"])
    assert torch.equal(out["target1"], model.normalize(v1)[..., ::2, ::2])
    assert out["recon1"].shape[-2:] == (32, 32)
    # the encoder sees the noise (the part maps change): the test is not vacuous
    assert not torch.equal(out_noisy["feature_map1"], out["feature_map1"])
    # the tokens are those of the even-even subsampling, fed to a ViT that does not downsample
    # (both views in one batch, as the model runs them: another batch size may take another
    # kernel path and change the last bits)
    halves = model.normalize(torch.cat([v1, v2]))[..., ::2, ::2].contiguous()
    full = PartTokenViT(num_parts=4, in_scale=1.0, out_dim=16, image_size=32, **TINY_PF)
    full.load_state_dict(model.partformer.state_dict())
    assert torch.equal(full(halves)[:v1.shape[0]], out["part_tokens1"])
    # with bilinear the odd pixels leak in
    bil = tiny_model(encoder=ENC_P8, half_resample="bilinear")
    assert not torch.allclose(bil(n1, v2)["part_tokens1"], bil(v1, v2)["part_tokens1"])
    assert not torch.allclose(bil(n1, v2)["target1"], bil(v1, v2)["target1"])


@pytest.mark.parametrize("size", [(64, 64), (67, 70), (33, 49)])
def test_part_token_vit_half_is_floor_and_even_pixels(size):
    """``F.interpolate(x, scale_factor=0.5)`` gives floor(H/2) x floor(W/2) pixels (2i, 2j), odd
    sizes included (PyTorch: output size floor(H * s); with ``recompute_scale_factor`` unset the
    sampling scale is 1/s = 2, so source index floor(2i))."""
    torch.manual_seed(0)
    vit = PartTokenViT(num_parts=2, patch_size=8, width=32, depth=1, heads=2, out_dim=8,
                       image_size=64)
    assert vit.resample == "nearest"
    assert vit.input_size(size) == (size[0] // 2, size[1] // 2)
    x = torch.randn(2, 3, *size)
    even = x[..., :2 * (size[0] // 2):2, :2 * (size[1] // 2):2].contiguous()
    full = PartTokenViT(num_parts=2, in_scale=1.0, patch_size=8, width=32, depth=1, heads=2,
                        out_dim=8, image_size=32)
    full.load_state_dict(vit.state_dict())
    assert torch.equal(vit(x), full(even))
    with pytest.raises(ValueError, match="resample"):
        PartTokenViT(num_parts=2, resample="bicubic")


# ------------------------------------------------------------------------ batch concat == two calls
@pytest.mark.parametrize("train", [False, True])
def test_concat_equals_separate_calls(train):
    model = tiny_model()
    model.train(train)
    v1, v2 = views()
    out = model(v1, v2)
    x1, x2 = model.normalize(v1), model.normalize(v2)
    f1 = model.compress(model.encoder(x1))
    f2 = model.compress(model.encoder(x2))
    t1, t2 = model.partformer(x1), model.partformer(x2)
    tol = dict(atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(out["feature_map1"], f1, **tol)
    torch.testing.assert_close(out["feature_map2"], f2, **tol)
    torch.testing.assert_close(out["part_tokens1"], t1, **tol)
    torch.testing.assert_close(out["part_tokens2"], t2, **tol)
    a12 = torch.softmax(0.8 * torch.einsum("bkd,bdhw->bkhw", t1, f2), dim=1)
    a21 = torch.softmax(0.8 * torch.einsum("bkd,bdhw->bkhw", t2, f1), dim=1)
    torch.testing.assert_close(out["assign12"], a12, **tol)
    torch.testing.assert_close(out["assign21"], a21, **tol)
    r2 = model.decoder(torch.einsum("bkhw,bkd->bdhw", a12, t1))
    r1 = model.decoder(torch.einsum("bkhw,bkd->bdhw", a21, t2))
    torch.testing.assert_close(out["recon2"], r2, **tol)
    torch.testing.assert_close(out["recon1"], r1, **tol)


def test_frozen_encoder_stacked_views_equal_per_view_calls_under_inference_mode():
    """The training step's fast path: the frozen encoder runs once on both views stacked, under
    torch.inference_mode. Each half must equal a separate, straightforward (autograd-enabled, no
    inference mode) forward of the timm model on that view, and the result must be an ordinary
    tensor that trainable modules can build a graph on."""
    model = tiny_model(encoder=ENC_P8).train()
    v1, v2 = views()
    x1, x2 = model.normalize(v1), model.normalize(v2)
    stacked = model.encode(torch.cat([x1, x2]))
    assert not stacked.is_inference() and not stacked.requires_grad
    timm_vit = model.encoder.model

    def plain(x):                       # the straightforward path: timm's tokens, CLS dropped
        tokens = timm_vit.forward_features(x)[:, 1:]
        h = x.shape[-1] // 8
        return tokens.reshape(x.shape[0], h, h, -1).permute(0, 3, 1, 2)

    torch.testing.assert_close(stacked[:2], plain(x1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(stacked[2:], plain(x2), atol=1e-5, rtol=1e-5)
    # the compress head (trainable, train-mode BN) records gradients on it
    model.compress(stacked[:2]).sum().backward()
    assert model.compress[0].weight.grad is not None


def test_fused_attention_equals_the_authors_multihead_attention():
    """FusedSelfAttention (F.scaled_dot_product_attention) is a drop-in for the authors' attention
    (Jiahao-UTS/UnsupervisedPart, backbone/Transformer.py ``ResidualAttentionBlock``:
    ``nn.MultiheadAttention(d_model, n_head)``, sequence-first, called as
    ``self.attn(x, x, x, attn_mask=None)[0]`` on ``[L, N, D]``): the same state-dict keys (so
    converted checkpoints load), the same initial values for the same seed, and the same outputs
    and gradients."""
    torch.manual_seed(3)
    ref = torch.nn.MultiheadAttention(64, 4)
    torch.manual_seed(3)
    fused = FusedSelfAttention(64, 4)
    assert list(fused.state_dict()) == list(ref.state_dict())
    for k, v in ref.state_dict().items():
        assert torch.equal(fused.state_dict()[k], v), k           # same draws, same order
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():                                         # non-zero biases too
        ref.in_proj_bias.copy_(torch.randn(192, generator=g))
        ref.out_proj.bias.copy_(torch.randn(64, generator=g))
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(3, 9, 64, generator=g)                        # [N, L, D]
    x_ref = x.transpose(0, 1).clone().requires_grad_(True)        # their [L, N, D]
    x_new = x.clone().requires_grad_(True)
    expect = ref(x_ref, x_ref, x_ref, attn_mask=None)[0].transpose(0, 1)
    got = fused(x_new)
    torch.testing.assert_close(got, expect, atol=1e-6, rtol=1e-5)
    w = torch.randn(expect.shape, generator=g)
    (expect * w).sum().backward()
    (got * w).sum().backward()
    torch.testing.assert_close(x_new.grad, x_ref.grad.transpose(0, 1), atol=1e-6, rtol=1e-5)
    for name, p in ref.named_parameters():
        torch.testing.assert_close(dict(fused.named_parameters())[name].grad, p.grad,
                                   atol=1e-5, rtol=1e-5)


# --------------------------------------------------------------------------------------- predict

def test_cpu_bf16_attention_path_stays_the_authors_multihead_attention(monkeypatch):
    """On the CPU under bf16 autocast, short sequences take ``explicit_attention`` instead of
    ``F.scaled_dot_product_attention`` (speed). It must still be the authors' attention
    (Jiahao-UTS/UnsupervisedPart, backbone/Transformer.py ``ResidualAttentionBlock``:
    ``nn.MultiheadAttention``): against that module in float32 on the same weights, the explicit
    path's bf16 output is no farther than SDPA's bf16 output is (both only bf16 rounding)."""
    from partformer.models import partformer_vit as V
    g = torch.Generator().manual_seed(1)
    ref = torch.nn.MultiheadAttention(64, 4)
    with torch.no_grad():
        ref.in_proj_bias.copy_(torch.randn(192, generator=g))
        ref.out_proj.bias.copy_(torch.randn(64, generator=g))
    fused = FusedSelfAttention(64, 4)
    fused.load_state_dict(ref.state_dict())
    x = torch.randn(3, 9, 64, generator=g)                        # [N, L, D], L <= 256
    with torch.no_grad():
        expect = ref(x.transpose(0, 1), x.transpose(0, 1), x.transpose(0, 1))[0].transpose(0, 1)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            def no_sdpa(*a, **k):
                raise AssertionError("the CPU bf16 path must not call SDPA for 9 tokens")
            monkeypatch.setattr(V.F, "scaled_dot_product_attention", no_sdpa)
            explicit = fused(x).float()
        monkeypatch.undo()
        monkeypatch.setattr(V, "CPU_EXPLICIT_MAX_TOKENS", 0)      # force SDPA in bf16
        with torch.autocast("cpu", dtype=torch.bfloat16):
            sdpa = fused(x).float()
    err_explicit = (explicit - expect).abs().max().item()
    err_sdpa = (sdpa - expect).abs().max().item()
    assert 0 < err_explicit <= max(2 * err_sdpa, 1e-2), (err_explicit, err_sdpa)
    assert err_explicit < 0.05

def test_predict():
    model = tiny_model(num_parts=3).eval()
    x, _ = views(2, 64)
    maps = model.predict(x)
    assert maps.shape == (2, 4, 16, 16)                     # 4 x the 4x4 feature grid
    torch.testing.assert_close(maps.sum(1), torch.ones(2, 16, 16))
    # same computation by hand: channel k <-> part token k, background = last token
    xn = model.normalize(x)
    fmap = F.interpolate(model.compress(model.encoder(xn)), size=(16, 16), mode="bilinear",
                         align_corners=False)
    tokens = model.partformer(xn)
    expect = torch.softmax(0.8 * torch.einsum("bkd,bdhw->bkhw", tokens, fmap), dim=1)
    torch.testing.assert_close(maps, expect, atol=1e-6, rtol=1e-5)
    # resized output
    out = model.predict(x, output_size=(40, 50))
    assert out.shape == (2, 4, 40, 50)
    torch.testing.assert_close(out.sum(1), torch.ones(2, 40, 50))
    torch.testing.assert_close(out, F.interpolate(maps, size=(40, 50), mode="bilinear",
                                                  align_corners=False))
    assert model.predict(x, output_size=64).shape == (2, 4, 64, 64)
    # gradient mode is the caller's choice
    assert model.predict(x).requires_grad
    with torch.no_grad():
        assert not model.predict(x).requires_grad


def test_predict_upsample_follows_decoder():
    model = tiny_model(decoder=dict(channels=8, num_blocks=3, upsample_after=(1,)))
    assert model.predict_upsample == 2
    assert model.predict(views(1, 64)[0]).shape == (1, 5, 8, 8)
    model = tiny_model(predict_upsample=1)
    assert model.predict(views(1, 64)[0]).shape == (1, 5, 4, 4)


# ---------------------------------------------------------------------------- frozen / gradients
def test_frozen_encoder_eval_and_no_grad():
    model = tiny_model()
    model.train()
    assert model.training and model.compress.training and model.partformer.training
    assert not model.encoder.model.training
    assert all(not m.training for m in model.encoder.model.modules())
    assert all(not p.requires_grad for p in model.encoder.parameters())
    v1, v2 = views()
    out = model(v1, v2)
    loss = sum((out[f"recon{i}"] - out[f"target{i}"]).pow(2).mean() for i in (1, 2))
    loss = loss + out["arcface_weight"].pow(2).sum()
    loss.backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    for name, p in model.named_parameters():
        if name.startswith("encoder.") or name == "logit_scale":
            continue
        assert p.grad is not None, name
    assert model.partformer.part_tokens.grad.abs().sum() > 0
    assert model.decoder[0][0].weight.grad.abs().sum() > 0
    assert model.compress[0].weight.grad.abs().sum() > 0
    assert not model.logit_scale.requires_grad            # dot alignment: kept, unused, frozen
    assert {id(p) for p in model.trainable_parameters()} == \
        {id(p) for p in model.parameters() if p.requires_grad}
    # BN of the compress head trains
    assert model.compress[2].num_batches_tracked.item() == 2   # once per view


def test_trainable_encoder():
    model = tiny_model(encoder=dict(ENC_P16, frozen=False))
    model.train()
    assert model.encoder.model.training
    out = model(*views())
    (out["recon1"] - out["target1"]).pow(2).mean().backward()
    assert model.encoder.model.patch_embed.proj.weight.grad is not None
    assert model.encoder.model.patch_embed.proj.weight.grad.abs().sum() > 0
    model.eval()
    assert not model.encoder.model.training


def test_recon_loss_reaches_part_tokens_through_both_paths():
    model = tiny_model()
    out = model(*views())
    (out["recon2"] - out["target2"]).abs().mean().backward()
    g = model.partformer.part_tokens.grad
    assert g is not None and torch.all(g.abs().sum(-1) > 0)   # every token, background included
    for name, p in model.decoder.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name


# ------------------------------------------------------------------------------------ alignment
def test_cosine_alignment():
    model = tiny_model(alignment="cosine")
    assert model.logit_scale.requires_grad
    assert math.isclose(model.logit_scale.item(), math.log(1 / 0.07), rel_tol=1e-6)
    v1, v2 = views()
    out = model(v1, v2)
    p = F.normalize(out["part_tokens1"], dim=-1)
    f = F.normalize(out["feature_map2"], dim=1)
    expect = torch.softmax(torch.einsum("bkd,bdhw->bkhw", p, f) / 0.07, dim=1)
    torch.testing.assert_close(out["assign12"], expect, atol=1e-5, rtol=1e-4)
    (out["recon2"] - out["target2"]).pow(2).mean().backward()
    assert model.logit_scale.grad is not None and model.logit_scale.grad.abs() > 0
    with pytest.raises(ValueError, match="alignment"):
        tiny_model(alignment="l2")


# ----------------------------------------------------------------------------- part-token ViT
def test_sincos_is_fixed_and_mae_layout():
    vit = PartTokenViT(num_parts=4, patch_size=8, width=32, depth=1, heads=2, out_dim=16,
                       image_size=64)
    names = [n for n, _ in vit.named_parameters()]
    assert not any("pos_embed" in n for n in names)
    assert "sincos_pos_embed" not in vit.state_dict()      # non-persistent buffer
    assert vit.sincos_pos_embed.shape == (1, 16, 32)        # 64 * 0.5 / 8 = 4 -> 4x4 grid
    pe = sincos_pos_embed_2d(8, 2, 3)                       # D = 8: omega = [1, 1e-2]
    assert pe.shape == (6, 8)
    for i in range(2):
        for j in range(3):
            t = i * 3 + j                                   # row-major token index
            expect = [math.sin(j), math.sin(j / 100), math.cos(j), math.cos(j / 100),
                      math.sin(i), math.sin(i / 100), math.cos(i), math.cos(i / 100)]
            torch.testing.assert_close(pe[t], torch.tensor(expect), atol=1e-6, rtol=0)
    yx = sincos_pos_embed_2d(8, 2, 3, layout="yx")
    torch.testing.assert_close(yx, torch.cat([pe[:, 4:], pe[:, :4]], 1))
    # other grids work and are cached
    out = vit(torch.randn(2, 3, 96, 80))
    assert out.shape == (2, 5, 16)
    assert any(k[:2] == (6, 5) for k in vit._pos_cache)


def test_part_token_vit_details():
    torch.manual_seed(0)
    vit = PartTokenViT(num_parts=3, patch_size=8, width=64, depth=2, heads=4, out_dim=16,
                       image_size=64)
    assert vit.patch_embed.bias is None
    assert vit.proj.bias is None and vit.proj.weight.shape == (16, 64)
    assert vit.part_tokens.shape == (1, 4, 64)
    assert 0.01 < vit.part_tokens.std().item() < 0.03       # N(0, 0.02)
    blk = vit.blocks[0]
    assert isinstance(blk.attn, FusedSelfAttention)
    assert blk.attn.in_proj_weight.shape == (192, 64) and blk.mlp.fc1.weight.shape == (256, 64)
    # the input is downsampled by in_scale: a 64 input == its nearest 32x32 version at scale 1
    x = torch.randn(2, 3, 64, 64)
    half = x[..., ::2, ::2].contiguous()
    vit1 = PartTokenViT(num_parts=3, in_scale=1.0, patch_size=8, width=64, depth=2, heads=4,
                        out_dim=16, image_size=32)
    vit1.load_state_dict(vit.state_dict())
    torch.testing.assert_close(vit(x), vit1(half), atol=1e-5, rtol=1e-5)
    # bilinear on request (model.half_resample=bilinear)
    vitb = PartTokenViT(num_parts=3, patch_size=8, width=64, depth=2, heads=4, out_dim=16,
                        image_size=64, resample="bilinear")
    vitb.load_state_dict(vit.state_dict())
    torch.testing.assert_close(vitb(x), vit1(F.interpolate(x, scale_factor=0.5, mode="bilinear",
                                                           align_corners=False)),
                               atol=1e-5, rtol=1e-5)
    # manual pre-LN forward
    with torch.no_grad():
        p = vit.patch_embed(half).flatten(2).transpose(1, 2) + vit.sincos_pos_embed
        t = torch.cat([vit.part_tokens.expand(2, -1, -1), p], 1)
        t = vit.norm_pre(t)
        for b in vit.blocks:
            y = b.norm1(t).transpose(0, 1)                  # torch's MHA, sequence-first
            a, _ = F.multi_head_attention_forward(
                y, y, y, 64, 4, b.attn.in_proj_weight, b.attn.in_proj_bias, None, None, False,
                0.0, b.attn.out_proj.weight, b.attn.out_proj.bias, need_weights=False)
            t = t + a.transpose(0, 1)
            y = b.norm2(t)
            t = t + b.mlp.fc2(QuickGELU()(b.mlp.fc1(y)))
        expect = vit.norm_post(t[:, :4]) @ vit.proj.weight.T
        torch.testing.assert_close(vit(x), expect, atol=1e-5, rtol=1e-5)


def test_quick_gelu():
    x = torch.tensor([-2.0, -0.5, 0.0, 1.0, 3.0])
    expect = torch.tensor([-2.0 / (1 + math.exp(3.404)), -0.5 / (1 + math.exp(0.851)), 0.0,
                           1.0 / (1 + math.exp(-1.702)), 3.0 / (1 + math.exp(-5.106))])
    torch.testing.assert_close(QuickGELU()(x), expect)
    assert abs(QuickGELU()(torch.tensor(1.0)).item() - 0.845796) < 1e-5


# ------------------------------------------------------------------------ decoder / compress head
def test_decoder_layout_and_size():
    dec = ReconstructionDecoder(in_dim=16, channels=8)
    with_params = sorted({int(k.split(".")[0]) for k, _ in dec.named_parameters()})
    assert with_params == [0, 1, 3, 4, 6, 7]
    assert isinstance(dec[2], torch.nn.Upsample) and isinstance(dec[5], torch.nn.Upsample)
    assert dec[0][0].bias is None and dec[0][1].eps == 1e-6 and dec[7].bias is not None
    assert dec(torch.randn(2, 16, 5, 7)).shape == (2, 3, 20, 28)
    assert dec.upscale == 4
    # channels-first LayerNorm == LayerNorm over C
    ln = dec[0][1]
    torch.nn.init.normal_(ln.weight)
    torch.nn.init.normal_(ln.bias)
    x = torch.randn(2, 8, 3, 4)
    expect = F.layer_norm(x.permute(0, 2, 3, 1), (8,), ln.weight, ln.bias, 1e-6).permute(0, 3, 1, 2)
    torch.testing.assert_close(ln(x), expect)
    with pytest.raises(ValueError):
        ReconstructionDecoder(upsample_after=(6,))


@pytest.mark.parametrize("variant,types", [
    ("cub", ["Conv2d", "ReLU", "BatchNorm2d", "Conv2d", "ReLU", "BatchNorm2d", "Conv2d"]),
    ("celeba", ["Conv2d", "BatchNorm2d", "ReLU", "Conv2d", "BatchNorm2d", "ReLU", "Conv2d"]),
    ("single", ["Conv2d"]),
])
def test_compress_head(variant, types):
    head = CompressHead(48, 16, variant=variant, hidden=(32, 24))
    assert [type(m).__name__ for m in head] == types
    assert head(torch.randn(2, 48, 3, 3)).shape == (2, 16, 3, 3)
    with pytest.raises(ValueError):
        CompressHead(48, 16, variant="nope")


# --------------------------------------------------------------------------------- encoder options
def test_intermediate_layer():
    torch.manual_seed(0)
    enc_final = FeatureMapEncoder(name="vit_tiny_patch16_224", depth=2, embed_dim=32, num_heads=2,
                                  img_size=64)
    sd = enc_final.model.state_dict()
    kw = dict(name="vit_tiny_patch16_224", depth=2, embed_dim=32, num_heads=2, img_size=64)
    enc0 = FeatureMapEncoder(layer=0, **kw)
    enc0.model.load_state_dict(sd)
    enc_last = FeatureMapEncoder(layer=-1, intermediate_norm=True, **kw)
    enc_last.model.load_state_dict(sd)
    x = torch.randn(2, 3, 64, 64)
    m = enc_final.model
    with torch.no_grad():
        t = m.norm_pre(m._pos_embed(m.patch_embed(x)))
        t = m.blocks[0](t)
    expect0 = t[:, 1:].reshape(2, 4, 4, 32).permute(0, 3, 1, 2)
    torch.testing.assert_close(enc0(x), expect0, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(enc_last(x), enc_final(x), atol=1e-5, rtol=1e-5)
    assert not torch.allclose(enc0(x), enc_final(x))
    with pytest.raises(ValueError, match="layer"):
        FeatureMapEncoder(layer=5, **kw)


def test_dino_legacy_pos_embed():
    torch.manual_seed(0)
    enc = FeatureMapEncoder(name="vit_small_patch8_224.dino", depth=1, embed_dim=32, num_heads=2,
                            pos_embed_interp="dino_legacy", img_size=256)
    m = enc.model
    assert m.pos_embed.shape == (1, 1 + 28 * 28, 32)       # native grid kept, img_size ignored
    x = torch.randn(1, 3, 256, 256)
    patches = m.patch_embed(x)                              # [1, 32, 32, C] (NHWC)
    grid = m.pos_embed[:, 1:].reshape(1, 28, 28, 32).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, scale_factor=(32.1 / 28, 32.1 / 28), mode="bicubic",
                         align_corners=False)
    pe = torch.cat([m.pos_embed[:, :1], grid.flatten(2).transpose(1, 2)], 1)
    expect = torch.cat([m.cls_token, patches.reshape(1, -1, 32)], 1) + pe
    torch.testing.assert_close(m._pos_embed(patches), expect)
    assert enc(x).shape == (1, 32, 32, 32)
    # native size: the stored embedding unchanged
    p224 = m.patch_embed(torch.randn(1, 3, 224, 224))
    torch.testing.assert_close(m._pos_embed(p224),
                               torch.cat([m.cls_token, p224.reshape(1, -1, 32)], 1) + m.pos_embed)


# ---------------------------------------------------------------------------------- local weights
@pytest.mark.parametrize("ext", ["pth", "safetensors"])
def test_local_weights_file(tmp_path, ext):
    kw = dict(name="vit_tiny_patch16_224", depth=1, embed_dim=32, num_heads=2, img_size=64)
    torch.manual_seed(1)
    src = FeatureMapEncoder(**kw)
    sd = {k: v.clone().contiguous() for k, v in src.model.state_dict().items()}
    path = str(tmp_path / f"enc.{ext}")
    if ext == "safetensors":
        from safetensors.torch import save_file
        save_file(sd, path)
    else:
        torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}}, path)
    torch.manual_seed(2)
    dst = FeatureMapEncoder(weights=path, **kw)
    x = torch.randn(2, 3, 64, 64)
    torch.testing.assert_close(dst(x), src(x))
    # a classifier head in the file is ignored
    torch.save(dict(sd, **{"head.weight": torch.zeros(10, 32), "head.bias": torch.zeros(10)}),
               str(tmp_path / "head.pth"))
    FeatureMapEncoder(weights=str(tmp_path / "head.pth"), **kw)


def test_local_weights_errors(tmp_path):
    kw = dict(name="vit_tiny_patch16_224", depth=1, embed_dim=32, num_heads=2, img_size=64)
    sd = FeatureMapEncoder(**kw).model.state_dict()
    bad = dict(sd)
    del bad["blocks.0.norm1.weight"]
    bad["blocks.7.extra"] = torch.zeros(3)
    torch.save(bad, str(tmp_path / "bad.pth"))
    with pytest.raises(ValueError) as e:
        FeatureMapEncoder(weights=str(tmp_path / "bad.pth"), **kw)
    assert "blocks.0.norm1.weight" in str(e.value) and "blocks.7.extra" in str(e.value)
    assert "missing" in str(e.value) and "unexpected" in str(e.value)
    with pytest.raises(FileNotFoundError):
        FeatureMapEncoder(weights=str(tmp_path / "nope.pth"), **kw)


# ----------------------------------------------------------------------------------- build_model
TINY_OVERRIDES = ["data.image_size=64", "model.encoder.name=vit_tiny_patch16_224",
                  "model.encoder.pretrained=false",
                  "model.encoder.kwargs={depth: 1, embed_dim: 32, num_heads: 2}",
                  "model.num_parts=3", "partformer.compress=celeba",
                  "partformer.compress_hidden=[32, 16]", "partformer.feature_dim=16",
                  "partformer.vit={patch_size: 8, width: 32, depth: 1, heads: 2}",
                  "partformer.decoder.channels=8"]


def test_build_model_from_the_project_config():
    """partformer.build_model(cfg): the model of cfg.method.name, sized by the config."""
    from partformer import build_model as public_build_model
    from partformer import config
    from partformer.methods import build_model
    tree = config.apply_overrides({}, TINY_OVERRIDES, {})    # the schema defaults + overrides
    cfg = config.from_dict(tree)
    assert public_build_model is build_model
    m = build_model(cfg)
    assert isinstance(m, PartFormerModel)
    assert m.num_parts == 3 and m.image_size == 64 and m.compress.variant == "celeba"
    assert m.encoder.model.pos_embed.shape[1] == 1 + 16          # built at img_size 64
    out = m(*views(1, 64))
    assert out["assign12"].shape == (1, 4, 4, 4) and out["recon1"].shape == (1, 3, 16, 16)


def test_the_model_constructor_takes_sections_strictly():
    """One strict way from a config section to a constructor: an unknown key, or one the model
    sets itself, is an error naming it and where it comes from."""
    kw = dict(num_parts=3, image_size=64, encoder=dict(ENC_P16), compress_hidden=(32, 16),
              feature_dim=16, decoder=dict(channels=8))
    with pytest.raises(ValueError, match=r"partformer\.vit\.resample .*partformer\.half_resample"):
        PartFormerModel(vit=dict(TINY_PF, resample="nearest"), **kw)
    with pytest.raises(ValueError, match=r"partformer\.decoder\.in_dim .*partformer\.feature_dim"):
        PartFormerModel(vit=dict(TINY_PF), **{**kw, "decoder": dict(channels=8, in_dim=16)})
    with pytest.raises(ValueError, match=r"partformer\.decoder\.chanels"):
        PartFormerModel(vit=dict(TINY_PF), **{**kw, "decoder": dict(chanels=8)})


# ------------------------------------------------------------------ official checkpoint compatibility
KEYS_FILE = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "reference",
                         "official_state_dict_keys.txt")
KEYS_FILE = os.environ.get("PARTFORMER_OFFICIAL_KEYS", KEYS_FILE)

_RULES = [
    (r"^backbone1\.", "encoder.model."),
    (r"^compress_layer\.", "compress."),
    (r"^Reconstruct_Block\.", "decoder."),
    (r"^ArcMarginProduct\.weight$", "arcface_weight"),
    (r"^Transformer\.conv1\.", "partformer.patch_embed."),
    (r"^Transformer\.class_embedding$", "partformer.part_tokens"),
    (r"^Transformer\.ln_pre\.", "partformer.norm_pre."),
    (r"^Transformer\.ln_post\.", "partformer.norm_post."),
    (r"^Transformer\.proj\.", "partformer.proj."),
    (r"^Transformer\.transformer\.resblocks\.", "partformer.blocks."),
    (r"\.ln_1\.", ".norm1."), (r"\.ln_2\.", ".norm2."),
    (r"\.mlp\.c_fc\.", ".mlp.fc1."), (r"\.mlp\.c_proj\.", ".mlp.fc2."),
]


def _official_sections(path):
    sections, cur = {}, None
    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith("## "):
                cur = line.split()[1].lower()
                sections[cur] = {}
            elif cur and "\t" in line:
                key, shape, _ = line.split("\t")
                sections[cur][key] = tuple(int(s) for s in re.findall(r"\d+", shape))
    return sections


@pytest.mark.skipif(not os.path.isfile(KEYS_FILE), reason="official key list not available")
def test_official_checkpoint_keys_map_onto_model():
    sections = _official_sections(KEYS_FILE)
    assert {"cub", "celeba"} <= set(sections)
    for variant, official in sections.items():
        with torch.device("meta"):
            model = PartFormerModel(
                num_parts=4, image_size=256, compress=variant,
                encoder=dict(name="vit_small_patch8_224.dino", pos_embed_interp="dino_legacy"))
        ours = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        mapped = {}
        for key, shape in official.items():
            if key == "Transformer.pos_embed":                     # fixed: zeros + sin-cos
                assert shape == (1, 5 + 64, 256)
                assert model.partformer.sincos_pos_embed.shape == (1, 64, 256)
                continue
            new = key
            for pat, rep in _RULES:
                new = re.sub(pat, rep, new)
            assert new in ours, f"{variant}: {key} -> {new} not in the model"
            assert ours[new] == shape, f"{variant}: {key} {shape} vs {new} {ours[new]}"
            mapped[new] = key
        assert set(mapped) == set(ours), sorted(set(ours) - set(mapped))
