"""Bootstrap confidence intervals over test images (or patients), fast: a resample is a vector of counts.

Drawing ``n`` rows with replacement is the same as giving each row an integer weight: how often it was
drawn. So a resample never needs its rows copied: :data:`WEIGHTED_METRICS` evaluate a metric for a whole
``(B, N)`` matrix of such weights at once (``B`` resamples). AUC sorts each score column once, then each
resample is a cumulative sum of weights over the sorted rows (ties count 1/2, exactly as sklearn): O(B N)
after one O(N log N) sort. The count metrics (accuracy, sensitivity, F1, ...) are one matrix product of the
weights with per-row indicators of tp / fn / fp / tn; ECE and Brier likewise (:mod:`.calibration`).

``scipy.stats.bootstrap`` draws the resamples and computes the interval: it is given the *unit* indices
``0..m-1`` of each test set (``vectorized=True``, ``paired=False``), and the statistic turns each batch of
resampled indices ``(B, m)`` into count weights (:meth:`Units.weights`) and then into metric values. A unit
is a row, or a patient (``groups``): the cluster bootstrap draws whole patients, and every row of a drawn
patient gets the patient's count. Several test sets (cross-validation folds) are resampled independently
in one call (:func:`bootstrap_statistic`). With the same seed, the resamples are those of a plain
``scipy.stats.bootstrap`` call on the rows (or on ``np.arange(n)``), so the intervals agree with it.
scipy is asked for ``batch`` resamples at a time (default: about 2^17 weights per batch), which keeps the
index and weight matrices in cache; for one test set the resamples do not depend on ``batch`` (numpy's
generator yields the same stream in pieces), for several sets scipy interleaves them by batch, so the same
``batch`` and seed give the same resamples.

**Undefined resamples** (a resample with one class only has no AUC): the statistic is nan there, and
``n_nan`` counts them. When at most ``max_nan_fraction`` (default 1%) of the resamples are nan, the interval
and ``se`` are computed over the finite ones only (a ``note`` says how many were left out); above that,
``low``, ``high``, ``se`` (and ``p_value``) are nan and the note says why: such a test set is too small or
too unbalanced for the interval to mean much. When the metric is undefined on the test set itself, all are
nan.

**Paired comparisons** (:func:`paired_bootstrap`): metric(a) - metric(b) on the same resampled images. Its
two-sided bootstrap p-value is ``min(1, 2 min(P(d <= 0), P(d >= 0)))`` over the resampled differences ``d``
(the smallest two-sided level at which the percentile interval would exclude 0, give or take a resample; its
resolution is ``1 / n_resamples``: 0 means that no resample crossed 0).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import logging
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import stats

from .._registry import Registry
from ..errors import ConfigError, DataError, UnknownNameError
from . import metrics as _metrics
from .calibration import LOWER_IS_BETTER, prepare_brier, prepare_ece
from .metrics import METRICS, _finite, _predicted, _prepare

__all__ = [
    "WEIGHTED_METRICS",
    "WeightedFn",
    "weighted_metric",
    "prepare_metric",
    "Units",
    "BootstrapResult",
    "bootstrap_statistic",
    "bootstrap_ci",
    "bootstrap_cis",
    "paired_bootstrap",
]

NAN = float("nan")
#: A prepared weighted metric: ``(B, N)`` row weights -> ``(B,)`` values.
WeightedFn = Callable[[np.ndarray], np.ndarray]
#: Weight matrices are built and evaluated this many elements (resamples x rows) at a time.
_CHUNK_ELEMENTS = 1 << 17
_METHODS = {"percentile": "percentile", "basic": "basic", "bca": "BCa"}
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


# ---------------------------------------------------------------------------------------------- resampling
@dataclass(eq=False)
class Units:
    """One test set to resample: ``n_rows`` rows, resampled as rows or, with ``groups`` (one id per row,
    e.g. patient ids), as whole groups (the cluster bootstrap).

    Units are numbered by first appearance, so distinct ids on every row resample exactly as rows.

    Example:
        >>> units = Units(4, groups=["p1", "p1", "p2", "p3"])
        >>> units.n_units, units.weights([[0, 0, 2]]).tolist()  # drew p1 twice and p3 once
        (3, [[2.0, 2.0, 0.0, 1.0]])
    """

    n_rows: int
    groups: ArrayLike | None = None
    codes: np.ndarray | None = field(init=False, repr=False)  #: row -> unit (None: each row is a unit)
    n_units: int = field(init=False)

    def __post_init__(self) -> None:
        if isinstance(self.n_rows, bool) or not isinstance(self.n_rows, (int, np.integer)) or self.n_rows < 1:
            raise DataError(f"a test set needs a positive number of rows, got n_rows={self.n_rows!r}")
        self.n_rows, self.codes, self.n_units = int(self.n_rows), None, int(self.n_rows)
        if self.groups is not None:
            self.codes, self.n_units = _group_codes(self.groups, self.n_rows)
        if self.n_units < 2:
            raise DataError(
                f"the bootstrap needs at least 2 units (rows or groups) to resample, got {self.n_units}"
            )

    def weights(self, idx: ArrayLike) -> np.ndarray:
        """Resampled unit indices ``[B, m]`` -> row weights ``[B, n_rows]``: a row's count is its unit's."""
        idx = np.atleast_2d(np.asarray(idx, dtype=np.int64))
        b = idx.shape[0]
        offsets = (np.arange(b, dtype=np.int64) * self.n_units)[:, None]
        counts = np.bincount((idx + offsets).ravel(), minlength=b * self.n_units).reshape(b, self.n_units)
        return (counts if self.codes is None else counts[:, self.codes]).astype(np.float64)


def _group_codes(groups: ArrayLike, n_rows: int) -> tuple[np.ndarray, int]:
    g = np.asarray(groups)
    if g.ndim != 1 or g.size != n_rows:
        raise DataError(f"groups must hold one id per row ({n_rows}), got shape {g.shape}")
    codes, uniques = pd.factorize(g, sort=False)
    if (codes < 0).any():
        raise DataError(
            f"groups hold {int((codes < 0).sum())} missing ids; give every row a group (patient) id"
        )
    return codes.astype(np.int64), len(uniques)


@dataclass
class BootstrapResult:
    """A bootstrap estimate with its interval.

    ``estimate`` is the statistic on the test set(s) as they are; ``low`` / ``high`` the ``confidence``
    interval (scipy's ``method``); ``se`` the standard deviation of the bootstrap distribution (ddof 1);
    ``n_nan`` the resamples where the statistic was nan (module doc: the rule); ``units`` the units (rows or
    groups) per test set; ``note`` why an interval is nan or what was left out; ``p_value`` only for
    :func:`paired_bootstrap`; ``distribution`` the ``n_resamples`` resampled values.
    """

    estimate: float
    low: float
    high: float
    se: float
    n_resamples: int
    n_nan: int
    method: str
    confidence: float
    units: list[int]
    note: str = ""
    p_value: float | None = None
    distribution: np.ndarray = field(default_factory=lambda: np.empty(0), repr=False, compare=False)


def _check_options(n_resamples: int, confidence: float, method: str, max_nan_fraction: float) -> str:
    if isinstance(n_resamples, bool) or not isinstance(n_resamples, (int, np.integer)) or n_resamples < 1:
        raise ConfigError(f"n_resamples must be a positive integer (e.g. 2000), got {n_resamples!r}")
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must be between 0 and 1 (e.g. 0.95), got {confidence!r}")
    if str(method).lower() not in _METHODS:
        raise ConfigError(f"bootstrap method must be one of {', '.join(_METHODS.values())}, got {method!r}")
    if not 0 <= max_nan_fraction <= 1:
        raise ConfigError(f"max_nan_fraction must be in [0, 1], got {max_nan_fraction!r}")
    return _METHODS[str(method).lower()]


def _scipy_statistic(units: Sequence[Units], statistic: Callable[[list[np.ndarray]], Any], n_out: int):
    """scipy's vectorised statistic: resampled unit indices -> row weights -> ``[n_out, B]`` values, built
    ``_CHUNK_ELEMENTS`` at a time. 1-D indices (the data themselves: the point estimate) give ``[n_out]``."""
    chunk = max(1, _CHUNK_ELEMENTS // max(u.n_rows for u in units))

    def scipy_statistic(*idx: np.ndarray, axis: int = -1) -> np.ndarray:
        one = idx[0].ndim == 1
        idx2 = [np.atleast_2d(i) for i in idx]
        b = idx2[0].shape[0]
        out = np.empty((n_out, b))
        for a in range(0, b, chunk):
            values = statistic([u.weights(i[a : a + chunk]) for u, i in zip(units, idx2)])
            out[:, a : a + chunk] = _shaped(values, n_out, min(chunk, b - a))
        return out[:, 0] if one else out

    return scipy_statistic


def _shaped(values: Any, n_out: int, b: int) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    if v.size != n_out * b:
        want = f"({b},)" if n_out == 1 else f"({n_out}, {b})"
        raise ConfigError(f"the statistic must return one value per resample, shape {want}; got {v.shape}")
    return v.reshape(n_out, b)


def _scipy_bootstrap(data: list[np.ndarray], statistic: Callable, **kwargs: Any) -> Any:
    """``scipy.stats.bootstrap`` (its ``rng`` argument was ``random_state`` before scipy 1.15); its warning
    about a nan interval is dropped: the nan rule below handles and explains nan resamples."""
    if "rng" not in inspect.signature(stats.bootstrap).parameters:
        kwargs["random_state"] = kwargs.pop("rng")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", stats.DegenerateDataWarning)
        return stats.bootstrap(data, statistic, vectorized=True, paired=False, **kwargs)


def _run(
    units: Sequence[Units],
    statistic: Callable[[list[np.ndarray]], Any],
    n_out: int,
    *,
    n_resamples: int,
    confidence: float,
    method: str,
    seed: int | np.random.Generator,
    max_nan_fraction: float,
    batch: int | None,
) -> list[BootstrapResult]:
    """Bootstrap a statistic with ``n_out`` outputs (``[n_out, B]``): one result per output."""
    method = _check_options(n_resamples, confidence, method, max_nan_fraction)
    units = list(units)
    if not units or not all(isinstance(u, Units) for u in units):
        raise ConfigError("units must be a non-empty sequence of Units (one per test set)")
    data = [np.arange(u.n_units) for u in units]
    stat = _scipy_statistic(units, statistic, n_out)
    batch = batch or max(1, _CHUNK_ELEMENTS // max(u.n_rows for u in units))
    common = {"confidence_level": confidence, "method": method.lower(), "batch": batch}
    res = _scipy_bootstrap(data, stat, n_resamples=n_resamples, rng=np.random.default_rng(seed), **common)
    estimates = stat(*data)
    dist = np.asarray(res.bootstrap_distribution).reshape(n_out, n_resamples)
    low, high = (np.atleast_1d(res.confidence_interval.low), np.atleast_1d(res.confidence_interval.high))
    se = np.atleast_1d(res.standard_error)
    out = []
    for j in range(n_out):
        ci = (float(low[j]), float(high[j]), float(se[j]))
        stat_j = functools.partial(_output, stat, j)
        ci, note = _nan_rule(dist[j], ci, float(estimates[j]), max_nan_fraction, data, stat_j, common)
        out.append(BootstrapResult(float(estimates[j]), *ci, n_resamples, int(np.isnan(dist[j]).sum()), method,
                                   confidence, [u.n_units for u in units], note, distribution=dist[j]))  # fmt: skip
    return out


def _output(stat: Callable, j: int, *idx: np.ndarray, axis: int = -1) -> np.ndarray:
    return stat(*idx)[j]


def _nan_rule(
    dist: np.ndarray,
    ci: tuple[float, float, float],
    estimate: float,
    max_nan_fraction: float,
    data: list[np.ndarray],
    stat: Callable[..., np.ndarray],
    common: dict[str, Any],
) -> tuple[tuple[float, float, float], str]:
    """The interval and se under the nan rule (module doc), and the note explaining a departure."""
    n_nan, n = int(np.isnan(dist).sum()), dist.size
    undefined = f"{n_nan} of {n} resamples gave nan (the metric is undefined there, e.g. one class only)"
    if np.isnan(estimate):
        return (NAN, NAN, NAN), "the statistic is undefined on the test set itself (e.g. one class only)"
    if n_nan > max_nan_fraction * n:
        return (NAN, NAN, NAN), f"{undefined}: more than {max_nan_fraction * 100:g}%, so no interval"
    if n_nan:
        kept = SimpleNamespace(bootstrap_distribution=dist[~np.isnan(dist)])
        res = _scipy_bootstrap(data, stat, n_resamples=0, bootstrap_result=kept, rng=None, **common)
        ci = (
            float(res.confidence_interval.low),
            float(res.confidence_interval.high),
            float(res.standard_error),
        )
    note = f"{undefined}; the interval is over the {n - n_nan} finite ones" if n_nan else ""
    if not np.isfinite(ci[0]) or not np.isfinite(ci[1]):
        note = "; ".join(
            filter(None, [note, "scipy could not compute the interval (a degenerate distribution)"])
        )
    return ci, note


# ---------------------------------------------------------------------------------------------- public API
def bootstrap_statistic(
    units: Sequence[Units],
    statistic: Callable[[list[np.ndarray]], np.ndarray],
    *,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    method: str = "percentile",
    seed: int | np.random.Generator = 0,
    max_nan_fraction: float = 0.01,
    batch: int | None = None,
) -> BootstrapResult:
    """Bootstrap any statistic of one or more test sets, each resampled independently (by its units).

    ``statistic`` receives one ``(B, n_rows_i)`` weight matrix per test set and returns ``(B,)`` values; an
    all-ones ``(1, n_rows_i)`` matrix per set gives the point estimate. ``scipy.stats.bootstrap`` draws the
    resamples (``paired=False`` over the sets' unit indices) and computes the interval (``method``:
    ``percentile``, ``basic`` or ``BCa``; BCa adds one jackknife evaluation per unit). ``seed`` seeds
    ``np.random.default_rng``; ``batch`` is how many resamples scipy draws and evaluates at a time (module
    doc). Undefined (nan) resamples: module doc.

    Example: the mean AUC over cross-validation folds, each fold's test rows resampled on their own.

        >>> rng = np.random.default_rng(0)
        >>> folds = [(rng.integers(0, 2, (50, 1)), rng.dirichlet([1, 1], 50)) for _ in range(3)]
        >>> aucs = [prepare_metric("auc", "binary", y, s) for y, s in folds]
        >>> r = bootstrap_statistic([Units(50)] * 3, lambda ws: np.mean([f(w) for f, w in zip(aucs, ws)], 0),
        ...                         n_resamples=200)
        >>> bool(r.low <= r.estimate <= r.high), r.units
        (True, [50, 50, 50])
    """
    return _run(units, statistic, 1, n_resamples=n_resamples, confidence=confidence, method=method, seed=seed,
                max_nan_fraction=max_nan_fraction, batch=batch)[0]  # fmt: skip


def bootstrap_ci(
    task: str,
    labels: ArrayLike,
    scores: ArrayLike,
    *,
    metric: str = "auc",
    groups: ArrayLike | None = None,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    method: str = "percentile",
    seed: int | np.random.Generator = 0,
    max_nan_fraction: float = 0.01,
    batch: int | None = None,
) -> BootstrapResult:
    """Bootstrap interval of one metric on one test set; ``groups`` (patient ids) resample whole patients.

    Example:
        >>> rng = np.random.default_rng(0)
        >>> y = rng.integers(0, 2, (200, 1))
        >>> p = np.clip(0.5 + 0.3 * (y[:, 0] - 0.5) + rng.normal(0, 0.2, 200), 0, 1)
        >>> r = bootstrap_ci("binary", y, np.stack([1 - p, p], 1), n_resamples=500)
        >>> bool(r.low < r.estimate < r.high), r.n_nan, r.method
        (True, 0, 'percentile')
    """
    (result,) = bootstrap_cis(task, labels, [scores], metric=metric, groups=groups, n_resamples=n_resamples,
                              confidence=confidence, method=method, seed=seed, max_nan_fraction=max_nan_fraction,
                              batch=batch)  # fmt: skip
    return result


def bootstrap_cis(
    task: str,
    labels: ArrayLike,
    scores: Sequence[ArrayLike] | Mapping[str, ArrayLike],
    *,
    metric: str = "auc",
    groups: ArrayLike | None = None,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    method: str = "percentile",
    seed: int | np.random.Generator = 0,
    max_nan_fraction: float = 0.01,
    batch: int | None = None,
) -> list[BootstrapResult] | dict[str, BootstrapResult]:
    """:func:`bootstrap_ci` of several methods' scores on the same test set, from one set of resamples.

    Each result equals ``bootstrap_ci`` of that method alone with the same seed (the same resamples), but the
    resampling and the weights are made once for all methods. ``scores`` is a list (gives a list) or a
    mapping of method name to scores (gives a dict).
    """
    named = dict(scores) if isinstance(scores, Mapping) else dict(enumerate(scores))
    if not named:
        raise ConfigError("bootstrap_cis needs the scores of at least one method")
    fns = [prepare_metric(metric, task, labels, s) for s in named.values()]
    units = Units(len(np.asarray(labels)), groups=groups)
    results = _run([units], lambda ws: np.stack([f(ws[0]) for f in fns]), len(fns), n_resamples=n_resamples,
                   confidence=confidence, method=method, seed=seed, max_nan_fraction=max_nan_fraction,
                   batch=batch)  # fmt: skip
    return dict(zip(named, results)) if isinstance(scores, Mapping) else results


def paired_bootstrap(
    task: str,
    labels: ArrayLike,
    scores_a: ArrayLike,
    scores_b: ArrayLike,
    *,
    metric: str = "auc",
    groups: ArrayLike | None = None,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    method: str = "percentile",
    seed: int | np.random.Generator = 0,
    max_nan_fraction: float = 0.01,
    batch: int | None = None,
) -> BootstrapResult:
    """Interval of ``metric(a) - metric(b)`` on the same resampled test images (or patients), with a
    two-sided bootstrap ``p_value = min(1, 2 min(P(d <= 0), P(d >= 0)))`` (module doc).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> y = rng.integers(0, 2, (300, 1))
        >>> good = np.clip(0.5 + 0.4 * (y[:, 0] - 0.5) + rng.normal(0, 0.2, 300), 0, 1)
        >>> r = paired_bootstrap("binary", y, np.stack([1 - good, good], 1), rng.dirichlet([1, 1], 300))
        >>> bool(r.low > 0), r.p_value
        (True, 0.0)
    """
    fa = prepare_metric(metric, task, labels, scores_a)
    fb = prepare_metric(metric, task, labels, scores_b)
    units = Units(len(np.asarray(labels)), groups=groups)
    result = bootstrap_statistic([units], lambda ws: fa(ws[0]) - fb(ws[0]), n_resamples=n_resamples,
                                 confidence=confidence, method=method, seed=seed,
                                 max_nan_fraction=max_nan_fraction, batch=batch)  # fmt: skip
    result.p_value = _p_value(result)
    return result


def _p_value(result: BootstrapResult) -> float:
    d = result.distribution[np.isfinite(result.distribution)]
    if np.isnan(result.low) or d.size == 0:
        return NAN
    return float(min(1.0, 2 * min(np.mean(d <= 0), np.mean(d >= 0))))
