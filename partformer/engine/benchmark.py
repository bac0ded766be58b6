"""Speed and memory of a configuration: training steps and prediction on random images.

Numbers are measured, never asserted: `tools/benchmark.py` prints them and writes JSON so they can
be reported with the device they came from.
"""
from __future__ import annotations

import platform
import resource
import time
from typing import Any, Dict

import torch

from partformer.augment import PairedAugmentation
from partformer.losses import PartFormerCriterion
from partformer.models import build_model


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _peak_mib(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2 ** 20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def benchmark(cfg, device: torch.device, iters: int = 10, warmup: int = 2,
              amp_dtype=None) -> Dict[str, Any]:
    """Median seconds per training step (augment + forward + loss + backward + AdamW) and per
    prediction batch, images/s, and peak memory (CUDA allocator peak, or process max RSS on CPU)."""
    torch.manual_seed(cfg.experiment.seed)
    S, B = cfg.data.image_size, cfg.train.batch_size
    model = build_model(cfg.model, image_size=S).to(device)
    crit = PartFormerCriterion.from_config(cfg.loss, cfg.model.num_parts).to(device)
    aug = PairedAugmentation.from_config(cfg.augment)
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=cfg.train.lr)
    images = torch.rand(B, 3, S, S, device=device)
    ctx = (lambda: torch.autocast(device.type, dtype=amp_dtype)) if amp_dtype else \
        (lambda: torch.autocast(device.type, enabled=False))
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)

    def step():
        v1, v2, _, _ = aug(images)
        with ctx():
            out = model(v1, v2)
        loss = crit({k: (v.float() if torch.is_tensor(v) and v.is_floating_point() else v)
                     for k, v in out.items()})["total"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    def timed(fn, n):
        times = []
        for i in range(warmup + n):
            _sync(device)
            t0 = time.perf_counter()
            fn()
            _sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - t0)
        return sorted(times)[len(times) // 2]

    model.train()
    t_train = timed(step, iters)
    train_peak = _peak_mib(device)
    model.eval()
    with torch.no_grad():
        t_pred = timed(lambda: model.predict(images), iters)
    return {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda"
        else f"cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)",
        "torch": torch.__version__, "precision": str(amp_dtype or "fp32"),
        "image_size": S, "batch_size": B, "num_parts": cfg.model.num_parts,
        "encoder": cfg.model.encoder.name, "encoder_frozen": cfg.model.encoder.frozen,
        "params_total": sum(p.numel() for p in model.parameters()),
        "params_trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
        "train_step_s": t_train, "train_images_per_s": B / t_train,
        "predict_batch_s": t_pred, "predict_images_per_s": B / t_pred,
        "peak_memory_mib": train_peak,
        "peak_memory_kind": "cuda max_memory_allocated" if device.type == "cuda"
        else "process max RSS",
    }
