"""The ground-truth part-mask oracle: the dataset's own semantic part masks as K part maps, scored
under the same protocols as every method (the README's "GT semantic part masks (ceiling)" row).

It is not a method and uses the ground truth of the very images it is scored on: an upper bound of
what a partition into K parts of the benchmark's own parts can score. With C GT parts:

- K >= C: GT part p is channel p - 1 (channels C..K-1 stay empty), the background channel K;
  the partition, and so every score, is the same for every K >= C;
- K < C: the C parts must share K channels; :func:`part_groups` lists every way to merge them into
  K non-empty groups, and :func:`best_grouping` picks the one with the highest score on another
  split (the validation split in ``tools/oracle.py``), never on the split reported.
"""
from __future__ import annotations

from typing import Any, Dict, Iterator, List, Mapping, Sequence, Tuple

import torch

__all__ = ["part_groups", "identity_groups", "part_mask_oracle", "best_grouping",
           "MAX_GROUPINGS"]

MAX_GROUPINGS = 2000

Groups = Tuple[Tuple[int, ...], ...]


def identity_groups(num_classes: int) -> Groups:
    """One group per GT part: ``((1,), (2,), ..., (C,))``."""
    return tuple((p,) for p in range(1, num_classes + 1))


def _set_partitions(items: Sequence[int], k: int) -> Iterator[List[List[int]]]:
    """Every partition of ``items`` into exactly ``k`` non-empty blocks (blocks ordered by their
    smallest element)."""
    if k == len(items):
        yield [[x] for x in items]
        return
    if k == 1:
        yield [list(items)]
        return
    if k < 1 or k > len(items):
        return
    first, rest = items[0], items[1:]
    for p in _set_partitions(rest, k - 1):      # ``first`` alone
        yield [[first]] + p
    for p in _set_partitions(rest, k):           # ``first`` joins one of the k blocks
        for i in range(k):
            yield [b if j != i else [first] + b for j, b in enumerate(p)]


def part_groups(num_classes: int, num_parts: int) -> List[Groups]:
    """The groupings of GT parts ``1..C`` that K channels can hold: the identity when K >= C,
    else every partition into K non-empty groups (S(C, K) of them, at most ``MAX_GROUPINGS``)."""
    C, K = int(num_classes), int(num_parts)
    if C < 1 or K < 1:
        raise ValueError(f"need at least one GT part and one channel, got C={C}, K={K}")
    if K >= C:
        return [identity_groups(C)]
    out: List[Groups] = []
    for p in _set_partitions(list(range(1, C + 1)), K):
        out.append(tuple(sorted(tuple(sorted(b)) for b in p)))
        if len(out) > MAX_GROUPINGS:
            raise ValueError(f"more than {MAX_GROUPINGS} ways to merge {C} parts into {K}; "
                             "give the grouping explicitly")
    return sorted(set(out))


def part_mask_oracle(num_parts: int, groups: Groups):
    """``batch -> [B, K+1, H, W]`` one-hot maps from ``batch["part_mask"]``: GT label ``p`` in
    ``groups[g]`` -> channel ``g``; background (0), ignored pixels (-1) and labels in no group ->
    the background channel ``K``."""
    K = int(num_parts)
    if len(groups) > K:
        raise ValueError(f"{len(groups)} groups do not fit in K = {K} channels")
    top = max((p for g in groups for p in g), default=0)
    lut = torch.full((top + 2,), K, dtype=torch.long)      # index label + 1 (so -1 -> 0)
    for g, members in enumerate(groups):
        for p in members:
            lut[p + 1] = g

    def predict(batch: Mapping[str, Any]) -> torch.Tensor:
        m = batch["part_mask"].long()
        m = torch.where((m >= -1) & (m <= top), m, torch.full_like(m, -1))
        lab = lut.to(m.device)[m + 1]
        return torch.nn.functional.one_hot(lab, K + 1).permute(0, 3, 1, 2).float()
    return predict


def best_grouping(dataset, num_parts: int, num_classes: int, metric: str = "kp_nmi_with_bg",
                  batch_size: int = 64, resize: str = "whole") -> Tuple[Groups, Dict[Groups, float]]:
    """The grouping of :func:`part_groups` with the highest ``metric`` on ``dataset`` (choose it
    on a split other than the one reported) and the score of every grouping."""
    from partformer.engine.evaluator import evaluate
    samples = _Decoded(dataset)
    scores: Dict[Groups, float] = {}
    for groups in part_groups(num_classes, num_parts):   # decoded once, scored per grouping
        res = evaluate(part_mask_oracle(num_parts, groups), samples, num_parts, resize=resize,
                       protocols=[metric], batch_size=batch_size)
        scores[groups] = float(res[metric]["value"])
    best = max(scores, key=scores.get)   # the first of the best, in sorted order
    return best, scores


class _Decoded(torch.utils.data.Dataset):
    """The readable samples of a dataset, decoded once (each grouping is scored on them)."""

    def __init__(self, dataset):
        self.samples = [s for s in (dataset[i] for i in range(len(dataset))) if s is not None]
        self.part_names = getattr(dataset, "part_names", None)
        self.num_part_classes = getattr(dataset, "num_part_classes", None)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i):
        return self.samples[i]
