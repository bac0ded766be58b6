"""The pretraining loop: multi-crop DINO (+ dense term) on unlabeled images, with the engine's
conveniences: config + overrides, atomic ``last.pt`` / ``best.pt``, exact resume, tqdm, W&B
(offline by default), torchrun, and a k-means probe of the teacher's features on the validation
split that selects ``best.pt`` (the test split is never looked at).

Every random choice of step ``n`` (images, crops, colours) comes from generators seeded with
``(seed, n)``, so a resumed run continues exactly as an uninterrupted one.
"""
from __future__ import annotations

import copy
import json
import os
import sys
import time
from contextlib import nullcontext
from typing import Any, Dict, Iterator, List, Optional

import torch
import torch.nn as nn

from partformer import config as cfglib
from partformer.engine import distributed as D
from partformer.engine.checkpoint import (CheckpointError, load_checkpoint,
                                          load_state_dict_strict, resume_checkpoint, save_on_main)
from partformer.engine.logger import ExperimentLogger
from partformer.engine.rundir import check_run_dir, open_run_dir, requested_run_dir
from partformer.engine.signals import critical_section, deferred_interrupts
from partformer.engine.optim import (build_optimizer, cosine, lr_factor, no_decay_groups,
                                     seed_everything)
from partformer.engine.precision import resolve_precision
from partformer.engine.trainer import TrainingInterrupted
from partformer.models.encoder import build_encoder
from partformer.models.encoder import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from partformer.pretrain import crops as C
from partformer.pretrain.data import build_image_bank
from partformer.pretrain.dino import DenseDinoLoss, DinoLoss, ProjectionHead, ema_update

__all__ = ["PretrainNet", "Pretrainer", "OBJECTIVES", "export_encoder"]

OBJECTIVES = cfglib.PRETRAIN_OBJECTIVES
CHECKPOINT_FORMAT = "partformer-pretrain-1"
ENCODER_FORMAT = "partformer-encoder-1"


class PretrainNet(nn.Module):
    """Encoder + global head (on the spatial mean of the map) + dense head (per cell).

    ``forward(x [B, 3, H, W] normalised)`` -> ``(global logits [B, P], dense logits [B, P', h, w])``.
    """

    def __init__(self, encoder_cfg, image_size: int, p):
        super().__init__()
        enc = copy.deepcopy(encoder_cfg)
        enc.frozen = False
        self.backbone = build_encoder(enc, image_size=image_size)
        dim = self.backbone.embed_dim
        self.global_head = ProjectionHead(dim, p.out_dim, p.hidden_dim, p.bottleneck_dim)
        # the dense head runs on every cell of every crop: one hidden layer keeps it cheap
        self.dense_head = ProjectionHead(dim, p.dense_out_dim, p.dense_hidden_dim,
                                         p.bottleneck_dim, num_layers=2)

    def forward(self, x: torch.Tensor):
        fmap = self.backbone(x)
        return self.global_head(fmap.mean(dim=(2, 3))), self.dense_head(fmap)


def _check_crop_grid(cfg) -> None:
    """A ViT encoder's patch must divide the crop sizes it is trained on (before anything is
    built or written)."""
    p = cfglib.encoder_patch_size(cfg.model.encoder)
    if p is None:
        return
    sizes = [("pretrain.global_size", cfg.pretrain.global_size)]
    if cfg.pretrain.local_crops:
        sizes.append(("pretrain.local_size", cfg.pretrain.local_size))
    for key, size in sizes:
        if size % p:
            raise cfglib.ConfigError(
                f"config key `{key}` must be a multiple of the encoder's patch size {p} "
                f"({cfglib.encoder_patch_key(cfg.model.encoder)}), got {size}; use "
                f"{key}={max(p, size - size % p)}")


class Pretrainer:
    def __init__(self, cfg, run_dir: Optional[str] = None, resume: Optional[str] = None,
                 verbose: bool = True, overwrite: bool = False,
                 bank: Optional[torch.Tensor] = None):
        p = cfg.pretrain
        self.cfg, self.verbose = cfg, verbose
        self.device = D.init_distributed(cfg.train.device)
        self.rank, self.world = D.get_rank(), D.get_world_size()
        if cfg.train.threads > 0:
            torch.set_num_threads(cfg.train.threads)
        seed_everything(cfg.experiment.seed)
        requested = requested_run_dir(run_dir, cfg)
        if requested:   # before anything is built: a run directory in use is refused at once
            check_run_dir(requested, bool(resume), overwrite, "tools/pretrain.py")
        self.amp_dtype = resolve_precision(cfg.train.precision, self.device)
        _check_crop_grid(cfg)
        if cfg.train.batch_size % self.world:
            raise cfglib.ConfigError(f"train.batch_size={cfg.train.batch_size} (the global batch) "
                                     f"must be divisible by the {self.world} processes")

        # ``bank``: uint8 [N, S, S, 3] images to train on instead of the dataset's (the speed
        # harness); otherwise the unlabeled image bank of partformer/pretrain/data.py
        self.bank = bank if bank is not None else build_image_bank(
            cfg, cache_dir=p.cache_dir, progress=verbose and cfg.logging.progress)
        self.steps_per_epoch = max(1, len(self.bank) // cfg.train.batch_size)
        self.total_steps = cfg.train.max_steps or cfg.train.epochs * self.steps_per_epoch

        self.student = PretrainNet(cfg.model.encoder, p.global_size, p).to(self.device)
        self.teacher = copy.deepcopy(self.student)
        for q in self.teacher.parameters():
            q.requires_grad_(False)
        self.dino_loss = DinoLoss(p.out_dim, p.student_temp, p.center_momentum).to(self.device)
        self.dense_loss = DenseDinoLoss(p.dense_out_dim, p.student_temp, p.center_momentum,
                                        p.dense_targets, p.sinkhorn_eps,
                                        p.sinkhorn_iters).to(self.device)
        if cfg.train.scheduler.name not in ("cosine", "constant"):
            raise cfglib.ConfigError(f"pretraining supports train.scheduler.name=cosine|constant, "
                                     f"got {cfg.train.scheduler.name!r}")
        # DINO's groups: no weight decay on biases and norms (engine/optim.py)
        self.optimizer = build_optimizer(cfg.train, no_decay_groups(self.student))
        self._lr_factor = lr_factor(cfg.train.scheduler, cfg.train.lr, self.steps_per_epoch,
                                    self.total_steps)
        self.ddp_student = self.student
        if self.world > 1:
            if self.device.type == "cuda":  # SyncBatchNorm is GPU-only; on CPU each rank keeps
                self.student = nn.SyncBatchNorm.convert_sync_batchnorm(self.student)  # its own
            self.ddp_student = nn.parallel.DistributedDataParallel(
                self.student, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        mean = torch.tensor(IMAGENET_DEFAULT_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET_DEFAULT_STD).view(1, 3, 1, 1)
        self.mean, self.std = mean.to(self.device), std.to(self.device)
        self.global_spec = C.CropSpec(p.global_crops, p.global_size, tuple(p.global_scale))
        self.local_spec = C.CropSpec(p.local_crops, p.local_size, tuple(p.local_scale))
        unknown = set(p.photometric) - set(C.PHOTOMETRIC_DEFAULTS)
        if unknown:
            raise cfglib.ConfigError(f"unknown pretrain.photometric key(s) {sorted(unknown)}; "
                                     f"known: {sorted(C.PHOTOMETRIC_DEFAULTS)}")
        self.photo = {**C.PHOTOMETRIC_DEFAULTS, **p.photometric}

        self.step = 0
        self.best_value, self.best_step = -float("inf"), -1
        self.history: List[Dict[str, Any]] = []
        self.wandb_id = None
        self._metrics_rows: Optional[int] = None
        if resume:
            self.load_resume(resume)
        self.run_dir = open_run_dir(requested, cfg, overwrite and not resume, verbose)
        if D.is_main_process():
            cfglib.save_config(cfg, os.path.join(self.run_dir, "config.yaml"), "pretrain")
        self.logger = ExperimentLogger(self.run_dir, cfg.logging.wandb,
                                       cfglib.to_dict(cfg, "pretrain"),
                                       os.path.basename(self.run_dir), resume_id=self.wandb_id,
                                       keep_rows=self._metrics_rows, job_type="pretrain")
        self._probe_data = None

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> Dict[str, Any]:
        return {"format": CHECKPOINT_FORMAT, "student": self.student.state_dict(),
                "teacher": self.teacher.state_dict(), "dino_loss": self.dino_loss.state_dict(),
                "dense_loss": self.dense_loss.state_dict(),
                "optimizer": self.optimizer.state_dict(), "step": self.step,
                "best_value": self.best_value, "best_step": self.best_step,
                "history": json.dumps(self.history), "config": cfglib.to_yaml(self.cfg, "pretrain"),
                "wandb_id": getattr(getattr(self, "logger", None), "wandb_id", None),
                # metrics.jsonl rows written so far: a resumed run drops the rows after them
                "metrics_rows": self.logger.rows if hasattr(self, "logger") else 0}

    def save(self, name: str) -> Optional[str]:
        return save_on_main(self.state_dict, self.run_dir, name)

    def load_resume(self, path: str) -> None:
        path, ckpt = resume_checkpoint(path, ("student", "teacher", "optimizer", "step"),
                                       "tools/pretrain.py")
        load_state_dict_strict(self.student, ckpt["student"], source=f"{path} (student)")
        load_state_dict_strict(self.teacher, ckpt["teacher"], source=f"{path} (teacher)")
        self.dino_loss.load_state_dict(ckpt["dino_loss"])
        self.dense_loss.load_state_dict(ckpt["dense_loss"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.step = int(ckpt["step"])
        self.best_value, self.best_step = float(ckpt["best_value"]), int(ckpt["best_step"])
        self.history = json.loads(ckpt.get("history", "[]"))
        self.wandb_id = ckpt.get("wandb_id")
        self._metrics_rows = ckpt.get("metrics_rows")
        if self.verbose and D.is_main_process():
            print(f"resumed from {path} at step {self.step}", file=sys.stderr)

    # ------------------------------------------------------------------ one step
    def _generators(self, step: int):
        base = (self.cfg.experiment.seed * 1_000_003 + step) * 4099
        shared = torch.Generator().manual_seed(base % (2 ** 63))           # same on every rank
        local = torch.Generator().manual_seed((base + 1 + self.rank) % (2 ** 63))
        return shared, local

    def make_crops(self, images: torch.Tensor, generator: torch.Generator):
        """``images [B, 3, S, S]`` in [0, 1] -> (normalised global crops, their thetas, normalised
        local crops, their thetas); crops of one kind are stacked crop-major: ``[n * B, ...]``."""
        B = images.shape[0]
        out = []
        first = None
        for spec in (self.global_spec, self.local_spec):
            thetas, views = [], []
            for c in range(spec.count):
                # nested crops: every crop after the first is centred inside the first, so that
                # small (part-sized) crops of one image still show the same content
                within = first if self.cfg.pretrain.nested_crops else None
                theta = C.sample_boxes(B, spec, generator, within=within).to(images.device)
                if first is None:
                    first = theta.cpu()
                photo = dict(self.photo)
                if spec is self.global_spec:   # DINO: blur always on view 1, rarely on view 2,
                    photo["blur_p"] = 1.0 if c == 0 else 0.1           # which may be solarised
                    photo["solarize_p"] = 0.0 if c == 0 else 0.2
                v = C.photometric(C.crop(images, theta, spec.size), generator, **photo)
                views.append((v - self.mean) / self.std)
                thetas.append(theta)
            out += [torch.cat(views) if views else None, thetas]
        return out

    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.amp_dtype)

    def losses(self, images: torch.Tensor, generator: torch.Generator) -> Dict[str, torch.Tensor]:
        p = self.cfg.pretrain
        B = images.shape[0]
        g, g_theta, l, l_theta = self.make_crops(images, generator)
        temp = p.teacher_temp
        with torch.no_grad(), self._autocast():
            t_glob, t_dense = self.teacher(g)
        with self._autocast():
            s_glob, s_dense = self.ddp_student(g)
            if l is not None:
                l_glob, l_dense = self.ddp_student(l)
                s_glob = torch.cat([s_glob, l_glob])
        out = {"global": self.dino_loss(s_glob, t_glob, p.global_crops, temp)}
        if p.objective == "dino_dense":
            student_maps = list(s_dense.split(B)) + (list(l_dense.split(B)) if l is not None else [])
            thetas = g_theta + l_theta
            teacher_maps = list(t_dense.split(B))
            grids, valids = {}, {}
            for i, sm in enumerate(student_maps):
                for j in range(p.global_crops):
                    if i == j:
                        continue
                    grids[(i, j)], valids[(i, j)] = C.corresponding_points(
                        thetas[i], thetas[j], sm.shape[-2], sm.shape[-1])
            out["dense"] = self.dense_loss(student_maps, teacher_maps, grids, valids, temp)
        out["loss"] = p.global_weight * out["global"] + (
            p.dense_weight * out["dense"] if "dense" in out else 0.0)
        return out

    def batch_indices(self, step: int, shared: Optional[torch.Generator] = None) -> torch.Tensor:
        """Bank indices of this rank's share of step ``step``'s global batch (drawn with
        replacement from the ``(seed, step)`` generator, the same on every rank; rank ``r`` takes
        every ``world``-th)."""
        if shared is None:
            shared = self._generators(step)[0]
        idx = torch.randint(len(self.bank), (self.cfg.train.batch_size,), generator=shared)
        return idx[self.rank::self.world]

    def train_step(self) -> Dict[str, float]:
        """One optimiser step. A stop signal waits for its end: the forward pass already changes
        the BatchNorm statistics of student and teacher, so a step cut short could not be
        replayed exactly."""
        with critical_section():
            return self._train_step()

    def _train_step(self) -> Dict[str, float]:
        cfg, p = self.cfg, self.cfg.pretrain
        shared, local = self._generators(self.step)
        idx = self.batch_indices(self.step, shared)
        images = self.bank[idx].to(self.device).permute(0, 3, 1, 2).float().div_(255)
        lr = cfg.train.lr * self._lr_factor(self.step)
        wd = cosine(cfg.train.weight_decay, p.weight_decay_end, self.step, self.total_steps)
        for i, group in enumerate(self.optimizer.param_groups):
            group["lr"] = lr
            # the weight-decay schedule scales the decayed group; the no-decay group stays at 0
            # (checkpoints written before engine/optim.py have no wd_mult: group 0 decays)
            group["weight_decay"] = wd * group.get("wd_mult", 1.0 if i == 0 else 0.0)
        self.student.train()
        self.teacher.train()
        out = self.losses(images, local)
        if not torch.isfinite(out["loss"]):
            raise FloatingPointError(f"non-finite pretraining loss at step {self.step}; the last "
                                     "checkpoint is kept. Lower train.lr or raise the temperatures.")
        self.optimizer.zero_grad(set_to_none=True)
        out["loss"].backward()
        if cfg.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.student.parameters(), cfg.train.grad_clip)
        self.optimizer.step()
        m = cosine(p.ema_momentum, p.ema_momentum_end, self.step, self.total_steps)
        ema_update(self.teacher, self.student, m)
        # BatchNorm statistics come from this rank's share of the batch: rank 0's are kept
        # everywhere, so that every rank holds the same student and teacher
        D.broadcast_buffers(self.student)
        D.broadcast_buffers(self.teacher)
        self.step += 1
        return {**{k: float(v.detach()) for k, v in out.items()}, "lr": lr, "wd": wd, "ema": m}

    # ------------------------------------------------------------------ probe
    def probe(self) -> Dict[str, float]:
        """k-means of the teacher's frozen features (``pretrain.probe_parts + 1`` clusters, fitted
        on training images) scored against the validation split's ground truth."""
        from partformer.pretrain.probe import probe_encoder
        cfg = self.cfg
        encoder = self.teacher.backbone
        try:
            result = probe_encoder(encoder, cfg, self.device, cache=self._probe_cache())
        finally:
            self.teacher.train()
        return result

    def _probe_cache(self) -> Dict[str, Any]:
        if self._probe_data is None:
            self._probe_data = {}
        return self._probe_data

    # ------------------------------------------------------------------ loop
    def fit(self, until: Optional[int] = None) -> Dict[str, Any]:
        """Train to ``train.max_steps`` (or ``until``, a step at which to stop early as an
        interruption would: the schedules still follow the full length).

        Ctrl-C (``KeyboardInterrupt``) saves ``last.pt`` at the last completed step and raises
        :class:`~partformer.engine.trainer.TrainingInterrupted`; ``--resume`` continues there."""
        try:
            return self._fit(until)
        except KeyboardInterrupt:
            raise TrainingInterrupted(self.step, self.save("last")) from None

    def _steps(self, stop: int) -> Iterator[Dict[str, float]]:
        """Train steps until ``stop``; a stop signal ends the loop between two steps (where the
        state is the one of a completed step) with ``KeyboardInterrupt``."""
        with deferred_interrupts() as stop_requested:
            while self.step < stop:
                yield self.train_step()
                if stop_requested():
                    raise KeyboardInterrupt

    def _fit(self, until: Optional[int]) -> Dict[str, Any]:
        cfg, p = self.cfg, self.cfg.pretrain
        stop = self.total_steps if until is None else min(int(until), self.total_steps)
        from partformer.engine import progress
        progress.configure(cfg.logging.progress_every)
        # a bar on a terminal, a plain line every logging.progress_every seconds off one
        bar = progress.make_progress(self.total_steps, "pretrain",
                                     enabled=cfg.logging.progress and self.verbose,
                                     initial=self.step, images=cfg.train.batch_size)
        t0, n0 = time.time(), self.step
        running: Dict[str, float] = {}
        count = 0          # steps in `running`: fewer than log_every right after a resume
        if self.step == 0 and p.probe_every > 0:
            self._probe_and_select()
        for stats in self._steps(stop):
            for k, v in stats.items():
                running[k] = running.get(k, 0.0) + v
            count += 1
            if bar is not None:
                bar.set_postfix(loss=float(stats["loss"]))
                bar.update(1)
            if self.step % cfg.train.log_every == 0 or self.step == self.total_steps:
                row = {f"pretrain/{k}": v / count for k, v in running.items()}
                row["pretrain/sec_per_step"] = (time.time() - t0) / max(1, self.step - n0)
                self.logger.log(row, self.step)
                running, count = {}, 0
            last = self.step == self.total_steps
            if p.probe_every > 0 and (self.step % p.probe_every == 0 or last):
                self._probe_and_select()
            if self.step % p.checkpoint_every == 0 or last:
                self.save("last")
        if bar is not None:
            bar.close()
        summary = {"steps": self.step, "best_step": self.best_step,
                   f"best_{p.select_metric}": self.best_value, "run_dir": self.run_dir}
        self.logger.summary(summary)
        return summary

    def _probe_and_select(self) -> None:
        p = self.cfg.pretrain
        D.broadcast_buffers(self.teacher)
        result = self.probe()
        row = {"step": self.step, **result}
        self.history.append(row)
        self.logger.log({f"probe/{k}": v for k, v in result.items()}, self.step)
        if D.is_main_process() and self.verbose:
            print(f"[probe] step {self.step}: " + ", ".join(f"{k} {v:.2f}" for k, v in result.items()),
                  flush=True)
        value = result.get(p.select_metric)
        if value is None:
            raise cfglib.ConfigError(f"pretrain.select_metric={p.select_metric!r} is not among the "
                                     f"probe's metrics {sorted(result)}")
        if value > self.best_value:
            self.best_value, self.best_step = float(value), self.step
            self.save("best")

    def close(self, exit_code: int = 0) -> None:
        self.logger.close(exit_code)


# ---------------------------------------------------------------------------------------- export
def export_encoder(checkpoint: str, out: str) -> Dict[str, Any]:
    """Write the teacher encoder of a pretraining checkpoint as a ``.safetensors`` file that
    ``model.encoder.weights`` loads (keys of the timm model), with its config and provenance in the
    file's metadata. Returns the metadata."""
    from safetensors.torch import save
    from partformer.fileio import atomic_open
    ckpt = load_checkpoint(checkpoint)
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{checkpoint} is not a pretraining checkpoint")
    prefix = "backbone.model."
    state = {k[len(prefix):]: v.contiguous() for k, v in ckpt["teacher"].items()
             if k.startswith(prefix)}
    import yaml
    cfg = yaml.safe_load(ckpt["config"])
    enc = dict(cfg["model"]["encoder"])
    enc.update(weights=None, pretrained=False, frozen=True)
    history = json.loads(ckpt.get("history", "[]"))
    probe = next((h for h in history if h["step"] == ckpt["step"]), None)
    meta = {"format": ENCODER_FORMAT, "encoder": json.dumps(enc), "step": str(ckpt["step"]),
            "image_size": str(cfg["pretrain"]["global_size"]), "probe": json.dumps(probe),
            "objective": cfg["pretrain"]["objective"], "seed": str(cfg["experiment"]["seed"])}
    with atomic_open(out, "wb", fsync=True) as f:
        f.write(save(state, metadata=meta))
    return meta
