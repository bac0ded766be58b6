"""Issue 16, the conventions and the rest of the probe: sizes that cannot fit are config errors
before a run directory exists (every method), exports stay inside the folder asked for, the
keypoint regressor's skipped images are listed, every tool takes --model / --device / --version."""
from __future__ import annotations

import os

import pytest

from partformer.cli import pretrain_main, train_main

from tests.tiny import shared_root, tiny_method_yaml, tiny_yaml


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return shared_root(tmp_path_factory)


def fails(main, argv, capsys) -> str:
    """``main(argv)`` exits with status 2 and one ``error:`` line, no traceback; returns it."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 2, err   # the message + "(run with --debug ...)"
    return err


# ------------------------------------------------------------------ 16.19: grids that do not fit
@pytest.mark.parametrize("method,overrides,expect", [
    ("partformer", ["data.image_size=36"], "multiple of the encoder's patch size 8"),
    ("partformer", ["model.encoder.kwargs.patch_size=5"], "patch size 5"),
    ("mpae", ["data.image_size=36"], "patch size 8"),
    ("mpae", ["mpae.part_vit.patch_size=4"], "set mpae.part_vit.patch_size=8"),
    ("mpae", ["mpae.decoder.patch_size=4"], "set mpae.decoder.patch_size=8"),
    ("pdiscoformer", ["data.image_size=36"], "use data.image_size=32 or 40"),
])
def test_patch_that_does_not_divide_the_image_is_a_config_error(root, tmp_path, capsys, method,
                                                                overrides, expect):
    config = tiny_yaml(root) if method == "partformer" else tiny_method_yaml(root, method)
    run = tmp_path / "run"
    err = fails(train_main, ["--config", config, "--run-dir", str(run), "train.max_steps=1",
                             "--no-test", *overrides], capsys)
    assert expect in err and not run.exists()


def test_pretraining_crops_must_fit_a_vit_patch(root, tmp_path, capsys):
    run = tmp_path / "run"
    err = fails(pretrain_main, ["--config", tiny_yaml(root), "--run-dir", str(run),
                                "pretrain.global_size=30", "pretrain.extra_synthetic=0"], capsys)
    assert "`pretrain.global_size` must be a multiple of the encoder's patch size 8" in err
    assert not run.exists()


# ------------------------------------------------------------- 16.20: the regressor's skipped files
def test_images_skipped_while_fitting_the_regressor_are_listed(root, tmp_path):
    import json
    import shutil

    import yaml

    from partformer import config as cfglib
    from partformer.cli import eval_main
    from partformer.data import build_dataset
    shutil.copytree(os.path.join(root, "syn"), tmp_path / "syn")
    tree = yaml.safe_load(open(tiny_yaml(root)))
    tree["data"]["root"] = str(tmp_path / "syn")
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tree))
    train = build_dataset(cfglib.load_config(str(config)).data, "train")
    bad = train.image_path(3)
    with open(bad, "wb") as f:
        f.write(b"not an image")
    out = tmp_path / "eval"
    with pytest.warns(UserWarning, match="skipping"):
        assert eval_main(["--config", str(config), "--method", "grid", "--out", str(out),
                          "eval.skip_bad_images=true", "eval.protocols=[kp_error_huang]"]) == 0
    payload = json.load(open(out / "results_test.json"))
    assert payload["regressor_split"] == "train"
    assert payload["regressor_skipped_files"] == [bad] and payload["skipped_files"] == []
    assert "kp_error_huang" in payload["results"]["grid"]


# ---------------------------------------------------------- 16.5 / 16.20: export_weights' folder
def test_export_weights_writes_only_into_out(tmp_path, monkeypatch, capsys):
    from partformer import hub
    from partformer.cli import export_weights_main

    from tests.tiny import tiny_checkpoint
    (tmp_path / "m").mkdir()
    path, _, _ = tiny_checkpoint(str(tmp_path / "m"))
    shipped = sorted(os.listdir(hub.WEIGHTS_DIR))
    index = open(os.path.join(hub.WEIGHTS_DIR, "index.yaml")).read()
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    # no --out: ./weights in the current directory, not the installed package
    assert export_weights_main(["--model", path, "--name", "mine"]) == 0
    assert sorted(os.listdir(work / "weights")) == ["index.yaml", "mine.safetensors", "mine.yaml"]
    assert "PARTFORMER_WEIGHTS_PATH=" + str(work / "weights") in capsys.readouterr().out
    # the positional form still works, into a named folder
    assert export_weights_main([path, "--name", "mine2", "--out", str(tmp_path / "w2")]) == 0
    assert sorted(os.listdir(hub.WEIGHTS_DIR)) == shipped
    assert open(os.path.join(hub.WEIGHTS_DIR, "index.yaml")).read() == index
    # a name that is a path is refused before anything is written
    for bad in ("../x", "a/b", "/tmp/x", ".hidden", "..", "x..y"):
        err = fails(export_weights_main, ["--model", path, "--name", bad, "--out",
                                          str(tmp_path / "w3")], capsys)
        assert "is not a plain name" in err
    assert not (tmp_path / "w3").exists() and not (tmp_path / "x.safetensors").exists()
    with pytest.raises(hub.WeightsError, match="not a plain name"):
        hub.export_weights(path, str(tmp_path / "w4"), "../x")


# -------------------------------------------------- 16.5: pretraining announces what it writes
def test_extra_synthetic_images_are_announced_before_they_are_written(tmp_path, monkeypatch,
                                                                      capsys):
    import numpy as np

    from partformer.pretrain import data as pdata
    cache = tmp_path / "cache"
    saved = []
    real_save = np.save

    def save(path, arr):   # the announcement is out before the first byte is written
        saved.append(capsys.readouterr().err)
        real_save(path, arr)
    monkeypatch.setattr(np, "save", save)
    opts = {"num_train": 4, "num_val": 1, "num_test": 1, "image_size": 32}
    out = pdata.render_extra_synthetic(6, 7, 32, opts, cache_dir=str(cache))
    assert out.shape == (6, 32, 32, 3) and len(saved) == 1
    (npy,) = os.listdir(cache)
    msg = saved[0]
    assert "rendering 6 extra synthetic images" in msg and str(cache / npy) in msg
    assert "0.0 MB on disk" in msg and "pretrain.cache_dir=DIR" in msg
    # a second run reads the cache and announces nothing
    pdata.render_extra_synthetic(6, 7, 32, opts, cache_dir=str(cache))
    assert "rendering" not in capsys.readouterr().err
    pdata.render_extra_synthetic(2, 7, 32, opts, cache_dir=None)
    assert "kept in memory only" in capsys.readouterr().err


# ------------------------------------------------------------ 16.4: pretrained encoders offline
TINY_VIT = {"patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}


@pytest.fixture
def no_download(monkeypatch, tmp_path):
    """An empty Hugging Face / torch hub cache, and timm's download replaced by one that would
    hang (it records that it was called, then raises as a dead network does after its retries)."""
    import timm.models._builder as builder

    from tests.hf_cache import use_cache
    use_cache(monkeypatch, str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    calls = []

    def download(*args, **kwargs):
        calls.append(args)
        raise OSError("We couldn't connect to 'https://huggingface.co' to load the files")
    monkeypatch.setattr(builder, "load_pretrained", download)
    return calls


def test_pretrained_encoder_offline_fails_at_once_naming_the_fixes(no_download, monkeypatch,
                                                                  capsys, root, tmp_path):
    import time

    from partformer.models import encoder as E
    t0 = time.time()
    with pytest.raises(E.EncoderWeightsError) as e:
        E.FeatureMapEncoder("vit_small_patch8_224.dino", pretrained=True)
    msg = str(e.value)
    assert time.time() - t0 < 5 and no_download == []   # timm's download never ran
    for part in ("model.encoder.name=vit_small_patch8_224.dino", "'vit_small_patch8_224.dino'",
                 "timm/vit_small_patch8_224.dino", "model.encoder.weights=/path/to/",
                 "HF_HUB_OFFLINE=1", "warm the cache"):
        assert part in msg, (part, msg)
    # online by the environment, but the host cannot be reached: at once as well
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    monkeypatch.setattr(E, "_host_reachable", lambda url, timeout=3.0: False)
    with pytest.raises(E.EncoderWeightsError, match="cannot be reached"):
        E.FeatureMapEncoder("resnet18", pretrained=True, out_indices=[1, 2])
    assert no_download == []
    # reachable, but the download fails: one message, not the hub's
    monkeypatch.setattr(E, "_host_reachable", lambda url, timeout=3.0: True)
    with pytest.raises(E.EncoderWeightsError, match=r"could not be downloaded \(OSError"):
        E.FeatureMapEncoder("vit_small_patch8_224.dino", pretrained=True)
    assert len(no_download) == 1
    # the CLI: one line, exit 2, no run directory
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    run = tmp_path / "run"
    err = fails(train_main, ["--config", tiny_yaml(root), "--run-dir", str(run),
                             "model.encoder.pretrained=true",
                             "model.encoder.name=vit_small_patch8_224.dino",
                             "model.encoder.kwargs={}"], capsys)
    assert "model.encoder.weights=" in err and not run.exists()


def test_pretrained_encoder_from_a_warm_cache_offline(monkeypatch, tmp_path):
    """HF_HUB_OFFLINE=1 with the weights in the cache: timm loads them, nothing is refused."""
    import timm
    import torch
    from safetensors.torch import save_file

    from partformer.models import encoder as E
    from tests.hf_cache import fill_cache, use_cache
    name = "vit_tiny_patch16_224.augreg_in21k_ft_in1k"
    torch.manual_seed(3)
    src = timm.create_model(name, pretrained=False, num_classes=0, img_size=32, **TINY_VIT)
    save_file(src.state_dict(), str(tmp_path / "model.safetensors"))
    cache = str(tmp_path / "hf")
    fill_cache(cache, "timm/" + name, {"model.safetensors": str(tmp_path / "model.safetensors")})
    use_cache(monkeypatch, cache)
    assert E.cached_weights_file(name).startswith(cache)
    enc = E.FeatureMapEncoder(name, pretrained=True, img_size=32, **TINY_VIT)
    for k, v in src.state_dict().items():
        assert torch.equal(enc.model.state_dict()[k], v), k


# ------------------------------------------------------------------ 16.3: progress off a terminal
def test_plain_progress_prints_at_a_steady_interval():
    import io

    from partformer.engine.progress import PlainProgress
    now = [0.0]
    out = io.StringIO()
    bar = PlainProgress(100, "train", unit="step", images=8, stream=out, every=10.0,
                        clock=lambda: now[0])
    for _ in range(100):          # one step per second
        now[0] += 1.0
        bar.set_postfix(epoch=2, loss=0.123456)
        bar.update(1)
    bar.close()
    lines = out.getvalue().splitlines()
    # the first step, then every 10 s (steps 11, 21, ..., 91), then the last
    assert [int(ln.split()[2].split("/")[0]) for ln in lines] == [1] + list(range(11, 100, 10)) \
        + [100]
    assert lines[1] == ("[train] step 11/100 (11%) epoch 2 loss 0.1235 | 8.0 img/s | elapsed "
                        "0:00:11 | ETA 0:01:29")


def _no_terminal_codes(text: str) -> None:
    assert "\r" not in text and "\x1b" not in text


def test_train_and_eval_print_progress_lines_without_a_terminal(root, tmp_path):
    import subprocess
    import sys
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": repo, "WANDB_MODE": "disabled"}
    env.pop("PARTFORMER_PROGRESS_EVERY", None)
    proc = subprocess.run([sys.executable, os.path.join(repo, "tools", "train.py"), "--config",
                           tiny_yaml(root), "--run-dir", str(tmp_path / "run"),
                           "train.max_steps=3", "logging.progress=true",
                           "logging.progress_every=0", "--no-baselines"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    _no_terminal_codes(proc.stderr)
    train = [ln for ln in proc.stderr.splitlines() if ln.startswith("[train] step ")]
    assert [ln.split()[2] for ln in train[:3]] == ["1/3", "2/3", "3/3"], proc.stderr
    for ln in train:
        assert " epoch 0 loss " in ln and " img/s | elapsed " in ln and "| ETA " in ln, ln
    assert any(ln.startswith("[eval] batch 1/1 (100%)") for ln in proc.stderr.splitlines())


def test_pretrain_and_infer_print_progress_lines_without_a_terminal(root, tmp_path, capsys,
                                                                    monkeypatch):
    import numpy as np
    from PIL import Image

    from partformer.cli import infer_main
    from tests.test_pretrain import pretrain_config
    monkeypatch.setenv("PARTFORMER_PROGRESS_EVERY", "0")
    run = str(tmp_path / "pre")
    pretrain_config(root, run, ["train.max_steps=2"])
    assert pretrain_main(["--config", os.path.join(tmp_path, "pretrain_tiny.yaml"),
                          "train.max_steps=2", "logging.progress=true",
                          "pretrain.probe_every=0"]) == 0
    err = capsys.readouterr().err
    _no_terminal_codes(err)
    lines = [ln for ln in err.splitlines() if ln.startswith("[pretrain] step ")]
    assert [ln.split()[2] for ln in lines] == ["1/2", "2/2"] and "loss" in lines[0], err
    assert any(ln.startswith("[reading synthetic/train] batch") for ln in err.splitlines())
    folder = tmp_path / "photos"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(np.full((20, 30, 3), 40 * i, np.uint8)).save(folder / f"{i}.png")
    from tests.tiny import tiny_checkpoint
    (tmp_path / "m").mkdir()
    ckpt, _, _ = tiny_checkpoint(str(tmp_path / "m"))
    assert infer_main([str(folder), "--model", ckpt, "--out", str(tmp_path / "out"),
                       "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    _no_terminal_codes(err)
    lines = [ln for ln in err.splitlines() if ln.startswith("[infer] image ")]
    assert lines and lines[-1].startswith("[infer] image 3/3 (100%)"), err


# ------------------------------------------------------- 16.10: one model flag, --device, --version
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _tool_mains():
    """Every tools/*.py and the package function it runs."""
    import importlib
    import re
    out = {}
    for f in sorted(os.listdir(os.path.join(REPO, "tools"))):
        if f.endswith(".py"):
            src = open(os.path.join(REPO, "tools", f)).read()
            m = re.search(r"^from (partformer\.\w+) import (\w+)", src, re.M)
            assert m, f"tools/{f} does not run a function of the package"
            out[f] = getattr(importlib.import_module(m.group(1)), m.group(2))
    return out


def test_every_tool_has_version_and_a_console_script(capsys):
    import re

    import partformer
    setup = open(os.path.join(REPO, "setup.py")).read()
    scripts = dict(re.findall(r'"(partformer-[\w-]+)=([\w.]+:\w+)"', setup))
    mains = _tool_mains()
    # train, pretrain, eval, oracle, visualize, infer, benchmark, make_synthetic, the three
    # prepare_*, convert_official, export_weights, export_onnx (a new tool must be counted here)
    assert len(mains) == 14
    for tool, main in mains.items():
        with pytest.raises(SystemExit) as e:
            main(["--version"])
        assert e.value.code == 0, tool
        assert capsys.readouterr().out.strip() == f"partformer {partformer.__version__}", tool
        target = f"{main.__module__}:{main.__name__}"
        assert target in scripts.values(), f"tools/{tool} ({target}) has no console script"
        name = "partformer-" + tool[:-3].replace("_", "-")
        assert scripts.get(name) == target, (name, scripts)


@pytest.mark.parametrize("tool", ["train.py", "pretrain.py", "eval.py", "visualize.py",
                                  "infer.py", "benchmark.py", "export_onnx.py"])
def test_tools_that_run_a_network_take_device_and_model(tool, capsys):
    with pytest.raises(SystemExit):
        _tool_mains()[tool](["--help"])
    text = capsys.readouterr().out
    assert "--device DEVICE" in text
    if tool != "pretrain.py":
        assert "--model" in text or "MODEL" in text


def test_every_tool_names_a_model_with_model(capsys):
    """train (init), eval, visualize, infer, benchmark, export_weights, convert_official."""
    for tool in ("train.py", "eval.py", "visualize.py", "infer.py", "benchmark.py",
                 "export_weights.py", "convert_official.py"):
        with pytest.raises(SystemExit):
            _tool_mains()[tool](["--help"])
        assert "--model" in capsys.readouterr().out, tool


def test_out_is_a_folder_or_the_help_says_file(capsys):
    for tool, main in _tool_mains().items():
        with pytest.raises(SystemExit):
            main(["--help"])
        text = " ".join(capsys.readouterr().out.split())
        if "--out " in text or "--output " in text:
            assert "FOLDER" in text or "FILE" in text or "output directory" in text, tool


def test_train_starts_from_a_model_strictly(root, tmp_path, capsys):
    import torch

    from partformer.engine.checkpoint import load_checkpoint
    from partformer.engine.trainer import Trainer

    from tests.tiny import tiny_checkpoint, tiny_config
    (tmp_path / "m").mkdir()
    ckpt, cfg, model = tiny_checkpoint(str(tmp_path / "m"), seed=5)
    run = tmp_path / "run"
    assert train_main(["--model", ckpt, "--config", tiny_yaml(root), "--run-dir", str(run),
                       "train.max_steps=1", "--no-test"]) == 0
    assert load_checkpoint(str(run / "last.pt"))["init_from"] == ckpt
    # the weights it starts from are the model's (before the first step)
    tr = Trainer(tiny_config(root), run_dir=str(tmp_path / "r2"), init=(model.state_dict(), ckpt),
                 verbose=False)
    for k, v in model.state_dict().items():
        assert torch.equal(tr.model.state_dict()[k], v), k
    tr.close()
    # another architecture: one line naming the differences and the fix, no run directory
    capsys.readouterr()
    bad = tmp_path / "bad"
    err = fails(train_main, ["--model", ckpt, "--config", tiny_yaml(root), "--run-dir", str(bad),
                             "model.num_parts=5", "--no-test"], capsys)
    assert "does not fit the architecture" in err and "shape mismatches" in err
    assert "leave out --config" in err and not bad.exists()
    err = fails(train_main, ["--model", ckpt, "--config", tiny_method_yaml(root, "mpae"),
                             "--run-dir", str(bad), "--no-test"], capsys)
    assert "is a partformer model" in err and not bad.exists()
    with pytest.raises(SystemExit):
        train_main(["--model", ckpt, "--resume", str(run)])


# ------------------------------------------------------------------ 16.6: --device cuda, no CUDA
@pytest.mark.parametrize("tool", ["train.py", "eval.py", "visualize.py", "infer.py",
                                  "export_onnx.py", "benchmark.py", "pretrain.py"])
def test_device_cuda_without_cuda_is_one_line(tool, root, tmp_path, capsys, monkeypatch):
    import torch
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    from tests.tiny import tiny_checkpoint
    (tmp_path / "m").mkdir()
    ckpt, _, _ = tiny_checkpoint(str(tmp_path / "m"))
    run = str(tmp_path / "run")
    argv = {"train.py": ["--config", tiny_yaml(root), "--run-dir", run],
            "eval.py": ["--model", ckpt, "--out", run],
            "visualize.py": ["--model", ckpt, "--out", run + ".png"],
            "infer.py": [str(tmp_path / "m"), "--model", ckpt, "--out", run],
            "export_onnx.py": [ckpt, run + ".onnx"],
            "benchmark.py": ["--config", tiny_yaml(root)],
            "pretrain.py": ["--config", tiny_yaml(root), "--run-dir", run]}[tool]
    err = fails(_tool_mains()[tool], argv + ["--device", "cuda"], capsys)
    assert "cuda" in err.lower() and not os.path.exists(run)
