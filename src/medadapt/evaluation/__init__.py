"""Evaluation: named, NaN-aware metrics checked against sklearn and ``medmnist.Evaluator``."""

from .metrics import (
    METRICS,
    TASKS,
    MetricFn,
    acc,
    auc,
    balanced_accuracy,
    cohen_kappa,
    compute_metrics,
    f1_macro,
    sensitivity,
    specificity,
)

__all__ = [
    "METRICS",
    "TASKS",
    "MetricFn",
    "acc",
    "auc",
    "balanced_accuracy",
    "cohen_kappa",
    "compute_metrics",
    "f1_macro",
    "sensitivity",
    "specificity",
]
