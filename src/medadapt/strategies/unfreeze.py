"""Gradual unfreezing (ULMFiT): the head first, then one backbone stage at a time from the top down.

Stages are the backbone's layer groups (see :func:`._params.backbone_stages`). Epochs are 1-based. By time
(the default): the head trains from epoch 1, the top stage joins at epoch ``1 + every``, the next at
``1 + 2 * every``, ... With ``every=1`` (ULMFiT's one layer per epoch) a backbone of ``n`` stages is fully
trainable from epoch ``n + 1``. On a plateau (``on_plateau=True``): the next stage joins when ``monitor``
has not improved by more than ``min_delta`` for ``patience`` epochs since the last stage joined.

Frozen stages are put in eval mode at every epoch start (BatchNorm statistics kept, dropout off) until they
join. Each newly unfrozen stage enters the optimizer through ``optimizer.add_param_group`` as groups named
``stage{i}`` / ``stage{i}_no_decay`` at ``lr * group_lr_scale``; their ``lr`` is the *base* LR, so a loop
that schedules LRs should keep a per-group base (e.g. ``group.setdefault("base_lr", group["lr"])``) rather
than a list fixed when the optimizer was built.

Resume: :meth:`state_dict` holds the schedule so far (which stage joined at which epoch, and why). Call
:meth:`load_state_dict` *before* :meth:`configure` on the fresh model: ``configure`` then returns the head
and the already unfrozen stages in the order they joined, i.e. exactly the parameter groups of the saved
optimizer, whose state then loads with ``optimizer.load_state_dict``.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from ..errors import ConfigError
from ._params import (
    backbone_stages,
    check_number,
    check_training_args,
    classifier_parts,
    eval_frozen,
    head_names,
    no_weight_decay_names,
    param_groups,
    select,
)
from .base import Strategy

if TYPE_CHECKING:
    from torch import nn

__all__ = ["GradualUnfreeze"]

log = logging.getLogger(__name__)

_REASONS = ("every", "plateau")


@dataclass
class GradualUnfreeze(Strategy):
    """Unfreeze backbone stages top-down, every ``every`` epochs or on a plateau of ``monitor``.

    Args:
        every: epochs between two stages joining (time-based mode).
        on_plateau: unfreeze on a plateau of ``monitor`` instead of by time (``every`` is then unused).
        monitor: the history key watched on plateaus (``val_loss``, ``val_auc``, ...).
        mode: ``min`` or ``max``; ``None`` means ``min`` when ``monitor`` names a loss, else ``max``.
        patience: epochs without improvement that make a plateau (evaluations, for a ``val_*`` monitor).
        min_delta: the smallest change that counts as an improvement.
        group_lr_scale: LR of unfrozen stages relative to ``lr`` (the head's).
        max_groups: stop after this many stages (``None``: the whole backbone).

    Example:
        >>> s = GradualUnfreeze(every=2)
        >>> groups = s.configure(model, lr=1e-4, weight_decay=0.05)  # doctest: +SKIP
        >>> s.on_epoch_start(3, model, optimizer, history)  # the top stage joins  # doctest: +SKIP
    """

    name: ClassVar[str] = "unfreeze"
    every: int = 1
    on_plateau: bool = False
    monitor: str = "val_loss"
    mode: str | None = None
    patience: int = 1
    min_delta: float = 0.0
    group_lr_scale: float = 1.0
    max_groups: int | None = None

    def __post_init__(self) -> None:
        check_number(self.name, "every", self.every, low=1, integer=True)
        check_number(self.name, "patience", self.patience, low=1, integer=True)
        check_number(self.name, "min_delta", self.min_delta, low=0.0)
        check_number(self.name, "group_lr_scale", self.group_lr_scale, low=0.0)
        if self.group_lr_scale == 0:
            raise ConfigError(f"{self.name} option 'group_lr_scale' must be > 0, got 0")
        if self.max_groups is not None:
            check_number(self.name, "max_groups", self.max_groups, low=1, integer=True)
        if not isinstance(self.on_plateau, bool):
            raise ConfigError(
                f"{self.name} option 'on_plateau' must be true or false, got {self.on_plateau!r}"
            )
        if not isinstance(self.monitor, str) or not self.monitor:
            raise ConfigError(f"{self.name} option 'monitor' must be a history key such as 'val_loss'")
        if self.mode not in (None, "min", "max"):
            raise ConfigError(f"{self.name} option 'mode' must be 'min', 'max' or null, got {self.mode!r}")
        self._schedule: list[dict[str, Any]] = []
        self._lr: float | None = None
        self._weight_decay = 0.0

    @property
    def schedule(self) -> list[dict[str, Any]]:
        """Stages unfrozen so far: ``[{"epoch", "stage", "reason"}, ...]`` in the order they joined."""
        return [dict(event) for event in self._schedule]

    @property
    def direction(self) -> str:
        return self.mode or ("min" if "loss" in self.monitor else "max")

    def configure(self, model: nn.Module, *, lr: float, weight_decay: float) -> list[dict[str, Any]]:
        check_training_args(lr, weight_decay)
        stages = backbone_stages(model)
        self._check_schedule(len(stages))
        self._lr, self._weight_decay = lr, weight_decay
        parts = [("head", head_names(model), lr)]
        parts += [(f"stage{e['stage']}", stages[e["stage"]], self._stage_lr()) for e in self._schedule]
        log.info(
            "unfreeze: %d backbone stages, %s; %d already unfrozen",
            len(stages),
            f"on a plateau of {self.monitor}" if self.on_plateau else f"one every {self.every} epoch(s)",
            len(self._schedule),
        )
        return select(model, parts, weight_decay=weight_decay)

    def on_epoch_start(self, epoch: int, model: nn.Module, optimizer: Any, history: list[dict]) -> None:
        if self._lr is None:
            raise RuntimeError("call configure(model, ...) before on_epoch_start")
        stages = backbone_stages(model)
        self._check_schedule(len(stages))
        self._sync(model, optimizer, stages)
        limit = len(stages) if self.max_groups is None else min(len(stages), self.max_groups)
        while len(self._schedule) < limit:
            reason = self._due(epoch, history)
            if reason is None:
                break
            stage = len(stages) - 1 - len(self._schedule)
            self._schedule.append({"epoch": int(epoch), "stage": stage, "reason": reason})
            self._add(model, optimizer, stages, stage)
            log.info(
                "unfreeze: epoch %d: stage %d of %d (%d tensors) joins at lr %.3g (%s)",
                epoch,
                stage,
                len(stages),
                len(stages[stage]),
                self._stage_lr(),
                reason,
            )
        eval_frozen(classifier_parts(model)[0])

    def state_dict(self) -> dict[str, Any]:
        return {"schedule": self.schedule}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        schedule = state.get("schedule") if isinstance(state, dict) else None
        ok = isinstance(schedule, list) and all(
            isinstance(e, dict) and {"epoch", "stage", "reason"} <= e.keys() for e in schedule
        )
        if not ok:
            raise ConfigError(f"not an unfreeze strategy state (expected {{'schedule': [...]}}): {state!r}")
        self._schedule = [
            {"epoch": int(e["epoch"]), "stage": int(e["stage"]), "reason": str(e["reason"])} for e in schedule
        ]

    # -- internals -----------------------------------------------------------------------------------

    def _stage_lr(self) -> float:
        assert self._lr is not None
        return self._lr * self.group_lr_scale

    def _check_schedule(self, n_stages: int) -> None:
        expected = list(range(n_stages - 1, n_stages - 1 - len(self._schedule), -1))
        if [e["stage"] for e in self._schedule] != expected:
            raise ConfigError(
                f"the restored unfreeze schedule {self._schedule} does not fit a backbone of {n_stages} stages; "
                "resume with the same backbone"
            )

    def _due(self, epoch: int, history: list[dict]) -> str | None:
        """Why a new stage joins at ``epoch`` (``every`` / ``plateau``), or ``None`` if it does not."""
        if not self.on_plateau:
            return "every" if len(self._schedule) < (epoch - 1) // self.every else None
        if self._schedule and self._schedule[-1]["epoch"] >= epoch:
            return None  # at most one stage per epoch on plateaus
        since = self._schedule[-1]["epoch"] if self._schedule else 1
        return "plateau" if self._plateaued(history, since) else None

    def _plateaued(self, history: list[dict], since: int) -> bool:
        records = [r for i, r in enumerate(history) if r.get("epoch", i + 1) >= since]
        if self.monitor.startswith("val_"):
            # only evaluated epochs count (with eval_every > 1 the others have no val_* entries): patience is
            # then counted in evaluations, as the loop's early stopping counts it
            records = [r for r in records if any(k.startswith("val_") for k in r)]
        if not records:
            return False
        missing = [r for r in records if self.monitor not in r]
        if missing:
            raise ConfigError(
                f"{self.name} option 'monitor'={self.monitor!r} is not in the training history; "
                f"available keys: {sorted(missing[0])}"
            )
        sign = 1.0 if self.direction == "min" else -1.0
        best, since_best = math.inf, 0
        for r in records:
            value = sign * float(r[self.monitor])
            if value < best - self.min_delta:  # False for NaN: no improvement
                best, since_best = value, 0
            else:
                since_best += 1
        return since_best >= self.patience

    def _add(self, model: nn.Module, optimizer: Any, stages: list[list[str]], stage: int) -> None:
        params = dict(model.named_parameters())
        for n in stages[stage]:  # the stages hold no unreachable parameters (backbone_stages)
            params[n].requires_grad_(True)
        groups = param_groups(
            model,
            stages[stage],
            label=f"stage{stage}",
            lr=self._stage_lr(),
            weight_decay=self._weight_decay,
            skip=no_weight_decay_names(model),
        )
        for group in groups:
            optimizer.add_param_group(group)

    def _sync(self, model: nn.Module, optimizer: Any, stages: list[list[str]]) -> None:
        """Add scheduled stages missing from the optimizer (``load_state_dict`` called after ``configure``)."""
        present = {g.get("name") for g in optimizer.param_groups}
        for event in self._schedule:
            if f"stage{event['stage']}" not in present and f"stage{event['stage']}_no_decay" not in present:
                log.warning(
                    "unfreeze: stage %d (unfrozen at epoch %d) was not in the optimizer; adding it now. "
                    "Call load_state_dict before configure so that optimizer state can be restored too",
                    event["stage"],
                    event["epoch"],
                )
                self._add(model, optimizer, stages, event["stage"])
