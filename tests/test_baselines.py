"""Tests of the training-free references (partformer/methods/grid, kmeans): the oracle-box grid and k-means on
frozen encoder features (with a hand-made fake encoder, no network)."""
from __future__ import annotations

import itertools

import pytest
import torch

from partformer.methods import get_method
from partformer.methods.grid import Grid, GridModel, grid_part_maps, grid_shape
from partformer.models.kmeans import KMeansModel, kmeans_torch



# ------------------------------------------------------------------------------ grid
@pytest.mark.parametrize("k,shape", [(1, (1, 1)), (2, (1, 2)), (4, (2, 2)), (6, (2, 3)),
                                     (8, (2, 4)), (16, (4, 4)), (12, (3, 4)), (7, (1, 7))])
def test_grid_shape(k, shape):
    assert grid_shape(k) == shape
    rows, cols = shape
    assert rows * cols == k and cols >= rows


def test_grid_maps_hand_made_box():
    # 8 x 8 image, box x=2, y=1, w=4, h=6 -> pixel columns 2..5, rows 1..6 (pixel centres inside)
    maps = grid_part_maps(torch.tensor([[2.0, 1.0, 4.0, 6.0]]), (8, 8), 4)
    assert maps.shape == (1, 5, 8, 8)
    assert torch.equal(maps.sum(1), torch.ones(1, 8, 8))          # one-hot
    labels = maps.argmax(1)[0]
    B = 4  # background channel: last
    expected = torch.full((8, 8), B)
    # 2 x 2 grid: rows 1-3 / 4-6, columns 2-3 / 4-5; label = row * cols + col
    expected[1:4, 2:4] = 0
    expected[1:4, 4:6] = 1
    expected[4:7, 2:4] = 2
    expected[4:7, 4:6] = 3
    assert torch.equal(labels, expected)


def test_grid_maps_fractional_box_and_rectangular_grid():
    # box x=1.5..4.5, y=0..6 in a 6 x 7 (H x W) image; K = 6 -> 2 rows x 3 columns
    maps = grid_part_maps(torch.tensor([[1.5, 0.0, 3.0, 6.0]]), (6, 7), 6)
    labels = maps.argmax(1)[0]
    # pixel centres x = 1.5 (u = 0: inside), 2.5, 3.5 inside; 4.5 (u = 1) outside
    expected = torch.full((6, 7), 6)
    for r in range(6):
        for j, c in enumerate((1, 2, 3)):
            expected[r, c] = (r // 3) * 3 + j
    assert torch.equal(labels, expected)


def test_grid_maps_per_image_boxes():
    boxes = torch.tensor([[0.0, 0.0, 4.0, 4.0], [4.0, 4.0, 4.0, 4.0]])
    labels = grid_part_maps(boxes, (8, 8), 1).argmax(1)
    assert (labels[0, :4, :4] == 0).all() and (labels[0, 4:, :] == 1).all()
    assert (labels[1, 4:, 4:] == 0).all() and (labels[1, :4, :] == 1).all()


def _grid_method(num_parts=4):
    from partformer import config as cfglib
    cfg = cfglib.load_config(None, [f"model.num_parts={num_parts}"])
    return Grid(cfg)


def test_grid_baseline_callable():
    assert get_method("grid") is Grid and not Grid.trainable
    method = _grid_method()
    model = method.build_model()
    assert isinstance(model, GridModel) and not list(model.parameters())
    method.fit(model, None, torch.device("cpu"))                 # nothing to fit
    batch = {"image": torch.zeros(2, 3, 16, 12), "bbox": torch.tensor([[0.0, 0.0, 12.0, 16.0]] * 2)}
    maps = method.predict(model, batch)
    assert maps.shape == (2, 5, 16, 12)
    assert (maps[:, 4] == 0).all()                    # the box covers the whole image
    assert (maps.argmax(1)[:, 0, 0] == 0).all() and (maps.argmax(1)[:, -1, -1] == 3).all()
    with pytest.raises(ValueError, match="bbox"):
        method.predict(model, {"image": torch.zeros(1, 3, 8, 8)})


# ------------------------------------------------------------------------------ k-means
def _match(labels_a, labels_b) -> bool:
    """True when the two labellings are equal up to a permutation of label ids."""
    pairs = set(zip(labels_a.tolist(), labels_b.tolist()))
    return len(pairs) == len(set(labels_a.tolist())) == len(set(labels_b.tolist()))


def test_kmeans_recovers_separated_clusters():
    g = torch.Generator().manual_seed(0)
    true = torch.tensor([[0.0, 0.0, 0.0], [10.0, 0.0, 0.0], [0.0, 10.0, 0.0], [0.0, 0.0, 10.0]])
    labels = torch.arange(4).repeat_interleave(torch.tensor([50, 10, 30, 5]))
    x = true[labels] + 0.3 * torch.randn(len(labels), 3, generator=g)
    centres = kmeans_torch(x, 4, seed=1)
    assert centres.shape == (4, 3)
    # every true centre has exactly one found centre near it
    d = torch.cdist(true, centres)
    assert sorted(d.argmin(1).tolist()) == [0, 1, 2, 3]
    assert d.min(1).values.max() < 0.3
    found = torch.cdist(x, centres).argmin(1)
    assert _match(found, labels)
    # deterministic for a seed
    assert torch.equal(centres, kmeans_torch(x, 4, seed=1))


def test_kmeans_with_fewer_distinct_points_than_k():
    x = torch.tensor([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0], [1.0, 0.0]])
    centres = kmeans_torch(x, 4, seed=0)
    assert centres.shape == (4, 2) and torch.isfinite(centres).all()
    assert torch.cdist(x, centres).min(1).values.max() < 1e-6


class FakeEncoder(torch.nn.Module):
    """Feature map of stride 2 in which the one-cell border has feature e0 and the interior is
    split into four horizontal bands e1..e4 of 1, 2, 4 and 7 rows (the 7-row band is larger than
    the border, so background must be chosen by border coverage, not by size)."""

    embed_dim = 5

    def __init__(self):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))   # so .to(device) has something to move

    def forward(self, x):
        B, _, H, W = x.shape
        h, w = H // 2, W // 2
        lab = torch.zeros(h, w, dtype=torch.long)
        band = torch.tensor(list(itertools.chain(*[[i + 1] * n for i, n in enumerate(
            (1, 2, 4, 7))])))
        assert len(band) == h - 2
        lab[1:-1, 1:-1] = band.view(-1, 1)
        f = torch.nn.functional.one_hot(lab, 5).permute(2, 0, 1).float()
        return f.unsqueeze(0).expand(B, -1, -1, -1) + 0 * self.anchor


def fake_dataset(n=3, size=32):
    return [{"image": torch.rand(3, size, size, generator=torch.Generator().manual_seed(i))}
            for i in range(n)]


def test_kmeans_baseline_border_cluster_last():
    assert not get_method("kmeans").trainable
    km = KMeansModel(4, FakeEncoder(), seed=0)
    with pytest.raises(RuntimeError, match="fitted"):
        km.predict(torch.zeros(1, 3, 32, 32))
    km.fit(fake_dataset(), batch_size=2)
    maps = km.predict(torch.rand(2, 3, 32, 32))
    assert maps.shape == (2, 5, 16, 16)
    labels = maps.argmax(1)
    # border -> background (last channel)
    assert (labels[:, 0, :] == 4).all() and (labels[:, -1, :] == 4).all()
    assert (labels[:, :, 0] == 4).all() and (labels[:, :, -1] == 4).all()
    # foreground clusters ordered by size: the 7-row band first, the 1-row band last
    assert (labels[:, 8:15, 1:-1] == 0).all()   # band 4 (rows 8..14)
    assert (labels[:, 4:8, 1:-1] == 1).all()    # band 3
    assert (labels[:, 2:4, 1:-1] == 2).all()    # band 2
    assert (labels[:, 1, 1:-1] == 3).all()      # band 1
    assert torch.equal(maps.sum(1), torch.ones(2, 16, 16))


def test_kmeans_baseline_images_of_different_sizes():
    """Resize modes that keep the aspect ratio give feature maps of different sizes per image."""
    class Banded(FakeEncoder):
        """Border e0; the interior split into 4 column bands e1..e4 (relative widths)."""

        def forward(self, x):
            B, _, H, W = x.shape
            h, w = H // 2, W // 2
            lab = torch.zeros(h, w, dtype=torch.long)
            cols = (torch.arange(w - 2) * 4) // (w - 2) + 1
            lab[1:-1, 1:-1] = cols.view(1, -1)
            f = torch.nn.functional.one_hot(lab, 5).permute(2, 0, 1).float()
            return f.unsqueeze(0).expand(B, -1, -1, -1) + 0 * self.anchor

    data = [{"image": torch.rand(3, 32, 32)}, {"image": torch.rand(3, 24, 40)},
            {"image": torch.rand(3, 48, 20)}]
    km = KMeansModel(4, Banded(), seed=0).fit(data, batch_size=1)
    for h, w in ((24, 40), (48, 20)):
        labels = km.predict(torch.rand(1, 3, h, w)).argmax(1)[0]
        assert (labels[0] == 4).all() and (labels[-1] == 4).all()
        assert (labels[:, 0] == 4).all() and (labels[:, -1] == 4).all()
        fg = labels[1:-1, 1:-1]
        assert (fg < 4).all() and len(fg.unique()) == 4
        assert (fg == fg[:1]).all()          # one label per column band


def test_fitted_kmeans_centres_are_saved_and_load_strictly():
    """The k-means reference's centres are a buffer of its model: a state dict round trip
    predicts the same maps (what a checkpoint of the reference holds)."""
    from partformer.engine.checkpoint import load_state_dict_strict
    km = KMeansModel(4, FakeEncoder(), seed=0).fit(fake_dataset(), batch_size=2)
    other = KMeansModel(4, FakeEncoder(), seed=0)
    load_state_dict_strict(other, km.state_dict())
    x = torch.rand(2, 3, 32, 32)
    assert torch.equal(other.predict(x), km.predict(x))
