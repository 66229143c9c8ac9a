"""Metrics of weighted rows, for a whole ``(B, N)`` matrix of weights at once: the engine of the bootstrap.

Drawing ``n`` rows with replacement is the same as giving each row an integer weight: how often it was
drawn. :data:`WEIGHTED_METRICS` evaluate a metric for ``B`` such weightings at once. AUC sorts each score
column once, then each weighting is a cumulative sum of weights over the sorted rows (ties count 1/2,
exactly as sklearn): O(B N) after one O(N log N) sort. The count metrics (accuracy, sensitivity, F1, ...) are
one matrix product of the weights with per-row indicators of tp / fn / fp / tn; ECE and Brier likewise
(:mod:`.calibration`). All-ones weights give exactly :data:`.metrics.METRICS`.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
from numpy.typing import ArrayLike

from .._registry import Registry
from ..errors import DataError, UnknownNameError
from . import metrics as _metrics
from .calibration import LOWER_IS_BETTER, prepare_brier, prepare_ece
from .metrics import METRICS, _finite, _predicted, _prepare

__all__ = ["WEIGHTED_METRICS", "SEGMENTATION_METRICS", "WeightedFn", "weighted_metric", "prepare_metric"]

NAN = float("nan")
#: A prepared weighted metric: ``(B, N)`` row weights -> ``(B,)`` values.
WeightedFn = Callable[[np.ndarray], np.ndarray]
#: An AUC column with fewer distinct scores than this fraction of its rows sums weights per tie group first.
_HEAVY_TIES = 0.5


# ----------------------------------------------------------------------------------------- weighted metrics
def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den``, nan where ``den`` is 0 (an undefined resample)."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def _all_nan(weights: np.ndarray) -> np.ndarray:
    return np.full(weights.shape[0], np.nan)


class _AucColumn:
    """One binary AUC column, sorted once: a weighting is then one cumulative sum over the negatives.

    With the rows sorted by score, negatives first inside each tie group, the AUC's numerator is the sum
    over positives of their weight times the negative weight sorted before them. That counts a positive's
    tied negatives fully; half of ``sum_g P_g N_g`` over the tie groups ``g`` that hold both classes takes
    it back (sklearn's trapezoid counts a tied pair 1/2). Under heavy ties (fewer distinct scores than
    ``_HEAVY_TIES`` of the rows) the weights are summed per tie group first, ``P_g`` and ``N_g``, and the
    numerator is ``sum_g P_g (N_<g + N_g / 2)``.
    """

    def __init__(self, positive: np.ndarray, score: np.ndarray, rows: np.ndarray | None = None):
        order = np.lexsort((positive, score))
        cols = order if rows is None else rows[order]  # weight columns in score order
        pos = positive[order]
        self.neg_cols, self.pos_cols = cols[~pos], cols[pos]
        self.defined = 0 < self.pos_cols.size < pos.size
        self.runs = self.mixed = None
        if not self.defined:
            return
        sorted_score = score[order]
        group = np.cumsum(np.r_[True, sorted_score[1:] != sorted_score[:-1]]) - 1  # tie group of each row
        self.n_groups = int(group[-1]) + 1
        if self.n_groups < _HEAVY_TIES * pos.size:
            self.runs = (_runs(group[~pos]), _runs(group[pos]))
            return
        self.below = np.cumsum(~pos)[pos]  # negatives sorted before each positive
        mixed = _mixed_ties(sorted_score, pos)
        self.mixed = None if mixed is None else (cols[mixed[0]], *mixed[1:])

    def __call__(self, w: np.ndarray) -> np.ndarray:
        if not self.defined:
            return _all_nan(w)
        if self.runs is not None:
            return self._per_tie_group(w)
        cum_neg = np.zeros((w.shape[0], self.neg_cols.size + 1))
        np.cumsum(w[:, self.neg_cols], axis=1, out=cum_neg[:, 1:])
        wp = w[:, self.pos_cols]
        num = np.einsum("ij,ij->i", wp, cum_neg[:, self.below])
        if self.mixed is not None:
            cols, starts, is_pos = self.mixed
            wm = w[:, cols]
            p = np.add.reduceat(wm * is_pos, starts, axis=1)
            num -= 0.5 * np.einsum("ij,ij->i", p, np.add.reduceat(wm, starts, axis=1) - p)
        return _ratio(num, wp.sum(1) * cum_neg[:, -1])

    def _per_tie_group(self, w: np.ndarray) -> np.ndarray:
        neg, pos = (self._group_sums(w[:, c], *r) for c, r in zip((self.neg_cols, self.pos_cols), self.runs))
        cum_neg = np.cumsum(neg, axis=1)
        return _ratio(np.einsum("ij,ij->i", pos, cum_neg - 0.5 * neg), pos.sum(1) * cum_neg[:, -1])

    def _group_sums(self, w: np.ndarray, starts: np.ndarray, groups: np.ndarray) -> np.ndarray:
        out = np.zeros((w.shape[0], self.n_groups))
        out[:, groups] = np.add.reduceat(w, starts, axis=1)
        return out


def _runs(group: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Where each run of equal (sorted) tie-group ids starts, and its id."""
    starts = np.flatnonzero(np.r_[True, group[1:] != group[:-1]])
    return starts, group[starts]


def _mixed_ties(sorted_score: np.ndarray, pos: np.ndarray) -> tuple[np.ndarray, ...] | None:
    """Sorted positions of the tie groups holding both classes, each group's start among them, and which
    of them are positive; None when no tie mixes the classes."""
    starts = np.flatnonzero(np.r_[True, sorted_score[1:] != sorted_score[:-1]])
    sizes = np.diff(np.r_[starts, sorted_score.size])
    n_pos = np.add.reduceat(pos.astype(np.int64), starts)
    mixed = (n_pos > 0) & (n_pos < sizes)
    if not mixed.any():
        return None
    sizes = sizes[mixed]
    new_starts = np.r_[0, np.cumsum(sizes)[:-1]]
    cols = np.repeat(starts[mixed] - new_starts, sizes) + np.arange(sizes.sum())
    return cols, new_starts, pos[cols].astype(np.float64)


def _prepare_auc(task: str, labels: ArrayLike, scores: ArrayLike) -> WeightedFn:
    """AUC (binary: column 1; multiclass / ordinal: macro one-vs-rest; multilabel: macro over labels, with
    unknown labels left out): any undefined part makes that resample nan, as :func:`.metrics.auc`."""
    y, s = _prepare(task, labels, scores)
    if not _finite("auc", s):
        return _all_nan
    if task == "binary":
        columns = [_AucColumn(y == 1, s[:, 1])]
    elif task == "multilabel":
        known = [np.flatnonzero(~np.isnan(y[:, j])) for j in range(s.shape[1])]
        columns = [_AucColumn(y[r, j] == 1, s[r, j], rows=r) for j, r in enumerate(known)]
    else:
        columns = [_AucColumn(y == c, s[:, c]) for c in range(s.shape[1])]
    return lambda w: np.mean([column(w) for column in columns], axis=0)


def _indicators(task: str, y: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Per row and score column (one-vs-rest, or label): is it a tp / fn / fp / tn, as ``[N, 4 * K]``
    0/1 (unknown multilabel labels are none of them), so that ``W @ it`` are weighted confusion counts."""
    if task == "multilabel":
        known, truth, pred = ~np.isnan(y), np.nan_to_num(y) == 1, s > 0.5
    else:
        classes = np.arange(s.shape[1])
        known = np.ones(s.shape, dtype=bool)
        truth, pred = y[:, None] == classes, _predicted(task, s, 0.5)[:, None] == classes
    parts = [truth & pred, truth & ~pred, ~truth & pred, ~truth & ~pred]
    return np.concatenate([p & known for p in parts], axis=1).astype(np.float64)


def _count_metric(name: str, rates: Callable[[str, np.ndarray], np.ndarray]) -> Callable[..., WeightedFn]:
    """A weighted metric of the confusion counts: ``rates(task, counts [B, 4, K]) -> [B]``."""

    def prepare(task: str, labels: ArrayLike, scores: ArrayLike) -> WeightedFn:
        y, s = _prepare(task, labels, scores)
        if not _finite(name, s):
            return _all_nan
        table = _indicators(task, y, s)
        return lambda w: rates(task, (w @ table).reshape(w.shape[0], 4, s.shape[1]))

    prepare.__name__ = f"_prepare_{name}"
    return prepare


def _positive_or_macro(task: str, values: np.ndarray) -> np.ndarray:
    """Binary: class 1's value; otherwise the macro mean (nan when any part is nan, as :mod:`.metrics`)."""
    return values[:, 1] if task == "binary" else values.mean(1)


def _acc(task: str, c: np.ndarray) -> np.ndarray:
    tp, fn, fp, tn = c[:, 0], c[:, 1], c[:, 2], c[:, 3]
    if task == "multilabel":
        return _ratio(tp + tn, tp + tn + fp + fn).mean(1)
    return _ratio(tp.sum(1), (tp + fn).sum(1))


def _sensitivity(task: str, c: np.ndarray) -> np.ndarray:
    return _positive_or_macro(task, _ratio(c[:, 0], c[:, 0] + c[:, 1]))


def _specificity(task: str, c: np.ndarray) -> np.ndarray:
    return _positive_or_macro(task, _ratio(c[:, 3], c[:, 3] + c[:, 2]))


def _balanced_accuracy(task: str, c: np.ndarray) -> np.ndarray:
    recall = _ratio(c[:, 0], c[:, 0] + c[:, 1])
    if task == "multilabel":
        recall = (recall + _ratio(c[:, 3], c[:, 3] + c[:, 2])) / 2
    return recall.mean(1)


def _f1_macro(task: str, c: np.ndarray) -> np.ndarray:
    return _ratio(2 * c[:, 0], 2 * c[:, 0] + c[:, 2] + c[:, 1]).mean(1)


def _check_weights(weights: ArrayLike, n_rows: int) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim not in (1, 2) or w.shape[-1] != n_rows:
        raise DataError(
            f"weights must be [N] or [B, N] with N = the {n_rows} rows of labels and scores, got shape {w.shape}"
        )
    if not np.isfinite(w).all() or (w < 0).any():
        raise DataError("weights must be finite and nonnegative (how often each row is drawn)")
    return w


def _fallback(name: str, task: str, labels: ArrayLike, scores: ArrayLike) -> WeightedFn:
    """A metric without a weighted form: one call of ``METRICS[name]`` per resample on its rows, expanded
    as ``np.repeat(rows, counts)`` (integer weights only; slow: a Python loop over the resamples)."""
    fn = METRICS.get(name)
    _prepare(task, labels, scores)  # errors now, not in the loop
    y, s = np.asarray(labels), np.asarray(scores)

    def weighted(w: np.ndarray) -> np.ndarray:
        counts = np.rint(w).astype(np.int64)
        if not np.array_equal(counts, w):
            raise DataError(f"{name} has no weighted form: its weights must be integer counts")
        out = np.full(w.shape[0], np.nan)
        with _quiet(_metrics.logger):  # an undefined resample is nan, not a warning per resample
            for b, row_counts in enumerate(counts):
                rows = np.repeat(np.arange(row_counts.size), row_counts)
                out[b] = fn(task, y[rows], s[rows]) if rows.size else NAN
        return out

    return weighted


@contextlib.contextmanager
def _quiet(logger: logging.Logger) -> Iterator[None]:
    """Drop ``logger``'s warnings (not its errors) while the block runs."""

    def errors_only(record: logging.LogRecord) -> bool:
        return record.levelno >= logging.ERROR

    logger.addFilter(errors_only)
    try:
        yield
    finally:
        logger.removeFilter(errors_only)


#: Metrics of rows weighted by counts: ``fn(task, labels, scores, weights [B, N]) -> [B]``; the factory that
#: sorts / tabulates once is in each entry's meta (``WEIGHTED_METRICS.meta(name)["prepare"]``).
# ------------------------------------------------------------------------------------------- segmentation
#: Segmentation metrics with a weighted form: images are the rows (per-image values, or pooled counts).
SEGMENTATION_METRICS = ("dice", "iou", "dice_pooled", "iou_pooled", "hd95")


def _prepare_segmentation(name: str) -> Callable[..., WeightedFn]:
    """``labels`` and ``scores`` are the true and predicted masks ``[N, H, W]``. A per-image metric is the
    weighted mean of its per-image values (mean over foreground classes); a pooled one sums the weighted
    per-image counts before the ratio. All-ones weights give :func:`.segmentation.segmentation_metrics`."""

    def prepare(task: str, labels: ArrayLike, scores: ArrayLike) -> WeightedFn:
        from . import segmentation as seg  # MONAI only for hd95, and only when asked

        if task != "segmentation":
            raise DataError(f"{name!r} scores masks (task segmentation), not a {task} task")
        t, p = np.asarray(labels).astype(np.int64), np.asarray(scores).astype(np.int64)
        n_classes = max(2, int(max(t.max(initial=0), p.max(initial=0))) + 1)
        if name.endswith("_pooled"):
            counts = seg.confusion_counts(t, p, n_classes)[:, 1:]  # [N, C-1, (tp, fp, fn)]
            tp, fp, fn = (counts[..., k].astype(np.float64) for k in range(3))

            def pooled(w: np.ndarray) -> np.ndarray:
                a, b, c = w @ tp, w @ fp, w @ fn
                num, den = (2 * a, 2 * a + b + c) if name == "dice_pooled" else (a, a + b + c)
                return np.nanmean(np.where(den > 0, num / np.where(den > 0, den, 1), 1.0), axis=1)

            return pooled
        per_class = {"dice": seg.dice_per_image, "iou": seg.iou_per_image, "hd95": seg.hd95_per_image}[name]
        values = np.nanmean(per_class(t, p, n_classes), axis=1)

        def per_image(w: np.ndarray) -> np.ndarray:
            total = w.sum(axis=1)
            return np.where(total > 0, (w @ values) / np.where(total > 0, total, 1), np.nan)

        return per_image

    return prepare


WEIGHTED_METRICS: Registry[Callable[..., np.ndarray]] = Registry("weighted metric")

_PREPARE: dict[str, Callable[..., WeightedFn]] = {
    "auc": _prepare_auc,
    "acc": _count_metric("acc", _acc),
    "sensitivity": _count_metric("sensitivity", _sensitivity),
    "specificity": _count_metric("specificity", _specificity),
    "balanced_accuracy": _count_metric("balanced_accuracy", _balanced_accuracy),
    "f1_macro": _count_metric("f1_macro", _f1_macro),
    "ece": prepare_ece,
    "brier": prepare_brier,
    **{name: _prepare_segmentation(name) for name in SEGMENTATION_METRICS},
}


def prepare_metric(metric: str, task: str, labels: ArrayLike, scores: ArrayLike) -> WeightedFn:
    """Check the inputs and sort / tabulate them once; the result maps ``(B, N)`` weights to ``(B,)``.

    Every name of :data:`WEIGHTED_METRICS` is vectorised; other names of :data:`.metrics.METRICS`
    (``cohen_kappa``) fall back to a loop over the resamples (see :func:`weighted_metric`).
    """
    if metric in WEIGHTED_METRICS:
        return WEIGHTED_METRICS.meta(metric)["prepare"](task, labels, scores)
    if metric in METRICS:
        return _fallback(metric, task, labels, scores)
    raise UnknownNameError(WEIGHTED_METRICS.unknown_message(metric, sorted({*WEIGHTED_METRICS, *METRICS})))


def weighted_metric(metric: str, task: str, labels: ArrayLike, scores: ArrayLike, weights: ArrayLike) -> Any:
    """``metric`` of the rows weighted by ``weights``: ``[N]`` gives a 0-d float, ``[B, N]`` gives ``[B]``.

    An integer weight ``k`` counts a row ``k`` times, so all-ones weights give ``METRICS[metric]`` (or the
    :mod:`.calibration` function for ``ece`` / ``brier``), and weights ``w`` give the metric of
    ``np.repeat(rows, w)``. A weighting where the metric is undefined (one class only) gives nan. Metrics
    without a weighted form (``cohen_kappa``) are computed by calling ``METRICS[metric]`` once per weight
    row on the expanded rows: correct, but a Python loop (and integer weights only).

    Example:
        >>> labels, scores = [[0], [1], [1]], [[0.8, 0.2], [0.3, 0.7], [0.9, 0.1]]
        >>> weighted_metric("auc", "binary", labels, scores, [[1, 1, 1], [2, 1, 0]]).tolist()
        [0.5, 1.0]
    """
    fn = prepare_metric(metric, task, labels, scores)
    w = _check_weights(weights, np.shape(scores)[0])
    out = fn(np.atleast_2d(w))
    return out[0] if w.ndim == 1 else out


for _name, _prep in _PREPARE.items():
    WEIGHTED_METRICS.register(
        _name,
        functools.partial(weighted_metric, _name),
        prepare=_prep,
        higher_is_better=_name not in LOWER_IS_BETTER,
    )
