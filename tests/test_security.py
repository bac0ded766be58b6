"""Security and data-loss defects (issue 16, items 14-18 and 21): each test fails without its fix.

- 14: no weights file is ever unpickled as code (the VGG19 of the perceptual loss in the torch hub
  cache included), and the cached VGG19 must carry torchvision's published hash prefix;
- 15: a run directory that holds a run is never written over without --resume / --overwrite,
  and two runs started in the same second get different default directories;
- 17: a stop signal that lands just after the optimiser update (and at the other points where
  counters and weights change together) still gives a checkpoint whose step and weights agree;
- 20 (part): temporaries of a checkpoint write killed by SIGKILL are removed when a run starts.
"""
from __future__ import annotations

import json
import os
import pickle
import urllib.error

import pytest
import torch

from partformer.cli import pretrain_main, train_main
from partformer.engine.checkpoint import load_checkpoint
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


# ------------------------------------------------------------------------------ 15: run dirs
from tests.tiny import shared_root, tiny_yaml  # noqa: E402


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return shared_root(tmp_path_factory)


def _err(capsys) -> str:
    return capsys.readouterr().err


def test_run_dir_holding_a_run_is_refused_and_kept(root, tmp_path, capsys):
    run = str(tmp_path / "run")
    assert train_main(["--config", tiny_yaml(root), "--run-dir", run, "train.max_steps=3",
                       "--no-test"]) == 0
    before = {n: open(os.path.join(run, n), "rb").read()
              for n in ("best.pt", "last.pt", "metrics.jsonl", "config.yaml")}
    capsys.readouterr()
    assert train_main(["--config", tiny_yaml(root), "--run-dir", run, "train.max_steps=1",
                       "--no-test"]) == 2
    err = _err(capsys)
    assert "already holds a run" in err and f"--resume {run}" in err and "--overwrite" in err
    for n, data in before.items():                 # nothing of the finished run was touched
        assert open(os.path.join(run, n), "rb").read() == data, n
    # experiment.run_dir is an explicit run directory as well
    assert train_main(["--config", tiny_yaml(root), f"experiment.run_dir={run}",
                       "train.max_steps=1", "--no-test"]) == 2
    # --overwrite: a new run, with nothing of the old one left (one step, its metrics only)
    assert train_main(["--config", tiny_yaml(root), "--run-dir", run, "train.max_steps=1",
                       "--no-test", "--overwrite"]) == 0
    assert load_checkpoint(os.path.join(run, "last.pt"))["step"] == 1
    rows = [json.loads(ln) for ln in open(os.path.join(run, "metrics.jsonl"))]
    assert max(r["step"] for r in rows) == 1


def test_pretraining_refuses_a_run_dir_holding_a_run(tmp_path, capsys):
    run = tmp_path / "pre"
    run.mkdir()
    (run / "last.pt").write_bytes(b"a finished run")
    assert pretrain_main(["--run-dir", str(run), "train.max_steps=1"]) == 2
    assert "already holds a run" in _err(capsys)
    assert (run / "last.pt").read_bytes() == b"a finished run"


def test_two_runs_started_in_the_same_second_get_two_directories(tmp_path, monkeypatch):
    from partformer.engine import rundir
    monkeypatch.setattr(rundir.time, "strftime", lambda fmt: "20261206-101010")
    a = rundir.claim_run_dir(None, str(tmp_path), "exp")
    b = rundir.claim_run_dir(None, str(tmp_path), "exp")
    assert a != b and os.path.isdir(a) and os.path.isdir(b)
    assert os.path.basename(b) == "exp-20261206-101010-2"


def test_temporaries_of_a_killed_checkpoint_write_are_removed_on_start(root, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / ".tmp-abc123.pt").write_bytes(b"half a checkpoint")
    assert train_main(["--config", tiny_yaml(root), "--run-dir", str(run), "train.max_steps=1",
                       "--no-test"]) == 0
    assert not [f for f in os.listdir(run) if f.startswith(".tmp-")]


# ------------------------------------------------------------------------ 17: exact resume
def _signal_after_update(monkeypatch, at_step: int, sig=None):
    """Deliver a real ``sig`` (default SIGTERM) to this process right after the optimiser has
    applied update number ``at_step``, before the trainer counts it."""
    import signal as _signal
    from partformer.engine.trainer import Trainer
    sig = _signal.SIGTERM if sig is None else sig
    original = Trainer._build_optimisation

    def build(self):
        original(self)
        step = self.optimizer.step
        calls = {"n": 0}

        def step_then_signal(*a, **k):
            out = step(*a, **k)
            calls["n"] += 1
            if calls["n"] == at_step:
                os.kill(os.getpid(), sig)
            return out
        self.optimizer.step = step_then_signal
    monkeypatch.setattr(Trainer, "_build_optimisation", build)


@pytest.mark.parametrize("sig_name", ["SIGTERM", "SIGINT"])
def test_signal_right_after_the_update_saves_that_step_and_resume_is_exact(
        root, tmp_path, monkeypatch, capsys, sig_name):
    import signal as _signal
    base = ["--config", tiny_yaml(root), "data.val_split=null", "--no-test"]
    straight = str(tmp_path / "straight")
    assert train_main(base + ["--run-dir", straight, "train.max_steps=5"]) == 0
    run = str(tmp_path / "run")
    with monkeypatch.context() as m:
        _signal_after_update(m, at_step=3, sig=getattr(_signal, sig_name))
        assert train_main(base + ["--run-dir", run, "train.max_steps=5"]) == 130
    assert "interrupted at step 3" in capsys.readouterr().err
    ckpt = load_checkpoint(os.path.join(run, "last.pt"))
    assert ckpt["step"] == 3 and ckpt["scheduler"]["last_epoch"] == 3
    assert ckpt["optimizer"]["state"][0]["step"].item() == 3    # AdamW's own count agrees
    assert train_main(["--resume", run, "train.max_steps=5", "--no-test"]) == 0
    a = load_checkpoint(os.path.join(straight, "last.pt"))["model"]
    b = load_checkpoint(os.path.join(run, "last.pt"))["model"]
    assert [k for k in a if not torch.equal(a[k], b[k])] == []


# -------------------------------------------------------------------- 18: path traversal
from partformer.data.io import DatasetError, relative_path  # noqa: E402


@pytest.mark.parametrize("rel", ["../outside.jpg", "a/../../outside.jpg", "/etc/passwd",
                                 "..", "C:/Windows/x.jpg", "a\\..\\..\\x.jpg"])
def test_relative_path_refuses_paths_that_leave_the_folder(rel):
    with pytest.raises(DatasetError, match="images.txt, line 3"):
        relative_path(rel, "images.txt, line 3")


@pytest.mark.parametrize("rel", ["001.Albatross/a.jpg", "a/../b.jpg", "./x/y.jpg", "x..y/z.jpg"])
def test_relative_path_keeps_paths_inside(rel):
    assert relative_path(rel, "f") == rel


def _cub_with_line(tmp_path, line_no: int, rel: str) -> str:
    from tests.cub_tree import write_tiny_cub
    write_tiny_cub(str(tmp_path), n_images=6)
    root = os.path.join(str(tmp_path), "CUB_200_2011")
    path = os.path.join(root, "images.txt")
    lines = open(path).read().splitlines()
    iid = lines[line_no - 1].split()[0]
    lines[line_no - 1] = f"{iid} {rel}"
    open(path, "w").write("\n".join(lines) + "\n")
    return root


@pytest.mark.parametrize("rel", ["../../outside.jpg", "/etc/passwd"])
def test_cub_images_txt_cannot_leave_data_root(tmp_path, rel, monkeypatch):
    """The probe: an images.txt line with '../' or an absolute path was followed (/etc/passwd was
    opened, a file outside the root was trained on). Now the dataset refuses to build."""
    from partformer import config as cfglib
    from partformer.data import build_dataset
    root = _cub_with_line(tmp_path, 2, rel)
    opened = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda f, *a, **k: (opened.append(str(f)),
                                                             real_open(f, *a, **k))[1])
    cfg = cfglib.load_config(None, ["data.name=cub", f"data.root={root}", "data.image_size=32"])
    with pytest.raises(DatasetError) as e:
        build_dataset(cfg.data, "train")
    assert f"{os.path.join(root, 'images.txt')}, line 2" in str(e.value)
    assert rel in str(e.value)
    assert not [f for f in opened if "passwd" in f or "outside" in f]


def test_celeba_deepfashion_and_partimagenet_lists_cannot_leave_the_root(tmp_path):
    import json as _json

    from partformer.data.celeba import read_name_list
    from partformer.data.deepfashion import read_split_list
    from partformer.data.partimagenet import load_coco
    lst = tmp_path / "list.txt"
    lst.write_text("000001.jpg\n../../etc/passwd\n")
    with pytest.raises(DatasetError, match=r"list.txt, line 2"):
        read_name_list(str(lst))
    js = tmp_path / "split.json"
    js.write_text(_json.dumps({"images": [{"file_name": "img/a.jpg"}, {"file_name": "/etc/x"}]}))
    with pytest.raises(DatasetError, match=r"split.json, entry 1"):
        read_split_list(str(js))
    coco = tmp_path / "train.json"
    coco.write_text(_json.dumps({"images": [{"id": 7, "file_name": "../x.JPEG"}],
                                 "annotations": []}))
    with pytest.raises(DatasetError, match=r"train.json, images\[0\] \(id 7\)"):
        load_coco(str(coco))
