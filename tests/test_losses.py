"""Tests for partformer.losses: each loss against a hand or direct computation (tiny, CPU, offline)."""
import math
import urllib.error

import os

import pytest
import torch
import torch.nn.functional as F

from partformer.methods.partformer import DEFAULT_LOSS_WEIGHTS, PartFormerCriterion
from partformer.losses import (
    VGG19_LAYER_WEIGHTS, VGG19_SLICES, VGGPerceptualLoss,
    VGGWeightsError, arcface_logits, arcface_loss, area_loss, concentration_loss, perceptual_loss,
    pixel_reconstruction_loss,
)


# ------------------------------------------------------------------------------- concentration
def _delta_maps(b, k, h, w, positions):
    """One-hot maps: part k is 1 at positions[k] (row, col), background (last) elsewhere."""
    maps = torch.zeros(b, k + 1, h, w)
    maps[:, k] = 1.0
    for part, (i, j) in enumerate(positions):
        maps[:, part, i, j] = 1.0
        maps[:, k, i, j] = 0.0
    return maps


def _block_maps(h, w, size):
    """Part 0 uniform over a size x size block; background elsewhere."""
    maps = torch.zeros(1, 2, h, w)
    maps[:, 1] = 1.0
    maps[:, 0, :size, :size] = 1.0
    maps[:, 1, :size, :size] = 0.0
    return maps


def _naive_concentration(maps, k):
    b, _, h, w = maps.shape
    total = 0.0
    for n in range(b):
        for part in range(k):
            a = maps[n, part].double()
            ys = torch.tensor([i / h * 2 - 1 for i in range(h)], dtype=torch.float64)[:, None].expand(h, w)
            xs = torch.tensor([j / w * 2 - 1 for j in range(w)], dtype=torch.float64)[None, :].expand(h, w)
            mass = a.sum()
            xb, yb = (a * xs).sum() / mass, (a * ys).sum() / mass
            total += float((a * ((xs - xb) ** 2 + (ys - yb) ** 2)).sum() / mass)
    return total / b


def test_concentration_of_delta_maps_is_zero():
    maps = _delta_maps(2, 3, 8, 8, [(0, 0), (3, 5), (7, 2)])
    assert concentration_loss(maps, num_fg=3).item() == pytest.approx(0.0, abs=1e-6)


def test_concentration_grows_with_spread():
    values = [concentration_loss(_block_maps(8, 8, s), num_fg=1).item() for s in (1, 2, 4, 8)]
    assert values[0] == pytest.approx(0.0, abs=1e-6)
    assert all(a < b for a, b in zip(values, values[1:]))


def test_concentration_grid_coordinates_by_hand():
    # w = 4: x_j = j/4*2-1 -> x_0 = -1, x_2 = 0; equal mass on both: centroid -0.5, variance 0.25.
    maps = torch.zeros(1, 2, 4, 4)
    maps[0, 0, 1, 0] = maps[0, 0, 1, 2] = 0.5
    assert concentration_loss(maps, num_fg=1).item() == pytest.approx(0.25, rel=1e-5)
    # same along y on a non-square grid (h = 8: y_i = i/8*2-1, rows 0 and 4 -> -1 and 0)
    maps = torch.zeros(1, 2, 8, 4)
    maps[0, 0, 0, 1] = maps[0, 0, 4, 1] = 3.0
    assert concentration_loss(maps, num_fg=1).item() == pytest.approx(0.25, rel=1e-5)


def test_concentration_matches_naive_formula_and_skips_background():
    """The authors' CUB_Model.py (UnsupervisedPart_CUB.forward) passes only
    ``output_distribution[:, :num_point - background]``, the K part maps, to
    ``Concentration_loss``, which returns the concentration and the area terms: the background
    map enters neither."""
    torch.manual_seed(0)
    maps = torch.randn(3, 5, 6, 7).softmax(1)
    ref = _naive_concentration(maps, 4)
    assert concentration_loss(maps, num_fg=4).item() == pytest.approx(ref, rel=1e-5)
    assert concentration_loss(maps).item() == pytest.approx(ref, rel=1e-5)  # default: all but last
    # changing only the background channel changes nothing
    maps2 = maps.clone()
    maps2[:, 4] = torch.rand(3, 6, 7)
    assert concentration_loss(maps2, num_fg=4).item() == pytest.approx(ref, rel=1e-5)


def test_concentration_of_empty_part_is_finite():
    maps = torch.zeros(2, 3, 4, 4, requires_grad=True)
    loss = concentration_loss(maps, num_fg=2)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(maps.grad).all()


# --------------------------------------------------------------------------------------- area
def test_area_loss_by_hand_and_decreasing_with_part_size():
    values = []
    for size in (1, 2, 4, 8):
        maps = _block_maps(8, 8, size)
        value = area_loss(maps, eps_area=0.5).item()
        assert value == pytest.approx(1.0 / (1.0 + (size * size + 1e-8) / 0.5), rel=1e-6)
        values.append(value)
    assert all(a > b for a, b in zip(values, values[1:]))


def test_area_loss_vanished_part_costs_one():
    maps = torch.zeros(4, 3, 5, 5)
    maps[:, 2] = 1.0  # everything background
    assert area_loss(maps, eps_area=2.0).item() == pytest.approx(2.0, rel=1e-6)  # K = 2 parts, 1 each


def test_area_loss_all_maps_includes_background():
    torch.manual_seed(0)
    maps = torch.randn(2, 4, 6, 6).softmax(1)
    s = maps.sum(dim=(2, 3)) + 1e-8
    ref_fg = (1 / (1 + s[:, :3] / 1.5)).sum(1).mean()
    ref_all = (1 / (1 + s / 1.5)).sum(1).mean()
    assert area_loss(maps, 1.5).item() == pytest.approx(ref_fg.item(), rel=1e-6)
    assert area_loss(maps, 1.5, num_maps=4).item() == pytest.approx(ref_all.item(), rel=1e-6)


def test_area_normalise_is_identity_at_32_and_rescales_elsewhere():
    torch.manual_seed(0)
    maps32 = torch.randn(2, 5, 32, 32).softmax(1)
    assert area_loss(maps32, 0.5, normalise=True).item() == pytest.approx(area_loss(maps32, 0.5).item(), rel=1e-6)
    # a 16x16 grid: sums are 4x smaller; normalising = measuring them in 32x32 cells
    maps16 = torch.randn(2, 5, 16, 16).softmax(1)
    s = maps16[:, :4].sum(dim=(2, 3)) + 1e-8
    ref = (1 / (1 + 4 * s / 0.5)).sum(1).mean()
    assert area_loss(maps16, 0.5, normalise=True).item() == pytest.approx(ref.item(), rel=1e-5)
    # upsampling the maps by 2 (same soft areas relative to the image) keeps the normalised loss
    maps64 = F.interpolate(maps32, scale_factor=2, mode="nearest")
    assert area_loss(maps64, 0.5, normalise=True).item() == pytest.approx(
        area_loss(maps32, 0.5).item(), rel=1e-5)


# ------------------------------------------------------------------------------------ arcface
def _direct_arcface_logits(tokens, weight, labels, s, m):
    out = torch.empty(tokens.shape[0], weight.shape[0], dtype=torch.float64)
    for n in range(tokens.shape[0]):
        t = tokens[n].double() / tokens[n].double().norm()
        for c in range(weight.shape[0]):
            wc = weight[c].double() / weight[c].double().norm()
            cos = float(t @ wc)
            if c == int(labels[n]):
                if cos > math.cos(math.pi - m):
                    val = math.cos(math.acos(max(-1.0, min(1.0, cos))) + m)
                else:
                    val = cos - math.sin(math.pi - m) * m
            else:
                val = cos
            out[n, c] = s * val
    return out


def test_arcface_logits_match_hand_computation():
    # token (1, 0) vs classes (1, 0) and (0, 1): cos = 1 and 0.
    tokens = torch.tensor([[2.0, 0.0]])
    weight = torch.tensor([[3.0, 0.0], [0.0, 0.5]])
    logits = arcface_logits(tokens, weight, torch.tensor([0]), s=20.0, m=0.5)
    assert logits[0, 0].item() == pytest.approx(20 * math.cos(0.5), abs=1e-4)
    assert logits[0, 1].item() == pytest.approx(0.0, abs=1e-5)
    # label 1: the margin is on class 1 (cos 0 -> cos(pi/2 + 0.5) = -sin 0.5), class 0 plain
    logits = arcface_logits(tokens, weight, torch.tensor([1]), s=20.0, m=0.5)
    assert logits[0, 0].item() == pytest.approx(20.0, abs=1e-4)
    assert logits[0, 1].item() == pytest.approx(-20 * math.sin(0.5), abs=1e-4)


def test_arcface_logits_margin_branches_match_direct_formula():
    torch.manual_seed(0)
    d = 3
    # tokens at many angles to class 0, including beyond pi - m (the linear branch)
    angles = torch.linspace(0.05, math.pi - 0.05, 25)
    tokens = torch.stack([torch.cos(angles), torch.sin(angles), torch.zeros_like(angles)], 1)
    weight = torch.cat([torch.tensor([[1.0, 0.0, 0.0]]), torch.randn(3, d)])
    labels = torch.zeros(25, dtype=torch.long)
    for m in (0.2, 0.5):
        got = arcface_logits(tokens, weight, labels, s=7.0, m=m)
        ref = _direct_arcface_logits(tokens, weight, labels, 7.0, m)
        assert torch.allclose(got.double(), ref, atol=1e-4)
    assert (angles > math.pi - 0.5).any()  # the threshold branch was exercised
    # random tokens and labels
    tokens, weight = torch.randn(10, 6), torch.randn(4, 6)
    labels = torch.randint(0, 4, (10,))
    assert torch.allclose(arcface_logits(tokens, weight, labels, 20, 0.5).double(),
                          _direct_arcface_logits(tokens, weight, labels, 20, 0.5), atol=1e-3)


def test_arcface_loss_is_minimal_for_aligned_orthogonal_tokens():
    k, d, b = 4, 8, 2
    weight = torch.eye(k, d) * 3.0
    aligned = torch.cat([torch.eye(k, d), torch.randn(1, d)]).expand(b, k + 1, d)   # + a background token
    shuffled = aligned[:, [1, 2, 3, 0, 4]]
    loss_aligned = arcface_loss(aligned, weight, s=20.0, m=0.5)
    loss_shuffled = arcface_loss(shuffled, weight, s=20.0, m=0.5)
    assert loss_aligned < loss_shuffled
    # aligned: each token has logit s*cos(m) on its class and 0 elsewhere (s = 4 keeps float32 exact)
    loss_aligned = arcface_loss(aligned, weight, s=4.0, m=0.5)
    ref = -torch.log_softmax(torch.tensor([4 * math.cos(0.5), 0.0, 0.0, 0.0]), 0)[0]
    assert loss_aligned.item() == pytest.approx(ref.item(), rel=1e-5)
    # random perturbations never beat the aligned configuration
    torch.manual_seed(0)
    for _ in range(5):
        noisy = aligned + 0.3 * torch.randn_like(aligned)
        assert arcface_loss(noisy, weight, s=4.0, m=0.5) > loss_aligned


def test_arcface_loss_equals_cross_entropy_of_logits_and_has_finite_grads():
    torch.manual_seed(0)
    tokens = torch.randn(3, 5, 6, requires_grad=True)
    weight = torch.randn(4, 6, requires_grad=True)
    labels = torch.arange(4).repeat(3)
    ref = F.cross_entropy(arcface_logits(tokens[:, :4].reshape(12, 6), weight, labels), labels)
    loss = arcface_loss(tokens, weight)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    loss.backward()
    assert torch.isfinite(tokens.grad).all() and torch.isfinite(weight.grad).all()
    assert tokens.grad[:, 4].abs().sum() == 0  # background token untouched
    # exactly aligned tokens (cos = 1): gradient still finite
    w = torch.eye(3, requires_grad=True)
    t = torch.eye(3).repeat(2, 1, 1).requires_grad_(True)
    arcface_loss(torch.cat([t, torch.zeros(2, 1, 3)], 1), w).backward()
    assert torch.isfinite(t.grad).all() and torch.isfinite(w.grad).all()


# --------------------------------------------------------------------------------- perceptual
@pytest.fixture(scope="module")
def torchvision_vgg_features():
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    return torchvision.models.vgg19(weights=None).features.eval()


@pytest.fixture(scope="module")
def vgg_file(tmp_path_factory, torchvision_vgg_features):
    """A torchvision-style vgg19 state dict (features.* + a classifier key) on disk."""
    state = {f"features.{k}": v for k, v in torchvision_vgg_features.state_dict().items()}
    state["classifier.0.weight"] = torch.zeros(2, 2)
    path = tmp_path_factory.mktemp("vgg") / "vgg19.pth"
    torch.save(state, path)
    return path


def test_perceptual_loss_zero_for_identical_and_positive_otherwise():
    torch.manual_seed(0)
    loss = VGGPerceptualLoss(weights=None)
    x = torch.randn(2, 3, 32, 32)
    assert loss(x, x).item() == 0.0
    assert loss(x, x + 0.1 * torch.randn_like(x)).item() > 0


def test_perceptual_loss_matches_direct_computation_with_torchvision_slices(vgg_file, torchvision_vgg_features):
    loss = VGGPerceptualLoss(weights=str(vgg_file))
    assert len(loss.slices) == 5 and sum(len(s) for s in loss.slices) == 30  # truncated at relu5_1
    torch.manual_seed(1)
    recon, target = torch.randn(2, 3, 32, 32), torch.randn(2, 3, 32, 32)
    feats = torchvision_vgg_features
    ref, x, y = 0.0, recon, target
    with torch.no_grad():
        for (a, b), w in zip(VGG19_SLICES, VGG19_LAYER_WEIGHTS):
            x, y = feats[a:b](x.clone()), feats[a:b](y.clone())
            ref += w * (x - y).abs().mean().item()
    assert loss(recon, target).item() == pytest.approx(ref, rel=1e-4)
    # the layer weights are what they claim: unit weights give a different, matching sum
    unit = VGGPerceptualLoss(weights=str(vgg_file), layer_weights=(1, 1, 1, 1, 1))
    per_layer = []
    x, y = recon, target
    with torch.no_grad():
        for a, b in VGG19_SLICES:
            x, y = feats[a:b](x.clone()), feats[a:b](y.clone())
            per_layer.append((x - y).abs().mean().item())
    assert unit(recon, target).item() == pytest.approx(sum(per_layer), rel=1e-4)
    assert ref == pytest.approx(sum(w * v for w, v in zip(VGG19_LAYER_WEIGHTS, per_layer)), rel=1e-6)
    # the functional form with explicit slices
    assert perceptual_loss(loss.slices, recon, target, VGG19_LAYER_WEIGHTS).item() == pytest.approx(ref, rel=1e-4)


def test_perceptual_loss_is_frozen_and_passes_gradients_to_recon():
    loss = VGGPerceptualLoss(weights=None)
    loss.train()
    assert not loss.training and not any(m.training for m in loss.modules())
    assert not any(p.requires_grad for p in loss.parameters())
    recon = torch.randn(1, 3, 16, 16, requires_grad=True)
    loss(recon, torch.randn(1, 3, 16, 16)).backward()
    assert recon.grad is not None and recon.grad.abs().sum() > 0


def test_perceptual_loss_clear_errors_for_bad_local_weights(tmp_path, torchvision_vgg_features):
    garbage = tmp_path / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint")
    with pytest.raises(VGGWeightsError, match="could not read VGG19 weights") as e:
        VGGPerceptualLoss(weights=str(garbage))
    assert str(garbage) in str(e.value)

    with pytest.raises(VGGWeightsError, match="not found"):
        VGGPerceptualLoss(weights=str(tmp_path / "missing.pth"))

    state = {f"features.{k}": v for k, v in torchvision_vgg_features.state_dict().items()}
    del state["features.28.weight"]
    state["features.bogus"] = torch.zeros(1)
    state["features.0.bias"] = torch.zeros(3)
    bad = tmp_path / "bad_keys.pth"
    torch.save(state, bad)
    with pytest.raises(VGGWeightsError) as e:
        VGGPerceptualLoss(weights=str(bad))
    msg = str(e.value)
    assert "missing keys: features.28.weight" in msg
    assert "unexpected keys: features.bogus" in msg
    assert "shape mismatches: 0.bias: file (3,) vs model (64,)" in msg
    assert str(bad) in msg


def test_perceptual_loss_accepts_features_only_state_dict(tmp_path, torchvision_vgg_features):
    path = tmp_path / "features.pth"
    torch.save({k: v for k, v in torchvision_vgg_features.state_dict().items() if int(k.split(".")[0]) < 30}, path)
    loss = VGGPerceptualLoss(weights=str(path))
    assert torch.equal(loss.slices[4][-2].weight, torchvision_vgg_features[28].weight)


def test_imagenet_weights_unavailable_gives_instructions(monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    with pytest.raises(VGGWeightsError) as e:
        VGGPerceptualLoss(weights="imagenet")
    msg = str(e.value)
    assert "loss.vgg_weights=" in msg and "loss.recon=l1" in msg
    assert "vgg19-dcbb9e9d.pth" in msg and str(tmp_path) in msg


def test_imagenet_weights_are_downloaded_into_the_hub_cache_once(monkeypatch, tmp_path,
                                                                torchvision_vgg_features):
    """'imagenet': torchvision's URL is fetched into <TORCH_HOME>/hub/checkpoints with its hash
    prefix, once; later builds read the cached file (hash-checked, weights only)."""
    import shutil

    from partformer.fileio import sha256_file
    from partformer.losses import perceptual
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    source = tmp_path / "served.pth"
    state = torchvision_vgg_features.state_dict()
    torch.save({f"features.{k}": v for k, v in state.items()}, source)
    monkeypatch.setattr(perceptual, "IMAGENET_VGG19_SHA256_PREFIX", sha256_file(source)[:8])
    calls = []

    def download(url, dst, hash_prefix=None, progress=True):
        calls.append((url, hash_prefix))
        shutil.copy(source, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    for _ in range(2):
        loss = VGGPerceptualLoss(weights="imagenet")
        assert torch.equal(loss.slices[0][0].weight, state["0.weight"])
    assert calls == [("https://download.pytorch.org/models/vgg19-dcbb9e9d.pth",
                      sha256_file(source)[:8])]
    assert os.path.isfile(tmp_path / "torch_home" / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth")


# ---------------------------------------------------------------------------- reconstruction
def test_pixel_reconstruction_losses():
    x, y = torch.zeros(1, 3, 2, 2), torch.full((1, 3, 2, 2), 2.0)
    assert pixel_reconstruction_loss(x, y, "l1").item() == 2.0
    assert pixel_reconstruction_loss(x, y, "mse").item() == 4.0
    with pytest.raises(ValueError, match="unknown"):
        pixel_reconstruction_loss(x, y, "l3")


# --------------------------------------------------------------------------------- criterion
def _fake_out(b=2, k=3, d=8, h=4, w=5, hr=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {
        "part_tokens1": torch.randn(b, k + 1, d, generator=g),
        "part_tokens2": torch.randn(b, k + 1, d, generator=g),
        "assign12": torch.randn(b, k + 1, h, w, generator=g).softmax(1),
        "assign21": torch.randn(b, k + 1, h, w, generator=g).softmax(1),
        "recon1": torch.randn(b, 3, hr, hr, generator=g),
        "recon2": torch.randn(b, 3, hr, hr, generator=g),
        "target1": torch.randn(b, 3, hr, hr, generator=g),
        "target2": torch.randn(b, 3, hr, hr, generator=g),
        "arcface_weight": torch.randn(k, d, generator=g),
    }


@pytest.mark.parametrize("recon", ["l1", "mse"])
def test_criterion_averages_directions_and_weights_total(recon):
    out = _fake_out()
    crit = PartFormerCriterion(num_parts=3, recon=recon, area_eps=0.7)
    got = crit(out)
    assert set(got) == {"recon", "concentration", "area", "arcface", "total"}
    half = lambda f, a, b: 0.5 * (f(a) + f(b))  # noqa: E731
    ref = {
        "recon": 0.5 * (pixel_reconstruction_loss(out["recon2"], out["target2"], recon)
                        + pixel_reconstruction_loss(out["recon1"], out["target1"], recon)),
        "concentration": half(lambda m: concentration_loss(m, num_fg=3), out["assign12"], out["assign21"]),
        "area": half(lambda m: area_loss(m, 0.7), out["assign12"], out["assign21"]),
        "arcface": half(lambda t: arcface_loss(t, out["arcface_weight"]), out["part_tokens1"], out["part_tokens2"]),
    }
    for name, value in ref.items():
        assert got[name].item() == pytest.approx(value.item(), rel=1e-5), name
    total = 1.0 * ref["recon"] + 0.3 * ref["concentration"] + 0.5 * ref["area"] + 0.01 * ref["arcface"]
    assert got["total"].item() == pytest.approx(total.item(), rel=1e-5)


def test_criterion_options_weights_and_perceptual():
    out = _fake_out(k=2, hr=32)
    crit = PartFormerCriterion(2, recon="perceptual", vgg_weights=None, weights={"arcface": 0.0, "area": 2.0},
                               area_all_maps=True, area_eps=1.5)
    got = crit(out)
    assert crit.loss_weights == {"recon": 1.0, "concentration": 0.3, "area": 2.0, "arcface": 0.0}
    area_ref = 0.5 * (area_loss(out["assign12"], 1.5, num_maps=3) + area_loss(out["assign21"], 1.5, num_maps=3))
    assert got["area"].item() == pytest.approx(area_ref.item(), rel=1e-5)
    perc_ref = 0.5 * (crit.recon_loss(out["recon2"], out["target2"]) + crit.recon_loss(out["recon1"], out["target1"]))
    assert got["recon"].item() == pytest.approx(perc_ref.item(), rel=1e-5)
    assert got["total"].item() == pytest.approx(
        (got["recon"] + 0.3 * got["concentration"] + 2.0 * got["area"]).item(), rel=1e-5)


def test_criterion_backward_reaches_inputs():
    out = {k: v.requires_grad_(True) for k, v in _fake_out().items()}
    PartFormerCriterion(3, recon="l1")(out)["total"].backward()
    for key in ("part_tokens1", "assign12", "recon1", "arcface_weight"):
        assert out[key].grad is not None and torch.isfinite(out[key].grad).all(), key


def test_criterion_from_config_and_errors():
    from dataclasses import dataclass, field

    @dataclass
    class LossCfg:
        recon: str = "l1"
        vgg_weights: str = "imagenet"
        weights: dict = field(default_factory=lambda: dict(DEFAULT_LOSS_WEIGHTS, concentration=0.7))
        area_eps: float = 2.0
        area_all_maps: bool = False
        area_normalise: bool = True
        arcface_s: float = 10.0
        arcface_m: float = 0.3

    crit = PartFormerCriterion.from_config(LossCfg(), num_parts=3)
    assert crit.recon == "l1" and crit.area_eps == 2.0 and crit.area_normalise and crit.arcface_s == 10.0
    assert crit.loss_weights["concentration"] == 0.7
    crit = PartFormerCriterion.from_config({"recon": "mse", "area_eps": 1.5}, num_parts=3)
    assert crit.recon == "mse" and crit.area_eps == 1.5
    with pytest.raises(ValueError, match="loss.bogus"):
        PartFormerCriterion.from_config({"recon": "l1", "bogus": 1}, num_parts=3)
    with pytest.raises(ValueError, match="unknown loss weight"):
        PartFormerCriterion(3, recon="l1", weights={"equivariance": 1.0})
    with pytest.raises(ValueError, match="loss.recon"):
        PartFormerCriterion(3, recon="ssim")
    with pytest.raises(ValueError, match="K\\+1 = 5"):
        PartFormerCriterion(4, recon="l1")(_fake_out(k=3))
    out = _fake_out()
    del out["arcface_weight"]
    with pytest.raises(KeyError, match="arcface_weight"):
        PartFormerCriterion(3, recon="l1")(out)


def test_criterion_from_project_config():
    from partformer.methods.partformer.config import LossConfig
    crit = PartFormerCriterion.from_config(LossConfig(recon="l1"), num_parts=4)
    assert crit.loss_weights == DEFAULT_LOSS_WEIGHTS
