"""The API socket's accept loop: connections counted per uid, a reserve for root, and a
pause instead of a spin when the daemon is out of descriptors.

asyncio's own server (under aiohttp's UnixSite) accepts every connection, and on EMFILE
logs an error and schedules a retry once per pending connection of the backlog, without
leaving its loop: one local user holding a few thousand idle connections exhausted the
daemon's descriptors and wrote ~150k identical errors. Here the daemon accepts itself:
the caller's uid is read with SO_PEERCRED before the connection costs anything more than
its descriptor, a connection over its user's share is answered 503 and closed at once, and
an accept failure stops watching the socket for a doubling pause. The idle and header
timeout of admitted connections is aiohttp's `keepalive_timeout` (see `server.py`).
"""

from __future__ import annotations

import asyncio
import json
import resource
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from aiohttp import web

from waltd import log
from waltd.api.identity import peer_credentials
from waltd.connections import Counted, KeyCounts

_log = log.get("api")

# API connections at once, all users together; never more than half of the descriptor
# limit in force (read at each connection), the rest being the database's, the registry
# clients' and the children's.
MAX_CONNECTIONS = 512
# The last connections of that total only root may take: `walt status` as root works
# whatever the other users hold.
ROOT_RESERVE = 16
# Connections at once of one non-root uid (a user's `walt` commands, `walt log show -f`...).
MAX_CONNECTIONS_PER_USER = 64
# The kernel's queue of connections not yet accepted.
BACKLOG = 128
# After an accept failure (out of descriptors or memory), the socket is left alone for a
# pause that starts here and doubles up to the maximum, until an accept succeeds again.
ACCEPT_PAUSE_MIN_S = 0.05
ACCEPT_PAUSE_MAX_S = 2.0
# Connections accepted in one go before the event loop runs other work.
_ACCEPT_BATCH = 32
# Bytes of a refused connection's request read (and dropped) before it is answered.
_REQUEST_READ = 16 * 1024
ROOT_UID = 0


@dataclass(frozen=True)
class ConnectionLimits:
    """How many API connections everyone, non-root users together, and one non-root uid
    may hold at once."""

    total: int
    non_root: int
    per_user: int

    @classmethod
    def for_descriptors(cls, nofile: int) -> ConnectionLimits:
        """The limits under a descriptor limit of `nofile` (RLIMIT_NOFILE's soft value)."""
        total = max(1, min(MAX_CONNECTIONS, nofile // 2))
        reserve = min(ROOT_RESERVE, total // 4)
        non_root = total - reserve
        return cls(total, non_root, min(MAX_CONNECTIONS_PER_USER, non_root))


def current_limits() -> ConnectionLimits:
    """The limits under the descriptor limit in force now (prlimit may change it)."""
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    return ConnectionLimits.for_descriptors(soft if soft != resource.RLIM_INFINITY else 2**20)


class ConnectionCounts:
    """Connections held per uid; `admit` says why one more is refused."""

    def __init__(self) -> None:
        self._held: KeyCounts[int] = KeyCounts()

    def admit(self, uid: int, limits: ConnectionLimits) -> str | None:
        """Count one more connection of `uid`, or return why it is refused (uncounted)."""
        held = self._held
        if held.total >= limits.total:
            return f"the API holds its maximum of {limits.total} connections"
        if uid != ROOT_UID:
            if held.held(uid) >= limits.per_user:
                return f"your user holds {limits.per_user} connections, the most one user may"
            if held.total - held.held(ROOT_UID) >= limits.non_root:
                return (
                    f"users hold {limits.non_root} connections, all the API gives to non-root users"
                )
        held.add(uid)
        return None

    def release(self, uid: int) -> None:
        """One connection of `uid` ended."""
        self._held.release(uid)

    @property
    def total(self) -> int:
        """Connections held now."""
        return self._held.total


class _Slot:
    """One admitted connection's place in the counts, given back exactly once (by the
    connection's end, or by a hand-over that failed before it began)."""

    def __init__(self, counts: ConnectionCounts, uid: int) -> None:
        self._counts = counts
        self._uid: int | None = uid

    def release(self) -> None:
        if self._uid is not None:
            self._counts.release(self._uid)
            self._uid = None


def _refusal(reason: str) -> bytes:
    body = json.dumps({"error": f"waltd refused the connection: {reason}; try again later"})
    head = (
        "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return (head + body).encode()


class Listener:
    """Accepts connections on a unix socket for an aiohttp server, within the limits.

    `close()` stops accepting and ends connection hand-overs in progress; the connections
    already handed over belong to the aiohttp server (its runner's cleanup ends them).
    """

    def __init__(self, path: Path, server: web.Server) -> None:
        self._path = path
        self._server = server
        self.counts = ConnectionCounts()
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pause = ACCEPT_PAUSE_MIN_S
        self._retry: asyncio.TimerHandle | None = None
        self._handovers: set[asyncio.Task[Any]] = set()

    def start(self) -> None:
        """Bind and listen (mode 0666: the caller's identity is checked per connection)."""
        self._loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(self._path))
            self._path.chmod(0o666)
            sock.listen(BACKLOG)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._sock = sock
        self._loop.add_reader(sock.fileno(), self._accept)

    async def close(self) -> None:
        """Stop accepting; connections still being handed over are closed."""
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self._sock is not None and self._loop is not None:
            self._loop.remove_reader(self._sock.fileno())
            self._sock.close()
            self._sock = None
        for task in list(self._handovers):
            task.cancel()
        await asyncio.gather(*self._handovers, return_exceptions=True)

    def _resume(self) -> None:
        self._retry = None
        if self._sock is not None and self._loop is not None:
            self._loop.add_reader(self._sock.fileno(), self._accept)

    def _accept(self) -> None:
        """The socket is readable: accept what is queued, a batch at a time."""
        assert self._sock is not None and self._loop is not None
        for _ in range(_ACCEPT_BATCH):
            try:
                conn, _ = self._sock.accept()
            except (BlockingIOError, InterruptedError):
                return
            except ConnectionAbortedError:
                continue
            except OSError as err:
                # EMFILE, ENFILE, ENOBUFS, ENOMEM...: the socket stays readable, so watching
                # it would spin. Leave it alone for a while; the kernel keeps the queue.
                _log.warning("api_accept_failed", error=str(err), retry_in_s=self._pause)
                self._loop.remove_reader(self._sock.fileno())
                self._retry = self._loop.call_later(self._pause, self._resume)
                self._pause = min(self._pause * 2, ACCEPT_PAUSE_MAX_S)
                return
            self._pause = ACCEPT_PAUSE_MIN_S
            self._admit(conn)

    def _admit(self, conn: socket.socket) -> None:
        assert self._loop is not None
        try:
            conn.setblocking(False)
            _pid, uid, _gid = peer_credentials(conn)
        except OSError:
            conn.close()
            return
        refusal = self.counts.admit(uid, current_limits())
        if refusal is not None:
            _log.warning("api_connection_refused", uid=uid, error=refusal)
            try:
                # What the request sent already is read first: closing a unix socket with
                # unread data resets the peer, which might lose the answer.
                conn.recv(_REQUEST_READ)
            except OSError:
                pass  # nothing sent yet
            try:
                conn.send(_refusal(refusal))
            except OSError:
                pass  # it went away, or cannot take 200 bytes now: it is closed all the same
            conn.close()
            return
        slot = _Slot(self.counts, uid)
        task = self._loop.create_task(self._hand_over(conn, slot))
        self._handovers.add(task)
        task.add_done_callback(self._handovers.discard)

    async def _hand_over(self, conn: socket.socket, slot: _Slot) -> None:
        assert self._loop is not None

        def protocol() -> asyncio.Protocol:
            return Counted(self._server(), slot.release)

        try:
            await self._loop.connect_accepted_socket(protocol, conn)
        except BaseException as err:
            # Before the protocol saw the connection: nobody else closes it or frees its slot.
            conn.close()
            slot.release()
            if not isinstance(err, Exception):
                raise
            _log.warning("api_connection_failed", error=f"{type(err).__name__}: {err}")
