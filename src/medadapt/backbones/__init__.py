"""Backbones from timm, transformers and open_clip behind one contract (see :mod:`.base`).

Addresses (:class:`BackboneAddress`, the catalogue) are parsed without importing torch, so that a bad one is
reported in a fraction of a second; the model code (and torch) loads on first use of the names below.
"""

from .._choices import CHANNEL_MODES
from .._lazy import lazy_exports
from ._factory import SOURCES, BackboneAddress, catalog, create_backbone, list_backbones

_EXPORTS = {
    "adapt_first_conv": "adapt",
    "fold_gray_conv": "adapt",
    "Backbone": "base",
    "BackboneSpec": "base",
    "Features": "base",
}


__getattr__ = lazy_exports(__name__, _EXPORTS)


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
