"""Names users see: walt user names and image names (pure functions, no I/O)."""

from __future__ import annotations

import re

_NOT_LOCAL = re.compile(r"[^a-z0-9]+")


def normalise_local(text: str) -> str:
    """`text` as a local name: lower case, every run of other characters becomes '-'.

    Leading and trailing dashes are dropped; a text with nothing usable gives "".
    """
    return _NOT_LOCAL.sub("-", text.lower()).strip("-")


def walt_user(unix_user: str) -> str:
    """The walt user name of a Unix user (REFERENCE.md: its name, normalised)."""
    name = normalise_local(unix_user)
    if not name:
        raise ValueError(f"Unix user name {unix_user!r} gives no usable walt user name")
    return name
