"""End to end: `walt node create vnode1` -> DHCP -> the default image fetched from the hub
stand-in -> mounted and exported -> QEMU boots through iPXE, TFTP and HTTP -> its kernel
mounts the root over NFS from ganesha -> the node reports booted -> `walt node show` says
`booted`.

Everything is real: waltd with its dnsmasq, ganesha, rpcbind and HTTP boot server in a lab's
server namespace; a docker-registry standing in for Docker Hub's registry, holding the
bootable image lab/pc_image.py builds offline from Debian packages; QEMU (`-accel tcg`)
on a tap of the node bridge, started by waltd itself.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from lab.default_images import publish
from lab.images import build_image, push_image
from lab.lab import Lab
from lab.pc_image import build_pc_image
from tests.support.daemon import is_event, walt
from tests.support.lab_daemon import hub_config, records, start_waltd, wait_record
from tests.support.labs import running_lab

pytestmark = pytest.mark.lab

TOOLS = ("dnsmasq", "docker-registry", "skopeo", "buildah", "podman", "apt-get")
BOOT_TOOLS = ("ganesha.nfsd", "rpcbind", "qemu-system-x86_64")


@pytest.fixture
async def lab() -> AsyncIterator[Lab]:
    async with running_lab(*TOOLS, *BOOT_TOOLS) as lab:
        yield lab


async def test_a_virtual_node_boots_from_waltd(lab: Lab, package_cache: Path) -> None:
    hub = await lab.start_registry("hub")
    await publish(lab, await build_pc_image(lab, package_cache), hub)
    config = hub_config(lab, hub.url)
    waltd = await start_waltd(lab, config)
    sock = config.parent / "api.sock"
    try:
        await wait_record(waltd, is_event("daemon_ready"))
        began = time.monotonic()
        created = await asyncio.to_thread(walt, sock, "node", "create", "vnode1")
        assert created.returncode == 0, created.stdout + created.stderr
        started = await wait_record(waltd, is_event("vnode.started"))
        mac = started["mac"]
        booted = await wait_record(waltd, is_event("node.booted", mac=mac), timeout_s=300)
        took = time.monotonic() - began
        listing = json.loads((await asyncio.to_thread(walt, sock, "node", "show", "--json")).stdout)
        row = next(r for r in listing["nodes"] if r["mac"] == mac)
        assert (row["name"], row["state"], row["model"]) == ("vnode1", "booted", "pc-x86-64")
        assert row["image"] == "waltplatform/pc-x86-64-default"
        assert booted["ip"] == row["ip"]
        # each stage happened, in order, and the image came from the hub stand-in
        seen = records(waltd)
        order = [
            is_event("vnode.started", mac=mac),
            is_event("image.fetch.done", model="pc-x86-64", source="hub"),
            is_event("node.exported", mac=mac),
            is_event("node.booted", mac=mac),
        ]
        positions = [next(i for i, r in enumerate(seen) if match(r)) for match in order]
        assert positions == sorted(positions)
        # the kernel's own console says where its root came from
        console = await asyncio.to_thread(walt, sock, "node", "console", "vnode1", "--no-follow")
        assert "WALT NODE BOOTED" in console.stdout
        print(f"vnode1 booted {took:.1f} s after walt node create")
        # `walt node boot`: a virtual node is reset and boots (again) what it was given
        again = await asyncio.to_thread(walt, sock, "node", "boot", "vnode1", "default")
        assert again.returncode == 0, again.stdout + again.stderr
        assert "vnode1 will boot waltplatform/pc-x86-64-default: reset now" in again.stdout
        await wait_record(waltd, is_event("vnode.reset", mac=mac))
        await wait_record(waltd, is_event("node.booted", mac=mac), after=1, timeout_s=300)
    finally:
        await lab.stop(waltd, grace_s=15)


async def test_a_virtual_node_that_does_not_boot_is_reset_then_left(lab: Lab) -> None:
    """An image whose start script never boots anything: after boot.timeout-s the node is
    logged and reset (it asks for its lease again), once (boot.retries 1), then only logged."""
    hub = await lab.start_registry("hub")
    stuck = "docker.io/waltplatform/pc-x86-64-default:latest"
    files = {"boot/pc-x86-64/start.ipxe": "#!ipxe\necho this image never boots\nsleep 3600\n"}
    await build_image(lab, stuck, ["pc-x86-64"], files)
    await push_image(lab, stuck, hub)
    config = hub_config(lab, hub.url, boot={"timeout-s": 4, "retries": 1})
    waltd = await start_waltd(lab, config)
    sock = config.parent / "api.sock"
    try:
        await wait_record(waltd, is_event("daemon_ready"))
        created = await asyncio.to_thread(walt, sock, "node", "create", "stuck1")
        assert created.returncode == 0, created.stdout + created.stderr
        mac = (await wait_record(waltd, is_event("vnode.started")))["mac"]
        first = await wait_record(waltd, is_event("node.boot_timeout", mac=mac), timeout_s=120)
        assert (first["action"], first["resets"]) == ("reset", 0)
        second = await wait_record(
            waltd, is_event("node.boot_timeout", mac=mac), after=1, timeout_s=120
        )
        assert (second["action"], second["resets"]) == ("none", 1)
        # the reset made it boot again: the firmware started a second time on its console,
        # and it ran its image's script
        console = await asyncio.to_thread(walt, sock, "node", "console", "stuck1", "--no-follow")
        assert console.stdout.count("SeaBIOS") == 2, console.stdout[-2000:]
        assert "this image never boots" in console.stdout
        assert not any(is_event("node.booted", mac=mac)(r) for r in records(waltd))
    finally:
        await lab.stop(waltd, grace_s=15)
