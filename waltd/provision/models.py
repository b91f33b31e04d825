"""What a DHCP client is (pure): its node model, or where a PC stands in its boot.

A node says its model in a `walt.node.<model>` class: the user class first (iPXE's
bootstrap announces the model there while its vendor class still says PXEClient), then the
vendor class. A Raspberry Pi that sends no class is known by its MAC prefix. A PC asks
twice before it says its model: first its firmware's PXE (vendor class
`PXEClient:Arch:<arch>`), then iPXE without a walt class (user class `iPXE`); those are
nodes on their way, not unknown devices.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from waltd.names import normalise_mac

CLASS_PREFIX = "walt.node."
# A model names the image `waltplatform/<model>-default`, a path component and a host name
# part: lower-case letters, digits and '-' (not first or last), 64 characters at most.
MODEL_MAX = 64
_MODEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,62}[a-z0-9])?")
# Raspberry Pi boards that send no class are known by their MAC prefix (the Raspberry Pi
# foundation's OUIs).
RPI_MAC_PREFIXES = frozenset(
    {"28:cd:c1", "b8:27:eb", "d8:3a:dd", "dc:a6:32", "e4:5f:01", "2c:cf:67", "88:a2:9e"}
)
# What the MAC prefix alone says: a Raspberry Pi of unknown board.
RPI_UNKNOWN_MODEL = "rpi-unknown"

# Where a PC is in its boot conversation before it says its model.
FIRMWARE_PXE = "firmware-pxe"
IPXE_BOOTSTRAP = "ipxe-bootstrap"
# Client architectures (RFC 4578) whose firmware gets an iPXE binary: x86 BIOS, x86-64 UEFI.
_PXE_VENDOR = re.compile(r"PXEClient:Arch:0000[079](?::.*)?")
IPXE_USER_CLASS = "iPXE"
# How much of an invalid class a record shows.
SHOWN_CLASS_MAX = 80


@dataclass(frozen=True)
class Classification:
    """What a client is: a node `model`, or None with the PC boot `stage` it is at (None:
    an unknown device); `invalid_class` holds a `walt.node.` class that named no possible
    model (the client is then an unknown device)."""

    model: str | None
    stage: str | None = None
    invalid_class: str | None = None


def is_model(text: str) -> bool:
    """Whether `text` is a possible node model (see _MODEL)."""
    return bool(_MODEL.fullmatch(text))


def model_from_class(value: str | None) -> str | None:
    """The model announced by a `walt.node.<model>` class, or None (not a walt class, or
    one naming an impossible model)."""
    if not value or not value.startswith(CLASS_PREFIX):
        return None
    model = value[len(CLASS_PREFIX) :]
    return model if is_model(model) else None


def shown_class(value: str) -> str:
    """`value` fit for a record: non-ASCII and control characters escaped, truncated."""
    shown = ascii(value[:SHOWN_CLASS_MAX])[1:-1]
    return shown + "..." if len(value) > SHOWN_CLASS_MAX else shown


def classify(mac: str, vendor_class: str | None, user_classes: Iterable[str]) -> Classification:
    """What the client of a lease is, from its classes and MAC (see the module's text).

    The first `walt.node.` class (user classes, then the vendor class) decides: a possible
    model, or an unknown device that is never trusted further, whatever its MAC.
    """
    user_classes = tuple(user_classes)
    for value in (*user_classes, vendor_class):
        if value and value.startswith(CLASS_PREFIX):
            model = model_from_class(value)
            if model is None:
                return Classification(None, invalid_class=value)
            return Classification(model)
    # A Raspberry Pi's boot ROM sends PXEClient:Arch:00000 too: its MAC decides first.
    if normalise_mac(mac)[:8] in RPI_MAC_PREFIXES:
        return Classification(RPI_UNKNOWN_MODEL)
    if IPXE_USER_CLASS in user_classes:
        return Classification(None, stage=IPXE_BOOTSTRAP)
    if vendor_class and _PXE_VENDOR.fullmatch(vendor_class):
        return Classification(None, stage=FIRMWARE_PXE)
    return Classification(None)
