"""Lazy package exports (PEP 562): a package names what it exports and where, and imports it on first use.

The packages whose modules import torch (heads, strategies, training, backbones, the batch transforms of
data) export through this, so that importing the package itself stays light: the CLI checks a config's
names, addresses and files before torch is imported.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, where: dict[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` serving ``name`` from the submodule ``where[name]`` of ``package``.

    Example:
        >>> __getattr__ = lazy_exports(__name__, {"LinearHead": "linear"})  # doctest: +SKIP
    """

    def __getattr__(name: str) -> Any:
        if name in where:
            return getattr(importlib.import_module(f"{package}.{where[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    return __getattr__
