"""Weights by name, and reading any model file the package knows.

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

:func:`read_model_file` reads one of our checkpoints (``best.pt`` / ``last.pt``, config inside), a
``.safetensors`` state dict with its config, or the authors' released ``model_best.pth`` /
``checkpoint.pth`` (converted in memory with :mod:`partformer.convert`).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml

from partformer import config as cfglib
from partformer.engine.checkpoint import CheckpointError, load_checkpoint
from partformer.fileio import atomic_open, sha256_file

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


# ---------------------------------------------------------------------------------- model files
def _looks_official(ckpt: Dict[str, Any]) -> bool:
    from partformer.convert import POS_EMBED_KEY
    sd = ckpt.get("state_dict", ckpt)
    keys = [k[len("module."):] if k.startswith("module.") else k for k in sd]
    return POS_EMBED_KEY in keys or any(k.startswith("backbone1.") for k in keys)


def read_model_file(path: str, config: Optional[str] = None,
                    official_dataset: Optional[str] = None, overrides: Sequence[str] = ()
                    ) -> Tuple[cfglib.Config, Dict[str, Any], str]:
    """``(config, state_dict, description)`` of a model file.

    ``config``: a YAML file (or shipped config name); needed for a ``.safetensors`` file, else the
    config stored in the checkpoint is used (an explicit one wins). ``official_dataset`` (``cub`` /
    ``celeba``): how to read the authors' files (default: detected from the file).
    """
    ckpt = load_checkpoint(path)
    if "model" in ckpt and "config" in ckpt and config is None:
        from partformer.engine.runner import config_from_checkpoint
        cfg = config_from_checkpoint(path, list(overrides), ckpt=ckpt)
        return cfg, ckpt["model"], path
    if "model" in ckpt:  # .safetensors, or one of ours with an explicit config
        if config is None:
            raise CheckpointError(f"{path} holds weights but no config; pass config=<the YAML the "
                                  "model was trained with> (e.g. the run's config.yaml)")
        return cfglib.load_config(config, list(overrides)), ckpt["model"], path
    if _looks_official(ckpt):
        from partformer.convert import convert_checkpoint
        conv = convert_checkpoint(path, official_dataset, base_config=config)
        tree = yaml.safe_load(conv["config"])
        cfglib.apply_overrides(tree, list(overrides), {})
        return cfglib.from_dict(tree), conv["model"], f"{path} (the authors' file, converted)"
    raise CheckpointError(
        f"{path} is neither one of our checkpoints (keys `model` + `config`) nor an official "
        f"PartFormer file (top-level keys: {sorted(map(str, ckpt))[:8]}); use a run's best.pt / "
        "last.pt, a .safetensors file with config=, or the authors' model_best.pth")


def locate(path_or_name: str) -> Tuple[str, Optional[str]]:
    """``(model file, config or None)`` for a file, a run directory (its ``best.pt``, else
    ``last.pt``) or a registered weights name."""
    p = os.path.expanduser(os.fspath(path_or_name))
    if os.path.isdir(p):
        for name in ("best.pt", "last.pt"):
            if os.path.isfile(os.path.join(p, name)):
                return os.path.join(p, name), None
        raise WeightsError(f"{p} is a directory without best.pt or last.pt; pass a checkpoint "
                           "file or a training run directory")
    if os.path.isfile(p):
        return p, None
    e = resolve_weights(path_or_name)
    return e.file, e.config


# ---------------------------------------------------------------------------------- exporting
def export_weights(checkpoint: str, out_dir: str, name: str, description: str = "",
                   overwrite: bool = False) -> WeightsEntry:
    """Write ``<out_dir>/<name>.safetensors`` (model weights only) and ``<name>.yaml`` (its
    config) from one of our checkpoints, and add ``name`` to ``<out_dir>/index.yaml`` with the
    file's SHA-256. Point ``$PARTFORMER_WEIGHTS_PATH`` at ``out_dir`` (or use
    ``partformer/weights`` to ship it with the package) and ``partformer.load(name)`` finds it."""
    from safetensors.torch import save

    cfg, state, _ = read_model_file(checkpoint)
    os.makedirs(out_dir, exist_ok=True)
    index_path = os.path.join(out_dir, INDEX_FILE)
    index, header = {}, ""
    if os.path.isfile(index_path):
        with open(index_path) as f:
            text = f.read()
        index = yaml.safe_load(text) or {}
        for line in text.splitlines(keepends=True):   # the comment block on top is kept
            if not line.startswith("#"):
                break
            header += line
    if name in index and not overwrite:
        raise WeightsError(f"{index_path} already lists {name!r}; pass overwrite=True "
                           "(--overwrite) to replace it")
    weights = os.path.join(out_dir, f"{name}.safetensors")
    with atomic_open(weights, "wb") as f:
        f.write(save({k: v.detach().contiguous() for k, v in state.items()}))
    cfglib.save_config(cfg, os.path.join(out_dir, f"{name}.yaml"))
    index[name] = {"file": f"{name}.safetensors", "config": f"{name}.yaml",
                   "sha256": sha256_file(weights),
                   "description": description or f"exported from {os.path.abspath(checkpoint)}"}
    with atomic_open(index_path, "w") as f:
        f.write(header)
        yaml.safe_dump(index, f, sort_keys=True)
    return _read_index(out_dir)[name]
