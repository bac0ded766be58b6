"""Part centroids and the CUB / CelebA regression protocols, against independent numpy code."""
import numpy as np
import pytest
import torch

from partformer.metrics import (
    CentroidCollector,
    celeba_landmark_regression,
    cub_keypoint_regression,
    part_centroids,
)

# ---------------------------------------------------------------- independent reference


def standardise(fit, *arrays):
    """Own z-scoring: population std, constant columns left unscaled (as sklearn does)."""
    mean = fit.mean(axis=0)
    std = fit.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    return [(a - mean) / std for a in arrays], mean, std


def lstsq_predict(x_train, y_train, x_test, gate_train=None, gate_test=None):
    (xs_tr, xs_te), _, _ = standardise(x_train, x_train, x_test)
    (ys_tr,), y_mean, y_std = standardise(y_train, y_train)
    if gate_train is not None:
        xs_tr = xs_tr * gate_train
        xs_te = xs_te * gate_test
    coef, *_ = np.linalg.lstsq(xs_tr, ys_tr, rcond=None)
    return xs_te @ coef * y_std + y_mean


def reference_cub(train, test, pdisco=False):
    def prep(s):
        box = s["bbox"]
        c = (s["centroids"] - box[:, None, :2]) / box[:, None, 2:]
        k = (s["keypoints"] - box[:, None, :2]) / box[:, None, 2:]
        gate = np.repeat(s["presence"] > 0.5, 2, axis=1).astype(float)
        return c.reshape(len(c), -1), k, s["visible"], gate

    x_tr, k_tr, v_tr, g_tr = prep(train)
    x_te, k_te, v_te, g_te = prep(test)
    dists = []
    for p in range(k_tr.shape[1]):
        tr, te = v_tr[:, p], v_te[:, p]
        gates = (g_tr[tr], g_te[te]) if pdisco else (None, None)
        pred = lstsq_predict(x_tr[tr], k_tr[tr, p], x_te[te], *gates)
        dists.append(np.sqrt(((pred - k_te[te, p]) ** 2).sum(axis=1)))
    return 100 * np.concatenate(dists).mean()


def cub_split(rng, n, k=4, p=6, linear=None):
    """Random CUB-like split; with ``linear=(A, b)`` the box-normalised keypoints are exactly
    ``A @ box-normalised centroids + b``."""
    bbox = np.concatenate([rng.uniform(0, 100, (n, 2)), rng.uniform(50, 200, (n, 2))], axis=1)
    cn = rng.uniform(0, 1, (n, k, 2))
    if linear is None:
        kn = rng.uniform(0, 1, (n, p, 2)) + 0.3 * cn[:, :1]
    else:
        a, b = linear
        kn = (cn.reshape(n, -1) @ a.T + b).reshape(n, p, 2)
    to_px = lambda u: u * bbox[:, None, 2:] + bbox[:, None, :2]
    return {
        "centroids": to_px(cn),
        "keypoints": to_px(kn),
        "visible": rng.random((n, p)) < 0.8,
        "bbox": bbox,
        "presence": rng.uniform(0.2, 1.0, (n, k)),
    }


# ---------------------------------------------------------------- centroids


def test_part_centroids_of_delta_maps_are_cell_centres():
    h, w, size = 4, 5, (40, 30)  # H, W
    maps = torch.zeros(1, 3, h, w)
    maps[0, 0, 1, 3] = 1.0
    maps[0, 1, 3, 0] = 1.0
    maps[0, 2] = 1.0 - maps[0, :2].sum(0)  # background
    c, presence = part_centroids(maps, size)
    expected = torch.tensor([[[(3 + 0.5) * 30 / 5, (1 + 0.5) * 40 / 4], [(0 + 0.5) * 30 / 5, (3 + 0.5) * 40 / 4]]])
    torch.testing.assert_close(c, expected)
    torch.testing.assert_close(presence, torch.ones(1, 2))


def test_part_centroids_soft_maps_sizes_and_zero_mass():
    g = torch.Generator().manual_seed(0)
    maps = torch.softmax(torch.randn(2, 4, 6, 8, generator=g), dim=1)
    maps[1, 2] = 0.0  # an empty map -> image centre
    c, presence = part_centroids(maps, [(60, 80), (12, 16)])
    assert c.shape == (2, 3, 2) and presence.shape == (2, 3)
    fg = maps[0, :3].double()
    xs = torch.arange(8).double() + 0.5
    cx = (fg * xs).sum((1, 2)) / fg.sum((1, 2)) * 10
    torch.testing.assert_close(c[0, :, 0], cx.float())
    torch.testing.assert_close(c[1, 2], torch.tensor([8.0, 6.0]))
    torch.testing.assert_close(presence[0], maps[0, :3].amax((1, 2)))
    # default image size = the map's own grid
    c_default, _ = part_centroids(maps)
    torch.testing.assert_close(c_default[0], c[0] / 10)


def test_centroid_collector_feeds_the_regression():
    g = torch.Generator().manual_seed(1)
    col = CentroidCollector()
    for _ in range(3):
        maps = torch.softmax(torch.randn(4, 3, 8, 8, generator=g), dim=1)
        col.update(maps, (64, 64), keypoints=torch.rand(4, 5, 2) * 64, visible=torch.ones(4, 5, dtype=torch.bool),
                   bbox=torch.tensor([[0.0, 0.0, 64.0, 64.0]]).expand(4, 4))
    arrays = col.all_gather().arrays()
    assert arrays["centroids"].shape == (12, 2, 2) and arrays["presence"].shape == (12, 2)
    assert arrays["keypoints"].shape == (12, 5, 2)
    out = cub_keypoint_regression(arrays, arrays)
    assert out["num_pairs"] == 60 and np.isfinite(out["error"])


# ---------------------------------------------------------------- CUB regression


@pytest.mark.parametrize("variant", ["huang", "pdisco"])
def test_cub_regression_matches_numpy_reference(variant):
    rng = np.random.default_rng(0)
    train, test = cub_split(rng, 300), cub_split(rng, 120)
    out = cub_keypoint_regression(train, test, variant)
    assert out["error"] == pytest.approx(reference_cub(train, test, pdisco=variant == "pdisco"), rel=1e-9)
    assert out["num_pairs"] == int(test["visible"].sum())
    counts = test["visible"].sum(0)
    assert np.average(out["per_keypoint"], weights=counts) == pytest.approx(out["error"], rel=1e-12)


def test_cub_regression_is_exact_for_linear_keypoints():
    rng = np.random.default_rng(1)
    k, p = 4, 6
    linear = (rng.normal(size=(2 * p, 2 * k)), rng.normal(size=2 * p))
    train, test = cub_split(rng, 200, k, p, linear), cub_split(rng, 80, k, p, linear)
    out = cub_keypoint_regression(train, test, "huang")
    assert out["error"] < 1e-8
    # gating with every part active changes nothing
    for s in (train, test):
        s["presence"][:] = 0.9
    assert cub_keypoint_regression(train, test, "pdisco")["error"] < 1e-8


def test_pdisco_gating_zeroes_standardised_inactive_parts():
    rng = np.random.default_rng(2)
    train, test = cub_split(rng, 250), cub_split(rng, 100)
    for s in (train, test):
        s["presence"][:] = 0.8
    huang = cub_keypoint_regression(train, test, "huang")["error"]
    assert cub_keypoint_regression(train, test, "pdisco")["error"] == pytest.approx(huang, rel=1e-12)

    # part 1 inactive everywhere (max <= 0.5, boundary included): its inputs are zero, which is
    # the same as regressing from the other parts only
    for s in (train, test):
        s["presence"][:, 1] = 0.5
    dropped = [{**s, "centroids": np.delete(s["centroids"], 1, axis=1), "presence": np.delete(s["presence"], 1, axis=1)}
               for s in (train, test)]
    gated = cub_keypoint_regression(train, test, "pdisco")["error"]
    assert gated == pytest.approx(cub_keypoint_regression(*dropped, "huang")["error"], rel=1e-9)
    assert gated != pytest.approx(huang, rel=1e-6)

    # the standardiser is fit on raw centroids; moving the centroids of an always-inactive part only
    # changes that part's standardisation, and its inputs are zeroed anyway
    moved = {**train, "centroids": train["centroids"].copy()}
    moved["centroids"][:, 1] += 1000.0
    assert cub_keypoint_regression(moved, test, "pdisco")["error"] == pytest.approx(gated, rel=1e-9)

    # a part active in some images only: compare with the gated numpy reference
    for s in (train, test):
        s["presence"][:, 1] = rng.uniform(0.2, 1.0, len(s["presence"]))
    ours = cub_keypoint_regression(train, test, "pdisco")["error"]
    assert ours == pytest.approx(reference_cub(train, test, pdisco=True), rel=1e-9)


def test_cub_regression_edge_cases():
    rng = np.random.default_rng(3)
    train, test = cub_split(rng, 100), cub_split(rng, 40)
    test["visible"][:, 2] = False
    out = cub_keypoint_regression(train, test)
    assert np.isnan(out["per_keypoint"][2]) and out["num_pairs"] == int(test["visible"].sum())
    train["visible"][:, 3] = False
    test["visible"][0, 3] = True
    with pytest.raises(ValueError, match="keypoint 3"):
        cub_keypoint_regression(train, test)
    with pytest.raises(ValueError, match="variant"):
        cub_keypoint_regression(train, test, "choudhury")
    with pytest.raises(KeyError, match="bbox"):
        cub_keypoint_regression({k: v for k, v in train.items() if k != "bbox"}, test)


# ---------------------------------------------------------------- CelebA regression


def celeba_split(rng, n, k=4, linear=None, space="pixel"):
    """Random CelebA-like split. With ``linear=(A, b)`` the landmarks are exactly linear in the
    centroids: in pixels (``space="pixel"``) or after dividing both by the inter-ocular distance
    (``space="iod"``; A's rows for the right eye copy the left eye's and b adds (1, 0), so the
    IOD-normalised eye distance is exactly 1 and the IOD equals the per-image scale)."""
    centre = rng.uniform(80, 170, (n, 1, 2))
    scale = rng.uniform(20, 60, (n, 1, 1))
    c = centre + scale * rng.normal(size=(n, k, 2))
    offsets = np.array([[-0.5, -0.3], [0.5, -0.3], [0.0, 0.1], [-0.4, 0.5], [0.4, 0.5]])
    lm = centre + scale * (offsets + 0.1 * rng.normal(size=(n, 5, 2)))
    if linear is not None and space == "pixel":
        a, b = linear
        lm = (c.reshape(n, -1) @ a.T + b).reshape(n, 5, 2)
    elif linear is not None:
        a, b = linear[0].copy(), linear[1].copy()
        a[2:4], b[2:4] = a[0:2], b[0:2] + np.array([1.0, 0.0])
        lm = ((c / scale).reshape(n, -1) @ a.T + b).reshape(n, 5, 2) * scale
    return {"centroids": c, "landmarks": lm}


def reference_celeba(train, test, variant):
    def prep(s):
        iod = np.sqrt(((s["landmarks"][:, 0] - s["landmarks"][:, 1]) ** 2).sum(1))
        d = iod[:, None] if variant == "iod_normalised" else np.ones((len(iod), 1))
        return s["centroids"].reshape(len(iod), -1) / d, s["landmarks"].reshape(len(iod), -1) / d, iod

    x_tr, y_tr, _ = prep(train)
    x_te, y_te, iod_te = prep(test)
    pred = lstsq_predict(x_tr, y_tr, x_te)
    err = np.sqrt(((pred - y_te).reshape(-1, 5, 2) ** 2).sum(-1))  # [N, 5]
    if variant == "iod_normalised":
        return 100 * err.mean()
    return 100 * np.mean(err.mean(1) / iod_te)


@pytest.mark.parametrize("variant", ["iod_normalised", "scops_pixel"])
def test_celeba_regression_matches_numpy_reference(variant):
    rng = np.random.default_rng(4)
    train, test = celeba_split(rng, 400), celeba_split(rng, 150)
    out = celeba_landmark_regression(train, test, variant)
    assert out["error"] == pytest.approx(reference_celeba(train, test, variant), rel=1e-9)
    assert np.mean(out["per_landmark"]) == pytest.approx(out["error"], rel=1e-12)
    assert out["num_images"] == 150


def test_celeba_variants_differ_and_are_exact_when_linear():
    rng = np.random.default_rng(5)
    train, test = celeba_split(rng, 300), celeba_split(rng, 100)
    a = celeba_landmark_regression(train, test, "iod_normalised")["error"]
    b = celeba_landmark_regression(train, test, "scops_pixel")["error"]
    assert a != pytest.approx(b, rel=1e-3)

    linear = (rng.normal(size=(10, 8)), rng.normal(size=10) * 50)
    train, test = celeba_split(rng, 300, 4, linear), celeba_split(rng, 100, 4, linear)
    assert celeba_landmark_regression(train, test, "scops_pixel")["error"] < 1e-8

    linear = (rng.normal(size=(10, 8)), rng.normal(size=10))
    train, test = celeba_split(rng, 300, 4, linear, "iod"), celeba_split(rng, 100, 4, linear, "iod")
    assert celeba_landmark_regression(train, test, "iod_normalised")["error"] < 1e-8
    assert celeba_landmark_regression(train, test, "scops_pixel")["error"] > 1e-3  # not linear in pixels

    # both errors are in % of the inter-ocular distance: a global rescaling of all images changes nothing
    train, test = celeba_split(rng, 200), celeba_split(rng, 50)
    scaled = [{k: 2.5 * v for k, v in s.items()} for s in (train, test)]
    for variant in ("iod_normalised", "scops_pixel"):
        assert celeba_landmark_regression(*scaled, variant)["error"] == pytest.approx(
            celeba_landmark_regression(train, test, variant)["error"], rel=1e-9)


def test_celeba_rejects_zero_inter_ocular_distance():
    rng = np.random.default_rng(6)
    train, test = celeba_split(rng, 50), celeba_split(rng, 10)
    test["landmarks"][3, 1] = test["landmarks"][3, 0]
    with pytest.raises(ValueError, match="inter-ocular"):
        celeba_landmark_regression(train, test)
    with pytest.raises(ValueError, match="variant"):
        celeba_landmark_regression(train, test, "pixel")
