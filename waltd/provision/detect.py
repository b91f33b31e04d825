"""Detection: dnsmasq's lease events (spooled by the hook) become nodes, records, events.

dnsmasq's hook (see `provision/dnsmasq.py`) writes each event as one file into the spool,
renamed into place once whole; the service watches the spool with inotify, and looks at it
every SPOOL_TICK_S in any case. Parsing is a pure function; the service drains
the spool in arrival order, records each event in the database and removes its file only
then, so an interruption anywhere (cancellation, SIGKILL) replays the event instead of
losing it. A node's first sighting as a node is announced (the `node.detected` record and a
NodeSeen event) once, after the commit: the database remembers which nodes were announced
(the announcements of one pass over the spool recorded together, at its end), so a replay
or a restart announces those an interruption left out. Devices of no model are
recorded too (state `unknown`, never announced, at most MAX_UNKNOWN_DEVICES of them) and
announced when they first say their model. An `old` lease repeating what is recorded
soon after the node's last sighting (`nodes.is_repeat`) is no news: nothing is written or
told.

At start the service also reads dnsmasq's lease file (nodes holding leases from before are
told to the services again) and, on the node network, follows the kernel's neighbour table
(`neighbours.watch`): a node that answers again is back from `down`, one that stops
answering is `down`.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import os
import time
from collections.abc import AsyncGenerator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, Self

from asyncinotify import Inotify, Mask

from waltd import log
from waltd.aio import completed
from waltd.context import Context
from waltd.db import Database, Node, StateError
from waltd.dhcp_event import MAX_MESSAGE
from waltd.node_events import NodeSeen, emit
from waltd.provision import leases, neighbours, nodes
from waltd.provision.dnsmasq import dnsmasq_paths
from waltd.provision.lease_events import LeaseEvent, TftpEvent, parse_message
from waltd.provision.models import Classification, classify, shown_class
from waltd.supervisor import Service

_log = log.get("detect")
# Where the spool was before it moved to the runtime folder (under the state folder).
OLD_SPOOL = "dhcp-spool"
# How often the spool is looked at while inotify says nothing (a watch lost with its folder).
SPOOL_TICK_S = 2.0
# Queued spool notices taken at once after a wake-up (the kernel queues 16384 by default).
NOTICES_MAX = 16384
# Event files listed and handled per pass (the spool may hold thousands after an outage).
SPOOL_BATCH = 256
# How long a live event waits for the database before it goes to the spool instead.
DB_WAIT_S = 5.0
# Devices of no model recorded at most (a flood of made-up MACs must not fill the database).
MAX_UNKNOWN_DEVICES = 4096
# At most one warning per this long while devices are left out for the bound above.
UNKNOWN_CAP_WARNING_S = 60.0
# The pause before the neighbour watch is tried again after a failure: doubling, bounded.
WATCH_RETRY_MIN_S = 1.0
WATCH_RETRY_MAX_S = 60.0
# What observes the node network's neighbours and carrier (neighbours.watch, or a test's).
Watch = Callable[[str], AsyncGenerator[neighbours.Neighbour | neighbours.Carrier, None]]


def adopt_spool(old: Path, spool: Path) -> int:
    """Move the events a daemon of an earlier layout left in `old` (its spool was in the
    state folder) into `spool`, under their own names (they keep their order), then remove
    `old`; how many moved. Each lands whole (a dot name, then a rename) before its old copy
    goes: an interruption leaves it in one place or both, never lost."""
    if os.path.realpath(old) == os.path.realpath(spool):
        return 0  # the runtime folder is the state folder: nothing moved
    try:
        entries = sorted(e for e in old.iterdir() if e.is_file() and not e.is_symlink())
    except FileNotFoundError:
        return 0
    moved = 0
    for entry in entries:
        if entry.name.endswith(".json") and not entry.name.startswith("."):
            temp = spool / f".{entry.name}.moving"
            temp.write_bytes(entry.read_bytes())
            os.replace(temp, spool / entry.name)
            moved += 1
        entry.unlink()  # a hook's half-written dot file goes too: it was never an event
    with contextlib.suppress(OSError):  # what is not the daemon's stays, and its folder
        old.rmdir()
    return moved


class DetectionService(Service):
    """Drains the spool whenever an event lands in it, records nodes and announces them."""

    name = "detect"

    def __init__(
        self,
        ctx: Context,
        *,
        watch: Watch = neighbours.watch,
        max_unknown: int = MAX_UNKNOWN_DEVICES,
    ) -> None:
        """`watch` observes the node network (a test passes its own); `max_unknown` bounds
        the devices of no model recorded."""
        self._ctx = ctx
        self.spool = dnsmasq_paths(ctx).spool
        self._inotify: Inotify | None = None
        self._intake = True
        self._watch = watch
        self._max_unknown = max_unknown
        # when the last warning about left-out unknown devices was written, how many since
        self._cap_warned = -UNKNOWN_CAP_WARNING_S
        self._cap_left_out = 0
        # One change at a time, from the spool, the lease file or the neighbours: each reads
        # a node, then writes it, and two at once could both announce a new node.
        self._changing = asyncio.Lock()
        # nodes announced whose announcement is not recorded yet (`_record_announced`)
        self._unrecorded: dict[str, None] = {}

    async def __aenter__(self) -> Self:
        self._intake = True
        self.spool.mkdir(mode=0o700, parents=True, exist_ok=True)
        moved = await asyncio.to_thread(adopt_spool, self._ctx.state_dir / OLD_SPOOL, self.spool)
        if moved:
            _log.info("dhcp_spool_moved", count=moved, to=str(self.spool))
        inotify = Inotify(sync_timeout=0)  # sync_get: what is queued, never a wait
        try:
            # the hooks rename each whole file into place
            inotify.add_watch(self.spool, Mask.MOVED_TO | Mask.ONLYDIR)
        except BaseException:
            inotify.close()
            raise
        self._inotify = inotify
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._inotify is not None:
            inotify, self._inotify = self._inotify, None
            inotify.close()  # pending notices carry nothing: the events are in the spool

    async def serve(self) -> None:
        """Announce what an interruption left unannounced, take the spool then the lease
        file, then drain the spool whenever an event lands in it (and every SPOOL_TICK_S in
        any case), following the node network's neighbours beside it."""
        await self._announce_pending()
        await self.drain_spool()
        net = self._ctx.config.walt_net
        if net is not None:
            await self.read_lease_file()
        async with asyncio.TaskGroup() as tasks:
            if net is not None:
                tasks.create_task(self._follow_neighbours(net.interface), name="detect:neighbours")
                tasks.create_task(self._probe_booted(), name="detect:probe")
            while True:
                await self._woken()
                await self.drain_spool()

    async def drain(self) -> None:
        """Stop intake: the event being recorded finishes, the others stay spooled."""
        self._intake = False

    async def _woken(self) -> None:
        """Wait for a file to land in the spool (SPOOL_TICK_S at most), then take every
        notice already queued: one pass over the spool serves them all."""
        inotify = self._inotify
        assert inotify is not None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(SPOOL_TICK_S):
                await inotify.get()
        # bounded by the kernel's queue (a burst beyond it becomes one overflow notice)
        for _ in range(NOTICES_MAX):
            if inotify.sync_get() is None:
                break

    def _spooled(self) -> list[Path]:
        """The oldest SPOOL_BATCH event files, in arrival order."""
        with os.scandir(self.spool) as entries:
            names = [e.name for e in entries if e.name.endswith(".json") and e.name[0] != "."]
        return [self.spool / name for name in heapq.nsmallest(SPOOL_BATCH, names)]

    async def drain_spool(self) -> int:
        """Handle spooled events in arrival order, removing each once handled.

        It stops at the first event it cannot record (the database is away, descriptors
        are exhausted), leaving it and the later ones in place for the next pass; returns
        how many it handled.
        """
        if not self._ctx.db.is_open:
            return 0  # nothing could be recorded: the next pass retries
        handled = 0
        while self._intake:
            try:
                files = self._spooled()
            except OSError as err:  # EMFILE among others: the next pass retries
                _log.error("dhcp_spool_unreadable", path=str(self.spool), error=str(err))
                break
            try:
                batch = await self._handle_files(files)
            finally:
                await self._record_announced()
            handled += batch
            if batch < len(files) or len(files) < SPOOL_BATCH:
                break
        if handled:
            _log.info("dhcp_spool_drained", count=handled)
        return handled

    async def _handle_files(self, files: list[Path]) -> int:
        handled = 0
        for path in files:
            if not self._intake:
                break
            try:
                with path.open("rb") as file:
                    raw = file.read(MAX_MESSAGE + 1)
            except FileNotFoundError:
                continue
            except OSError as err:
                _log.error("dhcp_spool_unreadable", path=str(path), error=str(err))
                break
            if not await self._handle(raw):
                break
            path.unlink(missing_ok=True)
            handled += 1
        return handled

    async def _handle(self, raw: bytes) -> bool:
        """Parse and record one message; False when recording failed (logged)."""
        try:
            event = parse_message(raw)
        except ValueError as err:
            _log.warning("dhcp_event_malformed", error=str(err))
            return True  # retrying would not make it any better
        if isinstance(event, TftpEvent):
            _log.info("tftp_transfer", ip=event.ip, file=event.file, size=event.size)
            return True
        if event.dropped:
            _log.warning("dhcp_fields_dropped", mac=event.mac, ip=event.ip, problems=event.dropped)
        try:
            await self._lease(event)
        except Exception as err:
            _log.error(
                "dhcp_event_not_recorded",
                mac=event.mac,
                ip=event.ip,
                action=event.action,
                error=f"{type(err).__name__}: {err}",
            )
            return False
        return True

    async def _database(self) -> Database:
        """The database, waiting for it a while when its service is (re)starting."""
        deadline = time.monotonic() + DB_WAIT_S
        while not self._ctx.db.is_open:
            if time.monotonic() >= deadline:
                raise StateError("the state database is not open")
            await asyncio.sleep(0.1)
        return self._ctx.db

    async def _lease(self, ev: LeaseEvent) -> None:
        async with self._changing:
            await self._record_lease(ev)

    async def _record_lease(self, ev: LeaseEvent) -> None:
        db = await self._database()
        found = classify(ev.mac, ev.vendor_class, ev.user_classes)
        known = await db.get_node(ev.mac)
        if known is not None and known.mac in self._unrecorded:
            known = replace(known, announced=True)  # announced this pass, recorded at its end
        subject = {"mac": ev.mac, "ip": ev.ip, "action": ev.action}
        if found.invalid_class is not None:
            _log.warning(
                "node_class_invalid", node_class=shown_class(found.invalid_class), **subject
            )
        if ev.action == "del":
            await self._lease_ended(ev, found, known, subject)
            return
        # dnsmasq repeats leases without their classes after a restart: keep what we know.
        model = found.model or (known.model if known else None)
        if model is None:
            await self._device(ev, found, known, subject)
            return
        if known is not None and nodes.is_repeat(
            ev.action, known, ip=ev.ip, model=model, now=time.time()
        ):
            _log.debug("node_lease_repeated", name=known.name, model=model, **subject)
            return
        was = known.state if known else None
        state = nodes.lease_state(ev.action, was, model)
        # the state is written only when it changes: a node the provisioning service made
        # ready meanwhile is not sent back to waiting
        node = await db.upsert_node(
            ev.mac, ip=ev.ip, model=model, state=None if state == was else state
        )
        if not node.announced and node.mac not in self._unrecorded:
            self._announce(node, vendor_class=ev.vendor_class, user_classes=list(ev.user_classes))
            return
        if known is not None and known.model != model:
            _log.warning(
                "node_model_changed", name=node.name, old_model=known.model, model=model, **subject
            )
        _log.info("node_lease", name=node.name, model=model, state=node.state, **subject)
        if state != was:
            emit(self._ctx.nodes, nodes.state_event(node))
        self._ctx.nodes.publish(
            NodeSeen(mac=node.mac, name=node.name, ip=ev.ip, model=model, new=False)
        )

    async def _lease_ended(
        self, ev: LeaseEvent, found: Classification, known: Node | None, subject: dict[str, str]
    ) -> None:
        """A `del`: a node goes `down` (once); a device that is no node stays `unknown`."""
        if known is None:
            _log.debug("dhcp_lease_ended_unrecorded", **subject)
        elif known.model is None:
            self._log_device(ev, found, subject)
        elif known.state != nodes.DOWN:
            down = await self._ctx.db.set_node_state(ev.mac, nodes.DOWN)
            if down is not None:
                emit(self._ctx.nodes, nodes.state_event(down))

    async def _device(
        self, ev: LeaseEvent, found: Classification, known: Node | None, subject: dict[str, str]
    ) -> None:
        """A lease of a device that is no node (yet): recorded, within MAX_UNKNOWN_DEVICES."""
        db = self._ctx.db
        if known is not None:
            await db.upsert_node(ev.mac, ip=ev.ip)
        elif await db.count_unknown_devices() < self._max_unknown:
            await db.upsert_node(ev.mac, ip=ev.ip, state=nodes.UNKNOWN)
        else:
            self._left_out(ev.mac)
            return
        self._log_device(ev, found, subject)

    @staticmethod
    def _log_device(ev: LeaseEvent, found: Classification, subject: dict[str, str]) -> None:
        detail = {"vendor_class": ev.vendor_class, "user_classes": list(ev.user_classes)}
        if found.stage is not None:
            _log.info("node_booting", stage=found.stage, **detail, **subject)
        elif found.invalid_class is None:  # else its warning said it all
            _log.info("unknown_device", **detail, **subject)

    def _left_out(self, mac: str) -> None:
        """A device past MAX_UNKNOWN_DEVICES: not recorded; one warning a while says so."""
        self._cap_left_out += 1
        now = time.monotonic()
        if now - self._cap_warned < UNKNOWN_CAP_WARNING_S:
            return
        _log.warning(
            "unknown_devices_capped",
            limit=self._max_unknown,
            left_out=self._cap_left_out,
            mac=mac,
        )
        self._cap_warned = now
        self._cap_left_out = 0

    def _announce(self, node: Node, **detail: Any) -> None:
        """The one announcement of a node's first sighting as a node: record and event go out
        together; the caller then records it (`_record_announced`)."""
        _log.info(
            "node.detected",
            name=node.name,
            model=node.model,
            mac=node.mac,
            ip=node.ip,
            state=node.state,
            **detail,
        )
        self._ctx.nodes.publish(
            NodeSeen(mac=node.mac, name=node.name, ip=node.ip or "", model=node.model, new=True)
        )
        self._unrecorded[node.mac] = None

    async def _record_announced(self) -> None:
        """Record the announcements made since the last call, in one transaction. Finished
        even when the caller is cancelled: a node announced is not announced again. A
        database failure is logged: those nodes are announced again at the next start."""
        if not self._unrecorded:
            return
        macs, self._unrecorded = list(self._unrecorded), {}
        try:
            await completed(self._ctx.db.mark_announced(*macs))
        except (StateError, RuntimeError) as err:
            _log.error("node_announcements_not_recorded", macs=macs[:10], error=str(err))

    async def _announce_pending(self) -> None:
        """Announce the nodes an interruption recorded but left unannounced."""
        db = await self._database()
        for node in await db.unannounced_nodes():
            self._announce(node, recovered=True)
        await self._record_announced()

    async def read_lease_file(self) -> int:
        """Take dnsmasq's lease file as `old` leases (what dnsmasq repeats when it starts):
        the nodes holding a lease are refreshed and told to the services, the devices new
        to the database recorded. Returns how many leases were taken."""
        path = dnsmasq_paths(self._ctx).leases
        try:
            found = await asyncio.to_thread(leases.read_leases, path, time.time())
        except OSError as err:
            _log.error("dhcp_lease_file_unreadable", path=str(path), error=str(err))
            return 0
        if found.malformed or found.truncated:
            _log.warning(
                "dhcp_lease_file_damaged",
                path=str(path),
                malformed=found.malformed,
                first_problem=found.first_problem,
                truncated=found.truncated,
            )
        taken = 0
        try:
            for lease in found.leases:
                event = LeaseEvent("old", lease.mac, lease.ip, lease.hostname, None, (), None)
                try:
                    await self._lease(event)
                except Exception as err:  # the database is away: the hook's events will come
                    _log.error(
                        "dhcp_lease_file_not_recorded",
                        mac=lease.mac,
                        left=len(found.leases) - taken,
                        error=f"{type(err).__name__}: {err}",
                    )
                    break
                taken += 1
        finally:
            await self._record_announced()
        return taken

    async def _probe_booted(self) -> None:
        """Every boot.probe-interval-s, a packet to each booted node: a silent node still has
        to answer the kernel's address resolution, and one that does not becomes a failed
        neighbour, hence `down` (the watch reports it)."""
        while True:
            await asyncio.sleep(self._ctx.config.boot.probe_interval_s)
            try:
                booted = await self._ctx.db.nodes_in_state(nodes.BOOTED)
            except (StateError, RuntimeError) as err:
                _log.warning("node_probe_skipped", error=str(err))
                continue
            ips = [node.ip for node in booted if node.ip]
            if ips:
                await asyncio.to_thread(neighbours.probe, ips)

    async def _follow_neighbours(self, interface: str) -> None:
        """The node network's neighbour and carrier changes, for as long as the service
        runs. A watch that fails (the interface is not there yet) is tried again after a
        doubling pause; the spool is drained meanwhile."""
        pause = WATCH_RETRY_MIN_S
        while True:
            began = time.monotonic()
            try:
                # closed on any exit: its netlink socket goes at once
                async with contextlib.aclosing(self._watch(interface)) as changes:
                    async for change in changes:
                        await self._neighbour(change)
                error = "the watch ended"
            except Exception as err:
                error = f"{type(err).__name__}: {err}"
            if time.monotonic() - began > WATCH_RETRY_MAX_S:
                pause = WATCH_RETRY_MIN_S  # it had worked for a while
            _log.error("neighbour_watch_failed", interface=interface, error=error, retry_in_s=pause)
            await asyncio.sleep(pause)
            pause = min(pause * 2, WATCH_RETRY_MAX_S)

    async def _neighbour(self, change: neighbours.Neighbour | neighbours.Carrier) -> None:
        """One observation of the node network (a database failure is logged, not raised:
        the next observation may find it back)."""
        if not self._intake:
            return  # stopping: what the node network says now is for the next start
        if isinstance(change, neighbours.Carrier):
            _log.info("node_network_carrier", interface=change.interface, up=change.up)
            return
        try:
            async with self._changing:
                await self._record_neighbour(change)
        except (StateError, RuntimeError) as err:
            _log.error("neighbour_not_recorded", mac=change.mac, error=str(err))

    async def _record_neighbour(self, seen: neighbours.Neighbour) -> None:
        db = self._ctx.db
        known = await db.get_node(seen.mac)
        if known is None or known.model is None:
            model = classify(seen.mac, None, ()).model
            if known is not None or model is None or not seen.reachable:
                _log.debug("neighbour_ignored", mac=seen.mac, ip=seen.ip, reachable=seen.reachable)
                return
            # a Raspberry Pi (its MAC says so) that took no lease from us: a node all the same
            node = await db.upsert_node(
                seen.mac, ip=seen.ip, model=model, state=nodes.state_on_lease(None, model)
            )
            self._announce(node, source="neighbour")
            await self._record_announced()
            return
        if seen.reachable:
            back = known.state == nodes.DOWN
            state = nodes.state_on_lease(known.state, known.model) if back else None
            node = await db.upsert_node(seen.mac, ip=seen.ip, state=state)
            if back and node.announced:
                emit(self._ctx.nodes, nodes.state_event(node))
                self._ctx.nodes.publish(
                    NodeSeen(mac=node.mac, name=node.name, ip=seen.ip, model=node.model, new=False)
                )
        elif known.state in (nodes.READY, nodes.BOOTED):
            down = await db.set_node_state(seen.mac, nodes.DOWN, expect=known.state)
            if down is not None:
                emit(self._ctx.nodes, nodes.state_event(down))
