"""Reporting: the tidy results table, saved predictions, environment records and atomic writers."""

from .results import (
    RESULT_COLUMNS,
    atomic_write,
    environment_info,
    load_predictions,
    read_results,
    record_arm_configs,
    results_rows,
    save_predictions,
    write_environment,
    write_json,
    write_results,
    write_run_config,
    write_yaml,
)

__all__ = [
    "RESULT_COLUMNS",
    "atomic_write",
    "environment_info",
    "load_predictions",
    "read_results",
    "record_arm_configs",
    "results_rows",
    "save_predictions",
    "write_environment",
    "write_json",
    "write_results",
    "write_run_config",
    "write_yaml",
]
