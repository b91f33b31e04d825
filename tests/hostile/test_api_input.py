"""Requests no client should send: a 400 (or 413) naming the problem, never a traceback.

A real daemon; the requests are written by hand on its unix socket.
"""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.daemon import Daemon, remove, short_dir, walt, write_config
from waltd.api import wire
from waltd.api.common import BODY_TIMEOUT_S


@pytest.fixture(scope="module")
def daemon() -> Iterator[Daemon]:
    folder = short_dir()
    # no registry, no docker daemon: nothing leaves the machine
    config = write_config(
        folder, registries=[], images={"docker-socket": str(folder / "no-docker.sock")}
    )
    d = Daemon(folder, config).start()
    yield d
    d.kill()
    remove(folder)


def _ask(path: Path, head: str, body: bytes = b"", timeout: float = 30) -> tuple[int, Any]:
    """Send a raw HTTP request; the status of the answer, and its body as JSON unless the
    status is 200 (an NDJSON stream, left as bytes)."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        sock.sendall(head.encode() + b"\r\nHost: waltd\r\nConnection: close\r\n\r\n" + body)
        answer = b""
        while (chunk := sock.recv(65536)) and not _complete(answer := answer + chunk):
            pass
    top, _, payload = answer.partition(b"\r\n\r\n")
    code = int(top.split()[1])
    return code, payload if code == 200 else json.loads(payload)


def _complete(answer: bytes) -> bool:
    """Whether an answer with a Content-Length has all its body (a stream ends at EOF)."""
    top, found, payload = answer.partition(b"\r\n\r\n")
    for header in top.split(b"\r\n")[1:] if found else ():
        name, _, value = header.partition(b":")
        if name.strip().lower() == b"content-length":
            return len(payload) >= int(value)
    return False


def _post(path: Path, body: bytes) -> tuple[int, Any]:
    head = f"POST /v1/images/search HTTP/1.1\r\nContent-Length: {len(body)}"
    return _ask(path, head + "\r\nContent-Type: application/json", body)


def _no_traceback(d: Daemon) -> None:
    records = d.records()
    assert not [r for r in records if "exception" in r or r.get("level") == "error"], records
    status = walt(d.socket, "status", "--json")
    assert status.returncode == 0, status.stderr
    assert {s["state"] for s in json.loads(status.stdout)["services"]} == {"running"}


@pytest.mark.parametrize("key", ["since", "limit"])
def test_an_endless_number_in_the_query_is_a_400(daemon: Daemon, key: str) -> None:
    code, body = _ask(daemon.socket, f"GET /v1/events?{key}={'9' * 5000} HTTP/1.1")
    assert code == 400
    assert body["error"].startswith(f"bad events query: {key} must be a non-negative integer")
    assert f"at most {wire.MAX_QUERY_DIGITS} digits" in body["error"]
    code, _ = _ask(daemon.socket, f"GET /v1/events?{key}={'9' * wire.MAX_QUERY_DIGITS} HTTP/1.1")
    assert code == 200
    _no_traceback(daemon)


def test_a_deeply_nested_body_is_a_400(daemon: Daemon) -> None:
    # 40 kB, within the size bound; json.loads alone raises RecursionError on it
    code, body = _post(daemon.socket, b'{"a": ' + b"[" * 20_000 + b"]" * 20_000 + b"}")
    assert code == 400
    assert body["error"] == (
        f"bad search request: the request body nests deeper than {wire.MAX_BODY_DEPTH} levels"
    )
    # brackets inside strings are text, not nesting
    code, body = _post(daemon.socket, json.dumps({"keyword": "[" * 1000}).encode())
    assert code == 400 and "keyword is longer than" in body["error"]
    _no_traceback(daemon)


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"[1, 2", "the request body is not JSON"),
        (b"\xff\xfe", "the request body is not UTF-8 text"),
        (b"[]", "the request body must be an object"),
        (b'{"keyword": 7}', "keyword must be a string"),
        (b'{"credentials": []}', "credentials must be an object"),
        (b'{"credentials": {"local": {"username": "bob"}}}', "credentials.local.password must"),
    ],
)
def test_a_malformed_search_request_is_a_400_naming_the_field(
    daemon: Daemon, body: bytes, error: str
) -> None:
    code, answer = _post(daemon.socket, body)
    assert code == 400
    assert answer["error"].startswith(f"bad search request: {error}")
    _no_traceback(daemon)


def test_an_oversized_body_is_refused(daemon: Daemon) -> None:
    code, answer = _post(daemon.socket, b'{"keyword": "' + b"x" * wire.MAX_BODY_BYTES + b'"}')
    assert code == 400
    assert answer["error"] == (
        f"bad search request: the request body is over {wire.MAX_BODY_BYTES} bytes"
    )
    _no_traceback(daemon)


def test_a_body_that_never_arrives_is_given_up(daemon: Daemon) -> None:
    head = "POST /v1/images/search HTTP/1.1\r\nContent-Length: 100"
    began = time.monotonic()
    code, answer = _ask(daemon.socket, head, b'{"keyw', timeout=BODY_TIMEOUT_S + 10)
    assert code == 400
    assert answer["error"] == (
        f"bad search request: the request body took more than {BODY_TIMEOUT_S:g} s"
    )
    assert time.monotonic() - began < BODY_TIMEOUT_S + 5
    _no_traceback(daemon)
