"""Fine-tuning strategies without adapters: ``scratch``, ``full``, ``frozen``, ``differential``, ``llrd``.

All of them return optimizer groups split by weight decay (see :mod:`._params`): ``head`` / ``head_no_decay``,
``backbone`` / ``backbone_no_decay`` or, for ``llrd``, ``stage{i}`` / ``stage{i}_no_decay`` with ``i`` counted
from the input (``stage0`` is the stem).

Example:
    >>> from medadapt.strategies import create_strategy
    >>> strategy = create_strategy("llrd", decay=0.65)
    >>> groups = strategy.configure(model, lr=1e-3, weight_decay=0.05)  # doctest: +SKIP
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import ConfigError
from ._params import (
    backbone_names,
    backbone_stages,
    check_number,
    check_training_args,
    classifier_parts,
    eval_frozen,
    head_names,
    select,
)
from .base import Strategy

if TYPE_CHECKING:
    from torch import nn

__all__ = ["Differential", "Frozen", "Full", "LayerDecay", "Scratch"]

log = logging.getLogger(__name__)


@dataclass
class Full(Strategy):
    """Every parameter trains at ``lr``."""

    name: ClassVar[str] = "full"

    def configure(self, model: nn.Module, *, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        check_training_args(lr, weight_decay)
        parts = [("backbone", backbone_names(model), lr), ("head", head_names(model), lr)]
        return select(model, parts, weight_decay=weight_decay)


@dataclass
class Scratch(Full):
    """``full`` on a randomly initialised backbone (the loop builds it with ``pretrained=False``)."""

    name: ClassVar[str] = "scratch"
    pretrained: ClassVar[bool] = False


@dataclass
class Frozen(Strategy):
    """The backbone is frozen; only the head trains (a linear or attention probe, end to end).

    :meth:`on_epoch_start` puts the backbone in eval mode (after the loop's ``model.train()``): BatchNorm
    statistics stay as loaded and dropout / drop-path stay off, so the head sees the features a frozen
    probe sees.
    """

    name: ClassVar[str] = "frozen"

    def configure(self, model: nn.Module, *, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        check_training_args(lr, weight_decay)
        return select(model, [("head", head_names(model), lr)], weight_decay=weight_decay)

    def on_epoch_start(self, epoch: int, model: nn.Module, optimizer: Any, history: list[dict]) -> None:
        eval_frozen(classifier_parts(model)[0])


@dataclass
class Differential(Strategy):
    """Two learning rates: a tiny one for the encoder, a larger one for the head.

    Args:
        encoder_lr: LR of every backbone parameter; ``None`` means ``lr * encoder_lr_scale``.
        head_lr: LR of the head; ``None`` means ``lr``.
        encoder_lr_scale: used when ``encoder_lr`` is ``None``. The default ``1e-3`` with ``lr=1e-4`` gives
            the 1e-7 (encoder) / 1e-4 (head) of the chest X-ray foundation-model comparison.
    """

    name: ClassVar[str] = "differential"
    encoder_lr: float | None = None
    head_lr: float | None = None
    encoder_lr_scale: float = 1e-3

    def __post_init__(self) -> None:
        for option in ("encoder_lr", "head_lr"):
            value = getattr(self, option)
            if value is not None:
                check_number(self.name, option, value, low=0.0)
                if value == 0:
                    raise ConfigError(f"{self.name} option {option!r} must be > 0 (use 'frozen'), got 0")
        check_number(self.name, "encoder_lr_scale", self.encoder_lr_scale, low=0.0)
        if self.encoder_lr_scale == 0:
            raise ConfigError(f"{self.name} option 'encoder_lr_scale' must be > 0 (use 'frozen'), got 0")

    def learning_rates(self, lr: float) -> tuple[float, float]:
        """``(encoder_lr, head_lr)`` for the base ``lr``."""
        encoder = self.encoder_lr if self.encoder_lr is not None else lr * self.encoder_lr_scale
        return encoder, self.head_lr if self.head_lr is not None else lr

    def configure(self, model: nn.Module, *, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        check_training_args(lr, weight_decay)
        encoder_lr, head_lr = self.learning_rates(lr)
        log.info("differential: encoder lr %.3g, head lr %.3g", encoder_lr, head_lr)
        parts = [("backbone", backbone_names(model), encoder_lr), ("head", head_names(model), head_lr)]
        return select(model, parts, weight_decay=weight_decay)


@dataclass
class LayerDecay(Strategy):
    """Layer-wise LR decay (BEiT, MAE, timm): the head trains at ``lr``, stage ``k`` below it at ``lr * decay**k``.

    Stages are the backbone's :meth:`layer_groups` (for timm sources timm's own ``group_matcher`` groups, the
    ones ``timm.optim.param_groups_layer_decay`` uses; for HF and open_clip towers embeddings, each block,
    final norm), with a lone final-norm group merged into the block below (see
    :func:`._params.backbone_stages`). So for a ViT of depth L: last block ``lr * decay``, stem
    ``lr * decay**(L + 1)``, as in timm. timm's helper itself is not called because it only knows timm
    models; HF and open_clip backbones get the same treatment through ``layer_groups()``.

    Args:
        decay: factor per stage, in (0, 1]; 0.75 is the BEiT/MAE ViT-B default (0.65 for ViT-L).
    """

    name: ClassVar[str] = "llrd"
    decay: float = 0.75

    def __post_init__(self) -> None:
        check_number(self.name, "decay", self.decay, low=0.0, high=1.0)
        if self.decay == 0:
            raise ConfigError(f"{self.name} option 'decay' must be in (0, 1], got 0")

    def configure(self, model: nn.Module, *, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        check_training_args(lr, weight_decay)
        stages = backbone_stages(model)
        n = len(stages)
        parts = [(f"stage{i}", names, lr * self.decay ** (n - i)) for i, names in enumerate(stages)]
        parts.append(("head", head_names(model), lr))
        log.info("llrd: %d stages, lr %.3g (head) down to %.3g (stem)", n, lr, lr * self.decay**n)
        return select(model, parts, weight_decay=weight_decay)
