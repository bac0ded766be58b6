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
