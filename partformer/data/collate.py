"""Batch collation that tolerates skipped (undecodable) samples.

A dataset built with ``skip_bad_images=True`` returns ``None`` for an image that fails to decode
(after a warning naming the file). ``collate`` drops those and reports how many it dropped in
``batch["num_skipped"]`` so the trainer can count them in the run summary.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import torch
from torch.utils.data import default_collate


def collate(samples: List[Optional[Dict[str, Any]]]) -> Dict[str, Any]:
    kept = [s for s in samples if s is not None]
    skipped = len(samples) - len(kept)
    if not kept:
        return {"num_skipped": torch.tensor(skipped)}
    batch = default_collate(kept)
    batch["num_skipped"] = torch.tensor(skipped)
    return batch
