"""Training: probes on cached frozen features (a whole hyper-parameter grid in one pass) and the
fine-tuning loop (strategies, schedules, augmentation, checkpoints and resume)."""

from .augment import AUGMENT_PRESETS, Augment, make_augment
from .checkpoint import CHECKPOINT_NAME, load_checkpoint, save_checkpoint
from .config import OPTIMIZERS, TrainConfig
from .loop import FitResult, class_weights, fit, predict
from .probe import (
    DEFAULT_KS,
    DEFAULT_LRS,
    TASKS,
    ProbeResult,
    loss_fn,
    lr_factor,
    to_scores,
    train_probe,
)
from .schedule import SCHEDULES, lr_at, make_scheduler

__all__ = [
    "AUGMENT_PRESETS",
    "CHECKPOINT_NAME",
    "DEFAULT_KS",
    "DEFAULT_LRS",
    "OPTIMIZERS",
    "SCHEDULES",
    "TASKS",
    "Augment",
    "FitResult",
    "ProbeResult",
    "TrainConfig",
    "class_weights",
    "fit",
    "load_checkpoint",
    "loss_fn",
    "lr_at",
    "lr_factor",
    "make_augment",
    "make_scheduler",
    "predict",
    "save_checkpoint",
    "to_scores",
    "train_probe",
]
