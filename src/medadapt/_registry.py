"""One small generic registry for every extension point (backbones, heads, datasets, metrics, ...)."""

from __future__ import annotations

import difflib
import fnmatch
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

from .errors import ConfigError, UnknownNameError

__all__ = ["Registry"]

T = TypeVar("T")


class Registry(Generic[T]):
    """A named table of factories with glob listing and a "did you mean" error.

    Example:
        >>> heads = Registry("head")
        >>> @heads.register("linear")
        ... def make_linear(dim, classes): ...
        >>> heads.get("linear") is make_linear
        True
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}
        self._meta: dict[str, dict[str, Any]] = {}

    def register(self, name: str, obj: T | None = None, **meta: Any) -> Callable[[T], T] | T:
        """Register ``obj`` under ``name``; usable as a decorator when ``obj`` is omitted."""

        def _add(o: T) -> T:
            if name in self._entries and self._entries[name] is not o:
                raise ConfigError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = o
            self._meta[name] = meta
            return o

        return _add(obj) if obj is not None else _add

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.unknown_message(name)) from None

    def meta(self, name: str) -> dict[str, Any]:
        self.get(name)
        return dict(self._meta[name])

    def unknown_message(self, name: str, candidates: list[str] | None = None) -> str:
        names = candidates if candidates is not None else list(self._entries)
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        shown = ", ".join(sorted(names)[:12]) + (" ..." if len(names) > 12 else "")
        return f"unknown {self.kind} {name!r}{hint} (valid: {shown})"

    def list(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._entries if fnmatch.fnmatchcase(n, pattern))

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._entries))

    def __len__(self) -> int:
        return len(self._entries)
