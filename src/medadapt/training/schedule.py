"""Learning-rate schedules as pure functions of the optimizer step, wrapped in a checkpointable ``LambdaLR``.

:func:`lr_at` gives the multiplier of every group's base LR at one step: an optional linear warm-up, then
``constant``, ``cosine`` (decay to zero at the last step) or ``multistep`` (times ``gamma`` at every
milestone: the MedMNIST v2 protocol is 100 epochs with milestones at epochs 50 and 75, ``gamma=0.1``).
The loop steps the scheduler after every optimizer step, so milestones given in epochs become
``epoch * steps_per_epoch``: a milestone ``m`` means epochs ``1..m`` run at the base LR and epoch ``m + 1``
onwards at ``gamma`` times it, as ``MultiStepLR`` stepped once per epoch does in the MedMNIST code.

Example:
    >>> lr_at(60, total_steps=100, schedule="multistep", milestones_steps=(50, 75))
    0.1
    >>> sched = make_scheduler(opt, schedule="cosine", total_steps=1000, warmup_steps=50)  # doctest: +SKIP
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import torch

from .._choices import SCHEDULES
from ..errors import ConfigError
from .probe import lr_factor

__all__ = ["SCHEDULES", "lr_at", "make_scheduler", "sync_scheduler"]


def lr_at(
    step: int,
    *,
    total_steps: int,
    schedule: str = "cosine",
    warmup_steps: int = 0,
    milestones_steps: Sequence[int] = (),
    gamma: float = 0.1,
) -> float:
    """Multiplier of the base LR at ``step`` (0-based optimizer step)."""
    if schedule not in SCHEDULES:
        raise ConfigError(f"--schedule {schedule!r} is not valid; choose one of {list(SCHEDULES)}")
    if schedule == "cosine":
        return lr_factor(step, total_steps, warmup_steps)
    warm = (step + 1) / warmup_steps if step < warmup_steps else 1.0
    if schedule == "constant":
        return warm
    return warm * gamma ** bisect.bisect_right(sorted(milestones_steps), step)


def make_scheduler(
    optimizer: torch.optim.Optimizer,
    *,
    schedule: str,
    total_steps: int,
    warmup_steps: int = 0,
    milestones_steps: Sequence[int] = (),
    gamma: float = 0.1,
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` over :func:`lr_at`, to be stepped once per optimizer step.

    Its ``state_dict()`` holds only numbers (the step and base LRs), so it checkpoints with
    ``torch.load(weights_only=True)``.
    """
    milestones = tuple(int(m) for m in milestones_steps)

    def factor(step: int) -> float:
        return lr_at(
            step,
            total_steps=total_steps,
            schedule=schedule,
            warmup_steps=warmup_steps,
            milestones_steps=milestones,
            gamma=gamma,
        )

    factor(0)  # validate the schedule name before torch calls it
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def sync_scheduler(scheduler: torch.optim.lr_scheduler.LambdaLR) -> None:
    """Schedule param groups added to the optimizer after the scheduler was made (gradual unfreezing).

    A new group's ``lr`` is taken as its base LR; it is set at once to the current point of the schedule.
    """
    groups = scheduler.optimizer.param_groups
    for group in groups[len(scheduler.base_lrs) :]:
        group.setdefault("initial_lr", group["lr"])
        factor = scheduler.lr_lambdas[0]
        scheduler.base_lrs.append(group["initial_lr"])
        scheduler.lr_lambdas.append(factor)
        group["lr"] = group["initial_lr"] * factor(scheduler.last_epoch)
    scheduler._last_lr = [g["lr"] for g in groups]
