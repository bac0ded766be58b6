"""Issue 9, "Errors": every failure listed there, reproduced; each now ends in one message that
names the key / file / line and the fix (exit status 2, no traceback), and nothing is lost:
finished training survives a failing evaluation, Ctrl-C saves last.pt, a resumed run logs each
step once, and a checkpoint's relative data.root never sends a tool to the current directory."""
from __future__ import annotations

import json
import os
import shutil
import signal
import sys

import pytest
import torch
import yaml

from partformer.cli import eval_main, train_main
from partformer.engine.checkpoint import atomic_torch_save, load_checkpoint

from tests.tiny import interrupt_tool, shared_root, tiny_yaml

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return shared_root(tmp_path_factory)


def private_copy(root, tmp_path) -> str:
    """A copy of the tiny tree and config under ``tmp_path`` (tests that break files); returns
    the config path (its data.root points at the copy)."""
    shutil.copytree(os.path.join(root, "syn"), tmp_path / "syn")
    with open(tiny_yaml(root)) as f:
        cfg = yaml.safe_load(f)
    cfg["data"]["root"] = str(tmp_path / "syn")
    with open(tmp_path / "tiny.yaml", "w") as f:
        yaml.safe_dump(cfg, f)
    return str(tmp_path / "tiny.yaml")


def split_paths(config, split):
    from partformer import config as cfglib
    from partformer.data import build_dataset
    ds = build_dataset(cfglib.load_config(config).data, split)
    return [ds.image_path(i) for i in range(len(ds))]


def fails(main, argv, capsys) -> str:
    """``main(argv)`` exits with status 2 and one ``error:`` message, no traceback; returns it."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err, err
    return err


# ----------------------------------------------------------------- values read from the config
def test_unknown_dataset_name_is_a_config_error(root, tmp_path, capsys):
    err = fails(train_main, ["--config", tiny_yaml(root), "--run-dir", str(tmp_path / "r"),
                             "data.name=cubb"], capsys)
    assert "config key `data.name` (set in command line) must be one of" in err
    assert "'cub'" in err and "got 'cubb'" in err and not os.path.exists(tmp_path / "r")


def test_num_parts_zero_is_rejected_before_any_data_is_read(root, tmp_path, capsys):
    """It used to be checked after the data had loaded (here: after generating a dataset)."""
    fresh = tmp_path / "not_generated"
    err = fails(train_main, ["--config", tiny_yaml(root), "--run-dir", str(tmp_path / "r"),
                             f"data.root={fresh}", "model.num_parts=0"], capsys)
    assert "`model.num_parts` (set in command line) must be a number >= 1" in err
    assert "got 0" in err and "model.num_parts=..." in err
    assert not fresh.exists() and not (tmp_path / "r").exists()
    err = fails(eval_main, ["--config", tiny_yaml(root), "--method", "grid",
                            "train.scheduler.name=steps"], capsys)
    assert "`train.scheduler.name`" in err and \
        "['multistep', 'step', 'cosine', 'constant']" in err


def test_malformed_images_txt_line_names_the_line(root, tmp_path, capsys):
    config = private_copy(root, tmp_path)
    path = tmp_path / "syn" / "images.txt"
    lines = path.read_text().splitlines()
    lines[4] += " 12"
    path.write_text("\n".join(lines) + "\n")
    err = fails(eval_main, ["--config", config, "--method", "grid"], capsys)
    assert f"data.root={tmp_path / 'syn'}" in err and "images.txt, line 5: expected 2" in err
    assert "Fix or remove that line" in err


def test_debug_shows_the_traceback(root, tmp_path):
    from partformer.config import ConfigError
    with pytest.raises(ConfigError, match="model.num_parts"):
        train_main(["--config", tiny_yaml(root), "model.num_parts=0", "--debug"])


# ----------------------------------------------------------------- missing / undecodable images
def test_missing_training_image_in_a_worker_is_skipped_counted_and_named(root, tmp_path):
    """A missing file used to raise FileNotFoundError inside a DataLoader worker mid-run; now it
    is handled like an undecodable one (data.skip_bad_images, the training default)."""
    config = private_copy(root, tmp_path)
    train = split_paths(config, "train")
    os.remove(train[0])                      # the first training image: anywhere in the split
    run = str(tmp_path / "run")
    assert train_main(["--config", config, "--run-dir", run, "data.num_workers=1",
                       "data.val_split=null", "train.max_steps=8", "--no-test"]) == 0
    summary = json.load(open(os.path.join(run, "train_summary.json")))
    assert summary["steps"] == 8 and summary["skipped_images"] == 1   # one epoch: seen once
    assert summary["skipped_files"] == [train[0]]
    assert load_checkpoint(os.path.join(run, "last.pt"))["skipped_files"] == [train[0]]


def test_eval_skips_bad_images_anywhere_in_the_split(root, tmp_path, capsys):
    """eval.skip_bad_images used to fail when the first image of the split was bad ("the first
    evaluation image failed to decode", no file name); a missing file is handled alike."""
    config = private_copy(root, tmp_path)
    test = split_paths(config, "test")
    with open(test[0], "wb") as f:
        f.write(b"not an image")
    os.remove(test[5])
    err = fails(eval_main, ["--config", config, "--method", "grid", "--out",
                            str(tmp_path / "e0")], capsys)
    assert test[0] in err and "eval.skip_bad_images=true" in err
    out = str(tmp_path / "e1")
    with pytest.warns(UserWarning, match="skipping"):
        assert eval_main(["--config", config, "--method", "grid", "--out", out,
                          "eval.skip_bad_images=true"]) == 0
    payload = json.load(open(os.path.join(out, "results_test.json")))
    assert payload["skipped_files"] == sorted([test[0], test[5]])
    res = payload["results"]["grid"]
    assert res["fg_iou"]["skipped_images"] == 2
    assert res["fg_iou"]["count"] == 14 * 32 * 32       # the 14 readable images were evaluated


def test_failing_final_evaluation_keeps_the_training(root, tmp_path, capsys):
    """One undecodable test image used to abort the final evaluation after training, with no
    results file and a traceback."""
    config = private_copy(root, tmp_path)
    bad = split_paths(config, "test")[3]
    with open(bad, "wb") as f:
        f.write(b"truncated")
    run = str(tmp_path / "run")
    assert train_main(["--config", config, "--run-dir", run, "train.max_steps=2",
                       "--no-baselines"]) == 2
    err = capsys.readouterr().err
    assert "the final evaluation failed" in err and bad in err and "Traceback" not in err
    assert f"python tools/eval.py --model {os.path.join(run, 'best.pt')}" in err
    assert "eval.skip_bad_images=true" in err
    for name in ("best.pt", "last.pt", "train_summary.json", "metrics.jsonl", "config.yaml"):
        assert os.path.isfile(os.path.join(run, name)), name
    assert json.load(open(os.path.join(run, "train_summary.json")))["steps"] == 2
    # the suggested command works
    with pytest.warns(UserWarning):
        assert eval_main(["--checkpoint", os.path.join(run, "best.pt"),
                          "eval.skip_bad_images=true"]) == 0
    payload = json.load(open(os.path.join(run, "eval", "results_test.json")))
    assert payload["skipped_files"] == [bad]


# ----------------------------------------------------------------- Ctrl-C and resume
def test_ctrl_c_saves_last_and_resume_is_exact(root, tmp_path, monkeypatch, capsys):
    """Ctrl-C in the middle of an accumulation group: last.pt holds the last completed step (the
    unfinished step's BatchNorm updates undone); resuming gives the uninterrupted weights."""
    from partformer.engine.trainer import Trainer
    base = ["--config", tiny_yaml(root), "data.val_split=null", "train.grad_accum=2", "--no-test"]
    straight = str(tmp_path / "straight")
    assert train_main(base + ["--run-dir", straight, "train.max_steps=4"]) == 0
    original = Trainer.train_step_losses

    def interrupt_at_micro_5(self, images, micro_index):
        if micro_index == 5:                 # step 2 done after micros 0-3; micro 4 ran
            raise KeyboardInterrupt
        return original(self, images, micro_index)

    monkeypatch.setattr(Trainer, "train_step_losses", interrupt_at_micro_5)
    run = str(tmp_path / "run")
    capsys.readouterr()
    assert train_main(base + ["--run-dir", run, "train.max_steps=4"]) == 130
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0] == (
        f"interrupted at step 2 (saved {os.path.join(run, 'last.pt')}); resume with: "
        f"python tools/train.py --resume {run}")
    ckpt = load_checkpoint(os.path.join(run, "last.pt"))
    assert ckpt["step"] == 2 and ckpt["micro_in_epoch"] == 4
    assert not [f for f in os.listdir(run) if f.startswith(".tmp")]
    monkeypatch.setattr(Trainer, "train_step_losses", original)
    assert train_main(["--resume", run, "train.max_steps=4", "--no-test"]) == 0
    a = load_checkpoint(os.path.join(straight, "last.pt"))["model"]
    b = load_checkpoint(os.path.join(run, "last.pt"))["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)
    steps = [r["step"] for r in map(json.loads, open(os.path.join(run, "metrics.jsonl")))
             if "train/total" in r]
    assert steps == [1, 2, 3, 4]


def test_resumed_run_logs_each_step_once(root, tmp_path):
    """A run that dies after logging steps beyond its last checkpoint used to log those steps
    again after --resume."""
    run = str(tmp_path / "run")
    base = ["--config", tiny_yaml(root), "--run-dir", run, "data.val_split=null", "--no-test"]
    assert train_main(base + ["train.max_steps=8"]) == 0          # last.pt at step 8
    shutil.copy(os.path.join(run, "last.pt"), tmp_path / "last8.pt")
    assert train_main(["--resume", run, "train.max_steps=11", "--no-test"]) == 0
    shutil.copy(tmp_path / "last8.pt", os.path.join(run, "last.pt"))  # died before saving 11
    assert train_main(["--resume", run, "train.max_steps=11", "--no-test"]) == 0
    rows = [json.loads(line) for line in open(os.path.join(run, "metrics.jsonl"))]
    assert [r["step"] for r in rows if "train/total" in r] == list(range(1, 12))


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_real_sigint_saves_last_and_prints_one_line(root, tmp_path, sig):
    """tools/train.py in its own process, interrupted with SIGINT (what Ctrl-C sends) or SIGTERM
    (what ``kill`` and cluster schedulers send)."""
    run = tmp_path / "run"
    step = interrupt_tool("train.py", ["--config", tiny_yaml(root), "data.val_split=null",
                                       "train.max_steps=100000", "--no-test"], str(run), sig)
    assert step >= 2 and load_checkpoint(str(run / "last.pt"))["step"] == step


# ----------------------------------------------------------------- relative data.root
def test_relative_data_root_resolves_where_training_ran(root, tmp_path, monkeypatch, capsys):
    """`tools/eval.py --checkpoint` of a model trained with a relative data.root used to resolve
    it against the current directory (and generate a whole dataset there)."""
    train_dir = tmp_path / "train_here"
    train_dir.mkdir()
    shutil.copytree(os.path.join(root, "syn"), train_dir / "syn")
    monkeypatch.chdir(train_dir)
    assert train_main(["--config", tiny_yaml(root), "--run-dir", "run", "data.root=syn",
                       "train.max_steps=1", "--no-test"]) == 0
    best = str(train_dir / "run" / "best.pt")
    ckpt = load_checkpoint(best)
    assert ckpt["data_root"] == str(train_dir / "syn") and ckpt["cwd"] == str(train_dir)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    out = str(tmp_path / "e1")
    assert eval_main(["--checkpoint", best, "--out", out, "eval.protocols=[fg_iou]"]) == 0
    assert json.load(open(os.path.join(out, "results_test.json")))["root"] == str(
        train_dir / "syn")
    assert os.listdir(elsewhere) == []                       # nothing generated here
    # the dataset moved: the tool stops and asks for data.root=
    shutil.move(str(train_dir / "syn"), str(tmp_path / "moved"))
    capsys.readouterr()
    err = fails(eval_main, ["--checkpoint", best, "--out", str(tmp_path / "e2")], capsys)
    assert "relative data.root 'syn'" in err and str(train_dir / "syn") in err
    assert "data.root=/path/to/syn" in err and os.listdir(elsewhere) == []
    assert eval_main(["--checkpoint", best, "--out", str(tmp_path / "e3"),
                      f"data.root={tmp_path / 'moved'}", "eval.protocols=[fg_iou]"]) == 0
    # a checkpoint from before the root was recorded: the folder must exist here, else asked
    del ckpt["data_root"]
    old = str(tmp_path / "old.pt")
    atomic_torch_save(ckpt, old)
    err = fails(eval_main, ["--checkpoint", old, "--out", str(tmp_path / "e4")], capsys)
    assert "does not record where the training ran" in err and os.listdir(elsewhere) == []
    shutil.copytree(str(tmp_path / "moved"), str(elsewhere / "syn"))
    with pytest.warns(UserWarning, match="read from the current directory"):
        assert eval_main(["--checkpoint", old, "--out", str(tmp_path / "e5"),
                          "eval.protocols=[fg_iou]"]) == 0
