"""Evaluation: named, NaN-aware metrics checked against sklearn and ``medmnist.Evaluator``; paired tests;
bootstrap intervals over test images or patients; calibration."""

from .bootstrap import (
    WEIGHTED_METRICS,
    BootstrapResult,
    Units,
    bootstrap_ci,
    bootstrap_cis,
    bootstrap_statistic,
    paired_bootstrap,
    prepare_metric,
    weighted_metric,
)
from .calibration import LOWER_IS_BETTER, brier_score, expected_calibration_error, reliability_curve
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
    "WEIGHTED_METRICS",
    "BootstrapResult",
    "Units",
    "bootstrap_ci",
    "bootstrap_cis",
    "bootstrap_statistic",
    "paired_bootstrap",
    "prepare_metric",
    "weighted_metric",
    "LOWER_IS_BETTER",
    "brier_score",
    "expected_calibration_error",
    "reliability_curve",
]
