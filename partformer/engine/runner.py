"""Glue shared by the CLIs: build predictors (trained model, checkpoint, baselines) and run the
evaluation of several methods on one split into one table and one JSON file."""
from __future__ import annotations

import os
import time
from typing import Any, Dict, Optional

import torch

from partformer import config as cfglib
from partformer.data import build_dataset
from partformer.data.transforms import fixed_size
from partformer.engine import distributed as D
from partformer.engine.checkpoint import CheckpointError, load_checkpoint, load_state_dict_strict
from partformer.engine.evaluator import evaluate, format_table, write_json
from partformer.engine.precision import autocast_context
from partformer.metrics.protocols import PROTOCOL_VERSION

METHODS = ("partformer", "grid", "kmeans")


def model_predictor(model: torch.nn.Module, device: torch.device,
                    amp_dtype: Optional[torch.dtype] = None):
    """``batch -> part maps [B, K+1, h, w]`` of ``model`` (put in eval mode) on ``device``, under
    ``amp_dtype`` autocast (None: fp32): the predictor of validation, evaluation and the tools."""
    model.eval()

    def predict(batch: Dict[str, Any]) -> torch.Tensor:
        images = batch["image"].to(device)
        with autocast_context(device, amp_dtype):
            return model.predict(images)
    return predict


def config_from_checkpoint(path: str, overrides=None, resolve_data_root: bool = False,
                           ckpt: Optional[Dict[str, Any]] = None) -> cfglib.Config:
    """The resolved config stored in one of our checkpoints (plus command-line overrides).

    ``resolve_data_root`` (tools that read the dataset): a relative ``data.root`` that the command
    line does not override is resolved where the training ran (the absolute root the trainer
    records in the checkpoint). When that folder does not exist here, a
    :class:`~partformer.config.ConfigError` asks for ``data.root=``, so that no tool reads, or
    generates, a dataset in the wrong place. A checkpoint without the record (older ones,
    converted ones) uses the folder relative to the current directory only if it exists.
    ``ckpt``: the already loaded checkpoint, if any.
    """
    ckpt = load_checkpoint(path) if ckpt is None else ckpt
    if "config" not in ckpt:
        raise CheckpointError(f"{path} carries no config; pass --config with the training config")
    import yaml
    tree = yaml.safe_load(ckpt["config"])
    _pin_half_resample(tree, ckpt, path)
    origins = {k: f"the config stored in {path}" for k in cfglib._dotted_keys(tree)}
    cfglib.apply_overrides(tree, overrides, origins)
    if resolve_data_root and origins.get("data.root") != "command line":
        _resolve_stored_root(tree, origins, ckpt, path)
    return cfglib.from_dict(tree, origins)


def _pin_half_resample(tree: Dict[str, Any], ckpt: Dict[str, Any], path: str) -> None:
    """Checkpoints written before ``model.half_resample`` existed were trained with bilinear x0.5
    paths; the schema default is now nearest (the authors' code). Keep such a model as it was
    trained, and say so. Converted official checkpoints (``source`` written by partformer.convert)
    hold the authors' weights, which were trained with nearest."""
    model = tree.get("model") if isinstance(tree, dict) else None
    if not isinstance(model, dict) or "half_resample" in model:
        return
    official = isinstance(ckpt.get("source"), dict) and \
        ckpt["source"].get("converter") == "partformer.convert"
    model["half_resample"] = "nearest" if official else "bilinear"
    if not official:
        import warnings
        warnings.warn(f"{path} predates model.half_resample and was trained with bilinear x0.5 "
                      "resampling; using model.half_resample=bilinear for it (the default for new "
                      "runs is nearest, as the authors' code; docs/differences.md)", stacklevel=3)


def _resolve_stored_root(tree: Dict[str, Any], origins: Dict[str, str], ckpt: Dict[str, Any],
                         path: str) -> None:
    data = tree.setdefault("data", {})
    root = data.get("root", cfglib.DataConfig().root)
    if not isinstance(root, str) or os.path.isabs(os.path.expanduser(root)):
        return
    recorded = ckpt.get("data_root")
    if recorded and os.path.isdir(recorded):
        data["root"] = recorded
        origins["data.root"] = f"{path} (relative root resolved where training ran)"
        return
    if not recorded and os.path.isdir(root):
        import warnings
        warnings.warn(f"{path} does not record where it was trained; its relative data.root "
                      f"{root!r} is read from the current directory ({os.path.abspath(root)})",
                      stacklevel=3)
        data["root"] = os.path.abspath(root)
        return
    where = (f"where the training ran it was {recorded}, which does not exist here"
             if recorded else "the checkpoint does not record where the training ran")
    raise cfglib.ConfigError(
        f"{path} stores the relative data.root {root!r} and {where}. Pass the dataset folder on "
        f"the command line: data.root=/path/to/{os.path.basename(root.rstrip('/')) or 'dataset'} "
        "(it is not guessed from the current directory, so that no dataset is read from, or "
        "generated into, the wrong place)")


def load_model(cfg, checkpoint: str, device: torch.device) -> torch.nn.Module:
    """Build ``cfg.model`` and load the weights of ``checkpoint`` strictly (eval mode)."""
    ckpt = load_checkpoint(checkpoint)
    state = ckpt.get("model", ckpt.get("state_dict"))
    if state is None:
        raise CheckpointError(f"{checkpoint} has neither `model` nor `state_dict`; the authors' "
                              "files must be converted first with tools/convert_official.py (or "
                              "loaded with partformer.load, which converts them on the fly)")
    return model_from_state(cfg, state, checkpoint, device)


def model_from_state(cfg, state: Dict[str, torch.Tensor], source: str,
                     device: torch.device) -> torch.nn.Module:
    """``build_model(cfg.model)`` with ``state`` loaded strictly, on ``device``, in eval mode."""
    import dataclasses

    from partformer.models import build_model

    # every weight comes from `state`: building must not fetch (or need) pretrained encoder weights
    encoder = dataclasses.replace(cfg.model.encoder, pretrained=False, weights=None)
    model = build_model(dataclasses.replace(cfg.model, encoder=encoder),
                        image_size=cfg.data.image_size)
    load_state_dict_strict(model, state, source=source)
    return model.to(device).eval()


def build_baseline(name: str, cfg, device: torch.device, fit_dataset):
    from partformer.baselines import BASELINES
    if name == "grid":
        return BASELINES["grid"](cfg.model.num_parts)
    if name == "kmeans":
        from partformer.models.encoder import build_encoder
        # a randomly initialised encoder (no pretrained weights) must not depend on how much of
        # the global RNG stream was used before (after training vs in tools/eval.py, per rank)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.experiment.seed)
            encoder = build_encoder(cfg.model.encoder, image_size=cfg.data.image_size)
        b = BASELINES["kmeans"](cfg.model.num_parts, encoder, device=str(device),
                                seed=cfg.experiment.seed)
        # images of different sizes (resize modes that keep the aspect ratio) cannot be stacked
        batch_size = cfg.eval.batch_size if fixed_size(cfg.data.resize) else 1
        return b.fit(fit_dataset, batch_size=batch_size, num_workers=0)
    raise ValueError(f"unknown method {name!r}; choose from {METHODS}")


def evaluate_methods(cfg, predictors: Dict[str, Any], split: Optional[str] = None,
                     out_dir: Optional[str] = None, progress: bool = False,
                     extra: Optional[Dict[str, Any]] = None) -> Dict[str, Dict[str, Any]]:
    """Evaluate every predictor on ``split`` (default: the test split); print one table and write
    ``<out_dir>/results_<split>.json`` (rank 0)."""
    split = split or cfg.data.test_split
    skip = cfg.eval.skip_bad_images
    dataset = build_dataset(cfg.data, split, skip_bad_images=skip)
    reg_split = cfg.data.regressor_split  # keypoint/landmark regressors are fitted on it
    regressor = build_dataset(cfg.data, reg_split, skip_bad_images=skip) if reg_split else None
    results = {}
    timings = {}
    info: Dict[str, Any] = {}
    for name, predict in predictors.items():
        t0 = time.time()
        results[name] = evaluate(predict, dataset, cfg.model.num_parts, resize=cfg.data.resize,
                                 protocols=cfg.eval.protocols or None, regressor_dataset=regressor,
                                 batch_size=cfg.eval.batch_size, num_workers=cfg.eval.num_workers,
                                 progress=progress, max_images=cfg.eval.max_images,
                                 centroid_convention=cfg.eval.centroid_convention,
                                 keypoint_lookup=cfg.eval.keypoint_lookup, info=info)
        timings[name] = time.time() - t0
    num_images = len(dataset)
    if cfg.eval.max_images is not None:
        num_images = min(num_images, cfg.eval.max_images)
    if D.is_main_process():
        title = (f"{cfg.data.name} / {split} split ({num_images} images), K = "
                 f"{cfg.model.num_parts}, S = {cfg.data.image_size}, resize = {cfg.data.resize}")
        print(format_table(results, title))
        if out_dir:
            os.makedirs(out_dir, exist_ok=True)
            payload = {"dataset": cfg.data.name, "root": cfg.data.root, "split": split,
                       "num_images": num_images, "max_images": cfg.eval.max_images,
                       "num_parts": cfg.model.num_parts,
                       "image_size": cfg.data.image_size, "resize": cfg.data.resize,
                       "regressor_split": reg_split, "protocol_version": PROTOCOL_VERSION,
                       "skipped_files": info.get("skipped_files", []),
                       "eval_seconds": timings, "results": results, **(extra or {})}
            write_json(os.path.join(out_dir, f"results_{split}.json"), payload)
    return results
