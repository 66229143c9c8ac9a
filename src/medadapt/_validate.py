"""Small validators for typed configs: each raises a ConfigError that names the flag."""

from __future__ import annotations

import math
from typing import Any

from .errors import ConfigError

__all__ = ["check_alpha_temperature", "choice", "integer", "number"]


def choice(value: Any, valid: tuple, flag: str) -> None:
    if value not in valid:
        raise ConfigError(f"{flag} {value!r} is not valid; choose one of {list(valid)}")


def integer(value: Any, flag: str, *, low: int) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < low:
        raise ConfigError(f"{flag} must be an integer >= {low}, got {value!r}")


def number(value: Any, flag: str, *, positive: bool = False) -> None:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (positive and value == 0):
        raise ConfigError(
            f"{flag} must be a {'positive' if positive else 'non-negative'} number, got {value!r}"
        )


def check_alpha_temperature(alpha: float, temperature: float) -> None:
    """Clear errors for values outside ``0 <= alpha <= 1`` and ``t > 0``."""
    if not isinstance(alpha, (int, float)) or not 0.0 <= alpha <= 1.0:
        raise ConfigError(f"--alpha must be in [0, 1] (the weight of the label loss), got {alpha!r}")
    if not isinstance(temperature, (int, float)) or not temperature > 0:
        raise ConfigError(f"--temperature must be positive (1 = the plain softmax), got {temperature!r}")
