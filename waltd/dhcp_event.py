"""`waltd-dhcp-event`: dnsmasq's dhcp-script, forwarding each call to the daemon.

dnsmasq runs this hook one call at a time and waits for it, so it must be quick: it imports
only the standard library's basics, sends one datagram to the daemon's event socket and
exits. When the daemon is not there, or its socket's queue stays full for SEND_TIMEOUT_S (a
burst of leases), it writes the event as one file into the spool folder (atomic rename); the
daemon drains the spool whenever it holds events, so no event is lost.

Calls (from dnsmasq's manual): `add|old|del MAC IP [HOSTNAME]` with DNSMASQ_VENDOR_CLASS,
DNSMASQ_USER_CLASS0.., DNSMASQ_INTERFACE in the environment; `tftp SIZE IP FILE` after a
TFTP transfer; `init` (lease database dump, not used here: it must print nothing).
"""

from __future__ import annotations

import json
import os
import socket
import struct
import sys
import time

SOCKET_ENV = "WALTD_EVENT_SOCKET"
SPOOL_ENV = "WALTD_EVENT_SPOOL"
MAX_MESSAGE = 8192  # the daemon reads datagrams of at most this size
# The kernel queues only net.unix.max_dgram_qlen (10) datagrams per socket: wait this long
# for room before spooling, short enough that dnsmasq is not held up for long.
SEND_TIMEOUT_S = 1


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


def send(data: bytes, sock_path: str) -> bool:
    """Deliver to the daemon; False when it is not listening or has no room in time."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        # A blocking send bounded by SO_SNDTIMEO (struct timeval); Python's own timeouts
        # would poll the unconnected socket, which is always writable, and spin.
        timeout = struct.pack("@ll", SEND_TIMEOUT_S, 0)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeout)
        sock.sendto(data, sock_path)
        return True
    except OSError:
        return False
    finally:
        sock.close()


def spool(data: bytes, folder: str) -> str:
    """Write one event file into `folder` atomically; returns its path."""
    os.makedirs(folder, mode=0o700, exist_ok=True)
    name = f"{time.time_ns():020d}-{os.getpid()}.json"
    tmp = os.path.join(folder, f".{name}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    final = os.path.join(folder, name)
    os.rename(tmp, final)
    return final


def main(argv: list[str] | None = None) -> int:
    """Entry point: forward or spool one call; never make dnsmasq wait or fail."""
    args = sys.argv[1:] if argv is None else argv
    if not args or args[0] == "init":
        return 0
    try:
        data = encode(build_event(args, os.environ))
    except ValueError:
        return 0
    sock_path = os.environ.get(SOCKET_ENV, "")
    if sock_path and send(data, sock_path):
        return 0
    folder = os.environ.get(SPOOL_ENV)
    if not folder:
        print("waltd-dhcp-event: no daemon and no spool folder; event lost", file=sys.stderr)
        return 1
    spool(data, folder)
    return 0


if __name__ == "__main__":
    sys.exit(main())
