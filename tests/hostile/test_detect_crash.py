"""Hostile conditions for lease detection: a frozen or killed daemon, floods, interruptions
at every step, and bytes no DHCP client should send. Real daemon processes and hook calls."""

from __future__ import annotations

import asyncio
import json
import signal
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.context import make_context
from tests.support.daemon import (
    Daemon,
    remove,
    run_hook,
    short_dir,
    spool_of,
    walt,
    write_config,
)
from waltd import dhcp_event
from waltd.node_events import NodeSeen
from waltd.provision.detect import MAX_UNKNOWN_DEVICES, DetectionService


@pytest.fixture
def folder() -> Iterator[Path]:
    path = short_dir()
    yield path
    remove(path)


def _mac(i: int) -> str:
    return f"52:54:00:00:{i >> 8:02x}:{i & 0xFF:02x}"


def _node_count(d: Daemon) -> int:
    status = json.loads(walt(d.socket, "status", "--json").stdout)
    return int(status["nodes"])


def _wait_nodes(d: Daemon, count: int, timeout: float = 60) -> None:
    d.wait_for(lambda e: e.get("event") == "dhcp_spool_drained", timeout=timeout)
    deadline = time.monotonic() + timeout
    while _node_count(d) < count:
        assert time.monotonic() < deadline, f"{_node_count(d)} nodes of {count}"
        d.wait_for(lambda e: e.get("event") == "dhcp_spool_drained", timeout=timeout)


def test_leases_handed_to_a_frozen_daemon_survive_its_sigkill(folder: Path) -> None:
    """Once the hook returned, the event is the daemon's: a SIGKILL loses none of them."""
    conf = write_config(folder)
    first = Daemon(folder, conf).start()
    try:
        first.signal(signal.SIGSTOP)
        for i in range(5):
            run_hook(folder, "add", _mac(i), f"10.0.0.{i + 2}", DNSMASQ_VENDOR_CLASS="walt.node.x")
        first.proc.kill()  # type: ignore[union-attr]
        first.proc.wait()  # type: ignore[union-attr]
    finally:
        first.kill()
    second = Daemon(folder, conf).start()
    try:
        _wait_nodes(second, 5)
        detected = [r["mac"] for r in second.records() if r.get("event") == "node.detected"]
        assert sorted(detected) == [_mac(i) for i in range(5)]
        assert second.stop() == 0
    finally:
        second.kill()


def test_a_flood_does_not_stretch_the_stop_beyond_its_budget(folder: Path) -> None:
    """Thousands of spooled leases: SIGTERM stops within the 3 s budget, nothing is lost."""
    conf = write_config(folder)
    count = 1500
    d = Daemon(folder, conf).start()
    try:
        d.signal(signal.SIGSTOP)
        for i in range(count):
            event = dhcp_event.build_event(
                ["add", _mac(i), "10.0.1.1"], {"DNSMASQ_VENDOR_CLASS": "walt.node.x"}
            )
            dhcp_event.spool(dhcp_event.encode(event), str(spool_of(folder)))
        d.signal(signal.SIGCONT)
        d.wait_for(lambda e: e.get("event") == "node.detected")
        began = time.monotonic()
        assert d.stop() == 0
        assert time.monotonic() - began < 3 + 1.5
    finally:
        d.kill()
    before = d.records()
    again = Daemon(folder, conf).start()
    try:
        _wait_nodes(again, count)
        assert list(spool_of(folder).iterdir()) == []
        detected = [r for r in before + again.records() if r.get("event") == "node.detected"]
        assert len(detected) == count == len({r["mac"] for r in detected})
        assert again.stop() == 0
    finally:
        again.kill()


def test_a_stray_byte_in_a_class_keeps_the_lease(folder: Path) -> None:
    """A vendor class holding byte 0xff (as a broken firmware sends): the node is still
    detected from its user class, and one warning names the MAC and the dropped field."""
    d = Daemon(folder, write_config(folder)).start()
    try:
        # str values are encoded with surrogateescape: '\udcff' reaches the hook as byte 0xff
        run_hook(
            folder,
            "add",
            _mac(1),
            "10.0.0.9",
            DNSMASQ_VENDOR_CLASS="PXEClient\udcff",
            DNSMASQ_USER_CLASS0="walt.node.rpi-3-b",
        )
        detected = d.wait_for(lambda e: e.get("event") == "node.detected")
        assert (detected["mac"], detected["model"]) == (_mac(1), "rpi-3-b")
        (warning,) = [r for r in d.records() if r.get("event") == "dhcp_fields_dropped"]
        assert warning["mac"] == _mac(1) and "vendor_class" in warning["problems"][0]
        assert d.stop() == 0
    finally:
        d.kill()


def _committed(db_path: Path, mac: str) -> bool:
    conn = sqlite3.connect(db_path)
    try:
        return conn.execute("SELECT 1 FROM nodes WHERE mac = ?", (mac,)).fetchone() is not None
    finally:
        conn.close()


async def test_a_lease_interrupted_after_its_commit_is_announced_exactly_once(
    tmp_path: Path,
) -> None:
    """Detection is cancelled as soon as each node's row is committed (the window where a
    replay used to take it for an old lease); after a restart every node has been
    announced once: one NodeSeen(new) each, which is what gives dnsmasq its host entry."""
    ctx = make_context(tmp_path)
    announced: list[str] = []
    interrupted_after_commit = 0

    def take(event: object) -> None:
        if isinstance(event, NodeSeen) and event.new:
            announced.append(event.mac)

    with ctx.nodes.subscribe("test") as seen:
        async with ctx.db:
            for i in range(20):
                mac = _mac(i)
                event = dhcp_event.build_event(
                    ["add", mac, "10.0.0.2"], {"DNSMASQ_VENDOR_CLASS": "walt.node.x"}
                )
                dhcp_event.spool(dhcp_event.encode(event), str(tmp_path / "run" / "dhcp-spool"))
                async with DetectionService(ctx) as svc:
                    draining = asyncio.create_task(svc.drain_spool())
                    # polling is the point: cancel in the instant the commit is visible
                    while not draining.done() and not _committed(ctx.db.path, mac):  # noqa: ASYNC110
                        await asyncio.sleep(0)
                    draining.cancel()
                    await asyncio.gather(draining, return_exceptions=True)
                node = await ctx.db.get_node(mac)
                interrupted_after_commit += node is not None and not node.announced
                while seen.pending():
                    take(await seen.get())
                if mac in announced:
                    continue
                # a restart: what was left unannounced is announced, the spool replayed
                async with DetectionService(ctx) as svc:
                    serving = asyncio.create_task(svc.serve())
                    async with asyncio.timeout(10):
                        while mac not in announced:
                            take(await seen.get())
                    serving.cancel()
                    await asyncio.gather(serving, return_exceptions=True)
            async with DetectionService(ctx) as svc:
                while await svc.drain_spool():
                    pass
                assert list(svc.spool.iterdir()) == []
            while seen.pending():
                take(await seen.get())
            assert await ctx.db.unannounced_nodes() == []
    assert sorted(announced) == [_mac(i) for i in range(20)]
    # the test reached the window it is about at least once
    assert interrupted_after_commit > 0


def test_a_flood_of_made_up_devices_is_bounded(folder: Path) -> None:
    """More devices of no model than the bound (4096), each a made-up MAC: that many are
    recorded, the rest make one warning, and a node coming after them is still detected."""
    conf = write_config(folder)
    state = folder / "state"
    count = MAX_UNKNOWN_DEVICES + 50
    for i in range(count):
        mac = f"02:00:00:{i >> 16:02x}:{i >> 8 & 0xFF:02x}:{i & 0xFF:02x}"
        event = dhcp_event.build_event(["add", mac, "10.0.2.1"], {})
        dhcp_event.spool(dhcp_event.encode(event), str(spool_of(folder)))
    node = dhcp_event.build_event(
        ["add", _mac(1), "10.0.2.2"], {"DNSMASQ_VENDOR_CLASS": "walt.node.x"}
    )
    dhcp_event.spool(dhcp_event.encode(node), str(spool_of(folder)))
    d = Daemon(folder, conf).start()
    try:
        d.wait_for(lambda e: e.get("event") == "node.detected", timeout=120)
        records = d.records()
        (capped,) = [r for r in records if r.get("event") == "unknown_devices_capped"]
        assert capped["limit"] == MAX_UNKNOWN_DEVICES and capped["level"] == "warning"
        unknown = [r for r in records if r.get("event") == "unknown_device"]
        assert len(unknown) == MAX_UNKNOWN_DEVICES
        conn = sqlite3.connect(state / "waltd.db")
        try:
            rows = conn.execute("SELECT count(*) FROM nodes WHERE model IS NULL").fetchone()
        finally:
            conn.close()
        assert rows == (MAX_UNKNOWN_DEVICES,)
        assert _node_count(d) == 1
        assert d.stop() == 0
    finally:
        d.kill()
