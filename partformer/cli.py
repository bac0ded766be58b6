"""Command-line entry points (``tools/train.py``, ``tools/eval.py`` and the console scripts).

Thin composition roots: parse the config, hand data, model and predictors to the engine.
"""
from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional

from partformer import config as cfglib
from partformer.engine import distributed as D
from partformer.engine.checkpoint import CheckpointError


def _load(args) -> cfglib.Config:
    try:
        if args.config is None and getattr(args, "resume", None):
            from partformer.engine.runner import config_from_checkpoint
            path = args.resume
            if os.path.isdir(path):
                path = os.path.join(path, "last.pt")
            return config_from_checkpoint(path, args.overrides)
        ckpt = getattr(args, "checkpoint", None)
        if ckpt:
            from partformer.engine.runner import config_from_checkpoint
            if args.config is None:
                return config_from_checkpoint(ckpt, args.overrides)
            # the architecture comes from the checkpoint; --config supplies data and evaluation
            stored = cfglib.to_dict(config_from_checkpoint(ckpt))
            return cfglib.load_config(args.config, args.overrides,
                                      sections={"model": stored["model"]},
                                      sections_origin=f"checkpoint {ckpt}")
        return cfglib.load_config(args.config, args.overrides)
    except cfglib.ConfigError as e:
        sys.exit(f"config error: {e}")
    except CheckpointError as e:  # the config comes from an unreadable or foreign checkpoint
        sys.exit(f"checkpoint error: {e}")


def train_main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(
        description="Train PartFormer. Without arguments: the embedded synthetic benchmark "
                    "(generated on first use), then test-split evaluation next to the grid and "
                    "k-means baselines.")
    cfglib.add_config_args(p)
    p.add_argument("--resume", default=None,
                   help="run directory or its last.pt: continue that run exactly where it stopped")
    p.add_argument("--run-dir", default=None, help="run directory (default: runs/<name>-<time>)")
    p.add_argument("--no-test", action="store_true", help="skip the final test-split evaluation")
    p.add_argument("--no-baselines", action="store_true",
                   help="skip the grid and k-means baselines in the final table")
    args = p.parse_args(argv)
    cfg = _load(args)

    from partformer.engine.runner import build_baseline, evaluate_methods, model_predictor
    from partformer.engine.trainer import Trainer
    from partformer.engine.checkpoint import load_checkpoint, load_state_dict_strict

    run_dir = args.run_dir
    if args.resume and run_dir is None:
        run_dir = args.resume if os.path.isdir(args.resume) else os.path.dirname(args.resume)
    trainer = Trainer(cfg, run_dir=run_dir, resume=args.resume)
    if D.is_main_process():
        print(cfglib.to_yaml(cfg))
        print(f"run directory: {trainer.run_dir}")
        print(f"device: {trainer.device}, world size: {trainer.world}, precision: "
              f"{trainer.amp_dtype or 'fp32'}, train images: {len(trainer.train_set)}, "
              f"steps: {trainer.total_steps} ({trainer.steps_per_epoch}/epoch)")
    try:
        summary = trainer.fit()
        if D.is_main_process():
            print(f"training done: {summary}")
        if not args.no_test:
            best = os.path.join(trainer.run_dir, "best.pt")
            D.barrier()
            chosen = best if os.path.isfile(best) else os.path.join(trainer.run_dir, "last.pt")
            load_state_dict_strict(trainer.model, load_checkpoint(chosen)["model"], source=chosen)
            predictors = {"partformer": model_predictor(trainer.model, trainer.device,
                                                        trainer.amp_dtype)}
            if not args.no_baselines:
                predictors["grid"] = build_baseline("grid", cfg, trainer.device, None)
                predictors["kmeans"] = build_baseline("kmeans", cfg, trainer.device,
                                                      trainer.train_set)
            evaluate_methods(cfg, predictors, out_dir=trainer.run_dir,
                             progress=cfg.logging.progress and sys.stderr.isatty(),
                             extra={"checkpoint": os.path.basename(chosen), "train": summary})
    finally:
        trainer.close()
        D.cleanup()
    return 0


def eval_main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(
        description="Evaluate a PartFormer checkpoint or a training-free baseline under every "
                    "protocol that applies to the dataset; prints a table and writes JSON.")
    cfglib.add_config_args(p)
    p.add_argument("--checkpoint", default=None,
                   help="our checkpoint (best.pt / last.pt) or a converted official one")
    p.add_argument("--method", default=None, choices=["partformer", "grid", "kmeans"],
                   help="default: partformer with --checkpoint, else both baselines")
    p.add_argument("--split", default=None, help="dataset split (default: data.test_split)")
    p.add_argument("--out", default=None,
                   help="directory for results_<split>.json and config.yaml (default: "
                        "<checkpoint dir>/eval, or runs/eval-<dataset>)")
    args = p.parse_args(argv)
    cfg = _load(args)
    device = D.init_distributed(cfg.train.device)
    from partformer.engine.runner import (build_baseline, evaluate_methods, load_model,
                                          model_predictor)
    from partformer.engine.trainer import resolve_precision
    from partformer.data import build_dataset
    try:
        methods = [args.method] if args.method else (
            ["partformer"] if args.checkpoint else ["grid", "kmeans"])
        predictors = {}
        for m in methods:
            if m == "partformer":
                if not args.checkpoint:
                    sys.exit("--method partformer needs --checkpoint FILE")
                model = load_model(cfg, args.checkpoint, device)
                predictors[m] = model_predictor(model, device,
                                                resolve_precision(cfg.train.precision, device))
            else:
                fit_set = build_dataset(cfg.data, cfg.data.train_split) if m == "kmeans" else None
                predictors[m] = build_baseline(m, cfg, device, fit_set)
        # beside the checkpoint, in eval/, so the training run's own results_test.json is kept
        out = args.out or (os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)), "eval")
                           if args.checkpoint
                           else os.path.join(cfg.experiment.output_dir, f"eval-{cfg.data.name}"))
        if D.is_main_process():
            print(cfglib.to_yaml(cfg))
            os.makedirs(out, exist_ok=True)
            cfglib.save_config(cfg, os.path.join(out, "config.yaml"))
        evaluate_methods(cfg, predictors, split=args.split, out_dir=out,
                         progress=cfg.logging.progress and sys.stderr.isatty(),
                         extra={"checkpoint": args.checkpoint})
    finally:
        D.cleanup()
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(train_main())


def visualize_main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(
        description="Save a grid of predicted part masks (image | overlay | parts | GT parts) for "
                    "the first images of a split; optionally log it to W&B. Works on your own "
                    "images with data.name=image_folder data.root=DIR.")
    cfglib.add_config_args(p)
    p.add_argument("--checkpoint", required=True, help="our checkpoint or a converted one")
    p.add_argument("--split", default=None, help="dataset split (default: data.val_split or test)")
    p.add_argument("--num", type=int, default=8, help="number of images")
    p.add_argument("--out", default=None, help="PNG path (default: <checkpoint dir>/masks_<split>.png)")
    p.add_argument("--wandb", action="store_true", help="also log the grid with logging.wandb")
    args = p.parse_args(argv)
    cfg = _load(args)
    from partformer import viz
    from partformer.data import build_dataset
    from partformer.data.collate import collate
    from partformer.engine.runner import load_model
    device = D.init_distributed(cfg.train.device)
    split = args.split or cfg.data.val_split or cfg.data.test_split
    dataset = build_dataset(cfg.data, split, skip_bad_images=True)
    samples = [s for s in (dataset[i] for i in range(min(args.num, len(dataset)))) if s is not None]
    if not samples:
        sys.exit(f"no readable image in the first {args.num} of split {split!r}")
    model = load_model(cfg, args.checkpoint, device)
    grids = []
    import torch
    with torch.no_grad():
        for s in samples:  # one at a time: images may differ in size
            b = collate([s])
            maps = model.predict(b["image"].to(device)).float().cpu()
            grids.append(viz.mask_grid(b["image"], maps, b.get("part_mask")))
    height = max(g.shape[0] for g in grids)
    import numpy as np
    grid = np.concatenate([np.pad(g, ((0, height - g.shape[0]), (0, 2), (0, 0)),
                                  constant_values=255) for g in grids], axis=1)
    out = args.out or os.path.join(os.path.dirname(os.path.abspath(args.checkpoint)),
                                   f"masks_{split}.png")
    viz.save_png(out, grid)
    print(f"wrote {out} ({len(samples)} images)")
    if args.wandb:
        from partformer.engine.logger import ExperimentLogger
        logger = ExperimentLogger(os.path.dirname(out), cfg.logging.wandb, cfglib.to_dict(cfg),
                                  f"visualize-{cfg.experiment.name}")
        logger.log_image(f"{split}/part_masks", grid, step=0,
                         caption="image | parts overlay | parts | GT parts")
        logger.close()
    return 0


def benchmark_main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(
        description="Speed of a config (partformer/engine/profiling.py): the training step and "
                    "its floor (the frozen encoder's forward over both views) measured "
                    "alternately, with their ratio; evaluation split into data / predict / "
                    "metrics; the training data loader (and the image cache). Random weights "
                    "and images where no dataset is on disk. Prints a summary, writes JSON.")
    cfglib.add_config_args(p)
    p.add_argument("--parts", default="train,eval,data",
                   help="comma-separated subset of train,eval,data (default: all)")
    p.add_argument("--reps", type=int, default=5, help="timed step / floor pairs (default 5)")
    p.add_argument("--warmup", type=int, default=1,
                   help="untimed pairs (and evaluation batches) first (default 1)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="images per step and per evaluation batch (default: train.batch_size)")
    p.add_argument("--eval-batches", type=int, default=3, help="timed evaluation batches")
    p.add_argument("--data-batches", type=int, default=20, help="timed data-loader batches")
    p.add_argument("--no-flops", action="store_true",
                   help="skip counting the FLOPs of one step and one floor")
    p.add_argument("--out", default=None, help="JSON path (default: print only)")
    args = p.parse_args(argv)
    if args.batch_size is not None:
        args.overrides = list(args.overrides or []) + [f"train.batch_size={args.batch_size}"]
    cfg = _load(args)
    import json

    import torch

    from partformer.engine.profiling import format_report, profile
    from partformer.engine.trainer import resolve_precision
    if cfg.train.threads > 0:
        torch.set_num_threads(cfg.train.threads)
    device = D.init_distributed(cfg.train.device)
    parts = [s.strip() for s in args.parts.split(",") if s.strip()]
    try:
        res = profile(cfg, device, parts, amp_dtype=resolve_precision(cfg.train.precision, device),
                      reps=args.reps, warmup=args.warmup, eval_batches=args.eval_batches,
                      data_batches=args.data_batches, flops=not args.no_flops)
    except ValueError as e:
        sys.exit(f"benchmark error: {e}")
    print(format_report(res))
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        tmp = args.out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(res, f, indent=2)
        os.replace(tmp, args.out)
    return 0


def pretrain_main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(
        description="Self-supervised pretraining of a feature-map encoder (multi-crop DINO with a "
                    "dense term) on unlabeled images, with a k-means probe on the validation "
                    "split; or --export a checkpoint's teacher encoder as .safetensors.")
    cfglib.add_config_args(p)
    p.add_argument("--resume", default=None,
                   help="run directory or its last.pt: continue that run exactly where it stopped")
    p.add_argument("--run-dir", default=None, help="run directory (default: runs/<name>-<time>)")
    p.add_argument("--export", default=None, metavar="CHECKPOINT",
                   help="write the teacher encoder of this pretraining checkpoint (best.pt) to --out "
                        "and exit")
    p.add_argument("--out", default=None, help="output .safetensors of --export")
    args = p.parse_args(argv)
    if args.export:
        if not args.out:
            p.error("--export needs --out FILE.safetensors")
        from partformer.pretrain.trainer import export_encoder
        try:
            meta = export_encoder(args.export, args.out)
        except CheckpointError as e:
            sys.exit(f"checkpoint error: {e}")
        import hashlib
        with open(args.out, "rb") as f:
            digest = hashlib.sha256(f.read()).hexdigest()
        print(f"wrote {args.out} (step {meta['step']}, sha256 {digest})\nprobe: {meta['probe']}")
        return 0
    if args.config is None and not args.resume:
        args.config = os.path.join(cfglib.CONFIG_DIR, "pretrain", "synthetic.yaml")
    cfg = _load(args)
    from partformer.pretrain.trainer import Pretrainer
    run_dir = args.run_dir
    if args.resume and run_dir is None:
        run_dir = args.resume if os.path.isdir(args.resume) else os.path.dirname(args.resume)
    try:
        trainer = Pretrainer(cfg, run_dir=run_dir, resume=args.resume)
    except cfglib.ConfigError as e:
        sys.exit(f"config error: {e}")
    except CheckpointError as e:
        sys.exit(f"checkpoint error: {e}")
    if D.is_main_process():
        print(cfglib.to_yaml(cfg))
        print(f"run directory: {trainer.run_dir}\ndevice: {trainer.device}, world size: "
              f"{trainer.world}, images: {len(trainer.bank)}, steps: {trainer.total_steps}")
    try:
        summary = trainer.fit()
    finally:
        trainer.close()
        D.cleanup()
    if D.is_main_process():
        print(f"pretraining done: {summary}\nexport the selected encoder with: python "
              f"tools/pretrain.py --export {os.path.join(trainer.run_dir, 'best.pt')} "
              "--out encoder.safetensors")
    return 0
