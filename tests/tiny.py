"""A TINY config of the whole pipeline for fast CPU tests (engine, CLI, distributed).

``tiny_config(tmp)`` returns a validated :class:`partformer.config.Config` on a 64/16/16-image,
32 px synthetic tree under ``<tmp>/syn``: a one-block ViT encoder and part-token ViT (8 px patches,
4 x 4 token grid), a small decoder and the MSE reconstruction loss. It starts from the schema
defaults (not configs/default.yaml, which is tuned for real runs), is written to ``<tmp>/tiny.yaml``
(so CLIs can take ``--config``) and loaded through the normal YAML + override path. Nothing
downloads anything. Generate the tree once per test session with :func:`shared_root`.
"""
from __future__ import annotations

import os
from typing import Any, Dict, List, Optional

import yaml

from partformer import config as cfglib

GENERATOR = {"num_train": 64, "num_val": 16, "num_test": 16, "image_size": 32}


def tiny_dict(root: str) -> Dict[str, Any]:
    return {
        "experiment": {"name": "tiny", "seed": 0,
                       "output_dir": os.path.join(os.path.dirname(root), "runs")},
        "data": {"name": "synthetic", "root": root, "image_size": 32, "resize": "whole",
                 "num_workers": 0, "regressor_split": "train",
                 "options": {"generator": dict(GENERATOR)}},
        "model": {
            "num_parts": 4,
            "encoder": {"name": "vit_tiny_patch16_224", "pretrained": False, "frozen": False,
                        "kwargs": {"patch_size": 8, "embed_dim": 32, "depth": 1,
                                   "num_heads": 2}},
        },
        "method": {"name": "partformer"},
        "partformer": {
            "feature_dim": 16, "compress": "cub", "compress_hidden": [32, 32],
            "vit": {"in_scale": 1.0, "patch_size": 8, "width": 32, "depth": 1,
                    "heads": 2, "mlp_ratio": 2.0},
            "decoder": {"channels": 8, "num_blocks": 2, "upsample_after": [1]},
            "loss": {"recon": "mse", "vgg_weights": None},
        },
        "train": {"epochs": 2, "batch_size": 8, "lr": 1.0e-3,
                  "scheduler": {"name": "constant"}, "precision": "fp32", "device": "cpu",
                  "log_every": 1},
        "eval": {"batch_size": 16, "num_workers": 0},
        "logging": {"wandb": {"mode": "disabled"}, "progress": False},
    }


def tiny_yaml(tmp: str) -> str:
    """Write the tiny config to ``<tmp>/tiny.yaml`` (if absent) and return its path."""
    tmp = os.fspath(tmp)
    path = os.path.join(tmp, "tiny.yaml")
    if not os.path.isfile(path):
        with open(path, "w") as f:
            yaml.safe_dump(tiny_dict(os.path.join(tmp, "syn")), f, sort_keys=False)
    return path


def tiny_config(tmp: str, overrides: Optional[List[str]] = None,
                run_dir: Optional[str] = None) -> cfglib.Config:
    """The tiny config with its synthetic tree at ``<tmp>/syn``, plus dotted ``overrides``."""
    extra = list(overrides or [])
    if run_dir is not None:
        extra.append(f"experiment.run_dir={run_dir}")
    return cfglib.load_config(tiny_yaml(tmp), extra)


def ensure_tree(tmp: str) -> str:
    """Generate the tiny synthetic tree at ``<tmp>/syn`` now (quietly); returns its path."""
    from partformer.data.synthetic import SyntheticConfig, ensure_synthetic
    return ensure_synthetic(os.path.join(os.fspath(tmp), "syn"), SyntheticConfig(**GENERATOR),
                            verbose=False)


_SHARED: Dict[str, str] = {}


def shared_root(tmp_path_factory) -> str:
    """One directory per test session holding the tiny synthetic tree (generated once)."""
    if "root" not in _SHARED:
        tmp = str(tmp_path_factory.mktemp("tiny"))
        ensure_tree(tmp)
        tiny_yaml(tmp)
        _SHARED["root"] = tmp
    return _SHARED["root"]


def tiny_checkpoint(tmp: str, overrides: Optional[List[str]] = None, seed: int = 0):
    """A randomly initialised tiny model saved as one of our checkpoints at
    ``<tmp>/run/best.pt`` (prediction needs no dataset): ``(path, config, model)``."""
    import torch

    from partformer.engine.checkpoint import atomic_torch_save
    from partformer.methods import build_model

    cfg = tiny_config(tmp, overrides)
    torch.manual_seed(seed)
    model = build_model(cfg).eval()
    path = os.path.join(os.fspath(tmp), "run", "best.pt")
    atomic_torch_save({"model": model.state_dict(), "config": cfglib.to_yaml(cfg)}, path)
    return path, cfg, model


def interrupt_tool(tool: str, args: List[str], run_dir: str, sig: int,
                   env: Optional[Dict[str, str]] = None) -> int:
    """Run ``tools/<tool>`` in its own process, send ``sig`` once its ``metrics.jsonl`` holds two
    rows, and check how it stops: exit status 130, no traceback, and as its last stderr line the
    one line naming the step and the resume command. Returns that step."""
    import subprocess
    import sys
    import time
    repo = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": repo, "WANDB_MODE": "disabled", **(env or {})}
    proc = subprocess.Popen([sys.executable, os.path.join(repo, "tools", tool), *args,
                             "--run-dir", run_dir], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)
    metrics = os.path.join(run_dir, "metrics.jsonl")
    deadline = time.time() + 180
    while time.time() < deadline and proc.poll() is None:
        if os.path.isfile(metrics):
            with open(metrics) as f:
                if len(f.read().splitlines()) >= 2:
                    break
        time.sleep(0.2)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    last = err.strip().splitlines()[-1]
    assert last.startswith("interrupted at step ") and f"--resume {run_dir}" in last, last
    return int(last.split()[3])


def predictor_of(cfg, model, device: str = "cpu"):
    """The evaluator's ``batch -> maps`` predictor of ``model`` (of ``cfg``'s method)."""
    import torch

    from partformer.engine.evaluator import method_predictor
    from partformer.methods import build_method
    return method_predictor(build_method(cfg), model, torch.device(device))


def legacy_tree(cfg) -> Dict[str, Any]:
    """``cfg`` (a PartFormer config) as the config tree of a version 0.1.0 checkpoint: before
    methods had sections, PartFormer's settings were ``model.<key>`` (``model.partformer`` for the
    part-token ViT) and the top-level ``loss`` and ``augment`` sections; no ``method``."""
    tree = cfglib.to_dict(cfg)
    pf = tree.pop("partformer")
    tree.pop("method")
    tree["loss"] = pf.pop("loss")
    tree["augment"] = pf.pop("augment")
    pf["partformer"] = pf.pop("vit")
    tree["model"].update(pf)
    return tree


# each trained method's tiny settings on top of tiny_dict (same data, encoder and schedule)
TINY_METHODS: Dict[str, Dict[str, Any]] = {
    "partformer": {},
    "mpae": {
        "method": {"name": "mpae"},
        "mpae": {"feature_dim": 16, "predict_upsample": 2.0,
                 "part_vit": {"patch_size": 8, "width": 32, "depth": 1, "heads": 2},
                 "decoder": {"patch_size": 8, "embed_dim": 16, "depth": 1, "num_heads": 2,
                             "decoder_depth": 1, "decoder_num_heads": 2, "out_patch": 4},
                 "loss": {"vgg_weights": None, "presence_group_size": 4}},
        "model": {"encoder": {"frozen": True}},
    },
    # class-supervised: the synthetic benchmark's 6 classes (family x colour scheme)
    "pdiscoformer": {
        "method": {"name": "pdiscoformer"},
        "pdiscoformer": {"num_classes": 6},
        "model": {"encoder": {"frozen": True}},
    },
    "pdisconet": {
        "method": {"name": "pdisconet"},
        "pdisconet": {"num_classes": 6},
        "model": {"encoder": {"name": "resnet18", "frozen": False,
                              "kwargs": {"channels": [8, 16, 16, 16]}}},
        "data": {"image_size": 64},          # layer3 (stride 16): 4 x 4 maps
    },
}


def tiny_method_yaml(tmp: str, method: str) -> str:
    """The tiny config of ``method`` (a key of :data:`TINY_METHODS`) at ``<tmp>/tiny_<m>.yaml``."""
    tmp = os.fspath(tmp)
    path = os.path.join(tmp, f"tiny_{method}.yaml")
    if not os.path.isfile(path):
        tree = tiny_dict(os.path.join(tmp, "syn"))

        def merge(base, top):   # recursive; a timm ``kwargs`` mapping is replaced whole
            for k, v in top.items():
                if isinstance(v, dict) and isinstance(base.get(k), dict) and k != "kwargs":
                    merge(base[k], v)
                else:
                    base[k] = v
        merge(tree, TINY_METHODS[method])
        with open(path, "w") as f:
            yaml.safe_dump(tree, f, sort_keys=False)
    return path
