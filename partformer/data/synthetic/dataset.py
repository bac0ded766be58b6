"""``data.name: synthetic``: the generated tree read by the CUB loader."""
from __future__ import annotations

from partformer.data import register_dataset
from partformer.data.synthetic.levels import generator_config
from partformer.data.synthetic.tree import ensure_synthetic


@register_dataset("synthetic")
def build_synthetic(root, split, image_size, resize="whole", **options):
    """The synthetic benchmark as a ``CUBDataset``; generated on first use.

    ``options["generator"]`` (dict) holds an optional ``level`` (a name of
    :mod:`partformer.data.synthetic.levels`; default ``cluttered``), ``SyntheticConfig`` fields on
    top of it, and an optional ``num_workers`` for generation; every other option goes to
    ``CUBDataset``.
    """
    cfg, workers = generator_config(options.pop("generator", None))
    ensure_synthetic(root, cfg, num_workers=workers)
    from partformer.data.cub import CUBDataset
    return CUBDataset(root, split, image_size, resize, **options)
