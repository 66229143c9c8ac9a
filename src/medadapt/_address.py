"""Names are addresses: ``kind:location[?key=value&...]``, one parser for datasets and backbones."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import parse_qsl

from ._registry import Registry
from ._yaml import load as load_yaml_text
from .errors import ConfigError

__all__ = ["split_address", "format_address"]


def split_address(text: str, kinds: Registry, *, what: str, example: str) -> tuple[str, str, dict[str, Any]]:
    """``(kind, location, options)`` of ``text``; option values are parsed as YAML scalars / lists."""
    kind, sep, rest = text.partition(":")
    if not sep or not rest:
        raise ConfigError(
            f"{what} {text!r} is not an address; write KIND:NAME with KIND one of {kinds.list()}, e.g. {example}"
        )
    if kind not in kinds:
        raise ConfigError(kinds.unknown_message(kind) + f" in {what} address {text!r}")
    location, _, query = rest.partition("?")
    try:
        pairs = parse_qsl(query, strict_parsing=bool(query))
    except ValueError as e:
        raise ConfigError(
            f"the options of {what} address {text!r} are not key=value pairs joined by &"
        ) from e
    return kind, location, {k: load_yaml_text(v) for k, v in pairs}


def format_address(kind: str, location: str, options: dict[str, Any]) -> str:
    """Inverse of :func:`split_address` (options sorted, non-strings as compact JSON)."""
    query = "&".join(f"{k}={v if isinstance(v, str) else json.dumps(v, separators=(',', ':'))}"
                     for k, v in sorted(options.items()))  # fmt: skip
    return f"{kind}:{location}" + (f"?{query}" if query else "")
