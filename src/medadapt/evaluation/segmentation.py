"""Segmentation metrics per image and class, pooled over a data set, checked against MONAI.

Inputs are integer label maps ``truth`` and ``pred`` of shape ``[N, H, W]`` (class indices, 0 = background)
with ``n_classes`` classes (binary: 2); a model's probabilities or logits ``[N, C, H, W]`` become a label
map through :func:`labels_from_scores` (the argmax). Background (class 0) is left out unless
``include_background=True``, so the per-image arrays are ``[N, C - 1]`` (or ``[N, C]``).

Dice and IoU are plain numpy on exact integer counts (:func:`confusion_counts`, one ``np.bincount`` for all
images): no rounding from float one-hot tensors, no dependency, and pooled (data-set level) ratios come
from the same counts. HD95 (the 95th percentile symmetric Hausdorff distance between mask edges, in
pixels or ``spacing`` units) is MONAI's ``compute_hausdorff_distance(percentile=95)``, imported lazily
(``pip install 'medadapt[seg]'``).

Empty masks, for one class in one image (every case is counted in :func:`segmentation_metrics`; nothing
is dropped from a mean without a warning):

* truth empty and prediction empty: Dice = IoU = 1 (nothing to find, nothing predicted) with
  ``empty="one"`` (default); with ``empty="nan"`` they are nan, left out of the means, and a warning says
  how many (image, class) pairs were left out. HD95 = 0 (``empty="zero"``, default) or nan
  (``empty="nan"``, same warning).
* truth empty and prediction not, or truth not empty and prediction empty: Dice = IoU = 0, and HD95 = the
  image diagonal ``sqrt(((H - 1) * sy)**2 + ((W - 1) * sx)**2)``, the largest distance two pixels can be
  apart, so a missed or hallucinated structure gets the worst finite distance and the mean stays finite.

MONAI 1.6 itself returns nan for HD95 in both empty cases (with a warning for each) and nan for Dice / IoU
when the truth is empty (``ignore_empty=True``); those pairs never reach MONAI here.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Sequence

import numpy as np
from numpy.typing import ArrayLike

from .._optional import require
from ..errors import ConfigError, DataError

__all__ = [
    "EMPTY_OVERLAP",
    "EMPTY_DISTANCE",
    "labels_from_scores",
    "confusion_counts",
    "dice_per_image",
    "iou_per_image",
    "hd95_per_image",
    "segmentation_metrics",
]

logger = logging.getLogger(__name__)

NAN = float("nan")
EMPTY_OVERLAP = ("one", "nan")  # Dice / IoU when truth and prediction are both empty: 1, or left out
EMPTY_DISTANCE = ("zero", "nan")  # HD95 when truth and prediction are both empty: 0, or left out
_HD_CHUNK = 32  # (image, class) pairs handed to MONAI at once: bounds the memory of its float masks
#: Images whose metrics :func:`segmentation_metrics` computes at once.
_IMAGE_CHUNK = 64


# ---------------------------------------------------------------------------------------------- validation
def _check_n_classes(n_classes: int) -> int:
    if isinstance(n_classes, bool) or not isinstance(n_classes, (int, np.integer)) or n_classes < 2:
        raise ConfigError(
            f"n_classes must be an integer >= 2 (background included; binary segmentation: 2), "
            f"got {n_classes!r}"
        )
    return int(n_classes)


def _label_map(name: str, x: ArrayLike, n_classes: int) -> np.ndarray:
    """``x`` as an int64 ``[N, H, W]`` label map with values in ``[0, n_classes)``, or a DataError."""
    a = np.asarray(x)
    if a.ndim != 3 or a.shape[0] == 0:
        hint = {
            2: f"; for one image pass {name}[None]",
            4: "; for scores [N, C, H, W] pass labels_from_scores(scores), for [N, 1, H, W] squeeze axis 1",
        }.get(a.ndim, "")
        raise DataError(f"{name} must be a non-empty [N, H, W] label map, got shape {a.shape}{hint}")
    if a.dtype.kind not in "biu":
        if a.dtype.kind != "f" or not np.all(np.isfinite(a) & (a == np.round(a))):
            raise DataError(
                f"{name} must hold integer class indices in [0, {n_classes - 1}], got dtype {a.dtype} with "
                f"non-integer values; pass labels_from_scores(scores) for probabilities or logits"
            )
    a = a.astype(np.int64, copy=False)
    bad = (a < 0) | (a >= n_classes)
    if bad.any():
        raise DataError(
            f"{name} holds labels outside [0, {n_classes - 1}] for n_classes={n_classes}: "
            f"{np.unique(a[bad])[:5].tolist()}; set n_classes to the number of classes (background included)"
        )
    return a


def _label_maps(truth: ArrayLike, pred: ArrayLike, n_classes: int) -> tuple[np.ndarray, np.ndarray, int]:
    n_classes = _check_n_classes(n_classes)
    t, p = _label_map("truth", truth, n_classes), _label_map("pred", pred, n_classes)
    if t.shape != p.shape:
        raise DataError(f"truth and pred must have the same [N, H, W] shape, got {t.shape} and {p.shape}")
    return t, p, n_classes


def _check_choice(name: str, value: str, valid: tuple[str, ...]) -> None:
    if value not in valid:
        raise ConfigError(f"{name} must be one of {list(valid)}, got {value!r}")


def _check_spacing(spacing: float | Sequence[float] | None) -> tuple[float, float]:
    """``(sy, sx)``: the pixel size in physical units (``None``: 1, distances in pixels)."""
    if spacing is None:
        return 1.0, 1.0
    try:
        s = np.asarray(spacing, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        s = np.zeros(0)
    if s.size == 1:
        s = np.repeat(s, 2)
    if s.size != 2 or not np.all(np.isfinite(s) & (s > 0)):
        raise ConfigError(
            f"spacing must be None, one positive number or (row, column) positive numbers, got {spacing!r}"
        )
    return float(s[0]), float(s[1])


# ------------------------------------------------------------------------------------------------- helpers
def _classes(n_classes: int, include_background: bool) -> np.ndarray:
    return np.arange(0 if include_background else 1, n_classes)


def _counts(t: np.ndarray, p: np.ndarray, n_classes: int) -> np.ndarray:
    """``[N, C, 3]`` tp, fp, fn of checked label maps: one bincount of ``(image * C + truth) * C + pred``."""
    n, c = t.shape[0], n_classes
    index = (np.arange(n, dtype=np.int64)[:, None] * c + t.reshape(n, -1)) * c + p.reshape(n, -1)
    cm = np.bincount(index.ravel(), minlength=n * c * c).reshape(n, c, c)  # [image, truth, pred]
    tp = np.diagonal(cm, axis1=1, axis2=2)
    return np.stack([tp, cm.sum(axis=1) - tp, cm.sum(axis=2) - tp], axis=-1)


def _present(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``[N, C']`` masks: the class is in the truth (tp + fn > 0), the class is predicted (tp + fp > 0)."""
    tp, fp, fn = counts[..., 0], counts[..., 1], counts[..., 2]
    return tp + fn > 0, tp + fp > 0


def _overlap(counts: np.ndarray, kind: str, empty: str) -> np.ndarray:
    """Dice ``2tp / (2tp + fp + fn)`` or IoU ``tp / (tp + fp + fn)``; where 0 / 0, the ``empty`` value."""
    tp, fp, fn = (counts[..., i].astype(np.float64) for i in range(3))
    num, den = (2 * tp, 2 * tp + fp + fn) if kind == "dice" else (tp, tp + fp + fn)
    fill = 1.0 if empty == "one" else NAN
    return np.where(den > 0, num / np.where(den > 0, den, 1.0), fill)


def _warn_left_out(names: str, counts: np.ndarray, classes: np.ndarray) -> None:
    """Say which (image, class) pairs are nan (``empty="nan"``): truth and prediction both empty."""
    in_truth, in_pred = _present(counts)
    left_out = ~in_truth & ~in_pred
    if not left_out.any():
        return
    per_class = {int(c): int(k) for c, k in zip(classes, left_out.sum(0)) if k}
    no_value = []
    if left_out.all(1).any():
        no_value.append(f"; {int(left_out.all(1).sum())} images have no value at all")
    if left_out.all(0).any():
        no_value.append(f"; classes {classes[left_out.all(0)].tolist()} have no value at all")
    logger.warning(
        "%s: %d of %d (image, class) pairs have an empty truth and prediction (per class: %s); with "
        "empty='nan' they are nan and left out of the means%s",
        names,
        int(left_out.sum()),
        left_out.size,
        per_class,
        "".join(no_value),
    )


def _nanmean(x: np.ndarray, axis: int | None = None) -> np.ndarray:
    """Mean over ``axis`` of the non-nan values (nan where there are none), without numpy's warning."""
    n = np.sum(~np.isnan(x), axis=axis)
    return np.where(n > 0, np.nansum(x, axis=axis) / np.maximum(n, 1), NAN)


def _diagonal(shape: tuple[int, ...], spacing: tuple[float, float]) -> float:
    """The largest distance between two pixels of an ``H x W`` image: the HD95 of a missed structure."""
    return float(np.hypot((shape[0] - 1) * spacing[0], (shape[1] - 1) * spacing[1]))


# ------------------------------------------------------------------------------------------------- metrics
def labels_from_scores(scores: ArrayLike) -> np.ndarray:
    """The label map ``[N, H, W]`` (argmax over classes) of probabilities or logits ``[N, C, H, W]``.

    Example:
        >>> labels_from_scores(np.array([[[[0.9, 0.2]], [[0.1, 0.8]]]])).tolist()
        [[[0, 1]]]
    """
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 4 or s.shape[0] == 0 or s.shape[1] < 2:
        raise DataError(
            f"scores must be non-empty [N, C, H, W] probabilities or logits with C >= 2 classes, got shape "
            f"{s.shape}; for one sigmoid channel p [N, 1, H, W] pass np.concatenate([1 - p, p], axis=1)"
        )
    bad = int(s.size - np.isfinite(s).sum())
    if bad:
        raise DataError(f"scores hold {bad} non-finite values (a diverged model?); their argmax is undefined")
    return s.argmax(axis=1)


def confusion_counts(truth: ArrayLike, pred: ArrayLike, n_classes: int) -> np.ndarray:
    """Per image and class the pixel counts ``[N, C, 3]``: true positives, false positives, false negatives.

    Example:
        >>> confusion_counts(np.array([[[0, 1, 1]]]), np.array([[[1, 1, 0]]]), 2).tolist()
        [[[0, 1, 1], [1, 1, 1]]]
    """
    return _counts(*_label_maps(truth, pred, n_classes))


def dice_per_image(
    truth: ArrayLike, pred: ArrayLike, n_classes: int, *, include_background: bool = False, empty: str = "one"
) -> np.ndarray:
    """Dice ``2|T & P| / (|T| + |P|)`` per image and class, ``[N, C']`` (``C' = C - 1`` without background).

    ``empty`` is the value when truth and prediction are both empty: ``"one"`` (perfect) or ``"nan"``
    (left out, with a warning counting them); see the module docstring.

    Example:
        >>> dice_per_image(np.array([[[0, 1, 1, 0]]]), np.array([[[0, 1, 0, 0]]]), 2).round(3).tolist()
        [[0.667]]
    """
    return _per_image("dice", truth, pred, n_classes, include_background, empty)


def iou_per_image(
    truth: ArrayLike, pred: ArrayLike, n_classes: int, *, include_background: bool = False, empty: str = "one"
) -> np.ndarray:
    """IoU (Jaccard) ``|T & P| / |T | P|`` per image and class, ``[N, C']``; ``empty`` as in Dice.

    Example:
        >>> iou_per_image(np.array([[[0, 1, 1, 0]]]), np.array([[[0, 1, 0, 0]]]), 2).tolist()
        [[0.5]]
    """
    return _per_image("iou", truth, pred, n_classes, include_background, empty)


def _per_image(
    kind: str, truth: ArrayLike, pred: ArrayLike, n_classes: int, include_background: bool, empty: str
) -> np.ndarray:
    _check_choice("empty", empty, EMPTY_OVERLAP)
    t, p, c = _label_maps(truth, pred, n_classes)
    classes = _classes(c, include_background)
    counts = _counts(t, p, c)[:, classes]
    if empty == "nan":
        _warn_left_out(kind, counts, classes)
    return _overlap(counts, kind, empty)


def hd95_per_image(
    truth: ArrayLike,
    pred: ArrayLike,
    n_classes: int,
    *,
    include_background: bool = False,
    spacing: float | Sequence[float] | None = None,
    empty: str = "zero",
) -> np.ndarray:
    """95th percentile Hausdorff distance per image and class, ``[N, C']``, by MONAI (needs ``[seg]``).

    ``spacing`` is the pixel size, ``(row, column)`` or one number (default: distances in pixels). Truth
    and prediction both empty: 0 (``empty="zero"``) or nan (``empty="nan"``, with a warning counting them);
    exactly one of them empty: the image diagonal (see the module docstring).

    Example:
        >>> t = np.zeros((1, 4, 4), int); t[0, 1:3, 1:3] = 1
        >>> hd95_per_image(t, np.roll(t, 1, axis=2), 2).tolist()
        [[1.0]]
    """
    _check_choice("empty", empty, EMPTY_DISTANCE)
    t, p, c = _label_maps(truth, pred, n_classes)
    classes = _classes(c, include_background)
    counts = _counts(t, p, c)[:, classes]
    if empty == "nan":
        _warn_left_out("hd95", counts, classes)
    return _hd95(t, p, counts, classes, _check_spacing(spacing), empty)


def _hd95(
    t: np.ndarray,
    p: np.ndarray,
    counts: np.ndarray,
    classes: np.ndarray,
    spacing: tuple[float, float],
    empty: str,
) -> np.ndarray:
    """HD95 ``[N, C']``: the empty-mask rule where a side is empty, MONAI on every other (image, class)."""
    in_truth, in_pred = _present(counts)
    out = np.full(in_truth.shape, _diagonal(t.shape[1:], spacing))
    out[~in_truth & ~in_pred] = 0.0 if empty == "zero" else NAN
    images, cls = np.nonzero(in_truth & in_pred)
    if images.size:
        out[images, cls] = _monai_hd95(t, p, images, classes[cls], spacing)
    return out


def _monai_hd95(
    t: np.ndarray, p: np.ndarray, images: np.ndarray, classes: np.ndarray, spacing: tuple[float, float]
) -> np.ndarray:
    """MONAI's HD95 of the (image, class) pairs given, each with a non-empty truth and prediction."""
    monai_metrics = require("monai.metrics", extra="seg", package="monai")
    torch = require("torch", extra="core")
    values = []
    for i in range(0, len(images), _HD_CHUNK):
        im, cl = images[i : i + _HD_CHUNK], classes[i : i + _HD_CHUNK, None, None]
        y = torch.from_numpy(t[im] == cl)[:, None].float()
        y_pred = torch.from_numpy(p[im] == cl)[:, None].float()
        with warnings.catch_warnings():  # MONAI >= 1.5 calls its own deprecated `always_return_as_numpy`
            warnings.filterwarnings("ignore", message=".*always_return_as_numpy", category=FutureWarning)
            hd = monai_metrics.compute_hausdorff_distance(
                y_pred, y, include_background=True, percentile=95, spacing=[list(spacing)] * len(im)
            )
        values.append(hd[:, 0].double().numpy())
    return np.concatenate(values)


def segmentation_metrics(
    truth: ArrayLike,
    pred: ArrayLike,
    n_classes: int,
    *,
    include_background: bool = False,
    empty: str = "one",
    hd95: bool = True,
    spacing: float | Sequence[float] | None = None,
) -> dict[str, float]:
    """Dice, IoU and HD95 of a data set, averaged per image and pooled, with the empty-mask counts.

    ``empty="one"``: a class empty in both truth and prediction scores Dice = IoU = 1, HD95 = 0;
    ``empty="nan"``: such pairs are left out of every mean, with a warning counting them. ``hd95=False``
    skips HD95 (and MONAI); ``spacing`` as in :func:`hd95_per_image`.

    Keys:
        ``dice`` / ``iou`` / ``hd95``: mean over images of the per-image mean over classes;
        ``dice_pooled`` / ``iou_pooled``: tp, fp, fn summed over all images, the ratio per class, then the
        mean over classes (large structures weigh more than in ``dice``);
        ``dice_<c>`` / ``iou_<c>`` / ``hd95_<c>``: mean over images for class ``c``;
        ``n_images``; ``n_empty_truth``: (image, class) pairs whose truth is empty; ``n_both_empty``: of
        those, the pairs whose prediction is empty too; ``n_one_side_empty``: pairs where exactly one of
        truth and prediction is empty (Dice = IoU = 0, HD95 = the image diagonal).

    Example:
        >>> t = np.zeros((2, 4, 4), int); t[0, :2, :2] = 1; p = t.copy(); p[0, 0, 0] = 0
        >>> m = segmentation_metrics(t, p, 2, hd95=False)
        >>> round(m["dice"], 4), round(m["dice_pooled"], 4), m["n_both_empty"]
        (0.9286, 0.8571, 1)
    """
    _check_choice("empty", empty, EMPTY_OVERLAP)
    sy_sx = _check_spacing(spacing)
    truth, pred = np.asarray(truth), np.asarray(pred)
    # chunks of images: the int64 label maps and their per-pixel indices never exist for the whole set, so
    # memory does not grow with it (every metric is per image, or a sum over images of per-image counts)
    chunked = truth.ndim == 3 and truth.shape == pred.shape and len(truth) > _IMAGE_CHUNK
    chunks = (
        [slice(i, i + _IMAGE_CHUNK) for i in range(0, len(truth), _IMAGE_CHUNK)] if chunked else [slice(None)]
    )
    parts, distances = [], []
    for rows in chunks:
        t, p, c = _label_maps(truth[rows], pred[rows], n_classes)
        classes = _classes(c, include_background)
        parts.append(_counts(t, p, c)[:, classes])
        if hd95:
            distances.append(_hd95(t, p, parts[-1], classes, sy_sx, "zero" if empty == "one" else "nan"))
    counts = np.concatenate(parts)
    if empty == "nan":
        _warn_left_out("dice, iou" + (", hd95" if hd95 else ""), counts, classes)
    per_image = {kind: _overlap(counts, kind, empty) for kind in ("dice", "iou")}
    if hd95:
        per_image["hd95"] = np.concatenate(distances)
    out: dict[str, float] = {}
    for kind, values in per_image.items():
        out[kind] = float(_nanmean(_nanmean(values, axis=1)))
        if kind != "hd95":
            out[f"{kind}_pooled"] = float(_nanmean(_overlap(counts.sum(axis=0), kind, empty)))
        out |= {f"{kind}_{cls}": float(v) for cls, v in zip(classes, _nanmean(values, axis=0))}
    in_truth, in_pred = _present(counts)
    return out | {
        "n_images": len(counts),
        "n_empty_truth": int((~in_truth).sum()),
        "n_both_empty": int((~in_truth & ~in_pred).sum()),
        "n_one_side_empty": int((in_truth != in_pred).sum()),
    }
