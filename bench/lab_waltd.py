"""What the lab benchmarks share: waltd started in a lab on its node network, with a
registry as the hub stand-in, and its log read as it grows."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import yaml

from lab import Lab, LabProcess, Registry

WAIT_S = 300.0  # for one awaited state of a daemon
# The figures come from the records' own times: polling more often only takes CPU from what
# is measured (the floor's runs poll nothing).
_POLL_S = 0.25
_REPO = Path(__file__).resolve().parents[1]

Record = dict[str, Any]


class Log:
    """A waltd log read as it grows: its JSON records, each line parsed once."""

    def __init__(self, proc: LabProcess) -> None:
        self.proc = proc
        self.records: list[Record] = []
        self._offset = 0
        self._partial = b""

    def poll(self) -> None:
        """Read what was written since the last call."""
        with self.proc.log.open("rb") as file:
            file.seek(self._offset)
            data = file.read()
        self._offset += len(data)
        lines = (self._partial + data).split(b"\n")
        self._partial = lines.pop()
        for line in lines:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                self.records.append(record)

    def named(self, event: str, since: int = 0) -> list[Record]:
        """The records of `event` from index `since` on."""
        return [r for r in self.records[since:] if r.get("event") == event]

    async def until(self, done: Callable[[], bool], what: str) -> None:
        """Poll until `done()`; RuntimeError when the daemon exits or WAIT_S pass."""
        deadline = time.monotonic() + WAIT_S
        while True:
            self.poll()
            if done():
                return
            if self.proc.process.returncode is not None:
                raise RuntimeError(f"waltd exited waiting for {what}:\n{self.proc.log_tail(30)}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"no {what} after {WAIT_S} s:\n{self.proc.log_tail(30)}")
            await asyncio.sleep(_POLL_S)


def stamp(record: Record) -> float:
    """A record's time, seconds since the epoch."""
    return datetime.fromisoformat(record["timestamp"]).timestamp()


async def write_config(
    lab: Lab, folder: Path, registry: Registry, images: Mapping[str, object] | None = None
) -> Path:
    """server.conf: the lab's node network, `registry` as the hub, every path in `folder`
    (made here); `images` adds keys to the images section.

    The runtime folder is a memory file system, as /run is under systemd (the unit's
    RuntimeDirectory): the daemon's files of one boot (lease events, dnsmasq's host
    entries, its children's record) live where they would on a server.
    """
    run = folder / "run"
    await asyncio.to_thread(folder.mkdir)
    await asyncio.to_thread(run.mkdir)
    await lab.mount_tmpfs(run, "mode=0711,size=64m")
    first, last = lab.dhcp_range
    net = {
        "interface": lab.bridge,
        "ip": str(lab.server_interface),
        "dhcp-range": f"{first}-{last}",
    }
    hub = {
        "label": "hub",
        "api": "docker-hub",
        "description": "bench hub stand-in",
        "registry-url": registry.url,
    }
    data = {
        "network": {"walt-net": net},
        "registries": [hub],
        "images": {"docker-socket": str(folder / "no-docker.sock"), **(images or {})},
        "api": {"socket": str(folder / "api.sock")},
        "daemon": {
            "state-dir": str(folder / "state"),
            "image-storage": str(folder / "images"),
            "shutdown-budget-s": 10,
            "run-dir": str(run),
        },
        "exports": {"root": str(folder / "exports"), "nfs": "ganesha"},
    }
    path = folder / "server.conf"
    path.write_text(yaml.safe_dump(data))
    return path


async def start_waltd(lab: Lab, config: Path, name: str, ready: Sequence[str]) -> Log:
    """waltd with `config` in the server namespace, once it logged each of `ready`."""
    argv = [sys.executable, "-m", "waltd", "--config", str(config)]
    log = Log(await lab.spawn(name, argv, netns=lab.server_netns, env={"PYTHONPATH": str(_REPO)}))
    await log.until(lambda: all(log.named(e) for e in ready), "a ready daemon")
    return log
