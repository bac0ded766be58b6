"""Resize modes of partformer/data/transforms.py: sizes, and keypoints / boxes / masks staying
consistent with the image under every mode (docs/ARCHITECTURE.md, 'Resize modes')."""
import zlib

import cv2
import numpy as np
import pytest
import torch

from partformer.data.transforms import (RESIZE_MODES, apply_resize, fixed_size, plan_resize,
                                        resize_mask, to_tensor_image)

R = 4  # half-size of the label square drawn around each keypoint (enough for 1/5 downscaling)


def make_scene(rng, h, w, n_kp=9):
    """Random image; a rectangular foreground = box; keypoints on a grid inside it, each drawn in
    a label mask as a (2R+1)^2 square of label k + 1; every third keypoint invisible."""
    image = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
    x0, x1 = int(rng.integers(1, w // 5)), int(rng.integers(w - w // 5, w))
    y0, y1 = int(rng.integers(1, h // 5)), int(rng.integers(h - h // 5, h))
    fg = np.zeros((h, w), np.uint8)
    fg[y0:y1, x0:x1] = 1
    side = int(np.ceil(np.sqrt(n_kp)))
    gx = x0 + R + 1 + (np.arange(side) + 0.5) * (x1 - x0 - 2 * R - 2) / side
    gy = y0 + R + 1 + (np.arange(side) + 0.5) * (y1 - y0 - 2 * R - 2) / side
    kp = np.array([[gx[k % side] + rng.uniform(-1, 1), gy[k // side] + rng.uniform(-1, 1)]
                   for k in range(n_kp)], np.float32)
    vis = np.arange(n_kp) % 3 != 2
    kp[~vis] = 0
    lab = np.zeros((h, w), np.int64)
    for k in np.flatnonzero(vis):
        cx, cy = int(kp[k, 0]), int(kp[k, 1])
        lab[max(cy - R, 0):cy + R + 1, max(cx - R, 0):cx + R + 1] = k + 1
    bbox = np.array([x0, y0, x1 - x0, y1 - y0], np.float32)
    return image, kp, vis, bbox, fg, lab


SIZES = [(100, 150), (150, 100), (120, 120), (97, 161), (161, 97)]


@pytest.mark.parametrize("mode", RESIZE_MODES)
@pytest.mark.parametrize("hw", SIZES)
@pytest.mark.parametrize("size", [32, 48])
def test_annotations_follow_the_image(mode, hw, size):
    rng = np.random.default_rng(zlib.crc32(repr((mode, hw, size)).encode()))
    image, kp, vis, bbox, fg, lab = make_scene(rng, *hw)
    out = apply_resize(mode, size, image, kp, vis, bbox, masks=(fg, lab))
    H, W = out.image.shape[:2]
    fg2, lab2 = out.masks
    assert fg2.shape == lab2.shape == (H, W) and fg2.dtype == np.uint8 and lab2.dtype == np.int64
    assert out.keypoints.dtype == np.float32 and out.visible.dtype == bool
    # every visible keypoint still sits on its own label, inside the image and the box
    assert out.visible.any()
    for k in np.flatnonzero(out.visible):
        x, y = out.keypoints[k]
        assert 0 <= x <= W and 0 <= y <= H
        assert lab2[min(int(y), H - 1), min(int(x), W - 1)] == k + 1, (k, x, y)
        bx, by, bw, bh = out.bbox
        assert bx - 1e-4 <= x <= bx + bw + 1e-4 and by - 1e-4 <= y <= by + bh + 1e-4
    # invisible keypoints are zeroed; keypoints never become visible
    assert not (out.visible & ~vis).any()
    assert (out.keypoints[~out.visible] == 0).all()
    # the box covers the foreground up to the half pixel of nearest sampling
    ys, xs = np.nonzero(fg2)
    bx, by, bw, bh = out.bbox
    assert xs.min() >= bx - 0.5 - 1e-4 and xs.max() + 1 <= bx + bw + 0.5 + 1e-4
    assert ys.min() >= by - 0.5 - 1e-4 and ys.max() + 1 <= by + bh + 0.5 + 1e-4
    # and does not exceed it by more than a pixel either
    assert xs.min() <= bx + 1 and xs.max() + 1 >= bx + bw - 1


def test_longest_pad_geometry():
    """DeepFashion's protocol: longest side to S, padded bottom / right (image 0, masks with their
    fill), top-left corner kept."""
    img = np.full((44, 30, 3), 200, np.uint8)        # portrait: height is the longest side
    lab = np.arange(44 * 30).reshape(44, 30)
    out = apply_resize("longest_pad", 32, img, masks=(lab,), mask_fills=(-1,))
    (m,) = out.masks
    nw = int(np.floor(30 * 32 / 44 + 0.5))           # 22
    assert out.image.shape == (32, 32, 3) and (out.image[:, nw:] == 0).all()
    assert (out.image[:, :nw] == 200).all()
    np.testing.assert_array_equal(m[:, :nw], resize_mask(lab, 32, nw))
    assert (m[:, nw:] == -1).all()
    out = apply_resize("longest_pad", 16, np.zeros((10, 40, 3), np.uint8),
                       masks=(np.ones((10, 40), np.int64),), mask_fills=(-1,))
    (m,) = out.masks                                 # landscape: padded at the bottom
    assert (m[:4] == 1).all() and (m[4:] == -1).all()
    assert fixed_size("longest_pad") and not fixed_size("shorter")
    with pytest.raises(ValueError, match="mask_fills"):
        apply_resize("longest_pad", 16, img, masks=(lab,), mask_fills=(-1, 0))


@pytest.mark.parametrize("hw", SIZES)
def test_output_sizes(hw):
    h, w = hw
    rng = np.random.default_rng(0)
    image, kp, vis, bbox, fg, lab = make_scene(rng, h, w)
    S = 48
    assert apply_resize("whole", S, image).image.shape == (S, S, 3)
    sh = apply_resize("shorter", S, image).image.shape[:2]
    assert min(sh) == S
    # torchvision Resize(int): longer side truncated
    assert max(sh) == int(S * max(h, w) / min(h, w))
    assert apply_resize("shorter_center_crop", S, image).image.shape == (S, S, 3)
    bh_, bw_ = apply_resize("bbox_crop", S, image, bbox=bbox).image.shape[:2]
    assert bh_ % 16 == 0 and bw_ % 16 == 0 and min(bh_, bw_) == S  # 48 is a multiple of 16


def test_whole_matches_cv2_and_scales_coordinates():
    rng = np.random.default_rng(1)
    image, kp, vis, bbox, fg, lab = make_scene(rng, 100, 150)
    out = apply_resize("whole", 64, image, kp, vis, bbox)
    ref = cv2.resize(image, (64, 64), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_array_equal(out.image, ref)
    np.testing.assert_allclose(out.keypoints[vis], kp[vis] * np.array([64 / 150, 64 / 100]),
                               rtol=1e-6)
    np.testing.assert_allclose(out.bbox, bbox * np.array([64 / 150, 64 / 100] * 2), rtol=1e-6)
    np.testing.assert_array_equal(out.visible, vis)


def test_identity_when_size_matches():
    rng = np.random.default_rng(2)
    image, kp, vis, bbox, fg, lab = make_scene(rng, 64, 64)
    out = apply_resize("whole", 64, image, kp, vis, bbox, masks=(lab,))
    np.testing.assert_array_equal(out.image, image)
    np.testing.assert_array_equal(out.masks[0], lab)
    np.testing.assert_allclose(out.keypoints, kp)
    np.testing.assert_allclose(out.bbox, bbox)


def test_center_crop_drops_keypoints_outside():
    # wide image: keypoints near the left / right edges leave the centred square crop
    h, w, S = 60, 180, 30
    image = np.zeros((h, w, 3), np.uint8)
    kp = np.array([[2.0, 30.0], [90.0, 30.0], [178.5, 10.0], [59.9, 5.0], [60.0, 5.0],
                   [119.9, 50.0], [120.0, 50.0]], np.float32)
    vis = np.ones(len(kp), bool)
    bbox = np.array([1.0, 1.0, 170.0, 50.0], np.float32)
    out = apply_resize("shorter_center_crop", S, image, kp, vis, bbox)
    # shorter side 60 -> 30 (scale 1/2), width 90, crop columns 30..59 of the resized image
    assert out.image.shape == (S, S, 3)
    x = kp[:, 0] / 2 - 30
    expect = (x >= 0) & (x < S)
    np.testing.assert_array_equal(out.visible, expect)
    assert expect.tolist() == [False, True, False, False, True, True, False]
    np.testing.assert_allclose(out.keypoints[expect, 0], x[expect], atol=1e-5)
    assert (out.keypoints[~expect] == 0).all()
    # box clipped to the crop
    np.testing.assert_allclose(out.bbox, [0.0, 0.5, 30.0, 25.0], atol=1e-5)


def test_bbox_crop_geometry():
    h, w = 200, 300
    image = np.zeros((h, w, 3), np.uint8)
    bbox = np.array([50.4, 20.0, 100.2, 130.0], np.float32)  # window cols 50..150, rows 20..150
    plan = plan_resize("bbox_crop", 64, h, w, bbox)
    assert plan.crop0 == (20, 50, 130, 101)
    rh, rw = plan.resized_hw
    assert rw == 64 and rh == int(64 * 130 / 101)  # 82 -> trimmed to 80, one row off the top
    assert plan.crop1 == (1, 0, 80, 64)
    kp = np.array([[50.0, 20.0], [100.0, 85.0], [10.0, 10.0]], np.float32)
    out = apply_resize("bbox_crop", 64, image, kp, np.ones(3, bool), bbox)
    assert out.image.shape == (80, 64, 3)
    np.testing.assert_array_equal(out.visible, [False, True, False])  # (50, 20) maps above row 0
    np.testing.assert_allclose(out.keypoints[1], [(100 - 50) * 64 / 101, (85 - 20) * rh / 130 - 1],
                               rtol=1e-5)


def test_bbox_crop_box_touching_the_border():
    image = np.zeros((50, 40, 3), np.uint8)
    out = apply_resize("bbox_crop", 16, image, bbox=np.array([-3.0, 10.0, 60.0, 45.0]))
    bx, by, bw, bh = out.bbox
    H, W = out.image.shape[:2]
    assert H % 16 == 0 and W % 16 == 0
    assert bx >= 0 and by >= 0 and bx + bw <= W + 1e-4 and by + bh <= H + 1e-4


def test_resize_mask_nearest_keeps_labels():
    mask = np.arange(12, dtype=np.int64).reshape(3, 4)
    up = resize_mask(mask, 6, 8)
    np.testing.assert_array_equal(up, np.kron(mask, np.ones((2, 2), np.int64)))
    assert set(np.unique(resize_mask(mask, 2, 3))) <= set(mask.ravel())


def test_none_masks_pass_through_and_no_annotations():
    image = np.zeros((20, 30, 3), np.uint8)
    out = apply_resize("shorter", 10, image, masks=(None, np.ones((20, 30), np.uint8)))
    assert out.keypoints is None and out.visible is None and out.bbox is None
    assert out.masks[0] is None and out.masks[1].shape == (10, 15)


@pytest.mark.parametrize("kwargs, match", [
    (dict(mode="square"), "unknown resize mode"),
    (dict(mode="bbox_crop"), "needs the ground-truth box"),
    (dict(size=0), "positive integer"),
    (dict(mode="bbox_crop", size=8, bbox=(0, 0, 5, 5)), "multiple of 16"),
    (dict(masks=(np.zeros((5, 5), np.uint8),)), "mask 0"),
    (dict(keypoints=np.zeros((3, 2), np.float32)), "together"),
    (dict(image=np.zeros((20, 30), np.uint8)), "uint8 \\[H, W, 3\\]"),
])
def test_bad_arguments(kwargs, match):
    args = dict(mode="whole", size=16, image=np.zeros((20, 30, 3), np.uint8))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        apply_resize(**args)


def test_to_tensor_image():
    image = np.zeros((5, 7, 3), np.uint8)
    image[1, 2] = (255, 0, 51)
    t = to_tensor_image(image)
    assert t.shape == (3, 5, 7) and t.dtype == torch.float32
    assert t[:, 1, 2].tolist() == pytest.approx([1.0, 0.0, 0.2])
    assert t.min() >= 0 and t.max() <= 1
