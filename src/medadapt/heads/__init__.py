"""Probe heads on frozen features: linear, attention pooling over patch tokens, and kNN.

Every head is an ``nn.Module`` built as ``cls(dim, num_outputs, **kwargs)`` with three class attributes:
``input_key`` (which :class:`~medadapt.features.featureset.FeatureSet` array it reads: ``"embeddings"``
or ``"tokens"``), ``outputs`` (``"logits"``, or ``"scores"`` when it already returns probabilities) and
``trainable`` (``False`` for kNN, which is fitted, not trained). Adding a head is one module and one
``HEADS.register`` line here. Segmentation heads (patch tokens to per-pixel logits: ``linear``, ``multiscale``,
``decoder``) have their own registry, :data:`SEGMENTATION_HEADS`, since ``linear`` names the 1x1 convolution
head there.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from .._registry import Registry
from .attention_pool import AttentionPoolHead, default_num_heads
from .knn import KNNHead, knn_scores
from .linear import LinearHead
from .segmentation import SEGMENTATION_HEADS, create_segmentation_head

__all__ = [
    "HEADS",
    "AttentionPoolHead",
    "KNNHead",
    "LinearHead",
    "SEGMENTATION_HEADS",
    "create_segmentation_head",
    "create_head",
    "default_num_heads",
    "knn_scores",
]

HEADS: Registry[type[nn.Module]] = Registry("head")
HEADS.register("linear", LinearHead)
HEADS.register("attention", AttentionPoolHead)
HEADS.register("knn", KNNHead)


def create_head(name: str, dim: int, num_outputs: int, **kwargs: Any) -> nn.Module:
    """Build the registered head ``name``.

    Example:
        >>> create_head("attention", 384, 2, depth=1).input_key
        'tokens'
    """
    return HEADS.get(name)(dim, num_outputs, **kwargs)
