"""Task types, defined once for every stage."""

from __future__ import annotations

from .errors import ConfigError

__all__ = ["TASKS", "check_task"]

#: ``binary`` (2 softmax scores, MedMNIST convention), ``multiclass``, ``multilabel`` (L sigmoid scores) and
#: ``ordinal`` (softmax over ordered classes; quadratic kappa).
TASKS = ("binary", "multiclass", "multilabel", "ordinal")


def check_task(task: str) -> str:
    if task not in TASKS:
        raise ConfigError(f"unknown task {task!r}; valid tasks: {', '.join(TASKS)}")
    return task
