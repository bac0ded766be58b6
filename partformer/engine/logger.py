"""Experiment logging: a JSON-lines file in the run directory and Weights & Biases.

Only rank 0 logs. W&B runs offline by default, so nothing blocks on a machine without a key or a
network; `logging.wandb.mode=online` syncs live, `disabled` turns it off. An explicit ``WANDB_MODE``
environment variable wins over the config (CI and tests set it).

What goes to W&B (docs in README "Weights & Biases"): scalars; part masks as W&B segmentation
overlays (``wandb.Image(image, masks={"prediction": ..., "ground_truth": ...})`` with class
labels); per-image metric tables; the final results as summary values and a table; checkpoints as
artifacts; and the exit status (0 finished, 1 failed, 130 interrupted).
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from partformer.engine import distributed as D
from partformer.fileio import atomic_open, json_safe

# exit codes recorded in W&B (and returned by the CLIs): a run that failed or was interrupted is
# not shown as finished
EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130


class ExperimentLogger:
    """``metrics.jsonl`` plus an optional W&B run.

    Args:
        run_dir: where ``metrics.jsonl`` (and W&B's ``wandb/`` folder) go.
        wandb_cfg: the ``logging.wandb`` config section.
        config_dict: the resolved config, stored in the W&B run.
        run_name: W&B run name.
        resume_id: W&B run id to continue (a resumed training run).
        keep_rows: on resume, the number of ``metrics.jsonl`` rows written when the checkpoint was
            saved: later rows (logged after it, repeated by the resumed run) are dropped, so that
            each step is logged once. ``None`` keeps the file as it is.
        job_type: W&B job type (``train``, ``eval``, ``visualize``).
    """

    def __init__(self, run_dir: str, wandb_cfg, config_dict: Dict[str, Any], run_name: str,
                 resume_id: Optional[str] = None, keep_rows: Optional[int] = None,
                 job_type: str = "train"):
        self.active = D.is_main_process()
        self.run_dir = run_dir
        self.wandb = None
        self.wandb_id: Optional[str] = None
        self._file = None
        self.rows = 0
        if not self.active:
            return
        os.makedirs(run_dir, exist_ok=True)
        path = os.path.join(run_dir, "metrics.jsonl")
        self.rows = _truncate_rows(path, keep_rows)
        self._file = open(path, "a")
        mode = os.environ.get("WANDB_MODE") or wandb_cfg.mode
        if mode != "disabled":
            try:
                import wandb
            except ImportError:  # pragma: no cover - wandb is a dependency
                print("wandb is not installed; logging to metrics.jsonl only")
                return
            self.wandb = wandb.init(
                project=wandb_cfg.project, entity=wandb_cfg.entity, name=run_name,
                config=config_dict, dir=run_dir, mode=mode, tags=list(wandb_cfg.tags),
                id=resume_id, resume="allow" if resume_id else None, job_type=job_type)
            self.wandb_id = self.wandb.id

    def log(self, scalars: Dict[str, Any], step: int) -> None:
        if not self.active:
            return
        row = {"step": int(step), "time": time.time(), **{k: _plain(v) for k, v in scalars.items()}}
        self._file.write(json.dumps(row, allow_nan=False) + "\n")
        self._file.flush()
        self.rows += 1
        if self.wandb is not None:
            self.wandb.log({k: _plain(v) for k, v in scalars.items()}, step=int(step))

    def log_image(self, key: str, rgb: np.ndarray, step: int, caption: str = "") -> None:
        if not self.active or self.wandb is None:
            return
        import wandb
        self.wandb.log({key: wandb.Image(rgb, caption=caption)}, step=int(step))

    def log_masks(self, key: str, images: Sequence[np.ndarray], predictions: Sequence[np.ndarray],
                  num_parts: int, step: int, ground_truth: Optional[Sequence[np.ndarray]] = None,
                  gt_names: Optional[Sequence[str]] = None,
                  rows: Optional[Sequence[Dict[str, Any]]] = None,
                  ids: Optional[Sequence[Any]] = None) -> None:
        """Part masks as W&B segmentation overlays (toggle, opacity and class filter in the UI).

        ``images``: uint8 ``[H, W, 3]``; ``predictions``: ``[H, W]`` part labels, ``k`` = part k,
        ``num_parts`` = background (the channel order of the part maps); ``ground_truth``: the
        dataset's part masks (0 = background, ``c`` = ``gt_names[c - 1]``). Logs the list of images
        under ``key`` and, with ``rows`` (one dict of metrics per image), a ``wandb.Table`` under
        ``key + "_table"`` with the image, its id and its metrics.
        """
        if not self.active or self.wandb is None:
            return
        import wandb
        pred_labels = prediction_class_labels(num_parts)
        gt_labels = gt_class_labels(gt_names, ground_truth)
        media = []
        for i, (img, pred) in enumerate(zip(images, predictions)):
            masks = {"prediction": {"mask_data": np.asarray(pred, dtype=np.int64),
                                    "class_labels": pred_labels}}
            if ground_truth is not None:
                masks["ground_truth"] = {"mask_data": np.asarray(ground_truth[i], dtype=np.int64),
                                         "class_labels": gt_labels}
            media.append(wandb.Image(img, masks=masks,
                                     caption=None if ids is None else str(ids[i])))
        payload: Dict[str, Any] = {key: media}
        if rows is not None:
            metric_names = sorted({k for r in rows for k in r})
            table = wandb.Table(columns=["id", "image"] + metric_names)
            for i, (m, r) in enumerate(zip(media, rows)):
                table.add_data(str(ids[i]) if ids is not None else str(i), m,
                               *[_plain(r.get(k)) for k in metric_names])
            payload[key + "_table"] = table
        self.wandb.log(payload, step=int(step))

    def log_results(self, results: Dict[str, Dict[str, Dict[str, Any]]], split: str,
                    step: Optional[int] = None) -> None:
        """Final results ``{method: {protocol: {value, count, ...}}}``: summary values
        ``<split>/<method>/<protocol>`` and a table ``<split>/results`` (one row per method and
        protocol)."""
        if not self.active or self.wandb is None:
            return
        import wandb
        table = wandb.Table(columns=["method", "protocol", "value", "count", "skipped_images"])
        for method, res in results.items():
            for name, r in res.items():
                self.wandb.summary[f"{split}/{method}/{name}"] = _plain(r["value"])
                table.add_data(method, name, _plain(r["value"]), int(r.get("count", 0)),
                               int(r.get("skipped_images", 0)))
        if step is None:
            self.wandb.log({f"{split}/results": table})
        else:
            self.wandb.log({f"{split}/results": table}, step=int(step))

    def log_artifact(self, path: str, name: str, kind: str = "model",
                     metadata: Optional[Dict[str, Any]] = None) -> None:
        """Upload ``path`` as a W&B artifact (kept in the offline run until ``wandb sync``)."""
        if not self.active or self.wandb is None or not os.path.isfile(path):
            return
        import wandb
        art = wandb.Artifact(_artifact_name(name), type=kind,
                             metadata=_plain(dict(metadata or {})))
        art.add_file(path, name=os.path.basename(path))
        self.wandb.log_artifact(art)

    def define_best(self, key: str, goal: str = "max") -> None:
        """Make the run summary of ``key`` its best value (``max`` / ``min``), not its last."""
        if self.active and self.wandb is not None:
            self.wandb.define_metric(key, summary=goal)

    def log_model(self, checkpoint: str, collection: str, aliases: Sequence[str],
                  metadata: Optional[Dict[str, Any]] = None) -> None:
        """Log the model of one of our checkpoints as a version of the ``model`` artifact
        ``collection`` (one per experiment name, so versions accumulate across runs) with
        ``aliases``: the model-only files (:func:`model_artifact_files`), not the optimiser."""
        if not self.active or self.wandb is None or not os.path.isfile(checkpoint):
            return
        import tempfile
        with tempfile.TemporaryDirectory(prefix="partformer-artifact-") as tmp:
            art = model_artifact(checkpoint, collection, tmp, metadata)
            self.wandb.log_artifact(art, aliases=list(aliases))

    def record_model(self, checkpoint: str, collection: str,
                     metadata: Optional[Dict[str, Any]] = None) -> Optional[Dict[str, Any]]:
        """An evaluation's model as the input of this run: ``use_artifact`` of the same
        model-only files the training run logged (same collection and digest: W&B links the two
        runs). Offline, W&B cannot use artifacts: the run's config then records the artifact's
        name and digest (``model_artifact``), which name the version once both runs are synced.
        Returns that record."""
        if not self.active or self.wandb is None or not os.path.isfile(checkpoint):
            return None
        import tempfile
        with tempfile.TemporaryDirectory(prefix="partformer-artifact-") as tmp:
            art = model_artifact(checkpoint, collection, tmp, metadata)
            record = {"name": art.name, "type": art.type, "digest": art.manifest.digest(),
                      "checkpoint": os.path.abspath(checkpoint),
                      "linked": not self.wandb.settings._offline}
            if record["linked"]:
                self.wandb.use_artifact(art)
        self.wandb.config.update({"model_artifact": record}, allow_val_change=True)
        return record

    def summary(self, values: Dict[str, Any]) -> None:
        if not self.active:
            return
        if self.wandb is not None:
            for k, v in values.items():
                self.wandb.summary[k] = _plain(v)

    def close(self, exit_code: int = EXIT_OK) -> None:
        """Close the file and finish the W&B run with ``exit_code`` (non-zero: failed or
        interrupted in the W&B UI)."""
        if self._file is not None:
            self._file.close()
            self._file = None
        if self.wandb is not None:
            self.wandb.finish(exit_code=int(exit_code))
            self.wandb = None


def prediction_class_labels(num_parts: int) -> Dict[int, str]:
    """W&B class labels of predicted part labels: ``k`` -> ``part k``, ``K`` -> ``background``."""
    labels = {k: f"part {k}" for k in range(num_parts)}
    labels[num_parts] = "background"
    return labels


def gt_class_labels(names: Optional[Sequence[str]],
                    masks: Optional[Sequence[np.ndarray]] = None) -> Dict[int, str]:
    """W&B class labels of GT part masks: 0 -> ``background``, ``c`` -> ``names[c - 1]`` (or
    ``gt c`` without names, for every value found in ``masks``)."""
    labels = {0: "background"}
    if names:
        labels.update({c + 1: str(n) for c, n in enumerate(names)})
    elif masks is not None:
        for v in np.unique(np.concatenate([np.unique(np.asarray(m)) for m in masks])):
            if v > 0:
                labels[int(v)] = f"gt {int(v)}"
    return labels


MODEL_FILES = ("model.safetensors", "config.yaml")


def model_artifact_files(checkpoint: str, folder: str) -> List[str]:
    """The model of one of our checkpoints as ``<folder>/model.safetensors`` (its tensors only)
    and ``config.yaml`` (the config stored in the checkpoint, verbatim): the same bytes for the
    same checkpoint, so that a training run and an evaluation of its model log one artifact
    version (the pretrained-folder layout of :mod:`partformer.hf`)."""
    from safetensors.torch import save

    from partformer.engine.checkpoint import load_checkpoint
    ckpt = load_checkpoint(checkpoint)
    state = {k: v.detach().cpu().contiguous() for k, v in sorted(ckpt["model"].items())}
    paths = [os.path.join(folder, n) for n in MODEL_FILES]
    with open(paths[0], "wb") as f:
        f.write(save(state))
    with open(paths[1], "w") as f:
        f.write(ckpt.get("config", ""))
    return paths


def model_artifact(checkpoint: str, collection: str, folder: str,
                   metadata: Optional[Dict[str, Any]] = None):
    import wandb
    art = wandb.Artifact(_artifact_name(collection), type="model",
                         metadata=_plain(dict(metadata or {})))
    for path in model_artifact_files(checkpoint, folder):
        art.add_file(path, name=os.path.basename(path))
    return art


def _artifact_name(name: str) -> str:
    # W&B artifact names: letters, digits, '-', '_', '.'
    return "".join(c if c.isalnum() or c in "-_." else "-" for c in name)


def _truncate_rows(path: str, keep: Optional[int]) -> int:
    """Keep the first ``keep`` rows of ``path`` (atomically; all when ``keep`` is None); returns
    the number of rows the file then has."""
    if not os.path.isfile(path):
        return 0
    with open(path) as f:
        text = f.read()
    lines = [ln for ln in text.splitlines(keepends=True) if ln.strip()]
    if lines and not lines[-1].endswith("\n"):
        lines.pop()  # a row cut short by a crash mid-write
    elif keep is None or keep >= len(lines):
        return len(lines)
    keep = len(lines) if keep is None else min(keep, len(lines))
    with atomic_open(path, "w") as f:
        f.writelines(lines[:keep])
    return keep


def _plain(v: Any) -> Any:
    """A Python value of ``v`` (tensor / numpy scalars unwrapped) that strict JSON can hold:
    non-finite numbers become ``None`` (W&B refuses them in summaries and metadata)."""
    return json_safe(v)
