"""A tiny name -> constructor registry (timm's ``create_model`` pattern).

Two registries use it: datasets (``partformer.data.DATASETS``, ``data.name``; adding a dataset is
adding one module) and accumulating metrics (``partformer.metrics.METRICS``, read by the protocol
table). Encoders are named by timm's own registry (``model.encoder.name`` goes to
``timm.create_model``), the two baselines by the dict ``partformer.baselines.BASELINES``.
"""
from __future__ import annotations

import difflib
from typing import Callable, Dict, Generic, Iterator, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str):
        self.kind = kind
        self._items: Dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        def deco(obj: T) -> T:
            if name in self._items:
                raise KeyError(f"{self.kind} {name!r} is registered twice")
            self._items[name] = obj
            return obj

        return deco

    def get(self, name: str) -> T:
        if name not in self._items:
            close = difflib.get_close_matches(name, list(self._items), n=3)
            hint = f" Did you mean {', '.join(map(repr, close))}?" if close else ""
            raise KeyError(f"unknown {self.kind} {name!r}; known: {sorted(self._items)}.{hint}")
        return self._items[name]

    def __contains__(self, name: str) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._items))

    def names(self):
        return sorted(self._items)
