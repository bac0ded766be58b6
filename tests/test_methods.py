"""Every trained method through every tool (issue 15): training, resume, evaluation, the
predictor and partformer.load, tools/infer.py, tools/visualize.py, export_weights and torch.hub,
on the tiny CPU config. The tools learn the method from the checkpoint."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch

from partformer.cli import eval_main, export_weights_main, infer_main, train_main, visualize_main
from partformer.engine.checkpoint import load_checkpoint

from tests.tiny import TINY_METHODS, shared_root, tiny_method_yaml

METHODS = sorted(TINY_METHODS)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return shared_root(tmp_path_factory)


@pytest.fixture(scope="module", params=METHODS)
def trained(request, root, tmp_path_factory):
    method = request.param
    run = str(tmp_path_factory.mktemp(f"run_{method}") / "run")
    assert train_main(["--config", tiny_method_yaml(root, method), "--run-dir", run,
                       "train.max_steps=3", "--no-baselines"]) == 0
    import shutil     # the checkpoint the final test evaluated (the resume test moves best.pt)
    shutil.copy(os.path.join(run, "best.pt"), os.path.join(run, "tested.pt"))
    return method, run


def test_training_records_the_method_and_only_its_section(trained):
    method, run = trained
    ckpt = load_checkpoint(os.path.join(run, "best.pt"))
    assert ckpt["method"] == method
    import yaml
    tree = yaml.safe_load(ckpt["config"])
    assert tree["method"]["name"] == method and method in tree
    assert not (set(tree) & (set(TINY_METHODS) - {method}))       # no other method's section
    results = json.load(open(os.path.join(run, "results_test.json")))
    assert list(results["results"]) == [method]
    from partformer.methods import get_method
    assert results["supervision"] == {method: get_method(method).supervision}


def test_resume_continues_the_method(trained, tmp_path):
    method, run = trained
    assert train_main(["--resume", run, "train.max_steps=4", "--no-test"]) == 0
    assert load_checkpoint(os.path.join(run, "last.pt"))["step"] == 4


def test_eval_visualize_infer_export_and_load_take_the_model(trained, tmp_path, monkeypatch):
    method, run = trained
    best = os.path.join(run, "tested.pt")
    out = tmp_path / "eval"
    assert eval_main(["--model", best, "--out", str(out)]) == 0
    res = json.load(open(out / "results_test.json"))
    ref = json.load(open(os.path.join(run, "results_test.json")))
    assert res["results"][method]["kp_nmi_with_bg"]["value"] == pytest.approx(
        ref["results"][method]["kp_nmi_with_bg"]["value"], abs=1e-9)
    png = tmp_path / "contact.png"
    assert visualize_main(["--model", best, "--view", "contact", "--num", "2",
                           "--out", str(png)]) == 0
    assert png.is_file()
    # predictor / partformer.load / torch.hub: the maps of the trained model
    import partformer
    predictor = partformer.load(best, device="cpu")
    image = (np.random.default_rng(0).random((40, 30, 3)) * 255).astype(np.uint8)
    pred = predictor(image)
    assert pred.maps.shape == (5, 40, 30)
    assert torch.allclose(pred.maps.sum(0), torch.ones(40, 30), atol=1e-5)
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    model = torch.hub.load(repo, "model", source="local", checkpoint=best, device="cpu")
    assert type(model) is type(predictor.model)
    # infer writes its labels
    photos = tmp_path / "photos"
    photos.mkdir()
    import cv2
    cv2.imwrite(str(photos / "a.png"), image)
    assert infer_main([str(photos), "--model", best, "--out", str(tmp_path / "inf"),
                       "--no-progress"]) == 0
    from partformer import viz
    assert np.array_equal(viz.read_labels(str(tmp_path / "inf" / "labels" / "a.png")),
                          predictor(image[:, :, ::-1].copy()).labels.numpy())   # BGR file
    # exported named weights load by name
    wdir = tmp_path / "weights"
    assert export_weights_main([best, "--name", f"tiny_{method}", "--out", str(wdir)]) == 0
    monkeypatch.setenv("PARTFORMER_WEIGHTS_PATH", str(wdir))
    again = partformer.load(f"tiny_{method}", device="cpu")
    assert torch.equal(again(image).maps, pred.maps)


@pytest.mark.parametrize("method,fmt", [("pdiscoformer", "snapshot"),
                                        ("pdiscoformer", "safetensors"),
                                        ("pdisconet", "state_dict")])
def test_released_pdisco_files_convert_through_the_cli(root, tmp_path, method, fmt, capsys):
    """PDiscoFormer's released formats (ananthu-aniraj/pdiscoformer hubconf.py / load_model.py:
    a trainer snapshot ``{"model_state", ...}`` or a bare state dict of their names; HF
    ``model.safetensors``, model_zoo.md) convert with tools/convert_official.py, the method
    detected from the keys, and the converted file predicts as the original model."""
    import yaml

    from partformer import config as cfglib
    from partformer.cli import convert_official_main
    from partformer.hub import load_model
    from partformer.methods import build_model
    from partformer.methods.pdiscoformer.convert import HEAD_KEYS
    cfg_path = tiny_method_yaml(root, method)
    cfg = cfglib.load_config(cfg_path)
    torch.manual_seed(3)
    ours = build_model(cfg).eval()
    inverse = {v: k for k, v in HEAD_KEYS.items()}
    theirs = {inverse.get(k, k[len("encoder.model."):] if k.startswith("encoder.model.") else k):
              v.clone() for k, v in ours.state_dict().items()}
    path = tmp_path / ("model.safetensors" if fmt == "safetensors" else "snapshot_best.pt")
    if fmt == "safetensors":
        from safetensors.torch import save_file
        save_file({k: v.contiguous() for k, v in theirs.items()}, str(path))
    else:
        torch.save({"model_state": theirs, "finished_epoch": 27} if fmt == "snapshot" else theirs,
                   path)
    out = tmp_path / "converted.pt"
    assert convert_official_main(["--input", str(path), "--output", str(out), "--dataset", "cub",
                                  "--config", cfg_path]) == 0
    assert f"method {method}" in capsys.readouterr().out
    stored = yaml.safe_load(torch.load(out, weights_only=True)["config"])
    assert stored["method"]["name"] == method and stored[method]["num_classes"] == 6
    assert stored["data"]["image_size"] == cfg.data.image_size
    _, loaded, _ = load_model(str(out), torch.device("cpu"))
    x = torch.rand(2, 3, cfg.data.image_size, cfg.data.image_size)
    with torch.no_grad():
        assert torch.equal(loaded.predict(x), ours.predict(x))
