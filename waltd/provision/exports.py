"""Exports: what makes a ready node bootable, kept in step with node events.

For each node whose image is there (state `ready` or `booted`), the exports service:

1. mounts its image once, the exportable way (`mounts.ImageMounts`: R/images/<id>/fs);
2. copies the image's `/boot/<model>/` into R/boot/<id>/<model> once per image and model
   (`boot.copy_boot_files`: server-owned regular files, links resolved inside the image);
3. points the node's folder at both (`layout.set_node_links`, each link switched atomically);
4. exports the image to that node alone over NFS (the exporter of `exports.nfs`).

A node without an image ready gets the "wait and retry" boot script (`layout.set_node_waiting`).
An image no node uses any longer is unexported at once and unmounted after
`exports.unmount-grace-s` (a node switching back meanwhile keeps it). A node that does not
report booted within `boot.timeout-s` is logged; a virtual node is then reset, at most
`boot.retries` times. At start (and on a `Resync`) everything is rebuilt from the database:
mounts a crash left are reconciled (never mounted twice), then every node is set again.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Self

from waltd import config as configuration
from waltd import log
from waltd.context import Context
from waltd.db import Node
from waltd.images import store
from waltd.images.store import LocalRef
from waltd.images.tools import ToolError
from waltd.node_events import NodeEvent, NodeRemoved, NodeSeen, NodeState
from waltd.provision import boot, layout, nodes
from waltd.provision.following import NodeEventService
from waltd.provision.mounts import ImageMounts, MountError
from waltd.provision.nfs import NfsExport, NfsExports, fsid_of

_log = log.get("exports")
BOOTABLE = (nodes.READY, nodes.BOOTED)
# The runtime folder's part holding the layout's changing folders (`layout.layout_in`).
LAYOUT = "layout"


@dataclass(frozen=True)
class Exported:
    """A node as exported: its image id, model and address."""

    image_id: str
    model: str
    ip: str


def export_list(
    root: Path, exported: dict[str, Exported], mounts: dict[str, Path]
) -> list[NfsExport]:
    """The NFS exports of `exported` nodes (mac -> what they get) whose image is mounted at
    `mounts[id]`: one per node, seen by that node alone at its own path (pure)."""
    result = []
    for mac, node in sorted(exported.items()):
        path = mounts.get(node.image_id)
        if path is None:
            continue
        result.append(
            NfsExport(
                pseudo=root / "nodes" / mac / "fs",
                path=path,
                client=node.ip,
                fsid=fsid_of(node.image_id),
            )
        )
    return result


class ExportsService(NodeEventService):
    """Mounts, boot files, node folders and NFS exports (see the module docstring)."""

    name = "exports"

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        config = ctx.config
        # the real path: an NFS server drops an export whose path holds a symlink
        self._root = Path(os.path.realpath(config.exports.root))
        self._mounts = ImageMounts(self._root, ctx.repository, ctx.children)
        self._exporter: NfsExports = ctx.exporter
        self._exported: dict[str, Exported] = {}
        self._waiting: set[str] = set()  # nodes given the "wait and retry" script
        # mac -> the alias links that lead to the node (layout.alias_index at rebuild, then
        # as each set leaves them; None: unknown, a set looks at every alias); a node absent
        # has none
        self._aliases: dict[str, tuple[Path, ...] | None] = {}
        # exports changed but not applied yet, and the records that wait for it: a burst of
        # nodes is applied once (each apply is an NFS server reload)
        self._dirty = False
        self._announced: dict[str, dict[str, object]] = {}
        self._unmounting: dict[str, asyncio.Task[None]] = {}
        self._boot_watch: dict[str, asyncio.Task[None]] = {}
        self._resets: dict[str, int] = {}
        self._lock = asyncio.Lock()

    async def __aenter__(self) -> Self:
        # the layout changes at every node event: its changing folders are kept in memory
        await asyncio.to_thread(layout.layout_in, self._root, self._ctx.run_dir / LAYOUT)
        return await super().__aenter__()

    async def handle(self, event: NodeEvent) -> None:
        """A node's state or sighting: its folder and export set again when they change."""
        if isinstance(event, NodeState):
            await self._state(event)
        elif isinstance(event, NodeSeen):
            await self._seen(event)
        elif isinstance(event, NodeRemoved):
            await self._remove(event.mac)

    async def caught_up(self) -> None:
        """A burst of nodes is exported with one NFS server reload."""
        await self._flush()

    def stopped(self) -> None:
        """Timers and waiting marks ended with the service's tasks."""
        self._waiting.clear()
        self._aliases.clear()
        self._unmounting.clear()
        self._boot_watch.clear()

    async def reload(self, config: configuration.Config) -> None:
        """Boot timeouts apply from the next node made bootable; nothing else changes."""

    # ---- events -----------------------------------------------------------------------

    async def _state(self, event: NodeState) -> None:
        if event.state in BOOTABLE or (
            event.state == nodes.WAITING and event.mac not in self._waiting
        ):
            await self._set(event.mac)
        if event.state == nodes.BOOTED:
            self._booted(event.mac)

    async def _seen(self, event: NodeSeen) -> None:
        known = self._exported.get(event.mac)
        if known is None and event.mac not in self._waiting:
            await self._set(event.mac)  # a new node: its folder, waiting or exported
        elif known is not None and known.ip != event.ip:
            await self._set(event.mac)  # its export follows its new address

    # ---- one node ---------------------------------------------------------------------

    async def _set(self, mac: str) -> None:
        """Bring node `mac`'s folder and export in line with the database."""
        node = await self._ctx.db.get_node(mac)
        if node is None:
            await self._remove(mac)
            return
        if node.model is None:
            return
        async with self._lock:
            try:
                done = await self._export(node) if node.state in BOOTABLE else False
            except (MountError, ToolError, boot.BootCopyError, OSError, ValueError) as err:
                _log.error("node_export_failed", name=node.name, mac=node.mac, error=str(err))
                done = False
            if done:
                self._waiting.discard(node.mac)
            else:
                self._layout(layout.set_node_waiting, node)
                self._waiting.add(node.mac)
                await self._forget(node.mac)

    def _layout(self, set_node: Callable[..., layout.NodePaths], node: Node, **args: str) -> None:
        """Node's links set by `set_node` (layout.set_node_links or set_node_waiting), its
        alias links kept track of.

        On the event loop, not in a thread: a few system calls on folders of the runtime
        folder (`layout.layout_in`, a memory file system under systemd), some tens of
        microseconds, where a thread hand-off costs over 100 microseconds of CPU, twice per
        node made ready or told to wait."""
        known = self._aliases.get(node.mac, ())
        self._aliases[node.mac] = None  # unknown until the set is through
        paths = set_node(self._root, node.mac, ip=node.ip, name=node.name, known=known, **args)
        self._aliases[node.mac] = paths.aliases

    async def _remove(self, mac: str) -> None:
        """A node the database forgot (a virtual node removed): out of the layout and the
        exports."""
        async with self._lock:
            await asyncio.to_thread(layout.remove_node_links, self._root, mac)
            self._aliases.pop(mac, None)
            self._waiting.discard(mac)
            await self._forget(mac)

    async def _export(self, node: Node) -> bool:
        """Mount, copy, link and export node's image; False when it has none to export."""
        assert node.model is not None
        image_id = await self._image_id(node)
        if image_id is None or node.ip is None:
            return False
        self._keep(image_id)
        path = await self._mounts.mount(image_id)
        folder = self._root / "boot" / image_id / node.model
        # one look, on the loop (a thread hand-off costs more): there but for a new image
        if not os.path.isdir(folder):  # noqa: ASYNC240
            try:
                report = await asyncio.to_thread(boot.copy_boot_files, path, node.model, folder)
            except boot.NoBootFolder as err:
                # its root is still exported; the node's boot asks again until fixed
                _log.warning(
                    "boot_files_missing", image=image_id[:12], model=node.model, error=str(err)
                )
                await asyncio.to_thread(boot.public_folder, folder)
            else:
                _log.info(
                    "boot_files_copied",
                    image=image_id[:12],
                    model=node.model,
                    files=report.files,
                    skipped=len(report.skipped),
                )
        self._layout(layout.set_node_links, node, image_id=image_id, model=node.model)
        before = self._exported.get(node.mac)
        self._exported[node.mac] = now = Exported(image_id, node.model, node.ip)
        if before != now:
            self._dirty = True
            self._announced[node.mac] = {
                "name": node.name,
                "mac": node.mac,
                "ip": node.ip,
                "image": store.shown(node.image) if node.image else None,
                "image_id": image_id[:12],
            }
        if before is not None and before.image_id != image_id:
            self._release(before.image_id)
        if node.state == nodes.READY:
            self._watch_boot(node)
        return True

    async def _image_id(self, node: Node) -> str | None:
        if node.image is None:
            return None
        if node.model is not None:
            # a model's default image, pinned by the fetch: no tool run needed
            status = await self._ctx.db.get_model_status(node.model)
            if (
                status is not None
                and status.image_status == nodes.IMAGE_READY
                and status.image == node.image
                and status.image_id
            ):
                return status.image_id
        ref = LocalRef.of_stored(node.image)
        stored = await store.get(self._ctx.repository, ref) if ref is not None else None
        if stored is None:
            _log.warning("node_image_missing", name=node.name, mac=node.mac, image=node.image)
            return None
        return stored.id

    async def _forget(self, mac: str) -> None:
        gone = self._exported.pop(mac, None)
        self._announced.pop(mac, None)
        if gone is not None:
            self._dirty = True
            self._release(gone.image_id)
        watch = self._boot_watch.pop(mac, None)
        if watch is not None:
            watch.cancel()

    async def _flush(self) -> None:
        """Apply the exports if they changed, then tell the nodes exported meanwhile."""
        async with self._lock:
            await self._apply_changes()

    async def _apply_changes(self) -> None:
        if not self._dirty:
            return
        mounts = await asyncio.to_thread(self._mounts.mounted)
        await self._exporter.apply(export_list(self._root, self._exported, mounts))
        self._dirty = False
        announced, self._announced = self._announced, {}
        for record in announced.values():
            _log.info("node.exported", **record)

    # ---- images no node uses ----------------------------------------------------------

    def _users(self, image_id: str) -> int:
        return sum(1 for e in self._exported.values() if e.image_id == image_id)

    def _keep(self, image_id: str) -> None:
        pending = self._unmounting.pop(image_id, None)
        if pending is not None:
            pending.cancel()

    def _release(self, image_id: str) -> None:
        """Unmount `image_id` after the grace time, unless a node takes it again."""
        if self._users(image_id) or image_id in self._unmounting or self._tasks is None:
            return
        self._unmounting[image_id] = self._tasks.create_task(
            self._unmount_later(image_id), name=f"unmount-{image_id[:12]}"
        )

    async def _unmount_later(self, image_id: str) -> None:
        await asyncio.sleep(self._ctx.config.exports.unmount_grace_s)
        async with self._lock:
            if self._unmounting.get(image_id) is not asyncio.current_task():
                return
            del self._unmounting[image_id]
            if self._users(image_id):
                return
            await self._apply_changes()  # no longer exported: it can be unmounted
            try:
                await self._mounts.unmount(image_id)
            except MountError as err:
                _log.warning("image_unmount_failed", image=image_id[:12], error=str(err))
                return
            # ImageMounts logs the unmount (`image_unmounted`)
            await asyncio.to_thread(boot.remove_boot_copies, self._root, image_id)

    # ---- booted in time? --------------------------------------------------------------

    def _watch_boot(self, node: Node) -> None:
        if node.mac in self._boot_watch or self._tasks is None:
            return
        self._boot_watch[node.mac] = self._tasks.create_task(
            self._boot_deadline(node), name=f"boot-{node.mac}"
        )

    def _booted(self, mac: str) -> None:
        self._resets.pop(mac, None)
        watch = self._boot_watch.pop(mac, None)
        if watch is not None:
            watch.cancel()

    async def _boot_deadline(self, node: Node) -> None:
        """Log a node that does not report booted in time; reset a virtual one (bounded)."""
        boot_conf = self._ctx.config.boot
        await asyncio.sleep(boot_conf.timeout_s)
        if self._boot_watch.get(node.mac) is asyncio.current_task():
            del self._boot_watch[node.mac]
        now = await self._ctx.db.get_node(node.mac)
        if now is None or now.state != nodes.READY:
            return
        resets = self._resets.get(node.mac, 0)
        virtual = self._ctx.vnodes.is_virtual(node.mac)
        will_reset = virtual and resets < boot_conf.retries
        _log.warning(
            "node.boot_timeout",
            name=node.name,
            mac=node.mac,
            timeout_s=boot_conf.timeout_s,
            resets=resets,
            action="reset" if will_reset else "none",
        )
        if will_reset:
            self._resets[node.mac] = resets + 1
            with contextlib.suppress(Exception):
                await self._ctx.vnodes.reset(node.mac)
            self._watch_boot(now)

    # ---- everything -------------------------------------------------------------------

    async def rebuild(self) -> None:
        """At start and after a Resync: reconcile mounts, then set every node again."""
        listed = await self._ctx.db.list_nodes()
        wanted = set()
        for node in listed:
            if node.state in BOOTABLE and node.model is not None:
                image_id = await self._image_id(node)
                if image_id is not None:
                    wanted.add(image_id)
        async with self._lock:
            done = await self._mounts.reconcile(wanted)
            # boot copies an interruption left half made
            boot_root = self._root / "boot"
            folders = await asyncio.to_thread(
                lambda: [f for f in boot_root.iterdir() if f.is_dir()] if boot_root.is_dir() else []
            )
            for folder in folders:
                await asyncio.to_thread(boot.clear_partial_copies, folder)
            self._aliases.clear()
            self._aliases.update(await asyncio.to_thread(layout.alias_index, self._root))
        for node in listed:
            if node.model is not None:
                await self._set(node.mac)
        # nodes the database forgot while their NodeRemoved was lost (a Resync), or while the
        # daemon was down (their aliases are still in the layout)
        known = {node.mac for node in listed}
        for mac in (set(self._exported) | self._waiting | set(self._aliases)) - known:
            try:
                await self._remove(mac)
            except (OSError, ValueError) as err:
                _log.warning("node_layout_not_removed", mac=mac, error=str(err))
        await self._flush()
        for image_id in done.busy:
            self._release(image_id)  # exported by an earlier run, by no node now
