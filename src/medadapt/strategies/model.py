"""A backbone plus a head, trained end to end (or partly) by a strategy: a :class:`Classifier` (a label per
image) or a :class:`Segmenter` (a class per pixel). Strategies see only ``.backbone`` and ``.head``, so every
strategy trains either."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..backbones.base import Backbone
from ..heads import NATIVE_HEAD, create_head

__all__ = [
    "Classifier",
    "Segmenter",
    "build_classifier",
    "build_segmenter",
    "build_model",
    "resolve_levels",
    "NATIVE_HEAD",
    "DEFAULT_LEVELS",
]


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


class Segmenter(nn.Module):
    """``backbone -> segmentation head``: logits ``[B, C, H, W]`` at the input's size.

    The head reads what its ``input_key`` / ``multiscale`` say: the last level of patch tokens on their grid
    (``linear``, ``decoder``), the last ``levels`` levels (``multiscale``: ViT depths or hierarchical stages,
    :meth:`~medadapt.backbones.base.Backbone.forward_levels`), or the backbone's feature pyramid (a
    ``native`` decoder, e.g. an SMP U-Net's, reading ``forward_pyramid``). The training loop resizes the
    logits to masks stored at another size (:meth:`medadapt.tasks.Task.fit_logits`).
    """

    def __init__(self, backbone: Backbone, head: nn.Module, *, levels: int | None = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head
        self.levels = levels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out_size = tuple(x.shape[-2:])
        if getattr(self.head, "input_key", "tokens") == "pyramid":
            return self.head(self.backbone.forward_pyramid(x), out_size)
        if getattr(self.head, "multiscale", False):
            levels = self.backbone.forward_levels(x, self.levels)
            return self.head([(f.tokens, f.grid) for f in levels], out_size)
        feats = self.backbone.forward_features(x)
        return self.head(feats.tokens, feats.grid, out_size)

    def layer_groups(self) -> list[list[str]]:
        """The backbone's groups (input → output) followed by the head, as parameter names of this module."""
        groups = [[f"backbone.{n}" for n in g] for g in self.backbone.layer_groups()]
        return groups + [[f"head.{n}" for n, _ in self.head.named_parameters()]]


def build_segmenter(backbone: Backbone, head: str, num_classes: int, **head_kwargs) -> Segmenter:
    """A trainable segmenter: ``head`` is a segmentation head (``linear``, ``multiscale``, ``decoder``; see
    :mod:`medadapt.heads.segmentation`) on the backbone's tokens, or ``native``, the decoder a backbone such
    as an ``smp:`` model brings. ``multiscale`` takes ``levels`` (:func:`resolve_levels`) and reads each
    level's width from one forward pass of a blank image.
    """
    from ..errors import ConfigError
    from ..heads.segmentation import SEGMENTATION_HEADS, create_segmentation_head

    if head == NATIVE_HEAD:
        if not callable(getattr(backbone, "native_head", None)):
            raise ConfigError(
                f"--head native needs a backbone with its own decoder (smp:unet, smp:segformer, ...); "
                f"{backbone.spec.address} has none: choose one of {', '.join(SEGMENTATION_HEADS)}"
            )
        if head_kwargs:
            raise ConfigError(f"--head native takes no head options, got {sorted(head_kwargs)}")
        return Segmenter(backbone, backbone.native_head(num_classes))
    if head not in SEGMENTATION_HEADS:
        raise ConfigError(
            f"{head!r} is not a segmentation head; choose one of {', '.join([*SEGMENTATION_HEADS, NATIVE_HEAD])}"
        )
    levels = None
    dim: int | list[int] = backbone.token_dim
    if getattr(SEGMENTATION_HEADS.get(head), "multiscale", False):
        head_kwargs = dict(head_kwargs)
        levels = resolve_levels(head_kwargs.pop("levels", None), backbone)
        dim = _level_widths(backbone, levels)
    return Segmenter(backbone, create_segmentation_head(head, dim, num_classes, **head_kwargs), levels=levels)


#: Levels a ``multiscale`` head fuses by default: the last four blocks of a ViT (as DINOv2), the last four
#: stages of a hierarchical backbone (strides 4/8/16/32 of a ConvNeXt, Swin or ResNet).
DEFAULT_LEVELS = 4


def resolve_levels(value: Any, backbone: Backbone) -> int:
    """How many levels a ``multiscale`` head fuses: head option ``levels`` (``None``: :data:`DEFAULT_LEVELS`,
    or all of them where the backbone has fewer); more than the backbone has, or a backbone without
    levels, is a :class:`~medadapt.errors.ConfigError`."""
    from ..errors import ConfigError

    backbone.check_levels(1)  # a source without multi-level features: its ConfigError
    available = backbone.num_levels
    if value is None:
        return min(DEFAULT_LEVELS, available)
    try:
        levels = int(value)
    except (TypeError, ValueError):
        levels = None
    if levels is None or isinstance(value, bool) or str(levels) != str(value).strip() or levels < 1:
        raise ConfigError(f"head option levels must be a positive integer, got {value!r}")
    if levels > available:
        raise ConfigError(
            f"head option levels={levels}, but {backbone.spec.address} has {available} levels (blocks / stages); "
            f"give levels <= {available}"
        )
    return levels


def _level_widths(backbone: Backbone, levels: int) -> list[int]:
    """The token widths of the backbone's last ``levels`` levels (one eval-mode pass of a blank image)."""
    spec = backbone.spec
    first = next(backbone.parameters())
    x = torch.zeros(1, spec.in_chans, *spec.input_size, device=first.device)
    mode = backbone.training
    try:
        with torch.no_grad():
            feats = backbone.eval().forward_levels(x, levels)
    finally:
        backbone.train(mode)
    return [int(f.tokens.shape[-1]) for f in feats]


def build_model(backbone: Backbone, head: str, task: str, num_outputs: int, **head_kwargs) -> nn.Module:
    """:func:`build_segmenter` for a segmentation task, else :func:`build_classifier`."""
    from ..tasks import get_task

    if get_task(task).kind == "segmentation":
        return build_segmenter(backbone, head, num_outputs, **head_kwargs)
    return build_classifier(backbone, head, num_outputs, **head_kwargs)
