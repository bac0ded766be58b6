"""Reading any model file the package knows, and building the model it holds.

Above the methods (it asks the method registry how to build and convert); below the tools. A
"model" is named the same way in every tool and in :func:`partformer.load`:

- one of our checkpoints (``best.pt`` / ``last.pt``; the resolved config is inside), or a training
  run directory (its ``best.pt``, else ``last.pt``);
- a ``.safetensors`` state dict with its config (a YAML file, e.g. the run's ``config.yaml``);
- a method's authors' released checkpoint (converted in memory by that method's converter);
- the name of shipped or registered weights (:mod:`partformer.weights`).

Checkpoints record the method (``method.name`` in their config; older ones, from before methods
had sections, are PartFormer's and are upgraded on reading).
"""
from __future__ import annotations

import os
from typing import Any, Dict, Optional, Sequence, Tuple

import torch
import yaml

from partformer import config as cfglib
from partformer.engine.checkpoint import CheckpointError, load_checkpoint, load_state_dict_strict
from partformer.fileio import atomic_open, sha256_file
from partformer.weights import (ENV_PATH, INDEX_FILE, WEIGHTS_DIR, WeightsEntry,  # noqa: F401
                                WeightsError, _read_index, available_weights, resolve_weights)


# ------------------------------------------------------------------------ configs of checkpoints
def config_from_checkpoint(path: str, overrides=None, resolve_data_root: bool = False,
                           ckpt: Optional[Dict[str, Any]] = None) -> cfglib.Config:
    """The resolved config stored in one of our checkpoints (plus command-line overrides),
    upgraded to today's layout by the methods (:meth:`Method.upgrade_config`).

    ``resolve_data_root`` (tools that read the dataset): a relative ``data.root`` that the command
    line does not override is resolved where the training ran (the absolute root the trainer
    records in the checkpoint). When that folder does not exist here, a
    :class:`~partformer.config.ConfigError` asks for ``data.root=``, so that no tool reads, or
    generates, a dataset in the wrong place. A checkpoint without the record (older ones,
    converted ones) uses the folder relative to the current directory only if it exists.
    ``ckpt``: the already loaded checkpoint, if any.
    """
    from partformer.methods import get_method, method_names
    ckpt = load_checkpoint(path) if ckpt is None else ckpt
    if "config" not in ckpt:
        raise CheckpointError(f"{path} carries no config; pass --config with the training config")
    tree = yaml.safe_load(ckpt["config"])
    origins = {k: f"the config stored in {path}" for k in cfglib._dotted_keys(tree)}
    for name in method_names():   # checkpoint-specific upgrades (they may read `ckpt`)
        get_method(name).upgrade_checkpoint_config(tree, ckpt, path)
    cfglib.apply_overrides(tree, overrides, origins)
    if resolve_data_root and origins.get("data.root") != "command line":
        _resolve_stored_root(tree, origins, ckpt, path)
    return cfglib.from_dict(tree, origins)


def _resolve_stored_root(tree: Dict[str, Any], origins: Dict[str, str], ckpt: Dict[str, Any],
                         path: str) -> None:
    data = tree.setdefault("data", {})
    root = data.get("root", cfglib.DataConfig().root)
    if not isinstance(root, str) or os.path.isabs(os.path.expanduser(root)):
        return
    recorded = ckpt.get("data_root")
    if recorded and os.path.isdir(recorded):
        data["root"] = recorded
        origins["data.root"] = f"{path} (relative root resolved where training ran)"
        return
    if not recorded and os.path.isdir(root):
        import warnings
        warnings.warn(f"{path} does not record where it was trained; its relative data.root "
                      f"{root!r} is read from the current directory ({os.path.abspath(root)})",
                      stacklevel=3)
        data["root"] = os.path.abspath(root)
        return
    where = (f"where the training ran it was {recorded}, which does not exist here"
             if recorded else "the checkpoint does not record where the training ran")
    raise cfglib.ConfigError(
        f"{path} stores the relative data.root {root!r} and {where}. Pass the dataset folder on "
        f"the command line: data.root=/path/to/{os.path.basename(root.rstrip('/')) or 'dataset'} "
        "(it is not guessed from the current directory, so that no dataset is read from, or "
        "generated into, the wrong place)")


# ---------------------------------------------------------------------------------- model files
def _official_method(ckpt: Dict[str, Any]) -> Optional[str]:
    """The method whose authors' file ``ckpt`` is, if any."""
    from partformer.methods import get_method, method_names
    found = [n for n in method_names() if get_method(n).detect_official(ckpt)]
    return found[0] if found else None


def read_model_file(path: str, config: Optional[str] = None,
                    official_dataset: Optional[str] = None, overrides: Sequence[str] = (),
                    method: Optional[str] = None, resolve_data_root: bool = False,
                    ) -> Tuple[cfglib.Config, Dict[str, Any], str]:
    """``(config, state_dict, description)`` of a model file.

    ``config``: a YAML file (or shipped config name); needed for a ``.safetensors`` file, else the
    config stored in the checkpoint is used (an explicit one wins). ``official_dataset``: which of
    the authors' models a released file is (default: detected from the file); ``method``: whose
    authors' file it is (default: detected). ``resolve_data_root``: see
    :func:`config_from_checkpoint`.
    """
    from partformer.methods import get_method
    ckpt = load_checkpoint(path)
    if "model" in ckpt and "config" in ckpt and config is None:
        cfg = config_from_checkpoint(path, list(overrides), resolve_data_root, ckpt=ckpt)
        return cfg, _upgraded_state(cfg, ckpt["model"]), path
    if set(ckpt) == {"model"} and config is None and _official_method(ckpt["model"]):
        ckpt = ckpt["model"]   # an authors' .safetensors (PDiscoFormer's Hugging Face files)
    elif "model" in ckpt:  # .safetensors, or one of ours with an explicit config
        if config is None:
            raise CheckpointError(f"{path} holds weights but no config; pass config=<the YAML the "
                                  "model was trained with> (e.g. the run's config.yaml)")
        cfg = cfglib.load_config(config, list(overrides))
        return cfg, _upgraded_state(cfg, ckpt["model"]), path
    name = method or _official_method(ckpt)
    if name is not None:
        conv = get_method(name).convert_official(path, official_dataset, base_config=config)
        tree = yaml.safe_load(conv["config"])
        cfglib.apply_overrides(tree, list(overrides), {})
        return cfglib.from_dict(tree), conv["model"], f"{path} (the authors' {name} file, converted)"
    from partformer.methods import method_names
    raise CheckpointError(
        f"{path} is neither one of our checkpoints (keys `model` + `config`) nor a released file "
        f"of the authors of a registered method ({', '.join(method_names(trainable=True))}; "
        f"top-level keys: {sorted(map(str, ckpt))[:8]}); use a run's best.pt / last.pt, a "
        ".safetensors file with a config, or the authors' released checkpoint")


def _upgraded_state(cfg, state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    from partformer.methods import get_method
    return get_method(cfg.method.name).upgrade_state(dict(state), cfg)


def locate(path_or_name: str) -> Tuple[str, Optional[str]]:
    """``(model file, config or None)`` for a file, a run directory (its ``best.pt``, else
    ``last.pt``), a pretrained folder (``model.safetensors`` + ``config.yaml``, what
    :func:`save_pretrained` writes), a Hugging Face Hub model ``hf://<user>/<repo>[@rev]``
    (downloaded into, or read from, the Hugging Face cache) or a registered weights name."""
    from partformer import hf
    if hf.is_hub_name(path_or_name):
        return hf.pretrained_files(hf.download(path_or_name))
    p = os.path.expanduser(os.fspath(path_or_name))
    if os.path.isdir(p):
        for name in ("best.pt", "last.pt"):
            if os.path.isfile(os.path.join(p, name)):
                return os.path.join(p, name), None
        files = hf.pretrained_files(p)
        if files is not None:
            return files
        raise WeightsError(f"{p} is a directory without best.pt or last.pt (a training run) "
                           f"or {hf.WEIGHTS_FILE} + {hf.CONFIG_FILE} (a pretrained folder); pass "
                           "a checkpoint file, a run directory or a pretrained folder")
    if os.path.isfile(p):
        return p, None
    e = resolve_weights(path_or_name)
    return e.file, e.config


def model_from_state(cfg, state: Dict[str, torch.Tensor], source: str,
                     device: torch.device) -> torch.nn.Module:
    """The model of ``cfg``'s method with ``state`` loaded strictly, on ``device``, eval mode.
    Every weight comes from ``state``: building fetches no pretrained weights."""
    from partformer.methods import build_method
    model = build_method(cfg).build_model(pretrained=False)
    load_state_dict_strict(model, state, source=source)
    return model.to(device).eval()


def load_model(path_or_name: str, device: torch.device, config: Optional[str] = None,
               overrides: Sequence[str] = (), official_dataset: Optional[str] = None,
               ) -> Tuple[cfglib.Config, torch.nn.Module, str]:
    """``(config, model in eval mode on device, description)`` of any model name (the module
    docstring)."""
    path, entry_config = locate(path_or_name)
    cfg, state, source = read_model_file(path, config or entry_config, official_dataset,
                                         overrides)
    return cfg, model_from_state(cfg, state, source, device), source


def convert_official_file(input_path: str, output_path: str, method: Optional[str] = None,
                          dataset: Optional[str] = None, base_config: Optional[str] = None,
                          overrides: Sequence[str] = (), unsafe_load: bool = False,
                          overwrite: bool = False) -> Dict[str, Any]:
    """Convert a method's authors' released file into one of our checkpoints at ``output_path``
    (atomically; the converted model is rebuilt and loaded strictly first). ``method``: whose
    file it is (default: detected). Returns the checkpoint's ``source`` (plus ``output``)."""
    from partformer.engine.checkpoint import atomic_torch_save
    from partformer.methods import get_method, method_names
    from partformer.methods.foreign import ConversionError, load_official
    if os.path.exists(output_path) and not overwrite:
        raise ConversionError(f"{output_path} exists; pass --overwrite to replace it")
    if os.path.abspath(output_path) == os.path.abspath(input_path):
        raise ConversionError("--output must differ from --input")
    if method is None:
        sd, _ = load_official(input_path, unsafe=unsafe_load)
        method = _official_method(sd)
        if method is None:
            raise ConversionError(
                f"{input_path} is not a released checkpoint of any registered method's authors "
                f"({', '.join(method_names(trainable=True))}); pass --method if it is")
    ckpt = get_method(method).convert_official(input_path, dataset, base_config, list(overrides),
                                               unsafe_load)
    atomic_torch_save(ckpt, output_path)
    return dict(ckpt["source"], output=output_path)


# ---------------------------------------------------------------------------------- exporting
WEIGHTS_NAME_PATTERN = r"[A-Za-z0-9][A-Za-z0-9._-]*"


def check_weights_name(name: str) -> str:
    """``name`` if it can name weights: letters, digits, ``.``, ``_``, ``-``, starting with a
    letter or digit, no ``..``; it becomes file names inside the output folder, so no path
    separator can take a file outside it."""
    import re
    if not isinstance(name, str) or not re.fullmatch(WEIGHTS_NAME_PATTERN, name) or ".." in name:
        raise WeightsError(f"weights name {name!r} is not a plain name: use letters, digits, '.', "
                           "'_' and '-' (starting with a letter or digit, no '..' and no '/'); it "
                           "names <name>.safetensors and <name>.yaml inside the output folder")
    return name


def write_model_files(cfg, state: Dict[str, torch.Tensor], folder: str, stem: str,
                      metadata: Optional[Dict[str, str]] = None,
                      config_stem: Optional[str] = None) -> Tuple[str, str]:
    """Write ``<folder>/<stem>.safetensors`` (the model's tensors only, atomically) and
    ``<config_stem or stem>.yaml`` (the config that rebuilds the model, only the sections its
    method uses); returns both paths."""
    from safetensors.torch import save
    os.makedirs(folder, exist_ok=True)
    weights = os.path.join(folder, f"{stem}.safetensors")
    with atomic_open(weights, "wb") as f:
        f.write(save({k: v.detach().cpu().contiguous() for k, v in state.items()},
                     metadata=metadata))
    config = os.path.join(folder, f"{config_stem or stem}.yaml")
    cfglib.save_config(cfg, config, "train")
    return weights, config


def export_weights(model: str, out_dir: str, name: str, description: str = "",
                   overwrite: bool = False, config: Optional[str] = None) -> WeightsEntry:
    """Write ``<out_dir>/<name>.safetensors`` (model weights only) and ``<name>.yaml`` (its
    config) from any model name (:func:`locate`: a checkpoint, a run directory, registered
    weights, a ``.safetensors`` file with ``config``, an authors' file), and add ``name`` to
    ``<out_dir>/index.yaml`` with the file's SHA-256. Point ``$PARTFORMER_WEIGHTS_PATH`` at
    ``out_dir`` (or use ``partformer/weights`` to ship it with the package) and
    ``partformer.load(name)`` finds it. ``name`` must be a plain name
    (:func:`check_weights_name`)."""
    check_weights_name(name)
    path, entry_config = locate(model)
    cfg, state, _ = read_model_file(path, config or entry_config)
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
    weights, _ = write_model_files(cfg, state, out_dir, name)
    source = model if not os.path.exists(model) else os.path.abspath(model)
    index[name] = {"file": f"{name}.safetensors", "config": f"{name}.yaml",
                   "sha256": sha256_file(weights),
                   "description": description or f"exported from {source}"}
    with atomic_open(index_path, "w") as f:
        f.write(header)
        yaml.safe_dump(index, f, sort_keys=True)
    return _read_index(out_dir)[name]


# ---------------------------------------------------------------------- the Hugging Face Hub
def _results_next_to(path: str) -> Optional[str]:
    """The ``results_test.json`` of the run a checkpoint belongs to (or of a pretrained folder),
    if there is one."""
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    found = os.path.join(folder, "results_test.json")
    return found if os.path.isfile(found) else None


def save_pretrained(model: str, folder: str, config: Optional[str] = None,
                    results: Optional[str] = None, name: Optional[str] = None,
                    overwrite: bool = False) -> str:
    """Write the pretrained folder of any model name (:func:`locate`) to ``folder``:
    ``model.safetensors`` (the model's tensors only), ``config.yaml`` and a ``README.md`` model
    card with the method, the training data, the config and the measured results
    (``results``: a ``results_<split>.json``; default: the run's ``results_test.json`` when the
    model is a run's checkpoint). ``name``: the repository name the card shows
    (default: the folder's name). A non-empty ``folder`` that is not a pretrained folder is
    refused; an existing pretrained folder needs ``overwrite``. Returns ``folder``."""
    from partformer import __version__, hf
    from partformer.methods import get_method
    if os.path.isdir(folder) and os.listdir(folder):
        if hf.pretrained_files(folder) is None:
            raise WeightsError(f"{folder} is not empty and is not a pretrained folder; pick an "
                               "empty or new folder (nothing in it is replaced)")
        if not overwrite:
            raise WeightsError(f"{folder} already holds a pretrained model; pass overwrite=True "
                               "(--overwrite) to replace it")
    path, entry_config = locate(model)
    cfg, state, source = read_model_file(path, config or entry_config)
    results = results or (_results_next_to(model) if os.path.exists(model) else None)
    write_model_files(cfg, state, folder, "model",
                      metadata={"format": "partformer-pretrained-1", "method": cfg.method.name},
                      config_stem="config")
    name = name or os.path.basename(os.path.abspath(folder))
    source_name = model if not os.path.exists(model) else os.path.abspath(model)
    hf.write_card(folder, hf.model_card(cfg, name, get_method(cfg.method.name).supervision,
                                        hf.read_results(results), source_name, __version__))
    return folder


def push_to_hub(model: str, repo_id: str, config: Optional[str] = None,
                results: Optional[str] = None, private: bool = False,
                token: Optional[str] = None, commit_message: Optional[str] = None,
                revision: Optional[str] = None) -> str:
    """:func:`save_pretrained` into a temporary folder, then create the Hub repository
    ``repo_id`` (``<user>/<repo>``; ``private``) if needed and upload the three files. Needs a
    token (``huggingface-cli login`` or ``token=``). Returns the commit URL; the model then
    loads anywhere with ``partformer.load("hf://<repo_id>")``."""
    import tempfile

    from partformer import hf
    repo = hf.split_hub_name(repo_id)[0]
    with tempfile.TemporaryDirectory(prefix="partformer-hub-") as tmp:
        folder = save_pretrained(model, os.path.join(tmp, repo.split("/")[1]), config, results,
                                 name=repo)
        return hf.upload(folder, repo, private=private, token=token, revision=revision,
                         commit_message=commit_message or f"Upload {os.path.basename(model)}")
