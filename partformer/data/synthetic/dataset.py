"""``data.name: synthetic``: the generated tree read by the CUB loader."""
from __future__ import annotations

from partformer.data import register_dataset
from partformer.data.synthetic.config import SyntheticConfig
from partformer.data.synthetic.tree import ensure_synthetic


@register_dataset("synthetic")
def build_synthetic(root, split, image_size, resize="whole", **options):
    """The synthetic benchmark as a ``CUBDataset``; generated on first use.

    ``options["generator"]`` (dict) holds ``SyntheticConfig`` fields plus an optional
    ``num_workers`` for generation; every other option goes to ``CUBDataset``.
    """
    gen = dict(options.pop("generator", None) or {})
    workers = int(gen.pop("num_workers", 1))
    ensure_synthetic(root, SyntheticConfig(**gen), num_workers=workers)
    from partformer.data.cub import CUBDataset
    return CUBDataset(root, split, image_size, resize, **options)
