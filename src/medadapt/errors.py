"""User-facing exceptions.

Every error a user can cause by input (a name, a path, a flag value, a file) raises a subclass of
:class:`MedadaptError` whose message says what was received, what is valid and how to fix it. The CLI
prints that message on one line and exits with code 2; ``assert`` is kept for internal invariants.
"""

from __future__ import annotations

__all__ = [
    "MedadaptError",
    "ConfigError",
    "DataError",
    "WeightsError",
    "UnknownNameError",
    "MissingDependencyError",
    "brief",
]


class MedadaptError(Exception):
    """Base class of all errors caused by user input."""


class ConfigError(MedadaptError, ValueError):
    """A configuration value or flag is invalid."""


class DataError(MedadaptError):
    """A dataset file, image or label is missing, corrupt or inconsistent."""


class WeightsError(MedadaptError):
    """Model weights are missing, unreadable or do not fit the model."""


class UnknownNameError(MedadaptError, LookupError):
    """A registry name (backbone, head, dataset, metric, ...) does not exist."""


class MissingDependencyError(MedadaptError, ImportError):
    """An optional dependency is not installed."""


def brief(error: BaseException, lines: int = 4) -> str:
    """``error``'s message cut to its first ``lines`` lines (torch lists every mismatched tensor)."""
    text = str(error).strip().splitlines()
    more = len(text) - lines
    return " ".join(t.strip() for t in text[:lines]) + (f" ... ({more} more lines)" if more > 0 else "")
