"""systemd's notification protocol (sd_notify), without libsystemd.

Outside systemd (no NOTIFY_SOCKET) every call is a no-op, so the daemon runs the same
from a terminal, a test or a unit.
"""

from __future__ import annotations

import os
import socket
import time


def message(**fields: str | int) -> bytes:
    """The datagram for `fields`, e.g. message(READY=1) -> b"READY=1"."""
    return "\n".join(f"{key}={value}" for key, value in fields.items()).encode()


def watchdog_interval(environ: dict[str, str] | None = None) -> float | None:
    """Seconds between WATCHDOG=1 pings (half of WATCHDOG_USEC), or None when not asked for."""
    environ = os.environ if environ is None else environ
    usec = environ.get("WATCHDOG_USEC", "")
    pid = environ.get("WATCHDOG_PID")
    if not usec.isdigit() or int(usec) == 0:
        return None
    if pid and pid.isdigit() and int(pid) != os.getpid():
        return None
    return int(usec) / 2_000_000


class Notifier:
    """Sends notifications to the socket named by NOTIFY_SOCKET, if any."""

    def __init__(self, address: str | None = None) -> None:
        address = address if address is not None else os.environ.get("NOTIFY_SOCKET")
        # "@name" is an abstract socket: the kernel wants a leading NUL byte instead.
        self._address = "\0" + address[1:] if address and address.startswith("@") else address
        self._sock: socket.socket | None = None
        if self._address:
            self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)

    @property
    def enabled(self) -> bool:
        """True when a service manager listens."""
        return self._sock is not None

    def notify(self, **fields: str | int) -> None:
        """Send `fields`; a lost notification is not worth crashing the daemon."""
        if self._sock is None or self._address is None:
            return
        try:
            self._sock.sendto(message(**fields), self._address)
        except OSError:
            pass

    def ready(self) -> None:
        """READY=1: start-up or reload finished."""
        self.notify(READY=1, STATUS="running")

    def reloading(self) -> None:
        """RELOADING=1 with the monotonic time systemd wants alongside it."""
        self.notify(RELOADING=1, MONOTONIC_USEC=time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000)

    def stopping(self, needs_s: float | None = None) -> None:
        """STOPPING=1: shutdown began; it may take `needs_s` seconds from now.

        EXTEND_TIMEOUT_USEC makes systemd wait that long even beyond TimeoutStopSec, so a
        shutdown budget configured above the unit's timeout is not cut short by SIGKILL.
        """
        if needs_s is None:
            self.notify(STOPPING=1, STATUS="stopping")
        else:
            usec = int(needs_s * 1_000_000)
            self.notify(STOPPING=1, STATUS="stopping", EXTEND_TIMEOUT_USEC=usec)

    def watchdog(self) -> None:
        """WATCHDOG=1: the event loop is alive."""
        self.notify(WATCHDOG=1)

    def close(self) -> None:
        """Close the socket."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
