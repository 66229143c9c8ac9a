"""Training: probes on cached frozen features (a whole hyper-parameter grid in one pass) and the
fine-tuning loop (strategies, schedules, augmentation, checkpoints and resume).

The names below load on first use: :class:`TrainConfig` (``training.config``) is checked without importing
torch, so that a bad training setting is reported in a fraction of a second.
"""

import importlib
from typing import Any

#: where the names exported here live
_EXPORTS = {
    **dict.fromkeys(("AUGMENT_PRESETS", "Augment", "make_augment"), "augment"),
    **dict.fromkeys(("CHECKPOINT_NAME", "load_checkpoint", "save_checkpoint"), "checkpoint"),
    **dict.fromkeys(("OPTIMIZERS", "TrainConfig"), "config"),
    **dict.fromkeys(("FitResult", "class_weights", "fit", "predict"), "loop"),
    **dict.fromkeys(
        (
            "DEFAULT_KS",
            "DEFAULT_LRS",
            "TASKS",
            "ProbeResult",
            "loss_fn",
            "lr_factor",
            "to_scores",
            "train_probe",
        ),
        "probe",
    ),
    **dict.fromkeys(("SCHEDULES", "lr_at", "make_scheduler"), "schedule"),
}


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"{__name__}.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
