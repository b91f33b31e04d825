"""Who is calling: SO_PEERCRED on the API's unix socket, never a claim in the request."""

from __future__ import annotations

import pwd
import socket
import struct
from dataclasses import dataclass

from waltd.names import walt_user

_UCRED = struct.Struct("3i")  # struct ucred: pid, uid, gid


@dataclass(frozen=True)
class Identity:
    """The caller as the kernel vouches for it."""

    pid: int
    uid: int
    gid: int
    unix_user: str
    walt_user: str


class RefusedCaller(Exception):
    """The caller has no walt user of its own; the message says why (an HTTP 403)."""


class UnknownCaller(RefusedCaller):
    """The peer's uid has no Unix user (no passwd entry), so it has no walt user."""


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a unix stream socket."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return pid, uid, gid


def identify(pid: int, uid: int, gid: int) -> Identity:
    """uid -> Unix user -> walt user (WalT names a user by the Unix name, normalised).

    RefusedCaller when the name normalises to nothing, or to the walt user of another
    account (`Bob` and `bob`): one user must never act as another.
    """
    try:
        unix_user = pwd.getpwuid(uid).pw_name
    except KeyError:
        raise UnknownCaller(f"uid {uid} has no user account on this server") from None
    try:
        name = walt_user(unix_user)
    except ValueError:
        raise RefusedCaller(
            f"your Unix user name {unix_user!r} gives no walt user name (it needs a letter or "
            "a digit); ask the administrator for an account with a usable name"
        ) from None
    for entry in pwd.getpwall():
        if entry.pw_uid != uid and _walt_user_or_none(entry.pw_name) == name:
            raise RefusedCaller(
                f"your Unix user name {unix_user!r} gives the walt user name {name!r}, as does "
                f"the account {entry.pw_name!r} (uid {entry.pw_uid}); ask the administrator "
                "to rename one of them"
            )
    return Identity(pid=pid, uid=uid, gid=gid, unix_user=unix_user, walt_user=name)


def _walt_user_or_none(unix_user: str) -> str | None:
    try:
        return walt_user(unix_user)
    except ValueError:
        return None
