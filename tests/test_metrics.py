"""Metrics against their references: medmnist's getAUC / getACC and sklearn, plus NaN and shape checks."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
from sklearn import metrics as skm

from medadapt.errors import ConfigError, DataError, UnknownNameError
from medadapt.evaluation import METRICS, TASKS, acc, auc, cohen_kappa, compute_metrics, sensitivity
from medadapt.evaluation import metrics as M

MEDMNIST_TASK = {
    "binary": "binary-class",
    "multiclass": "multi-class",
    "ordinal": "ordinal-regression",
    "multilabel": "multi-label, binary-class",
}


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def make_case(task: str, seed: int, n: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Random MedMNIST-layout labels (every class / label value present) and scores, some tied."""
    rng = np.random.default_rng(seed)
    n = n or int(rng.integers(20, 200))
    if task == "multilabel":
        n_labels = int(rng.integers(2, 10))
        labels = (rng.random((n, n_labels)) < rng.uniform(0.1, 0.6)).astype(np.uint8)
        labels[0], labels[1] = 1, 0
        scores = 1 / (1 + np.exp(-rng.normal(size=(n, n_labels)) * 2))
    else:
        n_classes = 2 if task == "binary" else int(rng.integers(3, 10))
        labels = rng.integers(0, n_classes, size=(n, 1)).astype(np.uint8)
        labels[:n_classes, 0] = np.arange(n_classes)
        scores = _softmax(rng.normal(size=(n, n_classes)) * 2 + labels * rng.uniform(0, 2))
    if seed % 3 == 0:
        scores = np.round(scores, 1)  # ties, and binary scores of exactly 0.5
    return labels, scores


def _predictions(task: str, scores: np.ndarray) -> np.ndarray:
    return (scores > 0.5).astype(int) if task == "multilabel" else scores.argmax(1)


def _per_label_mean(fn, labels: np.ndarray, pred: np.ndarray, **kwargs) -> float:
    return float(np.mean([fn(labels[:, j], pred[:, j], **kwargs) for j in range(labels.shape[1])]))


# ------------------------------------------------------------------------------------------ medmnist parity
@pytest.mark.parametrize("task", TASKS)
def test_auc_and_acc_match_medmnist_evaluator(task: str) -> None:
    evaluator = pytest.importorskip("medmnist.evaluator")
    for seed in range(12):
        labels, scores = make_case(task, seed)
        ref_task = MEDMNIST_TASK[task]
        assert auc(task, labels, scores) == pytest.approx(
            evaluator.getAUC(labels, scores, ref_task), abs=1e-9
        )
        for threshold in (0.5, 0.3):
            expected = evaluator.getACC(labels, scores, ref_task, threshold=threshold)
            assert acc(task, labels, scores, threshold=threshold) == pytest.approx(expected, abs=1e-9)


# ------------------------------------------------------------------------------------------- sklearn parity
def _sk_sensitivity(task: str, y: np.ndarray, pred: np.ndarray) -> float:
    average = "binary" if task == "binary" else "macro"
    return skm.recall_score(y, pred, average=average)


def _sk_specificity(task: str, y: np.ndarray, pred: np.ndarray) -> float:
    if task == "binary":
        return skm.recall_score(y, pred, pos_label=0)
    if task == "multilabel":
        return _per_label_mean(skm.recall_score, y, pred, pos_label=0)
    classes = range(int(y.max()) + 1)
    return float(np.mean([skm.recall_score(y == c, pred == c, pos_label=0) for c in classes]))


def _sk_balanced_accuracy(task: str, y: np.ndarray, pred: np.ndarray) -> float:
    if task == "multilabel":
        return _per_label_mean(skm.balanced_accuracy_score, y, pred)
    return skm.balanced_accuracy_score(y, pred)


def _sk_f1_macro(task: str, y: np.ndarray, pred: np.ndarray) -> float:
    return skm.f1_score(y, pred, average="macro")


def _sk_cohen_kappa(task: str, y: np.ndarray, pred: np.ndarray) -> float:
    if task == "multilabel":
        return _per_label_mean(skm.cohen_kappa_score, y, pred)
    return skm.cohen_kappa_score(y, pred, weights="quadratic" if task == "ordinal" else None)


SKLEARN_REFERENCE = {
    "sensitivity": _sk_sensitivity,
    "specificity": _sk_specificity,
    "balanced_accuracy": _sk_balanced_accuracy,
    "f1_macro": _sk_f1_macro,
    "cohen_kappa": _sk_cohen_kappa,
}


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("name", sorted(SKLEARN_REFERENCE))
def test_metric_matches_sklearn(name: str, task: str) -> None:
    for seed in range(5):
        labels, scores = make_case(task, seed, n=400)
        y = labels if task == "multilabel" else labels[:, 0]
        expected = SKLEARN_REFERENCE[name](task, y, _predictions(task, scores))
        assert METRICS.get(name)(task, labels, scores) == pytest.approx(expected, abs=1e-12)


def test_binary_metrics_on_a_hand_counted_example() -> None:
    # truth 1 1 1 0 0 ; prediction 1 1 0 0 1  ->  tp 2, fn 1, tn 1, fp 1
    labels = [[1], [1], [1], [0], [0]]
    p1 = np.array([0.9, 0.8, 0.2, 0.4, 0.6])
    got = compute_metrics("binary", labels, np.stack([1 - p1, p1], axis=1))
    assert got["sensitivity"] == pytest.approx(2 / 3)
    assert got["specificity"] == pytest.approx(1 / 2)
    assert got["balanced_accuracy"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert got["acc"] == pytest.approx(3 / 5)
    assert got["auc"] == pytest.approx(4 / 6)  # 4 of 6 (positive, negative) pairs ordered


def test_binary_threshold_moves_every_thresholded_metric_alike() -> None:
    labels, p1 = [[0], [1], [1], [0]], np.array([0.3, 0.4, 0.8, 0.1])
    scores = np.stack([1 - p1, p1], axis=1)
    for name in ("acc", "sensitivity", "balanced_accuracy", "f1_macro", "cohen_kappa"):
        assert METRICS.get(name)("binary", labels, scores, threshold=0.35) == pytest.approx(1.0), name
    assert sensitivity("binary", labels, scores) == pytest.approx(
        0.5
    )  # at the default 0.5: one positive missed


def test_ordinal_kappa_uses_class_distances_even_when_a_class_is_unpredicted() -> None:
    labels = np.array([[0], [1], [2], [3], [3]])
    pred = np.array([0, 1, 3, 3, 3])
    scores = np.eye(4)[pred]
    expected = skm.cohen_kappa_score(labels[:, 0], pred, labels=[0, 1, 2, 3], weights="quadratic")
    assert cohen_kappa("ordinal", labels, scores) == pytest.approx(expected)


# ---------------------------------------------------------------------------------------------- NaN paths
@pytest.mark.parametrize(
    ("task", "labels", "scores", "part"),
    [
        ("binary", [[1], [1], [1]], [[0.2, 0.8], [0.6, 0.4], [0.5, 0.5]], "class 1"),
        ("multiclass", [[0], [1], [1]], [[0.5, 0.3, 0.2], [0.1, 0.8, 0.1], [0.2, 0.2, 0.6]], "class 2"),
        ("multilabel", [[1, 0], [0, 0], [1, 0]], [[0.9, 0.1], [0.2, 0.3], [0.7, 0.8]], "label 1"),
    ],
)
def test_undefined_auc_is_nan_with_a_warning(task, labels, scores, part, caplog) -> None:
    with caplog.at_level(logging.WARNING, logger=M.__name__):
        assert math.isnan(auc(task, labels, scores))
    assert "auc is undefined" in caplog.text and part in caplog.text


def test_undefined_sensitivity_and_kappa_are_nan() -> None:
    scores = [[0.9, 0.1], [0.8, 0.2]]
    assert math.isnan(sensitivity("binary", [[0], [0]], scores))
    assert math.isnan(cohen_kappa("binary", [[0], [0]], scores))
    assert M.specificity("binary", [[0], [0]], scores) == 1.0


def test_non_finite_scores_give_nan_for_every_metric_with_one_warning(caplog) -> None:
    labels, scores = make_case("multiclass", 1)
    scores[3, 1] = np.nan
    with caplog.at_level(logging.WARNING, logger=M.__name__):
        got = compute_metrics("multiclass", labels, scores)
    assert set(got) == set(METRICS) and all(math.isnan(v) for v in got.values())
    assert len(caplog.records) == 1 and "non-finite" in caplog.text


def test_unknown_multilabel_labels_are_left_out() -> None:
    labels, scores = make_case("multilabel", 4, n=100)
    with_unknown = labels.astype(float)
    with_unknown[:30, 0] = np.nan
    rest = np.arange(30, 100)
    for name in ("auc", "acc", "sensitivity", "f1_macro"):
        per_label = [
            METRICS.get(name)("multilabel", labels[rows, j : j + 1], scores[rows, j : j + 1])
            for j, rows in [(0, rest)] + [(j, slice(None)) for j in range(1, labels.shape[1])]
        ]
        got = METRICS.get(name)("multilabel", with_unknown, scores)
        assert got == pytest.approx(np.mean(per_label), abs=1e-12)


# --------------------------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize(
    ("task", "labels", "scores", "message"),
    [
        ("binary", np.zeros((4, 1)), np.full((5, 2), 0.5), "row-aligned"),
        ("binary", np.zeros((4, 1)), np.full((4, 3), 1 / 3), "2 columns"),
        ("binary", np.zeros((4, 1)), np.full(4, 0.5), "np.stack"),
        ("multiclass", [[0], [3]], np.full((2, 3), 1 / 3), "integers in [0, 2]"),
        ("multiclass", [[0.5], [1]], np.full((2, 3), 1 / 3), "integers in [0, 2]"),
        ("multiclass", np.zeros((2, 2)), np.full((2, 3), 1 / 3), "[N, 1] or [N]"),
        ("multilabel", np.zeros((2, 2)), np.full((2, 3), 0.5), "3 score columns"),
        ("multilabel", [[0, 2], [1, 0]], np.full((2, 2), 0.5), "0, 1 or nan"),
    ],
)
def test_bad_shapes_and_values_raise_data_error(task, labels, scores, message) -> None:
    with pytest.raises(DataError, match=message.replace("[", r"\[").replace(".", r"\.")):
        auc(task, labels, scores)


def test_unknown_task_and_metric_names() -> None:
    with pytest.raises(ConfigError, match="multiclass"):
        acc("multi-class", [[0]], [[1.0, 0.0]])
    with pytest.raises(UnknownNameError, match="did you mean 'f1_macro'"):
        compute_metrics("binary", [[0], [1]], [[0.9, 0.1], [0.1, 0.9]], names=["f1_macr"])


# ------------------------------------------------------------------------------------------------ registry
def test_compute_metrics_default_order_and_subset() -> None:
    labels, scores = make_case("binary", 2)
    got = compute_metrics("binary", labels, scores)
    assert list(got)[:2] == ["auc", "acc"] and set(got) == set(METRICS)
    assert list(compute_metrics("binary", labels, scores, names=["f1_macro", "auc"])) == ["f1_macro", "auc"]


@pytest.mark.parametrize("task", TASKS)
@pytest.mark.parametrize("name", METRICS.list())
def test_every_metric_handles_every_task(name: str, task: str) -> None:
    labels, scores = make_case(task, 7, n=200)
    value = METRICS.get(name)(task, labels.tolist(), scores.tolist())
    assert isinstance(value, float) and -1.0 <= value <= 1.0
    assert METRICS.meta(name)["higher_is_better"] is True
