"""Small fixed vocabularies that configs validate before anything heavy (torch, timm) is imported.

They are defined here once and re-exported where they act (:mod:`medadapt.backbones.base`,
:mod:`medadapt.data.transforms`), so that a bad flag or YAML value fails in a fraction of a second.
"""

from __future__ import annotations

__all__ = [
    "CHANNEL_MODES",
    "CLASSIFICATION_TASKS",
    "INTERPOLATIONS",
    "PAD_MODES",
    "RESIZE_MODES",
    "SCHEDULES",
    "SEGMENTATION_LOSSES",
]

#: The classification tasks (:data:`medadapt.tasks.TASKS` registers one Task each, and segmentation).
CLASSIFICATION_TASKS = ("binary", "multiclass", "multilabel", "ordinal")

#: How single-channel images meet a model trained on RGB. ``sum``/``mean``/``first`` rewrite the first
#: convolution to take one channel; ``repeat`` copies gray to three channels in the data instead.
CHANNEL_MODES = ("sum", "mean", "first", "repeat")
#: ``resize`` scales the image to the target; ``pad`` centres the raw image on a black (zero) canvas;
#: ``pad_mean`` on a canvas of the normalisation mean, which is zero after normalising (the MedMNIST+
#: reference code pads the normalised tensor).
RESIZE_MODES = ("resize", "pad", "pad_mean")
PAD_MODES = ("pad", "pad_mean")
#: Resampling filters (names as PIL's).
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")
#: The losses of a segmentation task (``--loss``; :func:`medadapt.tasks.segmentation_loss`).
SEGMENTATION_LOSSES = ("ce", "dice", "ce+dice")
#: Learning-rate schedules of the fine-tuning loop (:func:`medadapt.training.schedule.lr_at`).
SCHEDULES = ("constant", "cosine", "multistep")
