"""The lab's NFS server: rpcbind and nfs-ganesha in the server namespace (no kernel nfsd here)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from pathlib import Path

from lab import configs
from lab.lab import Lab, LabError, LabProcess
from waltd.atomic import write_atomic

NFS_PORT = 2049
RPCBIND_PORT = 111
# Line ganesha logs (level EVENT) once a SIGHUP has re-read the exports.
_RELOADED = "Reread exports complete"


class Ganesha:
    """A running `rpcbind -f` and `ganesha.nfsd -F` (see `ganesha`); no export at first.

    `set_exports` rewrites the `%include`d exports file and sends SIGHUP.
    """

    def __init__(self, process: LabProcess, exports_file: Path) -> None:
        self._ganesha = process
        self._exports_file = exports_file

    def _reloads(self) -> int:
        return self._ganesha.log.read_text(errors="replace").count(_RELOADED)

    async def set_exports(
        self, exports: Iterable[configs.NfsExport], *, timeout_s: float = 10.0
    ) -> None:
        """Export exactly `exports` (none removes all); return once ganesha applied them."""
        text = configs.ganesha_exports(exports)
        before = self._reloads()
        write_atomic(self._exports_file, text.encode())  # ganesha never reads half a file
        self._ganesha.process.send_signal(signal.SIGHUP)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self._reloads() <= before:
            if self._ganesha.process.returncode is not None or loop.time() > deadline:
                raise LabError(f"ganesha did not reload its exports:\n{self._ganesha.log_tail()}")
            await asyncio.sleep(0.02)


@asynccontextmanager
async def ganesha(lab: Lab) -> AsyncIterator[Ganesha]:
    """`async with ganesha(lab) as nfs:` runs rpcbind and ganesha in the server namespace.

    Leaving the block stops both servers, which drops every export (do it before unmounting
    what was exported). One at a time per machine: rpcbind holds /run/rpcbind.lock, and
    ganesha registers its ports through /run/rpcbind.sock, which no network namespace hides.
    """
    folder = lab.root / "ganesha"
    recovery = folder / "recovery"
    recovery.mkdir(parents=True, exist_ok=True)
    exports_file = folder / "exports.conf"
    exports_file.write_text("")
    conf = folder / "ganesha.conf"
    conf.write_text(configs.ganesha_conf(recovery, exports_file))
    started: list[LabProcess] = []
    try:
        # NFSv3 clients find mountd through rpcbind, and ganesha exits when there is none
        rpcbind = await lab.spawn("rpcbind", ["rpcbind", "-f"], netns=lab.server_netns)
        started.append(rpcbind)
        await lab.wait_listening(rpcbind, RPCBIND_PORT)
        log = lab.root / "logs" / "ganesha.log"  # its own log and its output, one file
        argv = ["ganesha.nfsd", "-F", "-L", str(log), "-f", str(conf)]
        argv += ["-p", str(folder / "ganesha.pid"), "-N", "NIV_EVENT"]
        process = await lab.spawn("ganesha", argv, netns=lab.server_netns)
        started.append(process)
        await lab.wait_listening(process, NFS_PORT)
        yield Ganesha(process, exports_file)
    finally:
        for proc in reversed(started):
            await lab.stop(proc)
