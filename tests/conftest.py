"""Suite-wide rules: traffic only to loopback, unix sockets and the tests' own namespaces."""

from __future__ import annotations

import fcntl
import ipaddress
import os
import shutil
import socket
import sys
from pathlib import Path

import pytest

# The network namespace the test process started in; a thread that entered another one (a
# namespace of the test's own lab) may reach anything there.
_HOST_NETNS = os.readlink("/proc/self/ns/net")
# Audit events of every socket, whichever code holds it (asyncio, aiohttp, C extensions).
_SENDING = {"socket.connect", "socket.sendto", "socket.sendmsg"}
_SIOCGSKNS = 0x894C  # linux/sockios.h: a socket's network namespace, as a new descriptor


def _allowed(family: int, address: object) -> bool:
    if family in (socket.AF_UNIX, socket.AF_NETLINK):
        return True
    if family not in (socket.AF_INET, socket.AF_INET6) or not isinstance(address, tuple):
        return False
    host = str(address[0]).partition("%")[0]  # an IPv6 scope does not change the address
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _made_in_another_netns(sock: socket.socket) -> bool:
    """Whether `sock` belongs to a namespace other than the host's (a socket stays in the
    namespace it was made in, whichever thread uses it: the lab's DHCP client's do)."""
    try:
        fd = fcntl.ioctl(sock.fileno(), _SIOCGSKNS)
    except OSError:
        return False  # needs CAP_NET_ADMIN: without root there is no lab namespace
    try:
        return f"net:[{os.fstat(fd).st_ino}]" != _HOST_NETNS
    finally:
        os.close(fd)


def _audit(event: str, args: tuple[object, ...]) -> None:
    """Refuse a connection or datagram of the test process beyond loopback."""
    if event not in _SENDING:
        return
    sock, address = args[0], args[1]
    if not isinstance(sock, socket.SocketType) or _allowed(sock.family, address):
        return
    if os.readlink("/proc/thread-self/ns/net") != _HOST_NETNS or _made_in_another_netns(sock):
        return  # inside a namespace the test made
    raise AssertionError(f"test suite tried to reach {address!r}: only loopback is allowed")


def pytest_configure(config: pytest.Config) -> None:
    """Make any connection of the test process beyond loopback a test failure.

    An audit hook sees every socket of the process, however it was made; it cannot be
    removed, which suits a rule for the whole run.
    """
    sys.addaudithook(_audit)


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


@pytest.fixture(scope="session")
def package_cache() -> Path:
    """The Debian packages the bootable test image is made of (lab/pc_image.py): downloaded
    once, then kept beside pytest's own cache across runs."""
    folder = Path(__file__).resolve().parents[1] / ".pytest_cache" / "d" / "pc-image-packages"
    folder.mkdir(parents=True, exist_ok=True)
    return folder
