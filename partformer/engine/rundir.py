"""Run directories: a new run never writes into a directory that already holds a run.

A training or pretraining run writes checkpoints (``last.pt``, ``best.pt``), ``metrics.jsonl``,
``config.yaml``, summaries and mask images into its run directory. Started on a directory that
already holds a run, it would replace that run's checkpoints and mix both runs in
``metrics.jsonl``. So:

- the default directory ``<experiment.output_dir>/<experiment.name>-<time>`` is claimed with an
  atomic ``mkdir``; a second run started in the same second gets ``-2``, ``-3``, ...;
- an explicit one (``--run-dir`` / ``experiment.run_dir``) that already holds a run needs
  ``--resume`` (continue it) or ``--overwrite`` (remove that run's files first);
- temporary files of a checkpoint write that was killed (``SIGKILL`` leaves ``.tmp-*``) are
  removed when a run (re)starts in the directory.
"""
from __future__ import annotations

import glob
import os
import shutil
import time
from typing import List, Optional

from partformer.config import ConfigError

# what marks a directory as holding a run, and what --overwrite removes
RUN_MARKERS = ("last.pt", "best.pt", "metrics.jsonl", "config.yaml")
RUN_OUTPUTS = RUN_MARKERS + ("train_summary.json", "pretrain_summary.json", "results_*.json")
RUN_FOLDERS = ("masks",)
TEMP_PATTERN = ".tmp-*"


def run_files(run_dir: str) -> List[str]:
    """The files of a run in ``run_dir`` (names), empty if it holds none."""
    return sorted(m for m in RUN_MARKERS if os.path.exists(os.path.join(run_dir, m)))


def check_run_dir(run_dir: str, resume: bool, overwrite: bool, tool: str) -> None:
    """Refuse an explicit ``run_dir`` that holds a run unless resuming or overwriting."""
    found = run_files(run_dir) if os.path.isdir(run_dir) else []
    if found and not resume and not overwrite:
        raise ConfigError(
            f"the run directory {run_dir} already holds a run ({', '.join(found)}). Continue it "
            f"with: python {tool} --resume {run_dir}; replace it with --overwrite; or pass "
            "another --run-dir (nothing was written)")


def clear_run(run_dir: str) -> List[str]:
    """``--overwrite``: remove the previous run's outputs from ``run_dir``; returns their names."""
    removed = []
    for pattern in RUN_OUTPUTS:
        for path in glob.glob(os.path.join(glob.escape(run_dir), pattern)):
            os.remove(path)
            removed.append(os.path.basename(path))
    for folder in RUN_FOLDERS:
        path = os.path.join(run_dir, folder)
        if os.path.isdir(path):
            shutil.rmtree(path)
            removed.append(folder + "/")
    return sorted(removed)


def remove_stale_temporaries(run_dir: str) -> List[str]:
    """Remove ``.tmp-*`` files of interrupted atomic writes (a process killed mid-write; a live
    writer of this run does not exist yet when a run starts)."""
    removed = []
    for path in glob.glob(os.path.join(glob.escape(run_dir), TEMP_PATTERN)):
        if os.path.isfile(path):
            os.remove(path)
            removed.append(os.path.basename(path))
    return removed


def default_run_dir_name(output_dir: str, name: str) -> str:
    return os.path.join(output_dir, f"{name}-{time.strftime('%Y%m%d-%H%M%S')}")


def claim_run_dir(run_dir: Optional[str], output_dir: str, name: str) -> str:
    """Create the run directory and return it: ``run_dir`` if given (it may exist), else a new
    default directory claimed with an atomic ``mkdir`` (``-2``, ``-3``, ... when taken)."""
    if run_dir:
        os.makedirs(run_dir, exist_ok=True)
        return run_dir
    base = default_run_dir_name(output_dir, name)
    os.makedirs(os.path.dirname(base) or ".", exist_ok=True)
    for i in range(1, 10_000):
        cand = base if i == 1 else f"{base}-{i}"
        try:
            os.mkdir(cand)
            return cand
        except FileExistsError:
            continue
    raise ConfigError(f"could not create a new run directory below {output_dir} ({base}-* all "
                      "exist); pass --run-dir")


def requested_run_dir(run_dir: Optional[str], cfg) -> Optional[str]:
    """The explicit run directory: the ``run_dir`` argument (``--run-dir``, or the directory of
    ``--resume``), else ``experiment.run_dir``; None for a new default directory."""
    return run_dir or cfg.experiment.run_dir or None


def open_run_dir(run_dir: Optional[str], cfg, overwrite: bool, verbose: bool = True) -> str:
    """Rank 0 claims the run directory (:func:`claim_run_dir`), removes the previous run's files
    with ``overwrite`` and stale temporaries; every rank gets the path. Call it after
    :func:`check_run_dir` and once the run is built (nothing is created for a run that fails to
    build)."""
    from partformer.engine import distributed as D
    path = None
    if D.is_main_process():
        path = claim_run_dir(run_dir, cfg.experiment.output_dir, cfg.experiment.name)
        if overwrite:
            removed = clear_run(path)
            if removed and verbose:
                print(f"--overwrite: removed {', '.join(removed)} of the previous run in {path}")
        remove_stale_temporaries(path)
    return D.broadcast_object(path)
