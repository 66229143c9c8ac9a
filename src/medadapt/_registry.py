"""One small generic registry for every extension point (backbones, heads, datasets, metrics, ...)."""

from __future__ import annotations

import difflib
import fnmatch
import importlib
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
        self._lazy: dict[str, str] = {}  # name -> "module:attribute", imported on first get()
        self._meta: dict[str, dict[str, Any]] = {}

    def register(self, name: str, obj: T | None = None, **meta: Any) -> Callable[[T], T] | T:
        """Register ``obj`` under ``name``; usable as a decorator when ``obj`` is omitted."""

        def _add(o: T) -> T:
            if (name in self._entries and self._entries[name] is not o) or name in self._lazy:
                raise ConfigError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = o
            self._meta[name] = meta
            return o

        return _add(obj) if obj is not None else _add

    def register_lazy(self, name: str, target: str, **meta: Any) -> None:
        """Register ``target`` (``"package.module:attribute"``) under ``name`` without importing it: the name
        and its ``meta`` are known at once (a config naming it is checked before torch is imported), the
        module is imported on the first :meth:`get`."""
        if name in self._entries or name in self._lazy:
            raise ConfigError(f"{self.kind} {name!r} is already registered")
        self._lazy[name] = target
        self._meta[name] = meta

    def get(self, name: str) -> T:
        if name in self._lazy:
            module, _, attribute = self._lazy[name].partition(":")
            self._entries[name] = getattr(importlib.import_module(module), attribute)
            del self._lazy[name]
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.unknown_message(name)) from None

    def meta(self, name: str) -> dict[str, Any]:
        if name not in self:
            raise UnknownNameError(self.unknown_message(name))
        return dict(self._meta[name])

    def unknown_message(self, name: str, candidates: list[str] | None = None) -> str:
        names = candidates if candidates is not None else self._names()
        close = difflib.get_close_matches(name, names, n=3, cutoff=0.5)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        shown = ", ".join(sorted(names)[:12]) + (" ..." if len(names) > 12 else "")
        return f"unknown {self.kind} {name!r}{hint} (valid: {shown})"

    def list(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._names() if fnmatch.fnmatchcase(n, pattern))

    def _names(self) -> list[str]:
        return [*self._entries, *self._lazy]

    def __contains__(self, name: object) -> bool:
        return name in self._entries or name in self._lazy

    def __iter__(self) -> Iterator[str]:
        return iter(sorted(self._names()))

    def __len__(self) -> int:
        return len(self._entries) + len(self._lazy)
