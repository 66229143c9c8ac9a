"""Evaluation: named, NaN-aware metrics checked against sklearn and ``medmnist.Evaluator``; paired tests."""

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
from .stats import format_mean_std, mean_std, paired_test

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
    "paired_test",
    "mean_std",
    "format_mean_std",
]
