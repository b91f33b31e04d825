"""`walt node show`: its tables, GET /v1/nodes on a real database, and a real daemon whose
nodes and devices come from leases through dnsmasq's hook."""

from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_tool
from tests.support.context import make_context
from tests.support.daemon import (
    Daemon,
    is_event,
    remove,
    run_hook,
    short_dir,
    walt,
    write_config,
)
from tests.support.users import unix_user
from waltd.api import nodes as api_nodes
from waltd.api import wire
from waltd.api.server import ApiService
from waltd.cli.client import Client, ClientError
from waltd.cli.nodes import (
    DEVICE_HEADERS,
    DEVICES_TITLE,
    MODEL_HEADERS,
    MODELS_TITLE,
    NO_NODES,
    NODE_HEADERS,
    show_text,
)
from waltd.config import default_config
from waltd.db import Node
from waltd.node_events import ModelNew
from waltd.provision import nodes as states

# 2026-09-22 12:26:40 UTC
SEEN = 1_790_080_000.0


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Times shown in UTC, whatever the machine's zone."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def _row(name: str, mac: str, model: str | None, **fields: Any) -> wire.NodeRow:
    base: dict[str, Any] = {
        "image": None,
        "state": states.WAITING if model else states.UNKNOWN,
        "ip": None,
        "first_seen": SEEN,
        "last_seen": SEEN,
    }
    return wire.NodeRow(name=name, mac=mac, model=model, **{**base, **fields})


def _lines(text: str) -> list[str]:
    return text.splitlines()


def test_nodes_by_name_devices_apart_and_default_images_with_all(utc: None) -> None:
    listing = wire.NodeListing(
        nodes=(
            _row("rpi-3-b-00000b", "b8:27:eb:00:00:0b", "rpi-3-b", ip="10.0.0.11"),
            _row(
                "pc-x86-64-00000a",
                "52:54:00:00:00:0a",
                "pc-x86-64",
                image="bob/pc-tests:v2",
                state=states.READY,
                ip="10.0.0.10",
            ),
        ),
        devices=(
            _row("unknown-000002", "02:00:00:00:00:02", None, first_seen=SEEN + 60),
            _row("unknown-000001", "02:00:00:00:00:01", None, ip="10.0.0.12"),
        ),
        models=(
            wire.ModelRow("rpi-3-b", "waltplatform/rpi-3-b-default", "failed", "hub: 503", SEEN),
            wire.ModelRow("pc-x86-64", "waltplatform/pc-x86-64-default", "ready", None, None),
        ),
    )
    assert _lines(show_text(listing, everyone=False)) == [
        "Name             | Model     | Image           | State   | IP",
        "-----------------+-----------+-----------------+---------+----------",
        "pc-x86-64-00000a | pc-x86-64 | bob/pc-tests:v2 | ready   | 10.0.0.10",
        "rpi-3-b-00000b   | rpi-3-b   | -               | waiting | 10.0.0.11",
        "",
        DEVICES_TITLE,
        "MAC               | IP        | First seen",
        "------------------+-----------+-----------------",
        "02:00:00:00:00:01 | 10.0.0.12 | 2026-09-22 12:26",
        "02:00:00:00:00:02 | -         | 2026-09-22 12:27",
    ]
    everything = _lines(show_text(listing, everyone=True))
    assert everything[:11] == [*_lines(show_text(listing, everyone=False)), ""]
    assert everything[11:] == [
        MODELS_TITLE,
        "Model     | Default image                  | Status                     | Last error",
        "----------+--------------------------------+----------------------------+-----------",
        "pc-x86-64 | waltplatform/pc-x86-64-default | ready                      | -",
        "rpi-3-b   | waltplatform/rpi-3-b-default   | failed (next try 12:26:40) | hub: 503",
    ]


def test_no_nodes_yet_and_what_is_left_out() -> None:
    empty = wire.NodeListing((), (), ())
    assert show_text(empty, everyone=False) == NO_NODES
    assert show_text(empty, everyone=True) == f"{NO_NODES}\n\n{MODELS_TITLE}\nnone"
    device = _row("unknown-000001", "02:00:00:00:00:01", None)
    only_devices = show_text(wire.NodeListing((), (device,), (), omitted=7), everyone=False)
    assert only_devices.startswith(f"{NO_NODES}\n\n{DEVICES_TITLE}\n")
    assert only_devices.endswith(
        "(7 more entries not shown, the least recently seen: the "
        f"server sends at most {wire.MAX_NODES} of each kind)"
    )


def test_what_came_from_the_network_is_escaped_and_long_errors_cut() -> None:
    listing = wire.NodeListing(
        nodes=(_row("evil\x1b[2J", "52:54:00:00:00:0a", "pc", ip="10.0.0.1\x07\u202e"),),
        devices=(_row("unknown-000001", "02:00:00:00:00:01", None, ip="\x9b31m"),),
        models=(wire.ModelRow("pc", "waltplatform/pc-default", "failed", "a\nb " * 100, None),),
    )
    text = show_text(listing, everyone=True)
    assert "evil\\x1b[2J" in text and "10.0.0.1\\x07\\u202e" in text and "\\x9b31m" in text
    assert all(c.isprintable() for c in text.replace("\n", ""))
    last = text.splitlines()[-1]
    assert last.endswith("| a b a b" + " a b" * 22 + " a...")


def _node(name: str, mac: str, model: str | None, image: str | None, seen: float) -> Node:
    return Node(mac, "10.0.0.1", name, model, image, states.READY, seen, seen, True)


def test_listing_keeps_the_most_recently_seen_within_the_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(wire, "MAX_NODES", 2)
    entries = [_node(f"pc-{i}", f"52:54:00:00:00:0{i}", "pc", None, SEEN + i) for i in range(4)]
    entries += [_node("unknown-1", "02:00:00:00:00:01", None, None, SEEN)]
    listing = api_nodes.listing(entries, [])
    assert [n.name for n in listing.nodes] == ["pc-3", "pc-2"]
    assert [d.name for d in listing.devices] == ["unknown-1"]
    assert listing.omitted == 2


@pytest.fixture
def folder() -> Iterator[Path]:
    path = short_dir()
    yield path
    remove(path)


async def test_the_api_lists_the_database_and_answers_503_without_it(folder: Path) -> None:
    """The API service and the database of the daemon, in the test's event loop."""
    socket = folder / "api.sock"
    config = default_config()
    ctx = make_context(folder / "state", replace(config, api=replace(config.api, socket=socket)))
    async with ApiService(ctx):
        async with Client(socket) as client:
            with pytest.raises(ClientError, match=r"^the state database is not open"):
                await client.get_json("/v1/nodes")
        async with ctx.db as db:
            await db.upsert_node(
                "52:54:00:00:00:0a",
                ip="10.0.0.10",
                model="pc-x86-64",
                image="docker.io/bob/pc-tests:v2",
                state=states.READY,
                now=SEEN,
            )
            await db.upsert_node(
                "52:54:00:00:00:0b", ip="10.0.0.11", model="rpi-3-b", state=states.WAITING
            )
            await db.upsert_node("02:00:00:00:00:01", ip="10.0.0.12", state=states.UNKNOWN)
            ready = "docker.io/waltplatform/pc-x86-64-default:latest"
            await db.set_model_status("pc-x86-64", states.IMAGE_READY, image=ready)
            await db.set_model_status(
                "rpi-3-b", states.FAILED, last_error="x" * 10_000, next_retry=SEEN + 30
            )
            async with Client(socket) as client:
                listing = wire.NodeListing.from_json(await client.get_json("/v1/nodes"))
    pc, rpi = sorted(listing.nodes, key=lambda n: n.name)
    assert (pc.name, pc.model, pc.image, pc.state, pc.ip) == (
        "pc-x86-64-00000a",
        "pc-x86-64",
        "bob/pc-tests:v2",
        "ready",
        "10.0.0.10",
    )
    assert (pc.first_seen, pc.last_seen) == (SEEN, SEEN)
    assert (rpi.name, rpi.model, rpi.image, rpi.state) == (
        "rpi-3-b-00000b",
        "rpi-3-b",
        None,
        "waiting",
    )
    (device,) = listing.devices
    assert (device.mac, device.model, device.state, device.ip) == (
        "02:00:00:00:00:01",
        None,
        "unknown",
        "10.0.0.12",
    )
    pc_model, rpi_model = listing.models
    assert (pc_model.model, pc_model.image, pc_model.status) == (
        "pc-x86-64",
        "waltplatform/pc-x86-64-default",
        "ready",
    )
    assert (rpi_model.image, rpi_model.status, rpi_model.next_retry) == (
        "waltplatform/rpi-3-b-default",
        "failed",
        SEEN + 30,
    )
    assert rpi_model.last_error == "x" * (wire.MAX_ERROR_CHARS - 3) + "..."
    assert listing.omitted == 0


# GET a path of the API over HTTP/1.0: the status line's code, then the body.
_GET = r"""
import socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(30)
s.connect(sys.argv[1])
s.sendall(b"GET %s HTTP/1.0\r\n\r\n" % sys.argv[2].encode())
head, _, body = s.makefile("rb").read().partition(b"\r\n\r\n")
print(head.split()[1].decode())
print(body.decode())
"""


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.split("|")]


def test_walt_node_show_lists_the_nodes_and_devices_leases_made(folder: Path) -> None:
    # no registry, no docker daemon: nothing leaves the machine (default images never come)
    config = write_config(
        folder, registries=[], images={"docker-socket": str(folder / "no-docker.sock")}
    )
    folder.chmod(0o755)  # another user reaches the socket inside
    d = Daemon(folder, config)
    try:
        d.start()
        assert walt(d.socket, "node", "show").stdout == f"{NO_NODES}\n"
        pc, rpi, device = "52:54:00:00:00:0a", "52:54:00:00:00:0b", "02:00:00:00:00:01"
        # the spool is handled oldest first: the device is recorded once the nodes are
        run_hook(folder, "add", device, "10.0.0.12", DNSMASQ_VENDOR_CLASS="udhcp 1.35.0")
        run_hook(folder, "add", pc, "10.0.0.10", DNSMASQ_VENDOR_CLASS="walt.node.pc-x86-64")
        run_hook(folder, "add", rpi, "10.0.0.11", DNSMASQ_USER_CLASS0="walt.node.rpi-3-b")
        for mac in (pc, rpi):
            d.wait_for(is_event("node.detected", mac=mac))
        for model in ("pc-x86-64", "rpi-3-b"):
            d.wait_for(is_event(ModelNew.EVENT, model=model))

        shown = walt(d.socket, "node", "show", "--json")
        assert shown.returncode == 0, shown.stderr
        listing = wire.NodeListing.from_json(json.loads(shown.stdout))
        got = {(n.name, n.mac, n.model, n.image, n.state, n.ip) for n in listing.nodes}
        assert got == {
            ("pc-x86-64-00000a", pc, "pc-x86-64", None, states.WAITING, "10.0.0.10"),
            ("rpi-3-b-00000b", rpi, "rpi-3-b", None, states.WAITING, "10.0.0.11"),
        }
        assert [(x.name, x.mac, x.model, x.state, x.ip) for x in listing.devices] == [
            ("unknown-000001", device, None, states.UNKNOWN, "10.0.0.12")
        ]
        assert {(m.model, m.image) for m in listing.models} == {
            ("pc-x86-64", "waltplatform/pc-x86-64-default"),
            ("rpi-3-b", "waltplatform/rpi-3-b-default"),
        }

        text = walt(d.socket, "node", "show")
        assert text.returncode == 0, text.stderr
        lines = text.stdout.splitlines()
        assert _cells(lines[0]) == list(NODE_HEADERS)
        assert _cells(lines[2]) == ["pc-x86-64-00000a", "pc-x86-64", "-", "waiting", "10.0.0.10"]
        assert _cells(lines[3]) == ["rpi-3-b-00000b", "rpi-3-b", "-", "waiting", "10.0.0.11"]
        assert lines[4:6] == ["", DEVICES_TITLE]
        assert _cells(lines[6]) == list(DEVICE_HEADERS)
        assert _cells(lines[8])[:2] == [device, "10.0.0.12"]
        assert len(lines) == 9

        with_all = walt(d.socket, "node", "show", "--all").stdout.splitlines()
        assert with_all[:10] == [*lines, ""]
        assert with_all[10] == MODELS_TITLE
        assert _cells(with_all[11]) == list(MODEL_HEADERS)
        assert [_cells(line)[:2] for line in with_all[13:]] == [
            ["pc-x86-64", "waltplatform/pc-x86-64-default"],
            ["rpi-3-b", "waltplatform/rpi-3-b-default"],
        ]
        # any local user reads it, as themselves (SO_PEERCRED), with no client of ours
        with unix_user("waltns") as user:
            python = require_tool("/usr/bin/python3")
            argv = ["runuser", "-u", user, "--", python, "-c", _GET, str(d.socket), "/v1/nodes"]
            res = subprocess.run(argv, capture_output=True, text=True, timeout=60)
        assert res.returncode == 0, res.stderr
        status, _, body = res.stdout.partition("\n")
        assert status == "200"
        assert wire.NodeListing.from_json(json.loads(body)) == listing
        assert d.stop() == 0
    finally:
        d.kill()
