"""A backbone plus a head, trained end to end (or partly) by a strategy."""

from __future__ import annotations

import torch
from torch import nn

from ..backbones.base import Backbone
from ..heads import create_head

__all__ = ["Classifier", "build_classifier"]


class Classifier(nn.Module):
    """``backbone -> head``: the head reads the global embedding (``linear``) or the patch tokens (``attention``)."""

    def __init__(self, backbone: Backbone, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.head_input = getattr(head, "input_key", "embeddings")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = self.backbone.forward_features(x)
        return self.head(feats.tokens if self.head_input == "tokens" else feats.embedding)

    def layer_groups(self) -> list[list[str]]:
        """The backbone's groups (input → output) followed by the head, as parameter names of this module."""
        groups = [[f"backbone.{n}" for n in g] for g in self.backbone.layer_groups()]
        return groups + [[f"head.{n}" for n, _ in self.head.named_parameters()]]


def build_classifier(backbone: Backbone, head: str, num_outputs: int, **head_kwargs) -> Classifier:
    """A trainable classifier; ``head`` is ``linear`` or ``attention`` (kNN is not trainable end to end).

    A backbone built with ``init=torch`` (PyTorch's default initialisation, as in the official MedMNIST v2
    ResNets, whose ``fc`` is a default ``nn.Linear``) gets a head initialised the same way, so that the whole
    network starts as the official one does.
    """
    from ..heads import HEADS

    reads_tokens = getattr(HEADS.get(head), "input_key", "embeddings") == "tokens"
    dim = backbone.token_dim if reads_tokens else backbone.num_features
    module = create_head(head, dim, num_outputs, **head_kwargs)
    if _torch_init(backbone):
        for layer in module.modules():
            if callable(getattr(layer, "reset_parameters", None)):
                layer.reset_parameters()
    return Classifier(backbone, module)


def _torch_init(backbone: Backbone) -> bool:
    from ..backbones._factory import BackboneAddress

    return BackboneAddress.parse(backbone.spec.address).kwargs.get("init") == "torch"
