"""Backbones from timm, transformers and open_clip behind one contract (see :mod:`.base`).

Addresses (:class:`BackboneAddress`, the catalogue) are parsed without importing torch, so that a bad one is
reported in a fraction of a second; the model code (and torch) loads on first use of the names below.
"""

import importlib
from typing import Any

from .._choices import CHANNEL_MODES
from ._factory import SOURCES, BackboneAddress, catalog, create_backbone, list_backbones

_EXPORTS = {
    "adapt_first_conv": "adapt",
    "fold_gray_conv": "adapt",
    "Backbone": "base",
    "BackboneSpec": "base",
    "Features": "base",
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "SOURCES",
    "CHANNEL_MODES",
    "Backbone",
    "BackboneAddress",
    "BackboneSpec",
    "Features",
    "adapt_first_conv",
    "catalog",
    "create_backbone",
    "fold_gray_conv",
    "list_backbones",
]
