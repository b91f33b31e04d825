"""`waltd-dhcp-event`: dnsmasq's dhcp-script, handing each call over to the daemon.

dnsmasq runs this hook one call at a time and waits for it, so it must be quick: it imports
only the standard library's basics. It writes the event as one file into the daemon's spool
folder (written, synced, then renamed into place: durable before the hook reports success),
then wakes the daemon with an empty datagram on its event socket. The daemon removes a file
only once the event is committed to its database, so an event the hook handed over survives
a daemon that is frozen, killed or not running at all.

Calls (from dnsmasq's manual): `add|old|del MAC IP [HOSTNAME]` with DNSMASQ_VENDOR_CLASS,
DNSMASQ_USER_CLASS0.., DNSMASQ_INTERFACE in the environment; `tftp SIZE IP FILE` after a
TFTP transfer; `init` (lease database dump, not used here: it must print nothing).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import time
from pathlib import Path

from waltd.atomic import write_atomic

SOCKET_ENV = "WALTD_EVENT_SOCKET"
SPOOL_ENV = "WALTD_EVENT_SPOOL"
MAX_MESSAGE = 8192  # the daemon reads spooled events of at most this size


def build_event(argv: list[str], environ: dict[str, str] | os._Environ[str]) -> dict[str, object]:
    """The message for one hook call: argv without the program name, dnsmasq's environment."""
    if not argv:
        raise ValueError("no action given")
    action = argv[0]
    event: dict[str, object] = {"action": action, "time": time.time()}
    if action == "tftp":
        size, ip, file = ([*argv[1:], "", "", ""])[:3]
        event |= {"size": size, "ip": ip, "file": file}
        return event
    mac, ip, hostname = ([*argv[1:], "", "", ""])[:3]
    user_classes = []
    for i in range(16):
        value = environ.get(f"DNSMASQ_USER_CLASS{i}")
        if value is None:
            break
        user_classes.append(value)
    event |= {
        "mac": mac,
        "ip": ip,
        "hostname": hostname or None,
        "vendor_class": environ.get("DNSMASQ_VENDOR_CLASS"),
        "user_classes": user_classes,
        "interface": environ.get("DNSMASQ_INTERFACE"),
    }
    return event


def encode(event: dict[str, object]) -> bytes:
    """The datagram. DHCP options are at most 255 bytes each, so it stays far below
    MAX_MESSAGE; the daemon refuses a larger one as malformed rather than trusting it."""
    return json.dumps(event).encode()


def wake(sock_path: str) -> bool:
    """Tell the daemon the spool holds a new event; False when it is not listening.

    Never waits: a daemon whose queue is full has wake-ups pending already, and it also
    looks at the spool every few seconds.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        sock.sendto(b"", socket.MSG_DONTWAIT, sock_path)
        return True
    except OSError:
        return False
    finally:
        sock.close()


def spool(data: bytes, folder: str) -> str:
    """Write one event file into `folder` atomically and durably; returns its path.

    Names sort in arrival order (dnsmasq runs one hook at a time).
    """
    os.makedirs(folder, mode=0o700, exist_ok=True)
    final = os.path.join(folder, f"{time.time_ns():020d}-{os.getpid()}.json")
    write_atomic(Path(final), data, 0o600)
    return final


def main(argv: list[str] | None = None) -> int:
    """Entry point: spool one call, then wake the daemon; never make dnsmasq wait long."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] == "init":
        return 0
    try:
        data = encode(build_event(args, os.environ))
    except ValueError:
        return 0
    folder = os.environ.get(SPOOL_ENV)
    if not folder:
        print("waltd-dhcp-event: no spool folder is set; event lost", file=sys.stderr)
        return 1
    try:
        spool(data, folder)
    except OSError as err:
        print(f"waltd-dhcp-event: cannot spool the event: {err}", file=sys.stderr)
        return 1
    sock_path = os.environ.get(SOCKET_ENV, "")
    if sock_path:
        wake(sock_path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
