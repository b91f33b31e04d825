"""A light DHCP client for the lab's node storms: many simulated nodes from one process.

`Lab.node_dhcp` runs `busybox udhcpc` in the node's namespace: the client a real node runs,
but with nsenter, the udhcpc.sh script and its `ip` commands it costs several processes per
node, and in a storm benchmark that CPU is charged to the server being measured. Here a
node's exchange (DISCOVER, OFFER, REQUEST, ACK) goes through a UDP socket made inside the
node's namespace and driven by the caller's event loop, and the leased address is set by
netlink from that namespace, as udhcpc.sh sets it.

dnsmasq sees what udhcpc sends: client id 01+MAC (a node keeps its lease whichever of the
two clients asks), the vendor class (60), the user class (77) as plain text (the hook's
DNSMASQ_USER_CLASS0), and the BROADCAST flag, so replies reach a node that has no address yet.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import random
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import IntEnum
from ipaddress import IPv4Address, IPv4Interface, IPv4Network

from pyroute2 import AsyncIPRoute
from pyroute2.netlink import NETLINK_ROUTE
from pyroute2.netlink.exceptions import NetlinkError

from lab.lab import Lab, LabError, Node
from waltd.names import normalise_mac

# op htype hlen hops xid secs flags ciaddr yiaddr siaddr giaddr chaddr sname file cookie
_BOOTP = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s4s")
_MAGIC = bytes((99, 130, 83, 99))
_BOOTREQUEST, _BOOTREPLY = 1, 2
_ETHERNET = 1
_BROADCAST_FLAG = 0x8000
_ZERO = IPv4Address(0)
_SERVER = ("255.255.255.255", 67)
_CLIENT_PORT = 68
_MAX_DATAGRAM = 4096

# options
_PAD, _END = 0, 255
_SUBNET_MASK = 1
_REQUESTED_ADDRESS = 50
_MESSAGE_TYPE = 53
_SERVER_ID = 54
_PARAMETER_REQUEST = 55
_VENDOR_CLASS = 60
_CLIENT_ID = 61
_USER_CLASS = 77
# subnet mask, router, DNS, host name, domain name, broadcast address, NTP: udhcpc's asks
_PARAMETERS = bytes((1, 3, 6, 12, 15, 28, 42))

# Classic BPF, for SO_ATTACH_FILTER (linux/filter.h).
_SO_ATTACH_FILTER = 26
_BPF_LD_W_ABS = 0x20
_BPF_JEQ_K = 0x15
_BPF_RET_K = 0x06
_BPF_INSTRUCTION = struct.Struct("=HBBI")
# a UDP socket's filter sees the datagram from its UDP header on; the xid is at 4 in BOOTP
_XID_OFFSET = 8 + 4

_CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)


class MessageType(IntEnum):
    """DHCP message types (option 53) this client sends or accepts."""

    DISCOVER = 1
    OFFER = 2
    REQUEST = 3
    ACK = 5
    NAK = 6


_REPLIES = frozenset((MessageType.OFFER, MessageType.ACK, MessageType.NAK))


class DhcpError(ValueError):
    """A datagram that is no usable reply to this client (short, garbled, someone else's)."""


@dataclass(frozen=True)
class Reply:
    """A server's OFFER, ACK or NAK: the address offered (0.0.0.0 in a NAK), the server's
    identifier (option 54) and the subnet's prefix length (from option 1), when given."""

    kind: MessageType
    address: IPv4Address
    server: IPv4Address | None
    prefixlen: int | None

    @property
    def interface(self) -> IPv4Interface:
        """The address with its prefix length (ACKs always have one)."""
        if self.prefixlen is None:
            raise DhcpError(f"{self.kind.name} has no subnet mask")
        return IPv4Interface((self.address, self.prefixlen))


# ---- packets (pure) ----------------------------------------------------------------------


def mac_bytes(mac: str) -> bytes:
    """`aa:bb:cc:dd:ee:ff` -> its 6 bytes; ValueError unless it is six hex pairs."""
    return bytes.fromhex(normalise_mac(mac).replace(":", ""))


def client_id(mac: str) -> bytes:
    """The client identifier udhcpc sends by default: hardware type 1 (Ethernet), the MAC."""
    return bytes((_ETHERNET,)) + mac_bytes(mac)


def _option(code: int, value: bytes) -> bytes:
    if not 1 <= len(value) <= 255:
        raise ValueError(f"DHCP option {code} must hold 1 to 255 bytes, not {len(value)}")
    return bytes((code, len(value))) + value


def _text(code: int, value: str) -> bytes:
    return _option(code, value.encode("ascii"))


def _request_packet(
    kind: MessageType,
    xid: int,
    mac: str,
    options: list[bytes],
    client: bytes | None,
    vendor_class: str | None,
    user_class: str | None,
) -> bytes:
    if not 0 <= xid < 2**32:
        raise ValueError(f"xid {xid} is not 32 bits")
    header = _BOOTP.pack(
        *(_BOOTREQUEST, _ETHERNET, 6, 0, xid, 0, _BROADCAST_FLAG),
        *(_ZERO.packed,) * 4,
        mac_bytes(mac),
        b"",
        b"",
        _MAGIC,
    )
    parts = [header, _option(_MESSAGE_TYPE, bytes((kind,))), *options]
    if client is not None:
        parts.append(_option(_CLIENT_ID, client))
    parts.append(_option(_PARAMETER_REQUEST, _PARAMETERS))
    if vendor_class is not None:
        parts.append(_text(_VENDOR_CLASS, vendor_class))
    if user_class is not None:
        # as text, not RFC 3004's length-prefixed list: what `udhcpc -x 77:"TEXT"` sends
        parts.append(_text(_USER_CLASS, user_class))
    parts.append(bytes((_END,)))
    return b"".join(parts)


def build_discover(
    xid: int,
    mac: str,
    *,
    client: bytes | None = None,
    vendor_class: str | None = None,
    user_class: str | None = None,
) -> bytes:
    """A DHCPDISCOVER from `mac` (BROADCAST flag set), with client id `client` (option 61),
    `vendor_class` (60) and `user_class` (77, as text) when given. ValueError for a class
    that is empty, longer than 255 bytes or not ASCII."""
    return _request_packet(MessageType.DISCOVER, xid, mac, [], client, vendor_class, user_class)


def build_request(
    xid: int,
    mac: str,
    requested: IPv4Address,
    server: IPv4Address,
    *,
    client: bytes | None = None,
    vendor_class: str | None = None,
    user_class: str | None = None,
) -> bytes:
    """The DHCPREQUEST taking an offer: `requested` address (option 50) from `server`
    (option 54); the other options as in `build_discover`."""
    options = [_option(_REQUESTED_ADDRESS, requested.packed), _option(_SERVER_ID, server.packed)]
    return _request_packet(MessageType.REQUEST, xid, mac, options, client, vendor_class, user_class)


def _options(data: bytes) -> dict[int, bytes]:
    """The options after the magic cookie; a repeated option is concatenated (RFC 3396)."""
    found: dict[int, bytes] = {}
    at = _BOOTP.size
    while at < len(data):
        code = data[at]
        if code == _PAD:
            at += 1
            continue
        if code == _END:
            return found
        if at + 2 > len(data) or at + 2 + data[at + 1] > len(data):
            raise DhcpError(f"option {code} runs past the end of the datagram")
        found[code] = found.get(code, b"") + data[at + 2 : at + 2 + data[at + 1]]
        at += 2 + data[at + 1]
    raise DhcpError("options without an end option")


def _address_option(options: dict[int, bytes], code: int) -> IPv4Address | None:
    value = options.get(code)
    if value is None:
        return None
    if len(value) != 4:
        raise DhcpError(f"option {code} holds {len(value)} bytes, not an IPv4 address")
    return IPv4Address(value)


def parse_reply(data: bytes, xid: int, mac: str) -> Reply:
    """The OFFER, ACK or NAK in `data`, for the client of transaction `xid` and MAC `mac`.

    DhcpError when `data` is short or garbled, no BOOTP reply, another transaction's or
    another client's, of a type other than OFFER/ACK/NAK, an OFFER without a server
    identifier, an OFFER or ACK without an address, an ACK without a valid subnet mask.
    """
    if len(data) < _BOOTP.size:
        raise DhcpError(f"{len(data)} bytes: too short for BOOTP")
    op, htype, hlen, _, got_xid, _, _, _, yiaddr, _, _, chaddr, _, _, magic = _BOOTP.unpack_from(
        data
    )
    if op != _BOOTREPLY or htype != _ETHERNET or hlen != 6:
        raise DhcpError(f"not an Ethernet BOOTP reply (op {op}, htype {htype}, hlen {hlen})")
    if magic != _MAGIC:
        raise DhcpError("no DHCP magic cookie")
    if got_xid != xid:
        raise DhcpError(f"transaction {got_xid:#010x}, not {xid:#010x}")
    if chaddr[:6] != mac_bytes(mac):
        raise DhcpError(f"for {chaddr[:6].hex(':')}, not {mac}")
    options = _options(data)
    kind_option = options.get(_MESSAGE_TYPE, b"")
    if len(kind_option) != 1:
        raise DhcpError("no valid message type (option 53)")
    if kind_option[0] not in _REPLIES:
        raise DhcpError(f"message type {kind_option[0]} is not OFFER, ACK or NAK")
    kind = MessageType(kind_option[0])
    server = _address_option(options, _SERVER_ID)
    mask = _address_option(options, _SUBNET_MASK)
    prefixlen: int | None = None
    if mask is not None:
        try:
            prefixlen = IPv4Network(f"0.0.0.0/{mask}").prefixlen
        except ValueError:
            raise DhcpError(f"subnet mask {mask} is not a valid netmask") from None
    address = IPv4Address(yiaddr)
    if kind is not MessageType.NAK and address == _ZERO:
        raise DhcpError(f"{kind.name} without an address")
    if kind is MessageType.OFFER and server is None:
        raise DhcpError("OFFER without a server identifier")
    if kind is MessageType.ACK and prefixlen is None:
        raise DhcpError("ACK without a subnet mask")
    return Reply(kind, address, server, prefixlen)


def xid_filter(xid: int) -> bytes:
    """A classic BPF program for a UDP socket: keep the datagrams of DHCP transaction `xid`.

    Servers broadcast their replies, and the node network's bridge floods every broadcast to
    every node: without it each node's socket would wake for every other node's replies.
    """
    return b"".join(
        (
            _BPF_INSTRUCTION.pack(_BPF_LD_W_ABS, 0, 0, _XID_OFFSET),
            _BPF_INSTRUCTION.pack(_BPF_JEQ_K, 0, 1, xid),
            _BPF_INSTRUCTION.pack(_BPF_RET_K, 0, 0, 0xFFFFFFFF),  # the whole datagram
            _BPF_INSTRUCTION.pack(_BPF_RET_K, 0, 0, 0),
        )
    )


# ---- sockets in a node's namespace -------------------------------------------------------


@dataclass
class _Endpoint:
    """A node's DHCP socket and netlink socket (both of its namespace; no netlink socket for
    a node that leaves its address unset), its interface index."""

    udp: socket.socket
    netlink: socket.socket | None
    ifindex: int

    def close(self) -> None:
        self.udp.close()
        if self.netlink is not None:
            self.netlink.close()


def attach_xid_filter(sock: socket.socket, xid: int) -> None:
    """Make UDP socket `sock` keep only the datagrams of DHCP transaction `xid` (`xid_filter`)."""
    program = xid_filter(xid)
    code = ctypes.create_string_buffer(program, len(program))
    # struct sock_fprog: the instruction count, then a pointer to the instructions
    fprog = struct.pack("HL", len(program) // _BPF_INSTRUCTION.size, ctypes.addressof(code))
    sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, fprog)


def _enter_netns(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if _libc.setns(fd, _CLONE_NEWNET) != 0:
            error = ctypes.get_errno()
            raise OSError(error, f"setns {path}: {os.strerror(error)}")
    finally:
        os.close(fd)


def _open_endpoint(netns_path: str, ifname: str, xid: int, netlink: bool = True) -> _Endpoint:
    """The sockets of a node's exchange (the netlink one only when `netlink`); run in a thread
    of its own (it enters the namespace).

    A socket stays in the namespace it was made in, whichever thread uses it later.
    """
    _enter_netns(netns_path)
    ifindex = socket.if_nametoindex(ifname)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        udp.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
        udp.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        udp.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, ifname.encode())
        # before bind: no datagram of another transaction is ever queued
        attach_xid_filter(udp, xid)
        udp.bind(("0.0.0.0", _CLIENT_PORT))  # the namespace's own port 68
        udp.setblocking(False)
        route = None
        if netlink:
            route = socket.socket(socket.AF_NETLINK, socket.SOCK_DGRAM, NETLINK_ROUTE)
    except BaseException:
        udp.close()
        raise
    return _Endpoint(udp, route, ifindex)


async def _in_thread(make: Callable[[], _Endpoint]) -> _Endpoint:
    """`make()` in a new thread, which ends with it.

    setns changes the calling thread only: a thread that entered a node's namespace is never
    reused (the event loop's, or a pool's, would be left there if switching back failed).
    """
    loop = asyncio.get_running_loop()
    done: asyncio.Future[_Endpoint] = loop.create_future()

    def deliver(endpoint: _Endpoint | None, error: Exception | None) -> None:
        if done.cancelled():
            if endpoint is not None:
                endpoint.close()
        elif error is not None:
            done.set_exception(error)
        elif endpoint is not None:
            done.set_result(endpoint)

    def run() -> None:
        try:
            endpoint = make()
        except Exception as error:
            loop.call_soon_threadsafe(deliver, None, error)
        else:
            loop.call_soon_threadsafe(deliver, endpoint, None)

    threading.Thread(target=run, name="lab-dhcp-netns", daemon=True).start()
    return await done


# ---- the exchange ------------------------------------------------------------------------


async def _receive(
    udp: socket.socket,
    xid: int,
    mac: str,
    wanted: frozenset[MessageType],
    server: IPv4Address | None,
    timeout_s: float,
) -> Reply | None:
    """The first reply of a `wanted` kind (from `server`, when it says) within `timeout_s`;
    None when none came. Unusable datagrams are skipped, as udhcpc skips them."""
    loop = asyncio.get_running_loop()
    try:
        async with asyncio.timeout(timeout_s):
            while True:
                data = await loop.sock_recv(udp, _MAX_DATAGRAM)
                with contextlib.suppress(DhcpError):
                    reply = parse_reply(data, xid, mac)
                    other_server = None not in (server, reply.server) and reply.server != server
                    if reply.kind in wanted and not other_server:
                        return reply
    except TimeoutError:
        return None


async def _exchange(
    udp: socket.socket,
    xid: int,
    mac: str,
    discover: bytes,
    request: Callable[[Reply], bytes],
    tries: int,
    timeout_s: float,
) -> Reply | None:
    """DISCOVER until an OFFER, then REQUEST until an ACK: the ACK, or None once `tries`
    waits came to nothing (no reply in `timeout_s`, or a NAK, which starts over)."""
    loop = asyncio.get_running_loop()
    offer: Reply | None = None
    misses = 0
    while misses < tries:
        if offer is None:
            await loop.sock_sendto(udp, discover, _SERVER)
            offer = await _receive(udp, xid, mac, frozenset((MessageType.OFFER,)), None, timeout_s)
            if offer is None:
                misses += 1
                continue
        await loop.sock_sendto(udp, request(offer), _SERVER)
        answers = frozenset((MessageType.ACK, MessageType.NAK))
        reply = await _receive(udp, xid, mac, answers, offer.server, timeout_s)
        if reply is not None and reply.kind is MessageType.ACK:
            return reply
        misses += 1
        if reply is not None:  # a NAK: the offer is gone
            offer = None
    return None


async def _set_address(endpoint: _Endpoint, leased: IPv4Interface) -> None:
    """What udhcpc.sh does when bound: the interface's other IPv4 addresses go, the leased
    one is added (no route: the node network is the prefix's)."""
    assert endpoint.netlink is not None
    async with AsyncIPRoute(use_socket=endpoint.netlink) as ipr:
        present = set()
        async for msg in await ipr.addr("dump", index=endpoint.ifindex, family=socket.AF_INET):
            if msg["index"] == endpoint.ifindex:
                present.add(IPv4Interface((msg.get_attr("IFA_LOCAL"), msg["prefixlen"])))
        for old in present - {leased}:
            await ipr.addr(
                "del", index=endpoint.ifindex, address=str(old.ip), prefixlen=old.network.prefixlen
            )
        if leased not in present:
            await ipr.addr(
                "add",
                index=endpoint.ifindex,
                address=str(leased.ip),
                prefixlen=leased.network.prefixlen,
            )


async def lease(
    lab: Lab,
    node: Node,
    *,
    vendor_class: str | None = None,
    user_class: str | None = None,
    tries: int = 5,
    timeout_s: float = 1.0,
    configure: bool = True,
) -> IPv4Address:
    """Have `node` get a lease as `busybox udhcpc -t TRIES -T TIMEOUT` would, set it on its
    interface as udhcpc.sh does (unless not `configure`: the server sees nothing of it), and
    return it (also in `node.ip`).

    A lost packet is sent again after `timeout_s`; LabError naming the node when `tries`
    waits brought no lease, or when its namespace or interface cannot be used. No class is
    sent unless given (udhcpc sends its own vendor class).
    """
    xid = random.getrandbits(32)
    client = client_id(node.mac)
    classes = {"vendor_class": vendor_class, "user_class": user_class}
    # ValueError for a bad class, before any socket
    discover = build_discover(xid, node.mac, client=client, **classes)

    def request(offer: Reply) -> bytes:
        assert offer.server is not None  # parse_reply requires it of an OFFER
        return build_request(xid, node.mac, offer.address, offer.server, client=client, **classes)

    netns_path = lab.netns_path(node.netns)
    try:
        endpoint = await _in_thread(
            lambda: _open_endpoint(netns_path, node.ifname, xid, netlink=configure)
        )
    except OSError as err:
        raise LabError(
            f"{node.name}: no DHCP socket on {node.ifname} in {node.netns}: {err}"
        ) from err
    try:
        try:
            ack = await _exchange(endpoint.udp, xid, node.mac, discover, request, tries, timeout_s)
        except OSError as err:  # a packet the kernel refused to send: no loss on the wire
            raise LabError(f"{node.name}: DHCP on {node.ifname}: {err}") from err
        if ack is None:
            raise LabError(f"{node.name} got no DHCP lease after {tries} tries")
        try:
            if configure:
                await _set_address(endpoint, ack.interface)
        except (OSError, NetlinkError) as err:
            raise LabError(f"{node.name}: {ack.interface} not set on {node.ifname}: {err}") from err
    finally:
        endpoint.close()
    node.ip = ack.address
    return ack.address
