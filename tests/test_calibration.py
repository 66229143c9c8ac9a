"""Calibration: ECE, Brier and the reliability curve on hand-computed cases, against sklearn, and on
synthetic samples that are calibrated (small ECE) or over-confident (large ECE)."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.calibration import calibration_curve
from sklearn.metrics import brier_score_loss

from medadapt.errors import ConfigError, DataError
from medadapt.evaluation.calibration import (
    LOWER_IS_BETTER,
    brier_score,
    expected_calibration_error,
    reliability_curve,
)


def _binary(p: np.ndarray) -> np.ndarray:
    return np.stack([1 - p, p], axis=1)


# ------------------------------------------------------------------------------------------- hand-computed
def test_binary_top_label_ece_by_hand() -> None:
    y = [[0], [1], [1], [0]]
    p = np.array([0.1, 0.8, 0.4, 0.5])  # conf 0.9 right, 0.8 right, 0.6 wrong, 0.5 right (0.5 predicts 0)
    curve = reliability_curve("binary", y, _binary(p), n_bins=5)
    filled = curve[curve["count"] > 0]
    assert filled["bin"].tolist() == [2, 3, 4]  # (0.4, 0.6], (0.6, 0.8], (0.8, 1]
    assert filled["count"].tolist() == [2, 1, 1]
    assert filled["confidence"].tolist() == pytest.approx([0.55, 0.8, 0.9])
    assert filled["accuracy"].tolist() == pytest.approx([0.5, 1.0, 1.0])
    expected = (2 * abs(0.5 - 0.55) + abs(1 - 0.8) + abs(1 - 0.9)) / 4
    assert expected_calibration_error("binary", y, _binary(p), n_bins=5) == pytest.approx(expected, abs=1e-15)


def test_bins_are_left_open_with_zero_in_the_first() -> None:
    y = [[1], [1], [0], [0]]
    p = np.array([0.2, 0.0, 0.6, 1.0])  # positive-class confidences on the edges 0.2, 0, 0.6, 1
    curve = reliability_curve("binary", y, _binary(p), n_bins=5, kind="positive")
    assert curve["count"].tolist() == [2, 0, 1, 0, 1]
    assert list(curve.columns) == ["bin", "lower", "upper", "count", "confidence", "accuracy", "gap"]
    assert curve["lower"].tolist() == pytest.approx([0, 0.2, 0.4, 0.6, 0.8])
    assert np.isnan(curve.loc[1, ["confidence", "accuracy", "gap"]].astype(float)).all()


def test_multiclass_and_multilabel_by_hand() -> None:
    scores = np.array([[0.7, 0.2, 0.1], [0.3, 0.6, 0.1], [0.5, 0.1, 0.4]])
    y = [[0], [0], [2]]  # right at 0.7, wrong at 0.6, wrong at 0.5 (one bin of width 1/2 each side)
    assert expected_calibration_error("multiclass", y, scores, n_bins=2) == pytest.approx(
        (abs(0 - 0.5) * 1 + abs(1 / 2 - 0.65) * 2) / 3
    )
    assert brier_score("multiclass", y, scores) == pytest.approx(
        ((0.3**2 + 0.2**2 + 0.1**2) + (0.7**2 + 0.6**2 + 0.1**2) + (0.5**2 + 0.1**2 + 0.6**2)) / 3
    )
    labels = np.array([[1, np.nan], [0, 1], [np.nan, 0]])
    probs = np.array([[0.9, 0.3], [0.2, 0.7], [0.5, 0.4]])
    known_p, known_y = np.array([0.9, 0.2, 0.7, 0.4]), np.array([1, 0, 1, 0])
    assert brier_score("multilabel", labels, probs) == pytest.approx(np.mean((known_p - known_y) ** 2))
    # two bins: (0, 0.5] holds 0.2, 0.4 (none positive); (0.5, 1] holds 0.9, 0.7 (both positive)
    assert expected_calibration_error("multilabel", labels, probs, n_bins=2) == pytest.approx(
        (2 * abs(0 - 0.3) + 2 * abs(1 - 0.8)) / 4
    )


# --------------------------------------------------------------------------------------------------- sklearn
def test_binary_brier_and_positive_curve_match_sklearn() -> None:
    rng = np.random.default_rng(0)
    p = np.round(rng.random(500), 2)  # some on the bin edges
    y = (rng.random(500) < p).astype(int)
    assert brier_score("binary", y[:, None], _binary(p)) == pytest.approx(brier_score_loss(y, p), abs=1e-15)
    curve = reliability_curve("binary", y[:, None], _binary(p), n_bins=10, kind="positive")
    prob_true, prob_pred = calibration_curve(y, p, n_bins=10, strategy="uniform")
    filled = curve[curve["count"] > 0]
    assert filled["accuracy"].to_numpy() == pytest.approx(prob_true, abs=1e-12)
    assert filled["confidence"].to_numpy() == pytest.approx(prob_pred, abs=1e-12)


# ----------------------------------------------------------------------------------------------- synthetic
def test_a_calibrated_sample_has_a_small_ece_an_over_confident_one_a_large_ece() -> None:
    rng = np.random.default_rng(1)
    p = rng.random(100_000)
    y = (rng.random(p.size) < p).astype(int)[:, None]  # y ~ Bernoulli(p): calibrated for both kinds
    sharp = p**4 / (p**4 + (1 - p) ** 4)  # the same ranking, pushed towards 0 and 1
    for kind in ("top", "positive"):
        assert expected_calibration_error("binary", y, _binary(p), kind=kind) < 0.02
        assert expected_calibration_error("binary", y, _binary(sharp), kind=kind) > 0.1
    probs = rng.dirichlet([1, 1, 1, 1], size=50_000)
    classes = (probs.cumsum(1) < rng.random((50_000, 1))).sum(1)[:, None]  # y ~ Categorical(probs)
    assert expected_calibration_error("multiclass", classes, probs) < 0.02
    over = probs**4 / (probs**4).sum(1, keepdims=True)
    assert expected_calibration_error("multiclass", classes, over) > 0.1


def test_lower_is_better_names() -> None:
    assert LOWER_IS_BETTER == {"ece", "brier", "hd95"}  # distances: segmentation's HD95 too


# ------------------------------------------------------------------------------------------------- errors
def test_bad_input_is_explained() -> None:
    y = [[0], [1]]
    with pytest.raises(DataError, match=r"probabilities in \[0, 1\]"):
        expected_calibration_error("binary", y, [[2.0, -1.0], [0.1, 0.9]])
    with pytest.raises(ConfigError, match="n_bins"):
        reliability_curve("binary", y, [[0.9, 0.1], [0.1, 0.9]], n_bins=0)
    with pytest.raises(ConfigError, match="kind must be one of"):
        expected_calibration_error("binary", y, [[0.9, 0.1], [0.1, 0.9]], kind="marginal")
    with pytest.raises(DataError, match="row-aligned"):
        brier_score("binary", [[0]], [[0.9, 0.1], [0.1, 0.9]])


def test_non_finite_scores_give_nan() -> None:
    scores = [[0.9, 0.1], [np.nan, np.nan]]
    assert np.isnan(expected_calibration_error("binary", [[0], [1]], scores))
    assert np.isnan(brier_score("binary", [[0], [1]], scores))
