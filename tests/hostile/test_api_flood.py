"""A local user floods the API with idle connections; the daemon runs out of descriptors.

A real daemon; the flood comes from a real non-root user (useradd) running the system
Python, as any user of the server could. The daemon's descriptor limit is lowered with
prlimit so that its bounds are reached in seconds.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import require_tool
from tests.support.daemon import ROOT, Daemon, remove, short_dir, walt, write_config
from tests.support.users import unix_user
from tests.support.wait import until_sync
from waltd.api.listener import ACCEPT_PAUSE_MAX_S, ConnectionCounts, ConnectionLimits
from waltd.api.server import IDLE_TIMEOUT_S
from waltd.log import REPEAT_WINDOW_S

# Opens N connections and holds them; prints how many connected and what one more
# request is answered; then, on a line from stdin, how many the daemon has not closed.
# Blocking connects: a full accept queue makes them wait rather than fail (the alarm ends a
# daemon that never accepts).
_FLOOD = r"""
import json, resource, signal, socket, sys
path, count = sys.argv[1], int(sys.argv[2])
_soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, count + 100), hard))
signal.alarm(60)
held, failed = [], 0
for _ in range(count):
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect(path)
        held.append(s)
    except OSError:
        failed += 1
        s.close()
extra = socket.socket(socket.AF_UNIX)
answer = b""
try:
    extra.connect(path)
    extra.sendall(b"GET /v1/status HTTP/1.1\r\nHost: waltd\r\nConnection: close\r\n\r\n")
    while chunk := extra.recv(65536):
        answer += chunk
except OSError as err:
    answer += str(err).encode()
print(json.dumps({"connected": len(held), "failed": failed,
                  "answer": answer.decode(errors="replace")}), flush=True)
sys.stdin.readline()
still_open = 0
for s in held:
    s.setblocking(False)
    try:
        while s.recv(65536):
            pass
    except BlockingIOError:
        still_open += 1
    except OSError:
        pass
print(json.dumps({"still_open": still_open}), flush=True)
"""
FLOOD = 3000


@pytest.fixture
def folder() -> Iterator[Path]:
    path = short_dir()
    path.chmod(0o755)  # the other user reaches the socket inside
    yield path
    remove(path)


@pytest.fixture
def user() -> Iterator[str]:
    with unix_user("waltflood") as name:
        yield name


@pytest.fixture
def daemon(folder: Path) -> Iterator[Daemon]:
    # no registry, no docker daemon: nothing leaves the machine
    config = write_config(
        folder, registries=[], images={"docker-socket": str(folder / "no-docker.sock")}
    )
    d = Daemon(folder, config).start()
    yield d
    d.kill()


def _end(proc: subprocess.Popen[str]) -> None:
    """Let a client run as another user end (stdin closed), else end its process group.

    runuser forks: killed first, it would leave its child to init, and the user in use.
    """
    if proc.stdin is not None:
        proc.stdin.close()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _fds(pid: int) -> set[int]:
    return {int(fd) for fd in os.listdir(f"/proc/{pid}/fd")}


def _cpu_s(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _set_nofile(pid: int, soft: int) -> None:
    _old, hard = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (soft, hard))


def _events(d: Daemon, name: str) -> list[dict[str, object]]:
    return [r for r in d.records() if r.get("event") == name]


def _services_running(d: Daemon) -> None:
    res = walt(d.socket, "status", "--json")
    assert res.returncode == 0, res.stderr
    states = {s["name"]: s["state"] for s in json.loads(res.stdout)["services"]}
    assert set(states.values()) == {"running"}, states
    assert not _events(d, "service_crashed")


def test_a_user_holding_thousands_of_connections_leaves_root_served(
    daemon: Daemon, user: str
) -> None:
    python = require_tool("/usr/bin/python3")
    assert daemon.proc is not None
    pid = daemon.proc.pid
    nofile = 128
    _set_nofile(pid, nofile)
    limits = ConnectionLimits.for_descriptors(nofile)
    idle = len(_fds(pid))
    began = time.monotonic()

    flood = subprocess.Popen(
        ["runuser", "-u", user, "--", python, "-c", _FLOOD, str(daemon.socket), str(FLOOD)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        start_new_session=True,  # runuser forks: its group is ended as a whole
    )
    try:
        assert flood.stdout is not None and flood.stdin is not None
        report = json.loads(flood.stdout.readline())
        assert report["connected"] + report["failed"] == FLOOD
        # The daemon held at most one user's share; the other connections were refused.
        peak = len(_fds(pid))
        assert peak <= idle + limits.per_user + 4, (peak, idle, limits)
        assert report["answer"].startswith("HTTP/1.1 503"), report["answer"]
        assert f"your user holds {limits.per_user} connections" in report["answer"]

        # Root is served meanwhile, from the connections reserved for it.
        res = walt(daemon.socket, "status")
        assert res.returncode == 0, res.stderr
        assert "you are: root" in res.stdout

        # The idle connections are closed by the daemon within its idle timeout.
        until_sync(
            lambda: len(_fds(pid)) <= idle + 1,
            what="the flood's idle connections to be closed",
            timeout_s=IDLE_TIMEOUT_S + 5,
            alive=lambda: daemon.proc is not None and daemon.proc.poll() is None,
        )
        flood.stdin.write("\n")
        flood.stdin.flush()
        assert json.loads(flood.stdout.readline()) == {"still_open": 0}
    finally:
        _end(flood)
    elapsed = time.monotonic() - began

    # Thousands of refusals, a handful of log lines: one per window and kind of refusal.
    refused = _events(daemon, "api_connection_refused")
    windows = int(elapsed / REPEAT_WINDOW_S) + 1
    assert 1 <= len(refused) <= 2 * windows, refused
    assert not [r for r in daemon.records() if "out of system resource" in str(r.get("event"))]
    _services_running(daemon)


def test_out_of_descriptors_the_accept_loop_pauses_and_recovers(daemon: Daemon) -> None:
    assert daemon.proc is not None
    pid = daemon.proc.pid
    before = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    # The lowest free descriptor number as the limit: the next accept fails with EMFILE.
    used = _fds(pid)
    _set_nofile(pid, min(n for n in range(len(used) + 1) if n not in used))
    try:
        status = subprocess.Popen(
            [sys.executable, "-m", "waltd.cli.walt", "status"],
            env={**os.environ, "WALT_SOCKET": str(daemon.socket), "PYTHONPATH": str(ROOT)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        daemon.wait_for(lambda e: e.get("event") == "api_accept_failed", timeout=10)
        # Paused, not spinning: the daemon stays nearly idle while the connection waits.
        cpu = _cpu_s(pid)
        time.sleep(1.0)  # a measurement window, not a wait for an event
        assert _cpu_s(pid) - cpu < 0.3
        assert status.poll() is None  # not served yet, nor refused: queued by the kernel
    finally:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, before)
    out, err = status.communicate(timeout=ACCEPT_PAUSE_MAX_S + 10)
    assert status.returncode == 0, err
    assert "you are: root" in out
    failures = _events(daemon, "api_accept_failed")
    assert 1 <= len(failures) <= 2, failures
    assert "Too many open files" in str(failures[0]["error"])
    assert not [r for r in daemon.records() if "out of system resource" in str(r.get("event"))]
    _services_running(daemon)


def test_root_keeps_its_reserve_whatever_the_users_hold() -> None:
    limits = ConnectionLimits.for_descriptors(1024)
    assert limits.total == 512 and limits.non_root < limits.total
    counts = ConnectionCounts()
    users = range(1000, 1000 + limits.non_root // limits.per_user + 1)
    admitted = {uid: 0 for uid in users}
    for uid in users:
        while counts.admit(uid, limits) is None:
            admitted[uid] += 1
    assert max(admitted.values()) == limits.per_user
    assert sum(admitted.values()) == limits.non_root
    assert "the most one user may" in str(counts.admit(1000, limits))
    assert "all the API gives to non-root users" in str(counts.admit(2000, limits))
    for _ in range(limits.total - limits.non_root):
        assert counts.admit(0, limits) is None
    assert "maximum of 512 connections" in str(counts.admit(0, limits))
    counts.release(1000)
    assert counts.admit(2000, limits) is None  # a slot given back serves anyone
