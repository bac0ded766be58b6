"""The Hugging Face Hub: model folders (``save_pretrained``), their model card, ``hf://`` names.

A *pretrained folder* (what :func:`partformer.save_pretrained` writes, what a Hub repository of a
partformer model holds)::

    model.safetensors   the model's tensors only (no optimiser, no training state)
    config.yaml         the resolved config that rebuilds the model (the sections it uses)
    README.md           the model card: method, config, training data, the measured results

``hf://<user>/<repo>[@<revision>]`` names such a repository wherever a model is named
(``partformer.load``, every tool's ``--model``). It is downloaded through ``huggingface_hub``
into its cache (``HF_HUB_OFFLINE=1``: the cache only, no network). This module reads and writes
folders and talks to the Hub; reading models is :mod:`partformer.hub` (which imports this one).
"""
from __future__ import annotations

import json
import os
from typing import Any, Dict, Optional, Tuple

from partformer import config as cfglib
from partformer.fileio import atomic_open
from partformer.weights import WeightsError

HF_PREFIX = "hf://"
WEIGHTS_FILE = "model.safetensors"
CONFIG_FILE = "config.yaml"
CARD_FILE = "README.md"
FILES = (WEIGHTS_FILE, CONFIG_FILE, CARD_FILE)


def is_hub_name(name: Any) -> bool:
    return isinstance(name, str) and name.startswith(HF_PREFIX)


def split_hub_name(name: str) -> Tuple[str, Optional[str]]:
    """``hf://user/repo@rev`` -> ``("user/repo", "rev")``; the repository id must be
    ``<user>/<repo>``."""
    body = name[len(HF_PREFIX):] if is_hub_name(name) else name
    repo, _, revision = body.partition("@")
    parts = repo.split("/")
    if len(parts) != 2 or not all(parts) or any(p in (".", "..") for p in parts):
        raise WeightsError(f"{name!r} is not a Hugging Face Hub model name: use "
                           "hf://<user>/<repo> (optionally @<revision>)")
    return repo, revision or None


def pretrained_files(folder: str) -> Optional[Tuple[str, str]]:
    """``(weights, config)`` of a pretrained folder, or None if ``folder`` is not one."""
    w, c = os.path.join(folder, WEIGHTS_FILE), os.path.join(folder, CONFIG_FILE)
    return (w, c) if os.path.isfile(w) and os.path.isfile(c) else None


def download(name: str) -> str:
    """The local folder of the Hub model ``name`` (``hf://user/repo[@rev]`` or ``user/repo``):
    its files downloaded into the Hugging Face cache, or found there (``HF_HUB_OFFLINE=1``).
    Fails at once, with one message, when they are neither cached nor downloadable."""
    from partformer.models.encoder import _host_reachable, hub_offline
    repo, revision = split_hub_name(name)
    import huggingface_hub
    from huggingface_hub import constants
    offline = hub_offline()
    fix = (f"download it once with network (python -c \"import partformer; "
           f"partformer.from_pretrained('{repo}')\") and keep the Hugging Face cache, or pass a "
           "local folder written by partformer.save_pretrained")
    if not offline and not _host_reachable(constants.ENDPOINT):
        offline = True   # no network: the cache or nothing, without a minute of retries
    try:
        folder = huggingface_hub.snapshot_download(
            repo_id=repo, revision=revision, allow_patterns=list(FILES),
            local_files_only=offline)
    except Exception as e:  # noqa: BLE001 - the hub's many error types become one message
        why = ("is not in the Hugging Face cache and HF_HUB_OFFLINE=1 (or no network) forbids "
               "downloading it" if offline else f"could not be downloaded ({type(e).__name__}: "
               f"{str(e).strip().splitlines()[0] if str(e).strip() else ''})")
        raise WeightsError(f"the Hugging Face Hub model {repo}"
                           f"{'@' + revision if revision else ''} {why}; {fix}") from None
    if pretrained_files(folder) is None:
        raise WeightsError(f"the Hugging Face Hub repository {repo} ({folder}) has no "
                           f"{WEIGHTS_FILE} + {CONFIG_FILE}: it is not a partformer model "
                           "(partformer.push_to_hub writes them)")
    return folder


# ---------------------------------------------------------------------------- the model card
def _results_table(results: Optional[Dict[str, Any]]) -> str:
    """The results of a ``results_<split>.json`` payload as a Markdown table (one column per
    method), or ''."""
    if not results or not results.get("results"):
        return ""
    columns = results["results"]
    names = []
    for res in columns.values():
        names += [n for n in res if n not in names]
    head = "| protocol | " + " | ".join(columns) + " |\n|---|" + "---:|" * len(columns) + "\n"
    rows = []
    for n in names:
        cells = []
        for res in columns.values():
            v = res.get(n, {}).get("value")
            cells.append("–" if v is None else f"{v:.2f}")
        rows.append(f"| `{n}` | " + " | ".join(cells) + " |")
    where = (f"{results.get('dataset', '?')} / {results.get('split', '?')} split, "
             f"{results.get('num_images', '?')} images, protocol version "
             f"{results.get('protocol_version', '?')}")
    return f"Measured on {where} (`results_{results.get('split', 'test')}.json`):\n\n" + head + \
        "\n".join(rows) + "\n"


def model_card(cfg, name: str, supervision: str, results: Optional[Dict[str, Any]] = None,
               source: str = "", version: str = "") -> str:
    """The README.md of a pretrained folder: front matter for the Hub, what the model is, how
    to load it, the training data, the measured results (when given) and the config."""
    enc = cfg.model.encoder
    method = cfg.method.name
    front = ("---\nlibrary_name: partformer\npipeline_tag: image-segmentation\ntags:\n"
             f"- part-discovery\n- {method}\n- {cfg.data.name}\n---\n\n")
    steps = (f"{cfg.train.max_steps} steps" if cfg.train.max_steps
             else f"{cfg.train.epochs} epochs")
    rows = [("method", f"`{method}` ({supervision})"),
            ("parts", f"K = {cfg.model.num_parts} (+ background, the last map)"),
            ("input", f"{cfg.data.image_size} x {cfg.data.image_size} px, data.resize="
                      f"`{cfg.data.resize}`"),
            ("encoder", f"`{enc.name}`" + (" (frozen)" if enc.frozen else "")),
            ("training data", f"`{cfg.data.name}`, split `{cfg.data.train_split}` "
                              f"(model selection on `{cfg.data.val_split}`)"),
            ("training", f"{steps}, batch {cfg.train.batch_size}, lr {cfg.train.lr:g}, seed "
                         f"{cfg.experiment.seed}")]
    table = "| | |\n|---|---|\n" + "\n".join(f"| {k} | {v} |" for k, v in rows) + "\n"
    use = ("```python\nimport partformer\n"
           f"predictor = partformer.load(\"hf://{name}\")   # or partformer.from_pretrained"
           f"(\"{name}\")\nout = predictor(\"photo.jpg\")   # out.maps [K+1, H, W], out.labels "
           "[H, W] (K = background)\n```\n\nor any partformer tool: `--model hf://" + name + "`.")
    results_md = _results_table(results) or "No results file was found next to the model.\n"
    origin = f"\nExported from `{source}`" + (f" with partformer {version}" if version else "") \
        + ".\n" if source else ""
    return (front + f"# {name}\n\nA part-discovery model: soft part maps `[K+1, H, W]` for any "
            "image, a softmax over the K parts and the background.\n\n" + table + "\n## Use\n\n"
            + use + "\n\n## Results\n\n" + results_md + "\n## Config\n\n```yaml\n"
            + cfglib.to_yaml(cfg, "train") + "```\n" + origin)


def write_card(folder: str, text: str) -> str:
    path = os.path.join(folder, CARD_FILE)
    with atomic_open(path, "w") as f:
        f.write(text)
    return path


def read_results(path: Optional[str]) -> Optional[Dict[str, Any]]:
    if path and os.path.isfile(path):
        with open(path) as f:
            return json.load(f)
    return None


# ------------------------------------------------------------------------------------ upload
def upload(folder: str, repo_id: str, private: bool = False, token: Optional[str] = None,
           commit_message: str = "Upload partformer model", revision: Optional[str] = None
           ) -> str:
    """Create ``repo_id`` on the Hub (if needed) and upload the pretrained ``folder``'s files;
    returns the commit URL (or the repository URL)."""
    from huggingface_hub import HfApi
    split_hub_name(repo_id)
    api = HfApi(token=token)
    api.create_repo(repo_id=repo_id, private=private, exist_ok=True, repo_type="model")
    info = api.upload_folder(folder_path=folder, repo_id=repo_id, repo_type="model",
                             commit_message=commit_message, revision=revision,
                             allow_patterns=list(FILES))
    return str(getattr(info, "commit_url", None) or info or f"https://huggingface.co/{repo_id}")
