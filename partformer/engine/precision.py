"""Numerical precision of a run: ``train.precision`` -> an autocast dtype, and the autocast context
that training, evaluation and the predictor all run the networks under."""
from __future__ import annotations

from contextlib import nullcontext
from typing import Optional

import torch

from partformer import config as cfglib


def resolve_precision(precision: str, device: torch.device) -> Optional[torch.dtype]:
    """None = fp32. ``auto``: bf16 autocast on CUDA, fp32 on CPU."""
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" else None
    table = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if precision not in table:
        raise cfglib.ConfigError(f"train.precision must be one of {list(cfglib.PRECISIONS)}, got "
                                 f"{precision!r}")
    return table[precision]


def autocast_context(device: torch.device, amp_dtype: Optional[torch.dtype]):
    """``torch.autocast`` to ``amp_dtype`` on ``device``, or a no-op for fp32 (``None``)."""
    if amp_dtype is None:
        return nullcontext()
    return torch.autocast(device_type=device.type, dtype=amp_dtype)
