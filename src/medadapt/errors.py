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
    "BadRowsError",
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


class BadRowsError(DataError):
    """Rows of a table dataset (CSV / folder) whose image or label is unusable (``skip_bad`` drops them)."""


class WeightsError(MedadaptError):
    """Model weights are missing, unreadable or do not fit the model."""


class UnknownNameError(MedadaptError, LookupError):
    """A registry name (backbone, head, dataset, metric, ...) does not exist."""


class MissingDependencyError(MedadaptError, ImportError):
    """An optional dependency is not installed."""


def brief(error: BaseException, lines: int = 4) -> str:
    """``error``'s message cut to its first ``lines`` lines (torch lists every mismatched tensor); for an
    error without a message (a bare ``assert``), the source line that raised it."""
    text = str(error).strip().splitlines()
    if not text:
        import traceback

        frames = traceback.extract_tb(error.__traceback__)
        return f"{frames[-1].line} ({frames[-1].filename}:{frames[-1].lineno})" if frames else ""
    more = len(text) - lines
    return " ".join(t.strip() for t in text[:lines]) + (f" ... ({more} more lines)" if more > 0 else "")
