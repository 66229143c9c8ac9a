"""Backbones from timm, transformers and open_clip behind one contract (see :mod:`.base`)."""

from ._factory import SOURCES, BackboneAddress, catalog, create_backbone, list_backbones
from .adapt import adapt_first_conv, fold_gray_conv
from .base import CHANNEL_MODES, Backbone, BackboneSpec, Features

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
