"""The strategy contract: how a classifier is trained (what is frozen, wrapped, at which learning rates).

A strategy is a small typed config registered in :data:`STRATEGIES`. ``configure(model, lr=..., weight_decay=...)``
freezes / wraps the model in place and returns optimizer parameter groups (each a dict with ``params``,
``lr``, ``weight_decay`` and a ``name``); only parameters in the groups train, and exactly those have
``requires_grad=True``. Optional hooks: ``on_epoch_start(epoch, model, optimizer, history)`` (gradual
unfreezing) and ``state_dict()`` / ``load_state_dict()`` for resume. ``export(model)`` returns the model as
it should be saved for inference (e.g. LoRA merged).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from .._registry import Registry
from ..errors import ConfigError

if TYPE_CHECKING:  # the strategies' names and options are checked without importing torch
    from torch import nn

__all__ = ["Strategy", "STRATEGIES", "create_strategy"]


@dataclass
class Strategy:
    """Base class; subclasses are dataclasses whose fields are the strategy's options."""

    name: ClassVar[str] = "base"
    pretrained: ClassVar[bool] = True  # False for ``scratch``: the backbone is built with a random init

    def configure(self, model: nn.Module, *, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        raise NotImplementedError

    def on_epoch_start(self, epoch: int, model: nn.Module, optimizer: Any, history: list[dict]) -> None:
        """Called before every epoch (1-based); the default does nothing."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what :meth:`state_dict` returned (resume after a kill)."""

    def export(self, model: nn.Module) -> nn.Module:
        return model


STRATEGIES: Registry[type[Strategy]] = Registry("strategy")


def create_strategy(name: str, **options: Any) -> Strategy:
    """Build the registered strategy ``name`` with its options (validated by the strategy)."""
    cls = STRATEGIES.get(name)
    valid = sorted(f.name for f in dataclasses.fields(cls))
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ConfigError(f"strategy {name!r} has no option(s) {unknown}; valid: {valid or 'none'}")
    return cls(**options)
