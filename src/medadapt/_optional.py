"""Lazy import of optional heavy dependencies behind one helper."""

from __future__ import annotations

import importlib
from types import ModuleType

from .errors import MissingDependencyError

__all__ = ["require"]


def require(module: str, *, extra: str, package: str | None = None) -> ModuleType:
    """Import ``module`` or raise an error naming the ``pip install`` that provides it.

    Example:
        >>> np = require("numpy", extra="core")
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        pkg = package or module.split(".")[0]
        raise MissingDependencyError(
            f"{pkg!r} is needed for this but is not installed ({e}); "
            f"install it with: pip install 'medadapt[{extra}]'"
        ) from e
