"""Tests of the command-line entry points (partformer/cli.py: tools/train.py, tools/eval.py) on the
tiny CPU config: a 4-step training run with the final test table, evaluation of its checkpoint and
of the baselines, resume, and readable errors."""
from __future__ import annotations

import json
import os

import pytest
import torch

from partformer.cli import eval_main, train_main, visualize_main
from partformer.metrics.protocols import PROTOCOL_VERSION, PROTOCOLS
from partformer.engine.checkpoint import load_checkpoint

from tests.tiny import shared_root, tiny_yaml


EXPECTED = {"kp_nmi_with_bg", "kp_ari_with_bg", "kp_nmi_fg_only", "kp_ari_fg_only",
            "kp_error_huang", "kp_error_pdisco", "px_nmi_with_bg", "px_ari_with_bg",
            "px_nmi_fg_only", "px_ari_fg_only", "part_miou_hungarian", "fg_iou"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One CLI training run shared by the tests of this module: (root, config path, run dir)."""
    root = shared_root(tmp_path_factory)
    run = str(tmp_path_factory.mktemp("cli") / "run")
    assert train_main(["--config", tiny_yaml(root), "--run-dir", run,
                       "train.max_steps=4", "train.val_every=1"]) == 0
    return root, tiny_yaml(root), run


def read_results(path):
    with open(path) as f:
        return json.load(f)


def values(res):
    return {k: v["value"] for k, v in res.items()}


def same_values(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert a[k] == pytest.approx(b[k], abs=1e-9, nan_ok=True), k


def test_train_writes_run_directory(trained):
    _, _, run = trained
    for name in ("config.yaml", "last.pt", "best.pt", "results_test.json", "metrics.jsonl"):
        assert os.path.isfile(os.path.join(run, name)), name
    assert not [f for f in os.listdir(run) if ".tmp" in f]
    payload = read_results(os.path.join(run, "results_test.json"))
    assert payload["split"] == "test" and payload["num_images"] == 16
    assert payload["dataset"] == "synthetic" and payload["num_parts"] == 4
    assert payload["protocol_version"] == PROTOCOL_VERSION
    assert payload["checkpoint"] == "best.pt"
    assert payload["train"]["steps"] == 4
    assert set(payload["results"]) == {"partformer", "grid", "kmeans"}
    for method, res in payload["results"].items():
        assert set(res) == EXPECTED, method
        for name, r in res.items():
            family, variant = PROTOCOLS[name].family, PROTOCOLS[name].variant
            assert (r["protocol"], r["variant"], r["version"]) == (family, variant,
                                                                   PROTOCOL_VERSION)
            assert r["count"] > 0 and r["skipped_images"] == 0
    # the oracle-box grid is a strong keypoint partition on the synthetic animals
    assert payload["results"]["grid"]["kp_nmi_with_bg"]["value"] > 10
    assert last_step(run) == 4


def last_step(run):
    return load_checkpoint(os.path.join(run, "last.pt"))["step"]


def test_eval_checkpoint_reproduces_partformer_column(trained, tmp_path):
    _, _, run = trained
    best = os.path.join(run, "best.pt")
    out = str(tmp_path / "eval")
    assert eval_main(["--checkpoint", best, "--out", out]) == 0   # config from the checkpoint
    again = read_results(os.path.join(out, "results_test.json"))
    first = read_results(os.path.join(run, "results_test.json"))
    assert set(again["results"]) == {"partformer"}
    same_values(values(again["results"]["partformer"]), values(first["results"]["partformer"]))
    assert again["checkpoint"] == best


def test_eval_baselines_reproduce_columns(trained, tmp_path):
    _, config, run = trained
    first = read_results(os.path.join(run, "results_test.json"))["results"]
    out = str(tmp_path / "grid")
    assert eval_main(["--config", config, "--method", "grid", "--out", out]) == 0
    grid = read_results(os.path.join(out, "results_test.json"))["results"]
    assert set(grid) == {"grid"}
    same_values(values(grid["grid"]), values(first["grid"]))
    # k-means with a randomly initialised encoder is seeded: the same column as after training
    out = str(tmp_path / "kmeans")
    assert eval_main(["--config", config, "--method", "kmeans", "--out", out]) == 0
    km = read_results(os.path.join(out, "results_test.json"))["results"]
    same_values(values(km["kmeans"]), values(first["kmeans"]))


def test_eval_other_split(trained, tmp_path):
    _, config, _ = trained
    out = str(tmp_path / "val")
    assert eval_main(["--config", config, "--method", "grid", "--split", "val", "--out", out,
                      "eval.protocols=[kp_nmi_with_bg, fg_iou]"]) == 0
    payload = read_results(os.path.join(out, "results_val.json"))
    assert payload["split"] == "val" and payload["num_images"] == 16
    assert set(payload["results"]["grid"]) == {"kp_nmi_with_bg", "fg_iou"}
    assert payload["max_images"] is None
    # a debugging cap on the number of images is reported in the JSON
    out = str(tmp_path / "cap")
    assert eval_main(["--config", config, "--method", "grid", "--out", out,
                      "eval.max_images=5", "eval.protocols=[fg_iou]"]) == 0
    payload = read_results(os.path.join(out, "results_test.json"))
    assert payload["num_images"] == 5 and payload["max_images"] == 5
    assert payload["results"]["grid"]["fg_iou"]["count"] == 5 * 32 * 32   # pixels of 5 images


def test_resume_from_cli(trained, tmp_path):
    import shutil
    _, _, run = trained
    copy = str(tmp_path / "copy")
    shutil.copytree(run, copy)
    # no --config: the run's config comes from its checkpoint, overrides apply on top
    assert train_main(["--resume", copy, "train.max_steps=6", "--no-test"]) == 0
    assert last_step(copy) == 6
    assert last_step(run) == 4


def error_of(main, argv, capsys) -> str:
    """Run a CLI that must fail with an expected error: exit status 2, one `error:` message and
    no traceback on stderr; returns the message."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err, err
    return err


def test_config_errors_exit_with_message(trained, tmp_path, capsys):
    root, config, run = trained
    err = error_of(train_main, ["--config", config, "--run-dir", str(tmp_path / "r"),
                                "train.bach_size=3"], capsys)
    assert "train.bach_size" in err and "train.batch_size" in err
    assert not os.path.exists(tmp_path / "r")
    err = error_of(eval_main, ["--config", config, "--method", "grid", "model.num_part=3"], capsys)
    assert "model.num_part" in err
    err = error_of(eval_main, ["--checkpoint", os.path.join(run, "best.pt"), "--out",
                               str(tmp_path / "o"), "model.num_partz=3"], capsys)
    assert "model.num_partz" in err and "command line" in err
    err = error_of(eval_main, ["--config", config, "--method", "partformer"], capsys)
    assert "--model" in err
    # --debug: the traceback instead of the message
    from partformer.config import ConfigError
    with pytest.raises(ConfigError, match="train.bach_size"):
        train_main(["--config", config, "--run-dir", str(tmp_path / "r"), "train.bach_size=3",
                    "--debug"])


def test_resume_with_foreign_checkpoint_is_a_clear_error(trained, tmp_path, capsys):
    _, config, run = trained
    weights = str(tmp_path / "weights.pt")
    torch.save({"model": load_checkpoint(os.path.join(run, "best.pt"))["model"]}, weights)
    # without --config the config would come from the checkpoint: it has none
    assert "carries no config" in error_of(train_main, ["--resume", weights, "--no-test"], capsys)
    # with --config: not a training checkpoint
    err = error_of(train_main, ["--config", config, "--resume", weights, "--run-dir",
                                str(tmp_path / "r"), "--no-test"], capsys)
    assert "not a training checkpoint" in err
    with open(tmp_path / "empty.pt", "wb"):
        pass
    err = error_of(eval_main, ["--checkpoint", str(tmp_path / "empty.pt")], capsys)
    assert "truncated, corrupt" in err


def test_visualize_writes_mask_grid_matching_predictions(trained, tmp_path):
    """The grid's parts panel is the argmax of model.predict, coloured with the part palette."""
    import cv2
    import numpy as np

    from partformer import viz
    from partformer.cli import visualize_main
    from partformer.config import load_config
    from partformer.data import build_dataset
    from partformer.hub import load_model

    _, cfg_path, run = trained
    out = str(tmp_path / "grid.png")
    assert visualize_main(["--config", cfg_path, "--checkpoint", os.path.join(run, "best.pt"),
                           "--split", "val", "--num", "3", "--out", out]) == 0
    grid = cv2.cvtColor(cv2.imread(out), cv2.COLOR_BGR2RGB)
    cfg = load_config(cfg_path)
    ds = build_dataset(cfg.data, "val")
    S = cfg.data.image_size
    assert grid.shape[0] == 4 * S  # image, overlay, parts, GT parts
    _, model, _ = load_model(os.path.join(run, "best.pt"), torch.device("cpu"))
    with torch.no_grad():
        maps = model.predict(ds[0]["image"][None])
    maps = torch.nn.functional.interpolate(maps, size=(S, S), mode="bilinear", align_corners=False)
    expected = viz.colorize(maps.argmax(1)[0].numpy(), cfg.model.num_parts)
    assert np.array_equal(grid[2 * S:3 * S, :S], expected)


def test_visualize_contact_sheet_and_part_view(trained, tmp_path):
    """--view contact: one row per image, columns input | parts | K + 1 heat maps, with a header
    and a legend; --view parts: one row per part, its most confident crops."""
    import cv2

    _, cfg_path, run = trained
    best = os.path.join(run, "best.pt")
    sheet = str(tmp_path / "contact.png")
    assert visualize_main(["--config", cfg_path, "--checkpoint", best, "--view", "contact",
                           "--split", "val", "--num", "3", "--out", sheet]) == 0
    img = cv2.imread(sheet)
    K, D = 4, 128                                         # 32 px images shown x4
    assert img.shape[1] == (2 + K + 1) * D + (2 + K) * 2
    assert img.shape[0] > 3 * D + 2 * 2 + 16              # header, three rows, legend
    view = str(tmp_path / "parts.png")
    assert visualize_main(["--config", cfg_path, "--checkpoint", best, "--view", "parts",
                           "--split", "val", "--num", "5", "--out", view]) == 0
    img = cv2.imread(view)
    cell = 13 * 5                                          # 13 px crops (0.4 x 32) shown x5
    assert img.shape == (K * cell + (K - 1) * 2, 70 + 5 * (cell + 2), 3)
