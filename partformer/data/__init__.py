"""Datasets: one module per dataset, looked up by name through ``DATASETS``.

Every dataset class takes ``root, split, image_size, resize`` plus its own keyword options and
returns the sample dict documented in docs/ARCHITECTURE.md.
"""
from __future__ import annotations

import importlib
from typing import Optional

from partformer.data.io import DatasetError
from partformer.registry import Registry

DATASETS: Registry = Registry("dataset")
register_dataset = DATASETS.register

# the modules that register datasets (imported on the first registry lookup, not with the package)
_MODULES = ["synthetic", "cub", "image_folder", "celeba", "partimagenet", "deepfashion"]


def _import_all() -> None:
    for name in _MODULES:
        importlib.import_module(f"partformer.data.{name}")


def dataset_names():
    """Names of the registered datasets (the valid values of ``data.name``)."""
    _import_all()
    return DATASETS.names()


def build_dataset(data_cfg, split: str, skip_bad_images: Optional[bool] = None):
    """Build the dataset named by ``data_cfg.name`` for ``split`` (train / val / test / ...).

    ``skip_bad_images`` (default: ``data_cfg.skip_bad_images``): skip undecodable or missing images
    with a warning instead of raising. Training skips by default; evaluation passes
    ``eval.skip_bad_images`` (default False) so that no image is dropped silently.

    Raises :class:`partformer.data.io.DatasetError` (naming ``data.name``, ``data.root``, the split
    and the dataset's own message: the file, line and fix) when the dataset cannot be read.
    """
    _import_all()
    cls = DATASETS.get(data_cfg.name)
    options = dict(data_cfg.options or {})
    options["skip_bad_images"] = (data_cfg.skip_bad_images if skip_bad_images is None
                                  else skip_bad_images)
    try:
        return cls(root=data_cfg.root, split=split, image_size=data_cfg.image_size,
                   resize=data_cfg.resize, **options)
    except (OSError, ValueError, KeyError) as e:
        # a wrong layout, table or option: one message for the CLIs, the cause kept for --debug
        detail = e.args[0] if isinstance(e, KeyError) and e.args else e
        raise DatasetError(f"dataset data.name={data_cfg.name} split {split!r} at "
                           f"data.root={data_cfg.root}: {detail}") from e
