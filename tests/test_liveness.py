"""A booted node that goes silent is seen `down`: the daemon probes booted nodes every
boot.probe-interval-s, the kernel's address resolution fails for one that no longer answers,
and the netlink watch reports the failed neighbour.

Real components: waltd and its dnsmasq in a lab's server namespace, a simulated node that
leases with busybox udhcpc and reports booted over HTTP from its own namespace, then whose
link is taken down (it sends nothing more: only the probe can tell).
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from lab.lab import Lab
from tests.support.daemon import is_event
from tests.support.lab_daemon import lab_config, start_waltd, wait_record
from tests.support.labs import running_lab

pytestmark = pytest.mark.lab


@pytest.fixture
async def lab() -> AsyncIterator[Lab]:
    async with running_lab("dnsmasq", "busybox") as lab:
        yield lab


async def test_a_silent_booted_node_is_seen_down(lab: Lab) -> None:
    folder = lab.root / "waltd"
    folder.mkdir()
    config = lab_config(lab, folder, boot={"probe-interval-s": 1})
    waltd = await start_waltd(lab, config)
    try:
        await wait_record(waltd, is_event("dnsmasq_started"))
        node = await lab.add_node()
        await lab.node_dhcp(node, vendor_class="walt.node.pc-x86-64")
        await wait_record(waltd, is_event("node.detected", mac=node.mac))
        url = f"http://{lab.server_ip}/boot/booted"
        await lab.run(["busybox", "wget", "-q", "-O", "-", url], netns=node.netns)
        await wait_record(waltd, is_event("node.booted", mac=node.mac))
        # silent from now on, and unreachable
        await lab.run(["ip", "link", "set", node.ifname, "down"], netns=node.netns)
        down = await wait_record(waltd, is_event("node.down", mac=node.mac), timeout_s=30)
        assert down["name"].startswith("pc-x86-64-")
    finally:
        await lab.stop(waltd)
