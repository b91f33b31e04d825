"""A caller's password never reaches a log record, nor blanks other records' words.

Against a live daemon: `walt image search` with logins for two registries (small aiohttp
servers asking for Basic credentials: they must hold the search while another event is
logged, which a real registry cannot be told to do). One password is `node.detected`, the name
of the event a lease produces; while the registry holds the request that carries it, a lease
reaches the daemon through the real dnsmasq hook. That record keeps its `event`, and neither
password appears anywhere else in the log or the event stream.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from aiohttp import web

from tests.hostile.registry_env import live_daemon, serving, v2_entry, walt_search
from tests.support.daemon import Daemon, run_hook, walt

pytestmark = pytest.mark.asyncio

EVENT_WORD = "node.detected"  # a password that is also an event's name
UNIQUE = "zq-unique-secret-91"  # a password found nowhere else
MAC = "52:54:00:aa:bb:01"


def registry(during: dict[str, Any]) -> list[web.RouteDef]:
    """A registry asking for Basic credentials; given them, it runs `during["hook"]()` before
    answering (an empty catalog), so that the request carrying them is under way meanwhile."""

    async def api(request: web.Request) -> web.Response:
        if "Authorization" not in request.headers:
            return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="t"'})
        if request.path == "/v2/_catalog" and during.get("hook"):
            await during.pop("hook")()
        return web.json_response({"repositories": []})

    return [web.get("/v2/", api), web.get("/v2/_catalog", api)]


async def lease_and_wait(daemon: Daemon) -> None:
    """A lease through dnsmasq's hook, then its `node.detected` record in the daemon's log."""
    # in a thread: the registry this test serves on its loop must keep answering meanwhile
    await asyncio.to_thread(
        run_hook,
        daemon.folder,
        "add",
        MAC,
        "10.0.0.7",
        DNSMASQ_VENDOR_CLASS="walt.node.pc-x86-64",
    )
    await asyncio.to_thread(daemon.wait_for, lambda r: r.get("mac") == MAC, 10)


async def test_a_password_neither_leaks_nor_blanks_other_records() -> None:
    during: dict[str, Any] = {}
    async with (
        serving(registry(during)) as first,
        serving(registry({})) as second,
    ):
        registries = [
            v2_entry("first", first, auth="basic"),
            v2_entry("second", second, auth="basic"),
        ]
        async with live_daemon(registries) as daemon:
            during["hook"] = lambda: lease_and_wait(daemon)
            logins = {"first": ("alice", EVENT_WORD), "second": ("alice", UNIQUE)}
            result = await walt_search(daemon, logins=logins)
            assert "hook" not in during, "the registry never held a request with credentials"
            shown = await asyncio.to_thread(
                walt, daemon.socket, "log", "show", "--json", "--limit", "0"
            )
            log_text = daemon.log_path.read_text()
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in shown.stdout.splitlines()]
    records = [json.loads(line) for line in log_text.splitlines() if line.startswith("{")]
    for source in (events, records):
        assert [r for r in source if r.get("mac") == MAC and r["event"] == EVENT_WORD]
        assert [r for r in source if "***" in json.dumps(r)] == []
        # the word appears only as that event's name: never as a password anywhere
        for record in source:
            rest = {k: v for k, v in record.items() if (k, v) != ("event", EVENT_WORD)}
            assert EVENT_WORD not in json.dumps(rest), record
    assert UNIQUE not in log_text and UNIQUE not in shown.stdout
