"""Foreground IoU and Hungarian-matched part mIoU."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from partformer.metrics import (
    ConfusionMatrix,
    ForegroundIoU,
    HungarianPartIoU,
    build_metric,
    hungarian_miou,
    iou_matrix,
)


def one_hot_maps(labels, channels):
    """[B, H, W] channel indices -> one-hot maps [B, channels, H, W] (a hard 'softmax')."""
    return F.one_hot(labels, channels).permute(0, 3, 1, 2).float()


def test_permuted_perfect_prediction_scores_100():
    g = torch.Generator().manual_seed(0)
    c = 4  # GT labels 0 (bg) .. 4
    gt = torch.randint(0, c + 1, (3, 12, 10), generator=g)
    gt[0, 0, 0] = -1  # ignored pixel
    # label l is predicted by channel perm[l]; channel K = 4 is background but it predicts part 2
    perm = torch.tensor([2, 0, 4, 3, 1])
    maps = one_hot_maps(perm[gt.clamp_min(0)], c + 1)
    metric = build_metric("part_miou_hungarian", num_parts=c, num_gt_classes=c)
    out = metric.update(maps, gt).compute()
    assert out["miou"] == pytest.approx(100.0) and out["miou_parts"] == pytest.approx(100.0)
    assert out["matching"] == perm.tolist()
    assert out["num_pixels"] == 3 * 12 * 10 - 1
    # with the background fixed to the last channel the matching cannot be perfect
    fixed = HungarianPartIoU(c, c, background_matching="fixed").update(maps, gt).compute()
    assert fixed["matching"][0] == c and fixed["miou"] < 100.0


def test_hungarian_hand_case_with_unmatched_gt_class():
    # 2 channels (K = 1: part, bg) vs GT labels bg, 1, 2, 3 (3 never occurs)
    confusion = np.array([[1, 6, 2, 0],  # channel 0
                          [8, 1, 2, 0]])  # channel 1 = bg
    iou = iou_matrix(confusion)
    # channel 0: |pred| = 9; channel 1: |pred| = 11; GT sizes 9, 7, 4
    np.testing.assert_allclose(iou[0, :3], [1 / 17, 6 / 10, 2 / 11])
    np.testing.assert_allclose(iou[1, :3], [8 / 12, 1 / 17, 2 / 13])
    out = hungarian_miou(confusion)
    assert out["matching"] == [1, 0, -1, -1]  # label 2 unmatched (no channel left), label 3 absent
    expected = [8 / 12, 6 / 10, 0.0]
    assert out["miou"] == pytest.approx(100 * np.mean(expected))
    assert out["miou_parts"] == pytest.approx(100 * np.mean(expected[1:]))
    np.testing.assert_allclose(out["per_class_iou"][:3], 100 * np.array(expected))
    assert np.isnan(out["per_class_iou"][3])


def test_hungarian_free_vs_fixed_background():
    # rows: channel 0 (part) mostly covers GT part 1, channel 1 (bg) mostly GT background
    confusion = np.array([[1, 9], [9, 1]])
    free = hungarian_miou(confusion, "free")
    fixed = hungarian_miou(confusion, "fixed")
    assert free["matching"] == [1, 0] and free["miou"] == pytest.approx(100 * 9 / 11)
    assert fixed["matching"] == [1, 0]  # here both agree: bg channel is best for bg
    swapped = confusion[::-1].copy()  # now the bg channel covers the GT part
    assert hungarian_miou(swapped, "free")["matching"] == [0, 1]
    fixed = hungarian_miou(swapped, "fixed")
    assert fixed["matching"] == [1, 0] and fixed["miou"] == pytest.approx(100 * 1 / 19)
    with pytest.raises(ValueError):
        hungarian_miou(confusion, "none")


def test_hungarian_metric_merges_and_upsamples():
    g = torch.Generator().manual_seed(1)
    maps = torch.softmax(2 * torch.randn(4, 4, 5, 5, generator=g), dim=1)
    gt = torch.randint(-1, 4, (4, 15, 15), generator=g)
    whole = HungarianPartIoU(3, 3).update(maps, gt)
    a = HungarianPartIoU(3, 3).update(maps[:1], gt[:1])
    b = HungarianPartIoU(3, 3).update(maps[1:], gt[1:])
    assert torch.equal(a.merge(b).all_reduce().table.counts, whole.table.counts)
    up = F.interpolate(maps, size=(15, 15), mode="bilinear", align_corners=False).argmax(1)
    ref = ConfusionMatrix(4, 4).update(up, gt)
    assert torch.equal(whole.table.counts, ref.counts)
    assert whole.compute() == {**hungarian_miou(ref.counts), "num_pixels": int((gt >= 0).sum())}


def test_foreground_iou_hand_case():
    # K = 2, bg channel = 2; 2 x 3 image, map already at image resolution
    pred_channel = torch.tensor([[[0, 1, 2], [2, 2, 0]]])
    fg_mask = torch.tensor([[[1, 1, 1], [0, 0, 0]]], dtype=torch.uint8)
    out = ForegroundIoU().update(one_hot_maps(pred_channel, 3), fg_mask).compute()
    # pred fg = {(0,0), (0,1), (1,2)}, gt fg = first row: tp 2, fp 1, fn 1, tn 2
    assert out["fg_iou"] == pytest.approx(100 * 2 / 4)
    assert out["bg_iou"] == pytest.approx(100 * 2 / 4)
    assert out["miou_fgbg"] == pytest.approx(50.0)
    assert out["num_pixels"] == 6


def test_foreground_iou_upsamples_pools_and_ignores():
    g = torch.Generator().manual_seed(2)
    maps = torch.softmax(torch.randn(2, 3, 4, 4, generator=g), dim=1)
    masks = [torch.randint(0, 2, (8, 8), generator=g), torch.randint(-1, 2, (6, 10), generator=g)]
    metric = build_metric("foreground_iou").update(maps, masks)
    tp = fp = fn = tn = 0
    for i, m in enumerate(masks):
        pred = F.interpolate(maps[i : i + 1], size=m.shape, mode="bilinear", align_corners=False).argmax(1)[0] != 2
        keep = m >= 0
        gt = m[keep] == 1
        pred = pred[keep]
        tp += int((pred & gt).sum()); fp += int((pred & ~gt).sum())
        fn += int((~pred & gt).sum()); tn += int((~pred & ~gt).sum())
    out = metric.compute()
    assert out["fg_iou"] == pytest.approx(100 * tp / (tp + fp + fn))
    assert out["bg_iou"] == pytest.approx(100 * tn / (tn + fp + fn))
    assert out["num_pixels"] == tp + fp + fn + tn


def test_empty_foreground_iou_is_nan():
    out = ForegroundIoU().compute()
    assert np.isnan(out["fg_iou"]) and out["num_pixels"] == 0
