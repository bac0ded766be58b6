"""Experiment logging: a JSON-lines file in the run directory and Weights & Biases.

Only rank 0 logs. W&B runs offline by default, so nothing blocks on a machine without a key or a
network; `logging.wandb.mode=online` syncs live, `disabled` turns it off. An explicit ``WANDB_MODE``
environment variable wins over the config (CI and tests set it).
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Dict, Optional

import numpy as np

from partformer.engine import distributed as D


class ExperimentLogger:
    def __init__(self, run_dir: str, wandb_cfg, config_dict: Dict[str, Any], run_name: str,
                 resume_id: Optional[str] = None):
        self.active = D.is_main_process()
        self.run_dir = run_dir
        self.wandb = None
        self.wandb_id: Optional[str] = None
        self._file = None
        if not self.active:
            return
        os.makedirs(run_dir, exist_ok=True)
        self._file = open(os.path.join(run_dir, "metrics.jsonl"), "a")
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
                id=resume_id, resume="allow" if resume_id else None)
            self.wandb_id = self.wandb.id

    def log(self, scalars: Dict[str, Any], step: int) -> None:
        if not self.active:
            return
        row = {"step": int(step), "time": time.time(), **{k: _plain(v) for k, v in scalars.items()}}
        self._file.write(json.dumps(row) + "\n")
        self._file.flush()
        if self.wandb is not None:
            self.wandb.log({k: _plain(v) for k, v in scalars.items()}, step=int(step))

    def log_image(self, key: str, rgb: np.ndarray, step: int, caption: str = "") -> None:
        if not self.active or self.wandb is None:
            return
        import wandb
        self.wandb.log({key: wandb.Image(rgb, caption=caption)}, step=int(step))

    def summary(self, values: Dict[str, Any]) -> None:
        if not self.active:
            return
        if self.wandb is not None:
            for k, v in values.items():
                self.wandb.summary[k] = _plain(v)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self.wandb is not None:
            self.wandb.finish()
            self.wandb = None


def _plain(v: Any) -> Any:
    if hasattr(v, "item"):
        return v.item()
    return v
