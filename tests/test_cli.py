"""The client: its formatting of events, its reading of NDJSON streams, what it imports."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import ROOT
from waltd.cli.client import Client, ClientError
from waltd.cli.walt import format_event


def test_the_client_loads_no_module_of_the_daemon() -> None:
    # In a fresh interpreter: the test process has loaded the daemon's modules already.
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, waltd.cli.walt; print(*(m for m in sys.modules if m.startswith('waltd')))",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    ).stdout.split()
    daemon_side = [m for m in loaded if not m.startswith(("waltd.cli.", "waltd.api.wire"))]
    # the packages themselves, and the pure grammars `walt` checks names and URLs with
    assert sorted(daemon_side) == ["waltd", "waltd.api", "waltd.cli", "waltd.names"]


def test_format_event_line() -> None:
    line = format_event(
        {
            "seq": 3,
            "event": "node_detected",
            "level": "info",
            "timestamp": "2026-11-27T12:00:01.5Z",
            "component": "detect",
            "mac": "52:54:00:00:00:01",
            "services": ["a", "b"],
            "detail": "two words",
        }
    )
    assert line == (
        '12:00:01 info    node_detected mac=52:54:00:00:00:01 services=a,b detail="two words"'
    )


def test_format_event_with_traceback_and_colour() -> None:
    line = format_event(
        {"event": "service_crashed", "level": "error", "exception": "Traceback...\nBoom\n"},
        colour=True,
    )
    assert "\x1b[31m" in line and line.endswith("Traceback...\nBoom")


def test_format_event_escapes_what_a_terminal_would_obey() -> None:
    line = format_event(
        {
            "event": "node_lease\x1b[2J",
            "level": "info",
            "hostname": "evil\x9b31m\x7f",
            "vendor_class": "a\ud800b",
            "error": "two\x1b]0;title\x07 words",
            "exception": "Traceback\n  hostile\x1b[1A\nError",
        }
    )
    assert line == (
        " info    node_lease\\x1b[2J hostname=evil\\x9b31m\\x7f vendor_class=a\\ud800b"
        ' error="two\\u001b]0;title\\u0007 words"\nTraceback\n  hostile\\x1b[1A\nError'
    )
    assert all(c.isprintable() for c in line.replace("\n", ""))
    line.encode("utf-8")  # no lone surrogate left to crash the terminal's encoder


_BIG = {"event": "x" * 3_000_000, "seq": 1}


async def _raw_server(path: Path, answer: bytes) -> asyncio.Server:
    """An HTTP server on `path` that answers every request with `answer`, then hangs up."""

    async def reply(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(answer)
        await writer.drain()
        writer.close()

    return await asyncio.start_unix_server(reply, str(path))


def _ndjson_answer(body: bytes) -> bytes:
    head = "HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
    return f"{head}Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body


async def _records(path: Path) -> list[dict[str, Any]]:
    async with Client(path) as client:
        return [r async for r in client.stream("/v1/events")]


async def test_stream_takes_records_of_megabytes(tmp_path: Path) -> None:
    path = tmp_path / "api.sock"
    body = json.dumps(_BIG).encode() + b"\n" + b'{"seq": 2}\n\n{"seq": 3}'
    async with await _raw_server(path, _ndjson_answer(body)):
        records = await _records(path)
    assert records == [_BIG, {"seq": 2}, {"seq": 3}]


async def test_stream_cut_by_a_dying_daemon_is_a_client_error(tmp_path: Path) -> None:
    path = tmp_path / "api.sock"
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/x-ndjson\r\n"
    # Chunked, and the daemon dies inside the second chunk.
    cut = head + b'Transfer-Encoding: chunked\r\n\r\nb\r\n{"seq": 1}\n\r\n40\r\n{"seq"'
    async with await _raw_server(path, cut):
        with pytest.raises(ClientError, match="broke off"):
            await _records(path)


async def test_stream_with_a_broken_record_is_a_client_error(tmp_path: Path) -> None:
    path = tmp_path / "api.sock"
    async with await _raw_server(path, _ndjson_answer(b'{"seq": 1}\n{"seq": \n')):
        with pytest.raises(ClientError, match="unreadable record"):
            await _records(path)
