"""Tests for partformer.augment: the returned matrices describe the warp exactly (tiny, CPU)."""
import pytest
import torch

from partformer.augment import (
    PairedAugmentation, centred_affine_matrix, flip_matrix, relative_transform, warp_images, warp_points,
)

H, W = 48, 64  # non-square on purpose: catches x/y and width/height swaps


def _blob_images(b, x0, y0, sigma=1.5, h=H, w=W):
    """[b, 3, h, w] Gaussian blob centred at (x0, y0) in half-pixel coordinates (centres j + 0.5)."""
    ys = torch.arange(h, dtype=torch.float64)[:, None] + 0.5
    xs = torch.arange(w, dtype=torch.float64)[None, :] + 0.5
    blob = torch.exp(-((xs - x0) ** 2 + (ys - y0) ** 2) / (2 * sigma ** 2)).float()
    return blob.expand(b, 3, h, w).clone()


def _centroids(images):
    """[B, 2] intensity centroid (x, y) of channel 0, in half-pixel coordinates."""
    a = images[:, 0].double()
    h, w = a.shape[-2:]
    ys = torch.arange(h, dtype=torch.float64) + 0.5
    xs = torch.arange(w, dtype=torch.float64) + 0.5
    mass = a.sum(dim=(1, 2))
    return torch.stack([(a.sum(1) * xs).sum(1) / mass, (a.sum(2) * ys).sum(1) / mass], dim=1)


STRONG = dict(flip_p=0.5, rot_std=40.0, rot_max=90.0, scale_std=0.2, scale_min=0.8, scale_max=1.2,
              trans_std=0.1, trans_max=0.1)


@pytest.mark.parametrize("settings", [{}, STRONG], ids=["default", "strong"])
def test_keypoint_lands_on_the_same_content(settings):
    x0, y0 = 40.3, 18.7
    images = _blob_images(16, x0, y0)
    assert torch.allclose(_centroids(images), torch.tensor([[x0, y0]], dtype=torch.float64), atol=1e-3)
    aug = PairedAugmentation(**settings)
    gen = torch.Generator().manual_seed(3)
    flips = aug.sample_params(16, torch.Generator().manual_seed(3))["flip"]
    assert flips.any() and (~flips).any()  # both cases are exercised
    view1, view2, m1, m2 = aug(images, generator=gen)
    pts = torch.tensor([[[x0, y0]]]).expand(16, 1, 2)
    for view, m in ((view1, m1), (view2, m2)):
        expected = warp_points(m, pts)[:, 0].double()
        assert (_centroids(view) - expected).abs().max() < 0.25
    # view 1 -> view 2
    rel = relative_transform(m1, m2)
    moved = warp_points(rel, _centroids(view1).float()[:, None])[:, 0].double()
    assert (moved - _centroids(view2)).abs().max() < 0.5


def test_warp_images_pixel_centre_convention_exact():
    # float64 so that any half-pixel slip would show far above rounding
    torch.manual_seed(0)
    images = torch.rand(2, 3, H, W, dtype=torch.float64)
    # integer translation by (+3, -2): pixel (i, j) moves to (i - 2, j + 3)
    m = torch.eye(3, dtype=torch.float64).repeat(2, 1, 1)
    m[:, 0, 2], m[:, 1, 2] = 3.0, -2.0
    out = warp_images(images, m)
    assert torch.allclose(out[..., : H - 2, 3:], images[..., 2:, : W - 3], atol=1e-10)
    assert out[..., :, :3].abs().max() < 1e-10 and out[..., H - 2:, :].abs().max() < 1e-10  # zero padding
    # horizontal flip x -> W - x is exactly torch.flip
    out = warp_images(images, flip_matrix(torch.tensor([True, False]), W))
    assert torch.allclose(out[0], images[0].flip(-1), atol=1e-10)
    assert torch.allclose(out[1], images[1], atol=1e-10)
    # the same in float32, up to float32 rounding
    out = warp_images(images.float(), flip_matrix(torch.tensor([True, False]), W).float())
    assert torch.allclose(out[0], images[0].float().flip(-1), atol=1e-4)
    # 90 degrees about the centre of a square image is rot90 (anticlockwise on screen)
    sq = torch.rand(1, 1, 8, 8, dtype=torch.float64)
    m = centred_affine_matrix(torch.tensor([90.0]), torch.tensor([1.0]), torch.zeros(1, 2), (8, 8))
    assert torch.allclose(warp_images(sq, m)[0, 0], sq[0, 0].rot90(1), atol=1e-10)
    # scale 2 about the centre: the centre stays put
    m = centred_affine_matrix(torch.zeros(1), torch.tensor([2.0]), torch.zeros(1, 2), (H, W))
    assert torch.allclose(warp_points(m, torch.tensor([[[W / 2, H / 2]]], dtype=torch.float64)),
                          torch.tensor([[[W / 2, H / 2]]], dtype=torch.float64))


def test_flip_is_shared_between_views():
    aug = PairedAugmentation()
    _, _, m1, m2 = aug(torch.rand(64, 3, 8, 8), generator=torch.Generator().manual_seed(0))
    det1 = torch.linalg.det(m1[:, :2, :2])
    det2 = torch.linalg.det(m2[:, :2, :2])
    assert torch.equal(det1 < 0, det2 < 0)
    assert (det1 < 0).any() and (det1 > 0).any()
    # content check with an asymmetric image: with everything but the flip off, both views are the
    # same image, flipped or not
    img = torch.zeros(32, 3, 8, 8)
    img[..., 2, 1] = 1.0
    v1, v2, m1, _ = PairedAugmentation(rot_std=0, scale_std=0, trans_std=0)(img, torch.Generator().manual_seed(1))
    assert torch.allclose(v1, v2)
    flipped = m1[:, 0, 0] < 0
    assert flipped.any() and (~flipped).any()
    assert torch.allclose(v1[flipped], img[flipped].flip(-1), atol=1e-6)
    assert torch.allclose(v1[~flipped], img[~flipped], atol=1e-6)


def _decompose(m, size):
    """angle (deg), scale, translation fraction (x, y), flip from M = T(c+t) sR T(-c) Flip."""
    h, w = size
    lin = m[:, :2, :2].double()
    flip = torch.linalg.det(lin) < 0
    lin = lin.clone()
    lin[flip, :, 0] *= -1  # undo x -> -x
    scale = torch.sqrt(torch.linalg.det(lin))
    angle = torch.rad2deg(torch.atan2(lin[:, 0, 1], lin[:, 0, 0]))
    c = torch.tensor([[[w / 2, h / 2]]], dtype=torch.float64).expand(m.shape[0], 1, 2)
    t = (warp_points(m.double(), c) - c)[:, 0] / torch.tensor([w, h], dtype=torch.float64)
    return angle, scale, t, flip


def test_parameters_respect_clipping_bounds():
    aug = PairedAugmentation(flip_p=0.5, rot_std=100.0, rot_max=30.0, scale_std=1.0, scale_min=0.95,
                             scale_max=1.05, trans_std=1.0, trans_max=0.05)
    p = aug.sample_params(2000, torch.Generator().manual_seed(0))
    for i in (1, 2):
        assert p[f"angle{i}"].abs().max() <= 30.0 and (p[f"angle{i}"].abs() == 30.0).any()
        assert p[f"scale{i}"].min() >= 0.95 and p[f"scale{i}"].max() <= 1.05
        assert (p[f"scale{i}"] == 0.95).any() and (p[f"scale{i}"] == 1.05).any()
        assert p[f"translate{i}"].abs().max() <= 0.05 and (p[f"translate{i}"].abs() == 0.05).any()
    assert 0.4 < p["flip"].double().mean() < 0.6
    # the matrices carry exactly these parameters (default settings, recovered from M)
    aug = PairedAugmentation()
    p = aug.sample_params(500, torch.Generator().manual_seed(1))
    m1, m2 = aug.matrices(p, (H, W))
    for i, m in ((1, m1), (2, m2)):
        angle, scale, t, flip = _decompose(m, (H, W))
        assert torch.allclose(angle, p[f"angle{i}"], atol=1e-9)
        assert torch.allclose(scale, p[f"scale{i}"], atol=1e-9)
        assert torch.allclose(t, p[f"translate{i}"], atol=1e-9)
        assert torch.equal(flip, p["flip"])
        tol = 1e-9
        assert angle.abs().max() <= 30 + tol and scale.min() >= 0.95 - tol and scale.max() <= 1.05 + tol
        assert t.abs().max() <= 0.05 + tol
    # default distribution: std of the (rarely clipped) rotation is close to 15 degrees
    assert 12.0 < p["angle1"].std() < 16.0


def test_identity_settings_return_the_input():
    images = torch.rand(3, 3, H, W)
    aug = PairedAugmentation(flip_p=0.0, rot_std=0.0, scale_std=0.0, trans_std=0.0)
    v1, v2, m1, m2 = aug(images)
    assert torch.allclose(v1, images, atol=1e-5) and torch.allclose(v2, images, atol=1e-5)
    assert torch.equal(m1, torch.eye(3).expand(3, 3, 3)) and torch.equal(m2, m1)
    assert m1.dtype == torch.float32 and m1.device == images.device


def test_relative_transform_consistency():
    aug = PairedAugmentation(**STRONG)
    p = aug.sample_params(8, torch.Generator().manual_seed(5))
    m1, m2 = (m.float() for m in aug.matrices(p, (H, W)))
    pts = torch.rand(8, 10, 2) * torch.tensor([W, H])
    rel = relative_transform(m1, m2)
    assert torch.allclose(warp_points(rel, warp_points(m1, pts)), warp_points(m2, pts), atol=1e-3)
    assert torch.allclose(relative_transform(m1, m1), torch.eye(3).expand(8, 3, 3), atol=1e-4)
    # inverse direction
    assert torch.allclose(relative_transform(m2, m1) @ rel, torch.eye(3).expand(8, 3, 3), atol=1e-4)


def test_determinism_with_generator():
    images = torch.rand(4, 3, 16, 16)
    aug = PairedAugmentation()
    a = aug(images, generator=torch.Generator().manual_seed(7))
    b = aug(images, generator=torch.Generator().manual_seed(7))
    c = aug(images, generator=torch.Generator().manual_seed(8))
    for x, y in zip(a, b):
        assert torch.equal(x, y)
    assert not torch.equal(a[2], c[2])
    # the two views are different warps
    assert not torch.allclose(a[2], a[3])


def test_from_config():
    aug = PairedAugmentation.from_config({"rot_std": 5.0, "flip_p": 0.0})
    assert aug.rot_std == 5.0 and aug.flip_p == 0.0 and aug.rot_max == 30.0
    with pytest.raises(ValueError, match="partformer.augment.rotation"):
        PairedAugmentation.from_config({"rotation": 5.0})
    from partformer.methods.partformer.config import AugmentConfig
    aug = PairedAugmentation.from_config(AugmentConfig())
    assert aug.trans_max == 0.05 and aug.scale_min == 0.95


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu():
    images = torch.rand(4, 3, 32, 32)
    aug = PairedAugmentation()
    cpu = aug(images, generator=torch.Generator().manual_seed(0))
    gpu = aug(images.cuda(), generator=torch.Generator().manual_seed(0))
    for x, y in zip(cpu, gpu):
        assert y.is_cuda and torch.allclose(x, y.cpu(), atol=1e-4)
