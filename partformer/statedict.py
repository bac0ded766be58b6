"""State dicts: strict loading with a readable list of what does not match. A leaf (torch only),
so that models, methods and their converters can load strictly without reaching up into the
engine."""
from __future__ import annotations

from typing import Iterable, Mapping

import torch


class CheckpointError(RuntimeError):
    """A checkpoint cannot be read or does not match the model; the message says why."""


def key_diff(expected: Iterable[str], found: Iterable[str], limit: int = 20) -> str:
    expected, found = set(expected), set(found)
    missing = sorted(expected - found)
    unexpected = sorted(found - expected)
    lines = []
    if missing:
        lines.append(f"missing keys ({len(missing)}): " + ", ".join(missing[:limit])
                     + (" ..." if len(missing) > limit else ""))
    if unexpected:
        lines.append(f"unexpected keys ({len(unexpected)}): " + ", ".join(unexpected[:limit])
                     + (" ..." if len(unexpected) > limit else ""))
    return "\n".join(lines)


def load_state_dict_strict(module: torch.nn.Module, state: Mapping[str, torch.Tensor],
                           source: str = "checkpoint") -> None:
    """``load_state_dict(strict=True)`` with a readable list of missing / unexpected keys and of
    shape mismatches, instead of torch's wall of text (and never ``strict=False``)."""
    own = module.state_dict()
    diff = key_diff(own.keys(), state.keys())
    shapes = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
              for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if diff or shapes:
        msg = f"{source} does not match the model.\n" + diff
        if shapes:
            msg += f"\nshape mismatches ({len(shapes)}): " + "; ".join(shapes[:10])
        msg += ("\nCheck that the config (model.num_parts, encoder, image size) is the one the "
                "checkpoint was trained with; the run directory's config.yaml has it.")
        raise CheckpointError(msg)
    module.load_state_dict(state, strict=True)
