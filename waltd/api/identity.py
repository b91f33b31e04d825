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


class UnknownCaller(Exception):
    """The peer's uid has no Unix user (no passwd entry), so it has no walt user."""


def peer_credentials(sock: socket.socket) -> tuple[int, int, int]:
    """(pid, uid, gid) of the process at the other end of a unix stream socket."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return pid, uid, gid


def identify(pid: int, uid: int, gid: int) -> Identity:
    """uid -> Unix user -> walt user (REFERENCE.md: the Unix name, normalised)."""
    try:
        unix_user = pwd.getpwuid(uid).pw_name
    except KeyError:
        raise UnknownCaller(f"uid {uid} has no user account on this server") from None
    return Identity(pid=pid, uid=uid, gid=gid, unix_user=unix_user, walt_user=walt_user(unix_user))
