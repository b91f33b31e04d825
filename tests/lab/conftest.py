"""Fixtures of the lab's self-tests: a lab per module, a dnsmasq on its node network."""

from __future__ import annotations

import asyncio
import importlib.util
import json
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import ModuleType

import pytest
import pytest_asyncio

from waltd.lab import Lab, LabProcess


def _suite_conftest() -> ModuleType:
    """tests/conftest.py, for require_root and require_tool.

    Without packages, pytest imports every conftest.py as the module `conftest`, each replacing
    the last in sys.modules, so `from conftest import ...` would find this very file. Loading the
    suite's file under its own name avoids both that and a tests/__init__.py.
    """
    path = Path(__file__).resolve().parent.parent / "conftest.py"
    spec = importlib.util.spec_from_file_location("waltd_suite_conftest", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_suite = _suite_conftest()
# What every lab needs, whatever the test does with it.
LAB_TOOLS = ("ip", "nsenter", "mount", "umount", "busybox")


@pytest.fixture(scope="session")
def require_tool() -> Callable[[str], str]:
    """The suite's require_tool: a missing tool skips the test, or fails it in CI."""
    return _suite.require_tool


@pytest.fixture(scope="session")
def lab_host(require_tool: Callable[[str], str]) -> None:
    """Root and the tools of every lab, or a skip (a failure in CI)."""
    _suite.require_root()
    for tool in LAB_TOOLS:
        require_tool(tool)


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
    """The minimal DHCP configuration of INFRA.md for the lab's bridge (no DNS, no TFTP)."""
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
        async with asyncio.timeout(timeout_s):
            while True:
                for event in self.events():
                    argv = event["argv"]
                    assert isinstance(argv, list)
                    if argv[:2] == [action, mac]:
                        return event
                await asyncio.sleep(0.02)


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
