"""Detection: dnsmasq's lease events (socket and spool) become nodes, log records, state.

The hook (`waltd-dhcp-event`) sends one JSON datagram per call. Parsing is a pure function;
the service around it owns the socket, drains the spool at start, and records nodes.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import os
import socket
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Self

from waltd import log
from waltd.dhcp_event import MAX_MESSAGE
from waltd.provision.models import detect_model, normalise_mac
from waltd.supervisor import Service

if TYPE_CHECKING:
    from waltd.daemon import Context

_log = log.get("detect")
LEASE_ACTIONS = ("add", "old", "del")


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
    if len(value) > limit or any(ord(c) < 32 for c in value):
        raise ValueError(f"field {key!r} is too long or holds control characters")
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
        self._ctx.event_socket = self.socket_path
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()

    async def serve(self) -> None:
        """Deliver what was spooled while no daemon listened, then live events."""
        assert self._sock is not None
        await self.drain_spool()
        loop = asyncio.get_running_loop()
        while True:
            raw = await loop.sock_recv(self._sock, MAX_MESSAGE + 1)
            await self.handle(raw, source="socket")

    async def drain_spool(self) -> int:
        """Handle every spooled event in arrival order, removing each once handled."""
        files = sorted(p for p in self.spool.iterdir() if p.suffix == ".json")
        for path in files:
            try:
                raw = path.read_bytes()
            except OSError as err:
                _log.error("dhcp_spool_unreadable", path=str(path), error=str(err))
                continue
            await self.handle(raw, source="spool")
            path.unlink(missing_ok=True)
        if files:
            _log.info("dhcp_spool_drained", count=len(files))
        return len(files)

    async def handle(self, raw: bytes, source: str) -> None:
        """One hook message: parse it, then record and log what it means."""
        try:
            event = parse_message(raw)
        except ValueError as err:
            _log.warning("dhcp_event_malformed", source=source, error=str(err))
            return
        if isinstance(event, TftpEvent):
            _log.info("tftp_transfer", ip=event.ip, file=event.file, size=event.size)
            return
        await self._lease(event, source)

    async def _lease(self, ev: LeaseEvent, source: str) -> None:
        db = self._ctx.db
        assert db is not None, "the database service starts before detection"
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
