"""dnsmasq's lease events as the hook spools them: parsed and checked (pure).

One message is one JSON object written by `waltd-dhcp-event`; its fields come from dnsmasq,
which copies them from the DHCP client's packet: every one is bounded and checked here.
"""

from __future__ import annotations

import ipaddress
import json
from dataclasses import dataclass
from typing import Any

from waltd.dhcp_event import MAX_MESSAGE
from waltd.names import normalise_mac

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
    # Optional fields left out because they were unusable, each with its problem.
    dropped: tuple[str, ...] = ()


@dataclass(frozen=True)
class TftpEvent:
    """A finished TFTP transfer (a boot-progress signal)."""

    ip: str
    file: str
    size: int | None


def _text(key: str, value: Any, limit: int = 255, required: bool = False) -> str | None:
    """Field `key`'s `value`: a bounded printable string, or None when absent."""
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
    """One hook message -> an event; ValueError naming the problem when it is malformed.

    A required field (action, mac, ip) that is unusable makes the message malformed; an
    optional one (hostname, classes, interface) is left out and named in `dropped`, since
    a lease matters more than a stray byte in its vendor class.
    """
    if len(raw) > MAX_MESSAGE:
        raise ValueError(f"message of {len(raw)} bytes exceeds {MAX_MESSAGE}")
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as err:
        raise ValueError(f"not JSON: {str(err)[:80]}") from None
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    action = _text("action", data.get("action"), 16, required=True)
    if action == "tftp":
        size = data.get("size")
        return TftpEvent(
            ip=_ip(_text("ip", data.get("ip"))),
            file=_text("file", data.get("file"), 1024, required=True) or "",
            size=int(size) if isinstance(size, str) and size.isdigit() and len(size) < 20 else None,
        )
    if action not in LEASE_ACTIONS:
        raise ValueError(f"unknown action {action!r}")
    dropped: list[str] = []

    def optional(key: str, value: Any, limit: int = 255) -> str | None:
        try:
            return _text(key, value, limit)
        except ValueError as err:
            dropped.append(str(err))
            return None

    classes = data.get("user_classes") or []
    if not isinstance(classes, list):
        dropped.append("field 'user_classes' must be a list of strings")
        classes = []
    user_classes = [optional("user_classes", c) for c in classes[:16]]
    return LeaseEvent(
        action=action,
        mac=normalise_mac(_text("mac", data.get("mac"), 64, required=True) or ""),
        ip=_ip(_text("ip", data.get("ip"))),
        hostname=optional("hostname", data.get("hostname")),
        vendor_class=optional("vendor_class", data.get("vendor_class")),
        user_classes=tuple(c for c in user_classes if c),
        interface=optional("interface", data.get("interface"), 15),
        dropped=tuple(dropped),
    )
