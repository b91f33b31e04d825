"""Detection: dnsmasq's lease events (socket and spool) become nodes, log records, state.

The hook (`waltd-dhcp-event`) sends one JSON datagram per call, and spools it as a file when
the daemon cannot take it. Parsing is a pure function; the service around it owns the socket,
drains the spool whenever it holds events, and records nodes. An event it cannot record (the
database is away) goes back to the spool and is retried.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import socket
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self

from waltd import log
from waltd.db import Database, StateError
from waltd.dhcp_event import MAX_MESSAGE, spool
from waltd.provision.models import detect_model, normalise_mac
from waltd.supervisor import Service

if TYPE_CHECKING:
    from waltd.daemon import Context

_log = log.get("detect")
LEASE_ACTIONS = ("add", "old", "del")
# How often the spool is looked at while no datagram arrives.
SPOOL_TICK_S = 2.0
# How long a live event waits for the database before it goes to the spool instead.
DB_WAIT_S = 5.0


@dataclass(frozen=True)
class LeaseEvent:
    """A DHCP lease change reported by dnsmasq."""

    action: str
    mac: str
    ip: str
    hostname: str | None
    vendor_class: str | None
    user_classes: tuple[str, ...]
    interface: str | None


@dataclass(frozen=True)
class TftpEvent:
    """A finished TFTP transfer (a boot-progress signal)."""

    ip: str
    file: str
    size: int | None


def _text(data: dict[str, Any], key: str, limit: int = 255, required: bool = False) -> str | None:
    value = data.get(key)
    if value is None or value == "":
        if required:
            raise ValueError(f"field {key!r} is missing")
        return None
    if not isinstance(value, str):
        raise ValueError(f"field {key!r} must be a string")
    if len(value) > limit:
        raise ValueError(f"field {key!r} is longer than {limit} characters")
    # Refuses C0 and C1 controls, DEL, separators other than space and lone surrogates
    # (category Cs): they would reach terminals through `walt log show`.
    if not value.isprintable():
        raise ValueError(f"field {key!r} holds control characters or other non-printable ones")
    return value


def _ip(value: str | None) -> str:
    try:
        return str(ipaddress.IPv4Address(value or ""))
    except ValueError:
        raise ValueError(f"field 'ip' is not an IPv4 address: {str(value)[:40]!r}") from None


def parse_message(raw: bytes) -> LeaseEvent | TftpEvent:
    """One hook message -> an event; ValueError naming the problem when it is malformed."""
    if len(raw) > MAX_MESSAGE:
        raise ValueError(f"message of {len(raw)} bytes exceeds {MAX_MESSAGE}")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as err:
        raise ValueError(f"not JSON: {err}") from None
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    action = _text(data, "action", 16, required=True)
    if action == "tftp":
        size = data.get("size")
        return TftpEvent(
            ip=_ip(_text(data, "ip")),
            file=_text(data, "file", 1024, required=True) or "",
            size=int(size) if isinstance(size, str) and size.isdigit() else None,
        )
    if action not in LEASE_ACTIONS:
        raise ValueError(f"unknown action {action!r}")
    classes = data.get("user_classes") or []
    if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
        raise ValueError("field 'user_classes' must be a list of strings")
    return LeaseEvent(
        action=action,
        mac=normalise_mac(_text(data, "mac", 64, required=True) or ""),
        ip=_ip(_text(data, "ip")),
        hostname=_text(data, "hostname"),
        vendor_class=_text(data, "vendor_class"),
        user_classes=tuple(c for c in classes[:16] if _text({"c": c}, "c")),
        interface=_text(data, "interface", 15),
    )


class DetectionService(Service):
    """Receives the hook's events, drains the spool, records nodes and logs what it sees."""

    name = "detect"

    def __init__(self, ctx: Context) -> None:
        self._ctx = ctx
        self.socket_path = ctx.state_dir / "dhcp-events.sock"
        self.spool = ctx.state_dir / "dhcp-spool"
        self._sock: socket.socket | None = None

    async def __aenter__(self) -> Self:
        self.spool.mkdir(mode=0o700, exist_ok=True)
        self.socket_path.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        sock.bind(str(self.socket_path))
        sock.setblocking(False)
        # Bursts (a rack of nodes powering on) queue here while one message is handled.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        os.chmod(self.socket_path, 0o600)
        self._sock = sock
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._sock is not None:
            sock, self._sock = self._sock, None
            # Datagrams still queued would die with the socket: the spool keeps them.
            self._spool_queued(sock)
            sock.close()
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()

    def _spool_queued(self, sock: socket.socket) -> None:
        while True:
            try:
                raw = sock.recv(MAX_MESSAGE + 1)
            except (BlockingIOError, InterruptedError):
                return
            except OSError as err:
                _log.error("dhcp_queue_unreadable", error=str(err))
                return
            self._respool(raw, "the detection service is stopping")

    async def serve(self) -> None:
        """Deliver live events, and spooled ones whenever the spool holds some.

        The hook spools when it cannot reach the daemon or the socket's queue stays full;
        the spool is drained after each datagram and every SPOOL_TICK_S.
        """
        assert self._sock is not None
        loop = asyncio.get_running_loop()
        await self.drain_spool()
        receiving: asyncio.Future[bytes] | None = None
        try:
            while True:
                if receiving is None:
                    receiving = asyncio.ensure_future(loop.sock_recv(self._sock, MAX_MESSAGE + 1))
                # The receive stays pending across ticks: cancelling it could lose a datagram.
                done, _ = await asyncio.wait([receiving], timeout=SPOOL_TICK_S)
                if done:
                    raw, receiving = receiving.result(), None
                    await self.handle(raw, source="socket")
                await self.drain_spool()
        finally:
            # cancel() fails on a finished receive: a datagram taken while a drain ran.
            if receiving is not None and not receiving.cancel():
                if not receiving.cancelled() and receiving.exception() is None:
                    self._respool(receiving.result(), "the detection service is stopping")

    async def drain_spool(self) -> int:
        """Handle spooled events in arrival order, removing each once handled.

        It stops at the first event it cannot record (the database is away), leaving it and
        the later ones in place for the next pass; returns how many it handled.
        """
        if self._ctx.db is None:
            return 0  # nothing could be recorded: the next pass retries
        files = sorted(p for p in self.spool.iterdir() if p.suffix == ".json")
        handled = 0
        for path in files:
            try:
                raw = path.read_bytes()
            except FileNotFoundError:
                continue
            except OSError as err:
                _log.error("dhcp_spool_unreadable", path=str(path), error=str(err))
                continue
            if not await self._handle(raw, source="spool"):
                break
            path.unlink(missing_ok=True)
            handled += 1
        if handled:
            _log.info("dhcp_spool_drained", count=handled, left=len(files) - handled)
        return handled

    async def handle(self, raw: bytes, source: str) -> None:
        """One live hook message: parse it, then record and log what it means.

        An event that cannot be recorded goes back to the spool, to be retried.
        """
        try:
            recorded = await self._handle(raw, source)
        except asyncio.CancelledError:
            self._respool(raw, "the detection service is stopping")
            raise
        if not recorded:
            self._respool(raw, "it could not be recorded")

    async def _handle(self, raw: bytes, source: str) -> bool:
        """Parse and record one message; False when recording failed (logged)."""
        try:
            event = parse_message(raw)
        except ValueError as err:
            _log.warning("dhcp_event_malformed", source=source, error=str(err))
            return True  # retrying would not make it any better
        if isinstance(event, TftpEvent):
            _log.info("tftp_transfer", ip=event.ip, file=event.file, size=event.size)
            return True
        try:
            await self._lease(event, source)
        except Exception as err:
            _log.error(
                "dhcp_event_not_recorded",
                mac=event.mac,
                ip=event.ip,
                action=event.action,
                source=source,
                error=f"{type(err).__name__}: {err}",
            )
            return False
        return True

    def _respool(self, raw: bytes, why: str) -> None:
        try:
            path = spool(raw, str(self.spool))
        except OSError as err:
            _log.error("dhcp_event_lost", reason=why, error=str(err))
            return
        _log.warning("dhcp_event_spooled", reason=why, path=path)

    async def _database(self) -> Database:
        """The database, waiting for it a while when its service is (re)starting."""
        deadline = time.monotonic() + DB_WAIT_S
        while self._ctx.db is None:
            if time.monotonic() >= deadline:
                raise StateError("the state database is not open")
            await asyncio.sleep(0.1)
        return self._ctx.db

    async def _lease(self, ev: LeaseEvent, source: str) -> None:
        db = await self._database()
        model = detect_model(ev.mac, ev.vendor_class, ev.user_classes)
        known = await db.get_node(ev.mac)
        subject = {"mac": ev.mac, "ip": ev.ip, "action": ev.action, "source": source}
        if model is None and known is None:
            _log.info(
                "unknown_device",
                vendor_class=ev.vendor_class,
                user_classes=list(ev.user_classes),
                **subject,
            )
            return
        if ev.action == "del":
            if known is not None:
                await db.upsert_node(ev.mac, state="released")
                _log.info("node_lease_released", name=known.name, model=known.model, **subject)
            return
        # dnsmasq repeats leases without their classes after a restart: keep what we know.
        model = model or (known.model if known else None)
        node = await db.upsert_node(ev.mac, ip=ev.ip, model=model, state="leased")
        if known is None:
            _log.info(
                "node_detected",
                name=node.name,
                model=model,
                vendor_class=ev.vendor_class,
                user_classes=list(ev.user_classes),
                **subject,
            )
            await self._ctx.node_known(node.mac, node.name)
        else:
            if known.model != model:
                _log.warning(
                    "node_model_changed",
                    name=node.name,
                    old_model=known.model,
                    model=model,
                    **subject,
                )
            _log.info("node_lease", name=node.name, model=model, **subject)
