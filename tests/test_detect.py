"""Lease events: model detection, the hook, message parsing, the daemon's spool and its watch."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import AsyncGenerator, Callable, Iterator
from dataclasses import replace
from ipaddress import IPv4Address, IPv4Interface
from pathlib import Path

import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from tests.conftest import require_tool
from tests.support.context import make_context
from tests.support.daemon import (
    ROOT,
    Daemon,
    is_event,
    is_lease,
    remove,
    run_hook,
    running,
    short_dir,
    spool_of,
    walt,
    write_config,
)
from tests.support.lab_daemon import lab_config, records, start_waltd, wait_record
from tests.support.labs import running_lab
from tests.support.wait import until
from waltd import config as configuration
from waltd import dhcp_event
from waltd.config import WaltNet
from waltd.context import Context
from waltd.db import Database, Node, StateError
from waltd.node_events import NodeEvent, Resync, Subscription
from waltd.provision import detect
from waltd.provision.detect import DetectionService
from waltd.provision.dnsmasq import KLIBC_TRUE
from waltd.provision.lease_events import LeaseEvent, TftpEvent, parse_message
from waltd.provision.neighbours import Carrier, Neighbour, WatchError
from waltd.provision.nodes import REPEAT_S, is_repeat, lease_state

MAC = "52:54:00:12:34:56"


def _message(**fields: object) -> bytes:
    base: dict[str, object] = {
        "action": "add",
        "mac": MAC,
        "ip": "10.0.0.5",
        "hostname": None,
        "vendor_class": "walt.node.pc-x86-64",
        "user_classes": [],
        "interface": "br0",
    }
    return json.dumps(base | fields).encode()


def test_parse_lease_and_tftp() -> None:
    ev = parse_message(_message(mac="52-54-00-12-34-56"))
    assert ev == LeaseEvent("add", MAC, "10.0.0.5", None, "walt.node.pc-x86-64", (), "br0")
    tftp = parse_message(
        json.dumps(
            {"action": "tftp", "size": "1024", "ip": "10.0.0.5", "file": "/x/bootstrap.ipxe"}
        ).encode()
    )
    assert tftp == TftpEvent("10.0.0.5", "/x/bootstrap.ipxe", 1024)


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (b"\xff\xfe", "not JSON"),
        (b"[1, 2]", "not a JSON object"),
        (_message(action="rm"), "unknown action"),
        (_message(mac="52:54:00:12:34"), "invalid MAC address"),
        (_message(ip="10.0.0.300"), "not an IPv4 address"),
        (_message(mac="52:54:00:12:34:5\udcff"), "non-printable"),
        (b"[" * 5000 + b"]" * 5000, "exceeds"),
        (b"[" * 4000 + b"]" * 4000, "not JSON"),
        (b"{" + b" " * 9000 + b"}", "exceeds"),
    ],
)
def test_malformed_messages_are_named(raw: bytes, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        parse_message(raw)


@pytest.mark.parametrize(
    ("raw", "problem"),
    [
        (_message(user_classes="walt.node.x"), "user_classes"),
        (_message(hostname="a\nb"), "control characters"),
        (_message(hostname="a\x7fb"), "non-printable"),
        (_message(vendor_class="walt.node.pc\x9b2J"), "non-printable"),
        (_message(hostname="a\ud800b"), "non-printable"),
        (_message(vendor_class="walt.node.pc-x86-64\udcff"), "non-printable"),
        (_message(user_classes=["iPXE", "\u2028"]), "non-printable"),
        (_message(vendor_class=5), "must be a string"),
        (_message(interface="x" * 16), "longer than 15"),
    ],
)
def test_an_unusable_optional_field_is_dropped_and_named(raw: bytes, problem: str) -> None:
    """The lease stays (a node must not vanish for one byte of its vendor class)."""
    event = parse_message(raw)
    assert isinstance(event, LeaseEvent) and (event.mac, event.ip) == (MAC, "10.0.0.5")
    (dropped,) = event.dropped
    assert problem in dropped


@given(st.binary(max_size=300))
def test_parser_never_crashes_on_garbage(raw: bytes) -> None:
    try:
        parse_message(raw)
    except ValueError:
        pass


def test_hook_builds_event_from_dnsmasq_call() -> None:
    env = {
        "DNSMASQ_VENDOR_CLASS": "PXEClient",
        "DNSMASQ_USER_CLASS0": "iPXE",
        "DNSMASQ_USER_CLASS1": "walt.node.pc-x86-64",
        "DNSMASQ_INTERFACE": "br0",
    }
    ev = dhcp_event.build_event(["old", MAC, "10.0.0.5", "node-123456"], env)
    assert ev["user_classes"] == ["iPXE", "walt.node.pc-x86-64"]
    assert ev["hostname"] == "node-123456" and ev["interface"] == "br0"
    assert parse_message(dhcp_event.encode(ev)).user_classes == ("iPXE", "walt.node.pc-x86-64")


def test_hook_spools_atomically_even_without_a_daemon(tmp_path: Path) -> None:
    spool = tmp_path / "spool"
    env = {
        **os.environ,
        dhcp_event.SPOOL_ENV: str(spool),
        "DNSMASQ_VENDOR_CLASS": "walt.node.pc-x86-64",
    }
    res = subprocess.run(
        [sys.executable, "-m", "waltd.dhcp_event", "add", MAC, "10.0.0.9"],
        env=env | {"PYTHONPATH": str(ROOT)},
        capture_output=True,
        timeout=10,
    )
    assert res.returncode == 0 and res.stdout == b""
    (file,) = spool.iterdir()
    assert file.suffix == ".json" and not file.name.startswith(".")
    assert parse_message(file.read_bytes()).vendor_class == "walt.node.pc-x86-64"


def test_hook_init_prints_nothing() -> None:
    assert dhcp_event.main(["init"]) == 0


@pytest.fixture
def folder() -> Iterator[Path]:
    path = short_dir()
    yield path
    remove(path)


def _events(d: Daemon) -> list[dict[str, object]]:
    res = walt(d.socket, "log", "show", "--json", "--limit", "0")
    return [json.loads(line) for line in res.stdout.splitlines()]


def test_events_reach_the_daemon_and_bad_ones_are_refused(folder: Path) -> None:
    d = Daemon(folder, write_config(folder), log_level="debug")  # a repeat's record
    try:
        d.start()
        run_hook(folder, "add", MAC, "10.0.0.5", DNSMASQ_USER_CLASS0="walt.node.rpi-3-b")
        d.wait_for(lambda e: e.get("event") == "node.detected")
        # dnsmasq repeats leases without classes after a restart: the model stays.
        run_hook(folder, "old", MAC, "10.0.0.5")
        run_hook(folder, "add", "02:00:00:00:00:01", "10.0.0.6", DNSMASQ_VENDOR_CLASS="udhcp 1.35")
        run_hook(folder, "tftp", "512", "10.0.0.5", "/tftp/nodes/x/start.ipxe")
        dhcp_event.spool(b'{"action": "add", "mac": "zz"}', str(spool_of(folder)))
        d.wait_for(lambda e: e.get("event") == "dhcp_event_malformed")
        d.wait_for(lambda e: e.get("event") == "tftp_transfer")
        events = {e["event"]: e for e in _events(d)}
        det = events["node.detected"]
        assert (det["mac"], det["ip"], det["model"], det["name"]) == (
            MAC,
            "10.0.0.5",
            "rpi-3-b",
            "rpi-3-b-123456",
        )
        assert events["node_lease_repeated"]["model"] == "rpi-3-b"
        assert events["unknown_device"]["mac"] == "02:00:00:00:00:01"
        assert "invalid MAC address" in str(events["dhcp_event_malformed"]["error"])
        status = json.loads(walt(d.socket, "status", "--json").stdout)
        assert status["nodes"] == 1
        assert {s["name"]: s["restarts"] for s in status["services"]}["detect"] == 0
        assert d.stop() == 0
    finally:
        d.kill()


def test_events_spooled_while_down_are_delivered_at_start(folder: Path) -> None:
    run_hook(folder, "add", MAC, "10.0.0.5", DNSMASQ_VENDOR_CLASS="walt.node.pc-x86-64")
    run_hook(folder, "old", MAC, "10.0.0.5")
    assert len(list(spool_of(folder).iterdir())) == 2
    d = Daemon(folder, write_config(folder), log_level="debug")  # a repeat's record
    try:
        d.start()
        d.wait_for(lambda e: e.get("event") == "dhcp_spool_drained")
        events = [e for e in _events(d) if e.get("mac") == MAC]
        # the `old` right after repeats what the `add` recorded
        assert [e["event"] for e in events] == ["node.detected", "node_lease_repeated"]
        assert all(e["model"] == "pc-x86-64" for e in events)
        assert list(spool_of(folder).iterdir()) == []
        assert d.stop() == 0
    finally:
        d.kill()


async def _spool_while_serving(
    svc: DetectionService, db: Database, put: Callable[[bytes], object]
) -> None:
    """With `svc` serving, `put` one event, wait until it is handled (its node recorded,
    then its file removed), then a second.

    The first may be taken by the pass at the start of `serve`; the second lands once that
    pass is over, so only the wake-up under test can bring it in.
    """

    async def handled(mac: str) -> bool:
        # the file goes only after the commit: a node alone may still have its file
        return await db.get_node(mac) is not None and not any(svc.spool.iterdir())

    serving = asyncio.create_task(svc.serve())
    try:
        for mac in ("52:54:00:00:00:02", MAC):
            put(_message(mac=mac))
            await until(
                lambda mac=mac: handled(mac),
                what=f"the spooled event of {mac} handled",
                alive=lambda: not serving.done(),
            )
    finally:
        serving.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await serving


async def test_an_event_renamed_into_the_spool_is_taken_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The inotify watch brings events in: the periodic look is an hour away here."""
    monkeypatch.setattr(detect, "SPOOL_TICK_S", 3600.0)
    ctx, svc = _service(tmp_path)
    async with ctx.db as db, svc:
        # written aside and renamed into place, as both hooks do
        await _spool_while_serving(svc, db, lambda raw: dhcp_event.spool(raw, str(svc.spool)))


async def test_a_file_linked_into_place_is_found_by_the_periodic_look(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A file that lands without a rename (no notice for the watch) waits for the periodic
    look, which finds it. It is hard-linked into the spool: whole at once, as a look
    could otherwise catch a file written in place half done, and no MOVED_TO notice."""
    monkeypatch.setattr(detect, "SPOOL_TICK_S", 0.2)
    ctx, svc = _service(tmp_path)
    names = iter(range(10))

    def linked(raw: bytes) -> None:
        aside = tmp_path / "aside.json"
        aside.write_bytes(raw)
        os.link(aside, svc.spool / f"{next(names):020d}-linked.json")
        aside.unlink()

    async with ctx.db as db, svc:
        await _spool_while_serving(svc, db, linked)


def _service(state: Path) -> tuple[Context, DetectionService]:
    ctx = make_context(state)
    return ctx, DetectionService(ctx)


def _break_nodes_table(db_path: Path) -> None:
    """Make the database fail every node query, as a damaged file would."""
    conn = sqlite3.connect(db_path)
    conn.execute("DROP TABLE nodes")
    conn.commit()
    conn.close()


def _remove_database(db_path: Path) -> None:
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db_path}{suffix}").unlink(missing_ok=True)


async def test_events_of_the_old_spool_move_to_the_runtime_folder(tmp_path: Path) -> None:
    """The spool was in the state folder before it moved to the runtime one: what an earlier
    daemon left there moves, in order and whole, and is recorded; nothing else remains."""
    ctx, svc = _service(tmp_path)
    old = tmp_path / detect.OLD_SPOOL
    first = dhcp_event.spool(_message(), str(old))
    second = dhcp_event.spool(_message(mac="52:54:00:00:00:02", ip="10.0.0.6"), str(old))
    (old / ".half-written.tmp").write_bytes(b"{")  # a hook interrupted mid-write
    with structlog.testing.capture_logs() as logs:
        async with ctx.db as db, svc:
            moved = sorted(svc.spool.iterdir())
            assert [p.name for p in moved] == [Path(first).name, Path(second).name]
            assert await svc.drain_spool() == 2
            assert {n.mac for n in await db.list_nodes()} == {MAC, "52:54:00:00:00:02"}
    assert not old.exists()
    (record,) = [r for r in logs if r["event"] == "dhcp_spool_moved"]
    assert record["count"] == 2


def test_a_spool_is_never_moved_onto_itself(tmp_path: Path) -> None:
    """A runtime folder configured as the state folder: the spool is the old one, and stays."""
    spool = tmp_path / detect.OLD_SPOOL
    event = dhcp_event.spool(_message(), str(spool))
    assert detect.adopt_spool(spool, spool) == 0
    assert [p.name for p in spool.iterdir()] == [Path(event).name]


async def test_a_lease_waits_for_the_database(tmp_path: Path) -> None:
    ctx, svc = _service(tmp_path)
    async with svc:
        dhcp_event.spool(_message(), str(svc.spool))
        assert await svc.drain_spool() == 0  # no database: the event stays
        async with ctx.db as db:
            draining = asyncio.create_task(svc.drain_spool())
            assert await asyncio.wait_for(draining, 2) == 1
            node = await db.get_node(MAC)
    assert node is not None and node.model == "pc-x86-64"
    assert list(svc.spool.iterdir()) == []


async def test_an_event_that_cannot_be_recorded_stays_in_the_spool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(detect, "DB_WAIT_S", 0.2)
    ctx, svc = _service(tmp_path)
    first, second = _message(), _message(mac="52:54:00:00:00:02", ip="10.0.0.6")
    async with svc:
        for raw in (first, second):
            dhcp_event.spool(raw, str(svc.spool))
        spooled = sorted(svc.spool.iterdir())
        async with ctx.db:
            _break_nodes_table(ctx.db.path)
            assert await svc.drain_spool() == 0  # failing: both stay, in order
            assert sorted(svc.spool.iterdir()) == spooled
            assert [p.read_bytes() for p in spooled] == [first, second]
        _remove_database(ctx.db.path)
        async with ctx.db as db:
            assert await svc.drain_spool() == 2
            assert {n.mac for n in await db.list_nodes()} == {MAC, "52:54:00:00:00:02"}
    assert list(svc.spool.iterdir()) == []


def test_an_old_lease_keeps_a_node_ready_or_booted() -> None:
    """dnsmasq's `old` repeats a lease it held (its restart): no new DHCP answer."""
    assert lease_state("old", "booted", "pc") == "booted"
    assert lease_state("old", "ready", "pc") == "ready"
    assert lease_state("add", "booted", "pc") == "ready"
    assert lease_state("old", "down", "pc") == "waiting"
    assert lease_state("old", None, "pc") == "waiting"
    assert lease_state("add", "unknown", "pc") == "waiting"
    assert lease_state("add", None, None) == "unknown"


def _recorded(**fields: object) -> Node:
    base: dict[str, object] = {
        "mac": MAC,
        "ip": "10.0.0.5",
        "name": "pc-x86-64-123456",
        "model": "pc-x86-64",
        "image": None,
        "state": "waiting",
        "first_seen": 1000.0,
        "last_seen": 1000.0,
        "announced": True,
    }
    return Node(**(base | fields))  # type: ignore[arg-type]


def test_a_lease_repeating_what_is_recorded_soon_after_is_a_repeat() -> None:
    """Only an `old` lease of an announced node, same address, model and state, within
    REPEAT_S of its last sighting (a clock that went back is no repeat)."""
    node = _recorded()
    soon = 1000.0 + REPEAT_S - 0.5
    assert is_repeat("old", node, ip="10.0.0.5", model="pc-x86-64", now=soon)
    assert is_repeat("old", _recorded(state="ready"), ip="10.0.0.5", model="pc-x86-64", now=soon)
    assert not is_repeat("add", node, ip="10.0.0.5", model="pc-x86-64", now=soon)
    assert not is_repeat("old", node, ip="10.0.0.6", model="pc-x86-64", now=soon)
    assert not is_repeat("old", node, ip="10.0.0.5", model="rpi-4-b", now=soon)
    assert not is_repeat("old", node, ip="10.0.0.5", model="pc-x86-64", now=1000.0 + REPEAT_S)
    assert not is_repeat("old", node, ip="10.0.0.5", model="pc-x86-64", now=999.0)
    assert not is_repeat(
        "old", _recorded(announced=False), ip="10.0.0.5", model="pc-x86-64", now=soon
    )
    # a lease brings a node that was down back to waiting: news
    assert not is_repeat("old", _recorded(state="down"), ip="10.0.0.5", model="pc-x86-64", now=soon)


async def test_a_repeated_lease_is_no_news_and_a_later_one_is(tmp_path: Path) -> None:
    """dnsmasq's `old` just after a node's first lease (its host entry names it) writes
    nothing and tells no service; the same lease once REPEAT_S passed, or with a new
    address, is a sighting: recorded and told."""
    ctx = make_context(tmp_path)
    async with ctx.db as db:
        with ctx.nodes.subscribe("test") as sub:
            async with DetectionService(ctx) as svc:
                _spool_lease(svc, MAC, "10.0.0.5")
                assert await svc.drain_spool() == 1
                assert [_shape(e) for e in await _node_events(sub)] == [("NodeSeen", MAC, True)]
                first = await db.get_node(MAC)
                assert first is not None
                with structlog.testing.capture_logs() as logs:
                    _spool_lease(svc, MAC, "10.0.0.5", action="old", vendor_class=None)
                    assert await svc.drain_spool() == 1
                assert await _node_events(sub) == []
                assert await db.get_node(MAC) == first
                (repeat,) = [r for r in logs if r.get("mac") == MAC]
                assert (repeat["event"], repeat["model"]) == ("node_lease_repeated", "pc-x86-64")

                await db.upsert_node(MAC, now=time.time() - REPEAT_S - 1)
                _spool_lease(svc, MAC, "10.0.0.5", action="old")
                assert await svc.drain_spool() == 1
                assert [_shape(e) for e in await _node_events(sub)] == [("NodeSeen", MAC, False)]
                later = await db.get_node(MAC)
                assert later is not None and later.last_seen > first.last_seen

                _spool_lease(svc, MAC, "10.0.0.6", action="old")
                assert await svc.drain_spool() == 1
                assert [_shape(e) for e in await _node_events(sub)] == [("NodeSeen", MAC, False)]
                moved = await db.get_node(MAC)
                assert moved is not None and moved.ip == "10.0.0.6"


async def test_a_pass_records_its_announcements_together(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nodes first seen in one pass over the spool are each announced once, then recorded
    as announced in one database call at the pass's end; an `old` of one of them in the same
    pass is a repeat all the same. A failed record is one error: they are announced again
    at the next start."""
    macs = [f"52:54:00:00:01:{i:02x}" for i in range(5)]
    ctx = make_context(tmp_path)
    async with ctx.db as db:
        calls: list[tuple[str, ...]] = []
        mark = db.mark_announced

        async def counted(*marked: str) -> None:
            calls.append(marked)
            await mark(*marked)

        monkeypatch.setattr(db, "mark_announced", counted)
        with ctx.nodes.subscribe("test") as sub:
            async with DetectionService(ctx) as svc:
                for i, mac in enumerate(macs):
                    _spool_lease(svc, mac, f"10.0.0.{10 + i}")
                _spool_lease(svc, macs[0], "10.0.0.10", action="old", vendor_class=None)
                assert await svc.drain_spool() == 6
                assert [_shape(e) for e in await _node_events(sub)] == [
                    ("NodeSeen", mac, True) for mac in macs
                ]
                assert calls == [tuple(macs)]
                assert await db.unannounced_nodes() == []

                async def fails(*marked: str) -> None:
                    raise StateError("disk full")

                monkeypatch.setattr(db, "mark_announced", fails)
                with structlog.testing.capture_logs() as logs:
                    _spool_lease(svc, PC, "10.0.0.9")
                    assert await svc.drain_spool() == 1
                assert [_shape(e) for e in await _node_events(sub)] == [("NodeSeen", PC, True)]
                (error,) = [r for r in logs if r["event"] == "node_announcements_not_recorded"]
                assert error["macs"] == [PC] and "disk full" in error["error"]
                assert [n.mac for n in await db.unannounced_nodes()] == [PC]


DEVICE = "02:00:00:00:00:01"
PC = "52:54:00:00:00:0a"
BAD = "52:54:00:00:00:0b"
PXE = {"DNSMASQ_VENDOR_CLASS": "PXEClient:Arch:00000:UNDI:002001"}


def _rows(state: Path) -> dict[str, tuple[object, ...]]:
    """The database's entries by MAC: (name, model, state, announced)."""
    conn = sqlite3.connect(state / "waltd.db")
    try:
        rows = conn.execute("SELECT mac, name, model, state, announced FROM nodes").fetchall()
    finally:
        conn.close()
    return {mac: tuple(rest) for mac, *rest in rows}


def test_devices_pcs_booting_and_a_lease_end(folder: Path) -> None:
    """An unknown device is recorded, not announced; a PC's boot conversation is booting,
    not unknown, and the PC is announced once it says its model; a class naming an
    impossible model is one warning; a lease end takes a node down, once."""
    d = Daemon(folder, write_config(folder)).start()
    try:
        state = folder / "state"
        run_hook(folder, "add", DEVICE, "10.0.0.6", DNSMASQ_VENDOR_CLASS="udhcp 1.35")
        run_hook(folder, "add", PC, "10.0.0.7", **PXE)
        run_hook(folder, "old", PC, "10.0.0.7", **PXE, DNSMASQ_USER_CLASS0="iPXE")
        run_hook(folder, "old", PC, "10.0.0.7", **PXE, DNSMASQ_USER_CLASS0="walt.node.pc-x86-64")
        run_hook(folder, "add", BAD, "10.0.0.8", DNSMASQ_USER_CLASS0="walt.node.../etc\u00e9")
        for _ in range(2):  # a second end changes nothing
            run_hook(folder, "del", PC, "10.0.0.7")
        run_hook(folder, "del", DEVICE, "10.0.0.6")
        d.wait_for(is_event("unknown_device", mac=DEVICE, action="del"))
        records = [r for r in d.records() if r.get("mac") in (DEVICE, PC, BAD)]
        named = [(r["event"], r["mac"]) for r in records if r.get("component") == "detect"]
        assert [r["stage"] for r in records if r["event"] == "node_booting"] == [
            "firmware-pxe",
            "ipxe-bootstrap",
        ]
        assert named.count(("node.detected", PC)) == 1
        assert not [e for e in named if e[1] != PC and e[0] == "node.detected"]
        (detected,) = [r for r in records if r["event"] == "node.detected"]
        assert (detected["name"], detected["state"]) == ("pc-x86-64-00000a", "waiting")
        (down,) = [r for r in records if r["event"] == "node.down"]
        assert (down["mac"], down["name"], down["model"]) == (PC, "pc-x86-64-00000a", "pc-x86-64")
        (invalid,) = [r for r in records if r.get("mac") == BAD]
        assert (invalid["event"], invalid["level"]) == ("node_class_invalid", "warning")
        assert invalid["node_class"] == "walt.node.../etc\\xe9"
        assert [r["action"] for r in records if r["event"] == "unknown_device"] == ["add", "del"]
        rows = _rows(state)
        assert rows[DEVICE] == ("unknown-000001", None, "unknown", 0)
        assert rows[BAD] == ("unknown-00000b", None, "unknown", 0)
        assert rows[PC] == ("pc-x86-64-00000a", "pc-x86-64", "down", 1)
        status = json.loads(walt(d.socket, "status", "--json").stdout)
        assert status["nodes"] == 1
        assert d.stop() == 0
    finally:
        d.kill()


def _spool_lease(svc: DetectionService, mac: str, ip: str, **fields: object) -> None:
    dhcp_event.spool(_message(mac=mac, ip=ip, **fields), str(svc.spool))


async def test_unknown_devices_beyond_the_bound_are_left_out(tmp_path: Path) -> None:
    """Devices of no model are recorded up to the bound; past it one warning (not one per
    device) and no row, while nodes and the devices already recorded go on."""
    ctx = make_context(tmp_path)
    devices = [f"02:00:00:00:00:{i:02x}" for i in range(5)]
    async with DetectionService(ctx, max_unknown=2) as svc, ctx.db as db:
        for i, mac in enumerate(devices):
            _spool_lease(svc, mac, f"10.0.0.{10 + i}", vendor_class="udhcp 1.35")
        _spool_lease(svc, MAC, "10.0.0.5")
        _spool_lease(svc, devices[1], "10.0.0.99", action="old", vendor_class=None)
        with structlog.testing.capture_logs() as logs:
            assert await svc.drain_spool() == 7
        entries = {n.mac: n for n in await db.list_nodes()}
    assert set(entries) == {devices[0], devices[1], MAC}
    assert entries[devices[1]].ip == "10.0.0.99" and entries[devices[1]].state == "unknown"
    assert entries[MAC].model == "pc-x86-64"
    (capped,) = [r for r in logs if r["event"] == "unknown_devices_capped"]
    assert (capped["limit"], capped["left_out"], capped["mac"]) == (2, 1, devices[2])
    unknown = [r["mac"] for r in logs if r["event"] == "unknown_device"]
    assert unknown == [devices[0], devices[1], devices[1]]


def _shape(event: object) -> tuple[str, str, object]:
    """An event as (its type, its MAC, its state or whether it is new)."""
    detail = getattr(event, "state", None) or getattr(event, "new", None)
    return type(event).__name__, getattr(event, "mac", ""), detail


async def _node_events(sub: Subscription) -> list[NodeEvent | Resync]:
    """The events queued for `sub`."""
    return [await sub.get() for _ in range(sub.pending())]


async def test_the_lease_file_at_start(tmp_path: Path) -> None:
    """Nodes holding leases are told to the services again (a booted one stays booted, a
    down one waits again), new ones announced once, devices recorded; a damaged line is
    one warning."""
    booted, down, rpi = "52:54:00:00:00:01", "52:54:00:00:00:02", "b8:27:eb:00:00:03"
    later = int(time.time()) + 3600
    folder = tmp_path / "dnsmasq"
    folder.mkdir()
    (folder / "leases").write_text(
        f"{later} {booted} 10.0.0.12 pc-x86-64-000001 *\n"
        f"{later} {down} 10.0.0.13 * *\n"
        "this is no lease\n"
        f"{later} {rpi} 10.0.0.14 * *\n"
        f"{later} {DEVICE} 10.0.0.15 * 01:02:00:00:00:00:01\n"
        f"{int(time.time()) - 10} 52:54:00:00:00:09 10.0.0.19 * *\n"
    )
    ctx = make_context(tmp_path)
    async with ctx.db as db:
        for mac, node_state in ((booted, "booted"), (down, "down")):
            await db.upsert_node(mac, ip="10.0.0.2", model="pc-x86-64", state=node_state)
            await db.mark_announced(mac)
        with ctx.nodes.subscribe("test") as sub, structlog.testing.capture_logs() as logs:
            async with DetectionService(ctx) as svc:
                assert await svc.read_lease_file() == 4
                first = await _node_events(sub)
                assert await svc.read_lease_file() == 4
                again = await _node_events(sub)
        entries = {n.mac: n for n in await db.list_nodes()}
    assert [_shape(e) for e in first] == [
        ("NodeSeen", booted, False),
        ("NodeState", down, "waiting"),
        ("NodeSeen", down, False),
        ("NodeSeen", rpi, True),
    ]
    assert not any(getattr(e, "new", False) for e in again)
    assert (entries[booted].state, entries[booted].ip) == ("booted", "10.0.0.12")
    assert (entries[down].state, entries[down].ip) == ("waiting", "10.0.0.13")
    assert (entries[rpi].model, entries[rpi].state) == ("rpi-unknown", "waiting")
    assert (entries[DEVICE].model, entries[DEVICE].state) == (None, "unknown")
    assert "52:54:00:00:00:09" not in entries
    damaged = [r for r in logs if r["event"] == "dhcp_lease_file_damaged"]
    assert damaged[0]["malformed"] == 1 and "line 3" in damaged[0]["first_problem"]


def _walt_net_config() -> configuration.Config:
    first, last = IPv4Address("10.0.0.10"), IPv4Address("10.0.0.99")
    net = WaltNet("wn0", IPv4Interface("10.0.0.1/24"), (first, last))
    return replace(configuration.default_config(), walt_net=net)


async def test_neighbours_take_nodes_down_and_bring_them_back(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Against a made-up watch (the real one is netlink's, tested in test_neighbours.py):
    a node that answers again waits again, one that stops answering is down, a Raspberry
    Pi that never took a lease is a node, another MAC is nobody; a failed watch is retried."""
    monkeypatch.setattr(detect, "WATCH_RETRY_MIN_S", 0.01)
    back, ready, rpi, silent_rpi = (
        "52:54:00:00:00:01",
        "52:54:00:00:00:02",
        "b8:27:eb:00:00:03",
        "b8:27:eb:00:00:04",
    )
    calls: list[str] = []

    async def watch(interface: str) -> AsyncGenerator[Neighbour | Carrier, None]:
        calls.append(interface)
        if len(calls) == 1:
            yield Carrier(interface, False)
            yield Carrier(interface, True)
            yield Neighbour(back, "10.0.0.21", True)
            yield Neighbour(ready, "10.0.0.22", False)
            yield Neighbour(rpi, "10.0.0.23", True)
            yield Neighbour(DEVICE, "10.0.0.24", True)
            yield Neighbour(silent_rpi, "10.0.0.25", False)
            raise WatchError("netlink went away")
        yield Neighbour(ready, "10.0.0.22", True)
        await asyncio.Event().wait()

    ctx = make_context(tmp_path, _walt_net_config())
    async with ctx.db as db:
        await db.upsert_node(back, model="pc-x86-64", state="down")
        await db.upsert_node(ready, model="pc-x86-64", state="ready")
        for mac in (back, ready):
            await db.mark_announced(mac)
        got: list[tuple[str, str, object]] = []
        with ctx.nodes.subscribe("test") as sub, structlog.testing.capture_logs() as logs:
            async with DetectionService(ctx, watch=watch) as svc:
                serving = asyncio.create_task(svc.serve())
                async with asyncio.timeout(10):
                    while len(got) < 6:
                        got.append(_shape(await sub.get()))
                serving.cancel()
                await asyncio.gather(serving, return_exceptions=True)
        entries = {n.mac: n for n in await db.list_nodes()}
    assert got == [
        ("NodeState", back, "waiting"),
        ("NodeSeen", back, False),
        ("NodeState", ready, "down"),
        ("NodeSeen", rpi, True),
        ("NodeState", ready, "waiting"),
        ("NodeSeen", ready, False),
    ]
    assert calls == ["wn0", "wn0"]
    assert (entries[back].ip, entries[rpi].model) == ("10.0.0.21", "rpi-unknown")
    assert DEVICE not in entries and silent_rpi not in entries
    carrier = [r["up"] for r in logs if r["event"] == "node_network_carrier"]
    assert carrier == [False, True]
    (failed,) = [r for r in logs if r["event"] == "neighbour_watch_failed"]
    assert "netlink went away" in failed["error"] and failed["interface"] == "wn0"


def _dnsmasq_pids(conf: Path) -> list[int]:
    """The dnsmasq processes (main and helper) running with configuration file `conf`."""
    return running("dnsmasq", f"--conf-file={conf}")


@pytest.mark.lab
async def test_leases_repeated_after_restarts_announce_nothing_twice() -> None:
    """Real dnsmasq and nodes: dnsmasq killed and restarted by waltd repeats every lease
    (`old`, without classes), then waltd restarts and reads the lease file as well; each node
    is announced once in all, keeps its model, and the unknown device is never a node.

    A repetition within REPEAT_S of the node's last sighting is recorded as a repeat (a
    debug record), a later one as a lease: the machine's speed decides which."""

    async with running_lab("dnsmasq") as lab:
        folder = lab.root / "waltd"
        folder.mkdir()
        conf = lab_config(lab, folder)
        waltd = await start_waltd(lab, conf, log_level="debug")
        await wait_record(waltd, is_event("dnsmasq_started"))
        b, c = lab.subnet.network_address.packed[1:3]
        pc = await lab.add_node()
        rpi = await lab.add_node(f"b8:27:eb:{b:02x}:{c:02x}:99")  # known by its MAC
        other = await lab.add_node()
        await lab.node_dhcp(pc, vendor_class="walt.node.pc-x86-64")
        for node in (rpi, other):
            await lab.node_dhcp(node)  # busybox's own vendor class
        for node in (pc, rpi):
            await wait_record(waltd, is_event("node.detected", mac=node.mac))
        await wait_record(waltd, is_event("unknown_device", mac=other.mac))

        dnsmasq_conf = folder / "run" / "dnsmasq" / "dnsmasq.conf"
        for pid in _dnsmasq_pids(dnsmasq_conf):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        await wait_record(waltd, is_event("dnsmasq_started"), after=1, timeout_s=20)
        for node, model in ((pc, "pc-x86-64"), (rpi, "rpi-unknown")):
            assert (await wait_record(waltd, is_lease(node.mac, action="old")))["model"] == model
        await wait_record(waltd, is_event("unknown_device", mac=other.mac, action="old"))
        assert await lab.stop(waltd) == 0

        again = await start_waltd(lab, conf, "waltd-again", log_level="debug")
        await wait_record(again, is_event("dnsmasq_started"))
        for node, model in ((pc, "pc-x86-64"), (rpi, "rpi-unknown")):
            # the lease file and dnsmasq's own repetition
            lease = await wait_record(again, is_lease(node.mac, action="old"), after=1)
            assert lease["model"] == model
        await wait_record(again, is_event("unknown_device", mac=other.mac, action="old"), after=1)
        assert await lab.stop(again) == 0
        runs = (records(waltd), records(again))
    both = runs[0] + runs[1]
    detected = sorted(r["mac"] for r in both if r.get("event") == "node.detected")
    assert detected == sorted([pc.mac, rpi.mac])
    crashed = [r["service"] for r in both if r.get("event") == "service_crashed"]
    assert crashed == ["dnsmasq"]  # the kill, and nothing else
    # the installed dnsmasq has Lua: every start took the Lua hook
    assert [r["kind"] for r in both if r.get("event") == "dhcp_hook"] == ["lua"] * 3
    # ...beside klibc's `true`, which the set-up installs: the classes came with it
    assert {r["script"] for r in both if r.get("event") == "dhcp_hook"} == {str(KLIBC_TRUE)}
    assert not [r for r in both if r.get("event") == "node_class_invalid"]
    # the neighbour watch ran on the node network all along (netlink, in the server's namespace)
    for run in runs:
        carrier = [r["up"] for r in run if r.get("event") == "node_network_carrier"]
        assert carrier[-1] is True  # ports joining the bridge may flap it first
    assert not [r for r in both if r.get("event") == "neighbour_watch_failed"]


@pytest.mark.lab
async def test_a_dnsmasq_without_lua_reports_leases_through_the_exec_hook() -> None:
    """A dnsmasq built without Lua (Debian's plain dnsmasq-base): one warning at start, and
    the exec hook brings every lease in with its classes."""
    real = require_tool("dnsmasq")
    async with running_lab("dnsmasq") as lab:
        tools = lab.root / "no-lua"
        tools.mkdir()
        wrapper = tools / "dnsmasq"
        # the real dnsmasq, whose version says it has no Lua
        wrapper.write_text(
            "#!/bin/sh\n"
            f'if [ "$1" = --version ]; then {real} --version | sed "s/ Lua / no-Lua /"; exit; fi\n'
            f'exec {real} "$@"\n'
        )
        wrapper.chmod(0o755)
        folder = lab.root / "waltd"
        folder.mkdir()
        argv = [sys.executable, "-m", "waltd", "--config", str(lab_config(lab, folder))]
        path = f"{tools}:{os.environ.get('PATH', '')}"
        waltd = await lab.spawn(
            "waltd", argv, netns=lab.server_netns, env={"PYTHONPATH": str(ROOT), "PATH": path}
        )
        await wait_record(waltd, is_event("dnsmasq_started"))
        node = await lab.add_node()
        await lab.node_dhcp(node, vendor_class="walt.node.pc-x86-64", user_class="iPXE")
        detected = await wait_record(waltd, is_event("node.detected", mac=node.mac))
        assert detected["model"] == "pc-x86-64"
        assert await lab.stop(waltd) == 0
        (slow,) = [r for r in records(waltd) if r.get("event") == "dhcp_hook_slow"]
        assert slow["kind"] == "exec" and "dnsmasq-base-lua" in slow["hint"]
        conf = (folder / "run" / "dnsmasq" / "dnsmasq.conf").read_text().splitlines()
        assert f"dhcp-script={folder / 'run' / 'dnsmasq' / 'dhcp-hook'}" in conf
        assert not any(line.startswith("dhcp-luascript=") for line in conf)
