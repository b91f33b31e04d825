"""Run a real waltd process for a test: configuration in a short temp folder, JSON logs captured."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from tests.support.wait import until_sync
from waltd import dhcp_event

ROOT = Path(__file__).resolve().parents[2]


def short_dir() -> Path:
    """A fresh folder with a short path (unix socket paths are limited to 107 bytes)."""
    return Path(tempfile.mkdtemp(prefix="wd-", dir="/tmp"))


def write_config(folder: Path, **sections: Any) -> Path:
    """A server.conf whose every path lies inside `folder`; `sections` override (a mapping
    is merged into the section's keys given here, anything else replaces it)."""
    data: dict[str, Any] = {
        "api": {"socket": str(folder / "api.sock")},
        "daemon": {
            "state-dir": str(folder / "state"),
            "shutdown-budget-s": 3,
            "image-storage": str(folder / "images"),
            "run-dir": str(folder / "run"),
        },
        "exports": {"root": str(folder / "exports"), "nfs": "ganesha"},
    }
    for key, value in sections.items():
        name = key.replace("_", "-")
        given = data.get(name)
        data[name] = {**given, **value} if isinstance(given, dict) else value
    path = folder / "server.conf"
    path.write_text(yaml.safe_dump(data))
    return path


class Daemon:
    """A waltd child process, started by `python -m waltd` or by a harness script."""

    def __init__(
        self,
        folder: Path,
        config: Path,
        argv: list[str] | None = None,
        env: dict[str, str] | None = None,
        log_level: str = "info",
    ) -> None:
        self.folder = folder
        self.config = config
        self.socket = folder / "api.sock"
        self.log_path = folder / "waltd.log"
        self._argv = argv or [
            *(sys.executable, "-m", "waltd", "--config", str(config)),
            *("--log-level", log_level),
        ]
        self._env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait_ready: bool = True) -> Daemon:
        """Start the process; by default wait for its `daemon_ready` record."""
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            self._argv, stdout=self._log, stderr=subprocess.STDOUT, env=self._env
        )
        if wait_ready:
            self.wait_for(lambda e: e.get("event") == "daemon_ready", timeout=20)
        return self

    def records(self) -> list[dict[str, Any]]:
        """The JSON log records written so far (non-JSON lines are kept as `raw`)."""
        return read_records(self.log_path)

    def wait_for(
        self, match: Callable[[dict[str, Any]], bool], timeout: float = 10
    ) -> dict[str, Any]:
        """The first log record matching `match`; fails after `timeout` seconds."""
        return until_sync(
            lambda: find_record(self.records(), match),
            what="a matching log record",
            timeout_s=timeout,
            alive=lambda: self.proc is None or self.proc.poll() is None,
            details=lambda: f"log:\n{self.log_path.read_text()[-4000:]}",
        )

    def signal(self, sig: signal.Signals) -> None:
        """Send `sig` to the daemon."""
        assert self.proc is not None
        self.proc.send_signal(sig)

    def stop(self, timeout: float = 30) -> int:
        """SIGTERM and wait; returns the exit status."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        finally:
            self._log.close()

    def kill(self) -> None:
        """SIGKILL if still running (test clean-up)."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        if hasattr(self, "_log"):
            self._log.close()


def read_records(path: Path) -> list[dict[str, Any]]:
    """The JSON log records of a waltd log file (non-JSON lines are kept as `raw`)."""
    out = []
    for line in path.read_text(errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            out.append({"raw": line})
    return out


def is_event(name: str, **keys: object) -> Callable[[dict[str, Any]], bool]:
    """A match for `find_record` and the waits: records of event `name` with these values."""
    return lambda r: r.get("event") == name and all(r.get(k) == v for k, v in keys.items())


def is_lease(mac: str, **keys: object) -> Callable[[dict[str, Any]], bool]:
    """A match for a lease of node `mac` with these values: `node_lease`, or
    `node_lease_repeated` when it repeated what was recorded (a debug record: only a daemon
    logging at debug level writes it)."""
    events = ("node_lease", "node_lease_repeated")
    return lambda r: (
        r.get("event") in events
        and r.get("mac") == mac
        and all(r.get(k) == v for k, v in keys.items())
    )


def find_record(
    records: list[dict[str, Any]], match: Callable[[dict[str, Any]], bool], after: int = 0
) -> dict[str, Any] | None:
    """The first record matching `match` once the first `after` matching ones are passed."""
    found = [record for record in records if match(record)]
    return found[after] if len(found) > after else None


def run_once(config: Path) -> subprocess.CompletedProcess[str]:
    """`waltd --config CONFIG` to its end (a start that fails), its output captured."""
    return subprocess.run(
        [sys.executable, "-m", "waltd", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def process_group(leader: int) -> list[int]:
    """The PIDs of the processes in `leader`'s process group."""
    group = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.getpgid(int(entry)) == leader:
                    group.append(int(entry))
            except ProcessLookupError:
                continue
    return group


def running(program: str, marker: str) -> list[int]:
    """The PIDs of the processes of `program` (the basename of their argv[0]) with `marker`
    in one of their arguments (a configuration file, a MAC)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue  # gone meanwhile
        if Path(argv[0].decode(errors="replace")).name == program and any(
            marker.encode() in arg for arg in argv
        ):
            found.append(int(entry.name))
    return found


def harness(folder: Path, config: Path, mode: str) -> Daemon:
    """The real daemon with one extra test service (tests/support/harness.py MODE)."""
    argv = [sys.executable, str(ROOT / "tests/support/harness.py"), str(config), mode]
    return Daemon(folder, config, argv=argv)


def walt(socket: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """Run the `walt` client against `socket`."""
    cmd = [sys.executable, "-m", "waltd.cli.walt", *args]
    env = {**os.environ, "WALT_SOCKET": str(socket), "PYTHONPATH": str(ROOT)}
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=30)


def remove(folder: Path) -> None:
    """Remove a test folder."""
    shutil.rmtree(folder, ignore_errors=True)


def spool_of(folder: Path) -> Path:
    """The lease-event spool of the daemon configured by `write_config(folder)`."""
    return folder / "run" / "dhcp-spool"


def run_hook(folder: Path, *argv: str, **env: str) -> None:
    """Run `waltd-dhcp-event ARGV` as dnsmasq would for the daemon configured by
    `write_config(folder)` (into its spool, where its inotify watch sees the event); `env`
    adds dnsmasq's DNSMASQ_* variables."""
    environ = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        dhcp_event.SPOOL_ENV: str(spool_of(folder)),
        **env,
    }
    subprocess.run(
        [sys.executable, "-m", "waltd.dhcp_event", *argv], env=environ, check=True, timeout=10
    )
