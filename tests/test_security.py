"""Security and data-loss defects (issue 16, items 14-18 and 21): each test fails without its fix.

- 14: no weights file is ever unpickled as code (the VGG19 of the perceptual loss in the torch hub
  cache included), and the cached VGG19 must carry torchvision's published hash prefix;
"""
from __future__ import annotations

import os
import pickle
import urllib.error

import pytest
import torch

from partformer.losses import perceptual
from partformer.losses.perceptual import VGGPerceptualLoss, VGGWeightsError


class _RunsCode:
    """Unpickling this object runs ``open(marker, 'w')`` (a stand-in for any code)."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _malicious_pickle(path, marker) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        pickle.dump({"features.0.weight": _RunsCode(str(marker))}, f)


@pytest.fixture
def torch_home(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path / "torch_home"


def test_a_pickle_in_the_torch_hub_cache_is_never_executed(torch_home, tmp_path):
    marker = tmp_path / "code_ran"
    _malicious_pickle(perceptual._imagenet_cache_path(), marker)
    assert perceptual._imagenet_cache_path().startswith(str(torch_home))
    with pytest.raises(VGGWeightsError, match="not torchvision's VGG19 file"):
        VGGPerceptualLoss(weights="imagenet")
    assert not marker.exists()


def test_a_cached_file_with_the_right_hash_prefix_is_still_read_weights_only(torch_home, tmp_path,
                                                                              monkeypatch):
    """Even a file that passed the (32-bit) prefix check cannot run code: it is read with
    ``weights_only=True``."""
    from partformer.fileio import sha256_file
    marker = tmp_path / "code_ran"
    path = perceptual._imagenet_cache_path()
    _malicious_pickle(path, marker)
    monkeypatch.setattr(perceptual, "IMAGENET_VGG19_SHA256_PREFIX", sha256_file(path)[:8])
    with pytest.raises(VGGWeightsError, match="could not read VGG19 weights"):
        VGGPerceptualLoss(weights="imagenet")
    assert not marker.exists()


def test_cached_torchvision_weights_load(torch_home, monkeypatch):
    import torchvision
    from partformer.fileio import sha256_file
    ref = torchvision.models.vgg19(weights=None)
    path = perceptual._imagenet_cache_path()
    os.makedirs(os.path.dirname(path))
    torch.save(ref.state_dict(), path)
    monkeypatch.setattr(perceptual, "IMAGENET_VGG19_SHA256_PREFIX", sha256_file(path)[:8])
    loss = VGGPerceptualLoss(weights="imagenet")
    assert torch.equal(loss.slices[0][0].weight, ref.features[0].weight)


def test_offline_vgg19_is_one_message_without_chained_tracebacks(torch_home, monkeypatch):
    def offline(*a, **k):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(VGGWeightsError) as e:
        VGGPerceptualLoss(weights="imagenet")
    assert e.value.__cause__ is None and e.value.__suppress_context__
    msg = str(e.value)
    assert "loss.vgg_weights=" in msg and "loss.recon=l1" in msg and "URLError" in msg
    assert not os.path.exists(perceptual._imagenet_cache_path())   # no partial file left
    from partformer.cli import expected_errors
    assert isinstance(e.value, expected_errors())
