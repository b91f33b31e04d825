"""Netlink neighbours and carrier of the node network (waltd.provision.neighbours).

The parsers get messages encoded and decoded by pyroute2, as the kernel's arrive. `watch`
runs against the real kernel: in the test's own namespace (its `lo`), and in a lab's server
namespace, where simulated nodes talk on the bridge and lose their link.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import secrets
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
from pyroute2.netlink import NLMSG_ERROR
from pyroute2.netlink.rtnl import RTM_DELLINK, RTM_DELNEIGH, RTM_NEWLINK, RTM_NEWNEIGH
from pyroute2.netlink.rtnl.ifinfmsg import IFF_LOWER_UP, IFF_UP, ifinfmsg
from pyroute2.netlink.rtnl.ndmsg import (
    NTF_PROXY,
    NUD_DELAY,
    NUD_FAILED,
    NUD_INCOMPLETE,
    NUD_NOARP,
    NUD_NONE,
    NUD_PERMANENT,
    NUD_PROBE,
    NUD_REACHABLE,
    NUD_STALE,
    ndmsg,
)

from lab import Lab, LabProcess
from lab.lab import Node
from tests.support.labs import running_lab
from tests.support.wait import until
from waltd.provision import neighbours
from waltd.provision.neighbours import (
    Carrier,
    Neighbour,
    WatchError,
    parse_link,
    parse_neighbour,
    watch,
)

REPO = Path(__file__).resolve().parents[1]
IFINDEX = 7
MAC = "52:54:00:ab:cd:01"


def _neigh(
    state: int = NUD_REACHABLE,
    dst: str | None = "10.1.2.3",
    lladdr: str | None = MAC,
    *,
    family: int = socket.AF_INET,
    ifindex: int = IFINDEX,
    kind: int = RTM_NEWNEIGH,
    flags: int = 0,
) -> ndmsg:
    """An ndmsg as the kernel's arrive: encoded, then decoded from its bytes."""
    msg = ndmsg()
    msg["header"]["type"] = kind
    msg["family"], msg["ifindex"], msg["state"], msg["flags"] = family, ifindex, state, flags
    attrs = [("NDA_DST", dst)] if dst is not None else []
    msg["attrs"] = attrs + ([("NDA_LLADDR", lladdr)] if lladdr is not None else [])
    msg.encode()
    decoded = ndmsg(msg.data)
    decoded.decode()
    return decoded


def _link(
    flags: int = IFF_UP | IFF_LOWER_UP,
    name: str | None = "br0",
    *,
    index: int = IFINDEX,
    family: int = socket.AF_UNSPEC,
    kind: int = RTM_NEWLINK,
) -> ifinfmsg:
    msg = ifinfmsg()
    msg["header"]["type"] = kind
    msg["family"], msg["index"], msg["flags"], msg["change"] = family, index, flags, 0
    msg["attrs"] = [("IFLA_IFNAME", name)] if name is not None else []
    msg.encode()
    decoded = ifinfmsg(msg.data)
    decoded.decode()
    return decoded


# ---- parse_neighbour -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "state", [NUD_REACHABLE, NUD_STALE, NUD_DELAY, NUD_PROBE, NUD_PERMANENT, NUD_NOARP]
)
def test_an_entry_with_an_answer_is_a_reachable_neighbour(state: int) -> None:
    assert parse_neighbour(_neigh(state), IFINDEX) == Neighbour(MAC, "10.1.2.3", True)


def test_the_mac_is_normalised() -> None:
    found = parse_neighbour(_neigh(lladdr="52:54:00:AB:CD:01"), IFINDEX)
    assert found == Neighbour(MAC, "10.1.2.3", True)


@pytest.mark.parametrize("state", [NUD_FAILED, NUD_INCOMPLETE])
def test_a_silent_entry_is_unreachable_with_the_mac_seen_before(state: int) -> None:
    # the kernel sends FAILED and INCOMPLETE entries without a link-layer address
    msg = _neigh(state, lladdr=None)
    assert parse_neighbour(msg, IFINDEX) is None
    known = {"10.1.2.3": Neighbour(MAC, "10.1.2.3", True)}
    assert parse_neighbour(msg, IFINDEX, known) == Neighbour(MAC, "10.1.2.3", False)
    other = {"10.1.2.4": Neighbour(MAC, "10.1.2.4", True)}
    assert parse_neighbour(msg, IFINDEX, other) is None


@pytest.mark.parametrize(
    ("msg", "why"),
    [
        (_neigh(ifindex=IFINDEX + 1), "another interface"),
        (_neigh(lladdr=None), "reachable without a link-layer address"),
        (_neigh(dst="fe80::1", family=socket.AF_INET6), "IPv6"),
        (_neigh(dst=None, family=socket.AF_BRIDGE), "a bridge forwarding entry"),
        (_neigh(kind=RTM_DELNEIGH), "an entry forgotten"),
        (_neigh(NUD_NONE), "no state"),
        (_neigh(flags=NTF_PROXY, lladdr=None), "a proxy entry"),
        (_neigh(NUD_NOARP, "224.0.0.22", "01:00:5e:00:00:16"), "a multicast address"),
        (_neigh(NUD_NOARP, "255.255.255.255", "ff:ff:ff:ff:ff:ff"), "the broadcast address"),
        (_neigh(NUD_NOARP, "10.1.2.255", "ff:ff:ff:ff:ff:ff"), "a broadcast MAC"),
        (_neigh(NUD_NOARP, "0.0.0.0", "00:00:00:00:00:00"), "the unspecified address"),
        (_neigh(dst=None), "no address"),
    ],
)
def test_other_messages_give_none(msg: ndmsg, why: str) -> None:
    assert parse_neighbour(msg, IFINDEX) is None, why


def test_the_dict_form_is_parsed_and_malformed_dicts_give_none() -> None:
    good: dict[str, Any] = _neigh().dump()
    assert isinstance(good["attrs"][0], list)
    assert parse_neighbour(good, IFINDEX) == Neighbour(MAC, "10.1.2.3", True)
    for broken in (
        {**good, "attrs": [["NDA_DST", "10.1.2.300"], ["NDA_LLADDR", MAC]]},
        {**good, "attrs": [["NDA_DST", 42], ["NDA_LLADDR", MAC]]},
        {**good, "attrs": [["NDA_DST", "10.1.2.3"], ["NDA_LLADDR", "zz:54:00:ab:cd:01"]]},
        {**good, "attrs": [["NDA_DST", "10.1.2.3"], ["NDA_LLADDR", "52:54:00:ab:cd"]]},
        {**good, "attrs": "NDA_DST"},
        {**good, "state": "reachable"},
        {**good, "header": None},
        {key: value for key, value in good.items() if key != "family"},
    ):
        assert parse_neighbour(broken, IFINDEX) is None, broken


def test_an_acknowledgement_gives_none() -> None:
    ack = {"header": {"type": NLMSG_ERROR, "error": None}}
    assert parse_neighbour(ack, IFINDEX) is None
    assert parse_link(ack, IFINDEX) is None


# ---- parse_link ------------------------------------------------------------------------------


def test_carrier_needs_the_interface_up_and_its_lower_layer_up() -> None:
    assert parse_link(_link(), IFINDEX) == Carrier("br0", True)
    assert parse_link(_link(IFF_UP), IFINDEX) == Carrier("br0", False)
    assert parse_link(_link(IFF_LOWER_UP), IFINDEX) == Carrier("br0", False)
    assert parse_link(_link(kind=RTM_DELLINK), IFINDEX) == Carrier("br0", False)
    assert parse_link(_link().dump(), IFINDEX) == Carrier("br0", True)


@pytest.mark.parametrize(
    ("msg", "why"),
    [
        (_link(index=IFINDEX + 1), "another interface"),
        (_link(family=socket.AF_BRIDGE), "a bridge port message"),
        (_link(name=None), "no name"),
        (_link(name="a/b"), "an invalid name"),
        (_neigh(), "a neighbour"),
    ],
)
def test_other_link_messages_give_none(msg: Any, why: str) -> None:
    assert parse_link(msg, IFINDEX) is None, why


# ---- watch in the test's own namespace --------------------------------------------------------


def _netlink_sockets() -> set[str]:
    """Inodes of this process's netlink sockets."""
    netlink = {
        line.split()[-1] for line in Path("/proc/self/net/netlink").read_text().splitlines()[1:]
    }
    mine = set()
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith("socket:["):
                mine.add(target[len("socket:[") : -1])
    return mine & netlink


async def test_watch_reports_the_carrier_first_and_closes_its_socket() -> None:
    before = _netlink_sockets()
    async with contextlib.aclosing(watch("lo")) as events:
        assert await anext(events) == Carrier("lo", True)
        assert len(_netlink_sockets() - before) == 1
    assert _netlink_sockets() == before


async def test_cancelling_a_watch_closes_its_socket() -> None:
    before = _netlink_sockets()
    first: asyncio.Future[Neighbour | Carrier] = asyncio.get_running_loop().create_future()

    async def follow() -> None:
        async for event in watch("lo"):
            if not first.done():
                first.set_result(event)

    task = asyncio.create_task(follow())
    assert await asyncio.wait_for(first, 10) == Carrier("lo", True)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert _netlink_sockets() == before


@pytest.mark.parametrize("name", [f"wlx{secrets.token_hex(4)}", "a/b", "x" * 16, ""])
async def test_an_interface_that_cannot_exist_here_is_named_in_the_error(name: str) -> None:
    before = _netlink_sockets()
    with pytest.raises(WatchError, match=repr(name)):
        await anext(watch(name))
    assert _netlink_sockets() == before


async def test_a_consumer_that_fell_behind_ends_the_watch(monkeypatch: pytest.MonkeyPatch) -> None:
    # no room at all: the first look at pyroute2's queue of unread datagrams ends the watch
    monkeypatch.setattr(neighbours, "MAX_BACKLOG", -1)
    before = _netlink_sockets()
    async with contextlib.aclosing(watch("lo")) as events:
        assert await anext(events) == Carrier("lo", True)
        with pytest.raises(WatchError, match="fell behind"):
            await anext(events)
    assert _netlink_sockets() == before


# ---- watch in a lab ----------------------------------------------------------------------------


class Watcher:
    """`tests.support.neighbours_watch` in the lab's server namespace, its lines as dicts."""

    def __init__(self, lab: Lab, proc: LabProcess) -> None:
        self.lab, self.proc = lab, proc

    @classmethod
    async def start(cls, lab: Lab, name: str = "watch") -> Watcher:
        argv = [sys.executable, "-m", "tests.support.neighbours_watch", lab.bridge]
        proc = await lab.spawn(name, argv, netns=lab.server_netns, cwd=REPO)
        return cls(lab, proc)

    def lines(self) -> list[dict[str, Any]]:
        found = []
        for line in self.proc.log.read_text(errors="replace").splitlines():
            with contextlib.suppress(ValueError):
                item = json.loads(line)
                if isinstance(item, dict) and "kind" in item:
                    found.append(item)
        return found

    async def wait(self, what: str, timeout_s: float = 10.0, **fields: Any) -> int:
        """Index of the first line holding `fields`, waiting for it."""

        def check() -> int | None:
            for index, line in enumerate(self.lines()):
                if all(line.get(key) == value for key, value in fields.items()):
                    return index + 1  # 1-based: a true value for `until`
            return None

        alive = None if fields.get("kind") == "error" else self.running
        found = await until(
            check, what=what, timeout_s=timeout_s, alive=alive, details=self.proc.log_tail
        )
        return found - 1

    def running(self) -> bool:
        return self.proc.process.returncode is None


async def _address(lab: Lab, node: Node, last: int) -> str:
    ip = lab.subnet.network_address + last
    await lab.run(
        ["ip", "addr", "add", f"{ip}/{lab.subnet.prefixlen}", "dev", node.ifname],
        netns=node.netns,
    )
    node.ip = ipaddress.IPv4Address(ip)
    return str(ip)


async def _ping(lab: Lab, ip: str, netns: str, *, check: bool = True) -> None:
    await lab.run(["busybox", "ping", "-c1", "-W1", ip], netns=netns, check=check)


@pytest.mark.lab
async def test_a_node_that_talks_is_reachable_and_one_that_left_becomes_unreachable() -> None:
    async with running_lab() as lab:
        early, late = await lab.add_node(), await lab.add_node()
        early_ip, late_ip = await _address(lab, early, 11), await _address(lab, late, 12)
        await _ping(lab, str(lab.server_ip), early.netns)

        watcher = await Watcher.start(lab)
        # the table as it was: the carrier, then the node that spoke before the watch
        await watcher.wait("the bridge's carrier", kind="Carrier", interface=lab.bridge, up=True)
        await watcher.wait("the early node from the dump", kind="Neighbour", mac=early.mac)
        first = watcher.lines()[:2]
        assert first == [
            {"kind": "Carrier", "interface": lab.bridge, "up": True},
            {"kind": "Neighbour", "mac": early.mac, "ip": early_ip, "reachable": True},
        ]

        await _ping(lab, str(lab.server_ip), late.netns)
        await watcher.wait(
            "the late node reachable", kind="Neighbour", mac=late.mac, ip=late_ip, reachable=True
        )

        # the late node's link goes down; the early one keeps the bridge's carrier up
        await lab.run(["ip", "link", "set", late.ifname, "down"], netns=late.netns)
        await _ping(lab, late_ip, lab.server_netns, check=False)
        await watcher.wait(
            "the late node unreachable (NUD_FAILED)",
            timeout_s=30,
            kind="Neighbour",
            mac=late.mac,
            ip=late_ip,
            reachable=False,
        )
        lines = watcher.lines()
        assert not [line for line in lines if line["kind"] == "Carrier" and not line["up"]]
        reported = [(line["mac"], line["reachable"]) for line in lines if line.get("mac")]
        # each change once: the probes between reachable and failed are not repeated
        assert reported.count((late.mac, True)) == 1
        assert reported.count((late.mac, False)) == 1
        assert watcher.running()


@pytest.mark.lab
async def test_the_carrier_follows_the_bridge_and_its_ports_until_the_bridge_goes() -> None:
    async with running_lab() as lab:
        node = await lab.add_node()
        watcher = await Watcher.start(lab)
        await watcher.wait("a carrier", kind="Carrier", up=True)

        steps = [
            (lab.bridge, "down", lab.server_netns, False),
            (lab.bridge, "up", lab.server_netns, True),
            (node.ifname, "down", node.netns, False),
            (node.ifname, "up", node.netns, True),
        ]
        for link, state, netns, up in steps:
            count = len(watcher.lines())
            await lab.run(["ip", "link", "set", link, state], netns=netns)

            def changed(count: int = count, up: bool = up) -> bool:
                return any(line["up"] is up for line in watcher.lines()[count:])

            await until(
                changed, what=f"carrier {up} after {link} {state}", details=watcher.proc.log_tail
            )

        carriers = [line["up"] for line in watcher.lines() if line["kind"] == "Carrier"]
        assert carriers == [True, False, True, False, True]

        await lab.run(["ip", "link", "del", lab.bridge], netns=lab.server_netns)
        end = await watcher.wait("the watch's end", kind="error")
        assert repr(lab.bridge) in watcher.lines()[end]["error"]
        assert "removed" in watcher.lines()[end]["error"]
        assert watcher.lines()[end - 1] == {"kind": "Carrier", "interface": lab.bridge, "up": False}
        await until(lambda: not watcher.running(), what="the watcher's exit")
        assert watcher.proc.process.returncode == 1


@pytest.mark.lab
async def test_the_first_dump_yields_at_most_max_neighbours() -> None:
    async with running_lab() as lab:
        node = await lab.add_node()
        node_ip = await _address(lab, node, 11)
        count = neighbours.MAX_NEIGHBOURS + 4
        # permanent entries: the kernel keeps them all, whatever its garbage-collection limits
        batch = lab.root / "neighbours.batch"
        batch.write_text(
            "".join(
                f"neigh add 172.20.{i // 250}.{i % 250 + 1} lladdr 52:54:01:00:{i // 256:02x}:"
                f"{i % 256:02x} dev {lab.bridge} nud permanent\n"
                for i in range(count)
            )
        )
        await lab.run(["ip", "-batch", str(batch)], netns=lab.server_netns)

        watcher = await Watcher.start(lab)
        await watcher.wait("the carrier", kind="Carrier")
        # a change after the dump: what comes before it is the whole first table
        await _ping(lab, str(lab.server_ip), node.netns)
        after = await watcher.wait("the node's line", kind="Neighbour", mac=node.mac, ip=node_ip)
        lines = watcher.lines()
        assert lines[0]["kind"] == "Carrier"
        table = lines[1:after]
        assert len(table) == neighbours.MAX_NEIGHBOURS
        assert all(line["kind"] == "Neighbour" and line["reachable"] for line in table)
        assert len({line["mac"] for line in table}) == neighbours.MAX_NEIGHBOURS
        assert "neighbours_left_out" in watcher.proc.log.read_text()
