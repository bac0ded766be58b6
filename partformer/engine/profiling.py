"""Speed of a configuration (``tools/benchmark.py``): the training step next to its floor,
evaluation, and the data pipeline. Numbers are measured and reported, never asserted.

What is timed (README "Performance"):

- **train** -- (a) the full training step exactly as :class:`~partformer.engine.trainer.Trainer`
  runs it (:func:`~partformer.engine.trainer.training_losses`: paired augmentation, model, losses;
  then backward and the AdamW step) and (b) its **floor**, the frozen encoder's forward over both
  views alone (``model.encode`` on the two views in one batch, under inference mode): the part of
  the step that no change to the rest can remove. The two are measured alternately in one process
  (floor then step, step then floor, ...), so that contention from other processes affects both
  alike, and the report's headline is their ratio (the median of the per-repetition ratios).
  Optionally (``flops``) one step and one floor are also run under
  ``torch.utils.flop_counter.FlopCounterMode``: the ratio of their FLOPs is the step / floor
  ratio to expect if every part of the step ran at the encoder's FLOP rate.
- **eval** -- (c) :func:`~partformer.engine.evaluator.evaluate` itself on ``batches`` batches of
  the config's evaluation split (or, when the dataset is not on disk, of random images with random
  keypoints and part / foreground masks, so every accumulating protocol runs), split per batch
  into ``data`` (waiting for the loader), ``predict`` and ``metrics`` (accumulation), plus
  ``compute`` (the scores, once).
- **data** -- (d) the training ``DataLoader`` alone (decode + resize + collate with
  ``data.num_workers`` workers), and the same from the uint8 image cache when ``data.cache`` is
  set (its one-off build time reported separately).

Times are wall-clock seconds with the device synchronised before each clock read; warm-up
repetitions are excluded; each entry reports the median, min, max, the interquartile range and
every value. ``cpu_per_wall`` (CPU seconds of this process per wall second) and the load average
show how much of the machine the run had.
"""
from __future__ import annotations

import os
import platform
import resource
import sys
import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from partformer import config as cfglib
from partformer.data.io import DatasetError
from partformer.engine.precision import (AUTOCAST_DTYPES, autocast_context, cpu_has_native_bf16,
                                         cpuinfo)

PARTS = ("train", "eval", "data")


# ------------------------------------------------------------------------------------ clocks
def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> Dict[str, float]:
    """Run ``fn`` once: ``{"wall": seconds, "cpu": process CPU seconds}`` (device synchronised)."""
    synchronize(device)
    w0, c0 = time.perf_counter(), time.process_time()
    fn()
    synchronize(device)
    return {"wall": time.perf_counter() - w0, "cpu": time.process_time() - c0}


class StageTimer:
    """Wall-clock seconds per named stage, one entry per occurrence (``stage(name)`` is a context
    manager; the device is synchronised at both ends). Passed to ``evaluate(timer=...)``."""

    def __init__(self, device: torch.device):
        self.device = device
        self.times: Dict[str, List[float]] = defaultdict(list)

    @contextmanager
    def stage(self, name: str):
        synchronize(self.device)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            synchronize(self.device)
            self.times[name].append(time.perf_counter() - t0)


def summary(values: Sequence[float]) -> Dict[str, Any]:
    """Median, min, max, interquartile range and the values themselves."""
    v = np.asarray(list(values), dtype=np.float64)
    if v.size == 0:
        return {"n": 0}
    q1, med, q3 = np.percentile(v, [25, 50, 75])
    return {"median": float(med), "min": float(v.min()), "max": float(v.max()),
            "iqr": float(q3 - q1), "n": int(v.size), "values": [float(x) for x in v]}


# ------------------------------------------------------------------------------ environment
def _cpu_model() -> str:
    names = cpuinfo().get("model name")
    return names[0] if names else (platform.processor() or platform.machine())


def environment(device: torch.device) -> Dict[str, Any]:
    """Device, library versions and the machine's load (contention) at the time of the call."""
    import cv2
    import kornia
    import timm

    from partformer.engine.allocator import allocator_tuned
    env: Dict[str, Any] = {
        "device": (torch.cuda.get_device_name(device) if device.type == "cuda"
                   else f"cpu: {_cpu_model()}"),
        "device_type": device.type,
        "torch_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "load_average_1_5_15": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "python": sys.version.split()[0], "platform": platform.platform(),
        "torch": torch.__version__, "timm": timm.__version__, "kornia": kornia.__version__,
        "opencv": cv2.__version__, "numpy": np.__version__,
        "malloc_tuned": allocator_tuned(),
    }
    env["cpu_native_bf16"] = cpu_has_native_bf16()
    if device.type == "cuda":
        env["cuda"] = torch.version.cuda
        env["cudnn"] = torch.backends.cudnn.version()
        env["capability"] = list(torch.cuda.get_device_capability(device))
    return env


def _peak_memory_mib(device: torch.device) -> Dict[str, Any]:
    if device.type == "cuda":
        return {"peak_memory_mib": torch.cuda.max_memory_allocated(device) / 2 ** 20,
                "peak_memory_kind": "cuda max_memory_allocated"}
    return {"peak_memory_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "peak_memory_kind": "process max RSS"}


# ------------------------------------------------------------------------------ (a) + (b)
def _count_cpu_attention_flops() -> None:
    """``FlopCounterMode`` has formulas for the CUDA attention kernels but not for the CPU one
    (``_scaled_dot_product_flash_attention_for_cpu``), so the encoder's attention would be missing
    from a CPU count; register torch's own SDPA formulas for it (once)."""
    from torch.utils import flop_counter as fc

    fwd = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
    bwd = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward
    if fwd in fc.flop_registry or fwd.default in fc.flop_registry:
        return

    @fc.register_flop_formula(fwd)
    def _forward(query, key, value, *args, out_shape=None, **kwargs) -> int:
        return fc.sdpa_flop_count(query, key, value)

    @fc.register_flop_formula(bwd)
    def _backward(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
        return fc.sdpa_backward_flop_count(grad_out, query, key, value)


def _training_setup(cfg, device: torch.device):
    """``(method, model, step, optimizer)`` as the trainer builds them, seeded."""
    from partformer.engine.trainer import build_training

    torch.manual_seed(cfg.experiment.seed)
    return build_training(cfg, device)


def measure_training(cfg, device: torch.device, setup=None,
                     amp_dtype: Optional[torch.dtype] = None, reps: int = 5, warmup: int = 1,
                     flops: bool = True) -> Dict[str, Any]:
    """(a) the training step and (b) its floor (the method's frozen part of the step: its
    encoder over what a step feeds it), alternately, ``warmup + reps`` times each. ``setup``:
    ``(method, model, step, optimizer)`` (default: built from ``cfg``)."""
    from partformer.engine.trainer import training_losses

    method, model, step_module, optimizer = setup or _training_setup(cfg, device)
    step_module.train()
    S, B = cfg.data.image_size, cfg.train.batch_size
    gen = torch.Generator().manual_seed(cfg.experiment.seed)
    images = torch.rand(B, 3, S, S, generator=gen).to(device)
    batch = {"image": images, **_random_batch_keys(method, B, device, gen)}

    def step() -> None:
        losses = training_losses(step_module, batch, gen, amp_dtype)
        losses["total"].backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def floor() -> None:
        with torch.inference_mode(), autocast_context(device, amp_dtype):
            method.floor(model, images)

    out: Dict[str, Any] = {}
    if flops:
        from torch.utils.flop_counter import FlopCounterMode
        _count_cpu_attention_flops()
        counts = {}
        for name, fn in (("floor", floor), ("step", step)):
            with FlopCounterMode(display=False) as fc:
                fn()
            counts[name] = int(fc.get_total_flops())
        out["flops"] = {"step": counts["step"], "floor": counts["floor"],
                        "step_over_floor": counts["step"] / max(counts["floor"], 1)}
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    walls: Dict[str, List[float]] = {"step": [], "floor": []}
    cpus: Dict[str, List[float]] = {"step": [], "floor": []}
    for i in range(warmup + reps):
        order = (("floor", floor), ("step", step)) if i % 2 == 0 else (("step", step),
                                                                         ("floor", floor))
        for name, fn in order:
            t = timed(fn, device)
            if i >= warmup:
                walls[name].append(t["wall"])
                cpus[name].append(t["cpu"] / t["wall"])
    ratios = [s / f for s, f in zip(walls["step"], walls["floor"])]
    out.update({
        "step_s": summary(walls["step"]), "floor_s": summary(walls["floor"]),
        "step_over_floor": summary(ratios),
        "cpu_per_wall": {k: summary(v)["median"] for k, v in cpus.items()},
        "train_images_per_s": B / float(np.median(walls["step"])),
        "params_total": sum(p.numel() for p in model.parameters()),
        "params_trainable": sum(p.numel() for p in model.parameters() if p.requires_grad),
    })
    out.update(_peak_memory_mib(device))
    return out


def _random_batch_keys(method, batch_size: int, device: torch.device,
                       generator: torch.Generator) -> Dict[str, torch.Tensor]:
    """Stand-ins for what a method's step reads besides the images (class labels)."""
    out = {}
    for key in method.batch_keys:
        if key == "label":
            out[key] = torch.randint(0, 2, (batch_size,), generator=generator).to(device)
        else:
            raise ValueError(f"the speed harness has no stand-in for the batch key {key!r} of "
                             f"method {method.name!r}")
    return out


# ------------------------------------------------------------------------------------- (c)
class RandomAnnotatedImages(Dataset):
    """Stand-in evaluation split for when the config's dataset is not on disk: random images
    ``[3, S, S]`` with ``num_keypoints`` random keypoints (80 % visible), a box, and random
    part / foreground masks (labels 0..3), so that every accumulating protocol runs (keypoint and
    pixel NMI / ARI, Hungarian mIoU, foreground IoU): the metrics' share is then an upper bound
    for a dataset with fewer annotations. Deterministic per index."""

    num_part_classes = 3

    def __init__(self, num_images: int, image_size: int, num_keypoints: int = 15, seed: int = 0):
        self.n, self.size, self.num_keypoints, self.seed = num_images, image_size, num_keypoints, seed

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> Dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(self.seed * 100_003 + i)
        S, P = self.size, self.num_keypoints
        part = torch.randint(0, self.num_part_classes + 1, (S, S), generator=g)
        return {"image": torch.rand(3, S, S, generator=g),
                "keypoints": torch.rand(P, 2, generator=g) * S,
                "keypoints_visible": torch.rand(P, generator=g) < 0.8,
                "bbox": torch.tensor([0.0, 0.0, float(S), float(S)]),
                "part_mask": part, "fg_mask": (part > 0).to(torch.uint8),
                "index": torch.tensor(i)}


def _eval_split(cfg, num_images: int):
    """The config's evaluation split (validation, else test), or random annotated images."""
    from partformer.data import build_dataset

    split = cfg.data.val_split or cfg.data.test_split
    try:
        return build_dataset(cfg.data, split, skip_bad_images=cfg.eval.skip_bad_images), \
            f"{cfg.data.name} {split} split ({cfg.data.root})"
    except DatasetError as e:
        if not _not_on_disk(e):
            raise
        first = str(e.__cause__).splitlines()[0]
        return RandomAnnotatedImages(num_images, cfg.data.image_size), \
            f"random images with keypoints and masks ({cfg.data.name} not on disk: {first})"


def measure_evaluation(cfg, device: torch.device, model: Optional[torch.nn.Module] = None,
                       amp_dtype: Optional[torch.dtype] = None, batches: int = 3,
                       warmup: int = 1) -> Dict[str, Any]:
    """(c) ``evaluate`` on ``warmup + batches`` batches of ``train.batch_size`` images; the
    warm-up batches are excluded from the per-batch statistics. ``model``: default built from
    ``cfg``."""
    from partformer.engine.evaluator import evaluate, method_predictor
    from partformer.methods import build_method

    if model is None:
        model = _training_setup(cfg, device)[1]
    B = cfg.train.batch_size
    n = B * (warmup + batches)
    dataset, source = _eval_split(cfg, n)
    timer = StageTimer(device)
    t0 = time.perf_counter()
    results = evaluate(method_predictor(build_method(cfg), model, device, amp_dtype), dataset,
                       cfg.model.num_parts,
                       resize=cfg.data.resize, batch_size=B, num_workers=cfg.eval.num_workers,
                       max_images=n, centroid_convention=cfg.eval.centroid_convention,
                       keypoint_lookup=cfg.eval.keypoint_lookup, timer=timer)
    total = time.perf_counter() - t0
    # batch i: its loader wait (the last "data" entry is the loader running out), prediction
    # and metric updates
    n_batches = len(timer.times["predict"])
    per_batch = {k: timer.times[k][:n_batches][warmup:] for k in ("data", "predict", "metrics")}
    med = {k: summary(v) for k, v in per_batch.items()}
    batch_total = sum(m.get("median", 0.0) for m in med.values())
    compute = sum(timer.times.get("compute", []))
    return {
        "source": source, "batch_size": B, "protocols": sorted(results),
        "data_s": med["data"], "predict_s": med["predict"], "metrics_s": med["metrics"],
        "compute_s": compute, "total_s": total,
        # metric accumulation per batch over the whole per-batch time (medians)
        "metrics_share": med["metrics"].get("median", 0.0) / batch_total if batch_total else None,
        "predict_images_per_s": B / med["predict"]["median"] if med["predict"].get("n") else None,
    }


# ------------------------------------------------------------------------------------- (d)
def _loader_times(cfg, dataset, device: torch.device, batches: int) -> Dict[str, Any]:
    from partformer.engine import distributed as D
    from partformer.engine.trainer import build_train_loader

    B = cfg.train.batch_size
    loader = build_train_loader(cfg, dataset, D.TrainSampler(len(dataset), seed=0), device)
    it = iter(loader)
    t0 = time.perf_counter()
    next(it)                                    # worker start-up and the first batch
    first = time.perf_counter() - t0
    waits = []
    for _ in range(batches):
        t0 = time.perf_counter()
        batch = next(it, None)
        if batch is None:
            break
        waits.append(time.perf_counter() - t0)
    del it, loader
    # throughput over all timed batches: single waits alternate between a prefetched batch
    # (~0) and one still being decoded, so their median would overstate it
    return {"first_batch_s": first, "batch_s": summary(waits),
            "images_per_s": B * len(waits) / sum(waits) if waits else None}


def measure_data(cfg, device: torch.device, batches: int = 20) -> Dict[str, Any]:
    """(d) the training loader alone, decoding, then (with ``data.cache``) from the cache."""
    from partformer.data import build_dataset

    split = cfg.data.train_split
    try:
        dataset = build_dataset(cfg.data, split)
    except DatasetError as e:
        if not _not_on_disk(e):
            raise
        return {"skipped": f"{cfg.data.name} is not on disk: {str(e.__cause__).splitlines()[0]}"}
    batches = min(batches, len(dataset) // cfg.train.batch_size - 1)
    out: Dict[str, Any] = {"source": f"{cfg.data.name} {split} split ({cfg.data.root})",
                           "num_workers": cfg.data.num_workers, "batches": batches,
                           "decode": _loader_times(cfg, dataset, device, batches)}
    if cfg.data.cache:
        from partformer.engine.trainer import cached_dataset
        cached = cached_dataset(cfg, dataset, split, verbose=False)
        out["cache"] = {"path": cached.path, "build_s": cached.build_seconds,
                        **_loader_times(cfg, cached, device, batches)}
    return out


# ----------------------------------------------------------------------------------- driver
def _not_on_disk(e: BaseException) -> bool:
    """A dataset error whose cause is a missing root or file (the harness then uses random data);
    any other layout error is the user's to fix."""
    return isinstance(e.__cause__, (FileNotFoundError, NotADirectoryError))


def profile(cfg, device: torch.device, parts: Sequence[str] = PARTS,
            amp_dtype: Optional[torch.dtype] = None, reps: int = 5, warmup: int = 1,
            eval_batches: int = 3, data_batches: int = 20, flops: bool = True) -> Dict[str, Any]:
    """Every requested part (:data:`PARTS`) -> one JSON-able dict (see the module docstring)."""
    unknown = [p for p in parts if p not in PARTS]
    if unknown:
        raise ValueError(f"unknown parts {unknown}; choose from {list(PARTS)}")
    res: Dict[str, Any] = {
        "environment": environment(device),
        "config": {"name": cfg.experiment.name, "dataset": cfg.data.name,
                   "image_size": cfg.data.image_size, "batch_size": cfg.train.batch_size,
                   "num_parts": cfg.model.num_parts, "encoder": cfg.model.encoder.name,
                   "encoder_frozen": cfg.model.encoder.frozen, "method": cfg.method.name,
                   "method_config": cfglib.to_dict(cfg.section()) if cfg.section() else None,
                   "precision": str(amp_dtype or "fp32"), "compile": cfg.train.compile,
                   "data_num_workers": cfg.data.num_workers, "data_cache": cfg.data.cache,
                   "eval_num_workers": cfg.eval.num_workers},
        "settings": {"reps": reps, "warmup": warmup, "eval_batches": eval_batches,
                     "data_batches": data_batches},
    }
    setup = _training_setup(cfg, device) if ("train" in parts or "eval" in parts) else None
    if "train" in parts:
        res["train"] = measure_training(cfg, device, setup, amp_dtype, reps, warmup, flops)
    if "eval" in parts:
        res["eval"] = measure_evaluation(cfg, device, setup[1], amp_dtype, eval_batches, warmup)
    if "data" in parts:
        res["data"] = measure_data(cfg, device, data_batches)
    res["environment"]["load_average_at_end"] = \
        list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return res


def _fmt(s: Dict[str, Any]) -> str:
    if not s or not s.get("n"):
        return "-"
    return f"{s['median']:.3f} s (min {s['min']:.3f}, max {s['max']:.3f}, n {s['n']})"


def format_report(res: Dict[str, Any]) -> str:
    """The human-readable summary that ``tools/benchmark.py`` prints."""
    env, c = res["environment"], res["config"]
    lines = [f"{c['name']}: {c['encoder']} at {c['image_size']} px, K = {c['num_parts']}, batch "
             f"{c['batch_size']}, {c['precision']}, compile={c['compile']}",
             f"device: {env['device']} ({env['torch_threads']} threads), torch {env['torch']}, "
             f"load average {env['load_average_1_5_15']} -> {env.get('load_average_at_end')}"]
    if "train" in res:
        t = res["train"]
        lines += [f"training step       {_fmt(t['step_s'])}",
                  f"floor (encoder)     {_fmt(t['floor_s'])}",
                  f"step / floor        {t['step_over_floor']['median']:.3f} (median of "
                  f"{t['step_over_floor']['n']} interleaved pairs, min "
                  f"{t['step_over_floor']['min']:.3f}, max {t['step_over_floor']['max']:.3f})"]
        if "flops" in t:
            f = t["flops"]
            lines.append(f"FLOPs step / floor  {f['step_over_floor']:.3f} ({f['step'] / 1e9:.1f} / "
                         f"{f['floor'] / 1e9:.1f} GFLOP)")
        lines.append(f"cpu per wall second step {t['cpu_per_wall']['step']:.2f}, floor "
                     f"{t['cpu_per_wall']['floor']:.2f}; peak memory "
                     f"{t['peak_memory_mib']:.0f} MiB ({t['peak_memory_kind']})")
    if "eval" in res:
        e = res["eval"]
        share = e["metrics_share"]
        lines += [f"eval source         {e['source']}",
                  f"eval per batch      data {_fmt(e['data_s'])}",
                  f"                    predict {_fmt(e['predict_s'])}",
                  f"                    metrics {_fmt(e['metrics_s'])}",
                  f"metrics share       {100 * share:.2f} % of the per-batch time" if share is not None
                  else "metrics share       -"]
    if "data" in res:
        d = res["data"]
        if "skipped" in d:
            lines.append(f"data                skipped: {d['skipped']}")
        else:
            for key in ("decode", "cache"):
                if key in d:
                    x = d[key]
                    extra = (f", built in {x['build_s']:.1f} s" if key == "cache" and x["build_s"]
                             else "")
                    lines.append(f"data ({key:6s})     {x['images_per_s']:.1f} images/s "
                                 f"({d['num_workers']} workers; batch {_fmt(x['batch_s'])}{extra})")
    return "\n".join(lines)


# ----------------------------------------------------------------------- precisions side by side
def gemm_peak(dtype: torch.dtype, device: torch.device, n: int = 2048) -> Callable[[], None]:
    """One ``n x n`` matrix product in ``dtype``: the machine's reachable rate in that precision
    (what the step's achieved GFLOP/s is compared with). Returns the timed function."""
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    return lambda: torch.matmul(a, b)


def compare_precisions(cfg, device: torch.device, precisions: Sequence[str], reps: int = 3,
                       warmup: int = 1, parts: Sequence[str] = ("train", "eval", "pretrain"),
                       pretrain_cfg=None, eval_batches: int = 2) -> Dict[str, Any]:
    """Every precision of ``precisions`` (fp32, bf16, fp16) side by side, interleaved: per
    repetition, for each precision in a rotating order, the training step, its floor and a
    2048 x 2048 matrix product (the GEMM peak of that precision, measured in the same run, so that
    "how far from the limit" is a number); then one evaluation per precision and, with
    ``pretrain_cfg``, the pretraining step. The FLOPs of one step and one floor are counted once
    (they do not depend on the precision). Speed-ups are relative to the first precision."""
    from torch.utils.flop_counter import FlopCounterMode

    from partformer.engine.trainer import training_losses

    unknown = [p for p in precisions if p not in AUTOCAST_DTYPES]
    if unknown:
        raise cfglib.ConfigError(f"--precisions: unknown {unknown}; choose from "
                                 f"{list(AUTOCAST_DTYPES)}")
    amp = {p: AUTOCAST_DTYPES[p] for p in precisions}
    S, B = cfg.data.image_size, cfg.train.batch_size
    gen = torch.Generator().manual_seed(cfg.experiment.seed)
    images = torch.rand(B, 3, S, S, generator=gen).to(device)
    fns: Dict[str, Dict[str, Callable[[], Any]]] = {}
    setups = {}
    if "train" in parts:
        for p in precisions:
            method, model, step_module, optimizer = setups[p] = _training_setup(
                _with_precision(cfg, p), device)
            step_module.train()
            batch = {"image": images, **_random_batch_keys(method, B, device, gen)}

            def step(step_module=step_module, optimizer=optimizer, batch=batch, a=amp[p]):
                losses = training_losses(step_module, batch, gen, a)
                losses["total"].backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)

            def floor(method=method, model=model, a=amp[p]):
                with torch.inference_mode(), autocast_context(device, a):
                    method.floor(model, images)

            fns[p] = {"step": step, "floor": floor}
    for p in precisions:
        fns.setdefault(p, {})["gemm"] = gemm_peak(amp[p] or torch.float32, device)
    out: Dict[str, Any] = {"precisions": list(precisions), "environment": environment(device)}
    if "train" in parts:
        _count_cpu_attention_flops()
        counts = {}
        for name in ("floor", "step"):
            with FlopCounterMode(display=False) as fc:
                fns[precisions[0]][name]()
            counts[name] = int(fc.get_total_flops())
        out["flops"] = counts
    walls: Dict[str, Dict[str, List[float]]] = {p: defaultdict(list) for p in precisions}
    order = list(precisions)
    for i in range(warmup + reps):
        for p in order:
            for name, fn in fns[p].items():
                t = timed(fn, device)["wall"]
                if i >= warmup:
                    walls[p][name].append(t)
        order = order[1:] + order[:1]
    base = precisions[0]
    n = 2048
    for p in precisions:
        r: Dict[str, Any] = {k: summary(v) for k, v in walls[p].items()}
        r["gemm_peak_gflops"] = 2 * n ** 3 / r["gemm"]["median"] / 1e9
        if "step" in r:
            r["step_over_floor"] = r["step"]["median"] / r["floor"]["median"]
            r["train_images_per_s"] = B / r["step"]["median"]
            r["step_gflops"] = out["flops"]["step"] / r["step"]["median"] / 1e9
            r["floor_gflops"] = out["flops"]["floor"] / r["floor"]["median"] / 1e9
            r["step_share_of_gemm_peak"] = r["step_gflops"] / r["gemm_peak_gflops"]
            r["speedup_step"] = walls[base]["step"] and (
                summary(walls[base]["step"])["median"] / r["step"]["median"])
            r["speedup_floor"] = summary(walls[base]["floor"])["median"] / r["floor"]["median"]
        out[p] = r
    if "eval" in parts:
        for p in precisions:
            model = setups[p][1] if p in setups else None
            e = measure_evaluation(_with_precision(cfg, p), device, model, amp[p],
                                   eval_batches, warmup)
            out[p]["eval_predict_s"] = e["predict_s"]
        for p in precisions:
            out[p]["speedup_eval_predict"] = (out[base]["eval_predict_s"]["median"]
                                              / out[p]["eval_predict_s"]["median"])
    if "pretrain" in parts and pretrain_cfg is not None:
        for p in precisions:
            out[p]["pretrain"] = measure_pretraining(_with_precision(pretrain_cfg, p), device,
                                                     reps, warmup)
        for p in precisions:
            out[p]["speedup_pretrain"] = (out[base]["pretrain"]["step_s"]["median"]
                                          / out[p]["pretrain"]["step_s"]["median"])
    out["environment"]["load_average_at_end"] = \
        list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    return out


def _with_precision(cfg, precision: str):
    import copy
    c = copy.deepcopy(cfg)
    c.train.precision = precision
    c.logging.wandb.mode = "disabled"
    return c


def measure_pretraining(cfg, device: torch.device, reps: int = 3, warmup: int = 1
                        ) -> Dict[str, Any]:
    """The self-supervised pretraining step of ``cfg`` (``tools/pretrain.py``: multi-crop
    views, student and EMA teacher, the DINO losses, AdamW) on random images, in images/s."""
    import tempfile

    from partformer.pretrain.trainer import Pretrainer
    p = cfg.pretrain
    gen = torch.Generator().manual_seed(0)
    bank = torch.randint(0, 256, (max(2 * cfg.train.batch_size, 64), p.source_size,
                                  p.source_size, 3), dtype=torch.uint8, generator=gen)
    with tempfile.TemporaryDirectory() as tmp:
        trainer = Pretrainer(cfg, run_dir=tmp, verbose=False, bank=bank)
        try:
            times = []
            for i in range(warmup + reps):
                t = timed(trainer.train_step, device)["wall"]
                if i >= warmup:
                    times.append(t)
        finally:
            trainer.close()
    s = summary(times)
    return {"step_s": s, "images_per_s": cfg.train.batch_size / s["median"],
            "batch_size": cfg.train.batch_size, "global_size": p.global_size,
            "local_crops": p.local_crops}


def format_precisions(res: Dict[str, Any]) -> str:
    """The side-by-side table ``tools/benchmark.py --precisions`` prints."""
    ps = res["precisions"]
    rows = [("training step (s)", lambda r: r.get("step", {}).get("median")),
            ("floor (s)", lambda r: r.get("floor", {}).get("median")),
            ("step / floor", lambda r: r.get("step_over_floor")),
            ("speed-up of the step", lambda r: r.get("speedup_step")),
            ("step GFLOP/s", lambda r: r.get("step_gflops")),
            ("GEMM peak GFLOP/s (same run)", lambda r: r.get("gemm_peak_gflops")),
            ("step / GEMM peak", lambda r: r.get("step_share_of_gemm_peak")),
            ("eval predict (s / batch)", lambda r: r.get("eval_predict_s", {}).get("median")),
            ("speed-up of eval", lambda r: r.get("speedup_eval_predict")),
            ("pretraining step (s)", lambda r: r.get("pretrain", {}).get("step_s", {}).get(
                "median")),
            ("pretraining images/s", lambda r: r.get("pretrain", {}).get("images_per_s")),
            ("speed-up of pretraining", lambda r: r.get("speedup_pretrain"))]
    width = max(len(name) for name, _ in rows) + 2
    lines = [" " * width + "".join(f"{p:>12}" for p in ps)]
    for name, get in rows:
        vals = [get(res[p]) for p in ps]
        if all(v is None for v in vals):
            continue
        lines.append(name.ljust(width) + "".join(
            f"{v:>12.3f}" if isinstance(v, (int, float)) else f"{'-':>12}" for v in vals))
    env = res["environment"]
    lines.append(f"device: {env['device']} ({env['torch_threads']} threads, native bf16: "
                 f"{env.get('cpu_native_bf16')}, malloc tuned: {env.get('malloc_tuned')}); load "
                 f"average {env['load_average_1_5_15']} -> {env.get('load_average_at_end')}")
    return "\n".join(lines)
