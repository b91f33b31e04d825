"""Which node model a DHCP client is (pure: vendor class, user classes, MAC prefix)."""

from __future__ import annotations

import re
from collections.abc import Iterable

from waltd.names import normalise_mac

CLASS_PREFIX = "walt.node."
# Raspberry Pi boards that send no class are known by their MAC prefix (the Raspberry Pi
# foundation's OUIs).
RPI_MAC_PREFIXES = frozenset(
    {"28:cd:c1", "b8:27:eb", "d8:3a:dd", "dc:a6:32", "e4:5f:01", "2c:cf:67", "88:a2:9e"}
)
# What the MAC prefix alone says: a Raspberry Pi of unknown board.
RPI_UNKNOWN_MODEL = "rpi-unknown"
_MODEL = re.compile(r"[a-z0-9]+(?:[-_.][a-z0-9]+)*")


def model_from_class(value: str | None) -> str | None:
    """The model announced by a `walt.node.<model>` class, or None.

    A class naming an impossible model (empty, over 64 characters, odd characters) is not
    a node's: the client is treated as an unknown device rather than trusted.
    """
    if not value or not value.startswith(CLASS_PREFIX):
        return None
    model = value[len(CLASS_PREFIX) :]
    if len(model) > 64 or not _MODEL.fullmatch(model):
        return None
    return model


def detect_model(mac: str, vendor_class: str | None, user_classes: Iterable[str]) -> str | None:
    """The node model of a client, or None for an unknown device.

    The user class wins over the vendor class: iPXE's bootstrap announces the model in its
    user class while its vendor class still says PXEClient.
    """
    for uc in user_classes:
        model = model_from_class(uc)
        if model:
            return model
    model = model_from_class(vendor_class)
    if model:
        return model
    if normalise_mac(mac)[:8] in RPI_MAC_PREFIXES:
        return RPI_UNKNOWN_MODEL
    return None
