"""Training: probes on cached frozen features (a whole hyper-parameter grid in one pass) and the
fine-tuning loop (strategies, schedules, augmentation, checkpoints and resume).

The names below load on first use: :class:`TrainConfig` (``training.config``) is checked without importing
torch, so that a bad training setting is reported in a fraction of a second.
"""

from .._lazy import lazy_exports

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


__getattr__ = lazy_exports(__name__, _EXPORTS)


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
