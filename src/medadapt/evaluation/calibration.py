"""Calibration: expected calibration error (ECE), Brier score and the reliability curve behind them.

Inputs follow :mod:`medadapt.evaluation.metrics` (MedMNIST layout; scores are probabilities in [0, 1]).

**Confidence and correctness** (``kind``). ECE compares a *confidence* with how often it comes true:

- ``kind="top"`` (top-label calibration, the default for ``binary``, ``multiclass`` and ``ordinal``): the
  confidence of a row is the probability of its predicted class and the outcome is whether that prediction
  is correct. Binary: ``p = scores[:, 1]``, the prediction is ``p > 0.5`` (as :func:`~.metrics.acc`) and the
  confidence ``max(p, 1 - p)``; multiclass / ordinal: the largest score vs ``argmax == label``; multilabel:
  every known (row, label) pair's ``max(p, 1 - p)`` vs whether ``p > 0.5`` equals the label.
- ``kind="positive"`` (class-wise calibration, the default for ``multilabel``): every (row, column) pair's
  probability of 1 vs the label of that pair. Binary: ``scores[:, 1]`` vs ``label == 1`` (sklearn's
  ``calibration_curve`` and ``brier_score_loss`` read binary scores this way); multiclass / ordinal: every
  class column vs the one-hot label; multilabel: every (row, label) pair with a known label (nan left out).

**Bins** are ``n_bins`` equal-width intervals ``(lower, upper]`` over [0, 1], with a confidence of 0 in the
first bin (as sklearn's ``calibration_curve(strategy="uniform")``). With ``n_b`` pairs in bin ``b``, of mean
confidence ``conf_b`` and outcome rate ``acc_b`` (fraction correct, or fraction positive),
``ECE = sum_b (n_b / N) |acc_b - conf_b|``; empty bins contribute 0.

**Brier score**: binary ``mean((p - y)^2)`` with ``p = scores[:, 1]`` (``sklearn.metrics.brier_score_loss``);
multiclass / ordinal the mean over rows of ``sum_c (scores[:, c] - onehot_c)^2`` (Brier's original score, in
[0, 2]); multilabel the mean of ``(p - y)^2`` over the known (row, label) pairs.

Lower is better for both (:data:`LOWER_IS_BETTER`). Non-finite scores give ``nan`` with a warning, as the
other metrics; scores outside [0, 1] raise :class:`~medadapt.errors.DataError`. The ``prepare_*`` functions
give the same numbers for rows weighted by counts (``weights @ per-row terms``), for the bootstrap.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from ..errors import ConfigError, DataError
from .metrics import _finite, _prepare

__all__ = [
    "LOWER_IS_BETTER",
    "KINDS",
    "expected_calibration_error",
    "brier_score",
    "reliability_curve",
    "prepare_ece",
    "prepare_brier",
]

#: Metrics of this module, and of :data:`~.bootstrap.WEIGHTED_METRICS`, where a smaller value is better.
LOWER_IS_BETTER = frozenset({"ece", "brier", "hd95"})
#: ``top``: confidence of the predicted class vs correct; ``positive``: probability of 1 vs the label.
KINDS = ("top", "positive")

NAN = float("nan")
#: Weighted form of a metric: ``(B, N)`` row weights -> ``(B,)`` values.
WeightedFn = Callable[[np.ndarray], np.ndarray]


# ------------------------------------------------------------------------------------------------- helpers
def _kind(task: str, kind: str | None) -> str:
    if kind is None:
        return "positive" if task == "multilabel" else "top"
    if kind not in KINDS:
        raise ConfigError(f"calibration kind must be one of {', '.join(KINDS)} (or None for the task's default), "
                          f"got {kind!r}")  # fmt: skip
    return kind


def _n_bins(n_bins: int) -> int:
    if isinstance(n_bins, bool) or not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ConfigError(f"n_bins must be a positive integer (e.g. 15), got {n_bins!r}")
    return int(n_bins)


def _probabilities(s: np.ndarray) -> None:
    finite = s[np.isfinite(s)]
    if finite.size and (finite.min() < 0 or finite.max() > 1):
        raise DataError(
            f"calibration needs probabilities in [0, 1]; the scores range over [{finite.min():.4g}, "
            f"{finite.max():.4g}] (apply softmax / sigmoid to logits first)"
        )


def _pairs(task: str, y: np.ndarray, s: np.ndarray, kind: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(row, confidence, outcome)`` of every pair that calibration is measured on (see the module doc)."""
    n = s.shape[0]
    if task == "multilabel":
        rows, cols = np.nonzero(~np.isnan(y))
        p, truth = s[rows, cols], y[rows, cols]
        if kind == "top":
            return rows, np.maximum(p, 1 - p), ((p > 0.5) == truth).astype(np.float64)
        return rows, p, truth.astype(np.float64)
    if kind == "positive":
        cols = [1] if task == "binary" else range(s.shape[1])
        rows = np.tile(np.arange(n), len(cols))
        conf = np.concatenate([s[:, c] for c in cols])
        truth = np.concatenate([(y == c) for c in cols]).astype(np.float64)
        return rows, conf, truth
    if task == "binary":
        p = s[:, 1]
        return np.arange(n), np.maximum(p, 1 - p), ((p > 0.5) == (y == 1)).astype(np.float64)
    return np.arange(n), s.max(1), (s.argmax(1) == y).astype(np.float64)


def _bin_of(conf: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin index of each confidence: bins ``(lower, upper]``, 0 in the first (sklearn's ``searchsorted``)."""
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    return np.searchsorted(edges[1:-1], conf, side="left")


def _checked(
    task: str, labels: ArrayLike, scores: ArrayLike, name: str
) -> tuple[np.ndarray, np.ndarray, bool]:
    y, s = _prepare(task, labels, scores)
    _probabilities(s)
    return y, s, _finite(name, s)


# ---------------------------------------------------------------------------------------------- public API
def reliability_curve(
    task: str, labels: ArrayLike, scores: ArrayLike, *, n_bins: int = 15, kind: str | None = None
) -> pd.DataFrame:
    """The reliability table behind :func:`expected_calibration_error`: one row per bin, empty bins included.

    Columns: ``bin``, ``lower``, ``upper`` (the bin ``(lower, upper]``), ``count`` (pairs in the bin),
    ``confidence`` (their mean confidence), ``accuracy`` (the fraction correct, or positive for
    ``kind="positive"``) and ``gap = confidence - accuracy`` (> 0: over-confident); nan for an empty bin.

    Example:
        >>> curve = reliability_curve("binary", [[0], [1], [1]], [[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]], n_bins=5)
        >>> curve[curve["count"] > 0][["bin", "count", "confidence", "accuracy"]].to_dict("list")
        {'bin': [2, 3, 4], 'count': [1, 1, 1], 'confidence': [0.6, 0.8, 0.9], 'accuracy': [0.0, 1.0, 1.0]}
    """
    n_bins = _n_bins(n_bins)
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    y, s, finite = _checked(task, labels, scores, "reliability_curve")
    count = np.zeros(n_bins, dtype=np.int64)
    conf_sum, hit_sum = np.zeros(n_bins), np.zeros(n_bins)
    if finite:
        _, conf, outcome = _pairs(task, y, s, _kind(task, kind))
        b = _bin_of(conf, n_bins)
        count = np.bincount(b, minlength=n_bins)
        conf_sum, hit_sum = np.bincount(b, conf, n_bins), np.bincount(b, outcome, n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        confidence, accuracy = conf_sum / count, hit_sum / count
    return pd.DataFrame(
        {"bin": np.arange(n_bins), "lower": edges[:-1], "upper": edges[1:], "count": count,
         "confidence": confidence, "accuracy": accuracy, "gap": confidence - accuracy}
    )  # fmt: skip


def expected_calibration_error(
    task: str, labels: ArrayLike, scores: ArrayLike, *, n_bins: int = 15, kind: str | None = None
) -> float:
    """ECE over ``n_bins`` equal-width confidence bins: ``sum_b (n_b / N) |accuracy_b - confidence_b|``.

    ``kind`` picks the confidence (module doc): ``"top"`` (default for single-label tasks) or
    ``"positive"`` (default for multilabel). ``nan`` when the scores are not finite or no pair is known.

    Example:
        >>> ece = expected_calibration_error("binary", [[0], [1], [1]], [[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]],
        ...                                  n_bins=5)
        >>> round(ece, 6)  # (|0 - 0.6| + |1 - 0.8| + |1 - 0.9|) / 3
        0.3
    """
    curve = reliability_curve(task, labels, scores, n_bins=n_bins, kind=kind)
    total = int(curve["count"].sum())
    if total == 0:
        return NAN
    filled = curve[curve["count"] > 0]
    return float(np.sum(filled["count"] / total * np.abs(filled["gap"])))


def brier_score(task: str, labels: ArrayLike, scores: ArrayLike) -> float:
    """Mean squared error of the probabilities against the labels (module doc for each task).

    Example:
        >>> round(brier_score("binary", [[0], [1]], [[0.9, 0.1], [0.4, 0.6]]), 6)
        0.085
    """
    y, s, finite = _checked(task, labels, scores, "brier")
    if not finite:
        return NAN
    loss, known = _brier_terms(task, y, s)
    return float(loss.sum() / known.sum()) if known.sum() else NAN


def _brier_terms(task: str, y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per row: the summed squared error and the number of terms it averages over (known labels)."""
    if task == "binary":
        return (s[:, 1] - (y == 1)) ** 2, np.ones(len(y))
    if task == "multilabel":
        known = ~np.isnan(y)
        return np.where(known, (s - np.nan_to_num(y)) ** 2, 0.0).sum(1), known.sum(1).astype(np.float64)
    onehot = y[:, None] == np.arange(s.shape[1])
    return ((s - onehot) ** 2).sum(1), np.ones(len(y))


# ----------------------------------------------------------------------------------------- weighted forms
def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _all_nan(weights: np.ndarray) -> np.ndarray:
    return np.full(weights.shape[0], np.nan)


def prepare_ece(
    task: str, labels: ArrayLike, scores: ArrayLike, *, n_bins: int = 15, kind: str | None = None
) -> WeightedFn:
    """ECE of rows weighted by counts: ``fn(weights [B, N]) -> [B]``; all-ones weights give
    :func:`expected_calibration_error`. Per row, the signed gaps ``outcome - confidence`` are summed per bin
    once, so a weighting is two matrix products: ``|W @ gaps|.sum(1) / (W @ pairs per row)``."""
    n_bins = _n_bins(n_bins)
    y, s, finite = _checked(task, labels, scores, "ece")
    if not finite:
        return _all_nan
    rows, conf, outcome = _pairs(task, y, s, _kind(task, kind))
    key = rows * n_bins + _bin_of(conf, n_bins)
    gaps = np.bincount(key, outcome - conf, minlength=len(y) * n_bins).reshape(len(y), n_bins)
    per_row = np.bincount(rows, minlength=len(y)).astype(np.float64)
    return lambda w: _ratio(np.abs(w @ gaps).sum(1), w @ per_row)


def prepare_brier(task: str, labels: ArrayLike, scores: ArrayLike) -> WeightedFn:
    """Brier score of rows weighted by counts: ``fn(weights [B, N]) -> [B]`` (``W @ loss / W @ terms``)."""
    y, s, finite = _checked(task, labels, scores, "brier")
    if not finite:
        return _all_nan
    loss, known = _brier_terms(task, y, s)
    return lambda w: _ratio(w @ loss, w @ known)
