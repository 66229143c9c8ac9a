"""Paired comparisons across seeds and ``mean ± std`` summaries, checked against scipy.

A distilled student and the student alone trained on the same seeds give paired scores: seed ``i`` of one
shares its split, initialisation and data order with seed ``i`` of the other. :func:`paired_test` compares
them on the per-seed differences (a paired t-test with its t-interval, plus the Wilcoxon signed-rank test
as a check that does not assume normal differences). With the usual 3-5 seeds, read the interval rather
than the p-value: it says how large the gain plausibly is.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np
from numpy.typing import ArrayLike
from scipy import stats

from ..errors import ConfigError

__all__ = ["paired_test", "mean_std", "format_mean_std"]

NAN = float("nan")
#: Differences spread less than this (relative to the scores' size) are one value: float noise, not variance.
_REL_TOL = 1e-12


def _scores(name: str, values: ArrayLike) -> np.ndarray:
    x = np.asarray(values, dtype=np.float64)
    if x.ndim != 1:
        raise ConfigError(f"{name} must be a 1-D sequence of per-seed scores, got shape {x.shape}")
    if not np.isfinite(x).all():
        bad = np.flatnonzero(~np.isfinite(x)).tolist()
        raise ConfigError(
            f"{name} holds non-finite scores at positions {bad}; drop those seeds from both sides first"
        )
    return x


def _check_pair(a: np.ndarray, b: np.ndarray, confidence: float) -> None:
    if a.size != b.size:
        raise ConfigError(
            f"paired scores need one value per seed on both sides: got {a.size} for a and {b.size} for b "
            "(the same seeds, in the same order)"
        )
    if a.size < 2:
        raise ConfigError(f"a paired test needs scores from at least 2 seeds, got {a.size}")
    if not 0 < confidence < 1:
        raise ConfigError(f"confidence must be between 0 and 1 (e.g. 0.95), got {confidence!r}")


def _wilcoxon_p(diff: np.ndarray) -> float:
    """Two-sided signed-rank p-value; nan when every difference is zero (nothing to rank)."""
    if not np.any(diff):
        return NAN
    with warnings.catch_warnings():  # small-sample / ties notes from scipy: the p-value is still returned
        warnings.simplefilter("ignore")
        return float(stats.wilcoxon(diff, alternative="two-sided").pvalue)


def paired_test(a: ArrayLike, b: ArrayLike, *, confidence: float = 0.95) -> dict[str, Any]:
    """Paired t-test of per-seed scores ``a`` vs ``b``, with a t-interval of the mean difference ``a - b``.

    Returns ``n``, ``mean_a``, ``mean_b``, ``mean_diff``, ``ci_low``, ``ci_high`` (the ``confidence``
    t-interval of ``mean_diff``), ``t``, ``p_value`` (two-sided, ``scipy.stats.ttest_rel``), ``wilcoxon_p``
    (two-sided ``scipy.stats.wilcoxon``; nan when all differences are zero), ``confidence`` and ``test``.
    When every seed differs by the same amount the t statistic is undefined: ``t`` and ``p_value`` are nan
    and the interval is that one difference.

    Raises:
        ConfigError: ``a`` and ``b`` differ in length, hold fewer than 2 seeds or non-finite values.

    Example:
        >>> r = paired_test([0.91, 0.93, 0.90, 0.92], [0.89, 0.90, 0.90, 0.88])
        >>> round(r["mean_diff"], 4), round(r["p_value"], 3)
        (0.0225, 0.078)
    """
    a, b = _scores("a", a), _scores("b", b)
    _check_pair(a, b, confidence)
    diff = a - b
    n, mean_diff = diff.size, float(diff.mean())
    scale = max(float(np.abs(a).max()), float(np.abs(b).max()), 1e-300)
    if np.ptp(diff) <= _REL_TOL * scale:
        t, p, ci = NAN, NAN, (mean_diff, mean_diff)
    else:
        res = stats.ttest_rel(a, b)
        t, p = float(res.statistic), float(res.pvalue)
        half = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * float(diff.std(ddof=1)) / math.sqrt(n)
        ci = (mean_diff - half, mean_diff + half)
    return {
        "n": n,
        "mean_a": float(a.mean()),
        "mean_b": float(b.mean()),
        "mean_diff": mean_diff,
        "ci_low": ci[0],
        "ci_high": ci[1],
        "t": t,
        "p_value": p,
        "wilcoxon_p": _wilcoxon_p(diff),
        "confidence": confidence,
        "test": "paired t-test",
    }


def mean_std(values: ArrayLike) -> tuple[float, float]:
    """Mean and sample standard deviation (``ddof=1``; 0.0 for one value). A nan score makes both nan.

    Example:
        >>> mean, std = mean_std([0.90, 0.92, 0.94])
        >>> round(mean, 6), round(std, 6)
        (0.92, 0.02)
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    if x.size == 0:
        raise ConfigError("mean_std needs at least one value, got none")
    std = float(x.std(ddof=1)) if x.size > 1 else (0.0 if np.isfinite(x[0]) else NAN)
    return float(x.mean()), std


def format_mean_std(values: ArrayLike, digits: int = 3) -> str:
    """``"mean ± std"`` with ``digits`` decimals; just the mean for a single value.

    Example:
        >>> format_mean_std([0.901, 0.912, 0.923])
        '0.912 ± 0.011'
        >>> format_mean_std([0.9123])
        '0.912'
    """
    x = np.asarray(values, dtype=np.float64).ravel()
    mean, std = mean_std(x)
    if x.size == 1:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {std:.{digits}f}"
