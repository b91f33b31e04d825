"""Suite-wide rules: traffic only to loopback, unix sockets and the test's own namespaces."""

from __future__ import annotations

import ipaddress
import os
import shutil
import socket

import pytest

_real_connect = socket.socket.connect
_real_connect_ex = socket.socket.connect_ex
_real_sendto = socket.socket.sendto


def _allowed(family: int, address: object) -> bool:
    if family in (socket.AF_UNIX, socket.AF_NETLINK):
        return True
    if family not in (socket.AF_INET, socket.AF_INET6) or not isinstance(address, tuple):
        return False
    host = address[0]
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _guard(sock: socket.socket, address: object) -> None:
    if not _allowed(sock.family, address):
        raise AssertionError(f"test suite tried to reach {address!r}: only loopback is allowed")


def _connect(self: socket.socket, address: object) -> None:
    _guard(self, address)
    return _real_connect(self, address)


def _connect_ex(self: socket.socket, address: object) -> int:
    _guard(self, address)
    return _real_connect_ex(self, address)


def _sendto(self: socket.socket, data: bytes, *args: object) -> int:
    _guard(self, args[-1])
    return _real_sendto(self, data, *args)


def pytest_configure(config: pytest.Config) -> None:
    """Make any connection of the test process beyond loopback a test failure."""
    socket.socket.connect = _connect  # type: ignore[method-assign]
    socket.socket.connect_ex = _connect_ex  # type: ignore[method-assign]
    socket.socket.sendto = _sendto  # type: ignore[method-assign]


def require_tool(name: str) -> str:
    """Path of an external tool; in CI a missing tool fails the test instead of skipping it."""
    path = shutil.which(name)
    if path:
        return path
    if os.environ.get("CI"):
        pytest.fail(f"{name} is required in CI but is not installed")
    pytest.skip(f"{name} is not installed (outside CI a skip; `make test` installs it)")
    raise AssertionError("unreachable")


def require_root() -> None:
    """Lab tests need root for namespaces and mounts; in CI not being root is a failure."""
    if os.geteuid() == 0:
        return
    if os.environ.get("CI"):
        pytest.fail("the lab tests need root in CI")
    pytest.skip("the lab tests need root (outside CI a skip)")
