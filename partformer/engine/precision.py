"""Numerical precision of a run: ``train.precision`` -> an autocast dtype, and the autocast context
that training, evaluation and the predictor all run the networks under."""
from __future__ import annotations

import functools
import os
import platform
from contextlib import nullcontext
from typing import Dict, Iterable, List, Optional, Tuple

import torch

from partformer import config as cfglib


#: /proc/cpuinfo flags of a CPU that multiplies bf16 in hardware: x86 AVX512-BF16 (AMD Zen 4 and
#: later, Intel Cooper Lake and later), Intel AMX-BF16 (Sapphire Rapids), Arm's BF16 extension
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16", "bf16")


#: ``train.precision`` (other than ``auto``) -> autocast dtype; None = fp32, no autocast
AUTOCAST_DTYPES: Dict[str, Optional[torch.dtype]] = {
    "fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def cpu_flags_have_bf16(flags: Iterable[str]) -> bool:
    """Whether a CPU with these feature flags (``/proc/cpuinfo`` ``flags`` / ``Features``) has
    native bf16 arithmetic (:data:`BF16_CPU_FLAGS`)."""
    return bool(set(flags) & set(BF16_CPU_FLAGS))


@functools.lru_cache(maxsize=None)
def cpuinfo() -> Dict[str, Tuple[str, ...]]:
    """``/proc/cpuinfo`` as ``{lower-case key: (its value on each processor, ...)}``; empty where
    there is none (not Linux, unreadable). Read once per process."""
    if platform.system() != "Linux":
        return {}
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return {}
    info: Dict[str, List[str]] = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep:
            info.setdefault(key.strip().lower(), []).append(value.strip())
    return {key: tuple(values) for key, values in info.items()}


@functools.lru_cache(maxsize=None)
def cpu_has_native_bf16() -> bool:
    """Does this machine's CPU multiply bf16 in hardware? PyTorch's own capability queries first
    (``torch.cpu._is_avx512_bf16_supported`` / ``_is_amx_tile_supported``, what its oneDNN kernels
    dispatch on), then the flags in ``/proc/cpuinfo`` (Arm). ``PARTFORMER_CPU_BF16=0|1`` overrides
    (e.g. to rule bf16 out on a machine that reports it but runs it slowly)."""
    forced = os.environ.get("PARTFORMER_CPU_BF16")
    if forced in ("0", "1"):
        return forced == "1"
    for query in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"):
        fn = getattr(torch.cpu, query, None)
        try:
            if fn is not None and fn():
                return True
        except Exception:  # noqa: BLE001 - a query a build lacks counts as "no"
            pass
    info = cpuinfo()
    return cpu_flags_have_bf16(f for key in ("flags", "features")
                               for value in info.get(key, ()) for f in value.split())


def resolve_precision(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """The autocast dtype of ``train.precision`` on ``device``; None = fp32 (no autocast).

    ``auto`` is bf16 on CUDA, and bf16 on a CPU that multiplies bf16 in hardware
    (:func:`cpu_has_native_bf16`), else fp32: on this project's CPU (AVX512-BF16) the default job
    found the same parts in bf16 as in fp32 (test keypoint NMI over three seeds, paired
    differences +0.09, +0.10, -0.02 against a seed spread of 1.2) at up to 1.8x the speed
    (README "Performance"). Without native bf16 a CPU emulates it, slower than fp32."""
    if precision == "auto":
        if device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16()):
            return torch.bfloat16
        return None
    if precision not in AUTOCAST_DTYPES:
        raise cfglib.ConfigError(f"train.precision must be one of {list(cfglib.PRECISIONS)}, got "
                                 f"{precision!r}")
    return AUTOCAST_DTYPES[precision]


def precision_name(amp_dtype: Optional[torch.dtype]) -> str:
    """``fp32`` / ``bf16`` / ``fp16``: the ``train.precision`` spelling of an autocast dtype."""
    return next(name for name, dtype in AUTOCAST_DTYPES.items() if dtype == amp_dtype)


def autocast_context(device: torch.device, amp_dtype: Optional[torch.dtype]):
    """``torch.autocast`` to ``amp_dtype`` on ``device``, or a no-op for fp32 (``None``)."""
    if amp_dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)
