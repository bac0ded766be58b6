"""A pre-filled Hugging Face cache for tests (no network): files placed where
``huggingface_hub`` looks for them offline (``<cache>/models--<org>--<name>/snapshots/<commit>/``
and ``refs/main``), as a download would have left them."""
from __future__ import annotations

import os
import shutil
from typing import Dict

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fill_cache(cache_dir: str, repo_id: str, files: Dict[str, str],
               revision: str = "main") -> str:
    """Copy ``files`` (name in the repository -> local path) into the cache as the snapshot of
    ``repo_id`` at ``revision``; returns the snapshot folder."""
    repo = os.path.join(cache_dir, "models--" + repo_id.replace("/", "--"))
    snap = os.path.join(repo, "snapshots", COMMIT)
    for name, src in files.items():
        dst = os.path.join(snap, name)
        os.makedirs(os.path.dirname(dst), exist_ok=True)
        shutil.copyfile(src, dst)
    os.makedirs(os.path.join(repo, "refs"), exist_ok=True)
    with open(os.path.join(repo, "refs", revision), "w") as f:
        f.write(COMMIT)
    return snap


def use_cache(monkeypatch, cache_dir: str) -> None:
    """Point huggingface_hub (already imported or not) at ``cache_dir``, offline."""
    import huggingface_hub.constants as c
    monkeypatch.setenv("HF_HUB_CACHE", cache_dir)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(c, "HF_HUB_CACHE", cache_dir)
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
