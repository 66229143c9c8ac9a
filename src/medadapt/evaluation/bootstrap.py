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

import functools
import inspect
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike
from scipy import stats

from ..errors import ConfigError, DataError
from .weighted import WEIGHTED_METRICS, WeightedFn, prepare_metric, weighted_metric

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
#: Weight matrices are built and evaluated this many elements (resamples x rows) at a time.
_CHUNK_ELEMENTS = 1 << 17
_METHODS = {"percentile": "percentile", "basic": "basic", "bca": "BCa"}


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
