"""The real daemon as a process: start, API, signals, reload, crashes, children, identity."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pexpect
import pytest
import yaml

from tests.conftest import require_tool
from tests.support.daemon import (
    ROOT,
    Daemon,
    harness,
    process_group,
    remove,
    run_once,
    short_dir,
    walt,
    write_config,
)
from tests.support.users import fresh_name, unix_users
from tests.support.wait import until_sync
from waltd.process import start_time


@pytest.fixture
def folder() -> Iterator[Path]:
    path = short_dir()
    yield path
    remove(path)


@pytest.fixture
def daemon(folder: Path) -> Iterator[Daemon]:
    d = Daemon(folder, write_config(folder))
    yield d
    d.kill()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purpose.
    return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()


def test_invalid_config_exits_78_with_the_message(folder: Path) -> None:
    conf = folder / "server.conf"
    conf.write_text("registries:\n- label: local\n  api: docker-registry-v2\n  protocol: ftp\n")
    proc = run_once(conf)
    assert proc.returncode == 78
    assert str(conf) in proc.stderr
    assert "protocol" in proc.stderr and "ftp" in proc.stderr
    record = json.loads(proc.stdout.splitlines()[-1])
    assert record["event"] == "config_invalid" and record["level"] == "error"


def test_status_and_events_over_the_socket(daemon: Daemon) -> None:
    daemon.start()
    res = walt(daemon.socket, "status", "--json")
    assert res.returncode == 0, res.stderr
    status = json.loads(res.stdout)
    assert status["caller"]["walt_user"] == "root"
    assert {s["name"]: s["state"] for s in status["services"]} == {
        "database": "running",
        "registries": "running",
        "repository": "running",
        "api": "running",
        "provision": "running",
        "detect": "running",
    }  # no dnsmasq service at all
    assert status["node_network"] is None  # no walt-net: no DHCP
    assert status["registries"] == [{"label": "hub", "api": "docker-hub", "auth": "none"}]
    assert status["nodes"] == 0

    res = walt(daemon.socket, "log", "show", "--json")
    events = [json.loads(line) for line in res.stdout.splitlines()]
    names = [e["event"] for e in events]
    assert "daemon_ready" in names and "no_node_network" in names
    assert all({"event", "level", "timestamp", "seq"} <= e.keys() for e in events)
    pretty = walt(daemon.socket, "log", "show").stdout.splitlines()
    ready = " info    daemon_ready services=database,registries,repository,api,provision,detect"
    assert any(ready in line for line in pretty)
    assert not pretty[0].startswith("{")
    # The stream carries what the log carries.
    logged = [r["event"] for r in daemon.records() if "event" in r]
    assert names == logged[: len(names)]
    assert daemon.stop() == 0
    assert not daemon.socket.exists()


def _log_follower(daemon: Daemon) -> subprocess.Popen[str]:
    """`walt log show --follow --json` on `daemon`, its output on a pipe."""
    env = {**os.environ, "WALT_SOCKET": str(daemon.socket), "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        [sys.executable, "-m", "waltd.cli.walt", "log", "show", "--follow", "--json"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_log_follow_streams_new_events(daemon: Daemon) -> None:
    daemon.start()
    follower = _log_follower(daemon)
    try:
        assert follower.stdout is not None
        # the backlog's first record: the follower is connected, later records reach it
        seen = [json.loads(follower.stdout.readline())["event"]]
        daemon.signal(signal.SIGHUP)  # produces a new event: config_reloaded
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            line = follower.stdout.readline()
            if not line:
                break
            seen.append(json.loads(line)["event"])
            if "config_reloaded" in seen:
                break
        assert "config_reloaded" in seen
    finally:
        # Shutdown ends the stream: the follower exits by itself.
        assert daemon.stop() == 0
        assert follower.wait(10) == 0


def _named(daemon: Daemon, event: str) -> list[dict[str, object]]:
    return [r for r in daemon.records() if r.get("event") == event]


def test_a_follower_leaving_is_no_error(daemon: Daemon) -> None:
    """A `walt log show --follow` killed mid-stream: the daemon's next write finds the
    connection closed, which is no failure of the request."""
    daemon.start()
    follower = _log_follower(daemon)
    assert follower.stdout is not None
    follower.stdout.readline()  # connected and streaming
    follower.kill()
    follower.wait()
    # records for the stream that the gone follower cannot take any longer (one signal at
    # a time: the kernel does not queue a second SIGHUP while one is pending)
    for count in (1, 2, 3):
        daemon.signal(signal.SIGHUP)
        until_sync(
            lambda n=count: len(_named(daemon, "config_reloaded")) >= n,
            what=f"reload {count}",
            timeout_s=15,
        )
    errors = [r for r in daemon.records() if r.get("level") == "error"]
    assert errors == []
    assert daemon.stop() == 0


def test_sighup_with_broken_file_keeps_running_config(daemon: Daemon) -> None:
    daemon.start()
    good = daemon.config.read_text()
    daemon.config.write_text(good + "registries: [not, a, mapping]\nbogus-key: 1\n")
    daemon.signal(signal.SIGHUP)
    refused = daemon.wait_for(lambda e: e.get("event") == "config_reload_refused")
    assert "bogus-key" in refused["error"]
    status = json.loads(walt(daemon.socket, "status", "--json").stdout)
    assert [r["label"] for r in status["registries"]] == ["hub"]

    # A valid change to a reloadable section is applied; a network change needs a restart.
    data = yaml.safe_load(good)
    data["registries"] = [
        {
            "label": "local",
            "api": "docker-registry-v2",
            "host": "127.0.0.1",
            "port": 5000,
            "protocol": "http",
        }
    ]
    data["network"] = {"walt-net": {"interface": "wn0", "ip": "10.9.0.1/24"}}
    daemon.config.write_text(yaml.safe_dump(data))
    daemon.signal(signal.SIGHUP)
    daemon.wait_for(lambda e: e.get("event") == "config_reloaded")
    needs = daemon.wait_for(lambda e: e.get("event") == "config_change_needs_restart")
    assert needs["sections"] == ["network"]
    status = json.loads(walt(daemon.socket, "status", "--json").stdout)
    assert [r["label"] for r in status["registries"]] == ["local"]
    assert status["node_network"] is None  # still the running one until a restart
    assert daemon.stop() == 0


def test_sigterm_within_budget_kills_a_child_that_ignores_term(folder: Path) -> None:
    conf = write_config(folder)  # shutdown-budget-s: 3
    d = harness(folder, conf, "long")
    try:
        d.start()
        rec = d.wait_for(lambda e: e.get("event") == "long_child_started")
        (pid,) = rec["pids"]
        assert _alive(pid)
        # The child's group also holds a grandchild `sleep` (same session).
        group = process_group(pid)
        assert len(group) >= 2
        began = time.monotonic()
        code = d.stop(timeout=30)
        elapsed = time.monotonic() - began
        assert code == 0
        assert elapsed < 3 + 1.0, f"shutdown took {elapsed:.1f} s for a 3 s budget"
        assert not any(_alive(p) for p in group)
        events = [r.get("event") for r in d.records()]
        assert "drain_budget_exceeded" in events and events[-1] == "daemon_stopped"
    finally:
        d.kill()


def test_a_release_failing_at_shutdown_is_not_a_crash(folder: Path) -> None:
    """An `__aexit__` that raises while shutdown cancels its service replaces the
    cancellation: the keeper must not take it for a crash and sleep out a restart backoff."""
    conf = write_config(folder)  # shutdown-budget-s: 3
    d = harness(folder, conf, "bad-exit")
    try:
        d.start()
        d.wait_for(lambda e: e.get("event") == "bad_exit_serving")
        began = time.monotonic()
        assert d.stop(timeout=30) == 0
        elapsed = time.monotonic() - began
        records = d.records()
        events = [r.get("event") for r in records]
        failed = next(r for r in records if r.get("event") == "service_stop_failed")
        assert failed["service"] == "bad-exit" and "deliberate failure" in failed["error"]
        assert "service_crashed" not in events and "service_restart_scheduled" not in events
        stages = [
            (r["stage"], r["timed_out"]) for r in records if r.get("event") == "shutdown_stage"
        ]
        assert stages == [("drain", False), ("cancel", False), ("children", False)]
        # nothing waits for a deadline: the stop takes a fraction of the 3 s budget
        assert elapsed < 2.0, f"shutdown took {elapsed:.1f} s"
    finally:
        d.kill()


def test_crashing_service_restarts_while_api_answers(folder: Path) -> None:
    conf = write_config(folder)
    d = harness(folder, conf, "crash")
    try:
        d.start()
        crash = d.wait_for(lambda e: e.get("event") == "service_crashed")
        assert "deliberate crash" in crash["exception"]  # the traceback is logged
        assert crash["service"] == "crasher"

        def restarted() -> dict[str, Any] | None:
            status = json.loads(walt(d.socket, "status", "--json").stdout)
            found = {s["name"]: s for s in status["services"]}
            return found if found["crasher"]["restarts"] >= 2 else None

        services = until_sync(restarted, what="a second restart of the crasher")
        assert "deliberate crash" in services["crasher"]["last_error"]
        assert services["api"]["state"] == "running" and services["api"]["restarts"] == 0
        assert d.stop() == 0
    finally:
        d.kill()


def test_sd_notify_protocol(folder: Path) -> None:
    sock_path = folder / "notify.sock"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(sock_path))
    listener.settimeout(10)
    d = Daemon(
        folder,
        write_config(folder),
        env={"NOTIFY_SOCKET": str(sock_path), "WATCHDOG_USEC": "200000"},
    )
    try:
        d.start(wait_ready=False)

        def until(word: bytes) -> list[bytes]:
            got = []
            while True:
                msg = listener.recv(4096)
                got.append(msg)
                if word in msg:
                    return got

        assert b"READY=1" in until(b"READY=1")[-1]
        assert any(b"WATCHDOG=1" in m for m in until(b"WATCHDOG=1"))
        d.signal(signal.SIGHUP)
        msgs = until(b"RELOADING=1")
        assert b"MONOTONIC_USEC=" in msgs[-1]
        until(b"READY=1")
        d.signal(signal.SIGTERM)
        stopping = until(b"STOPPING=1")[-1]
        # The budget (3 s) and room to stop children: systemd waits that long from now.
        assert b"EXTEND_TIMEOUT_USEC=8000000" in stopping.split(b"\n")
        assert d.stop() == 0
    finally:
        listener.close()
        d.kill()


def test_children_of_a_previous_run_are_killed_at_start(daemon: Daemon) -> None:
    stray = subprocess.Popen(["sleep", "600"], start_new_session=True)
    try:
        run = daemon.folder / "run"  # the record of one boot's children
        run.mkdir()
        (run / "children.json").write_text(
            json.dumps(
                [
                    {"pid": stray.pid, "start_time": start_time(stray.pid), "argv0": "sleep"},
                    # A recorded PID now held by another process (other start time) is spared.
                    {"pid": os.getpid(), "start_time": 1, "argv0": "dnsmasq"},
                ]
            )
        )
        daemon.start()
        assert stray.wait(10) == -signal.SIGKILL
        killed = daemon.wait_for(lambda e: e.get("event") == "stale_child_killed")
        assert killed["pid"] == stray.pid
        assert daemon.stop() == 0
    finally:
        stray.kill()


# The venv's interpreter lives under /root (mode 0700), out of another user's reach, so the
# other user speaks HTTP over the socket with the system Python's standard library.
_RAW_STATUS = """
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(b"GET /v1/status HTTP/1.1\\r\\nHost: waltd\\r\\nConnection: close\\r\\n\\r\\n")
data = b""
while chunk := s.recv(65536):
    data += chunk
print(json.dumps(json.loads(data.split(b"\\r\\n\\r\\n", 1)[1])["caller"]))
"""


def test_identity_of_a_useradd_user_and_of_root(daemon: Daemon) -> None:
    python = require_tool("/usr/bin/python3")
    with unix_users(fresh_name("Walt_T")) as (name,):
        daemon.folder.chmod(0o755)
        daemon.start()
        res = subprocess.run(
            ["runuser", "-u", name, "--", python, "-c", _RAW_STATUS, str(daemon.socket)],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert res.returncode == 0, res.stderr
        caller = json.loads(res.stdout)
        assert caller["unix_user"] == name
        assert caller["walt_user"] == name.lower().replace("_", "-")
        assert caller["uid"] == int(subprocess.check_output(["id", "-u", name]))
        root = json.loads(walt(daemon.socket, "status", "--json").stdout)["caller"]
        assert root == {"unix_user": "root", "walt_user": "root", "uid": 0}
        assert daemon.stop() == 0


def test_client_without_daemon_says_so(folder: Path) -> None:
    res = walt(folder / "absent.sock", "status")
    assert res.returncode == 1
    assert "cannot reach waltd" in res.stderr and "absent.sock" in res.stderr


def test_unsafe_secrets_file_exits_78_and_refuses_reload(folder: Path) -> None:
    conf = write_config(folder)
    secrets = folder / "server.secrets"
    secrets.write_text("local: {username: bob, password: 's3cr3t-pw'}\n")
    secrets.chmod(0o644)
    proc = run_once(conf)
    assert proc.returncode == 78
    assert "chmod 600" in proc.stderr and "s3cr3t-pw" not in proc.stderr + proc.stdout

    secrets.chmod(0o600)
    d = Daemon(folder, conf)
    try:
        d.start()
        secrets.write_text("local: [broken\n")
        d.signal(signal.SIGHUP)
        refused = d.wait_for(lambda e: e.get("event") == "config_reload_refused")
        assert "server.secrets" in refused["error"]
        assert d.stop() == 0
        assert "s3cr3t-pw" not in d.log_path.read_text()
    finally:
        d.kill()


def test_image_search_progress_line_on_a_terminal(folder: Path) -> None:
    """On a terminal the client shows which sources answered, then clears the line."""
    down = {
        "label": "down",
        "api": "docker-registry-v2",
        "host": "127.0.0.1",
        "port": 9,
        "protocol": "http",
    }
    conf = write_config(
        folder, registries=[down], images={"docker-socket": str(folder / "no-docker.sock")}
    )
    d = Daemon(folder, conf)
    try:
        d.start()
        child = pexpect.spawn(
            sys.executable,
            ["-m", "waltd.cli.walt", "image", "search"],
            env={
                **os.environ,
                "WALT_SOCKET": str(d.socket),
                "PYTHONPATH": str(ROOT),
                "WALT_CLIENT_CONFIG": str(folder / "none"),
            },
            encoding="utf-8",
            timeout=20,
        )
        # the internal repository ("walt") answers too, before or after
        child.expect_exact("\rSearching... ")
        child.expect_exact("down failed")
        child.expect_exact("\r\x1b[K")
        child.expect_exact("Warning: down: cannot connect to 127.0.0.1:9")
        child.expect_exact("Sorry, no image could match your request.")
        child.expect(pexpect.EOF)
        child.close()
        assert child.exitstatus == 0
        assert d.stop() == 0
    finally:
        d.kill()


def test_a_second_daemon_on_the_same_state_folder_touches_nothing(folder: Path) -> None:
    conf = write_config(folder)
    first = harness(folder, conf, "long")
    try:
        first.start()
        (child,) = first.wait_for(lambda e: e.get("event") == "long_child_started")["pids"]
        second = run_once(conf)
        assert second.returncode == 1
        assert f"another waltd uses {folder / 'state'} (pid {first.proc.pid})" in second.stderr
        record = json.loads(second.stdout.splitlines()[-1])
        assert record["event"] == "daemon_already_running" and record["level"] == "error"
        assert _alive(child)  # its children were not killed
        status = json.loads(walt(first.socket, "status", "--json").stdout)
        assert status["pid"] == first.proc.pid
        assert first.stop() == 0
    finally:
        first.kill()


def test_a_failure_at_start_is_one_json_record_and_status_1(folder: Path) -> None:
    (folder / "file").write_text("")
    conf = write_config(folder, daemon={"state-dir": str(folder / "file" / "state")})
    proc = run_once(conf)
    assert proc.returncode == 1
    record = json.loads(proc.stdout.splitlines()[-1])
    assert record["event"] == "daemon_failed" and "NotADirectoryError" in record["error"]
    assert "Traceback" in record["exception"] and "Traceback" not in proc.stderr


# Prints the HTTP status and JSON body of GET /v1/status, run as another user (see above).
_RAW_GET = """
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.connect(sys.argv[1])
s.sendall(b"GET /v1/status HTTP/1.1\\r\\nHost: waltd\\r\\nConnection: close\\r\\n\\r\\n")
data = b""
while chunk := s.recv(65536):
    data += chunk
head, body = data.split(b"\\r\\n\\r\\n", 1)
print(json.dumps({"status": int(head.split()[1]), "body": json.loads(body)}))
"""


def _get_status_as(user: str, sock: Path) -> dict[str, Any]:
    python = require_tool("/usr/bin/python3")
    res = subprocess.run(
        ["runuser", "-u", user, "--", python, "-c", _RAW_GET, str(sock)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert res.returncode == 0, res.stderr
    answer: dict[str, Any] = json.loads(res.stdout)
    return answer


def test_callers_without_a_walt_user_of_their_own_are_refused(daemon: Daemon) -> None:
    suffix = uuid.uuid4().hex[:6]
    symbols = "_" + "".join(random.choice("._") for _ in range(12))  # normalises to ""
    upper, lower = f"Walt_C{suffix}", f"walt-c{suffix}"  # both give walt-c<suffix>
    with unix_users(symbols, upper, lower):
        daemon.folder.chmod(0o755)
        daemon.start()
        nameless = _get_status_as(symbols, daemon.socket)
        assert nameless["status"] == 403
        assert "gives no walt user name" in nameless["body"]["error"]
        for caller, other in ((upper, lower), (lower, upper)):
            refused = _get_status_as(caller, daemon.socket)
            assert refused["status"] == 403
            message = refused["body"]["error"]
            assert f"walt user name 'walt-c{suffix}'" in message and repr(other) in message
        assert not any(r.get("event") == "service_crashed" for r in daemon.records())
        root = json.loads(walt(daemon.socket, "status", "--json").stdout)["caller"]
        assert root["walt_user"] == "root"
        assert daemon.stop() == 0


class _Registry(ThreadingHTTPServer):
    """A plain-HTTP registry with an empty catalog on 127.0.0.1, in threads of this process.

    `seen` records ("GET", client port) for each request and ("closed", client port) when a
    connection ends. With `hang`, a request is never answered: its connection stays until the
    client drops it.
    """

    daemon_threads = True

    def __init__(self, *, hang: bool = False) -> None:
        super().__init__(("127.0.0.1", 0), _RegistryHandler)
        self.hang = hang
        self.seen: list[tuple[str, int]] = []
        self.port = self.server_address[1]
        threading.Thread(target=self.serve_forever, daemon=True).start()

    def entry(self, description: str = "test") -> dict[str, object]:
        """Its server.conf entry, labelled `local`."""
        return {
            "label": "local",
            "api": "docker-registry-v2",
            "description": description,
            "host": "127.0.0.1",
            "port": self.port,
            "protocol": "http",
        }

    def ports(self, kind: str) -> list[int]:
        """The client ports of the `kind` events ("GET" or "closed"), in order."""
        return [port for what, port in self.seen if what == kind]


class _RegistryHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: a client may reuse the connection
    server: _Registry

    def do_GET(self) -> None:
        self.server.seen.append(("GET", self.client_address[1]))
        if self.server.hang:
            self.connection.recv(1)  # b"" once the client closes the connection
            return
        body = b'{"repositories": []}'
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def finish(self) -> None:
        super().finish()
        self.server.seen.append(("closed", self.client_address[1]))

    def log_message(self, format: str, *args: object) -> None:
        """Quiet."""


def test_image_search_keeps_registry_connections_until_a_reload_changes_them(
    folder: Path,
) -> None:
    registry = _Registry()
    no_docker = {"docker-socket": str(folder / "no-docker.sock")}
    conf = write_config(folder, registries=[registry.entry()], images=no_docker)
    d = Daemon(folder, conf)

    def search() -> None:
        res = walt(d.socket, "image", "search")
        assert res.returncode == 0 and res.stderr == "", res.stderr

    def reload() -> None:
        done = sum(r.get("event") == "config_reloaded" for r in d.records())
        d.signal(signal.SIGHUP)
        until_sync(
            lambda: sum(r.get("event") == "config_reloaded" for r in d.records()) > done,
            what="a reload",
        )

    try:
        d.start()
        search()
        search()
        reload()  # nothing changed: the same sources
        search()
        (port,) = set(registry.ports("GET"))  # one connection for the three searches
        assert registry.ports("closed") == []

        write_config(folder, registries=[registry.entry("changed")], images=no_docker)
        reload()  # new sources; the old ones closed
        until_sync(lambda: registry.ports("closed") == [port], what="the old connection closed")
        search()
        assert len(set(registry.ports("GET"))) == 2
        assert d.stop() == 0
    finally:
        d.kill()
        registry.shutdown()


def test_image_search_stops_when_the_caller_leaves(folder: Path) -> None:
    registry = _Registry(hang=True)
    no_docker = {"docker-socket": str(folder / "no-docker.sock")}
    d = Daemon(folder, write_config(folder, registries=[registry.entry()], images=no_docker))
    try:
        d.start()
        body = json.dumps({"keyword": None}).encode()
        with socket.socket(socket.AF_UNIX) as client:
            client.connect(str(d.socket))
            client.sendall(
                b"POST /v1/images/search HTTP/1.1\r\nHost: waltd\r\n"
                b"Content-Type: application/json\r\n"
                + f"Content-Length: {len(body)}\r\n\r\n".encode()
                + body
            )
            answer = b""
            while b"\r\n\r\n" not in answer:
                answer += client.recv(4096)
            assert answer.startswith(b"HTTP/1.1 200")
            until_sync(lambda: registry.ports("GET") != [], what="a request")
        # the search ends with its caller, not when the registry's timeout (30 s) ends it
        until_sync(lambda: registry.ports("closed") != [], what="a closed connection", timeout_s=5)
        assert not any(r.get("event") == "image_search" for r in d.records())
        assert d.stop() == 0
    finally:
        d.kill()
        registry.shutdown()


def _post_search(socket_path: Path, body: dict[str, object]) -> tuple[int, str]:
    """POST a search over the raw socket; (HTTP status, body text)."""
    data = json.dumps(body).encode()
    with socket.socket(socket.AF_UNIX) as client:
        client.connect(str(socket_path))
        client.sendall(
            b"POST /v1/images/search HTTP/1.1\r\nHost: waltd\r\nConnection: close\r\n"
            b"Content-Type: application/json\r\n"
            + f"Content-Length: {len(data)}\r\n\r\n".encode()
            + data
        )
        answer = b""
        while chunk := client.recv(65536):
            answer += chunk
    head, _, rest = answer.partition(b"\r\n\r\n")
    return int(head.split()[1]), rest.decode(errors="replace")


def test_a_caller_cannot_blank_the_log_through_search_logins(folder: Path) -> None:
    """Logins for labels the server does not know are dropped, short passwords refused:
    the redactor only ever hides real registry passwords."""
    down = {
        "label": "down",
        "api": "docker-registry-v2",
        "host": "127.0.0.1",
        "port": 9,
        "protocol": "http",
        "auth": "basic",
    }
    no_docker = {"docker-socket": str(folder / "no-docker.sock")}
    d = Daemon(folder, write_config(folder, registries=[down], images=no_docker))
    try:
        d.start()
        status, text = _post_search(
            d.socket, {"credentials": {"down": {"username": "u", "password": "info"}}}
        )
        assert status == 400 and "too short" in text
        status, _ = _post_search(
            d.socket,
            {
                "credentials": {
                    "image_search": {"username": "u", "password": "image_search"},
                    "down": {"username": "u", "password": "a-real-password"},
                }
            },
        )
        assert status == 200
        record = d.wait_for(lambda e: e.get("event") == "image_search")
        assert record["level"] == "info" and record["user"] == "root"
        assert d.stop() == 0
    finally:
        d.kill()
