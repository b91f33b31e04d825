"""The lab's NFS server: waltd's ganesha exporter (rpcbind and nfs-ganesha) in the server
namespace (no kernel nfsd here)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager

from lab.lab import Lab, LabError
from waltd.provision.nfs import GaneshaExporter, NfsExport, rpcbind_answers


class Ganesha:
    """A running rpcbind and ganesha (see `ganesha`); no export at first."""

    def __init__(self, exporter: GaneshaExporter) -> None:
        self.exporter = exporter

    async def set_exports(self, exports: Iterable[NfsExport]) -> None:
        """Export exactly `exports` (none removes all); return once ganesha applied them."""
        await self.exporter.apply(list(exports))


@asynccontextmanager
async def ganesha(lab: Lab) -> AsyncIterator[Ganesha]:
    """`async with ganesha(lab) as nfs:` runs rpcbind and ganesha in the server namespace.

    Leaving the block stops both servers, which drops every export (do it before unmounting
    what was exported). One at a time per machine: rpcbind holds /run/rpcbind.lock, and
    ganesha registers its ports through /run/rpcbind.sock, which no network namespace hides.
    """
    if await asyncio.to_thread(rpcbind_answers):
        # ganesha would register with it, out of the nodes' reach: their NFSv3 would fail
        raise LabError("another rpcbind answers on /run/rpcbind.sock: one NFS lab at a time")
    wrap = ["nsenter", f"--net={lab.netns_path(lab.server_netns)}", "--"]
    async with GaneshaExporter(lab.root / "ganesha", lab.children, wrap=wrap) as exporter:
        yield Ganesha(exporter)
