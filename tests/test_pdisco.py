"""PDiscoFormer / PDiscoNet (partformer.methods.pdiscoformer / .pdisconet, losses.priors,
layers.part_prototypes, augment.RigidWarp): expected values follow from their code
(ananthu-aniraj/pdiscoformer @ f039c15; file and function cited per test). Tiny models, no
downloads, their code is not imported."""
from __future__ import annotations

import math

import pytest
import torch

from partformer.augment import RigidWarp, torchvision_affine_matrix, translation_matrix
from partformer.layers.part_prototypes import (PartPrototypeHead, assign_parts, part_features,
                                               prototype_logits)
from partformer.losses.priors import (TotalVariationLoss, background_presence_loss, border_mask,
                                      equivariance_loss, orthogonality_loss, part_presence_loss,
                                      pdisco_concentration_loss, pixel_entropy_loss,
                                      total_variation_loss)
from partformer.methods.pdiscoformer import (DATASET_PRESETS, LOSS_KEYS, PDiscoFormerConfig,
                                             PDiscoFormerModel, PDiscoObjective, scaled_lr)
from partformer.methods.pdiscoformer import convert as vit_convert
from partformer.methods.pdisconet import PDiscoNetConfig, PDiscoNetModel
from partformer.methods.pdisconet import convert as resnet_convert

torch.set_num_threads(1)

TINY_VIT = dict(encoder="vit_tiny_patch16_224", encoder_pretrained=False, image_size=32,
                encoder_kwargs=dict(patch_size=8, depth=1, embed_dim=16, num_heads=2, reg_tokens=2,
                                    no_embed_class=True))


def tiny_vit(**kw) -> PDiscoFormerModel:
    torch.manual_seed(0)
    return PDiscoFormerModel(PDiscoFormerConfig(**{"num_parts": 3, "num_classes": 5, **TINY_VIT, **kw}))


def tiny_resnet(**kw) -> PDiscoNetModel:
    torch.manual_seed(0)
    return PDiscoNetModel(PDiscoNetConfig(**{"num_parts": 2, "num_classes": 4, "encoder": "resnet18",
                                             "encoder_pretrained": False, "image_size": 64, **kw}))


# ------------------------------------------------------------------------------- loss formulas
def _two_channel_step():
    a = torch.tensor([[1.0, 0.0], [0.0, 0.0]])
    return torch.stack([a, 1 - a])[None]                        # [1, 2, 2, 2]


def test_total_variation_sums_channels_and_divides_by_b_h_w():
    """engine/losses/total_variation.py TotalVariationLoss(reduction="mean"): Σ|Δrow| + Σ|Δcol|
    over all channels, divided by num_elements = B·H·W (not ×C). Each channel here has TV 2."""
    maps = _two_channel_step()
    assert total_variation_loss(maps).item() == pytest.approx(4 / 4)


def test_total_variation_cached_normaliser_is_an_option():
    """TotalVariationLoss.forward stores num_elements on its first call and reuses it: a batch of
    2 after a batch of 1 is divided by the first batch's 1·2·2 = 4."""
    one, two = _two_channel_step(), _two_channel_step().repeat(2, 1, 1, 1)
    theirs = TotalVariationLoss(cache_normaliser=True)
    assert theirs(one).item() == pytest.approx(1.0)
    assert theirs(two).item() == pytest.approx(2.0)          # 8 / 4
    assert TotalVariationLoss()(two).item() == pytest.approx(1.0)


def test_pixel_entropy_is_categorical_entropy():
    """engine/losses/pixel_wise_entropy_loss.py: Categorical(probs).entropy().mean() — log C for
    uniform cells, ~0 for one-hot cells (probs clamped to [eps, 1 - eps])."""
    uniform = torch.full((2, 4, 3, 3), 0.25)
    assert pixel_entropy_loss(uniform).item() == pytest.approx(math.log(4), abs=1e-6)
    one_hot = torch.zeros(1, 4, 2, 2)
    one_hot[:, 1] = 1
    assert 0 <= pixel_entropy_loss(one_hot).item() < 1e-6


def test_presence_is_a_max_over_the_batch():
    """engine/losses/presence_loss.py presence_loss_original: 1 − mean_k max_b max_ij
    avgpool3x3(A_k); soft_constraint: mean (1−M)((1−β)sg(M)+β). Part 0 fills image 0; part 1 is 0.5
    on one 3×3 block of image 1 (pooled peak 0.5)."""
    fg = torch.zeros(2, 2, 6, 6)
    fg[0, 0] = 1.0
    fg[1, 1, 0:3, 0:3] = 0.5
    assert part_presence_loss(fg, "original").item() == pytest.approx(1 - (1 + 0.5) / 2)
    assert part_presence_loss(fg, "soft_constraint", beta=0.1).item() == pytest.approx(0.5 * (0.9 * 0.5 + 0.1) / 2)
    # the original PDiscoNet (part_detection train.py) crops maps[:, :, 2:-2, 2:-2] first; with a
    # 1-cell crop only 4 cells of the block stay in the best 3×3 window
    assert part_presence_loss(fg, "original", crop=1).item() == pytest.approx(1 - (1 + 0.5 * 4 / 9) / 2)


def test_background_presence_masks_the_centre():
    """engine/losses/enforced_presence_loss.py type 'enforced_presence': avgpool3x3 of the last
    map × (y² + x²)/max on the pooled grid, max per image, BCE against 1. A 3×3 background block in
    the centre of a 5×5 map: the centre pooled cell is masked to 0, the corner cells see 4/9."""
    mask = border_mask(3, 3)
    assert mask.tolist() == [[1.0, 0.5, 1.0], [0.5, 0.0, 0.5], [1.0, 0.5, 1.0]]
    maps = torch.zeros(1, 2, 5, 5)
    maps[0, 1, 1:4, 1:4] = 1.0
    maps[0, 0] = 1 - maps[0, 1]
    assert background_presence_loss(maps).item() == pytest.approx(-math.log(4 / 9), rel=1e-6)
    # type 'log': BCE of the spatial mean of the background map
    assert background_presence_loss(maps, "log").item() == pytest.approx(-math.log(9 / 25), rel=1e-6)
    assert background_presence_loss(maps, "linear").item() == pytest.approx(1 - 9 / 25, rel=1e-6)


def test_orthogonality_includes_background_and_diagonal():
    """engine/losses/orthogonality_loss.py: mean over B·P·P of (cos − I)², on all K+1 part vectors."""
    ortho = torch.eye(3)[None]                                  # [1, D=3, P=3]
    assert orthogonality_loss(ortho).item() == pytest.approx(0.0, abs=1e-7)
    same = torch.ones(1, 4, 2)
    assert orthogonality_loss(same).item() == pytest.approx(2 / 4)


def test_equivariance_is_one_minus_mean_cosine_of_foreground_maps():
    """engine/losses/equivarance_loss.py: 1 − mean cos(A_k, unwarp(A'_k)) over images and the K
    foreground maps (the background channel is not compared)."""
    a = torch.zeros(1, 3, 2, 2)
    a[0, 0, 0, 0] = a[0, 1, 1, 1] = 1
    a[0, 2] = 1 - a[0, 0] - a[0, 1]
    assert equivariance_loss(a, a.clone()).item() == pytest.approx(0.0, abs=1e-6)
    b = a.clone()
    b[0, 2] = 0.0                                               # background differs: ignored
    assert equivariance_loss(a, b).item() == pytest.approx(0.0, abs=1e-6)
    c = a[:, [1, 0, 2]]                                         # the foreground maps swapped
    assert equivariance_loss(a, c).item() == pytest.approx(1.0)


def test_concentration_spread_over_b_k_h_w():
    """engine/losses/concentration_loss.py ConcentrationLoss (and get_landmark_coordinates.py):
    centroid with detached mass, ((ī−i)/w)² + ((j̄−j)/h)² weighted by A, mean over the foreground
    maps' B·K·h·w cells. Mass 0.5 at (0, 0) and (0, 2): centroid (0, 1), spread 1/16 at both."""
    maps = torch.zeros(1, 2, 4, 4)
    maps[0, 0, 0, 0] = maps[0, 0, 0, 2] = 0.5
    maps[0, 1] = 1 - maps[0, 0]
    assert pdisco_concentration_loss(maps).item() == pytest.approx(2 * 0.5 / 16 / 16)


# ------------------------------------------------------------------------------------ the head
def test_prototype_logits_part_features_and_gumbel():
    """models/individual_landmark_vit.py forward: maps = softmax(−(‖z‖² − 2 z·p + ‖p‖²)) (or
    F.gumbel_softmax: softmax((ℓ + g)/τ)); all_features = (maps ⊗ z).mean(-1).mean(-1), a mean over
    all h·w cells."""
    torch.manual_seed(1)
    z, p = torch.randn(2, 6, 3, 4), torch.randn(5, 6, 1, 1)
    ref = -((z[:, None] - p.view(1, 5, 6, 1, 1)) ** 2).sum(2)
    torch.testing.assert_close(prototype_logits(z, p), ref, rtol=1e-5, atol=1e-4)
    maps = assign_parts(ref)
    f = part_features(maps, z)
    torch.testing.assert_close(f, (maps[:, None] * z[:, :, None]).mean(-1).mean(-1), rtol=1e-5, atol=1e-6)
    g = torch.randn_like(ref)
    torch.testing.assert_close(assign_parts(ref, g, tau=0.5), ((ref + g) / 0.5).softmax(1))
    hard = assign_parts(ref, g, hard=True)
    assert set(hard.unique().tolist()) <= {0.0, 1.0}


def test_layer_norm_modulation_normalises_the_whole_part_block():
    """individual_landmark_vit.py: modulation = LayerNorm([C, K+1]): one mean / variance over all
    C×(K+1) entries of an image, not per part."""
    head = PartPrototypeHead(dim=4, num_parts=2, num_classes=3, modulation="layer_norm")
    assert tuple(head.modulation.weight.shape) == (4, 3)
    out = head(torch.randn(2, 4, 3, 3))
    m = out["modulated"]
    assert m.mean(dim=(1, 2)).abs().max() < 1e-5
    assert m.mean(dim=1).abs().max() > 1e-3                      # per part it is not centred


def test_part_dropout_and_part_averaged_classifier():
    """individual_landmark_vit.py forward: fc_class_landmarks(Dropout1d(mod[..., :-1]ᵀ)) → scores
    [B, classes, K]; trainer: outputs = scores.mean(-1). Dropout1d zeroes whole part vectors and
    scales the rest by 1/(1−p); the background vector never reaches the classifier."""
    torch.manual_seed(2)
    head = PartPrototypeHead(dim=4, num_parts=2, num_classes=3, modulation="none", part_dropout=0.5)
    z = torch.randn(1, 4, 3, 3)
    keep = torch.tensor([[[1.0], [0.0]]])                       # drop part 1
    out = head(z, dropout_mask=keep)
    f = out["modulated"]
    expect = (head.classifier(f[..., 0] * 2) + 0) / 2
    torch.testing.assert_close(out["class_logits"], expect)
    plain = head(z)
    torch.testing.assert_close(plain["class_logits"], head.classifier(f[..., :2].transpose(1, 2)).mean(1))


def test_gumbel_off_at_test_unless_asked():
    """individual_landmark_vit.py forward has no self.training check: with gumbel_softmax=True
    (the torch.hub / HF models) their eval maps are noisy. Ours: predict is the softmax unless
    gumbel_at_test=True."""
    model = tiny_vit().eval()
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        a, b = model.predict(x), model.predict(x)
        z = model.encoder(model.normalize(x))
        soft = prototype_logits(z, model.head.prototypes.weight).softmax(1)
    assert torch.equal(a, b)
    torch.testing.assert_close(a, soft)
    assert a.shape == (2, 4, 4, 4)
    model.gumbel_at_test = True
    with torch.no_grad():
        g1 = model.predict(x, generator=torch.Generator().manual_seed(3))
        g2 = model.predict(x, generator=torch.Generator().manual_seed(3))
    assert torch.equal(g1, g2) and not torch.allclose(g1, soft)


# ------------------------------------------------------------------------------------ the warp
def test_warp_angle_is_clockwise_like_torchvision():
    """utils/data_utils/reversible_affine_transform.py rigid_transform uses torchvision's
    functional.affine: a positive angle turns the content clockwise (on screen, y down)."""
    img = torch.arange(16.0).view(1, 1, 4, 4)
    out = RigidWarp(90.0, (0, 0), 1.0).warp(img)
    torch.testing.assert_close(out, torch.rot90(img, k=-1, dims=(2, 3)), atol=1e-5, rtol=0)
    m = torchvision_affine_matrix(torch.tensor([90.0]), torch.zeros(1, 2), torch.tensor([1.0]), (4, 4))
    torch.testing.assert_close(m[0, :2, :2], torch.tensor([[0.0, -1.0], [1.0, 0.0]], dtype=torch.float64),
                               atol=1e-12, rtol=0)


def test_warp_round_trip_on_maps():
    """rigid_transform(invert=True): translate by −t·(w/W), then rotate by −θ with scale 1/s, both
    nearest. A quarter turn and a whole-pixel shift are undone exactly where nothing left the
    grid; the composed matrices are the inverse of the forward one."""
    torch.manual_seed(4)
    maps = torch.zeros(1, 3, 8, 8)
    maps[..., 3:5, 2:5] = torch.rand(1, 3, 2, 3)
    w = RigidWarp(90.0, (1.0, -1.0), 1.0)
    back = w.unwarp_maps(w.warp(maps, mode="nearest"), image_width=8)
    torch.testing.assert_close(back, maps)
    fwd = w.matrix((8, 8))
    inv = torchvision_affine_matrix(torch.tensor([-90.0]), torch.zeros(1, 2), torch.tensor([1.0]), (8, 8)) \
        @ translation_matrix(torch.tensor([[-1.0, 1.0]]))
    torch.testing.assert_close(inv @ fwd, torch.eye(3, dtype=torch.float64)[None], atol=1e-12, rtol=0)


def test_warp_sampling_order_and_ranges():
    """generate_affine_trans_params: angle ~ U(±deg), then t_x = round(U(±0.11·img_size[0])),
    t_y = round(U(±0.11·img_size[1])), then scale ~ U(0.8, 1.4): four scalar torch draws in order."""
    w = RigidWarp.sample((100, 50), generator=torch.Generator().manual_seed(5))
    g = torch.Generator().manual_seed(5)
    u = [torch.empty(1).uniform_(lo, hi, generator=g).item()
         for lo, hi in [(-90, 90), (-11.0, 11.0), (-5.5, 5.5), (0.8, 1.4)]]
    assert (w.angle, w.translate, w.scale) == (u[0], (float(round(u[1])), float(round(u[2]))), u[3])


# ------------------------------------------------------------------------- optimiser groups
def test_param_groups_pdiscoformer():
    """utils/training_utils/optimizer_params.py layer_group_matcher_pdisco with --freeze_backbone:
    only cls/reg tokens + pos_embed (lr ×1, no wd), fc_landmarks (×1e3, no wd), modulation (×1e4,
    no wd) and fc_class_landmarks (×1e4) train; their CUB lr 1.414e-6 (batch 32)."""
    model = tiny_vit()
    groups = {g["name"]: g for g in model.param_groups()}
    assert {k: g["lr_mult"] for k, g in groups.items()} == {
        "tokens": 1.0, "prototypes": 1e3, "modulation": 1e4, "classifier": 1e4}
    assert all(groups[k]["weight_decay"] == 0.0 for k in groups)
    n = {id(p): name for name, p in model.named_parameters()}
    assert sorted(n[id(p)] for p in groups["tokens"]["params"]) == [
        "encoder.model.cls_token", "encoder.model.pos_embed", "encoder.model.reg_token"]
    assert not any(p.requires_grad for name, p in model.named_parameters() if ".blocks." in name)
    assert PDiscoFormerConfig().lr == 1.414e-6 and scaled_lr(32) == pytest.approx(1.414e-6, rel=1e-3)
    assert DATASET_PRESETS["part_imagenet_seg"]["image_size"] == 224


def test_param_groups_pdisconet():
    """Same matcher on IndividualLandmarkResNet (nothing frozen): weights ndim>1 ×1 with wd, 1-d
    (BN, biases) ×1 without, fc_landmarks / modulation / fc_class_landmarks with the factors of
    argument_parser_pdisconet.py @61b082a (×10, ×100, ×100)."""
    model = tiny_resnet()
    groups = {g["name"]: g["lr_mult"] for g in model.param_groups()}
    assert groups == {"backbone": 1.0, "backbone_1d": 1.0, "prototypes": 10.0, "modulation": 100.0,
                      "classifier": 100.0}
    assert tuple(model.head.modulation.scale.shape) == (1, 256 + 512, 3)


def test_pdisconet_concatenates_layer4_first():
    """models/individual_landmark_resnet.py forward: cat((interpolate(layer4, layer3 size,
    bilinear, align_corners=False), layer3), dim=1)."""
    model = tiny_resnet().eval()
    x = model.normalize(torch.rand(1, 3, 64, 64))
    with torch.no_grad():
        l3, l4 = model.encoder.model(x)
        z = model.encoder(x)
    up = torch.nn.functional.interpolate(l4, size=l3.shape[-2:], mode="bilinear", align_corners=False)
    torch.testing.assert_close(z, torch.cat([up, l3], 1))


# ------------------------------------------------------------------------------- conversion
def _theirs(sd, head_map):
    out = {}
    for k, v in sd.items():
        out[head_map.get(k, k[len("encoder.model."):] if k.startswith("encoder.model.") else k)] = v.clone()
    return out


VIT_HEAD = {"head.prototypes.weight": "fc_landmarks.weight", "head.modulation.weight": "modulation.weight",
            "head.modulation.bias": "modulation.bias", "head.classifier.weight": "fc_class_landmarks.weight"}


def test_convert_pdiscoformer_snapshot_with_their_keys():
    """load_model.py pdiscoformer_vit: a snapshot {'model_state': ...} (distributed_trainer_pdisco
    _save_snapshot) or a bare state dict with IndividualLandmarkViT's names (timm names at the top
    level, fc_landmarks, modulation, fc_class_landmarks); an EMA snapshot is 'module.'-prefixed."""
    src = tiny_vit()
    with torch.no_grad():
        for p in src.parameters():
            p.add_(torch.randn_like(p))
    theirs = _theirs(src.state_dict(), VIT_HEAD)
    assert "cls_token" in theirs and "blocks.0.attn.qkv.weight" in theirs and "fc_landmarks.weight" in theirs
    snapshot = {"model_state": {"module." + k: v for k, v in theirs.items()}, "optimizer_state": {},
                "scaler_state": {}, "finished_epoch": 3, "epoch_test_accuracies": [1.0]}
    dst = tiny_vit()
    vit_convert.load_official(dst, snapshot)
    for k, v in src.state_dict().items():
        assert torch.equal(v, dst.state_dict()[k]), k
    with pytest.raises(KeyError, match="fc_class_landmarks.feature_layers"):
        vit_convert.convert_state_dict({**theirs, "fc_class_landmarks.feature_layers.0.fc_0.weight": torch.zeros(1)})
    with pytest.raises(ValueError, match="fc_landmarks|prototypes"):
        vit_convert.load_official(tiny_vit(num_parts=4), theirs)


def test_convert_pdisconet_with_their_keys():
    """load_model.py pdisconet_resnet101 / part_detection main.py: torchvision names (conv1, bn1,
    layer1..4), fc_landmarks, modulation (a Parameter), fc_class_landmarks; the original's unused
    batchnorm.* (nets.py BatchNorm2d(11)) is dropped."""
    src = tiny_resnet()
    theirs = _theirs(src.state_dict(), {"head.prototypes.weight": "fc_landmarks.weight",
                                        "head.modulation.scale": "modulation",
                                        "head.classifier.weight": "fc_class_landmarks.weight"})
    assert "modulation" in theirs and "layer4.0.conv1.weight" in theirs
    theirs["batchnorm.weight"] = torch.ones(11)
    dst = tiny_resnet()
    with torch.no_grad():
        dst.head.modulation.scale.fill_(3.0)
    resnet_convert.load_official(dst, theirs)
    assert torch.equal(dst.head.modulation.scale, src.head.modulation.scale)


# ------------------------------------------------------------------------------- the objective
def test_objective_terms_draws_and_eval_branch():
    """engine/distributed_trainer_pdisco.py _run_batch: the weighted terms (CUB weights: class 1,
    presence 1, conc 0, equiv 1, orth 1, TV 1, enforced presence 2, entropy 1) sum to the total;
    with the same injected draws the step is deterministic; eval returns the CE only."""
    model = tiny_vit().train()
    objective = PDiscoObjective(model.cfg)
    x, y = torch.rand(2, 3, 32, 32), torch.tensor([1, 4])
    draws = objective.sample_draws(model, x, torch.Generator().manual_seed(6))
    assert draws["gumbel1"].shape == (2, 4, 4, 4) and draws["dropout1"].shape == (2, 3, 1)
    a = objective(model, x, y, draws=draws)
    b = objective(model, x, y, draws=draws)
    assert set(a) == set(LOSS_KEYS) | {"total"}
    assert all(v.dtype == torch.float32 and v.dim() == 0 for v in a.values())
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert a["concentration"].item() == 0.0
    torch.testing.assert_close(a["total"], sum(a[k] for k in LOSS_KEYS))
    c = objective(model, x, y, generator=torch.Generator().manual_seed(6))
    torch.testing.assert_close(c["total"], a["total"])
    a["total"].backward()
    assert model.encoder.model.pos_embed.grad is not None and model.head.classifier.weight.grad is not None
    model.eval()
    e = objective(model, x, y)
    assert set(e) == {"classification", "total"}
