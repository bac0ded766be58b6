"""Glue shared by the CLIs: build predictors (trained model, checkpoint, baselines) and run the
evaluation of several methods on one split into one table and one JSON file."""
from __future__ import annotations

import os
import time
from typing import Any, Dict, Optional

import torch

from partformer import config as cfglib
from partformer.data import build_dataset
from partformer.engine import distributed as D
from partformer.engine.checkpoint import CheckpointError, load_checkpoint, load_state_dict_strict
from partformer.engine.evaluator import PROTOCOL_VERSION, evaluate, format_table, write_json

METHODS = ("partformer", "grid", "kmeans")


def model_predictor(model: torch.nn.Module, device: torch.device,
                    amp_dtype: Optional[torch.dtype] = None):
    model.eval()

    def predict(batch: Dict[str, Any]) -> torch.Tensor:
        images = batch["image"].to(device)
        if amp_dtype is None:
            return model.predict(images)
        with torch.autocast(device_type=device.type, dtype=amp_dtype):
            return model.predict(images)
    return predict


def config_from_checkpoint(path: str, overrides=None) -> cfglib.Config:
    """The resolved config stored in one of our checkpoints (plus command-line overrides)."""
    ckpt = load_checkpoint(path)
    if "config" not in ckpt:
        raise CheckpointError(f"{path} carries no config; pass --config with the training config")
    import yaml
    tree = yaml.safe_load(ckpt["config"])
    _pin_half_resample(tree, ckpt, path)
    origins = {k: f"the config stored in {path}" for k in cfglib._dotted_keys(tree)}
    cfglib.apply_overrides(tree, overrides, origins)
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


def load_model(cfg, checkpoint: str, device: torch.device) -> torch.nn.Module:
    from partformer.models import build_model
    model = build_model(cfg.model, image_size=cfg.data.image_size)
    ckpt = load_checkpoint(checkpoint)
    state = ckpt.get("model", ckpt.get("state_dict"))
    if state is None:
        raise CheckpointError(f"{checkpoint} has neither `model` nor `state_dict`; the authors' "
                              "files must be converted first with tools/convert_official.py")
    load_state_dict_strict(model, state, source=checkpoint)
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
        batch_size = (cfg.eval.batch_size if cfg.data.resize in ("whole", "shorter_center_crop")
                      else 1)
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
    for name, predict in predictors.items():
        t0 = time.time()
        results[name] = evaluate(predict, dataset, cfg.model.num_parts, resize=cfg.data.resize,
                                 protocols=cfg.eval.protocols or None, regressor_dataset=regressor,
                                 batch_size=cfg.eval.batch_size, num_workers=cfg.eval.num_workers,
                                 progress=progress, max_images=cfg.eval.max_images,
                                 centroid_convention=cfg.eval.centroid_convention,
                                 keypoint_lookup=cfg.eval.keypoint_lookup)
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
                       "eval_seconds": timings, "results": results, **(extra or {})}
            write_json(os.path.join(out_dir, f"results_{split}.json"), payload)
    return results
