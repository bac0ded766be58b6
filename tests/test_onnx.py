"""ONNX export of every method's test-time path (issue 16.12): the graph takes float32
[B, 3, S, S] in [0, 1] and returns the [B, K+1, h, w] maps of the method's predict; onnxruntime
reproduces the PyTorch predictor on the same images. Small sizes, CPU only."""
from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("onnxruntime", reason="onnxruntime is not installed: "
                                          "pip install -e \".[onnx]\" (also in .[dev])")
pytest.importorskip("onnx", reason="onnx is not installed: pip install -e \".[onnx]\"")

from partformer import config as cfglib  # noqa: E402
from partformer.cli import export_onnx_main  # noqa: E402
from partformer.methods import build_method  # noqa: E402
from partformer.onnx_export import check_onnx, export_predictor  # noqa: E402
from partformer.predictor import Predictor  # noqa: E402

from tests.tiny import TINY_METHODS, shared_root, tiny_method_yaml  # noqa: E402


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return shared_root(tmp_path_factory)


def test_shipped_model_exports_and_matches_the_predictor(tmp_path, capsys):
    import onnx
    out = tmp_path / "m.onnx"
    assert export_onnx_main(["synthetic_k4", str(out), "--image-size", "32",
                             "--dynamic-batch"]) == 0
    text = capsys.readouterr().out
    assert "images Bx3x32x32 -> maps Bx5x" in text
    diff = float(text.split("max abs difference ")[1].split()[0])
    assert diff <= 1e-4, text
    graph = onnx.load(str(out)).graph
    assert [i.name for i in graph.input] == ["images"] and [o.name for o in graph.output] == \
        ["maps"]
    dims = [d.dim_param or d.dim_value for d in graph.input[0].type.tensor_type.shape.dim]
    assert dims == ["batch", 3, 32, 32]
    # nothing is overwritten without --overwrite
    assert export_onnx_main(["synthetic_k4", str(out), "--image-size", "32"]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err


@pytest.mark.parametrize("method", sorted(TINY_METHODS))
def test_every_method_exports_its_predict(root, tmp_path, method):
    cfg = cfglib.load_config(tiny_method_yaml(root, method))
    torch.manual_seed(0)
    model = build_method(cfg).build_model(pretrained=False).eval()
    predictor = Predictor(model, cfg, "cpu", source=method)
    out = str(tmp_path / f"{method}.onnx")
    info = export_predictor(predictor, out, dynamic_batch=True)
    assert info["output_shape"][:2] == ["B", cfg.model.num_parts + 1]
    assert check_onnx(out, predictor, batch_sizes=(1, 3)) <= 1e-4
    # the predictor itself is untouched by the export (its model keeps its own grid)
    assert predictor.model is model and os.path.getsize(out) > 0


def test_a_grid_other_than_the_models_is_baked_in(tmp_path):
    """A ViT encoder asked for another input size: its position embedding is resampled once
    (ONNX has no antialiased bicubic resize), and the graph still equals the predictor."""
    from partformer.models.encoder import FeatureMapEncoder
    enc = FeatureMapEncoder("vit_tiny_patch16_224", pretrained=False, frozen=True, img_size=32,
                            patch_size=8, embed_dim=32, depth=1, num_heads=2)
    x = torch.rand(2, 3, 48, 48)
    ref = enc(x)
    assert enc.freeze_grid((48, 48)) and tuple(enc.model.patch_embed.grid_size) == (6, 6)
    assert torch.allclose(enc(x), ref, atol=1e-6)
    assert not enc.freeze_grid((48, 48))
