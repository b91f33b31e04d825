"""sd_notify over a real datagram socket."""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

from waltd.sdnotify import Notifier, message, watchdog_interval


def test_message_format() -> None:
    assert message(READY=1, STATUS="running") == b"READY=1\nSTATUS=running"


def test_watchdog_interval() -> None:
    assert watchdog_interval({}) is None
    assert watchdog_interval({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert watchdog_interval({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "1"}) is None
    pid = str(os.getpid())
    assert watchdog_interval({"WATCHDOG_USEC": "1000000", "WATCHDOG_PID": pid}) == 0.5


def test_path_and_abstract_sockets(tmp_path: Path) -> None:
    path = tmp_path / "n.sock"
    name = f"waltd-test-{uuid.uuid4().hex}"
    for address, bind_to in ((str(path), str(path)), ("@" + name, "\0" + name)):
        rx = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        rx.bind(bind_to)
        rx.settimeout(2)
        n = Notifier(address)
        n.ready()
        n.stopping()
        n.stopping(needs_s=25.5)
        assert rx.recv(100) == b"READY=1\nSTATUS=running"
        assert rx.recv(100).startswith(b"STOPPING=1")
        assert rx.recv(100) == b"STOPPING=1\nSTATUS=stopping\nEXTEND_TIMEOUT_USEC=25500000"
        n.close()
        rx.close()


def test_without_socket_it_is_silent() -> None:
    n = Notifier("")
    assert not n.enabled
    n.ready()
