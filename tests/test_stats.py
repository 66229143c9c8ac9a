"""Paired tests and mean ± std against scipy: p-values, t-intervals, Wilcoxon, errors, degenerate cases."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy import stats

from medadapt.errors import ConfigError
from medadapt.evaluation.stats import format_mean_std, mean_std, paired_test

A = [0.91, 0.93, 0.90, 0.92]
B = [0.89, 0.90, 0.90, 0.88]


def _scipy_interval(a: list[float], b: list[float], confidence: float) -> tuple[float, float]:
    d = np.asarray(a) - np.asarray(b)
    return stats.t.interval(confidence, df=d.size - 1, loc=d.mean(), scale=stats.sem(d))


@pytest.mark.parametrize("confidence", [0.95, 0.9])
def test_paired_test_matches_scipy(confidence: float) -> None:
    r = paired_test(A, B, confidence=confidence)
    ref = stats.ttest_rel(A, B)
    low, high = _scipy_interval(A, B, confidence)
    assert r["n"] == 4 and r["test"] == "paired t-test" and r["confidence"] == confidence
    assert r["mean_a"] == pytest.approx(np.mean(A)) and r["mean_b"] == pytest.approx(np.mean(B))
    assert r["mean_diff"] == pytest.approx(0.0225)
    assert r["t"] == pytest.approx(ref.statistic, rel=1e-12)
    assert r["p_value"] == pytest.approx(ref.pvalue, rel=1e-12)
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((low, high), rel=1e-12)
    assert r["wilcoxon_p"] == pytest.approx(stats.wilcoxon(A, B).pvalue)
    # the interval excludes 0 exactly when the test rejects at level 1 - confidence (p = 0.078 here)
    assert (r["ci_low"] > 0) == (r["p_value"] < 1 - confidence)


def test_interval_agrees_with_scipy_result_object() -> None:
    ci = stats.ttest_rel(A, B).confidence_interval(0.95)
    r = paired_test(A, B)
    assert (r["ci_low"], r["ci_high"]) == pytest.approx((ci.low, ci.high), rel=1e-12)


@pytest.mark.parametrize("n", [2, 3])
def test_few_seeds_still_give_a_t_test(n: int) -> None:
    a, b = [0.80, 0.84, 0.83][:n], [0.78, 0.79, 0.82][:n]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = paired_test(a, b)
    assert r["n"] == n
    assert r["p_value"] == pytest.approx(stats.ttest_rel(a, b).pvalue)
    assert r["wilcoxon_p"] == pytest.approx(stats.wilcoxon(a, b).pvalue)


def test_constant_difference_gives_nan_test_and_a_point_interval() -> None:
    b = [x - 0.01 for x in A]  # 0.01 everywhere, up to float noise that must not count as variance
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = paired_test(A, b)
    assert math.isnan(r["t"]) and math.isnan(r["p_value"])
    assert r["ci_low"] == r["ci_high"] == pytest.approx(0.01)
    assert r["mean_diff"] == pytest.approx(0.01)


def test_identical_scores_give_nan_wilcoxon_without_warnings() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = paired_test(A, A)
    assert r["mean_diff"] == 0.0 and r["ci_low"] == r["ci_high"] == 0.0
    assert math.isnan(r["p_value"]) and math.isnan(r["wilcoxon_p"])


def test_some_zero_differences_do_not_warn() -> None:
    a, b = [0.9, 0.8, 0.7, 0.75], [0.9, 0.7, 0.72, 0.7]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = paired_test(a, b)
    assert r["wilcoxon_p"] == pytest.approx(stats.wilcoxon(a, b).pvalue)


@pytest.mark.parametrize(
    "a, b, kwargs, match",
    [
        (A, B[:3], {}, "got 4 for a and 3 for b"),
        ([0.9], [0.8], {}, "at least 2 seeds, got 1"),
        ([], [], {}, "at least 2 seeds, got 0"),
        ([0.9, float("nan")], [0.8, 0.7], {}, r"non-finite scores at positions \[1\]"),
        ([[0.9, 0.8]], [[0.8, 0.7]], {}, "1-D"),
        (A, B, {"confidence": 95}, "between 0 and 1"),
    ],
)
def test_paired_test_errors_say_what_was_given(a, b, kwargs, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        paired_test(a, b, **kwargs)


def test_mean_std_uses_the_sample_std() -> None:
    values = [0.90, 0.92, 0.95]
    mean, std = mean_std(values)
    assert mean == pytest.approx(np.mean(values)) and std == pytest.approx(np.std(values, ddof=1))
    assert mean_std([0.9]) == (0.9, 0.0)
    with pytest.raises(ConfigError, match="at least one value"):
        mean_std([])


def test_format_mean_std() -> None:
    assert format_mean_std([0.901, 0.912, 0.923]) == "0.912 ± 0.011"
    assert format_mean_std([0.9123]) == "0.912"
    assert format_mean_std([0.901, 0.912, 0.923], digits=2) == "0.91 ± 0.01"
