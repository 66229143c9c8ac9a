"""Shared test fixtures: every test runs offline (any network connection attempt fails)."""

from __future__ import annotations

import socket

import pytest

_LOCAL_HOSTS = {None, "localhost", "127.0.0.1", "::1", ""}


class NetworkAccessError(RuntimeError):
    """A test tried to reach the network."""


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail any test that opens an internet socket or resolves a remote host name."""
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def check(sock: socket.socket, address: object) -> None:
        if sock.family in (socket.AF_INET, socket.AF_INET6):
            raise NetworkAccessError(f"tests must not use the network (connect to {address!r})")

    def guarded_connect(self: socket.socket, address: object) -> None:
        check(self, address)
        return real_connect(self, address)

    def guarded_connect_ex(self: socket.socket, address: object) -> int:
        check(self, address)
        return real_connect_ex(self, address)

    def guarded_getaddrinfo(host: object, *args: object, **kwargs: object) -> list:
        if host not in _LOCAL_HOSTS:
            raise NetworkAccessError(f"tests must not use the network (resolve {host!r})")
        return real_getaddrinfo(host, *args, **kwargs)

    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    monkeypatch.setattr(socket.socket, "connect_ex", guarded_connect_ex)
    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
