"""The lab's in-process DHCP client (lab/dhcp_client.py): its packets, checked byte by byte
and against garbled replies, its socket filter on the real kernel, and exchanges with a real
dnsmasq whose hook sees the node's classes as udhcpc's."""

from __future__ import annotations

import asyncio
import socket
import struct
from collections.abc import Callable
from dataclasses import replace
from ipaddress import IPv4Address

import pytest

from lab import Lab, LabError
from lab import dhcp_client as dc
from lab.default_images import add_nodes, dhcp_storm
from tests.lab.conftest import Dnsmasq
from waltd import dhcp_event
from waltd.provision import lease_events, models

pytestmark = pytest.mark.lab
# the async tests share the module's lab, hence its event loop
in_module_loop = pytest.mark.asyncio(loop_scope="module")

XID = 0x1234ABCD
MAC = "52:54:00:0a:0b:0c"
SERVER = IPv4Address("10.77.0.1")
OFFERED = IPv4Address("10.77.0.60")
MAGIC = bytes((99, 130, 83, 99))
HEADER = struct.Struct("!BBBBIHH4s4s4s4s16s64s128s4s")


def _decode(packet: bytes) -> tuple[tuple[object, ...], dict[int, bytes]]:
    """A request's BOOTP fields and options (each once, in a well-formed packet)."""
    fields = HEADER.unpack_from(packet)
    options: dict[int, bytes] = {}
    at = HEADER.size
    while packet[at] != 255:
        code, size = packet[at], packet[at + 1]
        assert code not in options
        options[code] = packet[at + 2 : at + 2 + size]
        at += 2 + size
    assert at == len(packet) - 1  # nothing after the end option
    return fields, options


def _reply(
    kind: int,
    *,
    xid: int = XID,
    mac: str = MAC,
    yiaddr: IPv4Address = OFFERED,
    options: dict[int, bytes | None] | None = None,
    op: int = 2,
    magic: bytes = MAGIC,
    tail: bytes = b"\xff",
) -> bytes:
    """A server's reply as dnsmasq lays it out; `options` replace the usual ones."""
    chosen: dict[int, bytes | None] = {53: bytes((kind,)), 54: SERVER.packed}
    chosen[51] = (43200).to_bytes(4, "big")
    chosen[1] = IPv4Address("255.255.255.0").packed
    chosen.update(options or {})
    header = HEADER.pack(
        *(op, 1, 6, 0, xid, 0, 0x8000, bytes(4), yiaddr.packed, SERVER.packed, bytes(4)),
        *(bytes.fromhex(mac.replace(":", "")), b"", b"", magic),
    )
    body = b"".join(bytes((code, len(v))) + v for code, v in chosen.items() if v is not None)
    return header + body + tail


# ---- packets ------------------------------------------------------------------------------


def test_discover_is_a_broadcast_bootp_request_with_the_classes_as_text() -> None:
    packet = dc.build_discover(
        XID,
        MAC,
        client=dc.client_id(MAC),
        vendor_class="walt.node.pc-x86-64",
        user_class="walt.node.rpi-4-b",
    )
    fields, options = _decode(packet)
    op, htype, hlen, hops, xid, secs, flags, ciaddr, yiaddr, _, _, chaddr, _, _, magic = fields
    assert (op, htype, hlen, hops, xid, secs, flags) == (1, 1, 6, 0, XID, 0, 0x8000)
    assert ciaddr == yiaddr == bytes(4)
    assert chaddr == bytes.fromhex("5254000a0b0c") + bytes(10)
    assert magic == MAGIC
    assert options[53] == b"\x01"
    assert options[61] == b"\x01" + bytes.fromhex("5254000a0b0c")
    assert set(options[55]) >= {1, 3}  # subnet mask and router at least
    assert options[60] == b"walt.node.pc-x86-64"
    # plain text, as `udhcpc -x 77:"TEXT"` sends it: dnsmasq's DNSMASQ_USER_CLASS0
    assert options[77] == b"walt.node.rpi-4-b"
    assert 50 not in options and 54 not in options


def test_request_names_the_offer_and_its_server_and_sends_no_absent_class() -> None:
    packet = dc.build_request(XID, MAC, OFFERED, SERVER)
    fields, options = _decode(packet)
    assert fields[4] == XID and fields[6] == 0x8000
    assert options[53] == b"\x03"
    assert options[50] == OFFERED.packed and options[54] == SERVER.packed
    assert not {60, 61, 77} & set(options)


@pytest.mark.parametrize(
    "classes",
    [{"vendor_class": ""}, {"user_class": "x" * 256}, {"vendor_class": "walt.node.pc\u00e9"}],
)
def test_a_class_dhcp_cannot_carry_is_refused(classes: dict[str, str]) -> None:
    with pytest.raises(ValueError):
        dc.build_discover(XID, MAC, **classes)


def test_offer_ack_and_nak_are_parsed() -> None:
    offer = dc.parse_reply(_reply(2), XID, MAC)
    assert offer == dc.Reply(dc.MessageType.OFFER, OFFERED, SERVER, 24)
    ack = dc.parse_reply(_reply(5, options={1: IPv4Address("255.255.0.0").packed}), XID, MAC)
    assert ack.kind is dc.MessageType.ACK and str(ack.interface) == f"{OFFERED}/16"
    nak = dc.parse_reply(_reply(6, yiaddr=IPv4Address(0), options={1: None}), XID, MAC)
    assert nak == dc.Reply(dc.MessageType.NAK, IPv4Address(0), SERVER, None)
    # pads anywhere, an option split in two (RFC 3396) joined
    split = _reply(5, options={54: None}, tail=b"\x00\x36\x02\x0a\x4d\x36\x02\x00\x01\xff")
    assert dc.parse_reply(split, XID, MAC).server == SERVER


@pytest.mark.parametrize(
    ("packet", "reason"),
    [
        (_reply(2)[:239], "too short"),
        (b"", "too short"),
        (_reply(2, op=1), "not an Ethernet BOOTP reply"),
        (_reply(2, magic=b"\x00\x00\x00\x00"), "magic cookie"),
        (_reply(2, xid=XID + 1), "transaction"),
        (_reply(2, mac="52:54:00:0a:0b:0d"), "not 52:54:00:0a:0b:0c"),
        (_reply(2, tail=b""), "without an end option"),
        (_reply(2, tail=b"\x0c\x09short"), "runs past the end"),
        (_reply(2, tail=b"\x0c"), "runs past the end"),
        (_reply(2, options={53: None}), "no valid message type"),
        (_reply(2, options={53: b"\x02\x02"}), "no valid message type"),
        (_reply(1), "message type 1 is not"),
        (_reply(9), "message type 9 is not"),
        (_reply(2, options={54: None}), "OFFER without a server identifier"),
        (_reply(2, options={54: b"\x0a\x00"}), "not an IPv4 address"),
        (_reply(2, yiaddr=IPv4Address(0)), "OFFER without an address"),
        (_reply(5, options={1: None}), "ACK without a subnet mask"),
        (_reply(5, options={1: IPv4Address("255.0.255.0").packed}), "not a valid netmask"),
    ],
)
def test_garbled_or_foreign_replies_are_refused(packet: bytes, reason: str) -> None:
    with pytest.raises(dc.DhcpError, match=reason):
        dc.parse_reply(packet, XID, MAC)


def test_the_xid_filter_keeps_only_its_transaction_on_a_real_socket() -> None:
    receiver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with receiver, sender:
        dc.attach_xid_filter(receiver, XID)
        receiver.bind(("127.0.0.1", 0))
        receiver.settimeout(5)
        to = receiver.getsockname()
        for packet in (_reply(2, xid=XID + 1), b"\x02\x01\x06", _reply(5, xid=XID)):
            sender.sendto(packet, to)
        # datagrams on loopback arrive in order: the first two were dropped by the kernel
        assert dc.parse_reply(receiver.recv(4096), XID, MAC).kind is dc.MessageType.ACK
        receiver.setblocking(False)
        with pytest.raises(BlockingIOError):
            receiver.recv(4096)


# ---- exchanges with a real dnsmasq --------------------------------------------------------


async def _addresses(lab: Lab, netns: str, ifname: str) -> list[str]:
    shown = await lab.run(["ip", "-4", "-o", "addr", "show", "dev", ifname], netns=netns)
    return [line.split()[3] for line in shown.stdout.splitlines()]


def _model_seen(event: dict[str, object]) -> str | None:
    """The model waltd makes of a hook call: its own hook message, parsing and classes."""
    argv, env = event["argv"], event["env"]
    assert isinstance(argv, list) and isinstance(env, dict)
    message = lease_events.parse_message(dhcp_event.encode(dhcp_event.build_event(argv, env)))
    assert isinstance(message, lease_events.LeaseEvent)
    return models.classify(message.mac, message.vendor_class, message.user_classes).model


@in_module_loop
async def test_nodes_lease_and_the_hook_sees_their_classes(lab: Lab, dnsmasq: Dnsmasq) -> None:
    pc, rpi = await lab.add_node(), await lab.add_node()
    ips = await asyncio.gather(
        dc.lease(lab, pc, vendor_class="walt.node.pc-x86-64"),
        dc.lease(lab, rpi, user_class="walt.node.rpi-3-b-plus"),
    )

    for node, ip in zip((pc, rpi), ips, strict=True):
        assert node.ip == ip and ip in lab.subnet
        assert await _addresses(lab, node.netns, node.ifname) == [f"{ip}/24"]
    event = await dnsmasq.wait_event("add", pc.mac)
    assert event["argv"][:3] == ["add", pc.mac, str(ips[0])]
    env = event["env"]
    assert env["DNSMASQ_VENDOR_CLASS"] == "walt.node.pc-x86-64"
    assert env["DNSMASQ_CLIENT_ID"] == "01:" + pc.mac  # what udhcpc sends
    assert "DNSMASQ_USER_CLASS0" not in env
    assert _model_seen(event) == "pc-x86-64"
    event = await dnsmasq.wait_event("add", rpi.mac)
    assert event["env"]["DNSMASQ_USER_CLASS0"] == "walt.node.rpi-3-b-plus"
    assert "DNSMASQ_VENDOR_CLASS" not in event["env"]
    assert _model_seen(event) == "rpi-3-b-plus"


@in_module_loop
async def test_a_node_keeps_udhcpcs_lease_and_only_the_leased_address(
    lab: Lab, dnsmasq: Dnsmasq
) -> None:
    node = await lab.add_node()
    first = await lab.node_dhcp(node, vendor_class="walt.node.pc-x86-64")
    await lab.run(["ip", "addr", "add", "10.9.9.9/24", "dev", node.ifname], netns=node.netns)

    assert await dc.lease(lab, node, vendor_class="walt.node.pc-x86-64") == first
    assert await _addresses(lab, node.netns, node.ifname) == [f"{first}/24"]
    # a lease of a node that holds it already changes nothing
    assert await dc.lease(lab, node, vendor_class="walt.node.pc-x86-64") == first
    assert await _addresses(lab, node.netns, node.ifname) == [f"{first}/24"]


async def _packets(lab: Lab, netns: str, chain: str, match: str) -> int:
    """Packets counted by the rule of `chain` whose listing contains `match`."""
    listed = await lab.run(["iptables", "-L", chain, "-n", "-v", "-x"], netns=netns)
    (line,) = [line for line in listed.stdout.splitlines() if match in line]
    return int(line.split()[0])


@in_module_loop
async def test_lost_packets_are_sent_again(
    lab: Lab, dnsmasq: Dnsmasq, require_tool: Callable[[str], str]
) -> None:
    require_tool("iptables")
    node = await lab.add_node()
    # every other packet of the node lost on its way to dnsmasq: the first DISCOVER, then
    # the first REQUEST
    rule = ["INPUT", "-p", "udp", "--dport", "67", "-m", "mac", "--mac-source", node.mac]
    rule += ["-m", "statistic", "--mode", "nth", "--every", "2", "--packet", "0", "-j", "DROP"]
    await lab.run(["iptables", "-A", *rule], netns=lab.server_netns)
    try:
        ip = await dc.lease(lab, node, vendor_class="walt.node.pc-x86-64", tries=3, timeout_s=0.3)
        assert await _packets(lab, lab.server_netns, "INPUT", "statistic") == 2
    finally:
        await lab.run(["iptables", "-D", *rule], netns=lab.server_netns)
    assert await _addresses(lab, node.netns, node.ifname) == [f"{ip}/24"]


@in_module_loop
async def test_a_node_without_an_answer_fails_after_its_tries(
    lab: Lab, require_tool: Callable[[str], str]
) -> None:
    require_tool("iptables")
    node = await lab.add_node(name="silent")
    # a veth pair of its own: what goes out of one end reaches only the other, unanswered
    pair = ["ip", "link", "add", "q0", "type", "veth", "peer", "name", "q1"]
    await lab.run(pair, netns=node.netns)
    for end in ("q0", "q1"):
        await lab.run(["ip", "link", "set", end, "up"], netns=node.netns)
    count = ["iptables", "-A", "OUTPUT", "-o", "q0", "-p", "udp", "--dport", "67"]
    await lab.run(count, netns=node.netns)
    alone = replace(node, ifname="q0")

    with pytest.raises(LabError, match="silent got no DHCP lease after 3 tries"):
        await dc.lease(lab, alone, tries=3, timeout_s=0.1)
    assert await _packets(lab, node.netns, "OUTPUT", "q0") == 3  # three DISCOVERs
    assert alone.ip is None

    with pytest.raises(LabError, match="silent: no DHCP socket on nope0"):
        await dc.lease(lab, replace(node, ifname="nope0"))


@in_module_loop
async def test_a_storm_gives_every_node_its_own_lease(lab: Lab, dnsmasq: Dnsmasq) -> None:
    nodes = await add_nodes(lab, 20, ["pc-x86-64", "rpi-4-b"])
    ips = await dhcp_storm(lab, nodes)  # 20 sockets on port 68, one per namespace
    assert len(set(ips)) == 20
    for storm_node, ip in zip(nodes, ips, strict=True):
        assert await _addresses(lab, storm_node.node.netns, "eth0") == [f"{ip}/24"]
        event = await dnsmasq.wait_event("add", storm_node.node.mac)
        assert _model_seen(event) == storm_node.model


@in_module_loop
async def test_a_storm_can_leave_the_addresses_unset(lab: Lab, dnsmasq: Dnsmasq) -> None:
    """Without `configure` the nodes get their leases and set nothing on their interfaces."""
    nodes = await add_nodes(lab, 4, ["pc-x86-64"])
    ips = await dhcp_storm(lab, nodes, configure=False)
    assert len(set(ips)) == 4
    for storm_node, ip in zip(nodes, ips, strict=True):
        assert storm_node.node.ip == ip
        assert await _addresses(lab, storm_node.node.netns, "eth0") == []
        await dnsmasq.wait_event("add", storm_node.node.mac)
