"""MPAE (partformer.methods.mpae): shapes, conventions, loss formulas, masking, test-time path,
conversion and init rules, each against a fact of the authors' code (github.com/Jiahao-UTS/MPAE,
cited per test; the code itself is not imported). Tiny random models, CPU, offline."""
import dataclasses
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from partformer.losses.perceptual import build_vgg19_features, perceptual_loss
from partformer.methods.mpae import MPAEConfig, MPAEModel
from partformer.methods.mpae.config import VGG_LAYER_WEIGHTS, MPAELossConfig
from partformer.methods.mpae.convert import (ConversionError, convert_state_dict, infer_config,
                                             official_to_ours)
from partformer.methods.mpae.decoder import MaskedPartDecoder, num_kept, random_masking_indices
from partformer.methods.mpae.losses import (LOSS_TERMS, MPAEObjective, background_presence_loss,
                                            grouped_presence_loss, masked_reconstruction_loss,
                                            mpae_loss_terms, part_descriptors, pixel_entropy_loss,
                                            semantic_consistency_loss, total_variation_loss,
                                            weighted_total)
from partformer.models.partformer_vit import PartTokenViT, sincos_pos_embed_2d

S, K, D = 56, 3, 64                    # image 56 px -> 4x4 grid of 14 px patches, L = 16
TINY_ENCODER = dict(name="vit_base_patch14_reg4_dinov2", pretrained=False, img_size=518,
                    kwargs=dict(embed_dim=32, depth=1, num_heads=2))
TINY_VIT = dict(width=32, depth=1, heads=2)
TINY_DEC = dict(embed_dim=32, depth=1, num_heads=2, decoder_depth=1, decoder_num_heads=2)


def tiny_model(**kw):
    torch.manual_seed(0)
    args = dict(num_parts=K, image_size=S, feature_dim=D, encoder=TINY_ENCODER,
                part_vit=TINY_VIT, decoder=TINY_DEC, predict_upsample=4.0)
    args.update(kw)
    return MPAEModel(**args)


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def objective():
    torch.manual_seed(1)
    return MPAEObjective(dataclasses.replace(MPAELossConfig(), vgg_weights=None,
                                             presence_group_size=2), channels_last=False)


def images(b=2, seed=0):
    return torch.rand(b, 3, S, S, generator=torch.Generator().manual_seed(seed))


# ------------------------------------------------------------------------------ shapes
def test_forward_shapes_and_softmax(model):
    """MPAE.py MPAE.forward(trainable=True): maps [B, K+1, g, g] at the DINOv2 grid (no
    upsampling in training); the MAE decoder restores (g * rec_patch)^2 = 8g (backbone/MAE.py
    unpatchify), compared with Small_input of that size (Dataloader/*.py)."""
    out = model(images(), generator=torch.Generator().manual_seed(0))
    assert out["part_tokens"].shape == (2, K + 1, D)
    assert out["feature_map"].shape == (2, D, 4, 4)
    assert out["part_maps"].shape == (2, K + 1, 4, 4) and out["part_maps"].dtype == torch.float32
    torch.testing.assert_close(out["part_maps"].sum(1), torch.ones(2, 4, 4))
    assert out["recon"].shape == out["target"].shape == (2, 3, 32, 32)
    assert out["mask"].shape == out["mask_noise"].shape == (2, 16)


def test_target_is_bilinear_resize_of_normalised_input(model):
    """Dataloader/CUB.py __getitem__: Small_input = F.interpolate(normalised image,
    size=(256, 256), mode='bilinear') (align_corners False, no antialias)."""
    x = images()
    out = model(x, mask_noise=torch.rand(2, 16))
    ref = F.interpolate(model.normalize(x), size=(32, 32), mode="bilinear", align_corners=False)
    torch.testing.assert_close(out["target"], ref)


def test_predict_upsamples_features_before_the_dot_product(model):
    """MPAE.py MPAE.forward(trainable=False): Local_Features = F.interpolate(Local_Features,
    scale_factor=self.scale_factor, mode='bilinear'), then softmax_k(einsum(tokens, features));
    no scale on the dot product."""
    x = images()
    model.eval()
    with torch.no_grad():
        maps = model.predict(x)
        xn = model.normalize(x)
        fmap, tokens = model.compress(model.encoder(xn)), model.part_vit(xn)
        up = F.interpolate(fmap, scale_factor=4.0, mode="bilinear", align_corners=False)
        ref = torch.einsum("bkd,bdhw->bkhw", tokens, up).softmax(1)
    assert maps.shape == (2, K + 1, 16, 16)
    torch.testing.assert_close(maps, ref, atol=1e-6, rtol=1e-5)
    assert model.predict(x, output_size=20).shape == (2, K + 1, 20, 20)


@pytest.mark.parametrize("dataset", ["cub", "celeba", "partimagenet_seg", "partimagenet_ood"])
def test_published_sizes_give_128_maps(dataset):
    """train.py main_function: scale_factor 4.0 for CUB (448 px, Config/default.py
    update_config), 8.0 otherwise (224 px); the evaluation works on 128x128 maps
    (Dataloader/PartImageSeg.py resizes the GT to 128); Num_Part 17 / 51 (README) = K+1."""
    from partformer import config as cfglib
    K_ = 16 if dataset in ("cub", "celeba") else 50
    cfg = cfglib.load_config(f"{dataset}_mpae_k{K_}")           # the shipped configs
    assert cfg.method.name == "mpae"
    g = cfg.data.image_size // 14
    assert g * cfg.mpae.predict_upsample == 128
    assert g * cfg.mpae.decoder.out_patch == (256 if dataset == "cub" else 128)   # Small_input
    assert cfg.model.num_parts == K_
    assert cfg.mpae.loss.presence_group_size == (64 if dataset.startswith("partimagenet") else 8)
    epochs, steps = {"cub": (100, [80, 90]), "celeba": (20, [15, 18])}.get(dataset, (70, [50, 60]))
    assert cfg.train.epochs == epochs and cfg.train.scheduler.milestones == steps
    # utils/Optimizer.py get_optimizer('adam'): Adam(model.parameters(), lr) -- default betas,
    # no weight decay; train.py: clip_grad_norm_(2.0); Config/default.py: batch 64, factor 0.2
    t = cfg.train
    assert (t.optimizer, t.lr, t.betas, t.weight_decay, t.batch_size, t.grad_clip) == \
        ("adam", 5e-4, [0.9, 0.999], 0.0, 64, 2.0)
    assert t.scheduler.name == "multistep" and t.scheduler.gamma == 0.2
    assert cfg.model.encoder.name == "vit_base_patch14_reg4_dinov2"
    assert cfg.model.encoder.frozen and cfg.model.encoder.kwargs == {"img_size": 518}


# ------------------------------------------------------------------------------ masking
def test_num_kept_truncates_like_their_int():
    """backbone/MAE.py random_masking: len_keep = int(L * (1 - mask_ratio)) with ratio 0.9
    (Config/default.py MODEL.RATIO)."""
    assert [num_kept(L, 0.9) for L in (1024, 256, 64, 16)] == [102, 25, 6, 1]


def test_random_masking_keeps_the_smallest_noise():
    """backbone/MAE.py random_masking: argsort(noise), the first len_keep are kept; mask is 1 on
    removed positions in grid order (gather with ids_restore)."""
    noise = torch.rand(3, 64, generator=torch.Generator().manual_seed(3))
    keep, masked, restore, mask = random_masking_indices(noise, 0.9)
    assert keep.shape == (3, 6) and masked.shape == (3, 58)
    assert torch.equal(mask.sum(1), torch.full((3,), 58.0))
    for b in range(3):
        smallest = set(noise[b].argsort()[:6].tolist())
        assert set(keep[b].tolist()) == smallest
        assert set(torch.nonzero(mask[b] == 0).flatten().tolist()) == smallest
    assert torch.equal(torch.gather(torch.cat([keep, masked], 1), 1, restore),
                       torch.arange(64).expand(3, 64))


def test_decoder_sees_image_only_where_kept_and_parts_only_where_masked():
    """backbone/MAE.py forward_encoder / forward_decoder: kept image patches go through the
    encoder blocks; the part features ('DINO' argument) fill the masked positions only."""
    torch.manual_seed(0)
    dec = MaskedPartDecoder(S, patch_size=14, embed_dim=32, depth=1, num_heads=2, part_dim=16,
                            decoder_depth=1, decoder_num_heads=2, out_patch=8).eval()
    x, feats = torch.randn(1, 3, S, S), torch.randn(1, 16, 16)
    noise = torch.rand(1, 16, generator=torch.Generator().manual_seed(5))
    keep, masked, _, _ = random_masking_indices(noise, 0.9)
    base = dec(x, feats, noise, 0.9)["recon"]
    i, j = divmod(int(masked[0, 0]), 4)          # a masked patch: its pixels do not matter
    x2 = x.clone()
    x2[..., 14 * i:14 * i + 14, 14 * j:14 * j + 14] += 5.0
    torch.testing.assert_close(dec(x2, feats, noise, 0.9)["recon"], base)
    f2 = feats.clone()
    f2[0, int(keep[0, 0])] += 5.0                # a kept position: its part feature does not
    torch.testing.assert_close(dec(x, f2, noise, 0.9)["recon"], base)
    f3 = feats.clone()
    f3[0, int(masked[0, 0])] += 5.0
    assert not torch.allclose(dec(x, f3, noise, 0.9)["recon"], base)


def test_unpatchify_layout():
    """backbone/MAE.py unpatchify: x.reshape(N, h, w, p, p, 3), einsum 'nhwpqc->nchpwq'."""
    dec = MaskedPartDecoder(28, patch_size=14, embed_dim=8, depth=0, num_heads=1, part_dim=8,
                            decoder_depth=0, decoder_num_heads=1, out_patch=2)
    x = torch.arange(4 * 12, dtype=torch.float32).view(1, 4, 12)
    img = dec.unpatchify(x)
    for t in range(4):
        i, j = divmod(t, 2)
        for pp in range(2):
            for q in range(2):
                for c in range(3):
                    assert img[0, c, 2 * i + pp, 2 * j + q] == x[0, t, (pp * 2 + q) * 3 + c]


def test_mask_injection_and_generator(model):
    """The mask is the only randomness of MPAE.forward (torch.rand in random_masking): the same
    noise or the same generator seed gives the same restoration."""
    x = images()
    a = model(x, generator=torch.Generator().manual_seed(7))
    b = model(x, generator=torch.Generator().manual_seed(7))
    c = model(x, mask_noise=a["mask_noise"])
    torch.testing.assert_close(a["recon"], b["recon"])
    torch.testing.assert_close(a["recon"], c["recon"])


# ------------------------------------------------------------------------------ losses
def test_total_variation_by_hand():
    """utils/total_variation.py: (sum|d_y| + sum|d_x|) over channels, summed over the batch, /
    num_elements = B*h*w (cached from the first batch in their TotalVariationLoss)."""
    m = torch.zeros(2, 2, 3, 3)
    m[0, 0, 1, 1] = 1.0      # one bump: 2 vertical + 2 horizontal unit steps
    m[1, 1, :, 2] = 0.5      # a column: 2 horizontal steps of 0.5 per row... 3 rows
    assert total_variation_loss(m).item() == pytest.approx((4 + 3 * 0.5) / (2 * 9))
    assert total_variation_loss(m, normaliser=36).item() == pytest.approx(5.5 / 36)


def test_entropy_of_uniform_and_one_hot_maps():
    """MPAE.py pixel_wise_entropy_loss: Categorical(probs).entropy().mean(): log(K+1) for uniform
    maps, ~0 for one-hot ones (probabilities clamped to [eps, 1 - eps] inside the log)."""
    u = torch.full((1, 5, 4, 4), 0.2)
    assert pixel_entropy_loss(u).item() == pytest.approx(math.log(5), rel=1e-6)
    oh = F.one_hot(torch.randint(0, 5, (1, 4, 4)), 5).permute(0, 3, 1, 2).float()
    assert pixel_entropy_loss(oh).item() == pytest.approx(0.0, abs=1e-6)
    p = torch.rand(2, 5, 3, 3).softmax(1)
    ref = torch.distributions.Categorical(probs=p.permute(0, 2, 3, 1)).entropy().mean()
    torch.testing.assert_close(pixel_entropy_loss(p), ref)


def test_background_presence_uses_the_last_channel_and_the_border():
    """utils/presence_loss.py EnforcedPresenceLoss('enforced_presence'): avg_pool 3x3 stride 1,
    times (x^2 + y^2)/max (0 at the centre, 1 at the pooled corners), channel -1, spatial max,
    BCE with 1."""
    m = torch.zeros(2, 3, 7, 7)
    m[:, 0] = 1.0
    assert background_presence_loss(m).item() == pytest.approx(100.0)     # log clamped at -100
    m[:, 2] = 0.5                                                          # background 0.5 ...
    assert background_presence_loss(m).item() == pytest.approx(-math.log(0.5), rel=1e-5)
    centre = torch.zeros(1, 2, 7, 7)
    centre[:, 1, 2:5, 2:5] = 1.0           # background only in the centre 3x3 block: the peak
    # is at pooled cell (0, 2) (edge middle): 3/9 of the window, radial mask (1 + 0) / 2
    assert background_presence_loss(centre).item() == pytest.approx(-math.log(1 / 6), rel=1e-5)


def test_grouped_presence_by_hand():
    """utils/presence_loss.py presence_loss_original(maps, num_group): q = max_u avgpool3(A);
    torch.split into groups; per group (1 - mean_k max_b q) + (1 - mean_b max_k q); mean over
    groups."""
    q = torch.tensor([[0.9, 0.1], [0.2, 0.4], [0.3, 0.6]])       # B = 3, K = 2
    maps = q[:, :, None, None].expand(3, 2, 5, 5).clone()        # constant maps: pooled = q
    g1 = (1 - (0.9 + 0.4) / 2) + (1 - (0.9 + 0.4) / 2)
    g2 = (1 - (0.3 + 0.6) / 2) + (1 - 0.6)
    assert grouped_presence_loss(maps, 2).item() == pytest.approx((g1 + g2) / 2, rel=1e-6)
    one = (1 - (0.9 + 0.6) / 2) + (1 - (0.9 + 0.4 + 0.6) / 3)
    assert grouped_presence_loss(maps, 8).item() == pytest.approx(one, rel=1e-6)


def test_semantic_loss_by_hand():
    """backbone/Arcmagrin.py ArcMarginProduct.forward: cosine between normalised descriptors and
    tokens [B, K, K], margin on the diagonal (label = eye), -log softmax, times
    (sum of the detached map > 1e-3), mean over B*K."""
    s, m = 2.0, 0.5                                              # small s: a loss far from 0
    tokens = torch.eye(3)[None].repeat(2, 1, 1) * 3.0            # orthogonal
    desc = tokens * 0.1                                          # same directions
    maps = torch.ones(2, 3, 2, 2)
    maps[1, 2] = 0.0                                             # an absent part
    diag = s * math.cos(m)
    per = -math.log(math.exp(diag) / (math.exp(diag) + 2 * math.exp(0.0)))
    val = semantic_consistency_loss(desc, tokens, maps, s, m).item()
    assert val == pytest.approx(per * 5 / 6, rel=1e-5)
    # beyond pi - m the logit is cos - sin(pi - m) * m (easy_margin False)
    desc2 = -tokens
    th = -1.0 - math.sin(math.pi - m) * m
    per2 = -math.log(math.exp(s * th) / (math.exp(s * th) + 2.0))
    assert semantic_consistency_loss(desc2, tokens, torch.ones(2, 3, 2, 2), s, m).item() == \
        pytest.approx(per2, rel=1e-5)


def test_part_descriptors_are_plain_means():
    """MPAE.py forward: local_part_rep = (A[:, None] * F[:, :, None]).mean(-1).mean(-1)."""
    maps, fmap = torch.rand(2, 4, 3, 5), torch.randn(2, 6, 3, 5)
    ref = (maps.unsqueeze(1) * fmap.unsqueeze(2)).mean(-1).mean(-1).permute(0, 2, 1)
    torch.testing.assert_close(part_descriptors(maps, fmap), ref)


def test_reconstruction_loss_formula():
    """MPAE.py high_level_loss: 0.1 * mean|R - T| + sum_l w_l mean|VGG_l(R) - VGG_l(T)| with
    w = 5/32, 5/16, 5/8, 5/4, 5 (VGG19 slices [0:2], [2:7], [7:12], [12:21], [21:30])."""
    assert VGG_LAYER_WEIGHTS == (5 / 32, 5 / 16, 5 / 8, 5 / 4, 5.0)
    torch.manual_seed(0)
    feats = build_vgg19_features(30).eval()
    slices = [feats[a:b] for a, b in ((0, 2), (2, 7), (7, 12), (12, 21), (21, 30))]
    r, t = torch.randn(1, 3, 32, 32), torch.randn(1, 3, 32, 32)
    ref = 0.1 * (r - t).abs().mean()
    x, y = r, t
    for sl, w in zip(slices, VGG_LAYER_WEIGHTS):
        x, y = sl(x), sl(y)
        ref = ref + w * (x - y).abs().mean()
    got = masked_reconstruction_loss(r, t, slices)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    assert masked_reconstruction_loss(t, t, slices).item() == 0.0


def test_total_weights():
    """tools/train_function.py train: loss = R + 0.5 (V + E) + 1.0 P + 0.25 S, where MPAE.forward
    returns P = background (enforced) presence + foreground presence."""
    terms = {n: torch.tensor(float(i + 1)) for i, n in enumerate(LOSS_TERMS)}
    # R=1, TV=2, E=3, BG=4, P=5, S=6
    assert weighted_total(terms, MPAELossConfig()).item() == pytest.approx(
        1 + 0.5 * (2 + 3) + 1.0 * (4 + 5) + 0.25 * 6)


def test_objective_terms_float32_under_autocast(model, objective):
    """Losses in float32 even under autocast; every term of tools/train_function.py present."""
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = objective(model, images(), generator=torch.Generator().manual_seed(0))
    assert set(out) == set(LOSS_TERMS) | {"total"}
    for v in out.values():
        assert v.dtype == torch.float32 and v.dim() == 0 and torch.isfinite(v)


def test_foreground_terms_ignore_the_background_channel(model, objective):
    """MPAE.py forward: PresenceLoss and ArcMarginProduct get output_distribution[:, :K] (the
    first num_part - 1 channels); the background is the last channel."""
    with torch.no_grad():
        out = model(images(), mask_noise=torch.rand(2, 16))
        a = mpae_loss_terms(out, objective.perceptual, objective.cfg)
        out2 = dict(out)
        out2["part_maps"] = out["part_maps"].clone()
        out2["part_maps"][:, -1] = torch.rand_like(out2["part_maps"][:, -1])
        b = mpae_loss_terms(out2, objective.perceptual, objective.cfg)
    assert a["presence"] == b["presence"] and a["semantic"] == b["semantic"]
    assert a["background_presence"] != b["background_presence"]


def test_every_trainable_parameter_gets_a_gradient(objective):
    """Their trainable set is everything but the DINOv2 (train.py sets backbone1 requires_grad
    False); ours holds no unused parameter (their ArcMarginProduct.weight, Decoder.cls_token and
    mask_token never get one), so DDP needs no find_unused_parameters."""
    model = tiny_model()
    out = objective(model, images(), generator=torch.Generator().manual_seed(0))
    out["total"].backward()
    assert not any(p.requires_grad for p in model.encoder.parameters())
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing
    # one group, every trainable parameter (utils/Optimizer.py: Adam(model.parameters(), lr))
    from partformer import config as cfglib
    from partformer.engine.optim import build_optimizer
    from partformer.methods import get_method
    cfg = cfglib.load_config("cub_mpae_k16")
    groups = get_method("mpae")(cfg).param_groups(model)
    assert len(groups) == 1 and (groups[0].lr_mult, groups[0].wd_mult) == (1.0, 1.0)
    assert {id(p) for p in groups[0].params} == {id(p) for p in model.parameters()
                                                 if p.requires_grad}
    opt = build_optimizer(cfg.train, groups)
    assert isinstance(opt, torch.optim.Adam) and opt.defaults["betas"] == (0.9, 0.999)
    assert opt.param_groups[0]["lr"] == 5e-4 and opt.param_groups[0]["weight_decay"] == 0.0


# ------------------------------------------------------------------------------ init rules
def test_init_rules(model):
    """backbone/Transformer.py initialize_weights: pos_embed = [K+1 zero rows, 2-D sin-cos]
    (trainable), class_embedding N(0, 0.02); backbone/MAE.py initialize_weights: patch_embed
    xavier on the [out, in*p*p] view, Linear xavier with zero bias, LayerNorm 1/0, fixed sin-cos
    pos embeds; MPAE.py _init_weights: compress conv xavier, no bias."""
    pv = model.part_vit
    assert pv.pos_embed.requires_grad and pv.pos_embed.shape == (1, K + 1 + 16, 32)
    assert torch.equal(pv.pos_embed[0, :K + 1], torch.zeros(K + 1, 32))
    torch.testing.assert_close(pv.pos_embed[0, K + 1:], sincos_pos_embed_2d(32, 4, 4))
    w = model.decoder.patch_embed.weight
    bound = math.sqrt(6.0 / (3 * 14 * 14 + 32))            # Linear-style fans
    assert 0.9 * bound < w.abs().max().item() <= bound
    for mod in model.decoder.modules():
        if isinstance(mod, nn.Linear):
            assert torch.equal(mod.bias, torch.zeros_like(mod.bias))
        if isinstance(mod, nn.LayerNorm):
            assert mod.eps == 1e-5 and torch.equal(mod.weight, torch.ones_like(mod.weight))
    assert "decoder.pos_embed" not in model.state_dict()    # fixed: non-persistent buffers
    torch.testing.assert_close(model.decoder.decoder_pos_embed[0], sincos_pos_embed_2d(D, 4, 4))
    conv = model.compress[0]
    assert conv.bias is None and conv.kernel_size == (1, 1)
    cb = math.sqrt(6.0 / (32 + D))
    assert 0.9 * cb < conv.weight.abs().max().item() <= cb


def test_learnable_pos_embed_rejects_another_grid():
    """Their Get_vit adds a fixed-size pos_embed parameter: only the training grid exists."""
    vit = PartTokenViT(2, in_scale=1.0, patch_size=14, width=16, depth=1, heads=2, out_dim=8,
                       image_size=28, pos_embed="learnable")
    assert vit(torch.randn(1, 3, 28, 28)).shape == (1, 3, 8)
    with pytest.raises(ValueError, match="learnable position embedding"):
        vit(torch.randn(1, 3, 42, 42))


# ------------------------------------------------------------------------------ conversion
_BLOCK = {"norm1.": "ln_1.", "norm2.": "ln_2.", "mlp.fc1.": "mlp.c_fc.", "mlp.fc2.": "mlp.c_proj."}


def _theirs_from_ours(model):
    """A state dict laid out with the authors' names (MPAE.py attribute names; DINOv2's own
    parameter names under backbone1: cls_token and pos_embed [1, 1 + N, C] with the class
    position, register_tokens, mask_token), filled with random values."""
    g = torch.Generator().manual_seed(11)
    ours = {k: torch.randn(v.shape, generator=g) for k, v in model.state_dict().items()}
    sd = {"ArcMarginProduct.weight": torch.randn(K, D, generator=g),
          "compress_layer.weight": ours["compress.0.weight"]}
    enc = {k[len("encoder.model."):]: v for k, v in ours.items() if k.startswith("encoder.model.")}
    cls_pos = torch.randn(1, 1, enc["pos_embed"].shape[-1], generator=g)
    sd["backbone1.cls_token"] = enc.pop("cls_token") - cls_pos
    sd["backbone1.pos_embed"] = torch.cat([cls_pos, enc.pop("pos_embed")], 1)
    sd["backbone1.register_tokens"] = enc.pop("reg_token")
    sd["backbone1.mask_token"] = torch.zeros(1, enc["norm.weight"].shape[0])
    sd.update({"backbone1." + k: v for k, v in enc.items()})
    for k, v in ours.items():
        if not k.startswith("part_vit."):
            continue
        k = k[len("part_vit."):]
        if k.startswith("blocks."):
            i, rest = k[len("blocks."):].split(".", 1)
            for a, b in _BLOCK.items():
                rest = rest.replace(a, b) if rest.startswith(a) else rest
            name = f"Transformer.transformer.resblocks.{i}.{rest}"
        else:
            name = "Transformer." + {"patch_embed.weight": "conv1.weight",
                                     "part_tokens": "class_embedding",
                                     "norm_pre.weight": "ln_pre.weight",
                                     "norm_pre.bias": "ln_pre.bias",
                                     "norm_post.weight": "ln_post.weight",
                                     "norm_post.bias": "ln_post.bias"}.get(k, k)
        sd[name] = v
    for k, v in ours.items():
        if k.startswith("decoder."):
            k = k[len("decoder."):]
            sd["Decoder." + ("patch_embed.proj." + k[len("patch_embed."):]
                             if k.startswith("patch_embed.") else k)] = v
    sd["Decoder.cls_token"] = torch.zeros(1, 1, 32)
    sd["Decoder.mask_token"] = torch.zeros(1, 1, D)
    sd["Decoder.pos_embed"] = sincos_pos_embed_2d(32, 4, 4)[None]
    sd["Decoder.decoder_pos_embed"] = sincos_pos_embed_2d(D, 4, 4)[None]
    return sd, ours


def test_convert_synthetic_official_state_dict(model):
    """utils/save.py / Evaluation.py: their checkpoints are MPAE.state_dict() (keys
    ArcMarginProduct.*, compress_layer.*, backbone1.* (DINOv2), Transformer.*, Decoder.*).
    DINOv2 adds pos_embed[:, 0] to the class token (dinov2 prepare_tokens_with_masks); timm keeps
    it in cls_token."""
    sd, ours = _theirs_from_ours(model)
    out = convert_state_dict(sd, model.state_dict())
    assert set(out) == set(ours)
    for k, v in ours.items():
        torch.testing.assert_close(out[k], v, msg=k)
    m2 = tiny_model()
    m2.load_state_dict(out, strict=True)
    assert official_to_ours("Transformer.transformer.resblocks.0.mlp.c_fc.weight") == \
        "part_vit.blocks.0.mlp.fc1.weight"


def test_convert_is_strict(model):
    """Every key consumed, every model key filled, fixed sin-cos checked."""
    sd, _ = _theirs_from_ours(model)
    bad = dict(sd, **{"Transformer.extra": torch.zeros(1)})
    with pytest.raises(ConversionError, match="unexpected key `Transformer.extra`"):
        convert_state_dict(bad, model.state_dict())
    bad = {k: v for k, v in sd.items() if k != "Decoder.decoder_pred.bias"}
    with pytest.raises(ConversionError, match="decoder.decoder_pred.bias"):
        convert_state_dict(bad, model.state_dict())
    bad = {k: v for k, v in sd.items() if k != "ArcMarginProduct.weight"}
    with pytest.raises(ConversionError, match="ArcMarginProduct.weight"):
        convert_state_dict(bad, model.state_dict())
    bad = dict(sd, **{"Decoder.pos_embed": sd["Decoder.pos_embed"] + 0.1})
    with pytest.raises(ConversionError, match="sin-cos"):
        convert_state_dict(bad, model.state_dict())
    bad = dict(sd, **{"backbone1.pos_embed": sd["backbone1.pos_embed"][:, :50]})
    with pytest.raises(ConversionError, match="img_size=518"):
        convert_state_dict(bad, model.state_dict())


def test_infer_config_from_shapes(model):
    """Get_vit(num_part, ...) keeps K+1 class embeddings; MaskedAutoencoderViT's pos_embed has g^2
    rows; decoder_pred has rec_patch^2 * 3 outputs."""
    sd, _ = _theirs_from_ours(model)
    cfg, num_parts, image_size, enc_kwargs = infer_config(sd)
    assert (num_parts, image_size, cfg.feature_dim) == (K, S, D)
    # heads are not in the shapes: C / 64 for other widths than DINOv2 ViT-B's (768 -> 12)
    assert {k: enc_kwargs[k] for k in ("img_size", "embed_dim", "depth")} == \
        {"img_size": 518, "embed_dim": 32, "depth": 1}
    assert (cfg.part_vit.width, cfg.part_vit.depth, cfg.part_vit.patch_size) == (32, 1, 14)
    assert (cfg.decoder.embed_dim, cfg.decoder.depth, cfg.decoder.decoder_depth,
            cfg.decoder.out_patch) == (32, 1, 1, 8)
    assert cfg.predict_upsample == 32.0          # 128 / g
    assert isinstance(cfg, MPAEConfig)


def test_their_training_checkpoint_converts_to_ours(model, tmp_path):
    """train.py save_checkpoint: {'epoch', 'model', 'state_dict' (DataParallel: 'module.' keys),
    'best_state_dict', 'perf', 'optimizer'}; the released files are the plain state dict. The
    conversion gives one of our checkpoints (config inside: method mpae, K and S from the file)
    that loads strictly and predicts the maps of the original model."""
    from partformer import config as cfglib
    from partformer.hub import convert_official_file, load_model
    from partformer.methods.mpae.convert import convert_checkpoint

    sd, ours = _theirs_from_ours(model)
    path = tmp_path / "checkpoint.pth"
    torch.save({"epoch": 3, "model": "MPAE", "perf": 12.5,
                "state_dict": {"module." + k: v for k, v in sd.items()},
                "best_state_dict": sd, "optimizer": {}}, path)
    with pytest.raises(ConversionError, match="pass --dataset"):
        convert_checkpoint(str(path))            # K = 3 at 56 px is no published run
    res = convert_checkpoint(str(path), dataset="cub")
    cfg = cfglib.from_dict(__import__("yaml").safe_load(res["config"]))
    assert cfg.method.name == "mpae" and cfg.model.num_parts == K and cfg.data.image_size == S
    assert res["source"]["epoch"] == 3 and res["source"]["method"] == "mpae"
    torch.testing.assert_close(res["model"]["part_vit.pos_embed"], ours["part_vit.pos_embed"])
    # the released form, detected as MPAE's by the generic converter and every tool's --model
    torch.save(sd, tmp_path / "released.pth")
    out = tmp_path / "ours.pt"
    src = convert_official_file(str(tmp_path / "released.pth"), str(out), dataset="cub")
    assert src["method"] == "mpae"
    _, loaded, _ = load_model(str(out), torch.device("cpu"))
    # every weight of the original model, loaded strictly (the tiny test encoder's 2 heads are
    # not in a state dict; the published ViT-B/14 needs no guess)
    assert set(loaded.state_dict()) == set(ours)
    for k, v in loaded.state_dict().items():
        torch.testing.assert_close(v, ours[k], msg=k)


def test_without_perceptual_loss_the_reconstruction_is_the_pixel_term():
    """mpae.loss.perceptual=false (no ImageNet VGG19 offline): reconstruction =
    l1_weight * mean|R - T|, no VGG19 built."""
    obj = MPAEObjective(dataclasses.replace(MPAELossConfig(), perceptual=False, l1_weight=1.0,
                                            presence_group_size=2))
    assert obj.perceptual is None
    model = tiny_model()
    out = model(images(), mask_noise=torch.rand(2, 16, generator=torch.Generator().manual_seed(0)))
    terms = obj.compute(out)
    torch.testing.assert_close(terms["reconstruction"],
                               (out["recon"] - out["target"]).abs().mean())
