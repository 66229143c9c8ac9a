"""Probe heads on frozen features: linear, attention pooling over patch tokens, and kNN.

Every head is an ``nn.Module`` built as ``cls(dim, num_outputs, **kwargs)`` with three class attributes:
``input_key`` (which :class:`~medadapt.features.featureset.FeatureSet` array it reads: ``"embeddings"``
or ``"tokens"``), ``outputs`` (``"logits"``, or ``"scores"`` when it already returns probabilities) and
``trainable`` (``False`` for kNN, which is fitted, not trained). Adding a head is one module and one
``HEADS.register_lazy`` line here, whose ``trainable=`` says what the class says (a test checks they agree).
Segmentation heads (patch tokens to per-pixel logits: ``linear``, ``multiscale``, ``decoder``) have their
own registry, :data:`SEGMENTATION_HEADS`, since ``linear`` names the 1x1 convolution head there.

The registrations are lazy: the names are known without importing torch (so that a config naming a head
is checked in a fraction of a second), and a head's module is imported when it is built.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from .._lazy import lazy_exports
from .._registry import Registry

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "HEADS",
    "NATIVE_HEAD",
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
HEADS.register_lazy("linear", "medadapt.heads.linear:LinearHead", trainable=True)
HEADS.register_lazy("attention", "medadapt.heads.attention_pool:AttentionPoolHead", trainable=True)
HEADS.register_lazy("knn", "medadapt.heads.knn:KNNHead", trainable=False)

SEGMENTATION_HEADS: Registry[type[nn.Module]] = Registry("segmentation head")
SEGMENTATION_HEADS.register_lazy("linear", "medadapt.heads.segmentation:LinearSegHead")
SEGMENTATION_HEADS.register_lazy("multiscale", "medadapt.heads.segmentation:MultiScaleSegHead")
SEGMENTATION_HEADS.register_lazy("decoder", "medadapt.heads.segmentation:ProgressiveDecoderHead")

#: The head of an ``smp:`` backbone's own decoder (fine-tuning of segmentation models; not a registered class).
NATIVE_HEAD = "native"

#: where the names exported here live (imported on first use)
_EXPORTS = {
    "AttentionPoolHead": "attention_pool",
    "default_num_heads": "attention_pool",
    "KNNHead": "knn",
    "knn_scores": "knn",
    "LinearHead": "linear",
    "create_segmentation_head": "segmentation",
}


__getattr__ = lazy_exports(__name__, _EXPORTS)


def create_head(name: str, dim: int, num_outputs: int, **kwargs: Any) -> nn.Module:
    """Build the registered head ``name``.

    Example:
        >>> create_head("attention", 384, 2, depth=1).input_key
        'tokens'
    """
    return HEADS.get(name)(dim, num_outputs, **kwargs)
