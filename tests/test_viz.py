"""Visualisation (partformer/viz.py, engine/inspect.py): the fixed palette is perceptually
distinct, overlays put the palette colour exactly where the mask says, label PNGs round-trip, and
the contact sheet / per-part view have the documented layout."""
from __future__ import annotations

import os

import cv2
import numpy as np
import pytest
import torch

from partformer import viz


def lab(rgb: np.ndarray) -> np.ndarray:
    """CIELAB (D65) of uint8 sRGB colours [N, 3], with OpenCV's float conversion (L in 0..100)."""
    return cv2.cvtColor(rgb.reshape(1, -1, 3).astype(np.float32) / 255,
                        cv2.COLOR_RGB2LAB).reshape(-1, 3)


def min_distance(colours: np.ndarray) -> float:
    d = np.linalg.norm(lab(colours)[:, None] - lab(colours)[None], axis=-1)
    np.fill_diagonal(d, np.inf)
    return float(d.min())


def test_palette_is_fixed_distinct_and_background_neutral():
    assert viz.PALETTE.shape == (50, 3) and viz.MAX_DISTINCT_PARTS == 50
    assert len({tuple(c) for c in viz.PALETTE}) == 50
    # the documented minimum CIELAB distances of the prefixes (first K colours for K parts)
    for k, bound in ((4, 80), (8, 55), (16, 40), (50, 24)):
        assert min_distance(viz.PALETTE[:k]) > bound, k
    grey = lab(viz.BACKGROUND[None])[0]
    assert abs(grey[1]) < 1 and abs(grey[2]) < 1          # neutral: no chroma
    assert np.linalg.norm(lab(viz.PALETTE) - grey, axis=1).min() > 24
    pal = viz.part_palette(7)
    assert pal.shape == (8, 3) and (pal[:7] == viz.PALETTE[:7]).all()
    assert (pal[7] == viz.BACKGROUND).all()
    assert (viz.part_palette(53)[50:53] == viz.PALETTE[:3]).all()   # cyclic beyond 50


def labels_image(h=24, w=30, K=5, seed=0):
    g = np.random.default_rng(seed)
    coarse = g.integers(0, K + 1, (4, 5))
    return cv2.resize(coarse.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST)


def test_overlay_has_palette_colours_where_the_mask_says():
    K = 5
    labels = labels_image(K=K)
    image = np.random.default_rng(1).integers(0, 256, labels.shape + (3,)).astype(np.uint8)
    pal = viz.part_palette(K)
    fg = labels < K
    out = viz.overlay(image, labels, K, alpha=1.0, boundaries=False)
    assert (out[fg] == pal[labels[fg]]).all()
    assert (out[~fg] == image[~fg]).all()                 # background untouched
    half = viz.overlay(image, labels, K, alpha=0.5, boundaries=False)
    want = np.rint(0.5 * image[fg].astype(np.float32) + 0.5 * pal[labels[fg]]).astype(np.uint8)
    assert np.abs(half[fg].astype(int) - want.astype(int)).max() <= 1
    assert (viz.overlay(image, labels, K, alpha=0.0, boundaries=False) == image).all()
    # boundaries: the part's own colour at full opacity on its edge pixels, only there
    edged = viz.overlay(image, labels, K, alpha=0.3, boundaries=True)
    edge = viz.part_boundaries(labels, K)
    assert edge.any() and not (edge & ~fg).any()
    assert (edged[edge] == pal[labels[edge]]).all()
    assert (edged[fg & ~edge] == viz.overlay(image, labels, K, 0.3, False)[fg & ~edge]).all()
    # an interior pixel of a uniform block is never an edge
    block = np.full((9, 9), 2)
    block[:, :3] = K
    e = viz.part_boundaries(block, K)
    assert e[:, 3].all() and not e[:, 4:].any() and not e[:, :3].any()
    with pytest.raises(ValueError, match="opacity"):
        viz.overlay(image, labels, K, alpha=1.5)


@pytest.mark.parametrize("K", [4, 300])
def test_label_png_round_trip(tmp_path, K):
    labels = np.random.default_rng(K).integers(0, K + 1, (17, 23))
    path = str(tmp_path / "sub" / "l.png")
    viz.save_labels(path, labels, K)
    back = viz.read_labels(path)
    assert back.dtype == np.int64 and np.array_equal(back, labels)
    raw = cv2.imread(path, cv2.IMREAD_UNCHANGED)
    assert raw.ndim == 2 and raw.dtype == (np.uint8 if K <= 255 else np.uint16)
    with pytest.raises(ValueError, match="0..4"):
        viz.save_labels(path, np.full((3, 3), 5), 4)
    with pytest.raises(ValueError, match="PNG"):
        viz.save_labels(str(tmp_path / "l.jpg"), labels, K)


def test_keypoints_drawn_with_their_identity():
    img = np.full((40, 40, 3), 255, np.uint8)
    kps = np.array([[10.2, 12.7], [30.5, 25.0], [5.0, 5.0]])
    out = viz.draw_keypoints(img, kps, np.array([True, True, False]), radius=3)
    assert (out[12, 10] == viz.PALETTE[0]).all()          # (row floor(y), col floor(x))
    assert (out[25, 30] == viz.PALETTE[1]).all()
    assert (out[5, 5] == 255).all()                        # invisible: not drawn
    assert (img == 255).all()                              # a copy


def test_legend_contact_sheet_and_part_view_layout():
    K = 3
    leg = viz.legend(K)
    for c in viz.part_palette(K):                          # every swatch, background included
        assert (leg == c).all(axis=-1).sum() >= 100
    images = torch.rand(2, 3, 20, 16)
    maps = torch.softmax(torch.randn(2, K + 1, 5, 4) * 3, dim=1)
    sheet = viz.contact_sheet(images, maps, min_size=16)
    # columns: input, parts, K part heat maps and the background heat map
    cols = 2 + K + 1
    assert sheet.shape[1] == cols * 16 + (cols - 1) * 2
    assert sheet.shape[0] > 2 * 20 + 16                    # header, 2 rows, legend
    big = viz.contact_sheet(images, maps)                  # 16 px wide: enlarged x8 to 128
    assert big.shape[1] == cols * 128 + (cols - 1) * 2
    heat = viz.heatmap(np.zeros((4, 4, 3), np.uint8), np.ones((4, 4)), viz.PALETTE[2])
    assert (heat == viz.PALETTE[2]).all()                  # p = 1: the part's colour
    crops = [[np.zeros((10, 10, 3), np.uint8)] * 2, [np.zeros((12, 12, 3), np.uint8)], []]
    view = viz.part_view(crops, scores=[[0.9, 0.8], [0.7], []], min_size=30)
    # one row per part; crops enlarged by integer factors (10 -> 30, 12 -> 36), cells 36 px
    assert view.shape == (3 * 36 + 2 * 2, 70 + 2 * (36 + 2), 3)


def test_part_confidence_and_top_crops(tmp_path):
    """engine.inspect: a part's score is its peak after a 3x3 mean; the top crops of a split are
    the images where it peaks highest, centred on the peak."""
    from partformer.engine.inspect import part_confidence, top_part_crops

    maps = torch.zeros(2, 3, 10, 10)
    maps[:, 2] = 1.0
    maps[0, 0, 4:7, 4:7], maps[0, 2, 4:7, 4:7] = 1.0, 0.0   # part 0 sure in a 3x3 block
    maps[1, 0, 2, 8], maps[1, 2, 2, 8] = 1.0, 0.0           # one saturated pixel only
    scores, peaks = part_confidence(maps)
    assert scores[0, 0] == pytest.approx(1.0) and peaks[0, 0].tolist() == [5, 5]
    assert scores[1, 0] < 0.3

    class Toy(torch.utils.data.Dataset):
        def __len__(self):
            return 5

        def __getitem__(self, i):
            return {"image": torch.full((3, 16, 16), i / 5), "index": torch.tensor(i)}

    def predict(batch):  # part 0 peaks at (row 3, col 12) with confidence index / 4
        b = batch["image"].shape[0]
        m = torch.zeros(b, 2, 16, 16)
        conf = batch["index"].float() / 4
        m[:, 0, 3, 12] = conf
        m[:, 1] = 1 - m[:, 0]
        return m

    crops, values = top_part_crops(predict, Toy(), 1, top=3, crop_fraction=0.5, batch_size=2)
    # crop side 8, window 5: one pixel of confidence c gives c / 25; best first (images 4, 3, 2)
    assert len(crops) == 1 and len(crops[0]) == 3
    assert values[0] == pytest.approx([1 / 25, 0.75 / 25, 0.5 / 25])
    # 8 x 8 crop around the first peak cell (1, 10), shifted inside: rows 0..7, cols 6..13; the
    # part's single pixel (3, 12) is all edge, so it has the part's colour at full opacity
    assert crops[0][0].shape == (8, 8, 3)
    assert (crops[0][0][3, 6] == viz.PALETTE[0]).all()


def test_atomic_writes_have_normal_permissions(tmp_path):
    """Files written atomically get the mode open() would give (umask), not mkstemp's 0600."""
    import stat
    from partformer.fileio import _UMASK, atomic_open
    path = str(tmp_path / "a.png")
    viz.save_png(path, np.zeros((4, 4, 3), np.uint8))
    with atomic_open(str(tmp_path / "b.json"), "w") as f:
        f.write("{}")
    for name in ("a.png", "b.json"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == 0o666 & ~_UMASK
    assert sorted(os.listdir(tmp_path)) == ["a.png", "b.json"]


def test_palette_png_keeps_the_part_colours_and_is_smaller(tmp_path):
    """save_png(colors=N): an 8-bit palette PNG of at most N colours; an overlay that uses only
    the palette's part colours (fewer than N) comes back pixel for pixel."""
    from PIL import Image
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 5, size=(64, 64))
    img = np.repeat(np.repeat(viz.PALETTE[labels % 4], 2, 0), 2, 1).astype(np.uint8)
    noisy = np.clip(img.astype(int) + rng.integers(-20, 21, img.shape), 0, 255).astype(np.uint8)
    viz.save_png(str(tmp_path / "exact.png"), img, colors=16)
    back = Image.open(tmp_path / "exact.png")
    assert back.mode == "P"
    assert (np.asarray(back.convert("RGB")) == img).all()
    viz.save_png(str(tmp_path / "full.png"), noisy)
    viz.save_png(str(tmp_path / "small.png"), noisy, colors=32)
    small = Image.open(tmp_path / "small.png")
    assert len(small.getcolors(256)) <= 32
    assert os.path.getsize(tmp_path / "small.png") < os.path.getsize(tmp_path / "full.png") / 2
    with pytest.raises(ValueError, match="colors"):
        viz.save_png(str(tmp_path / "x.png"), img, colors=1)
