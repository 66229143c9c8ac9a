"""The training recipe of a fine-tuning run (the strategy says what trains; this says how)."""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass
from typing import Any

from .._choices import SCHEDULES, SEGMENTATION_LOSSES
from .._validate import choice, integer, number
from ..errors import ConfigError
from .augment import AUGMENT_PRESETS

__all__ = ["TrainConfig", "OPTIMIZERS", "MONITORS", "SELECT_ON", "LOSSES"]

OPTIMIZERS = ("adamw", "adam", "sgd")
MONITORS = ("val_auc", "val_dice", "val_loss")
SELECT_ON = ("val_auc", "val_auc_first", "val_dice", "val_loss", "last")
#: ``--loss`` of a segmentation task (classification tasks train on their own loss).
LOSSES = SEGMENTATION_LOSSES


@dataclass
class TrainConfig:
    """How to train (the strategy says what to train).

    ``milestones`` are epochs for ``schedule="multistep"`` (default: 50% and 75% of ``epochs``, the
    MedMNIST v2 protocol; other schedules ignore them); ``warmup_epochs`` of linear warm-up apply to every
    schedule. ``early_stop`` stops after ``patience`` evaluations without improvement of that quantity;
    ``select_on`` picks the weights returned (``val_auc``: ties broken by lower loss; ``val_auc_first``: the
    first epoch with the highest AUC, the official MedMNIST rule; ``last``: the final epoch). On a
    segmentation task the validation metric is Dice: ``val_auc`` there means ``val_dice``.
    ``loss`` is a segmentation task's loss (``ce``, ``dice`` or their sum ``ce+dice``, the default when
    ``None``).
    ``class_weights`` weighs the loss by inverse class frequency in train (``pos_weight = neg / pos``
    per label for multi-label). ``sgd`` uses momentum 0.9. ``eval_every`` evaluates every n epochs (and
    the last). ``checkpoint_every`` writes the checkpoint every n epochs (and after the last): per-epoch
    checkpoints of a ResNet-18 with Adam (about 180 MB) can cost more than a 28-px epoch on a GPU; a resumed
    run replays the epochs since the last checkpoint. ``augment`` is a preset of
    :data:`~medadapt.training.augment.AUGMENT_PRESETS`. ``device``, ``num_workers`` and ``checkpoint_every``
    do not change the result, so a run may be resumed with other values.
    """

    optimizer: str = "adamw"
    lr: float = 1e-4
    weight_decay: float = 1e-4
    epochs: int = 30
    batch_size: int = 64
    schedule: str = "cosine"
    milestones: list[int] | None = None
    gamma: float = 0.1
    warmup_epochs: int = 0
    autocast: bool = True
    grad_clip: float | None = None
    class_weights: bool = False
    early_stop: str | None = None
    patience: int = 10
    select_on: str = "val_auc"
    loss: str | None = None
    augment: str = "none"
    seed: int = 0
    device: str = "auto"
    num_workers: int = 0
    eval_every: int = 1
    checkpoint_every: int = 1

    def __post_init__(self) -> None:
        choice(self.optimizer, OPTIMIZERS, "--optimizer")
        choice(self.schedule, SCHEDULES, "--schedule")
        choice(self.early_stop, (*MONITORS, None), "--early-stop")
        choice(self.select_on, SELECT_ON, "--select-on")
        choice(self.augment, tuple(AUGMENT_PRESETS), "--augment")
        choice(self.loss, (*LOSSES, None), "--loss")
        for name in ("epochs", "batch_size", "patience", "eval_every", "checkpoint_every"):
            integer(getattr(self, name), f"--{name.replace('_', '-')}", low=1)
        integer(self.warmup_epochs, "--warmup-epochs", low=0)
        integer(self.num_workers, "--num-workers", low=0)
        integer(self.seed, "--seed", low=0)
        number(self.lr, "--lr", positive=True)
        number(self.weight_decay, "--weight-decay")
        number(self.gamma, "--gamma", positive=True)
        if self.grad_clip is not None:
            number(self.grad_clip, "--grad-clip", positive=True)
        if self.warmup_epochs >= self.epochs:
            raise ConfigError(
                f"--warmup-epochs {self.warmup_epochs} must be less than --epochs {self.epochs}"
            )
        if self.schedule != "multistep":  # only multistep uses them (a preset's stay behind with --schedule)
            if self.milestones:
                warnings.warn(f"--milestones {self.milestones} are ignored: they apply to --schedule multistep",
                              stacklevel=2)  # fmt: skip
            self.milestones = []
        if self.milestones is None:
            self.milestones = [m for m in (self.epochs // 2, (3 * self.epochs) // 4) if m >= 1]
        ms = list(self.milestones)
        if not all(isinstance(m, int) and not isinstance(m, bool) and 0 < m <= self.epochs for m in ms):
            raise ConfigError(
                f"--milestones must be epochs in [1, {self.epochs}], got {ms!r}; with fewer --epochs than a "
                "preset's, give --milestones too (the official MedMNIST v2 ones are at 50% and 75%)"
            )
        self.milestones = sorted(ms)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
