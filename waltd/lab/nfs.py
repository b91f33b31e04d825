"""The lab's NFS server: rpcbind and nfs-ganesha in the server namespace (no kernel nfsd here)."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Iterable
from types import TracebackType

from waltd.lab import configs
from waltd.lab.lab import Lab, LabError, LabProcess

NFS_PORT = 2049
RPCBIND_PORT = 111
# Line ganesha logs (level EVENT) once a SIGHUP has re-read the exports.
_RELOADED = "Reread exports complete"


class Ganesha:
    """`async with Ganesha(lab) as nfs:` runs `rpcbind -f` and `ganesha.nfsd -F`; no export yet.

    `set_exports` rewrites the `%include`d exports file and sends SIGHUP. Leaving the block stops
    both servers, which drops every export (do it before unmounting what was exported).

    One at a time per machine: rpcbind holds /run/rpcbind.lock, and ganesha registers its ports
    through /run/rpcbind.sock, which no network namespace hides.
    """

    def __init__(self, lab: Lab) -> None:
        self._lab = lab
        self._folder = lab.root / "ganesha"
        self._exports_file = self._folder / "exports.conf"
        self._rpcbind: LabProcess | None = None
        self._ganesha: LabProcess | None = None

    async def __aenter__(self) -> Ganesha:
        lab = self._lab
        recovery = self._folder / "recovery"
        recovery.mkdir(parents=True, exist_ok=True)
        self._exports_file.write_text("")
        conf = self._folder / "ganesha.conf"
        conf.write_text(configs.ganesha_conf(recovery, self._exports_file))
        try:
            # NFSv3 clients find mountd through rpcbind, and ganesha exits when there is none
            self._rpcbind = await lab.spawn("rpcbind", ["rpcbind", "-f"], netns=lab.server_netns)
            await lab.wait_listening(self._rpcbind, RPCBIND_PORT)
            log = lab.root / "logs" / "ganesha.log"  # its own log and its output, one file
            argv = ["ganesha.nfsd", "-F", "-L", str(log), "-f", str(conf)]
            argv += ["-p", str(self._folder / "ganesha.pid"), "-N", "NIV_EVENT"]
            self._ganesha = await lab.spawn("ganesha", argv, netns=lab.server_netns)
            await lab.wait_listening(self._ganesha, NFS_PORT)
        except BaseException:
            await self._stop()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self._stop()

    async def _stop(self) -> None:
        for proc in (self._ganesha, self._rpcbind):
            if proc is not None:
                await self._lab.stop(proc)
        self._ganesha = self._rpcbind = None

    def _reloads(self) -> int:
        assert self._ganesha is not None
        return self._ganesha.log.read_text(errors="replace").count(_RELOADED)

    async def set_exports(
        self, exports: Iterable[configs.NfsExport], *, timeout_s: float = 10.0
    ) -> None:
        """Export exactly `exports` (none removes all); return once ganesha applied them."""
        if self._ganesha is None:
            raise LabError("ganesha is not running")
        text = configs.ganesha_exports(exports)
        before = self._reloads()
        staging = self._exports_file.with_suffix(".tmp")
        staging.write_text(text)
        staging.replace(self._exports_file)  # ganesha never reads half a file
        self._ganesha.process.send_signal(signal.SIGHUP)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while self._reloads() <= before:
            if self._ganesha.process.returncode is not None or loop.time() > deadline:
                raise LabError(f"ganesha did not reload its exports:\n{self._ganesha.log_tail()}")
            await asyncio.sleep(0.02)
