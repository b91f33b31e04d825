"""dnsmasq's lease file (pure parsing, bounded reading).

One lease per line, `EXPIRY MAC IP HOSTNAME CLIENTID` (`*` for no hostname or client id,
expiry 0 for a lease that never expires); dnsmasq also writes a `duid ...` line and IPv6
leases, which are not the node network's. The file is dnsmasq's and is read at detection
start, so it is bounded: at most MAX_BYTES read, MAX_LINES leases looked at.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass
from pathlib import Path

from waltd.names import normalise_mac

MAX_BYTES = 1 << 20
MAX_LINES = 65536
HOSTNAME_MAX = 255


@dataclass(frozen=True)
class Lease:
    """One IPv4 lease of the file."""

    mac: str
    ip: str
    expires: int  # seconds since the epoch; 0: never
    hostname: str | None


@dataclass(frozen=True)
class LeaseFile:
    """The leases in force, and what was left out: malformed lines (with the first one's
    problem), and whether the bounds cut the file short."""

    leases: tuple[Lease, ...]
    malformed: int = 0
    first_problem: str | None = None
    truncated: bool = False


def _lease(line: str) -> Lease:
    fields = line.split(" ")
    if len(fields) != 5:
        raise ValueError(f"{len(fields)} fields instead of 5")
    expiry, mac, ip, hostname, _client_id = fields
    if not expiry.isascii() or not expiry.isdigit() or len(expiry) > 19:
        raise ValueError(f"expiry {expiry[:24]!r} is not a number of seconds")
    try:
        address = ipaddress.IPv4Address(ip)
    except ValueError:
        raise ValueError(f"{ip[:48]!r} is not an IPv4 address") from None
    if hostname == "*":
        name = None
    elif len(hostname) > HOSTNAME_MAX or not hostname.isprintable():
        raise ValueError("the hostname is too long or holds non-printable characters")
    else:
        name = hostname
    return Lease(normalise_mac(mac), str(address), int(expiry), name)


def _is_ipv6(line: str) -> bool:
    """dnsmasq's DUID line and IPv6 leases (whose address holds ':'): not ours to read."""
    fields = line.split(" ")
    return fields[0] == "duid" or (len(fields) > 2 and ":" in fields[2])


def _line(raw: bytes) -> Lease | None:
    """The IPv4 lease of one line, None for a blank or IPv6 line; ValueError when malformed."""
    try:
        line = raw.decode().strip()
    except UnicodeDecodeError:
        raise ValueError("not UTF-8") from None
    if not line or _is_ipv6(line):
        return None
    return _lease(line)


def parse_leases(data: bytes, now: float, *, truncated: bool = False) -> LeaseFile:
    """The leases of `data` (the file's bytes) still in force at `now`, last one for a MAC
    winning; a malformed line is skipped and counted. `truncated` says the bytes are only
    the start of the file: its last, partial line is left out."""
    lines = data.split(b"\n")
    # what follows the last newline: nothing, or (in a cut file) part of a lease
    if truncated or not lines[-1]:
        lines.pop()
    if len(lines) > MAX_LINES:
        lines = lines[:MAX_LINES]
        truncated = True
    found: dict[str, Lease] = {}
    malformed = 0
    first_problem: str | None = None
    for number, raw in enumerate(lines, start=1):
        try:
            lease = _line(raw)
        except ValueError as err:
            malformed += 1
            if first_problem is None:
                first_problem = f"line {number}: {err}"
            continue
        if lease is not None and (lease.expires == 0 or lease.expires > now):
            found[lease.mac] = lease
    return LeaseFile(tuple(found.values()), malformed, first_problem, truncated)


def read_leases(path: Path, now: float) -> LeaseFile:
    """The lease file at `path` (no file: no lease), at most MAX_BYTES of it.

    Blocking: run it in a thread. OSError when it cannot be read.
    """
    try:
        with path.open("rb") as file:
            data = file.read(MAX_BYTES + 1)
    except FileNotFoundError:
        return LeaseFile(())
    cut = len(data) > MAX_BYTES
    return parse_leases(data[:MAX_BYTES], now, truncated=cut)
