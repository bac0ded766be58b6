"""The training engine: one code path from a laptop CPU to torchrun on many nodes.

Responsibilities: data (with a resumable, per-epoch reseeded sampler), paired augmentation on the
device, bf16 autocast on GPU, gradient accumulation and clipping, MultiStep / cosine schedules,
skipping non-finite steps, validation-based model selection (never the test split), atomic `last`
and `best` checkpoints with every piece of state needed for an exact resume, and logging.
"""
from __future__ import annotations

import math
import os
import random
import sys
import time
from contextlib import nullcontext
from typing import Any, Dict, Optional

import numpy as np
import torch
import torch.nn as nn
from torch.utils.data import DataLoader

from partformer import config as cfglib
from partformer.data import build_dataset
from partformer.data.collate import collate
from partformer.data.transforms import fixed_size, images_to_float
from partformer.engine import distributed as D
from partformer.engine.checkpoint import (all_finite, load_state_dict_strict, resume_checkpoint,
                                          save_on_main)
from partformer.engine.evaluator import (evaluate, first_sample, method_predictor,
                                         num_part_classes, per_image_metrics, readable_samples)
from partformer.engine.logger import EXIT_OK, ExperimentLogger
from partformer.engine.optim import build_optimizer, lr_factor, seed_everything  # noqa: F401
from partformer.engine.precision import autocast_context, resolve_precision  # noqa: F401 (API)
from partformer.engine.rundir import check_run_dir, open_run_dir, requested_run_dir
from partformer.engine.signals import critical_section
from partformer.methods import build_method
from partformer.metrics.protocols import applicable

CHECKPOINT_FORMAT = 1


class NonFiniteLossError(RuntimeError):
    pass


class TrainingInterrupted(Exception):
    """Ctrl-C during :meth:`Trainer.fit`: ``last.pt`` was saved at ``step`` (``path``)."""

    def __init__(self, step: int, path: Optional[str]):
        super().__init__(f"interrupted at step {step}")
        self.step, self.path = step, path


# at most this many skipped file names are kept in checkpoints and the run summary (all are counted)
MAX_SKIPPED_NAMES = 100


def model_collection(cfg) -> str:
    """The W&B model artifact of an experiment: one collection per ``experiment.name``."""
    return f"{cfg.experiment.name}-model"


class TrainStep(nn.Module):
    """A method's model and training objective as one module (what DDP wraps, so that the
    gradients of every forward the objective runs are synchronised):
    ``forward(batch, generator) -> {name: scalar, "total"}``. Checkpoints hold ``model`` only."""

    def __init__(self, model: nn.Module, objective: nn.Module):
        super().__init__()
        self.model = model
        self.objective = objective

    def forward(self, batch: Dict[str, Any], generator: Optional[torch.Generator] = None):
        return self.objective(self.model, batch, generator)


def build_training(cfg, device: torch.device):
    """What a training run trains, from ``cfg``: ``(method, model, step, optimizer)`` with the
    method's model and objective on ``device`` (compiled with ``train.compile``), ``step`` their
    :class:`TrainStep` and the optimiser over the method's parameter groups. The trainer and the
    speed harness (engine/profiling.py) build through this one function."""
    method = build_method(cfg)
    if not method.trainable:
        raise cfglib.ConfigError(
            f"method.name={method.name} is training-free (it is fitted, not trained); evaluate it "
            f"with: python tools/eval.py --method {method.name}")
    model = method.build_model().to(device)
    objective = method.build_objective().to(device)
    compile_modules(cfg, model, objective)
    optimizer = build_optimizer(cfg.train, method.param_groups(model))
    return method, model, TrainStep(model, objective), optimizer


def compile_modules(cfg, *modules: torch.nn.Module) -> None:
    """``train.compile``: compile each module's forward in place (``nn.Module.compile``: the
    parameters, their names and checkpoints are unchanged; the first steps pay for compiling)."""
    if cfg.train.compile:
        for m in modules:
            m.compile()


def cached_dataset(cfg, dataset, split: str, verbose: bool = True):
    """``dataset`` served from its uint8 image cache in ``data.cache`` (partformer/data/cache.py),
    which rank 0 builds first if it does not exist yet. The returned dataset's ``build_seconds``
    is the time spent building (``None``: it existed)."""
    from partformer.data.cache import ImageCache, build_image_cache

    seconds = None
    if D.is_main_process():
        seconds = build_image_cache(dataset, cfg.data, split, cfg.data.cache,
                                    num_workers=cfg.data.num_workers, verbose=verbose)
    D.barrier()
    cache = ImageCache(dataset, cfg.data, split, cfg.data.cache)
    cache.build_seconds = seconds
    return cache


def build_train_loader(cfg, dataset, sampler, device: torch.device) -> DataLoader:
    """The training ``DataLoader``: ``data.num_workers`` workers that stay alive across epochs
    (no re-forking, and an image cache stays open), pinned host memory on CUDA so that the copy
    to the device can overlap compute."""
    workers = cfg.data.num_workers
    return DataLoader(dataset, batch_size=cfg.train.batch_size, sampler=sampler,
                      num_workers=workers, collate_fn=collate, drop_last=True,
                      pin_memory=device.type == "cuda", persistent_workers=workers > 0,
                      worker_init_fn=worker_init if workers > 0 else None)


def worker_init(_worker_id: int) -> None:
    """One OpenCV thread per loader worker: the workers are the parallelism, and OpenCV's own
    thread pool per worker would oversubscribe the cores."""
    import cv2
    cv2.setNumThreads(1)


def device_batch(batch: Dict[str, Any], keys, device: torch.device) -> Dict[str, Any]:
    """What a training step sees: ``image`` as float in [0, 1] on ``device`` (uint8 batches, e.g.
    from the image cache, are converted there) and the method's other ``keys``."""
    out = {"image": images_to_float(batch["image"].to(device, non_blocking=True))}
    for k in keys:
        v = batch[k]
        out[k] = v.to(device, non_blocking=True) if torch.is_tensor(v) else v
    return out


def training_losses(step: nn.Module, batch: Dict[str, Any],
                    generator: Optional[torch.Generator] = None,
                    amp_dtype: Optional[torch.dtype] = None) -> Dict[str, torch.Tensor]:
    """The forward half of a training step: the method's objective (``step``, a
    :class:`TrainStep` or its DDP wrapper) on ``batch`` (see :func:`device_batch`) under
    ``amp_dtype`` autocast. The objective computes its loss terms in float32; nothing here reads a
    value back to the host."""
    with autocast_context(batch["image"].device, amp_dtype):
        return step(batch, generator)


class RunningLosses:
    """Sums of the loss components over micro-batches, kept on the device: adding a batch's losses
    reads nothing back to the host; :meth:`means` does, once per logging interval."""

    def __init__(self):
        self.names: Optional[list] = None
        self.sums: Optional[torch.Tensor] = None
        self.count = 0

    def add(self, losses: Dict[str, torch.Tensor]) -> None:
        values = torch.stack([v.detach().float() for v in losses.values()])
        if self.sums is None:
            self.names, self.sums = list(losses), values
        else:
            self.sums = self.sums + values
        self.count += 1

    def means(self) -> Dict[str, float]:
        if self.sums is None:
            return {}
        return dict(zip(self.names, (self.sums / self.count).tolist()))


class Trainer:
    """Build with a resolved :class:`partformer.config.Config`; call :meth:`fit`."""

    def __init__(self, cfg, run_dir: Optional[str] = None, resume: Optional[str] = None,
                 verbose: bool = True, overwrite: bool = False, init=None):
        """``init``: ``(state_dict, source)`` of a model to start from (``train --model``):
        loaded strictly into the freshly built model before anything is written."""
        self.cfg = cfg
        self.verbose = verbose
        self.device = D.init_distributed(cfg.train.device)
        self.rank, self.world = D.get_rank(), D.get_world_size()
        if cfg.train.threads > 0:
            torch.set_num_threads(cfg.train.threads)
        seed_everything(cfg.experiment.seed)
        requested = requested_run_dir(run_dir, cfg)
        if requested:   # before anything is built: a run directory in use is refused at once
            check_run_dir(requested, bool(resume), overwrite, "tools/train.py")
        self.amp_dtype = resolve_precision(cfg.train.precision, self.device)
        self._build_data()
        self._build_optimisation()
        self._init_state()
        if init is not None:
            self._load_init(*init)
        if resume:
            self.load_resume(resume)
        self._mark_boundary()
        self.run_dir = open_run_dir(requested, cfg, overwrite and not resume, verbose)
        if D.is_main_process():
            cfglib.save_config(cfg, os.path.join(self.run_dir, "config.yaml"), "train")
        self.logger = ExperimentLogger(self.run_dir, cfg.logging.wandb, cfglib.to_dict(cfg, "train"),
                                       os.path.basename(self.run_dir), resume_id=self.wandb_id,
                                       keep_rows=self._metrics_rows)
        # the run summary shows the best validation value of the selection metric, not the last
        self.logger.define_best(f"val/{cfg.train.select_metric}", "max")
        self.viz_batch = self._fixed_val_batch()


    def _build_data(self) -> None:
        """The training split (from the image cache with ``data.cache``), the validation split,
        the resumable sampler and loader, and the epoch's step counts."""
        cfg = self.cfg
        self.train_set = build_dataset(cfg.data, cfg.data.train_split)
        if len(self.train_set) < cfg.train.batch_size * self.world:
            raise cfglib.ConfigError(
                f"the {cfg.data.train_split} split has {len(self.train_set)} images, fewer than "
                f"one batch ({cfg.train.batch_size} x {self.world} ranks); lower train.batch_size")
        if cfg.data.cache:
            self.train_set = cached_dataset(cfg, self.train_set, cfg.data.train_split,
                                            verbose=self.verbose)
        self.val_set = build_dataset(cfg.data, cfg.data.val_split) if cfg.data.val_split else None
        self._check_batch_keys()
        self._check_select_metric()
        self.sampler = D.TrainSampler(len(self.train_set), seed=cfg.experiment.seed)
        self.loader = build_train_loader(cfg, self.train_set, self.sampler, self.device)
        micro = len(self.sampler) // cfg.train.batch_size
        if micro < cfg.train.grad_accum:
            raise cfglib.ConfigError(f"train.grad_accum={cfg.train.grad_accum} is more than the "
                                     f"{micro} micro-batches of one epoch; lower it")
        self.steps_per_epoch = micro // cfg.train.grad_accum
        # an incomplete accumulation group at the end of an epoch is dropped (as drop_last drops
        # an incomplete batch): its gradients would otherwise leak into the next epoch's first step
        self.micro_per_epoch = self.steps_per_epoch * cfg.train.grad_accum
        self.total_steps = cfg.train.max_steps or cfg.train.epochs * self.steps_per_epoch

    def _build_optimisation(self) -> None:
        """The method's model and objective, optimiser, schedule, gradient scaler, DDP wrapper."""
        cfg = self.cfg
        self.method, self.model, self.step_module, self.optimizer = build_training(cfg,
                                                                                 self.device)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_factor(cfg.train.scheduler, cfg.train.lr, self.steps_per_epoch,
                                      self.total_steps))
        self.scaler = torch.amp.GradScaler("cuda", enabled=self.amp_dtype == torch.float16)
        self.ddp_step = self.step_module
        if self.world > 1:
            self.ddp_step = torch.nn.parallel.DistributedDataParallel(
                self.step_module,
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
                find_unused_parameters=False)

    def _init_state(self) -> None:
        """The counters a checkpoint stores (a fresh run's values; ``load_resume`` overwrites)."""
        self.epoch = 0
        self.step = 0                 # optimiser steps done
        self.micro_in_epoch = 0       # micro-batches consumed in the current epoch
        self.best_value = -float("inf")
        self.best_epoch = -1
        self.nonfinite_streak = 0
        self.nonfinite_total = 0
        self.skipped_images = 0
        self.skipped_files: list = []
        self.wandb_id = None
        self.init_from: Optional[str] = None   # train --model: the weights it started from
        self._metrics_rows: Optional[int] = None
        self._group_finite: Optional[torch.Tensor] = None
        self._lines = None            # plain progress lines off a terminal (during fit)

    def _check_batch_keys(self) -> None:
        """Fail before training when the dataset lacks what the method's step reads (e.g. the
        image-level class labels of the class-supervised methods)."""
        method = build_method(self.cfg)
        method.check_data(self.train_set)
        keys = method.batch_keys
        sample = first_sample(self.train_set) if keys else None
        missing = [k for k in keys if sample is not None and k not in sample]
        if missing:
            raise cfglib.ConfigError(
                f"method.name={self.cfg.method.name} trains on {missing} of every image, which "
                f"the {self.cfg.data.train_split} split of data.name={self.cfg.data.name} does not "
                "provide; use a dataset that has them")

    def _check_select_metric(self) -> None:
        """Fail before training, not at the first validation, when ``train.select_metric`` is not
        computed on the validation split."""
        if self.val_set is None:
            return
        cfg = self.cfg
        available = applicable(first_sample(self.val_set), cfg.data.resize,
                               getattr(self.val_set, "regression_protocol", None),
                               has_regressor_split=False)
        if cfg.train.select_metric not in available:
            raise cfglib.ConfigError(
                f"train.select_metric={cfg.train.select_metric!r} is not computed on the "
                f"{cfg.data.val_split} split of {cfg.data.name} (validation runs no regression "
                f"protocol); choose one of {available}, e.g. "
                f"train.select_metric={available[0] if available else '...'}")

    def _load_init(self, state: Dict[str, torch.Tensor], source: str) -> None:
        """Start from ``state`` (a model's weights), strictly: a model of another architecture
        is one error naming the first differences and the fix."""
        from partformer.engine.checkpoint import CheckpointError
        own = self.model.state_dict()
        missing = [k for k in own if k not in state]
        unexpected = [k for k in state if k not in own]
        shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
                  if k in state and tuple(state[k].shape) != tuple(v.shape)]
        if missing or unexpected or shapes:
            found = "; ".join(f"{len(v)} {name} (e.g. {v[0]})" for name, v in
                              (("missing keys", missing), ("unexpected keys", unexpected),
                               ("shape mismatches", shapes)) if v)
            raise CheckpointError(
                f"--model {source} does not fit the architecture of this run's config "
                f"(method.name={self.cfg.method.name}, model.num_parts={self.cfg.model.num_parts}"
                f", model.encoder.name={self.cfg.model.encoder.name}): {found}. Train with the "
                "config the model was trained with (leave out --config to use its own), or "
                "without --model")
        load_state_dict_strict(self.model, state, source=source)
        self.init_from = source
        if self.verbose and D.is_main_process():
            print(f"initialised from {source}", file=sys.stderr)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> Dict[str, Any]:
        return {
            "format": CHECKPOINT_FORMAT,
            "method": self.method.name,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "epoch": self.epoch, "step": self.step, "micro_in_epoch": self.micro_in_epoch,
            "best_value": self.best_value, "best_epoch": self.best_epoch,
            "nonfinite_total": self.nonfinite_total, "skipped_images": self.skipped_images,
            "skipped_files": list(self.skipped_files),
            "rng": {"torch": torch.get_rng_state(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                    "numpy": _numpy_state(), "python": _python_state()},
            "config": cfglib.to_yaml(self.cfg, "train"),
            # where a relative data.root pointed when training ran (tools resolve it with this)
            "data_root": os.path.abspath(self.cfg.data.root), "cwd": os.getcwd(),
            "wandb_id": getattr(self.logger, "wandb_id", None) if hasattr(self, "logger") else None,
            "init_from": self.init_from,
            # metrics.jsonl rows written so far: a resumed run drops the rows after them
            "metrics_rows": self.logger.rows if hasattr(self, "logger") else 0,
        }

    def save(self, name: str) -> Optional[str]:
        """Atomically write ``<run_dir>/<name>.pt`` (rank 0). Refuses to write a model with
        non-finite weights, so a diverged state never replaces a good checkpoint. The check runs
        on every rank (DDP keeps the weights identical), so all ranks stop together."""
        if not all_finite(self.model):
            raise NonFiniteLossError(f"refusing to write {name}.pt: the model has non-finite "
                                     "weights; the previous checkpoint is kept")
        return save_on_main(self.state_dict, self.run_dir, name)

    def load_resume(self, path: str) -> None:
        path, ckpt = resume_checkpoint(path, ("model", "optimizer", "scheduler", "step", "epoch"),
                                       "tools/train.py")
        load_state_dict_strict(self.model, ckpt["model"], source=path)
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.epoch, self.step = int(ckpt["epoch"]), int(ckpt["step"])
        self.micro_in_epoch = int(ckpt["micro_in_epoch"])
        self.best_value, self.best_epoch = float(ckpt["best_value"]), int(ckpt["best_epoch"])
        self.nonfinite_total = int(ckpt.get("nonfinite_total", 0))
        self.skipped_images = int(ckpt.get("skipped_images", 0))
        self.skipped_files = list(ckpt.get("skipped_files", []))
        self._metrics_rows = ckpt.get("metrics_rows")
        rng = ckpt["rng"]
        torch.set_rng_state(rng["torch"])
        if torch.cuda.is_available() and rng.get("cuda"):
            torch.cuda.set_rng_state_all(rng["cuda"])
        _set_numpy_state(rng["numpy"])
        _set_python_state(rng["python"])
        self.wandb_id = ckpt.get("wandb_id")
        self.init_from = ckpt.get("init_from")
        if D.is_main_process() and self.verbose:
            print(f"resumed from {path}: epoch {self.epoch}, step {self.step}")

    # ------------------------------------------------------------------ training
    def _aug_generator(self, micro_index: int) -> torch.Generator:
        # augmentation randomness is a function of (seed, micro-batch, rank): resume-exact
        seed = (self.cfg.experiment.seed * 1_000_003 + micro_index) * 4099 + self.rank
        return torch.Generator().manual_seed(seed % (2 ** 63))

    def train_step_losses(self, batch: Dict[str, Any], micro_index: int
                          ) -> Dict[str, torch.Tensor]:
        return training_losses(self.ddp_step, batch, self._aug_generator(micro_index),
                               self.amp_dtype)

    def fit(self) -> Dict[str, Any]:
        """Train until ``train.max_steps`` / ``train.epochs``; returns the run summary.

        Ctrl-C (``KeyboardInterrupt``) saves ``last.pt`` at the last completed optimiser step
        (a half-accumulated step is discarded, its BatchNorm statistics restored) and raises
        :class:`TrainingInterrupted`; ``--resume`` continues from there.
        """
        try:
            return self._fit()
        except KeyboardInterrupt:
            raise TrainingInterrupted(self.step, self._save_interrupted()) from None

    def _mark_boundary(self) -> None:
        """Remember the state at an optimiser-step boundary (what an interrupt rolls back to)."""
        self._boundary = (self.epoch, self.micro_in_epoch, self.skipped_images,
                          len(self.skipped_files))
        self._group_buffers = None

    def _save_interrupted(self) -> Optional[str]:
        self.optimizer.zero_grad(set_to_none=True)
        if self._group_buffers is not None:  # forward passes of an unfinished step changed them
            with torch.no_grad():
                for b, saved in zip(self.step_module.buffers(), self._group_buffers):
                    b.copy_(saved)
        self.epoch, self.micro_in_epoch, self.skipped_images, n = self._boundary
        del self.skipped_files[n:]
        try:
            return self.save("last")
        except NonFiniteLossError:  # the previous last.pt is kept
            return None

    def _skipped_names(self, epoch_indices, micro: int, batch) -> None:
        """Name the images dropped from micro-batch ``micro`` of this epoch (their sampler indices
        minus the indices that came back)."""
        bs = self.cfg.train.batch_size
        kept = set(batch["index"].tolist()) if "index" in batch else set()
        name = getattr(self.train_set, "image_path", None)
        for i in epoch_indices[micro * bs:(micro + 1) * bs]:
            if i not in kept and len(self.skipped_files) < MAX_SKIPPED_NAMES:
                self.skipped_files.append(name(i) if name is not None else f"index {i}")

    def _fit(self) -> Dict[str, Any]:
        t0 = time.time()
        done = self.step >= self.total_steps
        self._lines = self._plain_progress()
        try:
            while not done and self.epoch < self._last_epoch():
                done = self._train_epoch()
                self._end_epoch(done)
        finally:
            if self._lines is not None:
                self._lines.close()
        return self._summary(time.time() - t0)

    def _plain_progress(self):
        """Off a terminal (rank 0, ``logging.progress``): a plain line every
        ``logging.progress_every`` seconds with step, epoch, loss, images/s and ETA
        (partformer/engine/progress.py); on a terminal the epoch's tqdm bar shows instead."""
        from partformer.engine import progress
        if not (self.cfg.logging.progress and D.is_main_process()) or sys.stderr.isatty():
            return None
        progress.configure(self.cfg.logging.progress_every)
        cfg = self.cfg.train
        return progress.PlainProgress(self.total_steps, "train", initial=self.step, unit="step",
                                      images=cfg.batch_size * cfg.grad_accum * self.world)

    def _last_epoch(self) -> int:
        """Epochs to run: ``train.epochs``, more if ``train.max_steps`` needs them."""
        return max(self.cfg.train.epochs, math.ceil(self.total_steps / self.steps_per_epoch))

    def _train_epoch(self) -> bool:
        """The rest of the current epoch (all of it unless resumed mid-epoch): micro-batches,
        every ``train.grad_accum`` of them one optimiser step. Returns whether the run has done its
        last step."""
        cfg = self.cfg
        self.model.train()
        self.sampler.set_epoch(self.epoch, skip=self.micro_in_epoch * cfg.train.batch_size)
        epoch_indices = list(self.sampler)
        self._mark_boundary()
        bar = self._epoch_bar()
        self._group_finite = None
        running = RunningLosses()
        done = False
        for j, batch in enumerate(self.loader):
            if self.micro_in_epoch >= self.micro_per_epoch:
                break
            losses = self._micro_batch(j, batch, epoch_indices, bar)
            if losses is None:        # every image of the micro-batch was skipped
                continue
            running.add(losses)
            if self.micro_in_epoch % cfg.train.grad_accum != 0:
                continue              # the accumulation group is not complete yet
            if not self._optimizer_step():
                continue              # a non-finite loss: the step was skipped
            if self.step % cfg.train.log_every == 0 or self.step == 1:
                self._log_losses(running, bar)
                running = RunningLosses()
            if self._lines is not None:
                self._lines.set_postfix(epoch=self.epoch)
                self._lines.update(1)
            if self.step >= self.total_steps:
                done = True
                break
        if bar is not None:
            bar.close()
        return done

    def _epoch_bar(self):
        """A tqdm bar over the epoch's micro-batches (rank 0 on a terminal), else None."""
        if not (self.cfg.logging.progress and D.is_main_process() and sys.stderr.isatty()):
            return None
        from tqdm import tqdm
        return tqdm(total=self.micro_per_epoch, initial=self.micro_in_epoch,
                    desc=f"epoch {self.epoch}", dynamic_ncols=True, leave=False)

    def _micro_batch(self, j: int, batch, epoch_indices, bar) -> Optional[Dict[str, torch.Tensor]]:
        """Forward and backward of micro-batch ``j`` of the epoch (gradients accumulate; DDP
        reduces them on the group's last one); its losses, or None when all its images were
        skipped. Counts skipped images and notes whether the loss is finite."""
        accum = self.cfg.train.grad_accum
        if self.micro_in_epoch % accum == 0:
            # buffers (BatchNorm running statistics) change in the forward pass; a skipped (or
            # interrupted) step restores them, so it leaves no trace
            self._group_buffers = [b.detach().clone() for b in self.step_module.buffers()]
        if int(batch["num_skipped"]):
            self.skipped_images += int(batch["num_skipped"])
            self._skipped_names(epoch_indices, j, batch)
        micro_index = self.epoch * self.micro_per_epoch + self.micro_in_epoch
        self.micro_in_epoch += 1
        if bar is not None:
            bar.update(1)
        if "image" not in batch:
            return None
        step_batch = device_batch(batch, self.method.batch_keys, self.device)
        sync = (self.micro_in_epoch % accum == 0) or self.world == 1
        ctx = self.ddp_step.no_sync() if (not sync and self.world > 1) else nullcontext()
        with ctx:
            losses = self.train_step_losses(step_batch, micro_index)
            self.scaler.scale(losses["total"] / accum).backward()
        self._note_finite(losses["total"])
        return losses

    def _note_finite(self, total: torch.Tensor) -> None:
        """AND whether ``total`` is finite (on every rank) into the group's flag. Kept on the
        training device (NCCL reduces CUDA tensors only): the host reads it once per optimiser
        step, in :meth:`_optimizer_step`."""
        finite = torch.isfinite(total.detach()).float().reshape(1)
        if D.get_world_size() > 1:
            torch.distributed.all_reduce(finite, op=torch.distributed.ReduceOp.MIN)
        self._group_finite = finite if self._group_finite is None else torch.minimum(
            self._group_finite, finite)

    def _optimizer_step(self) -> bool:
        """Apply the accumulated gradients (clipped with ``train.grad_clip``) and advance the
        schedule; or, when a loss of the group was not finite, skip the step. The one host read
        of the step (whether to apply it) is queued after the backward, so the device stays
        busy. Returns whether the step was applied."""
        bad = self._group_finite.item() < 1
        self._group_finite = None
        if bad:
            self._skip_nonfinite_step()
            return False
        self.nonfinite_streak = 0
        if self.cfg.train.grad_clip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(
                [p for p in self.model.parameters() if p.requires_grad], self.cfg.train.grad_clip)
        # a stop signal waits until the update and the counters that record it are both done
        with critical_section():
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.optimizer.zero_grad(set_to_none=True)
            self.scheduler.step()
            self.step += 1
            self._mark_boundary()
        return True

    def _skip_nonfinite_step(self) -> None:
        """Drop the group's gradients and buffer updates, count it, and stop after
        ``train.max_nonfinite`` in a row."""
        self.optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            for b, saved in zip(self.step_module.buffers(), self._group_buffers):
                b.copy_(saved)
        self.nonfinite_streak += 1
        self.nonfinite_total += 1
        self._mark_boundary()
        limit = self.cfg.train.max_nonfinite
        msg = (f"non-finite loss at step {self.step} (epoch {self.epoch}); step skipped "
               f"({self.nonfinite_streak} in a row, limit {limit})")
        if D.is_main_process():
            print(msg, file=sys.stderr)
        self.logger.log({"train/nonfinite_skipped": self.nonfinite_total}, self.step)
        if self.nonfinite_streak >= limit:
            raise NonFiniteLossError(
                msg + ". Stopping: lower train.lr, enable train.grad_clip, or use "
                "train.precision=fp32. The last good checkpoint is untouched.")

    def _log_losses(self, running: RunningLosses, bar) -> None:
        """The mean loss components since the last log, the learning rate and the epoch."""
        scal = {f"train/{k}": v for k, v in running.means().items()}
        scal["train/lr"] = self.optimizer.param_groups[0]["lr"]
        scal["train/epoch"] = self.epoch
        self.logger.log(scal, self.step)
        if bar is not None:
            bar.set_postfix(loss=f"{scal['train/total']:.4f}")
        if getattr(self, "_lines", None) is not None:
            self._lines.set_postfix(epoch=self.epoch, loss=float(scal["train/total"]))

    def _end_epoch(self, done: bool) -> None:
        """After an epoch (or the run's last step): every rank takes rank 0's buffers, the epoch
        counter moves on if the epoch was completed, validation runs when due (and at the end), and
        ``last.pt`` is written."""
        D.broadcast_buffers(self.model)   # every rank validates rank 0's (saved) model
        epoch_finished = self.micro_in_epoch >= self.micro_per_epoch
        with critical_section():
            if epoch_finished:
                self.epoch += 1
                self.micro_in_epoch = 0
            self._mark_boundary()
        if self.val_set is not None and (
                done or (epoch_finished and self.epoch % self.cfg.train.val_every == 0)):
            self.validate()
        self.save("last")
        D.barrier()

    def _summary(self, seconds: float) -> Dict[str, Any]:
        """The run summary (also sent to the logger) and the model artifact."""
        summary = {"steps": self.step, "epochs": self.epoch, "train_seconds": seconds,
                   "best_epoch": self.best_epoch, "best_value": self.best_value,
                   "select_metric": self.cfg.train.select_metric,
                   "nonfinite_skipped": self.nonfinite_total,
                   "skipped_images": self.skipped_images,
                   "skipped_files": list(self.skipped_files)}
        self.logger.summary({k: v for k, v in summary.items() if k != "skipped_files"})
        self._log_model_artifact()
        return summary

    def _log_model_artifact(self) -> None:
        """The selected model (``best.pt``, alias ``best``) and the last one (``last.pt``, alias
        ``latest``) as versions of the W&B model artifact named after the experiment
        (``experiment.name``: one collection per experiment, versions accumulate across runs);
        model-only files (model.safetensors + config.yaml), not the optimiser state."""
        from partformer.engine.checkpoint import load_checkpoint
        if self.logger.wandb is None:
            return
        for name, alias in (("best", "best"), ("last", "latest")):
            path = os.path.join(self.run_dir, f"{name}.pt")
            if not os.path.isfile(path):
                continue
            step = load_checkpoint(path).get("step", self.step)
            self.logger.log_model(path, model_collection(self.cfg), [alias], metadata={
                "step": step, "checkpoint": f"{name}.pt", "run_dir": self.run_dir,
                "method": self.cfg.method.name, "select_metric": self.cfg.train.select_metric,
                "best_value": self.best_value, "best_epoch": self.best_epoch})

    # ------------------------------------------------------------------ validation
    @torch.no_grad()
    def validate(self) -> Dict[str, Any]:
        cfg = self.cfg
        res = evaluate(method_predictor(self.method, self.model, self.device, self.amp_dtype),
                       self.val_set, cfg.model.num_parts, resize=cfg.data.resize,
                       batch_size=cfg.eval.batch_size, num_workers=cfg.data.num_workers)
        self.model.train()
        scal = {f"val/{k}": v["value"] for k, v in res.items()}
        self.logger.log(scal, self.step)
        if self.viz_batch is not None and D.is_main_process():
            self._log_val_masks()
        metric = cfg.train.select_metric
        value = res[metric]["value"]
        if D.is_main_process() and self.verbose:
            print(f"[val] epoch {self.epoch} step {self.step}: " + ", ".join(
                f"{k}={v['value']:.2f}" for k, v in res.items()))
        if value > self.best_value:
            with critical_section():   # best_value and best.pt change together
                self.best_value, self.best_epoch = value, self.epoch
                self.save("best")
        return res

    def _log_val_masks(self) -> None:
        """The fixed validation images: a mask-grid PNG in ``masks/`` and, in W&B, segmentation
        overlays (prediction and GT part masks, class labels) with a table of per-image metrics."""
        from partformer import viz
        cfg, batch = self.cfg, self.viz_batch
        maps = method_predictor(self.method, self.model, self.device,
                                self.amp_dtype)(batch).float().cpu()
        self.model.train()
        maps = viz.maps_to_size(maps, tuple(batch["image"].shape[-2:]))
        grid = viz.mask_grid(batch["image"], maps, batch.get("part_mask"),
                             max_items=cfg.logging.wandb.num_images)
        viz.save_png(os.path.join(self.run_dir, "masks", f"val_step{self.step:07d}.png"), grid)
        K = cfg.model.num_parts
        images = viz.to_uint8_images(batch["image"])
        if "keypoints" in batch:  # GT keypoints with their identity
            images = [viz.draw_keypoints(im, kp.numpy(), vis.numpy()) for im, kp, vis in
                      zip(images, batch["keypoints"], batch["keypoints_visible"])]
        gt = list(batch["part_mask"].numpy()) if "part_mask" in batch else None
        ncls = num_part_classes(self.val_set) if gt is not None else None
        self.logger.log_masks("val/masks", images, list(maps.argmax(1).numpy()), K, self.step,
                              ground_truth=gt, gt_names=getattr(self.val_set, "part_names", None),
                              rows=per_image_metrics(maps, batch, K, ncls),
                              ids=[self._image_name(int(i)) for i in batch["index"]])

    def _image_name(self, index: int) -> str:
        name = getattr(self.val_set, "image_path", None)
        return os.path.basename(name(index)) if name is not None else f"index {index}"

    def _fixed_val_batch(self):
        if self.val_set is None or not D.is_main_process():
            return None
        samples = readable_samples(self.val_set, self.cfg.logging.wandb.num_images)
        if not samples or not fixed_size(self.cfg.data.resize):
            return None
        return collate(samples)

    def close(self, exit_code: int = EXIT_OK) -> None:
        """Finish logging; ``exit_code`` is recorded in W&B (1 failed, 130 interrupted)."""
        self.logger.close(exit_code)


def _numpy_state():
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached": float(cached)}


def _set_numpy_state(s) -> None:
    np.random.set_state((s["name"], s["keys"].numpy().astype(np.uint32), s["pos"],
                         s["has_gauss"], s["cached"]))


def _python_state():
    version, internal, gauss = random.getstate()
    return {"version": version, "internal": list(internal), "gauss": gauss}


def _set_python_state(s) -> None:
    random.setstate((s["version"], tuple(s["internal"]), s["gauss"]))
