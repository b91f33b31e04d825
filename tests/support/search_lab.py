"""Helpers for the end-to-end image search test: in-process fakes seen from the server namespace.

waltd runs in the lab's server namespace, where the lab's registries listen. The fakes of
tests/support (Hub's web API, the token front, the Artifactory proxy) run in the test's own event
loop on the host's 127.0.0.1. `reach_from_server` joins the two, the lab's `expose` the other way
round: 127.0.0.1:PORT of the server namespace then leads to 127.0.0.1:PORT of the host, so that a
fake's URL (and the token realm it announces) is the same from both namespaces.
"""

from __future__ import annotations

import ctypes
import os
import socket
import sys
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from aiohttp import web

from lab import Lab, forward

T = TypeVar("T")
_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def in_netns(netns: str, work: Callable[[], T]) -> T:
    """`work()`, run by a thread of its own inside the network namespace at path `netns`.

    A socket belongs to the namespace of the thread that creates it; the thread ends with the
    work, so no other code ever runs in that namespace.
    """
    done: list[T] = []
    failed: list[BaseException] = []

    def run() -> None:
        try:
            with open(netns, "rb") as target:
                if _libc.setns(target.fileno(), _CLONE_NEWNET) != 0:
                    errno = ctypes.get_errno()
                    raise OSError(errno, f"setns {netns}: {os.strerror(errno)}")
            done.append(work())
        except BaseException as err:  # handed to the caller's thread
            failed.append(err)

    thread = threading.Thread(target=run, name="in-netns")
    thread.start()
    thread.join()
    if failed:
        raise failed[0]
    return done[0]


def listen_in(netns: str, port: int, host: str = "127.0.0.1") -> socket.socket:
    """A socket listening on `host`:`port` of the network namespace at path `netns`."""

    def make() -> socket.socket:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(128)
        return listener

    return in_netns(netns, make)


async def reach_from_server(lab: Lab, port: int) -> None:
    """Make 127.0.0.1:`port` of the lab's server namespace lead to the host's 127.0.0.1:`port`.

    The lab's forwarder runs in the host's namespace with a listener made in the server's; the
    lab stops it at its end.
    """
    listener = listen_in(lab.netns_path(lab.server_netns), port)
    try:
        fd = listener.fileno()
        argv = [sys.executable, "-I", forward.__file__, str(fd), str(port)]
        await lab.spawn(f"reach-{port}", argv, pass_fds=(fd,))
    finally:
        listener.close()  # the forwarder holds its own copy


def count_requests(app: web.Application) -> list[str]:
    """Record the path of every request `app` receives, in the list returned.

    Call it before the application starts: its middlewares are fixed then.
    """
    seen: list[str] = []

    @web.middleware
    async def record(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        seen.append(request.path)
        return await handler(request)

    app.middlewares.append(record)
    return seen


def process_tree(pid: int) -> list[int]:
    """`pid` and all its descendants still running."""
    found = [pid]
    for current in found:
        for task in Path(f"/proc/{current}/task").glob("*"):
            try:
                found += [int(child) for child in (task / "children").read_text().split()]
            except OSError:
                continue  # ended meanwhile
    return found


def command_line(pid: int) -> str:
    """The command line of process `pid` ("" once it has ended)."""
    try:
        return (
            Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        )
    except OSError:
        return ""
