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

from aiohttp import web

from waltd.lab import Lab, forward

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


def _listen_in(netns: str, port: int) -> socket.socket:
    """A socket listening on 127.0.0.1:`port` of the network namespace at path `netns`.

    A socket belongs to the namespace of the thread that creates it: a thread of its own enters
    the namespace, makes the socket and ends, so no other code ever runs in that namespace.
    """
    made: list[socket.socket] = []
    failed: list[BaseException] = []

    def work() -> None:
        try:
            with open(netns, "rb") as target:
                if _libc.setns(target.fileno(), _CLONE_NEWNET) != 0:
                    errno = ctypes.get_errno()
                    raise OSError(errno, f"setns {netns}: {os.strerror(errno)}")
            listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(("127.0.0.1", port))
            listener.listen(128)
            made.append(listener)
        except BaseException as err:  # handed to the caller's thread
            failed.append(err)

    thread = threading.Thread(target=work, name=f"netns-listen-{port}")
    thread.start()
    thread.join()
    if failed:
        raise failed[0]
    return made[0]


async def reach_from_server(lab: Lab, port: int) -> None:
    """Make 127.0.0.1:`port` of the lab's server namespace lead to the host's 127.0.0.1:`port`.

    The lab's forwarder runs in the host's namespace with a listener made in the server's; the
    lab stops it at its end.
    """
    listener = _listen_in(lab.netns_path(lab.server_netns), port)
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
