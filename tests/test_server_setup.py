"""`walt-server-setup`: check, the scriptable registry commands, files written, connectivity.

The connectivity check runs against the real registries of a lab, on the host's loopback
(anonymous, and with an htpasswd file); podman's drop-in always goes to the test's own folder.
"""

from __future__ import annotations

import asyncio
import io
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import tomllib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import pytest_asyncio
import yaml

from lab import Registry
from tests.support.labs import running_lab
from waltd import credentials
from waltd.cli import registry_setup
from waltd.cli.server_setup import main
from waltd.registries.base import Credentials

USER = "walt-admin"
PASSWORD = "Sesame-s3cret!pw"


def test_check_valid_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "server.conf"
    conf.write_text("network:\n  walt-net: {interface: walt-net, ip: 192.168.152.1/22}\n")
    assert main(["--config", str(conf), "check"]) == 0
    out = capsys.readouterr().out
    assert "valid" in out and "walt-net 192.168.152.1/22" in out and "hub" in out


def test_check_broken_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    conf = tmp_path / "server.conf"
    conf.write_text("images: {fetch-concurency: 2}\n")
    assert main(["--config", str(conf), "check"]) == 78
    err = capsys.readouterr().err
    assert str(conf) in err and "fetch-concurency" in err


# ---- real registries on loopback -------------------------------------------------------------


def free_port() -> int:
    """A TCP port nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Registries:
    """An anonymous registry and one that wants USER/PASSWORD."""

    open: Registry
    locked: Registry


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def registries() -> AsyncIterator[Registries]:
    """Two real registries of a lab (on the host's 127.0.0.1) for the module's tests."""
    async with running_lab("docker-registry", "htpasswd") as lab:
        started = await asyncio.gather(
            lab.start_registry("open"), lab.start_registry("locked", auth=(USER, PASSWORD))
        )
        yield Registries(*started)


# ---- the scriptable commands -----------------------------------------------------------------


@dataclass
class Paths:
    """A test's server.conf, its secrets file and podman's drop-in."""

    conf: Path
    secrets: Path
    podman: Path

    def args(self, *command: str) -> list[str]:
        """Command line with this test's files."""
        return ["--config", str(self.conf), "--podman-registries", str(self.podman), *command]

    def registries(self) -> list[dict[str, object]]:
        """The registries in server.conf."""
        entries: list[dict[str, object]] = yaml.safe_load(self.conf.read_text())["registries"]
        return entries

    def snapshot(self) -> dict[str, bytes | None]:
        """Every file's bytes (None when absent)."""
        return {
            str(path): path.read_bytes() if path.exists() else None
            for path in (self.conf, self.secrets, self.podman)
        }


@pytest.fixture
def paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Paths:
    """Files in the test's folder; the variable too, so /etc/containers stays out of reach."""
    podman = tmp_path / "containers" / "registries.conf.d" / "waltd.conf"
    monkeypatch.setenv("WALTD_PODMAN_REGISTRIES", str(podman))
    return Paths(tmp_path / "server.conf", tmp_path / "server.secrets", podman)


def add_registry(paths: Paths, label: str, *options: str, password: str | None = None) -> int:
    """`registry add` with the password on stdin when given."""
    argv = paths.args("registry", "add", "--label", label, *options)
    if password is None:
        return main(argv)
    old = sys.stdin
    sys.stdin = io.StringIO(password + "\n")
    try:
        return main([*argv, "--password-stdin"])
    finally:
        sys.stdin = old


def v2(host: str = "127.0.0.1", port: int = 5000, *options: str) -> tuple[str, ...]:
    return ("--api", "docker-registry-v2", "--host", host, "--port", str(port), *options)


def test_list_without_a_file_shows_the_defaults(
    paths: Paths, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(paths.args("registry", "list")) == 0
    out = capsys.readouterr().out
    assert "does not exist: the defaults apply" in out
    assert "hub.docker.com" in out and "anonymous" in out
    assert not paths.conf.exists() and not paths.podman.exists()


def test_add_v2_with_login_writes_three_files(
    paths: Paths, capsys: pytest.CaptureFixture[str]
) -> None:
    options = v2("127.0.0.1", 5999, "--protocol", "http", "--username", USER, "--no-check")
    assert (
        add_registry(paths, "local", *options, "--description", "Lab registry", password=PASSWORD)
        == 0
    )
    out = capsys.readouterr().out
    assert "Saved:" in out and "systemctl reload waltd" in out
    assert paths.registries() == [
        {"label": "hub", "api": "docker-hub", "description": "Public registry at hub.docker.com"},
        {
            "label": "local",
            "api": "docker-registry-v2",
            "description": "Lab registry",
            "host": "127.0.0.1",
            "port": 5999,
            "protocol": "http",
            "auth": "basic",
        },
    ]
    assert stat.S_IMODE(paths.secrets.stat().st_mode) == 0o600
    assert credentials.load(paths.secrets) == {"local": Credentials(USER, PASSWORD)}
    podman = tomllib.loads(paths.podman.read_text())
    assert podman == {"registry": [{"location": "127.0.0.1:5999", "insecure": True}]}
    for path in (paths.conf, paths.podman):
        assert PASSWORD not in path.read_text()
    assert PASSWORD not in out
    # The listing shows who the server logs in as, never the password.
    assert main(paths.args("registry", "list")) == 0
    listing = capsys.readouterr().out
    assert USER in listing and PASSWORD not in listing


def test_podman_file_lists_insecure_registries_once(paths: Paths) -> None:
    assert (
        add_registry(paths, "secure", *v2("reg.example.org", 443, "--auth", "none", "--no-check"))
        == 0
    )
    noverify = v2("::1", 8443, "--protocol", "https-no-verify", "--no-check")
    assert add_registry(paths, "noverify", *noverify) == 0
    art = ("--api", "jfrog-artifactory", "--host", "127.0.0.1", "--port", "8081")
    for label, repository in (("art1", "walt"), ("art2", "other")):
        options = (*art, "--protocol", "http", "--repository", repository, "--no-check")
        assert add_registry(paths, label, *options) == 0
    podman = tomllib.loads(paths.podman.read_text())
    assert podman["registry"] == [
        {"location": "[::1]:8443", "insecure": True},
        {"location": "127.0.0.1:8081", "insecure": True},
    ]


def test_add_refuses_an_invalid_result_and_writes_nothing(
    paths: Paths, capsys: pytest.CaptureFixture[str]
) -> None:
    assert add_registry(paths, "local", *v2("127.0.0.1", 5999, "--auth", "none", "--no-check")) == 0
    before = paths.snapshot()
    capsys.readouterr()
    conf = str(paths.conf)

    assert add_registry(paths, "local", *v2("127.0.0.1", 6000, "--no-check")) == 78
    err = capsys.readouterr().err
    assert "Nothing written" in err
    assert (
        f"{conf}: registries[2]: key 'label': 'local' is already used by registries[1]; "
        "labels must be unique"
    ) in err

    assert add_registry(paths, "other", *v2("127.0.0.1", 5999, "--no-check")) == 78
    assert (
        f"{conf}: registries entry 'other': key 'host': 127.0.0.1:5999 is already used by "
        "registries entry 'local'; only jfrog-artifactory entries with different repositories "
        "may share a host and port"
    ) in capsys.readouterr().err

    art = ("--api", "jfrog-artifactory", "--host", "art.example.org", "--no-check")
    assert add_registry(paths, "art", *art) == 78
    assert f"{conf}: registries entry 'art': key 'repository': is required" in (
        capsys.readouterr().err
    )

    assert add_registry(paths, "walt", *v2("127.0.0.1", 7000, "--no-check")) == 78
    assert "walt, hub and docker are clone URL locations" in capsys.readouterr().err
    assert paths.snapshot() == before


def test_usage_errors(paths: Paths, capsys: pytest.CaptureFixture[str]) -> None:
    options = v2("127.0.0.1", 5999, "--auth", "none", "--username", USER, "--no-check")
    assert add_registry(paths, "local", *options, password=PASSWORD) == 2
    assert (
        add_registry(paths, "local", *v2("127.0.0.1", 5999, "--username", USER, "--no-check")) == 2
    )
    assert (
        add_registry(paths, "local", *v2("127.0.0.1", 5999, "--username", "a:b"), password="x") == 2
    )
    assert (
        add_registry(paths, "local", *v2("127.0.0.1", 5999, "--username", USER), password="") == 2
    )
    assert PASSWORD not in capsys.readouterr().err
    assert not paths.conf.exists()
    with pytest.raises(SystemExit) as caught:
        main(paths.args())
    assert caught.value.code == 2
    with pytest.raises(SystemExit):
        main(paths.args("--edit-conf", "registry", "list"))


def test_remove_drops_the_entry_and_its_login(
    paths: Paths, capsys: pytest.CaptureFixture[str]
) -> None:
    options = v2("127.0.0.1", 5999, "--protocol", "http", "--username", USER, "--no-check")
    assert add_registry(paths, "local", *options, password=PASSWORD) == 0
    assert main(paths.args("registry", "remove", "nothere")) == 1
    assert "No registry labelled 'nothere'; registries: hub, local." in capsys.readouterr().err
    # Options may come after the command too.
    command = ["registry", "remove", "local", "--config", str(paths.conf)]
    assert main([*command, "--podman-registries", str(paths.podman)]) == 0
    assert [entry["label"] for entry in paths.registries()] == ["hub"]
    assert credentials.load(paths.secrets) == {}
    assert stat.S_IMODE(paths.secrets.stat().st_mode) == 0o600
    assert "insecure" not in paths.podman.read_text()


def test_disable_and_enable_the_hub(paths: Paths, capsys: pytest.CaptureFixture[str]) -> None:
    assert add_registry(paths, "local", *v2("127.0.0.1", 5999, "--auth", "none", "--no-check")) == 0
    assert main(paths.args("disable-hub")) == 0
    assert "new node models need their default image" in capsys.readouterr().out
    assert [entry["label"] for entry in paths.registries()] == ["local"]
    assert main(paths.args("disable-hub")) == 0
    assert "already disabled" in capsys.readouterr().out
    assert main(paths.args("registry", "remove", "local")) == 0
    assert yaml.safe_load(paths.conf.read_text())["registries"] == []
    assert main(paths.args("enable-hub")) == 0
    assert main(paths.args("registry", "add", "--label", "local", *v2(), "--no-check")) == 0
    assert main(paths.args("enable-hub")) == 0
    assert "already enabled" in capsys.readouterr().out
    assert [entry["label"] for entry in paths.registries()] == ["hub", "local"]


def test_invalid_files_are_refused(paths: Paths, capsys: pytest.CaptureFixture[str]) -> None:
    paths.conf.write_text("registries:\n- {label: local, api: docker-registry-v2}\n")
    assert main(paths.args("enable-hub")) == 78
    assert "key 'host': is required" in capsys.readouterr().err
    paths.conf.write_text("")
    credentials.save(paths.secrets, {"local": Credentials(USER, PASSWORD)})
    paths.secrets.chmod(0o644)
    before = paths.snapshot()
    assert main(paths.args("registry", "list")) == 78
    err = capsys.readouterr().err
    assert f"chmod 600 {paths.secrets}" in err and PASSWORD not in err
    assert paths.snapshot() == before


def test_reload_pid_sends_sighup(paths: Paths, capsys: pytest.CaptureFixture[str]) -> None:
    received: list[int] = []
    old = signal.signal(signal.SIGHUP, lambda number, _: received.append(number))
    try:
        assert main(paths.args("--reload-pid", str(os.getpid()), "disable-hub")) == 0
    finally:
        signal.signal(signal.SIGHUP, old)
    assert received == [signal.SIGHUP]
    assert f"Sent SIGHUP to process {os.getpid()}" in capsys.readouterr().out


def test_edit_conf_refuses_without_a_terminal(paths: Paths) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "waltd.cli.server_setup", *paths.args("--edit-conf")],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert "needs a terminal" in result.stderr and "registry list|add|remove" in result.stderr
    assert not paths.conf.exists()


# ---- connectivity ----------------------------------------------------------------------------


def test_reachable_registries_give_no_warning(
    paths: Paths, registries: Registries, capsys: pytest.CaptureFixture[str]
) -> None:
    http = ("--protocol", "http")
    anonymous = v2("127.0.0.1", registries.open.port, *http, "--auth", "none")
    assert add_registry(paths, "open", *anonymous) == 0
    # 401 without a login: the registry answers, users will give theirs.
    assert add_registry(paths, "locked", *v2("127.0.0.1", registries.locked.port, *http)) == 0
    assert "WARNING" not in capsys.readouterr().err
    assert main(paths.args("registry", "remove", "locked")) == 0
    options = (*http, "--username", USER)
    locked = v2("127.0.0.1", registries.locked.port, *options)
    assert add_registry(paths, "locked", *locked, password=PASSWORD) == 0
    assert "WARNING" not in capsys.readouterr().err


def test_unreachable_or_refused_registries_warn_but_save(
    paths: Paths, registries: Registries, capsys: pytest.CaptureFixture[str]
) -> None:
    closed = free_port()
    assert add_registry(paths, "gone", *v2("127.0.0.1", closed, "--protocol", "http")) == 0
    err = capsys.readouterr().err
    assert (
        f"WARNING: gone: http://127.0.0.1:{closed}/v2/: cannot connect: connection refused" in err
    )
    assert "gone" in [entry["label"] for entry in paths.registries()]

    options = ("--protocol", "http", "--username", USER)
    port = registries.locked.port
    assert add_registry(paths, "locked", *v2("127.0.0.1", port, *options), password="wrong") == 0
    err = capsys.readouterr().err
    assert f"WARNING: locked: http://127.0.0.1:{port}/v2/: refused the server's login" in err
    assert "wrong" not in err


class _NotARegistry(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(404)
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


def test_a_server_that_is_not_a_registry_warns(
    paths: Paths, capsys: pytest.CaptureFixture[str]
) -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _NotARegistry)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        assert add_registry(paths, "web", *v2("127.0.0.1", port, "--protocol", "http")) == 0
    finally:
        server.shutdown()
        server.server_close()
    assert "answered HTTP 404, where a registry answers 200 or 401" in capsys.readouterr().err


def test_tls_to_a_plain_http_registry_warns(
    paths: Paths, registries: Registries, capsys: pytest.CaptureFixture[str]
) -> None:
    assert add_registry(paths, "tls", *v2("127.0.0.1", registries.open.port)) == 0
    err = capsys.readouterr().err
    assert f"WARNING: tls: https://127.0.0.1:{registries.open.port}/v2/: cannot connect" in err


def test_a_registry_that_never_answers_warns(
    paths: Paths, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(registry_setup, "CHECK_TIMEOUT_S", 0.3)
    # The kernel completes the connection from the backlog; nothing ever reads or answers.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        port = silent.getsockname()[1]
        assert add_registry(paths, "mute", *v2("127.0.0.1", port, "--protocol", "http")) == 0
    err = capsys.readouterr().err
    assert f"WARNING: mute: http://127.0.0.1:{port}/v2/: no answer within 0.3 s" in err
