"""The node network seen through netlink: who answers on it (neighbours) and its carrier.

`watch(interface)` reports the interface's carrier and its IPv4 neighbour table, then their
changes as the kernel announces them (multicast groups RTMGRP_LINK and RTMGRP_NEIGH), in the
network namespace of the calling process. The kernel keeps a neighbour entry for every address
that spoke to the server or that the server tried to reach; an entry in FAILED or INCOMPLETE
state means the address did not answer ARP.

The parsers are pure, over pyroute2 messages or their dict form (`header.type`, the message's
fields, `attrs` as (name, value) pairs).
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import socket
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from pyroute2 import AsyncIPRoute
from pyroute2.netlink.exceptions import NetlinkError
from pyroute2.netlink.rtnl import (
    RTM_DELLINK,
    RTM_NEWLINK,
    RTM_NEWNEIGH,
    RTMGRP_LINK,
    RTMGRP_NEIGH,
)
from pyroute2.netlink.rtnl.ifinfmsg import IFF_LOWER_UP, IFF_UP
from pyroute2.netlink.rtnl.ndmsg import (
    NTF_PROXY,
    NUD_DELAY,
    NUD_FAILED,
    NUD_INCOMPLETE,
    NUD_NOARP,
    NUD_PERMANENT,
    NUD_PROBE,
    NUD_REACHABLE,
    NUD_STALE,
)

from waltd import log
from waltd.names import normalise_mac

_log = log.get("neighbours")

# Neighbours yielded from the first dump, and IPs remembered afterwards (oldest forgotten first).
MAX_NEIGHBOURS = 4096
# Resolving the interface and reading the first dump: the kernel answers in milliseconds.
SETUP_TIMEOUT_S = 10.0
# Netlink datagrams received but not yet handled; beyond this the consumer has fallen behind
# and the watch ends (a new one starts from a fresh dump).
MAX_BACKLOG = 1024
# The kernel's limit on interface names (IFNAMSIZ - 1).
IFNAME_MAX = 15

# States where the entry holds a link-layer address the neighbour answered with (NUD_VALID).
_ANSWERED = NUD_REACHABLE | NUD_STALE | NUD_DELAY | NUD_PROBE | NUD_PERMANENT | NUD_NOARP
_SILENT = NUD_FAILED | NUD_INCOMPLETE
_BROADCAST = ipaddress.IPv4Address("255.255.255.255")


class WatchError(Exception):
    """The interface cannot be watched (missing, removed, netlink failed); retry later."""


@dataclass(frozen=True)
class Neighbour:
    """An IPv4 neighbour of the interface: `reachable` False when it stopped answering ARP."""

    mac: str
    ip: str
    reachable: bool


@dataclass(frozen=True)
class Carrier:
    """The interface's carrier: `up` when it is administratively up and has a link."""

    interface: str
    up: bool


def _type(msg: Mapping[str, Any]) -> Any:
    header = msg.get("header")
    return header.get("type") if isinstance(header, Mapping) else None


def _attr(msg: Mapping[str, Any], name: str) -> Any:
    """Attribute `name` of a pyroute2 message, or of a dict's `attrs` (name, value) pairs."""
    get_attr = getattr(msg, "get_attr", None)
    if callable(get_attr):
        return get_attr(name)
    attrs = msg.get("attrs")
    if not isinstance(attrs, list | tuple):
        return None
    for pair in attrs:
        if isinstance(pair, list | tuple) and len(pair) == 2 and pair[0] == name:
            return pair[1]
    return None


def _host_ip(value: Any) -> str | None:
    """An IPv4 address a node can hold (no multicast, broadcast, loopback or 0.0.0.0)."""
    if not isinstance(value, str):
        return None
    try:
        ip = ipaddress.IPv4Address(value)
    except ValueError:
        return None
    if ip.is_multicast or ip.is_unspecified or ip.is_loopback or ip == _BROADCAST:
        return None
    return str(ip)


def _unicast_mac(value: Any) -> str | None:
    """A normalised unicast MAC (multicast entries are the kernel's, not a node's)."""
    if not isinstance(value, str):
        return None
    try:
        mac = normalise_mac(value)
    except ValueError:
        return None
    if int(mac[:2], 16) & 1 or mac == "00:00:00:00:00:00":
        return None
    return mac


def parse_neighbour(
    msg: Mapping[str, Any], ifindex: int, known: Mapping[str, Neighbour] | None = None
) -> Neighbour | None:
    """The IPv4 neighbour an RTM_NEWNEIGH message of interface `ifindex` reports, or None.

    Reachable: REACHABLE, STALE, DELAY, PROBE, PERMANENT or NOARP with a unicast link-layer
    address. Unreachable: FAILED or INCOMPLETE; the kernel sends those without a link-layer
    address, so the MAC is the one `known` (IP -> last neighbour seen there) holds, and
    without one the message gives None. None also for another interface or family, a
    malformed address, a proxy entry, and RTM_DELNEIGH: the kernel forgets entries to save
    memory or when the carrier drops (reported as a Carrier), which says nothing of the node.
    """
    if _type(msg) != RTM_NEWNEIGH or msg.get("family") != socket.AF_INET:
        return None
    if msg.get("ifindex") != ifindex:
        return None
    state, flags = msg.get("state"), msg.get("flags", 0)
    if not isinstance(state, int) or not isinstance(flags, int) or flags & NTF_PROXY:
        return None
    ip = _host_ip(_attr(msg, "NDA_DST"))
    if ip is None:
        return None
    mac = _unicast_mac(_attr(msg, "NDA_LLADDR"))
    if state & _ANSWERED:
        return Neighbour(mac, ip, True) if mac else None
    if state & _SILENT:
        if mac is None and known is not None and ip in known:
            mac = known[ip].mac
        return Neighbour(mac, ip, False) if mac else None
    return None


def _valid_ifname(name: str) -> bool:
    # the kernel's dev_valid_name
    return (
        0 < len(name) <= IFNAME_MAX
        and name not in (".", "..")
        and not any(c == "/" or c == ":" or c.isspace() for c in name)
        and name.isprintable()
    )


def parse_link(msg: Mapping[str, Any], ifindex: int) -> Carrier | None:
    """The carrier an RTM_NEWLINK or RTM_DELLINK message of interface `ifindex` reports.

    Up means IFF_UP and IFF_LOWER_UP (a bridge has a carrier while one of its ports does); a
    removed interface is down. None for another interface, a bridge-port message
    (family AF_BRIDGE), or a message without a valid name or flags.
    """
    kind = _type(msg)
    if kind not in (RTM_NEWLINK, RTM_DELLINK) or msg.get("family") != socket.AF_UNSPEC:
        return None
    if msg.get("index") != ifindex:
        return None
    name, flags = _attr(msg, "IFLA_IFNAME"), msg.get("flags")
    if not isinstance(name, str) or not _valid_ifname(name) or not isinstance(flags, int):
        return None
    up = kind == RTM_NEWLINK and bool(flags & IFF_UP) and bool(flags & IFF_LOWER_UP)
    return Carrier(name, up)


class _Seen:
    """The last neighbour reported per IP, at most MAX_NEIGHBOURS (oldest forgotten first)."""

    def __init__(self) -> None:
        self.last: dict[str, Neighbour] = {}

    def changed(self, neighbour: Neighbour) -> bool:
        """Whether `neighbour` differs from the last one reported at its IP; remembers it."""
        if self.last.get(neighbour.ip) == neighbour:
            return False
        self.last.pop(neighbour.ip, None)
        self.last[neighbour.ip] = neighbour
        if len(self.last) > MAX_NEIGHBOURS:
            del self.last[next(iter(self.last))]
        return True


async def _carrier(ipr: AsyncIPRoute, interface: str) -> tuple[int, Carrier]:
    """The interface's index and carrier; WatchError when it does not exist."""
    try:
        links = await ipr.link("get", ifname=interface)
    except NetlinkError as err:
        if err.code == errno.ENODEV:
            raise WatchError(
                f"interface {interface!r} does not exist in this network namespace"
            ) from None
        raise
    ifindex = links[0].get("index") if links else None
    carrier = parse_link(links[0], ifindex) if isinstance(ifindex, int) else None
    if carrier is None or carrier.interface != interface:
        raise WatchError(f"interface {interface!r}: the kernel's answer is not about it")
    return ifindex, carrier


async def _dump(ipr: AsyncIPRoute, ifindex: int, interface: str) -> list[Neighbour]:
    """The interface's IPv4 neighbours, the first MAX_NEIGHBOURS; the dump is read to its end."""
    table: list[Neighbour] = []
    left_out = 0
    async for msg in await ipr.neigh("dump", family=socket.AF_INET):
        neighbour = parse_neighbour(msg, ifindex)
        if neighbour is None:
            continue
        if len(table) < MAX_NEIGHBOURS:
            table.append(neighbour)
        else:
            left_out += 1
    if left_out:
        _log.warning(
            "neighbours_left_out", interface=interface, count=left_out, limit=MAX_NEIGHBOURS
        )
    return table


async def _batch(ipr: AsyncIPRoute) -> list[Any]:
    """The messages of the next netlink datagram (a notification carries one message)."""
    # pyroute2 queues datagrams as they arrive, without a bound: the backlog is checked here.
    backlog = ipr.msg_queue.root.qsize()
    if backlog > MAX_BACKLOG:
        raise WatchError(f"{backlog} netlink datagrams unread: the consumer fell behind")
    return [msg async for msg in ipr.get()]


async def watch(interface: str) -> AsyncIterator[Neighbour | Carrier]:
    """The carrier and the IPv4 neighbours of `interface`, then their changes as they come.

    First the Carrier, then the neighbour table (at most MAX_NEIGHBOURS); after that a
    Carrier whenever it changes and a Neighbour whenever an IP appears or its MAC or
    reachability changes. Raises WatchError when the interface does not exist, is removed or
    renamed, or netlink fails or falls behind: the caller logs it and watches again later.
    Use it under `contextlib.aclosing` so that leaving the loop closes the netlink socket at
    once; cancellation closes it too.
    """
    if not _valid_ifname(interface):
        raise WatchError(f"{interface[:40]!r} is not a valid interface name")
    try:
        async with AsyncIPRoute() as ipr:
            async with asyncio.timeout(SETUP_TIMEOUT_S):
                # bound first: a change made during the dump is reported after it
                await ipr.bind(groups=RTMGRP_LINK | RTMGRP_NEIGH)
                ifindex, carrier = await _carrier(ipr, interface)
                table = await _dump(ipr, ifindex, interface)
            yield carrier
            seen = _Seen()
            for neighbour in table:
                if seen.changed(neighbour):
                    yield neighbour
            while True:
                for msg in await _batch(ipr):
                    neighbour = parse_neighbour(msg, ifindex, seen.last)
                    if neighbour is not None:
                        if seen.changed(neighbour):
                            yield neighbour
                        continue
                    link = parse_link(msg, ifindex)
                    if link is None:
                        continue
                    if link.interface != interface:
                        raise WatchError(f"interface {interface!r} was renamed {link.interface!r}")
                    if link.up != carrier.up:
                        carrier = link
                        yield carrier
                    if _type(msg) == RTM_DELLINK:
                        raise WatchError(f"interface {interface!r} was removed")
    except TimeoutError:
        raise WatchError(
            f"interface {interface!r}: no answer from netlink within {SETUP_TIMEOUT_S} s"
        ) from None
    except (NetlinkError, OSError) as err:
        raise WatchError(f"interface {interface!r}: netlink failed: {err}") from None


# UDP's discard port: whatever answers (nothing, or an ICMP error), the kernel had to resolve
# the address first.
_PROBE_PORT = 9


def probe(ips: list[str]) -> int:
    """Send one empty datagram to each of `ips` (at most MAX_NEIGHBOURS): the kernel resolves
    each address, so one that no longer answers becomes a FAILED neighbour, which `watch`
    reports. Returns how many were sent; never blocks (a full send buffer skips the rest)."""
    sent = 0
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM | socket.SOCK_NONBLOCK) as sock:
        for ip in ips[:MAX_NEIGHBOURS]:
            try:
                sock.sendto(b"", (ip, _PROBE_PORT))
            except BlockingIOError:
                break
            except OSError:
                continue  # unreachable already (a FAILED entry): the watch knows
            sent += 1
    return sent
