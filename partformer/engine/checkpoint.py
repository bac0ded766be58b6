"""Checkpoints: atomic writes, safe loading and strict key checks with a readable diff."""
from __future__ import annotations

import os
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Tuple

import torch

from partformer.fileio import atomic_open
from partformer.statedict import CheckpointError, key_diff, load_state_dict_strict  # noqa: F401


def atomic_torch_save(obj: Any, path: str) -> None:
    """Write ``obj`` to ``path`` so that a crash never leaves a truncated file at ``path``:
    save to a temporary file in the same directory, fsync, then rename over the target."""
    with atomic_open(path, "wb", fsync=True) as f:
        torch.save(obj, f)


def load_checkpoint(path: str, map_location: Any = "cpu") -> Dict[str, Any]:
    """Load a checkpoint with ``weights_only=True`` (no arbitrary code execution).

    ``.safetensors`` files are read with safetensors and returned as ``{"model": state_dict}``.
    """
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
            return {"model": load_file(path, device=str(map_location))}
        except Exception as e:  # noqa: BLE001 - report any decoding failure the same way
            raise CheckpointError(f"cannot read safetensors checkpoint {path}: {e}") from None
    try:
        obj = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(
            f"cannot read checkpoint {path} ({type(e).__name__}: "
            f"{(str(e).splitlines() or [''])[0][:200]}). "
            "The file is truncated, corrupt, or not a torch checkpoint; use the `last.pt` or "
            "`best.pt` of a run directory, or convert the authors' files with "
            "tools/convert_official.py.") from None
    if not isinstance(obj, dict):
        raise CheckpointError(f"checkpoint {path} holds a {type(obj).__name__}, expected a dict")
    return obj


def all_finite(module: torch.nn.Module) -> bool:
    return all(torch.isfinite(p).all().item() for p in module.state_dict().values()
               if torch.is_floating_point(p))


def resume_file(path: str) -> str:
    """What ``--resume`` reads: a run directory's ``last.pt``, or ``path`` itself (a file)."""
    return os.path.join(path, "last.pt") if os.path.isdir(path) else path


def resume_checkpoint(path: str, required: Iterable[str], tool: str) -> Tuple[str, Dict[str, Any]]:
    """``(path, checkpoint)`` to resume from: ``path`` is a run directory (its ``last.pt``) or a
    checkpoint file that must hold every ``required`` key; ``tool`` names the CLI in the error
    (``tools/train.py``)."""
    path = resume_file(path)
    ckpt = load_checkpoint(path, map_location="cpu")
    missing = [k for k in required if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} is not a training checkpoint of {tool} (no `{missing[0]}`); "
                              f"--resume takes a {tool} run directory or its last.pt")
    return path, ckpt


def save_on_main(state_fn: Callable[[], Dict[str, Any]], run_dir: str, name: str
                 ) -> Optional[str]:
    """Atomically write ``state_fn()`` to ``<run_dir>/<name>.pt`` on rank 0 and return the path;
    other ranks neither build the state nor write (``None``)."""
    from partformer.engine import distributed as D
    if not D.is_main_process():
        return None
    path = os.path.join(run_dir, f"{name}.pt")
    atomic_torch_save(state_fn(), path)
    return path
