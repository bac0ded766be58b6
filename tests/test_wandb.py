"""What a run writes to Weights & Biases (issue 9), read back from the OFFLINE run directory:
segmentation masks with class labels on the fixed validation images, the per-image metric table,
the final test results (summary and table), best.pt as an artifact, the exit status of finished,
failed and interrupted runs, and `tools/eval.py --wandb`."""
from __future__ import annotations

import glob
import json
import os
import time

import cv2
import numpy as np
import pytest
import torch

from partformer import config as cfglib
from partformer.cli import eval_main, train_main
from partformer.data import build_dataset
from partformer.hub import model_from_state
from partformer import viz

from tests.tiny import predictor_of, shared_root, tiny_yaml
from tests.wandb_offline import read_run


@pytest.fixture
def wandb_offline(monkeypatch, tmp_path):
    """W&B offline, every W&B folder in the test's tmp dir."""
    monkeypatch.setenv("WANDB_MODE", "offline")
    for var, sub in (("WANDB_CACHE_DIR", "cache"), ("WANDB_DATA_DIR", "data"),
                     ("WANDB_CONFIG_DIR", "config"), ("WANDB_ARTIFACT_DIR", "artifacts")):
        monkeypatch.setenv(var, str(tmp_path / "wandb_home" / sub))


def finished_run(parent: str, timeout: float = 60.0):
    """The offline run once W&B has written its exit record (the file is finalised by W&B's
    service process shortly after ``finish()`` returns)."""
    deadline = time.time() + timeout
    while True:
        run = read_run(parent)
        if run["exit_code"] is not None or time.time() > deadline:
            return run
        time.sleep(0.2)


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return shared_root(tmp_path_factory)


def test_training_run_logs_masks_tables_results_and_artifact(root, tmp_path, wandb_offline):
    run_dir = str(tmp_path / "run")
    assert train_main(["--config", tiny_yaml(root), "--run-dir", run_dir, "train.max_steps=2",
                       "logging.wandb.num_images=3", "--no-baselines"]) == 0
    run = finished_run(run_dir)
    assert run["exit_code"] == 0 and run["run"].job_type == "train"
    K = 4
    # segmentation overlays: prediction + ground truth, with class labels
    labels = run["config"]["_wandb"]["mask/class_labels"]
    pred = labels["val/masks_wandb_delimeter_prediction"]["value"]
    gt = labels["val/masks_wandb_delimeter_ground_truth"]["value"]
    assert pred == {**{str(k): f"part {k}" for k in range(K)}, str(K): "background"}
    assert gt == {"0": "background", "1": "head", "2": "body", "3": "wing", "4": "tail",
                  "5": "leg"}
    rows = [h for h in run["history"] if "val/masks/_type" in h]
    assert len(rows) == 1 and rows[0]["val/masks/_type"] == "images/separated"
    assert rows[0]["val/masks/count"] == 3 and rows[0]["_step"] == 2
    masks = rows[0]["val/masks/all_masks"]
    # the logged prediction of the first validation image is the selected model's argmax and its
    # ground truth the dataset's part mask
    cfg = cfglib.load_config(os.path.join(run_dir, "config.yaml"))
    val = build_dataset(cfg.data, "val")
    model = model_from_state(cfg, torch.load(os.path.join(run_dir, "best.pt"))["model"], "best.pt",
                             torch.device("cpu"))
    batch = {k: v[None] for k, v in val[0].items() if torch.is_tensor(v)}
    maps = viz.maps_to_size(predictor_of(cfg, model)(batch), (32, 32))
    logged = cv2.imread(os.path.join(run["dir"], "files", masks[0]["prediction"]["path"]),
                        cv2.IMREAD_UNCHANGED)
    assert np.array_equal(logged, maps.argmax(1)[0].numpy())
    logged_gt = cv2.imread(os.path.join(run["dir"], "files", masks[0]["ground_truth"]["path"]),
                           cv2.IMREAD_UNCHANGED)
    assert np.array_equal(logged_gt, val[0]["part_mask"].numpy())
    # the per-image metric table, next to the images
    table = rows[0]
    assert table["val/masks_table/_type"] == "table-file" and table["val/masks_table/nrows"] == 3
    preview = json.load(open(os.path.join(run["dir"], "files", table["val/masks_table/path"])))
    assert preview["columns"] == ["id", "image", "fg_iou", "kp_nmi_with_bg",
                                  "part_miou_hungarian", "px_nmi_with_bg", "visible_keypoints"]
    assert [r[0] for r in preview["data"]] == rows[0]["val/masks/captions"]
    # final test results: summary values equal results_test.json, plus a table
    results = json.load(open(os.path.join(run_dir, "results_test.json")))["results"]
    for name, r in results["partformer"].items():
        assert run["summary"][f"test/partformer/{name}"] == pytest.approx(r["value"])
    assert run["summary"]["test/results/_type"] == "table-file"
    assert run["summary"]["test/results/nrows"] == len(results["partformer"])
    # training summary; best.pt and last.pt as versions of the experiment's model artifact
    assert run["summary"]["steps"] == 2 and run["summary"]["skipped_images"] == 0
    models = [a for a in run["artifacts"] if a.type == "model"]
    assert [a.name for a in models] == ["tiny-model", "tiny-model"]
    assert ["best" in a.aliases for a in models] == [True, False]
    assert "latest" in models[1].aliases
    for a, ckpt in zip(models, ("best.pt", "last.pt")):
        assert sorted(c.path for c in a.manifest.contents) == ["config.yaml", "model.safetensors"]
        assert json.loads(a.metadata)["checkpoint"] == ckpt
    # names are run-<run id>-<key>-<random suffix>; the suffix may itself contain "-"
    rest = [a.name.split("-", 2)[-1] for a in run["artifacts"] if a.type == "run_table"]
    keys = ("valmasks_table", "testresults")
    assert len(rest) == 2 and {k for k in keys for r in rest if r.startswith(k + "-")} == set(keys)


def test_failed_and_interrupted_runs_are_not_recorded_as_finished(root, tmp_path, wandb_offline,
                                                                  monkeypatch, capsys):
    from partformer.engine.trainer import Trainer

    def boom(self, images, micro_index):
        raise RuntimeError("a bug in the training step")

    monkeypatch.setattr(Trainer, "train_step_losses", boom)
    failed = str(tmp_path / "failed")
    with pytest.raises(RuntimeError, match="a bug"):   # not an expected error: traceback
        train_main(["--config", tiny_yaml(root), "--run-dir", failed, "train.max_steps=2",
                    "--no-test"])
    assert finished_run(failed)["exit_code"] == 1

    def interrupt(self, images, micro_index):
        raise KeyboardInterrupt

    monkeypatch.setattr(Trainer, "train_step_losses", interrupt)
    stopped = str(tmp_path / "stopped")
    assert train_main(["--config", tiny_yaml(root), "--run-dir", stopped, "train.max_steps=2",
                       "--no-test"]) == 130
    assert finished_run(stopped)["exit_code"] == 130
    assert "interrupted at step 0" in capsys.readouterr().err


def test_eval_wandb_logs_an_evaluation_run(root, tmp_path, wandb_offline, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")   # the training run itself is not looked at
    run_dir = str(tmp_path / "run")
    assert train_main(["--config", tiny_yaml(root), "--run-dir", run_dir, "train.max_steps=1",
                       "--no-test"]) == 0
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = str(tmp_path / "eval")
    assert eval_main(["--checkpoint", os.path.join(run_dir, "best.pt"), "--out", out, "--wandb",
                      "logging.wandb.num_images=2"]) == 0
    run = finished_run(out)
    assert run["exit_code"] == 0 and run["run"].job_type == "eval"
    # the model: the artifact version the training run would log for best.pt (same collection
    # and digest), recorded in the config (offline runs cannot use artifacts)
    from partformer.engine.logger import model_artifact
    art = model_artifact(os.path.join(run_dir, "best.pt"), "tiny-model", str(tmp_path))
    rec = run["config"]["model_artifact"]
    assert rec["name"] == "tiny-model" and rec["digest"] == art.manifest.digest()
    assert rec["linked"] is False
    results = json.load(open(os.path.join(out, "results_test.json")))["results"]["partformer"]
    for name, r in results.items():
        assert run["summary"][f"test/partformer/{name}"] == pytest.approx(r["value"])
    row = [h for h in run["history"] if "test/partformer/masks/_type" in h]
    assert len(row) == 1 and row[0]["test/partformer/masks/count"] == 2
    assert row[0]["test/partformer/masks_table/nrows"] == 2
    assert glob.glob(os.path.join(run["dir"], "files", "media", "images", "mask", "test",
                                  "partformer", "*.mask.png"))


def test_run_without_validation_split_writes_only_finite_numbers(root, tmp_path, wandb_offline):
    """Issue 16.21: with no validation split ``best_value`` stays -inf; W&B refuses non-finite
    numbers in artifact metadata and the run crashed after training. Summaries, metadata and the
    run's JSON files hold null instead."""
    run_dir = str(tmp_path / "run")
    assert train_main(["--config", tiny_yaml(root), "--run-dir", run_dir, "train.max_steps=2",
                       "data.val_split=null", "--no-baselines"]) == 0
    run = finished_run(run_dir)
    assert run["exit_code"] == 0
    assert run["summary"]["best_value"] is None and run["summary"]["steps"] == 2
    models = [a for a in run["artifacts"] if a.type == "model"]
    assert len(models) == 1 and models[0].name == "tiny-model" and "latest" in models[0].aliases
    assert json.loads(models[0].metadata)["best_value"] is None
    summary = json.load(open(os.path.join(run_dir, "train_summary.json")))
    assert summary["best_value"] is None and summary["best_epoch"] == -1


def test_summary_holds_the_best_validation_value_and_the_artifact_the_model(root, tmp_path,
                                                                           wandb_offline):
    """Issue 16.13: define_metric makes the summary of the selection metric its best value (not
    the last); the artifact holds the model only (model.safetensors + config.yaml, no optimiser
    state), equal to best.pt's model; the config logged holds the sections the run used."""
    from safetensors.torch import load

    from partformer.engine.checkpoint import load_checkpoint
    run_dir = str(tmp_path / "run")
    assert train_main(["--config", tiny_yaml(root), "--run-dir", run_dir, "train.epochs=4",
                       "train.max_steps=null", "--no-test", "train.lr=3e-3"]) == 0
    run = finished_run(run_dir)
    values = [h["val/kp_nmi_with_bg"] for h in run["history"] if "val/kp_nmi_with_bg" in h]
    assert len(values) == 4
    assert run["summary"]["val/kp_nmi_with_bg"] == {"max": pytest.approx(max(values))}
    best = load_checkpoint(os.path.join(run_dir, "best.pt"))
    assert max(values) == pytest.approx(best["best_value"])
    # the config: the sections of a training run of this method only
    assert {k for k in run["config"] if not k.startswith("_")} == {
        "experiment", "data", "model", "method", "train", "eval", "logging", "partformer"}
    # the artifact's files (staged by W&B for the sync) are the model alone
    art = [a for a in run["artifacts"] if a.type == "model" and "best" in a.aliases][0]
    entry = {c.path: c for c in art.manifest.contents}["model.safetensors"]
    staged = entry.local_path
    state = load(open(staged, "rb").read())
    assert set(state) == set(best["model"]) and "optimizer" not in state
    for k, v in best["model"].items():
        assert torch.equal(state[k], v), k
