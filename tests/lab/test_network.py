"""Simulated nodes get leases from a real dnsmasq, whose hook sees their DHCP classes."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import pytest

from lab import Lab

if TYPE_CHECKING:
    from conftest import Dnsmasq

pytestmark = [pytest.mark.lab, pytest.mark.asyncio(loop_scope="module")]


async def _address_of(lab: Lab, netns: str, ifname: str) -> str:
    shown = await lab.run(["ip", "-4", "-o", "addr", "show", "dev", ifname], netns=netns)
    return shown.stdout.split()[3]


async def test_vendor_class_reaches_the_hook(lab: Lab, dnsmasq: Dnsmasq) -> None:
    node = await lab.add_node()
    ip = await lab.node_dhcp(node, vendor_class="walt.node.pc-x86-64")

    first, last = lab.dhcp_range
    assert first <= ip <= last
    assert node.ip == ip
    assert await _address_of(lab, node.netns, node.ifname) == f"{ip}/24"
    event = await dnsmasq.wait_event("add", node.mac)
    assert event["argv"][:3] == ["add", node.mac, str(ip)]
    env = event["env"]
    assert env["DNSMASQ_VENDOR_CLASS"] == "walt.node.pc-x86-64"
    assert env["DNSMASQ_INTERFACE"] == lab.bridge
    assert "DNSMASQ_USER_CLASS0" not in env


async def test_user_class_reaches_the_hook_as_user_class0(lab: Lab, dnsmasq: Dnsmasq) -> None:
    node = await lab.add_node("52:54:00:12:34:56")
    ip = await lab.node_dhcp(node, user_class="walt.node.rpi-3-b")

    assert ip in lab.subnet
    event = await dnsmasq.wait_event("add", "52:54:00:12:34:56")
    env = event["env"]
    assert env["DNSMASQ_USER_CLASS0"] == "walt.node.rpi-3-b"
    # busybox's own vendor class: the user class alone says it is a node
    assert env["DNSMASQ_VENDOR_CLASS"].startswith("udhcp ")


async def test_nodes_reach_the_server_through_the_bridge(lab: Lab, dnsmasq: Dnsmasq) -> None:
    node = await lab.add_node()
    await lab.node_dhcp(node, vendor_class="walt.node.pc-x86-64")

    ping = ["busybox", "ping", "-c", "1", "-W", "2", str(lab.server_ip)]
    await lab.run(ping, netns=node.netns)
    # the node network lives in the server namespace only
    assert lab.bridge not in os.listdir("/sys/class/net")
