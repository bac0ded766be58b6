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


def test_part_centroid_of_a_one_hot_cell_is_its_index_times_the_stride():
    """PDiscoFormer (ananthu-aniraj/pdiscoformer): ``utils/get_landmark_coordinates.py``
    ``landmark_coordinates`` weights the integer grid ``meshgrid(arange(h), arange(w),
    indexing="ij")`` (no +0.5), and ``engine/eval_interpretability_nmi_ari_keypoint.py``
    ``create_centers`` multiplies the row mean by H/h and the column mean by W/w and stacks them
    as (x, y). So a one-hot map at cell (i, j) has centroid (j * W/w, i * H/h)."""
    h, w, size = 4, 5, (40, 30)  # H, W
    maps = torch.zeros(1, 3, h, w)
    maps[0, 0, 1, 3] = 1.0
    maps[0, 1, 3, 0] = 1.0
    maps[0, 2] = 1.0 - maps[0, :2].sum(0)  # background
    c, presence = part_centroids(maps, size)
    expected = torch.tensor([[[3 * 30 / 5, 1 * 40 / 4], [0 * 30 / 5, 3 * 40 / 4]]])
    torch.testing.assert_close(c, expected)
    torch.testing.assert_close(presence, torch.ones(1, 2))
    # Huang & Li's own code (zxhuang1698/interpretability-by-parts, src/cub200/eval_interp.py
    # ``calc_center``): 1-based indices times the stride
    c1, _ = part_centroids(maps, size, convention="one_based")
    torch.testing.assert_close(c1, torch.tensor([[[4 * 30 / 5, 2 * 40 / 4], [1 * 30 / 5, 4 * 40 / 4]]]))
    # the geometric cell centre (this project before issue 7)
    c5, _ = part_centroids(maps, size, convention="centre")
    torch.testing.assert_close(c5, torch.tensor([[[3.5 * 30 / 5, 1.5 * 40 / 4], [0.5 * 30 / 5, 3.5 * 40 / 4]]]))
    with pytest.raises(ValueError, match="centroid convention"):
        part_centroids(maps, size, convention="corner")


def test_part_centroids_soft_maps_sizes_and_zero_mass():
    g = torch.Generator().manual_seed(0)
    maps = torch.softmax(torch.randn(2, 4, 6, 8, generator=g), dim=1)
    maps[1, 2] = 0.0  # an empty map -> the centroid of a uniform map
    c, presence = part_centroids(maps, [(60, 80), (12, 16)])
    assert c.shape == (2, 3, 2) and presence.shape == (2, 3)
    fg = maps[0, :3].double()
    xs = torch.arange(8).double()
    cx = (fg * xs).sum((1, 2)) / fg.sum((1, 2)) * 10
    torch.testing.assert_close(c[0, :, 0], cx.float())
    torch.testing.assert_close(c[1, 2], torch.tensor([3.5 * 2, 2.5 * 2]))
    torch.testing.assert_close(presence[0], maps[0, :3].amax((1, 2)))
    # default image size = the map's own grid
    c_default, _ = part_centroids(maps)
    torch.testing.assert_close(c_default[0], c[0] / 10)


def _one_hot_maps(cells, h=4, w=4, inactive=False):
    """[N, K+1, h, w] maps: part 0 one-hot at ``cells[n] = (i, j)``; with ``inactive`` a second
    part spread at 0.25 over the other cells (maximum 0.25 <= 0.5: inactive in ``pdisco``) whose
    centroid moves from image to image; background = the rest."""
    n = len(cells)
    k1 = 3 if inactive else 2
    maps = torch.zeros(n, k1, h, w)
    for b, (i, j) in enumerate(cells):
        maps[b, 0, i, j] = 1.0
        if inactive:
            maps[b, 1] = 0.25
            maps[b, 1, i, j] = 0.0
            maps[b, 1, (i + 2) % h, (j + 1) % w] = 0.0   # breaks the symmetry: centroid varies
    maps[:, -1] = 1.0 - maps[:, :-1].sum(1)
    return maps


def test_pdisco_regression_hand_checked_case():
    """A case whose answer is known by hand. Image 16 x 16, map 4 x 4 (stride 4); part 0 is a
    one-hot cell, so with PDiscoFormer's centroid (index x stride; see the test above) its centroid
    is (4j, 4i). Each image has its own box; the keypoint is placed, in box-normalised units, at the
    normalised centroid + (0.1, -0.2) on the 6 training images, and + (0.1, -0.2) + (0.03, 0.04) on
    the test image. The regression (StandardScaler, LinearRegression without intercept, i.e. OLS
    with intercept; PDiscoFormer ``eval_kpr``) recovers the training relation exactly, so the test
    error is |(0.03, 0.04)| = 0.05 box units, reported x 100 = 5.0. Part 1 is inactive everywhere
    (max 0.25), so ``pdisco`` zeroes its inputs. With cell centres (+0.5 cell = 2 px, divided by a
    different box size per image) the relation is no longer exact and the answer moves."""
    cells_tr = [(0, 1), (2, 3), (3, 0), (1, 2), (2, 1), (0, 3)]
    boxes_tr = np.array([[1, 2, 10, 12], [0, 0, 16, 16], [2, 1, 12, 9], [3, 4, 8, 10],
                         [1, 1, 14, 13], [0, 3, 15, 11]], dtype=np.float64)
    cells_te, boxes_te = [(1, 1)], np.array([[2, 2, 11, 13]], dtype=np.float64)

    def split(cells, boxes, extra):
        maps = _one_hot_maps(cells, inactive=True)
        centroids, presence = part_centroids(maps, (16, 16))
        c_idx = np.array([[4.0 * j, 4.0 * i] for i, j in cells])
        np.testing.assert_allclose(centroids[:, 0].numpy(), c_idx)          # (4j, 4i)
        assert (presence[:, 0] == 1).all() and (presence[:, 1] == 0.25).all()
        norm = (c_idx - boxes[:, :2]) / boxes[:, 2:]
        kp = (norm + np.array([0.1, -0.2]) + extra) * boxes[:, 2:] + boxes[:, :2]
        return {"maps": maps, "centroids": centroids.numpy(), "presence": presence.numpy(),
                "keypoints": kp[:, None, :], "visible": np.ones((len(cells), 1), bool), "bbox": boxes}

    train = split(cells_tr, boxes_tr, np.zeros(2))
    test = split(cells_te, boxes_te, np.array([0.03, 0.04]))
    out = cub_keypoint_regression(train, test, "pdisco")
    assert out["error"] == pytest.approx(5.0, abs=1e-9) and out["num_pairs"] == 1
    # the same data with cell-centre centroids gives another answer
    for sp in (train, test):
        sp["centroids"] = part_centroids(sp["maps"], (16, 16), convention="centre")[0].numpy()
    assert abs(cub_keypoint_regression(train, test, "pdisco")["error"] - 5.0) > 0.1


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


def test_centroid_convention_matters_except_in_pixel_space():
    """The PartFormer authors' CelebA error (Jiahao-UTS/UnsupervisedPart, utils/unsupervised_NME.py
    ``segment_to_landmark`` + ``calculate_NME``) takes centroids as the weighted mean of the integer
    index on the 128 x 128 map, unscaled, and fits StandardScaler + a no-intercept linear map in
    pixels, then divides each landmark's error by the inter-ocular distance: our ``scops_pixel``.
    In pixel space any per-dataset affine change of the centroids (the +0.5 / +1 offset, the
    stride) is absorbed by the standardisation, so that protocol does not depend on the convention;
    ``iod_normalised`` divides by a per-image length first, so it does."""
    g = torch.Generator().manual_seed(7)
    rng = np.random.default_rng(7)
    n_tr, n_te = 60, 20
    maps = torch.softmax(3 * torch.randn(n_tr + n_te, 4, 8, 8, generator=g), dim=1)
    lm = rng.uniform(40, 90, (n_tr + n_te, 5, 2))
    lm[:, 1] = lm[:, 0] + rng.uniform(8, 30, (n_tr + n_te, 2))   # eyes apart
    errs = {}
    for conv in ("index", "centre", "one_based", "map_units"):
        if conv == "map_units":   # the authors': index on the map grid, not scaled to the image
            c = part_centroids(maps, (8, 8), "index")[0].numpy()
        else:
            c = part_centroids(maps, (128, 128), conv)[0].numpy()
        tr = {"centroids": c[:n_tr], "landmarks": lm[:n_tr]}
        te = {"centroids": c[n_tr:], "landmarks": lm[n_tr:]}
        errs[conv] = {v: celeba_landmark_regression(tr, te, v)["error"]
                      for v in ("scops_pixel", "iod_normalised")}
    for conv in ("centre", "one_based", "map_units"):
        assert errs[conv]["scops_pixel"] == pytest.approx(errs["index"]["scops_pixel"], rel=1e-6)  # float32
    assert abs(errs["centre"]["iod_normalised"] - errs["index"]["iod_normalised"]) > 1e-2


def test_celeba_rejects_zero_inter_ocular_distance():
    rng = np.random.default_rng(6)
    train, test = celeba_split(rng, 50), celeba_split(rng, 10)
    test["landmarks"][3, 1] = test["landmarks"][3, 0]
    with pytest.raises(ValueError, match="inter-ocular"):
        celeba_landmark_regression(train, test)
    with pytest.raises(ValueError, match="variant"):
        celeba_landmark_regression(train, test, "pixel")
