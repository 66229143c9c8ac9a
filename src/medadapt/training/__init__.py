"""Training: probes on cached frozen features (a whole hyper-parameter grid in one pass)."""

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

__all__ = [
    "DEFAULT_KS",
    "DEFAULT_LRS",
    "TASKS",
    "ProbeResult",
    "loss_fn",
    "lr_factor",
    "to_scores",
    "train_probe",
]
