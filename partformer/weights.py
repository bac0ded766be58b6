"""Weights by name: the index of shipped and registered weights, their search path and sha256.

A leaf module (it imports no model, method or engine code), so that anything may resolve a name,
the encoders included.

Shipped weights live in the package folder ``partformer/weights/``, listed in its ``index.yaml``::

    <name>:
      file: <name>.safetensors     # or .pt; relative to the index
      config: <name>.yaml          # the config the model was trained with (a .pt of ours that
                                   # carries its config may omit it)
      sha256: <hex digest of file> # checked on every load: a truncated download is an error
      description: one line shown by available_weights()
      kind: model                  # model (default: partformer.load) | encoder (a feature-map
                                   # encoder's weights, for model.encoder.weights: <name>)

so ``partformer.load("<name>")`` works offline. Folders named in the ``PARTFORMER_WEIGHTS_PATH``
environment variable (``os.pathsep``-separated, each with its own ``index.yaml``) are searched
first: a lab can share weights without reinstalling. :func:`export_weights` writes such an entry
from a training run (``python tools/export_weights.py runs/<run>/best.pt --name NAME``).

Reading model files (ours, ``.safetensors``, the authors') is :mod:`partformer.hub`, which sits above
the methods.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Dict, List, Optional

import yaml

from partformer.fileio import sha256_file

WEIGHTS_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "weights")
INDEX_FILE = "index.yaml"
ENV_PATH = "PARTFORMER_WEIGHTS_PATH"


WEIGHT_KINDS = ("model", "encoder")


class WeightsError(FileNotFoundError):
    """Weights that cannot be found or verified; the message names the file and the fix."""


@dataclasses.dataclass(frozen=True)
class WeightsEntry:
    name: str
    file: str                      # absolute path
    config: Optional[str]          # absolute path or a shipped config name; None: inside the file
    sha256: Optional[str]
    description: str = ""
    index: str = ""                # the index.yaml that lists it
    kind: str = "model"            # model | encoder


def weights_dirs() -> List[str]:
    """Folders searched for ``index.yaml``: ``$PARTFORMER_WEIGHTS_PATH`` first, then the
    package's ``partformer/weights``."""
    extra = [d for d in os.environ.get(ENV_PATH, "").split(os.pathsep) if d]
    return extra + [WEIGHTS_DIR]


def _read_index(folder: str) -> Dict[str, WeightsEntry]:
    path = os.path.join(folder, INDEX_FILE)
    if not os.path.isfile(path):
        return {}
    with open(path) as f:
        try:
            raw = yaml.safe_load(f) or {}
        except yaml.YAMLError as e:
            raise WeightsError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(raw, dict):
        raise WeightsError(f"{path}: expected a mapping name -> {{file, config, sha256}}")
    out = {}
    for name, e in raw.items():
        if not isinstance(e, dict) or "file" not in e:
            raise WeightsError(f"{path}: entry {name!r} needs at least `file:` (and `config:`, "
                               "`sha256:`)")
        unknown = sorted(set(e) - {"file", "config", "sha256", "description", "kind"})
        if unknown:
            raise WeightsError(f"{path}: entry {name!r} has unknown keys {unknown}; known: file, "
                               "config, sha256, description, kind")
        kind = str(e.get("kind", "model"))
        if kind not in WEIGHT_KINDS:
            raise WeightsError(f"{path}: entry {name!r} has kind {kind!r}; known: "
                               f"{', '.join(WEIGHT_KINDS)}")
        config = e.get("config")
        if config and os.path.isfile(os.path.join(folder, config)):
            config = os.path.join(folder, config)
        out[str(name)] = WeightsEntry(str(name), os.path.join(folder, e["file"]), config,
                                      e.get("sha256"), str(e.get("description", "")), path, kind)
    return out


def available_weights() -> Dict[str, WeightsEntry]:
    """Every named weights entry; a name in an earlier folder hides the same name later."""
    found: Dict[str, WeightsEntry] = {}
    for folder in weights_dirs():
        for name, entry in _read_index(folder).items():
            found.setdefault(name, entry)
    return found


def resolve_weights(name: str, kind: str = "model") -> WeightsEntry:
    """The entry called ``name`` of ``kind``, its file present and its SHA-256 as listed."""
    entries = {n: e for n, e in available_weights().items() if e.kind == kind}
    if name not in entries:
        import difflib
        close = difflib.get_close_matches(name, list(entries), n=3)
        raise WeightsError(
            (f"no file, run directory or shipped weights called {name!r}. Shipped / registered "
             f"names: {sorted(entries) or 'none'}" if kind == "model" else
             f"no shipped or registered {kind} weights called {name!r}. Registered {kind} "
             f"names: {sorted(entries) or 'none'}") + (f" (did you mean {close[0]!r}?)" if close
                                                      else "")
            + f". Pass a checkpoint path (runs/<run>/best.pt), or add an entry to an index.yaml "
            f"in a folder of ${ENV_PATH} (tools/export_weights.py writes one)")
    e = entries[name]
    if not os.path.isfile(e.file):
        raise WeightsError(f"weights {name!r}: {e.file} (listed in {e.index}) is missing; "
                           "reinstall the package or fix the index entry")
    if e.sha256 and sha256_file(e.file) != e.sha256.lower():
        raise WeightsError(f"weights {name!r}: {e.file} does not match the sha256 listed in "
                           f"{e.index} (truncated or replaced file); reinstall or re-export it")
    return e
