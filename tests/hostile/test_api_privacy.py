"""Between users: one user's searches never show in another's `walt log show`.

A real daemon and two real non-root users (useradd), each speaking HTTP on the socket with
the system Python, as any user of the server could; root reads with `walt`.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_tool
from tests.support.daemon import Daemon, remove, short_dir, walt, write_config
from tests.support.users import fresh_name, unix_users

# MODE search KEYWORD: one search; MODE events: the event backlog; MODE follow MARKER:
# follow the events, print "ready" once answered, then every record up to one holding MARKER.
_CLIENT = r"""
import json, socket, sys
path, mode, arg = sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else ""
s = socket.socket(socket.AF_UNIX)
s.settimeout(30)
s.connect(path)
if mode == "search":
    body = json.dumps({"keyword": arg}).encode()
    s.sendall(b"POST /v1/images/search HTTP/1.0\r\nContent-Type: application/json\r\n"
              + b"Content-Length: %d\r\n\r\n" % len(body) + body)
else:
    follow = "&follow=1" if mode == "follow" else ""
    s.sendall(b"GET /v1/events?limit=0%s HTTP/1.0\r\n\r\n" % follow.encode())
f = s.makefile("rb")
status = f.readline()
while f.readline() not in (b"\r\n", b""):
    pass
if mode == "follow":
    print("ready", flush=True)
records = []
for line in f:
    records.append(json.loads(line))
    if mode == "follow" and arg in line.decode():
        break
print(json.dumps({"status": int(status.split()[1]), "records": records}), flush=True)
"""


@pytest.fixture
def folder() -> Iterator[Path]:
    path = short_dir()
    path.chmod(0o755)  # the other users reach the socket inside
    yield path
    remove(path)


@pytest.fixture
def users() -> Iterator[tuple[str, ...]]:
    with unix_users(fresh_name("waltpa"), fresh_name("waltpb")) as names:
        yield names


def _uid(name: str) -> int:
    return int(subprocess.check_output(["id", "-u", name]))


def _as(user: str, socket: Path, *args: str) -> list[str]:
    python = require_tool("/usr/bin/python3")
    return ["runuser", "-u", user, "--", python, "-c", _CLIENT, str(socket), *args]


def _run(user: str, socket: Path, *args: str) -> dict[str, Any]:
    res = subprocess.run(_as(user, socket, *args), capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    answer: dict[str, Any] = json.loads(res.stdout)
    assert answer["status"] == 200, answer
    return answer


def _searches(records: list[dict[str, Any]]) -> set[str]:
    return {r["keyword"] for r in records if r.get("event") == "image_search"}


def test_a_user_sees_the_daemons_events_and_its_own_never_anothers(
    folder: Path, users: tuple[str, str]
) -> None:
    alice, bob = users
    config = write_config(
        folder, registries=[], images={"docker-socket": str(folder / "no-docker.sock")}
    )
    daemon = Daemon(folder, config).start()
    try:
        secret_a, secret_b = f"alice-{uuid.uuid4().hex}", f"bob-{uuid.uuid4().hex}"
        follower = subprocess.Popen(
            _as(bob, daemon.socket, "follow", secret_b),
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,  # runuser forks: its group is ended as a whole
        )
        try:
            assert follower.stdout is not None
            assert follower.stdout.readline() == "ready\n"
            _run(alice, daemon.socket, "search", secret_a)
            _run(bob, daemon.socket, "search", secret_b)
            followed = json.loads(follower.stdout.readline())["records"]
        finally:
            # runuser forks: killed first, it would leave its child to init, and bob in use
            try:
                follower.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(follower.pid, signal.SIGKILL)
                follower.wait()

        seen_by = {
            alice: _run(alice, daemon.socket, "events")["records"],
            bob: _run(bob, daemon.socket, "events")["records"],
        }
        shown = walt(daemon.socket, "log", "show", "--json", "--limit", "0")
        assert shown.returncode == 0, shown.stderr
        seen_by["root"] = [json.loads(line) for line in shown.stdout.splitlines()]

        # Each search is recorded with its caller's uid.
        searches = {r["keyword"]: r for r in seen_by["root"] if r.get("event") == "image_search"}
        assert searches[secret_a]["uid"] == _uid(alice)
        assert searches[secret_b]["uid"] == _uid(bob)
        # Root sees all; a user its own and the daemon's, in the backlog and when following.
        assert _searches(seen_by["root"]) == {secret_a, secret_b}
        assert _searches(seen_by[alice]) == {secret_a}
        assert _searches(seen_by[bob]) == _searches(followed) == {secret_b}
        for name in (alice, bob):
            assert any(r.get("event") == "daemon_ready" for r in seen_by[name])
            assert {r["uid"] for r in seen_by[name] if "uid" in r} == {_uid(name)}
        assert {r["uid"] for r in followed if "uid" in r} == {_uid(bob)}
        assert secret_a not in json.dumps(seen_by[bob]) + json.dumps(followed)
        assert daemon.stop() == 0
    finally:
        daemon.kill()
