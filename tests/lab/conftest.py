"""Fixtures of the lab's self-tests: a lab per module, a dnsmasq on its node network."""

from __future__ import annotations

import json
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import pytest_asyncio

import tests.conftest as suite
from lab import Lab, LabProcess
from tests.support.labs import require_lab
from tests.support.wait import until


@pytest.fixture(scope="session")
def require_tool() -> Callable[[str], str]:
    """The suite's require_tool: a missing tool skips the test, or fails it in CI."""
    return suite.require_tool


@pytest.fixture(scope="session")
def lab_host() -> None:
    """Root and the tools of every lab, or a skip (a failure in CI)."""
    require_lab()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def lab(lab_host: None) -> AsyncIterator[Lab]:
    """One lab for the whole module (its tests run in the module's event loop)."""
    async with Lab() as running:
        yield running


HOOK = """#!{python} -I
# dnsmasq's dhcp-script: one JSON line per call, its arguments and DNSMASQ_* environment
import json, os, sys
env = {{k: v for k, v in os.environ.items() if k.startswith("DNSMASQ_")}}
with open({events!r}, "a") as out:
    out.write(json.dumps({{"argv": sys.argv[1:], "env": env}}) + "\\n")
"""


def dnsmasq_conf(lab: Lab, folder: Path) -> str:
    """A minimal DHCP configuration for the lab's bridge (no DNS, no TFTP), walt classes tagged."""
    first, last = lab.dhcp_range
    lines = [
        "port=0",
        f"interface={lab.bridge}",
        "bind-interfaces",
        "no-ping",  # without it the first offer waits ~3 s
        f"dhcp-range={first},{last},{lab.subnet.netmask},12h",
        f"dhcp-leasefile={folder / 'leases'}",
        f"dhcp-script={folder / 'hook'}",
        "dhcp-vendorclass=set:walt,walt.node",
        "dhcp-userclass=set:walt,walt.node",
        f"pid-file={folder / 'dnsmasq.pid'}",
        "log-facility=-",
        "log-dhcp",
    ]
    return "\n".join(lines) + "\n"


class Dnsmasq:
    """A dnsmasq serving DHCP on the lab's node network; what its hook saw."""

    def __init__(self, process: LabProcess, events: Path) -> None:
        self.process = process
        self._events = events

    def events(self) -> list[dict[str, object]]:
        """Every hook call so far: {"argv": [...], "env": {...}}."""
        if not self._events.exists():
            return []
        return [json.loads(line) for line in self._events.read_text().splitlines()]

    async def wait_event(self, action: str, mac: str, timeout_s: float = 5.0) -> dict[str, object]:
        """The first hook call `action MAC ...` (the hook runs shortly after the lease)."""

        def found() -> dict[str, object] | None:
            for event in self.events():
                argv = event["argv"]
                assert isinstance(argv, list)
                if argv[:2] == [action, mac]:
                    return event
            return None

        return await until(
            found,
            what=f"dnsmasq's hook call {action} {mac}",
            timeout_s=timeout_s,
            alive=lambda: self.process.process.returncode is None,
            details=self.process.log_tail,
        )


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def dnsmasq(lab: Lab, require_tool: Callable[[str], str]) -> AsyncIterator[Dnsmasq]:
    """dnsmasq in the server namespace, started by the test (in production waltd starts it)."""
    require_tool("dnsmasq")
    folder = lab.root / "dnsmasq"
    folder.mkdir()
    hook = folder / "hook"
    hook.write_text(HOOK.format(python=sys.executable, events=str(folder / "events.jsonl")))
    hook.chmod(0o755)
    conf = folder / "dnsmasq.conf"
    conf.write_text(dnsmasq_conf(lab, folder))
    argv = ["dnsmasq", "--keep-in-foreground", f"--conf-file={conf}"]
    process = await lab.spawn("dnsmasq", argv, netns=lab.server_netns)
    await lab.wait_listening(process, 67, udp=True)
    yield Dnsmasq(process, folder / "events.jsonl")
    await lab.stop(process)
