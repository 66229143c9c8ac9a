"""Shared test fixtures: every test runs offline (any network connection attempt fails)."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest
import torch

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


@pytest.fixture(autouse=True)
def _offline_hubs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Hub clients fail at once instead of retrying a network that the guard above refuses."""
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True)
def _private_cache(monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory) -> None:
    """Caches (features, md5 records) go to a temporary folder, never the user's home (a test may set its own)."""
    monkeypatch.setenv("MEDADAPT_CACHE", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny tensors: one intra-op thread is fastest, and avoids oversubscription on a busy CI machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
