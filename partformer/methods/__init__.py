"""Part-discovery methods, one package each, looked up by name (``method.name``).

Every subpackage of ``partformer/methods/`` is imported on the first lookup and registers its
:class:`~partformer.methods.base.Method` with :func:`register_method`; adding a method is adding a
package (docs/ADDING_A_METHOD.md). Nothing outside this folder names a method.
"""
from __future__ import annotations

import importlib
import pkgutil
from typing import List

from partformer.methods.base import METHODS, Method, ParamGroup, register_method

__all__ = ["METHODS", "Method", "ParamGroup", "register_method", "get_method", "method_names",
           "build_method", "build_model", "DEFAULT_METHOD"]

# what `python tools/train.py` trains when the config names no method
DEFAULT_METHOD = "partformer"

_imported = False


def _import_all() -> None:
    global _imported
    if _imported:
        return
    for info in pkgutil.iter_modules(__path__):
        if info.ispkg and not info.name.startswith("_"):
            importlib.import_module(f"{__name__}.{info.name}")
    _imported = True


def method_names(trainable: bool = None) -> List[str]:
    """Registered method names; ``trainable=True`` / ``False``: only trained / training-free."""
    _import_all()
    return [n for n in METHODS.names()
            if trainable is None or METHODS.get(n).trainable == trainable]


def get_method(name: str) -> type:
    """The :class:`Method` subclass registered as ``name`` (an error names the known ones)."""
    _import_all()
    return METHODS.get(name)


def build_method(cfg, name: str = None) -> Method:
    """The method ``name`` (default ``cfg.method.name``) for the resolved config ``cfg``."""
    return get_method(name or cfg.method.name)(cfg)


def build_model(cfg, pretrained: bool = True):
    """The model of ``cfg.method.name`` for the resolved config ``cfg`` (``pretrained=False``:
    no pretrained encoder weights are fetched; load a state dict into it)."""
    return build_method(cfg).build_model(pretrained=pretrained)
