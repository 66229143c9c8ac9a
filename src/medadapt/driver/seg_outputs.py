"""What every segmentation cell (a probe or a fine-tuned model) writes beside its rows: the true masks of a
split, its scores (:data:`SEG_METRICS`), and the overlay figure of its test images.

A split's masks must share one size, so that predictions and truths align pixel for pixel; a dataset of
mixed sizes is given one with ``--size`` (images and masks are resized together, masks by nearest).
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ..data.base import MedicalDataset
from ..errors import DataError
from ..evaluation.segmentation import segmentation_metrics
from ..reporting.overlays import write_overlays
from ..reporting.results import write_json

__all__ = ["SEG_METRICS", "split_masks", "seg_scores", "write_test_overlays"]

#: The metrics a segmentation cell reports (``segmentation_metrics`` keys).
SEG_METRICS = ("dice", "iou", "dice_pooled", "iou_pooled", "hd95")

log = logging.getLogger(__name__)


def split_masks(ds: MedicalDataset) -> np.ndarray:
    """The masks of ``ds`` as one ``[N, H, W]`` uint8 array, filled one mask at a time (one byte per pixel
    held, never the int64 masks of the whole split); masks of several sizes are a clear error."""
    out: np.ndarray | None = None
    for i in range(len(ds)):
        mask = ds.mask(i).numpy()
        if out is None:
            out = np.empty((len(ds), *mask.shape), np.uint8)
        if mask.shape != out.shape[1:]:
            raise DataError(
                f"{ds.name} {ds.split}: masks come in several sizes (e.g. {out.shape[1:]} and {mask.shape}); give the "
                "dataset one size (--size 224, or ?size=224 in its address), so that masks and predictions align"
            )
        if mask.size and int(mask.max()) > 255:
            raise DataError(
                f"{ds.name} {ds.split}: mask {i} holds class {int(mask.max())}; at most 256 classes"
            )
        out[i] = mask
    return out if out is not None else np.zeros((0, 0, 0), np.uint8)


def seg_scores(truth: np.ndarray, pred: np.ndarray, num_classes: int) -> dict[str, float]:
    """:data:`SEG_METRICS` of predicted class maps against the true masks (both ``[N, H, W]``)."""
    scores = segmentation_metrics(truth, pred, num_classes)  # uint8 maps: converted 64 images at a time
    return {k: scores[k] for k in SEG_METRICS}


def write_test_overlays(ctx: Any, truth: np.ndarray, pred: np.ndarray, num_classes: int) -> None:
    """``figures/overlays_test.png`` (best, median and worst test images by Dice), listed in the cell's
    ``outputs.json`` for the report; skipped, with a warning, without matplotlib (the ``plots`` extra)."""
    stem = ctx.run_dir / "figures" / "overlays_test"
    try:
        paths = write_overlays(ctx.splits["test"], truth, pred, stem, n_classes=num_classes)
    except ImportError as e:  # MissingDependencyError
        log.warning("overlay figure skipped: %s", e)
        return
    write_json(
        {"figures": [p.relative_to(ctx.run_dir).as_posix() for p in paths]}, ctx.run_dir / "outputs.json"
    )
