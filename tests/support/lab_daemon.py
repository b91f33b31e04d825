"""waltd running inside a lab's server namespace, on the lab's node network."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lab.lab import Lab, LabProcess
from tests.support.daemon import ROOT, find_record, read_records, write_config
from tests.support.transfer import hub_entry
from tests.support.wait import until


def lab_config(lab: Lab, folder: Path, **sections: Any) -> Path:
    """A server.conf putting waltd on the lab's bridge; all its files in `folder`.

    `sections` as `write_config` takes them (`daemon` keys are merged with these).
    """
    first, last = lab.dhcp_range
    net = {
        "interface": lab.bridge,
        "ip": str(lab.server_interface),
        "dhcp-range": f"{first}-{last}",
    }
    daemon = {"shutdown-budget-s": 5, **sections.pop("daemon", {})}
    return write_config(folder, network={"walt-net": net}, daemon=daemon, **sections)


def hub_config(lab: Lab, hub_url: str, **sections: Any) -> Path:
    """`lab_config` in a new folder <lab>/waltd (the result's parent): the registry at
    `hub_url` as Docker Hub's, no docker daemon (a socket path nothing listens on).

    `sections` as `lab_config` takes them (`images` keys are merged with these).
    """
    folder = lab.root / "waltd"
    folder.mkdir()
    images = {"docker-socket": str(folder / "no-docker.sock"), **sections.pop("images", {})}
    return lab_config(lab, folder, registries=[hub_entry(hub_url)], images=images, **sections)


async def start_waltd(
    lab: Lab, config: Path, name: str = "waltd", log_level: str = "info"
) -> LabProcess:
    """Start waltd in the server namespace (nsenter --net: it shares the host's mounts);
    its log is `<lab>/logs/<name>.log` (another `name` for a restart: a log of its own)."""
    argv = [sys.executable, "-m", "waltd", "--config", str(config), "--log-level", log_level]
    return await lab.spawn(name, argv, netns=lab.server_netns, env={"PYTHONPATH": str(ROOT)})


def records(proc: LabProcess) -> list[dict[str, Any]]:
    """waltd's JSON log records so far (non-JSON lines are kept as `raw`)."""
    return read_records(proc.log)


async def wait_record(
    proc: LabProcess,
    match: Callable[[dict[str, Any]], bool],
    *,
    after: int = 0,
    timeout_s: float = 15.0,
) -> dict[str, Any]:
    """waltd's first record matching `match` once the first `after` matching ones are passed."""
    return await until(
        lambda: find_record(records(proc), match, after),
        what="a matching record of waltd",
        timeout_s=timeout_s,
        alive=lambda: proc.process.returncode is None,
        details=lambda: f"waltd log:\n{proc.log_tail(40)}",
    )
