"""The encoder shipped in partformer/weights/ (docs/PRETRAINING.md) loads offline by the name that
configs/default.yaml uses and computes the features recorded when it was exported.

The recorded numbers below were computed once from the exported file with this same input; a
changed file, a changed loading path (key mapping, fusion of the feature levels, BatchNorm in
training mode) or a changed encoder definition moves them."""
from __future__ import annotations

import os

import pytest
import torch

from partformer import config as cfglib
from partformer import hub
from partformer.models.encoder import build_encoder

NAME = "synthetic_resnet18_half"
DEFAULT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "configs", "default.yaml")

# recorded from the shipped file (see fixed_input); shape [1, C, 16, 16]
RECORDED = {
    "shape": [1, 224, 16, 16],             # 32 + 64 + 128 channels of the stride-4/8/16 levels
    "mean": 0.43126100301742554,
    "std": 0.6451034545898438,
    "cell_0_0": [1.15082, 2.834371, 0.003161, 0.056116, 0.258144, 0.0],    # channels 0..5
    "cell_8_5": [2.139896, 3.394291, 0.0, 0.146024, 0.0, 0.0],
}


# the second shipped encoder (docs/PRETRAINING.md, candidate C: the one above continued with the
# dense term only), recorded from its file in the same way
DENSE_NAME = "synthetic_resnet18_half_dense"
RECORDED_DENSE = {
    "shape": [1, 224, 16, 16],
    "mean": 0.47083228826522827,
    "std": 0.7062425017356873,
    "cell_0_0": [1.305784, 3.336134, 0.003139, 0.005919, 0.041693, 0.0],
    "cell_8_5": [2.189422, 3.588468, 0.012397, 0.136902, 0.0, 0.0],
}


def fixed_input() -> torch.Tensor:
    """A deterministic 64 x 64 input (no RNG: identical on every torch build), normalised like the
    model normalises images."""
    i = torch.arange(3 * 64 * 64, dtype=torch.float64).reshape(1, 3, 64, 64)
    x = ((i * 0.6180339887) % 1.0).float()
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    return (x - mean) / std


def shipped_encoder():
    cfg = cfglib.load_config(DEFAULT)
    assert cfg.model.encoder.weights == NAME, "configs/default.yaml no longer uses the shipped encoder"
    return build_encoder(cfg.model.encoder, image_size=cfg.data.image_size).eval()


@pytest.mark.parametrize("name", [NAME, DENSE_NAME])
def test_shipped_encoder_is_registered_small_and_intact(name):
    entry = hub.resolve_weights(name, kind="encoder")     # raises on a sha256 mismatch
    assert entry.file.endswith(".safetensors")
    assert os.path.getsize(entry.file) <= 10 * 1024 * 1024


def _assert_recorded(f: torch.Tensor, rec) -> None:
    assert list(f.shape) == rec["shape"]
    assert f.mean().item() == pytest.approx(rec["mean"], rel=1e-3, abs=1e-5)
    assert f.std().item() == pytest.approx(rec["std"], rel=1e-3)
    torch.testing.assert_close(f[0, :6, 0, 0], torch.tensor(rec["cell_0_0"]), rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(f[0, :6, 8, 5], torch.tensor(rec["cell_8_5"]), rtol=1e-3, atol=1e-4)


def test_shipped_encoder_gives_the_recorded_features():
    enc = shipped_encoder()
    assert all(not p.requires_grad for p in enc.parameters()), "default.yaml freezes the encoder"
    with torch.no_grad():
        f = enc(fixed_input())
    _assert_recorded(f, RECORDED)


def test_dense_encoder_loads_by_name_in_the_default_config_and_gives_its_features():
    """``model.encoder.weights=synthetic_resnet18_half_dense`` on the default config: the same
    architecture, the second file's features, which differ from the first's."""
    cfg = cfglib.load_config(DEFAULT, [f"model.encoder.weights={DENSE_NAME}"])
    enc = build_encoder(cfg.model.encoder, image_size=cfg.data.image_size).eval()
    with torch.no_grad():
        f = enc(fixed_input())
    _assert_recorded(f, RECORDED_DENSE)
    assert not torch.allclose(f[0, :6, 8, 5], torch.tensor(RECORDED["cell_8_5"]), rtol=1e-2,
                              atol=1e-3)


def test_a_random_init_encoder_does_not_match_the_recording():
    """The recording tells the shipped weights apart from the architecture alone."""
    cfg = cfglib.load_config(DEFAULT)
    cfg.model.encoder.weights = None
    torch.manual_seed(0)
    enc = build_encoder(cfg.model.encoder, image_size=cfg.data.image_size).eval()
    with torch.no_grad():
        f = enc(fixed_input())
    assert not torch.allclose(f[0, :6, 8, 5], torch.tensor(RECORDED["cell_8_5"]), rtol=1e-2,
                              atol=1e-3)


def test_shipped_default_model_predicts_and_kept_the_encoder_frozen():
    """`synthetic_k4` (the default job's model, README example) loads offline and gives soft maps
    at the input size; training left its frozen encoder exactly the shipped encoder (BatchNorm
    statistics included)."""
    import numpy as np
    from PIL import Image

    import partformer
    from partformer.models.encoder import read_state_dict

    predictor = partformer.load("synthetic_k4")
    assert predictor.num_parts == 4
    image = np.asarray(Image.open(os.path.join(os.path.dirname(DEFAULT), "..", "docs",
                                               "example.jpg")).convert("RGB"))
    out = predictor(image)
    assert tuple(out.maps.shape) == (5,) + image.shape[:2]
    torch.testing.assert_close(out.maps.sum(0), torch.ones(image.shape[:2]), atol=1e-4, rtol=0)
    shipped = read_state_dict(hub.resolve_weights(NAME, kind="encoder").file)
    model_state = {k[len("encoder."):]: v for k, v in predictor.model.state_dict().items()
                   if k.startswith("encoder.")}
    ours = shipped_encoder().state_dict()
    assert set(model_state) == set(ours)
    for k, v in ours.items():
        torch.testing.assert_close(model_state[k], v, rtol=0, atol=0, msg=k)
    assert len(shipped) > 0


def test_fewer_feature_levels_load_from_the_shipped_weights(tmp_path):
    """``model.encoder.out_indices=[1, 2]`` on the shipped encoder (saved with levels 1-3): timm
    builds the features-only model without layer3, the loader drops exactly those keys, and the
    fused map is the first 32 + 64 channels of the three-level map (levels are concatenated).
    A key of a module that is no cut-off stage still fails the load, naming it."""
    from safetensors.torch import save_file

    from partformer.models.encoder import read_state_dict
    full = shipped_encoder()
    cfg = cfglib.load_config(DEFAULT)
    cfg.model.encoder.out_indices = [1, 2]
    two = build_encoder(cfg.model.encoder, image_size=cfg.data.image_size).eval()
    assert not any(k.startswith("model.layer3.") for k in two.state_dict())
    with torch.no_grad():
        f3, f2 = full(fixed_input()), two(fixed_input())
    assert list(f2.shape) == [1, 96, 16, 16]
    torch.testing.assert_close(f2, f3[:, :96], rtol=0, atol=0)

    sd = read_state_dict(hub.resolve_weights(NAME, kind="encoder").file)
    bad = str(tmp_path / "extra.safetensors")
    save_file({**sd, "projector.weight": torch.zeros(2, 2)}, bad)
    cfg.model.encoder.weights = bad
    with pytest.raises(ValueError, match=r"unexpected keys \(1\): projector.weight"):
        build_encoder(cfg.model.encoder, image_size=cfg.data.image_size)
    short = str(tmp_path / "short.safetensors")
    save_file({k: v for k, v in sd.items() if not k.startswith("layer2.")}, short)
    cfg.model.encoder.weights = short
    with pytest.raises(ValueError, match="missing keys"):
        build_encoder(cfg.model.encoder, image_size=cfg.data.image_size)
