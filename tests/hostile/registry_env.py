"""What the hostile-registry tests share: a live waltd, the `walt` client, small HTTP servers.

The daemon is the real one (`python -m waltd`, tests/support/daemon.py), its registries on the
host's loopback. A hostile registry is a small aiohttp server in the test's event loop, since a
real registry cannot be made to misbehave on purpose; an honest one is a real docker-registry
of the lab holding one WalT image.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import yaml
from aiohttp import web

from lab import Lab, Registry
from tests.conftest import require_root, require_tool
from tests.support.daemon import ROOT, Daemon, short_dir, write_config
from tests.support.registry_images import build, push_tags

WALT_IMAGE = "alice/rpi-os"  # the honest registry's image, tag latest
MODELS = "rpi-3-b-plus"


async def honest_registry(lab: Lab) -> Registry:
    """A real docker-registry of `lab` holding the WalT image `alice/rpi-os:latest`."""
    require_root()
    for tool in ("ip", "nsenter", "buildah", "skopeo", "docker-registry"):
        require_tool(tool)
    await build(lab, "docker.io/t/rpi-os:latest", {"walt.node.models": MODELS})
    registry = await lab.start_registry("honest")
    await push_tags(lab, "docker.io/t/rpi-os:latest", registry, WALT_IMAGE, ["latest"])
    return registry


def v2_entry(label: str, port: int, host: str = "127.0.0.1", auth: str = "none") -> dict[str, Any]:
    """A `docker-registry-v2` entry of server.conf (plain HTTP)."""
    return {
        "label": label,
        "api": "docker-registry-v2",
        "host": host,
        "port": port,
        "protocol": "http",
        "auth": auth,
    }


@asynccontextmanager
async def serving(routes: list[web.RouteDef], host: str = "127.0.0.1") -> AsyncIterator[int]:
    """An aiohttp server with `routes` on `host`, a free port; yields the port."""
    app = web.Application()
    app.add_routes(routes)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, host, 0)
    await site.start()
    try:
        yield runner.addresses[0][1]
    finally:
        await runner.cleanup()


@asynccontextmanager
async def live_daemon(
    registries: list[dict[str, Any]], images: Mapping[str, Any] | None = None
) -> AsyncIterator[Daemon]:
    """A waltd process with these registries (and `images` settings), no docker daemon."""
    folder = short_dir()
    no_docker = {"docker-socket": str(folder / "no-docker.sock")}
    config = write_config(folder, registries=registries, images={**no_docker, **(images or {})})
    daemon = Daemon(folder, config)
    # its start is waited for in a thread: the servers of this loop must keep answering
    await asyncio.to_thread(daemon.start)
    try:
        yield daemon
    finally:
        await asyncio.to_thread(daemon.kill)


async def walt_search(
    daemon: Daemon, *args: str, logins: Mapping[str, tuple[str, str]] | None = None
) -> subprocess.CompletedProcess[str]:
    """`walt image search ARGS` against `daemon`, with `logins` (label -> user, password) in
    its client configuration file, run without blocking this loop."""
    env = {**os.environ, "WALT_SOCKET": str(daemon.socket), "PYTHONPATH": str(ROOT)}
    if logins:
        login_file = daemon.folder / "client.conf"
        regs = {label: {"username": u, "password": p} for label, (u, p) in logins.items()}
        login_file.write_text(yaml.safe_dump({"registries": regs}))
        login_file.chmod(0o600)
        env["WALT_CLIENT_CONFIG"] = str(login_file)
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "waltd.cli.walt",
        "image",
        "search",
        *args,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return subprocess.CompletedProcess(
        ["walt", "image", "search", *args], proc.returncode, out.decode(), err.decode()
    )


def memory_kib(pid: int, field: str) -> int:
    """A field of /proc/PID/status in KiB (`VmHWM`: peak resident memory, `VmRSS`: now)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, value = line.partition(":")
        if name == field:
            return int(value.split()[0])
    raise AssertionError(f"no {field} in /proc/{pid}/status")
