"""Reading the authors' released checkpoints of any method, safely.

Their files are PyTorch pickles: they are read with ``torch.load(weights_only=True)`` (numpy scalar
reconstructors allow-listed, which their training checkpoints' ``perf`` values need), never as
code unless the user passes ``--unsafe-load`` for a trusted file. Training checkpoints
(``{"state_dict": {"module." + key: ...}, ...}``, DataParallel prefixes) and plain state dicts are
both unwrapped. Each method's converter (``partformer/methods/<name>/convert.py``) maps the keys.
"""
from __future__ import annotations

import os
import re
import warnings
from typing import Any, Dict, List, Mapping, Tuple

import torch


class ConversionError(ValueError):
    """The file is not an authors' checkpoint we can convert; the message says why."""


# ------------------------------------------------------------------------------------ reading
def _numpy_safe_globals() -> List[Any]:
    """numpy scalar / dtype reconstructors: harmless, and what a ``perf`` value computed with numpy
    pickles to. Allow-listed for ``weights_only`` loading (PyTorch's documented mechanism)."""
    try:
        import numpy as np
    except ImportError:  # pragma: no cover
        return []
    out: List[Any] = [np.dtype]
    for mod in ("numpy._core.multiarray", "numpy.core.multiarray"):
        try:
            m = __import__(mod, fromlist=["scalar"])
            out.append(m.scalar)
            break
        except (ImportError, AttributeError):
            continue
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        out += [getattr(dtypes, n) for n in dir(dtypes) if n.endswith("DType")]
    return out


def _torch_load(path: str, unsafe: bool) -> Any:
    if unsafe:
        warnings.warn(f"--unsafe-load: reading {path} with weights_only=False, which can run "
                      "arbitrary code from the file; do this only for files from a trusted source",
                      stacklevel=3)
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - classified below
        first = e
    msg = str(first)
    if "Unsupported global" not in msg:
        raise ConversionError(
            f"cannot read {path} ({type(first).__name__}: {_first_line(msg)}). The file is "
            "truncated, corrupt or not a torch checkpoint; download it again and compare its "
            "size / checksum with the authors' release.") from None
    # a non-tensor object (often a numpy scalar in `perf`): retry with numpy scalars allowed
    safe_globals = getattr(torch.serialization, "safe_globals", None)
    if safe_globals is not None:
        try:
            with safe_globals(_numpy_safe_globals()):
                return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001
            msg = str(e)
    found = re.findall(r"Unsupported global: GLOBAL ([\w.]+)", msg)
    raise ConversionError(
        f"{path} holds Python objects that torch.load(weights_only=True) refuses "
        f"({', '.join(sorted(set(found))) or _first_line(msg)}); the authors' files should hold "
        "only tensors and numbers (their training checkpoint's `perf` / `optimizer` entries are "
        "the usual culprits). If you trust the file, rerun with --unsafe-load "
        "(weights_only=False: the file can then run arbitrary code).") from None


def _first_line(msg: str) -> str:
    lines = [ln.strip() for ln in msg.splitlines() if ln.strip()]
    for ln in lines:  # torch puts the useful part after a long preamble
        if "error" in ln.lower() and len(ln) < 300:
            return ln
    return (lines[0] if lines else "")[:300]


def _plain(v: Any) -> Any:
    """A value made YAML / weights_only friendly (numbers stay numbers, the rest becomes str)."""
    if isinstance(v, (bool, int, float, str)) or v is None:
        return v
    if torch.is_tensor(v):
        return v.item() if v.numel() == 1 else v.tolist()
    if hasattr(v, "item") and callable(v.item):  # numpy scalar
        try:
            return v.item()
        except Exception:  # noqa: BLE001
            pass
    if isinstance(v, Mapping):
        return {str(k): _plain(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_plain(x) for x in v]
    return str(v)


def load_official(path: str, unsafe: bool = False,
                  container_keys=("state_dict", "model_state"),
                  ) -> Tuple[Dict[str, torch.Tensor], Dict[str, Any]]:
    """Read an official file -> ``(state_dict without prefix, info)``.

    ``info``: ``format`` (``model_best`` = plain state dict | ``training_checkpoint``: the state
    dict under one of ``container_keys`` (``state_dict``: PartFormer / MPAE; ``model_state``:
    PDiscoFormer's snapshots) | ``safetensors``), and for a training checkpoint ``epoch`` /
    ``perf`` when present.
    """
    if not os.path.isfile(path):
        raise ConversionError(f"input file not found: {path}")
    if path.endswith(".safetensors"):      # e.g. PDiscoFormer's Hugging Face model.safetensors
        from safetensors.torch import load_file
        try:
            return dict(load_file(path, device="cpu")), {"format": "safetensors"}
        except Exception as e:  # noqa: BLE001 - any decoding failure: one message
            raise ConversionError(f"cannot read safetensors file {path}: {e}") from None
    obj = _torch_load(path, unsafe)
    if not isinstance(obj, Mapping):
        raise ConversionError(f"{path} holds a {type(obj).__name__}; expected the authors' "
                              "state dict (model_best.pth) or training dict (checkpoint.pth)")
    info: Dict[str, Any] = {}
    container = next((k for k in container_keys if isinstance(obj.get(k), Mapping)), None)
    if container is not None:
        info["format"] = "training_checkpoint"
        info["container"] = container
        for k in ("epoch", "perf"):
            if k in obj:
                info[k] = _plain(obj[k])
        sd = obj[container]
    elif "model" in obj and "config" in obj:
        raise ConversionError(f"{path} is already one of our checkpoints (it has `model` and "
                              "`config`); pass it to tools/eval.py --checkpoint directly")
    else:
        info["format"] = "model_best"
        sd = obj
    bad = [k for k, v in sd.items() if not torch.is_tensor(v)]
    if bad:
        top = ", ".join(sorted(map(str, obj.keys()))[:10])
        raise ConversionError(f"{path}: not a state dict of tensors (non-tensor entries: "
                              f"{', '.join(map(str, bad[:10]))}; top-level keys: {top})")
    keys = list(sd.keys())
    if keys and all(k.startswith("module.") for k in keys):
        sd = {k[len("module."):]: v for k, v in sd.items()}
        info["prefix"] = "module."
    elif any(k.startswith("module.") for k in keys):
        raise ConversionError(f"{path}: some keys start with `module.` and some do not; "
                              "expected all (DataParallel) or none")
    return dict(sd), info


