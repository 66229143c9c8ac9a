"""Named, pure, NaN-aware classification metrics, checked against sklearn and ``medmnist.Evaluator``.

Every metric is ``fn(task, labels, scores) -> float`` with ``task`` one of :data:`TASKS` and the MedMNIST
layout: ``labels`` are int class indices ``[N, 1]`` (or ``[N]``) for binary / multiclass / ordinal, or
``[N, L]`` 0/1 for multilabel, where ``nan`` marks an unknown label that is left out of that label's
metrics; ``scores`` are ``[N, C]`` probabilities (2 softmax columns for binary, ``L`` sigmoid columns for
multilabel). Predictions are the argmax for single-label tasks and ``scores > threshold`` for multilabel.

``auc`` and ``acc`` are exactly MedMNIST's ``getAUC`` / ``getACC``. Macro averages run over the classes
(multiclass, ordinal) or labels (multilabel); when any part is undefined (e.g. a class absent from the
labels) the metric is ``nan`` and a warning names the parts, rather than an exception or a quietly
different average. Non-finite scores (a diverged model) also give ``nan`` with a warning.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable

import numpy as np
from numpy.typing import ArrayLike
from sklearn.metrics import cohen_kappa_score, confusion_matrix, multilabel_confusion_matrix, roc_auc_score

from .._registry import Registry
from ..errors import ConfigError, DataError
from ..tasks import CLASSIFICATION_TASKS as TASKS
from ..tasks import check_task

__all__ = [
    "TASKS",
    "METRICS",
    "MetricFn",
    "auc",
    "acc",
    "balanced_accuracy",
    "f1_macro",
    "sensitivity",
    "specificity",
    "cohen_kappa",
    "compute_metrics",
]

logger = logging.getLogger(__name__)

NAN = float("nan")

MetricFn = Callable[[str, ArrayLike, ArrayLike], float]
METRICS: Registry[MetricFn] = Registry("metric")


# ---------------------------------------------------------------------------------------------- validation
def _prepare(task: str, labels: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Check the task and shapes; return labels (int ``[N]``, or float ``[N, L]`` for multilabel) and scores."""
    check_task(task)
    if task not in TASKS:
        raise ConfigError(
            f"the classification metrics serve the tasks {', '.join(TASKS)}, not {task!r}; for masks use "
            "medadapt.evaluation.segmentation"
        )
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=np.float64)
    if s.ndim != 2 or s.shape[0] == 0:
        hint = (
            "; for one positive-class probability p pass np.stack([1 - p, p], axis=1)" if s.ndim == 1 else ""
        )
        raise DataError(f"scores must be a non-empty 2-D [N, C] array, got shape {s.shape}{hint}")
    if y.ndim == 0 or y.shape[0] != s.shape[0]:
        raise DataError(
            f"labels and scores must be row-aligned: labels have shape {y.shape}, scores {s.shape} "
            f"(expected {s.shape[0]} label rows)"
        )
    return (_multilabel_labels(y, s) if task == "multilabel" else _class_labels(task, y, s)), s


def _class_labels(task: str, y: np.ndarray, s: np.ndarray) -> np.ndarray:
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise DataError(f"{task} labels must be class indices of shape [N, 1] or [N], got shape {y.shape}")
    n_cols = s.shape[1]
    if task == "binary" and n_cols != 2:
        raise DataError(
            f"binary scores must have 2 columns (softmax probabilities of class 0 and 1, as in MedMNIST), "
            f"got {n_cols}"
        )
    if n_cols < 2:
        raise DataError(f"{task} scores need one column per class (at least 2), got {n_cols}")
    bad = ~np.isin(y, np.arange(n_cols))
    if bad.any():
        raise DataError(
            f"{task} labels must be integers in [0, {n_cols - 1}] (one per score column), "
            f"got {np.unique(y[bad])[:5].tolist()}"
        )
    return y.astype(np.int64)


def _multilabel_labels(y: np.ndarray, s: np.ndarray) -> np.ndarray:
    if y.ndim != 2 or y.shape[1] != s.shape[1]:
        raise DataError(
            f"multilabel labels must be [N, L] 0/1 with L = the {s.shape[1]} score columns, got shape {y.shape}"
        )
    values = y[~np.isnan(y)]
    if not np.isin(values, (0, 1)).all():
        bad = np.unique(values[~np.isin(values, (0, 1))])[:5].tolist()
        raise DataError(f"multilabel labels must be 0, 1 or nan (unknown), got {bad}")
    return y


def _finite(name: str, scores: np.ndarray) -> bool:
    bad = int(np.size(scores) - np.isfinite(scores).sum())
    if bad:
        logger.warning("%s is undefined: the scores hold %d non-finite values; returning nan", name, bad)
    return not bad


# ------------------------------------------------------------------------------------------------- helpers
def _known(y: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One multilabel column without its unknown (nan) labels."""
    keep = ~np.isnan(y)
    return y[keep].astype(np.int64), s[keep]


def _parts(task: str, values: Iterable[float], *, positive_only: bool = True) -> dict[str, float]:
    """Name the per-column values a macro average runs over (binary: the positive class only)."""
    kind = "label" if task == "multilabel" else "class"
    named = {f"{kind} {j}": float(v) for j, v in enumerate(values)}
    return {"class 1": named["class 1"]} if task == "binary" and positive_only else named


def _macro(name: str, parts: dict[str, float], reason: str) -> float:
    """Mean of ``parts``, or nan with a warning naming the undefined ones."""
    undefined = [k for k, v in parts.items() if np.isnan(v)]
    if undefined:
        logger.warning("%s is undefined for %s (%s); returning nan", name, ", ".join(undefined), reason)
        return NAN
    return float(np.mean(list(parts.values())))


def _binary_auc(y: np.ndarray, s: np.ndarray) -> float:
    return float(roc_auc_score(y, s)) if np.unique(y).size == 2 else NAN


def _confusion(task: str, y: np.ndarray, s: np.ndarray, threshold: float) -> dict[str, np.ndarray]:
    """One-vs-rest counts per score column (sklearn's confusion matrices; unknown labels left out)."""
    if task == "multilabel":
        per_label = []
        for j in range(s.shape[1]):
            truth, pred = _known(y[:, j], s[:, j] > threshold)
            per_label.append(confusion_matrix(truth.astype(int), pred.astype(int), labels=[0, 1]))
        cms = np.stack(per_label)
    else:
        cms = multilabel_confusion_matrix(y, _predicted(task, s, threshold), labels=np.arange(s.shape[1]))
    return {"tn": cms[:, 0, 0], "fp": cms[:, 0, 1], "fn": cms[:, 1, 0], "tp": cms[:, 1, 1]}


def _predicted(task: str, s: np.ndarray, threshold: float) -> np.ndarray:
    """The predicted class of a single-label task: ``scores[:, 1] > threshold`` (binary, as MedMNIST's ACC),
    else the argmax."""
    return (s[:, 1] > threshold).astype(int) if task == "binary" else s.argmax(1)


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return num / np.where(den > 0, den, np.nan)


def _kappa(y: np.ndarray, pred: np.ndarray, n_classes: int, weights: str | None = None) -> float:
    if np.unique(np.concatenate([y, pred])).size < 2:
        return NAN  # chance agreement is 1: kappa is 0 / 0
    return float(cohen_kappa_score(y, pred, labels=np.arange(n_classes), weights=weights))


# ------------------------------------------------------------------------------------------------- metrics
def auc(task: str, labels: ArrayLike, scores: ArrayLike) -> float:
    """Area under the ROC curve, as MedMNIST's ``getAUC``.

    Binary: AUC of the positive-class column; multiclass / ordinal: mean one-vs-rest AUC over the classes;
    multilabel: mean AUC over the labels. ``nan`` (with a warning) when a class or label has one value only.
    """
    y, s = _prepare(task, labels, scores)
    if not _finite("auc", s):
        return NAN
    if task == "multilabel":
        values = [_binary_auc(*_known(y[:, j], s[:, j])) for j in range(s.shape[1])]
    else:
        values = [_binary_auc((y == c).astype(np.int64), s[:, c]) for c in range(s.shape[1])]
    return _macro("auc", _parts(task, values), "only one class present in the labels")


def acc(task: str, labels: ArrayLike, scores: ArrayLike, threshold: float = 0.5) -> float:
    """Accuracy, as MedMNIST's ``getACC``.

    Binary: ``scores[:, 1] > threshold``; multiclass / ordinal: argmax; multilabel: mean over labels of the
    accuracy of ``scores > threshold``.
    """
    y, s = _prepare(task, labels, scores)
    if not _finite("acc", s):
        return NAN
    if task != "multilabel":
        return float(np.mean(_predicted(task, s, threshold) == y))
    values = []
    for j in range(s.shape[1]):
        truth, pred = _known(y[:, j], s[:, j] > threshold)
        values.append(np.mean(truth == pred) if truth.size else NAN)
    return _macro("acc", _parts(task, values), "no known labels")


def sensitivity(task: str, labels: ArrayLike, scores: ArrayLike, threshold: float = 0.5) -> float:
    """Recall ``tp / (tp + fn)``: of class 1 for binary, else macro over classes (one-vs-rest) or labels."""
    y, s = _prepare(task, labels, scores)
    if not _finite("sensitivity", s):
        return NAN
    c = _confusion(task, y, s, threshold)
    rates = _ratio(c["tp"], c["tp"] + c["fn"])
    return _macro("sensitivity", _parts(task, rates), "no positive samples in the labels")


def specificity(task: str, labels: ArrayLike, scores: ArrayLike, threshold: float = 0.5) -> float:
    """``tn / (tn + fp)``: of class 1 for binary, else macro over classes (one-vs-rest) or labels."""
    y, s = _prepare(task, labels, scores)
    if not _finite("specificity", s):
        return NAN
    c = _confusion(task, y, s, threshold)
    rates = _ratio(c["tn"], c["tn"] + c["fp"])
    return _macro("specificity", _parts(task, rates), "no negative samples in the labels")


def balanced_accuracy(task: str, labels: ArrayLike, scores: ArrayLike, threshold: float = 0.5) -> float:
    """Mean per-class recall (sklearn's ``balanced_accuracy_score``); multilabel: mean over labels of it."""
    y, s = _prepare(task, labels, scores)
    if not _finite("balanced_accuracy", s):
        return NAN
    c = _confusion(task, y, s, threshold)
    recall = _ratio(c["tp"], c["tp"] + c["fn"])
    if task == "multilabel":
        recall = (recall + _ratio(c["tn"], c["tn"] + c["fp"])) / 2
    return _macro("balanced_accuracy", _parts(task, recall, positive_only=False), "a class has no samples")


def f1_macro(task: str, labels: ArrayLike, scores: ArrayLike, threshold: float = 0.5) -> float:
    """Macro F1 over all classes (binary: both) or labels, as sklearn's ``f1_score(average="macro")``."""
    y, s = _prepare(task, labels, scores)
    if not _finite("f1_macro", s):
        return NAN
    c = _confusion(task, y, s, threshold)
    f1 = _ratio(2 * c["tp"], 2 * c["tp"] + c["fp"] + c["fn"])
    return _macro(
        "f1_macro", _parts(task, f1, positive_only=False), "a class is neither labelled nor predicted"
    )


def cohen_kappa(task: str, labels: ArrayLike, scores: ArrayLike, threshold: float = 0.5) -> float:
    """Cohen's kappa of the predictions: quadratic weights for ordinal, unweighted otherwise.

    Multilabel: mean over labels of the per-label kappa.
    """
    y, s = _prepare(task, labels, scores)
    if not _finite("cohen_kappa", s):
        return NAN
    if task == "multilabel":
        values = [_kappa(*_known(y[:, j], s[:, j] > threshold), n_classes=2) for j in range(s.shape[1])]
        parts = _parts(task, values)
    else:
        weights = "quadratic" if task == "ordinal" else None
        parts = {"all classes": _kappa(y, _predicted(task, s, threshold), s.shape[1], weights)}
    return _macro("cohen_kappa", parts, "labels and predictions are all one class")


for _fn in (auc, acc, balanced_accuracy, f1_macro, sensitivity, specificity, cohen_kappa):
    METRICS.register(_fn.__name__, _fn, higher_is_better=True)


def compute_metrics(
    task: str, labels: ArrayLike, scores: ArrayLike, names: Iterable[str] | None = None
) -> dict[str, float]:
    """Compute the named metrics (default: all registered, ``auc`` and ``acc`` first).

    Example:
        >>> compute_metrics("binary", [[0], [1]], [[0.8, 0.2], [0.3, 0.7]], names=["auc", "acc"])
        {'auc': 1.0, 'acc': 1.0}
    """
    if names is None:
        names = ["auc", "acc", *(n for n in METRICS if n not in ("auc", "acc"))]
    fns = {name: METRICS.get(name) for name in names}
    _, s = _prepare(task, labels, scores)
    if not _finite("every metric", s):
        return dict.fromkeys(fns, NAN)
    return {name: float(fn(task, labels, scores)) for name, fn in fns.items()}
