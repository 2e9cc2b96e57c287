"""One small registry type, used once per extension point (backends, strategies, proposers,
verifiers, exporters).

Entries are registered either eagerly with the :meth:`Registry.register` decorator or lazily
as ``"module:attribute"`` strings, so that heavy imports (onnxruntime, llama_cpp, torch) only
happen when an entry is actually used. Unknown names fail with the list of known ones::

    unknown backend 'onx'; known: llamacpp, numpy, onnx
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Generic, TypeVar

from edgespec.errors import EdgespecError

T = TypeVar("T")


class Registry(Generic[T]):
    """A name -> object table with lazy entries and helpful errors.

    Args:
        kind: what the entries are, used in error messages ("backend", "strategy", ...).
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._lazy: dict[str, str] = {}
        self._loaded: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@REGISTRY.register("name")`` on a class or function."""

        def deco(obj: T) -> T:
            self._loaded[name] = obj
            return obj

        return deco

    def add_lazy(self, name: str, target: str) -> None:
        """Register ``name`` as ``"package.module:attribute"``, imported on first use."""
        self._lazy[name] = target

    def names(self) -> list[str]:
        """All known names, sorted."""
        return sorted(set(self._lazy) | set(self._loaded))

    def __contains__(self, name: object) -> bool:
        return name in self._lazy or name in self._loaded

    def get(self, name: str) -> T:
        """The entry for ``name``; raises :class:`EdgespecError` listing known names."""
        if name in self._loaded:
            return self._loaded[name]
        if name not in self._lazy:
            raise EdgespecError(f"unknown {self.kind} '{name}'; known: {', '.join(self.names())}")
        module_name, _, attr = self._lazy[name].partition(":")
        module = importlib.import_module(module_name)
        obj = getattr(module, attr)
        self._loaded[name] = obj
        return obj
