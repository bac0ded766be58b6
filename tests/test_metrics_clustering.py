"""NMI / ARI from contingency tables, keypoint and pixel clustering protocols."""
from fractions import Fraction
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

from partformer.metrics import (
    ContingencyTable,
    KeypointClustering,
    PixelClustering,
    ari_from_table,
    build_metric,
    nmi_from_table,
    sample_at_keypoint_pixels,
    sample_at_keypoints_map_nearest,
)


def table_of(pred, gt, num_pred, num_gt):
    t = ContingencyTable(num_pred, num_gt)
    t.update(torch.as_tensor(pred), torch.as_tensor(gt))
    return t


# ---------------------------------------------------------------- scores vs sklearn


def test_scores_match_sklearn_on_random_labelings():
    rng = np.random.default_rng(0)
    for trial in range(300):
        n = int(rng.integers(0, 400))
        kp, kg = int(rng.integers(1, 12)), int(rng.integers(1, 12))
        pred = rng.integers(0, kp, n)
        gt = rng.integers(0, kg, n)
        if trial % 3 == 0:  # correlated labelings
            gt = np.where(rng.random(n) < 0.7, pred % kg, gt)
        # tables larger than the labels used: empty rows / columns must not matter
        t = table_of(pred, gt, kp + 3, kg + 2)
        assert t.total == n
        assert t.nmi() == pytest.approx(normalized_mutual_info_score(gt, pred), abs=1e-12)
        assert t.ari() == pytest.approx(adjusted_rand_score(gt, pred), abs=1e-12)


@pytest.mark.parametrize(
    "pred, gt",
    [
        ([], []),  # no samples
        ([0], [0]),  # one sample
        ([0, 0, 0], [1, 1, 1]),  # both a single cluster
        ([0, 0, 0, 0], [0, 1, 2, 3]),  # prediction a single cluster
        ([0, 1, 2, 3], [2, 2, 2, 2]),  # ground truth a single cluster
        ([0, 1, 2, 3], [0, 1, 2, 3]),  # all singletons
        ([0, 0, 1, 1], [0, 1, 0, 1]),  # independent
    ],
)
def test_degenerate_cases_match_sklearn(pred, gt):
    t = table_of(np.array(pred, dtype=np.int64), np.array(gt, dtype=np.int64), 5, 5)
    assert t.nmi() == pytest.approx(normalized_mutual_info_score(gt, pred), abs=1e-15)
    assert t.ari() == pytest.approx(adjusted_rand_score(gt, pred), abs=1e-15)


def test_hand_computed_values():
    # perfect agreement up to renaming -> 100
    m = KeypointClustering(num_parts=3, num_keypoints=3, variant="fg_only")
    m.table.update(torch.tensor([2, 2, 0, 1, 1]), torch.tensor([0, 0, 1, 2, 2]))
    out = m.compute()
    assert out["nmi"] == pytest.approx(100.0) and out["ari"] == pytest.approx(100.0)
    assert out["num_keypoints"] == 5

    # independent 2 x 2: MI = 0; pair counts tp=0, fp=fn=tn=4 (ordered) -> ARI = -32/64
    table = np.array([[1, 1], [1, 1]])
    assert nmi_from_table(table) == 0.0
    assert ari_from_table(table) == pytest.approx(-0.5)

    # [[2, 0], [1, 1]]: rows (2, 2), columns (3, 1)
    table = np.array([[2, 0], [1, 1]])
    mi = 0.5 * math.log(4 / 3) + 0.25 * math.log(2 / 3) + 0.25 * math.log(2)
    h_rows = math.log(2)
    h_cols = -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert nmi_from_table(table) == pytest.approx(mi / ((h_rows + h_cols) / 2), abs=1e-15)
    # sum C(n_ij,2) = 1, sum C(a_i,2) = 2, sum C(b_j,2) = 3, C(4,2) = 6
    expected = (1 - 2 * 3 / 6) / (0.5 * (2 + 3) - 2 * 3 / 6)
    assert ari_from_table(table) == pytest.approx(expected, abs=1e-15)


def test_inputs_torch_numpy_and_table_agree():
    table = torch.tensor([[5, 1, 0], [2, 7, 3]])
    assert nmi_from_table(table) == nmi_from_table(table.numpy()) == nmi_from_table(table.tolist())
    t = ContingencyTable(2, 3)
    t.counts += table
    assert ari_from_table(t) == ari_from_table(table.numpy()) == t.ari()
    with pytest.raises(ValueError):
        nmi_from_table(np.array([[1, -1]]))
    with pytest.raises(ValueError):
        ari_from_table(np.zeros(3))


# ---------------------------------------------------------------- accumulation


def test_update_ignores_negative_gt_and_checks_ranges():
    t = table_of([0, 1, 1, 0], [1, -1, 0, -5], 2, 2)
    assert t.counts.tolist() == [[0, 1], [1, 0]]
    with pytest.raises(ValueError, match="predicted labels"):
        t.update(torch.tensor([2]), torch.tensor([0]))
    with pytest.raises(ValueError, match="ground-truth labels"):
        t.update(torch.tensor([0]), torch.tensor([2]))
    with pytest.raises(TypeError):
        t.update(torch.tensor([0.0]), torch.tensor([0]))


def test_merge_equals_concatenated_data():
    rng = np.random.default_rng(1)
    pred = rng.integers(0, 6, 1000)
    gt = rng.integers(-1, 4, 1000)
    whole = table_of(pred, gt, 6, 4)
    parts = [table_of(pred[s], gt[s], 6, 4) for s in (slice(0, 137), slice(137, 600), slice(600, None))]
    merged = ContingencyTable(6, 4)
    for p in parts:
        merged.merge(p)
    assert torch.equal(merged.counts, whole.counts)
    keep = gt >= 0
    assert merged.nmi() == pytest.approx(normalized_mutual_info_score(gt[keep], pred[keep]), abs=1e-12)
    with pytest.raises(ValueError):
        merged.merge(ContingencyTable(5, 4))


def test_all_reduce_is_noop_without_distributed():
    t = table_of([0, 1], [1, 1], 2, 2)
    before = t.counts.clone()
    assert t.all_reduce() is t
    assert torch.equal(t.counts, before)


def test_all_reduce_with_single_process_group(tmp_path):
    import torch.distributed as dist

    if not dist.is_available():
        pytest.skip("torch.distributed is not available in this build")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    try:
        t = table_of([0, 1, 1], [1, 1, 0], 2, 2)
        before = t.counts.clone()
        t.all_reduce()
        assert torch.equal(t.counts, before) and t.counts.device.type == "cpu"
    finally:
        dist.destroy_process_group()


# ---------------------------------------------------------------- overflow safety


def exact_ari(table):
    """Reference ARI with exact rational arithmetic (pair-counting definition)."""
    table = [[int(v) for v in row] for row in table]
    c2 = lambda v: Fraction(v * (v - 1), 2)
    n = sum(map(sum, table))
    index = sum(c2(v) for row in table for v in row)
    a = sum(c2(sum(row)) for row in table)
    b = sum(c2(sum(col)) for col in zip(*table))
    expected = a * b / c2(n)
    return float((index - expected) / ((a + b) / 2 - expected))


def float64_nmi(table):
    p = np.asarray(table, dtype=np.float64)
    p = p / p.sum()
    r, c = p.sum(1), p.sum(0)
    nz = p > 0
    mi = np.sum(p[nz] * np.log(p[nz] / np.outer(r, c)[nz]))
    h = lambda q: -np.sum(q[q > 0] * np.log(q[q > 0]))
    return mi / ((h(r) + h(c)) / 2)


@pytest.mark.parametrize("scale", [10**8, 3 * 10**9])
def test_large_counts_are_exact(scale):
    base = np.array([[3, 1, 0, 2], [2, 4, 1, 0], [0, 1, 5, 1]], dtype=np.int64)
    table = base * scale + np.arange(base.size).reshape(base.shape)  # not a pure multiple
    n = int(table.sum())
    assert n > 10**9
    if scale > 10**9:
        assert n * n > np.iinfo(np.int64).max  # naive int64 pair counts would overflow here
    assert ari_from_table(table) == pytest.approx(exact_ari(table), rel=1e-12)
    assert nmi_from_table(table) == pytest.approx(float64_nmi(table), rel=1e-10)
    # NMI depends only on the joint distribution
    assert nmi_from_table(table) == pytest.approx(nmi_from_table(base * scale), rel=1e-6)
    t = ContingencyTable(3, 4)
    t.counts += torch.from_numpy(table)
    assert 0.0 < t.nmi() < 1.0 and -0.5 < t.ari() < 1.0


# ---------------------------------------------------------------- keypoint clustering


def reference_lookup(maps, keypoints, image_size):
    """Upsample to the image, then read the pixel containing each keypoint."""
    h_img, w_img = image_size
    up = F.interpolate(maps, size=(h_img, w_img), mode="bilinear", align_corners=False)
    cols = keypoints[..., 0].floor().long().clamp(0, w_img - 1)
    rows = keypoints[..., 1].floor().long().clamp(0, h_img - 1)
    b = torch.arange(maps.shape[0])[:, None].expand_as(cols)
    return up[b, :, rows, cols].permute(0, 2, 1)  # [B, C, P]


@pytest.mark.parametrize("map_size, image_size", [((7, 9), (50, 37)), ((16, 16), (256, 256)), ((5, 3), (5, 3)), ((8, 8), (13, 200))])
def test_grid_sample_equals_upsample_then_lookup(map_size, image_size):
    g = torch.Generator().manual_seed(0)
    b, c, p = 3, 5, 400
    maps = torch.softmax(3 * torch.randn(b, c, *map_size, generator=g), dim=1)
    h_img, w_img = image_size
    # inside the image, on its borders and outside it (clamped)
    kp = torch.rand(b, p, 2, generator=g) * torch.tensor([w_img + 4.0, h_img + 4.0]) - 2.0
    kp[:, :4] = torch.tensor([[0.0, 0.0], [w_img, h_img], [w_img - 1e-3, 0.5], [2.9999, h_img - 0.5]])
    ours = sample_at_keypoint_pixels(maps, kp, image_size)
    ref = reference_lookup(maps, kp, image_size)
    assert ours.shape == (b, c, p)
    torch.testing.assert_close(ours, ref, atol=2e-6, rtol=0)
    assert torch.equal(ours.argmax(1), ref.argmax(1))


def test_per_sample_image_sizes():
    g = torch.Generator().manual_seed(1)
    maps = torch.softmax(torch.randn(2, 4, 6, 6, generator=g), dim=1)
    kp = torch.rand(2, 10, 2, generator=g) * 40
    sizes = [(40, 30), (25, 41)]
    both = sample_at_keypoint_pixels(maps, kp, sizes)
    for i, s in enumerate(sizes):
        one = sample_at_keypoint_pixels(maps[i : i + 1], kp[i : i + 1], s)
        torch.testing.assert_close(both[i : i + 1], one)
        torch.testing.assert_close(one, reference_lookup(maps[i : i + 1], kp[i : i + 1], s), atol=2e-6, rtol=0)
    torch.testing.assert_close(sample_at_keypoint_pixels(maps, kp, torch.tensor(sizes)), both)


def constructed_maps():
    """K = 3 on a 2 x 2 map (= image). Per pixel, channel values (fg0, fg1, fg2, bg)."""
    values = torch.tensor(
        [
            [[0.1, 0.2, 0.1, 0.6], [0.7, 0.1, 0.1, 0.1]],  # row 0: (0,0) bg wins, fg1 second; (0,1) fg0
            [[0.05, 0.05, 0.3, 0.6], [0.1, 0.1, 0.5, 0.3]],  # row 1: (1,0) bg wins, fg2 second; (1,1) fg2
        ]
    )
    return values.permute(2, 0, 1)[None]  # [1, 4, 2, 2]


def test_with_bg_vs_fg_only_on_constructed_map():
    maps = constructed_maps()
    # keypoint k sits in pixel (row, col): 0 -> (0,0), 1 -> (0,1), 2 -> (1,0), 3 -> (1,1), 4 invisible
    kp = torch.tensor([[[0.5, 0.5], [1.2, 0.9], [0.0, 1.99], [1.5, 1.5], [0.0, 0.0]]])
    vis = torch.tensor([[True, True, True, True, False]])
    with_bg = KeypointClustering(3, 5, "with_bg").update(maps, kp, vis)
    fg_only = KeypointClustering(3, 5, "fg_only").update(maps, kp, vis)
    fg_bbox = KeypointClustering(3, 5, "fg_bbox").update(maps, kp, vis)
    expected_bg = torch.zeros(4, 5, dtype=torch.int64)
    for gt, pred in enumerate([3, 0, 3, 2]):
        expected_bg[pred, gt] = 1
    expected_fg = torch.zeros(3, 5, dtype=torch.int64)
    for gt, pred in enumerate([1, 0, 2, 2]):
        expected_fg[pred, gt] = 1
    assert torch.equal(with_bg.table.counts, expected_bg)
    assert torch.equal(fg_only.table.counts, expected_fg)
    assert torch.equal(fg_bbox.table.counts, expected_fg)
    assert with_bg.compute()["num_keypoints"] == 4
    out = fg_only.compute()
    assert out["nmi"] == pytest.approx(100 * normalized_mutual_info_score([0, 1, 2, 3], [1, 0, 2, 2]))
    assert out["ari"] == pytest.approx(100 * adjusted_rand_score([0, 1, 2, 3], [1, 0, 2, 2]))


def test_keypoint_clustering_matches_pooled_sklearn():
    g = torch.Generator().manual_seed(2)
    num_parts, p = 4, 15
    metric = build_metric("keypoint_clustering", num_parts=num_parts, num_keypoints=p, variant="with_bg")
    shard = KeypointClustering(num_parts, p, "with_bg")
    preds, gts = [], []
    for i in range(3):
        maps = torch.softmax(2 * torch.randn(4, num_parts + 1, 8, 8, generator=g), dim=1)
        kp = torch.rand(4, p, 2, generator=g) * 64
        vis = torch.rand(4, p, generator=g) < 0.7
        (metric if i < 2 else shard).update(maps, kp, vis, image_size=(64, 64))
        ref = reference_lookup(maps, kp, (64, 64)).argmax(1)
        preds.append(ref[vis].numpy())
        gts.append(torch.arange(p).expand(4, p)[vis].numpy())
    metric.merge(shard).all_reduce()
    pred, gt = np.concatenate(preds), np.concatenate(gts)
    out = metric.compute()
    assert out["num_keypoints"] == len(gt)
    assert out["nmi"] == pytest.approx(100 * normalized_mutual_info_score(gt, pred), abs=1e-10)
    assert out["ari"] == pytest.approx(100 * adjusted_rand_score(gt, pred), abs=1e-10)


def test_map_nearest_lookup_is_the_authors_grid_sample():
    """The PartFormer authors' keypoint NMI (Jiahao-UTS/UnsupervisedPart, tools/validate_function.py
    ``validate_CUB``, CUB_NMI.py) divides the keypoint by the image size, maps it to [-1, 1] and
    calls ``F.grid_sample(maps, ..., mode="nearest", align_corners=False)`` on the 128 x 128 maps:
    map cell nearbyint(x * w / W - 0.5), ties to even, zeros outside. Hand-checked on a 4 x 4 map
    over a 16 x 16 image (w / W = 1/4), whose cell (i, j) holds 10 i + j."""
    maps = (10 * torch.arange(4).view(4, 1) + torch.arange(4).view(1, 4)).float()[None, None]
    # x:  5 -> 0.75 -> 1;  6 -> 1.0 -> 1;  4 -> 0.5 -> 0 (tie, even);  8 -> 1.5 -> 2 (tie, even);
    #    12 -> 2.5 -> 2 (tie, even);  15.9 -> 3.475 -> 3;  16 -> 3.5 -> 4: outside, 0
    xs = [5.0, 6.0, 4.0, 8.0, 12.0, 15.9, 16.0]
    kp = torch.tensor([[[x, 9.0] for x in xs]])                 # y = 9 -> 1.75 -> row 2
    got = sample_at_keypoints_map_nearest(maps, kp, (16, 16))[0, 0]
    assert got.tolist() == [21.0, 21.0, 20.0, 22.0, 22.0, 23.0, 0.0]
    # the pixel protocol (PDiscoFormer) upsamples first: pixel 4 has centre 4.5, i.e. map
    # position 0.625 (cells 0 / 1 weighted 0.375 / 0.625); row: 9.5 -> 1.875 (rows 1 / 2)
    assert sample_at_keypoint_pixels(maps, kp, (16, 16))[0, 0, 2].item() == pytest.approx(
        (0.125 * 10 + 0.875 * 20) + 0.625)
    # so at such a tie the two protocols can label a keypoint differently: part 0 on map column 0,
    # part 1 on columns 1-3, keypoint at x = 4
    two = torch.zeros(1, 3, 4, 4)
    two[0, 0, :, 0] = 0.9
    two[0, 1, :, 1:] = 0.9
    two[0, 2] = 1.0 - two[0, :2].sum(0)
    kp = torch.tensor([[[4.0, 9.0]]])
    vis = torch.ones(1, 1, dtype=torch.bool)
    nearest = KeypointClustering(2, 1, "with_bg", lookup="map_nearest").update(two, kp, vis, (16, 16))
    pixel = KeypointClustering(2, 1, "with_bg").update(two, kp, vis, (16, 16))
    assert nearest.table.counts[:, 0].tolist() == [1, 0, 0]
    assert pixel.table.counts[:, 0].tolist() == [0, 1, 0] and pixel.lookup == "pixel"
    with pytest.raises(ValueError, match="lookup"):
        KeypointClustering(2, 2, lookup="bilinear")


def test_keypoint_clustering_validates():
    with pytest.raises(ValueError, match="variant"):
        KeypointClustering(4, 15, "bbox")
    m = KeypointClustering(4, 15)
    with pytest.raises(ValueError, match="K\\+1"):
        m.update(torch.rand(1, 4, 8, 8), torch.rand(1, 15, 2), torch.ones(1, 15, dtype=torch.bool))
    with pytest.raises(ValueError, match="15 keypoints"):
        m.update(torch.rand(1, 5, 8, 8), torch.rand(1, 5, 2), torch.ones(1, 5, dtype=torch.bool))


# ---------------------------------------------------------------- pixel clustering


def test_pixel_clustering_with_bg_and_fg_only():
    g = torch.Generator().manual_seed(3)
    num_parts, c = 3, 4
    maps = torch.softmax(2 * torch.randn(2, num_parts + 1, 5, 6, generator=g), dim=1)
    gt = torch.randint(-1, c + 1, (2, 20, 24), generator=g)
    gt[0, :5] = 0  # plenty of background
    up = F.interpolate(maps, size=(20, 24), mode="bilinear", align_corners=False)

    with_bg = PixelClustering(num_parts, c, "with_bg").update(maps, gt)
    keep = gt >= 0
    pred, lab = up.argmax(1)[keep].numpy(), gt[keep].numpy()
    out = with_bg.compute()
    assert out["num_pixels"] == int(keep.sum())
    assert out["nmi"] == pytest.approx(100 * normalized_mutual_info_score(lab, pred), abs=1e-10)
    assert out["ari"] == pytest.approx(100 * adjusted_rand_score(lab, pred), abs=1e-10)

    fg_only = build_metric("pixel_clustering", num_parts=num_parts, num_gt_classes=c, variant="fg_only").update(maps, gt)
    keep = gt > 0  # background pixels dropped
    pred, lab = up[:, :num_parts].argmax(1)[keep].numpy(), gt[keep].numpy()
    out = fg_only.compute()
    assert out["num_pixels"] == int(keep.sum()) < with_bg.compute()["num_pixels"]
    assert fg_only.table.counts[:, 0].sum() == 0
    assert fg_only.table.counts.shape == (num_parts, c + 1)
    assert out["nmi"] == pytest.approx(100 * normalized_mutual_info_score(lab, pred), abs=1e-10)
    assert out["ari"] == pytest.approx(100 * adjusted_rand_score(lab, pred), abs=1e-10)


def test_pixel_clustering_accepts_masks_of_different_sizes():
    g = torch.Generator().manual_seed(4)
    maps = torch.softmax(torch.randn(2, 3, 4, 4, generator=g), dim=1)
    masks = [torch.randint(0, 3, (9, 7), generator=g), torch.randint(0, 3, (5, 12), generator=g)]
    together = PixelClustering(2, 2).update(maps, masks)
    apart = PixelClustering(2, 2)
    for i in range(2):
        apart.update(maps[i : i + 1], masks[i][None])
    assert torch.equal(together.table.counts, apart.table.counts)
    assert together.compute()["num_pixels"] == 63 + 60


# ---------------------------------------------------------------- device-side accumulation


def _reference_table(pred: np.ndarray, gt: np.ndarray, num_pred: int, num_gt: int) -> np.ndarray:
    """The straightforward count: one sample at a time, ignored where gt < 0."""
    table = np.zeros((num_pred, num_gt), dtype=np.int64)
    for p, g in zip(pred.ravel().tolist(), gt.ravel().tolist()):
        if g >= 0:
            table[p, g] += 1
    return table


def test_bincount_fixed_paths_equal_bincount():
    from partformer.metrics.clustering import bincount_fixed
    g = torch.Generator().manual_seed(0)
    idx = torch.randint(0, 37, (5000,), generator=g)
    expect = torch.bincount(idx, minlength=40)
    for sync_free in (False, True):
        got = bincount_fixed(idx, 40, sync_free=sync_free)
        assert got.dtype == torch.int64 and torch.equal(got, expect)


@pytest.mark.parametrize("sync_free", [False, True])
def test_contingency_paths_equal_the_one_sample_at_a_time_reference(sync_free):
    """The accelerator path (index_add_ into a fixed table, ignored samples sent to a dropped bin,
    no boolean indexing, range errors deferred) and the CPU path (bincount, immediate checks) both
    equal a per-sample count, batch after batch."""
    rng = np.random.default_rng(5)
    t = ContingencyTable(6, 4, sync_free=sync_free)
    expect = np.zeros((6, 4), dtype=np.int64)
    for _ in range(4):
        pred = rng.integers(0, 6, (3, 17, 11))
        gt = rng.integers(-2, 4, (3, 17, 11))
        t.update(torch.from_numpy(pred), torch.from_numpy(gt))
        expect += _reference_table(pred, gt, 6, 4)
    assert t.counts.tolist() == expect.tolist()
    keep = (rng.integers(0, 6, 50), rng.integers(0, 4, 50))
    assert t.update(torch.from_numpy(keep[0]), torch.from_numpy(keep[1])).total == \
        int(expect.sum()) + 50
    bad = ContingencyTable(2, 2, sync_free=sync_free)
    if sync_free:   # deferred: the update goes through, reading the table reports it
        bad.update(torch.tensor([0, 2, 1]), torch.tensor([0, 0, -1]))
        with pytest.raises(ValueError, match="1 labels outside the table"):
            bad.counts
        ok = ContingencyTable(2, 2, sync_free=True)
        ok.update(torch.tensor([5, 0]), torch.tensor([-1, 1]))   # out of range but ignored
        assert ok.counts.tolist() == [[0, 1], [0, 0]]
    else:
        with pytest.raises(ValueError, match="predicted labels"):
            bad.update(torch.tensor([0, 2, 1]), torch.tensor([0, 0, -1]))


def test_batched_pixel_metrics_equal_per_image_reference():
    """A [B, H, W] mask batch is upsampled and counted in one call; the tables must equal the
    per-image path (a list of masks) and a per-pixel reference count, for pixel NMI (both
    variants), Hungarian mIoU and foreground IoU, on the accelerator path as well."""
    from partformer.metrics.segmentation import ForegroundIoU, HungarianPartIoU
    g = torch.Generator().manual_seed(9)
    num_parts, c = 3, 4
    maps = torch.softmax(3 * torch.randn(4, num_parts + 1, 6, 5, generator=g), dim=1)
    gt = torch.randint(-1, c + 1, (4, 23, 19), generator=g)
    fg = (gt > 0).to(torch.uint8)
    up = F.interpolate(maps, size=(23, 19), mode="bilinear", align_corners=False)
    ref_bg = _reference_table(up.argmax(1).numpy(), gt.numpy(), num_parts + 1, c + 1)
    ref_fg = _reference_table(up[:, :num_parts].argmax(1).numpy(),
                              np.where(gt.numpy() == 0, -1, gt.numpy()), num_parts, c + 1)
    ref_iou = _reference_table((up.argmax(1) != num_parts).long().numpy(), fg.long().numpy(), 2, 2)
    for sync_free in (None, True):
        for masks in (gt, list(gt)):
            metrics = {"bg": PixelClustering(num_parts, c, "with_bg"),
                       "fg": PixelClustering(num_parts, c, "fg_only"),
                       "hung": HungarianPartIoU(num_parts, c), "iou": ForegroundIoU()}
            for m in metrics.values():
                m.table.sync_free = sync_free
            for key in ("bg", "fg", "hung"):
                metrics[key].update(maps, masks)
            metrics["iou"].update(maps, fg if torch.is_tensor(masks) else list(fg))
            assert metrics["bg"].table.counts.tolist() == ref_bg.tolist()
            assert metrics["hung"].table.counts.tolist() == ref_bg.tolist()
            assert metrics["fg"].table.counts.tolist() == ref_fg.tolist()
            assert metrics["iou"].table.counts.tolist() == ref_iou.tolist()


def test_keypoint_clustering_invisible_keypoints_ignored_on_both_paths():
    g = torch.Generator().manual_seed(2)
    maps = torch.softmax(torch.randn(3, 5, 8, 8, generator=g), dim=1)
    kp = torch.rand(3, 6, 2, generator=g) * 32
    vis = torch.rand(3, 6, generator=g) < 0.6
    values = sample_at_keypoint_pixels(maps, kp, (32, 32))
    pred = values.argmax(1).numpy()
    gt = np.where(vis.numpy(), np.arange(6)[None], -1)
    expect = _reference_table(pred, gt, 5, 6)
    for sync_free in (False, True):
        m = KeypointClustering(4, 6)
        m.table.sync_free = sync_free
        m.update(maps, kp, vis, (32, 32))
        assert m.table.counts.tolist() == expect.tolist()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_contingency_on_cuda_equals_cpu():
    g = torch.Generator().manual_seed(1)
    maps = torch.softmax(torch.randn(4, 5, 8, 8, generator=g), dim=1)
    gt = torch.randint(-1, 4, (4, 32, 32), generator=g)
    cpu = PixelClustering(4, 3).update(maps, gt)
    gpu = PixelClustering(4, 3).update(maps.cuda(), gt.cuda())
    assert gpu.table.counts.device.type == "cuda"
    assert torch.equal(gpu.table.counts.cpu(), cpu.table.counts)


def test_channel_argmax_equals_torch_argmax_with_ties_and_nans():
    from partformer.metrics.clustering import channel_argmax
    g = torch.Generator().manual_seed(4)
    x = torch.randint(0, 3, (3, 5, 7, 6), generator=g).float()       # many ties
    x[0, 2, 0, 0] = float("nan")
    x[1, 1, 2, 3] = x[1, 4, 2, 3] = float("nan")                     # the first NaN wins
    x[2, 3, 4, 5] = float("nan")
    assert torch.equal(channel_argmax(x), torch.argmax(x, dim=1))
    y = torch.softmax(torch.randn(2, 9, 11, 13, generator=g), dim=1)
    assert torch.equal(channel_argmax(y), torch.argmax(y, dim=1))
