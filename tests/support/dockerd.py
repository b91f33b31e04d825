"""A real dockerd inside a lab, as on a WalT server: no bridge, no iptables, no ip_forward."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

from lab.lab import Lab, LabError, LabProcess
from lab.record import mount_points
from tests.support.wait import until


@dataclass(frozen=True)
class Dockerd:
    """A running dockerd: its socket URL and its folders."""

    process: LabProcess
    folder: Path

    @property
    def socket(self) -> str:
        """`unix://` URL of its API socket."""
        return f"unix://{self.folder / 'docker.sock'}"


def processes_under(folder: Path) -> list[int]:
    """PIDs of the processes whose command line names `folder` (dockerd, its containerd)."""
    needle = str(folder).encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue  # gone meanwhile
        if needle in cmdline:
            found.append(int(entry.name))
    return found


async def load_image(lab: Lab, daemon: Dockerd, image: str, name: str) -> None:
    """Copy `image` of the lab's storage into dockerd as `name` (skopeo, as a WalT server does)."""
    argv = ["skopeo", "copy", "--quiet", "--dest-daemon-host", daemon.socket]
    argv += [f"containers-storage:{image}", f"docker-daemon:{name}"]
    await lab.run(argv, env=lab.containers_env)


@asynccontextmanager
async def dockerd(lab: Lab, *, timeout_s: float = 20.0) -> AsyncIterator[Dockerd]:
    """Start dockerd with its data, exec root and socket in the lab; stop it by PID at the end.

    Leaving the block checks that dockerd took its containerd and its mounts with it.
    """
    folder = lab.root / "dockerd"
    folder.mkdir()
    argv = [
        "dockerd",
        *("--data-root", str(folder / "data"), "--exec-root", str(folder / "exec")),
        *("--pidfile", str(folder / "docker.pid"), "-H", f"unix://{folder / 'docker.sock'}"),
        "--bridge=none",
        "--iptables=false",
        "--ip-forward=false",
    ]
    process = await lab.spawn("dockerd", argv)
    daemon = Dockerd(process, folder)
    try:
        await _wait_ready(process, folder / "docker.sock", timeout_s)
        yield daemon
    finally:
        await lab.stop(process, grace_s=15.0)
        leftovers = processes_under(folder)
        mounts = mount_points(folder)
        if leftovers or mounts:
            raise LabError(f"dockerd left processes {leftovers} and mounts {sorted(mounts)}")


async def _wait_ready(process: LabProcess, sock: Path, timeout_s: float) -> None:
    """Until the API answers `GET /_ping` on `sock`."""
    await until(
        lambda: _ping(sock),  # a missing socket is an OSError there
        what="dockerd's API",
        timeout_s=timeout_s,
        alive=lambda: process.process.returncode is None,
        details=process.log_tail,
    )


async def _ping(sock: Path) -> bool:
    try:
        reader, writer = await asyncio.open_unix_connection(str(sock))
    except OSError:
        return False
    try:
        writer.write(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
        await writer.drain()
        status = await reader.readline()
        return b" 200 " in status
    finally:
        writer.close()
