"""Lease events: model detection, the hook, message parsing, the daemon's socket and spool."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tests.support.context import make_context
from tests.support.daemon import ROOT, Daemon, remove, run_hook, short_dir, walt, write_config
from waltd import dhcp_event
from waltd.context import Context
from waltd.provision import detect
from waltd.provision.detect import DetectionService, LeaseEvent, TftpEvent, parse_message
from waltd.provision.models import RPI_UNKNOWN_MODEL, detect_model, model_from_class

MAC = "52:54:00:12:34:56"


def test_model_from_vendor_user_class_and_mac_prefix() -> None:
    assert detect_model(MAC, "walt.node.pc-x86-64", []) == "pc-x86-64"
    assert detect_model(MAC, "PXEClient:Arch:00000", ["iPXE", "walt.node.rpi-3-b"]) == "rpi-3-b"
    assert detect_model("B8-27-EB-00-00-01", None, []) == RPI_UNKNOWN_MODEL
    assert detect_model(MAC, "PXEClient:Arch:00000:UNDI:002001", ["iPXE"]) is None
    assert detect_model(MAC, "udhcp 1.35.0", []) is None


@pytest.mark.parametrize(
    "value",
    [
        "walt.node.",
        "walt.node.../etc",
        "walt.node.a b",
        "walt.node." + "x" * 65,
        "walt.node.UPPER",
        "xwalt.node.pc",
    ],
)
def test_impossible_models_are_not_trusted(value: str) -> None:
    assert model_from_class(value) is None


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
        dhcp_event.SOCKET_ENV: str(tmp_path / "absent.sock"),
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
    d = Daemon(folder, write_config(folder))
    try:
        d.start()
        state = folder / "state"
        run_hook(state, "add", MAC, "10.0.0.5", DNSMASQ_USER_CLASS0="walt.node.rpi-3-b")
        d.wait_for(lambda e: e.get("event") == "node_detected")
        # dnsmasq repeats leases without classes after a restart: the model stays.
        run_hook(state, "old", MAC, "10.0.0.5")
        run_hook(state, "add", "02:00:00:00:00:01", "10.0.0.6", DNSMASQ_VENDOR_CLASS="udhcp 1.35")
        run_hook(state, "tftp", "512", "10.0.0.5", "/tftp/nodes/x/start.ipxe")
        dhcp_event.spool(b'{"action": "add", "mac": "zz"}', str(state / "dhcp-spool"))
        dhcp_event.wake(str(state / "dhcp-events.sock"))
        d.wait_for(lambda e: e.get("event") == "dhcp_event_malformed")
        d.wait_for(lambda e: e.get("event") == "tftp_transfer")
        events = {e["event"]: e for e in _events(d)}
        det = events["node_detected"]
        assert (det["mac"], det["ip"], det["model"], det["name"]) == (
            MAC,
            "10.0.0.5",
            "rpi-3-b",
            "node-123456",
        )
        assert events["node_lease"]["model"] == "rpi-3-b"
        assert events["unknown_device"]["mac"] == "02:00:00:00:00:01"
        assert "invalid MAC address" in str(events["dhcp_event_malformed"]["error"])
        status = json.loads(walt(d.socket, "status", "--json").stdout)
        assert status["nodes"] == 1
        assert {s["name"]: s["restarts"] for s in status["services"]}["detect"] == 0
        assert d.stop() == 0
    finally:
        d.kill()


def test_events_spooled_while_down_are_delivered_at_start(folder: Path) -> None:
    state = folder / "state"
    run_hook(state, "add", MAC, "10.0.0.5", DNSMASQ_VENDOR_CLASS="walt.node.pc-x86-64")
    run_hook(state, "old", MAC, "10.0.0.5")
    assert len(list((state / "dhcp-spool").iterdir())) == 2
    d = Daemon(folder, write_config(folder))
    try:
        d.start()
        d.wait_for(lambda e: e.get("event") == "dhcp_spool_drained")
        events = [e for e in _events(d) if e.get("mac") == MAC]
        assert [e["event"] for e in events] == ["node_detected", "node_lease"]
        assert all(e["model"] == "pc-x86-64" for e in events)
        assert list((state / "dhcp-spool").iterdir()) == []
        assert d.stop() == 0
    finally:
        d.kill()


def test_hook_never_waits_on_a_full_queue(folder: Path) -> None:
    """The kernel queues ~10 datagrams: with the daemon's queue full (a burst, a frozen
    daemon) the hook still returns at once, its event safe in the spool."""
    state = folder / "state"
    path = str(state / "dhcp-events.sock")
    state.mkdir()
    daemon = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    daemon.bind(path)
    filler = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        with pytest.raises(BlockingIOError):
            while True:
                filler.sendto(b"", socket.MSG_DONTWAIT, path)
        began = time.monotonic()
        run_hook(state, "add", MAC, "10.0.0.5", DNSMASQ_VENDOR_CLASS="walt.node.pc-x86-64")
        assert time.monotonic() - began < 5  # a Python start-up, never a send timeout
        (file,) = (state / "dhcp-spool").iterdir()
        assert parse_message(file.read_bytes()).mac == MAC
    finally:
        filler.close()
        daemon.close()


def test_events_spooled_while_running_are_delivered(folder: Path) -> None:
    d = Daemon(folder, write_config(folder))
    try:
        d.start()
        state = folder / "state"
        event = dhcp_event.build_event(
            ["add", MAC, "10.0.0.5"], {"DNSMASQ_VENDOR_CLASS": "walt.node.pc-x86-64"}
        )
        # The hook's spooling without its wake-up (lost to a full queue): the periodic look
        # at the spool finds it.
        dhcp_event.spool(dhcp_event.encode(event), str(state / "dhcp-spool"))
        detected = d.wait_for(lambda e: e.get("event") == "node_detected", timeout=6)
        assert detected["mac"] == MAC
        assert list((state / "dhcp-spool").iterdir()) == []
        assert d.stop() == 0
    finally:
        d.kill()


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
