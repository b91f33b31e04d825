"""The daemon's state in SQLite: nodes and the image status of each node model.

One connection, owned by one worker thread: the event loop never waits on the disk and every
call is serialised, so no call sees another's half-done write. The schema evolves through
numbered migrations recorded in ``PRAGMA user_version``.

The daemon is the database's only writer, so it also keeps every node and model status as
last committed in memory (the worker updates them after each commit): `get_node` and
`get_model_status`, asked for every lease event and node event, answer at once, with no
thread hand-off. A read never sees a write before it is committed, and a caller sees its own
writes once their call returned.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any, TypeVar

from waltd.names import normalise_mac

_T = TypeVar("_T")

# Migration N (1-based) brings the schema from version N-1 to N. Append only: a released
# migration never changes, since databases in the field already ran it.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE nodes (
        mac TEXT PRIMARY KEY NOT NULL,
        ip TEXT,
        name TEXT NOT NULL,
        model TEXT,
        image TEXT,
        state TEXT NOT NULL,
        first_seen REAL NOT NULL,
        last_seen REAL NOT NULL
    );
    CREATE TABLE models (
        model TEXT PRIMARY KEY NOT NULL,
        image_status TEXT NOT NULL,
        last_error TEXT,
        next_retry REAL,
        updated REAL NOT NULL
    );
    """,
    # A node is announced (its `node.detected` record, its node event) once, after the commit
    # that recorded it; nodes recorded before this column existed were announced already.
    """
    ALTER TABLE nodes ADD COLUMN announced INTEGER NOT NULL DEFAULT 1;
    """,
    # Node states became the provisioning state machine (provision/nodes.py); a model's
    # default image is pinned: its name, its image id (config digest), where it came from.
    """
    UPDATE nodes SET state = CASE
        WHEN state = 'released' THEN 'down'
        WHEN model IS NULL THEN 'unknown'
        ELSE 'waiting' END
    WHERE state NOT IN ('unknown', 'waiting', 'ready', 'booted', 'down');
    ALTER TABLE models ADD COLUMN image TEXT;
    ALTER TABLE models ADD COLUMN image_id TEXT;
    ALTER TABLE models ADD COLUMN source TEXT;
    CREATE INDEX nodes_by_model_state ON nodes (model, state);
    """,
    # Virtual nodes (QEMU run by the daemon): each is also a node of `nodes` (its MAC), and
    # `owner` is the uid of the user who created it (who, with root, may remove it).
    """
    CREATE TABLE vnodes (
        name TEXT PRIMARY KEY NOT NULL,
        mac TEXT NOT NULL UNIQUE,
        owner INTEGER NOT NULL,
        created REAL NOT NULL
    );
    """,
)

# Long enough to ride out a checkpoint or a backup tool reading the file, short enough to
# surface a stuck lock as an error.
BUSY_TIMEOUT_S = 5.0

_NODE_COLUMNS = "mac, ip, name, model, image, state, first_seen, last_seen, announced"
_MODEL_COLUMNS = "model, image_status, last_error, next_retry, updated, image, image_id, source"


class StateError(Exception):
    """The state database cannot be opened or used."""


@dataclass(frozen=True)
class Node:
    """A node as recorded in the state database."""

    mac: str
    ip: str | None
    name: str
    model: str | None
    image: str | None
    state: str
    first_seen: float
    last_seen: float
    # Whether its first sighting as a node was announced (a record was written, services
    # were told); never for an unknown device.
    announced: bool


def _node(row: tuple[Any, ...]) -> Node:
    *fields, announced = row
    return Node(*fields, announced=bool(announced))


@dataclass(frozen=True)
class VNode:
    """A virtual node as recorded: its name and MAC (also its node's), its creator's uid,
    when it was created."""

    name: str
    mac: str
    owner: int
    created: float


@dataclass(frozen=True)
class ModelStatus:
    """Where the default image of a node model stands."""

    model: str
    image_status: str  # provision/nodes.py: missing, fetching, failed, ready
    last_error: str | None
    next_retry: float | None
    updated: float
    # Once ready: the default image's full name, its pinned image id, the source it came from.
    image: str | None = None
    image_id: str | None = None
    source: str | None = None


def default_name(mac: str, model: str | None) -> str:
    """A new node's name, `<model>-<last six hex digits of its MAC>`; `unknown-...` for a
    device of no known model."""
    return f"{model or 'unknown'}-" + mac.replace(":", "")[-6:]


@contextmanager
def _transaction(conn: sqlite3.Connection) -> Iterator[None]:
    # IMMEDIATE takes the write lock up front, so a read-then-write cannot be overtaken by
    # another process and fail half way with SQLITE_BUSY.
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
    except BaseException:
        # SQLite may already have rolled back (e.g. disk full); a second ROLLBACK would hide
        # the original error.
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")


def _user_version(conn: sqlite3.Connection) -> int:
    version: int = conn.execute("PRAGMA user_version").fetchone()[0]
    return version


def _migrate(conn: sqlite3.Connection, version: int, path: Path) -> None:
    for number, script in enumerate(MIGRATIONS[version:], start=version + 1):
        # executescript commits any open transaction first, so the transaction lives in the
        # script. user_version is transactional: the bump lands with the migration or not at
        # all. PRAGMA takes no parameters; `number` is our own int. The lone ';' ends a script
        # whose last statement lacks one.
        try:
            conn.executescript(
                f"BEGIN IMMEDIATE;\n{script}\n;\nPRAGMA user_version = {number};\nCOMMIT;"
            )
        except BaseException as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            if isinstance(exc, sqlite3.Error):
                raise StateError(
                    f"state database {path}: migration to schema version {number} failed: {exc}"
                ) from exc
            raise


class Database:
    """The state database, an async context manager.

    It owns one SQLite connection used only from its one worker thread.
    """

    def __init__(self, path: Path) -> None:
        """Prepare to open the database at ``path`` (normally ``<state-dir>/waltd.db``)."""
        self.path = path
        self._executor: ThreadPoolExecutor | None = None
        self._conn: sqlite3.Connection | None = None
        # as last committed; written by the worker thread alone (see the module docstring)
        self._node_rows: dict[str, Node] = {}
        self._model_rows: dict[str, ModelStatus] = {}

    @property
    def is_open(self) -> bool:
        """Whether the database is open (its service opens it at start, closes it at stop)."""
        return self._executor is not None and self._conn is not None

    async def __aenter__(self) -> Database:
        """Create the parent folder, open the database and bring its schema up to date."""
        if self._executor is not None:
            raise RuntimeError(f"state database {self.path} is already open")
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="waltd-db")
        try:
            await asyncio.get_running_loop().run_in_executor(self._executor, self._open)
        except BaseException:
            await self._shutdown()
            raise
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Close the connection after the calls already queued, then stop the worker."""
        await self._shutdown()

    async def _shutdown(self) -> None:
        executor, self._executor = self._executor, None
        if executor is None:
            return
        try:
            # Shielded so that a cancelled shutdown still closes the connection in its thread.
            await asyncio.shield(asyncio.get_running_loop().run_in_executor(executor, self._close))
        finally:
            # The worker is idle or finishing the close: no need to block the loop joining it.
            executor.shutdown(wait=False)

    def _open(self) -> None:
        try:
            self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError as exc:
            raise StateError(f"cannot create state folder {self.path.parent}: {exc}") from exc
        try:
            # Private to the daemon: nodes, models and users' traces are nobody else's. SQLite
            # creates its -wal and -shm files with the database file's mode; those of an
            # older daemon may predate this rule.
            fd = os.open(self.path, os.O_RDONLY | os.O_CREAT, 0o600)
            try:
                os.fchmod(fd, 0o600)
            finally:
                os.close(fd)
            for suffix in ("-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.chmod(f"{self.path}{suffix}", 0o600)
        except OSError as exc:
            raise StateError(f"cannot make state database {self.path} private: {exc}") from exc
        try:
            conn = sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT_S)
        except sqlite3.Error as exc:
            raise StateError(f"cannot open state database {self.path}: {exc}") from exc
        try:
            # Refuse a too-new database before any pragma rewrites its header.
            version = _user_version(conn)
            if version > len(MIGRATIONS):
                raise StateError(
                    f"state database {self.path}: schema version {version} is newer than this"
                    f" waltd (knows {len(MIGRATIONS)}); upgrade waltd"
                )
            mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                raise StateError(f"state database {self.path}: cannot enable WAL (got {mode!r})")
            # NORMAL is durable enough under WAL: a power cut may lose the last commits, never
            # consistency.
            conn.execute("PRAGMA synchronous = NORMAL")
            conn.execute("PRAGMA foreign_keys = ON")
            _migrate(conn, version, self.path)
            nodes = conn.execute(f"SELECT {_NODE_COLUMNS} FROM nodes").fetchall()
            models = conn.execute(f"SELECT {_MODEL_COLUMNS} FROM models").fetchall()
        except sqlite3.Error as exc:
            conn.close()
            raise StateError(f"state database {self.path} is unusable: {exc}") from exc
        except BaseException:
            conn.close()
            raise
        self._node_rows = {node.mac: node for node in map(_node, nodes)}
        self._model_rows = {status.model: status for status in (ModelStatus(*r) for r in models)}
        self._conn = conn

    def _close(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()
        self._node_rows = {}
        self._model_rows = {}

    def _kept(self, node: Node) -> Node:
        """`node` as committed, kept in memory (in the worker, after the commit)."""
        self._node_rows[node.mac] = node
        return node

    def _check_open(self) -> None:
        if self._executor is None:
            raise RuntimeError(f"state database {self.path} is not open")

    async def _run(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        self._check_open()
        return await asyncio.get_running_loop().run_in_executor(self._executor, self._call, work)

    def _call(self, work: Callable[[sqlite3.Connection], _T]) -> _T:
        if self._conn is None:
            raise RuntimeError(f"state database {self.path} is not open")
        try:
            return work(self._conn)
        except sqlite3.Error as exc:
            # Callers handle one error type and need not know the storage engine.
            raise StateError(f"state database {self.path}: {exc}") from exc

    async def schema_version(self) -> int:
        """Return the schema version recorded in the database."""
        return await self._run(_user_version)

    async def upsert_node(
        self,
        mac: str,
        *,
        ip: str | None = None,
        model: str | None = None,
        name: str | None = None,
        image: str | None = None,
        state: str | None = None,
        now: float | None = None,
    ) -> Node:
        """Record a sighting of node ``mac`` and return the node as stored.

        A new node gets ``first_seen = last_seen = now``, the name `default_name` unless
        given, and the state 'unknown' unless given. A known node gets ``last_seen = now``
        and only the fields given (not None); the others keep their value, except that a
        device still under its `unknown-...` name takes its model's name once it has one.
        Raises ValueError for an invalid MAC.
        """
        mac = normalise_mac(mac)
        params = {
            "mac": mac,
            "ip": ip,
            "model": model,
            "name": name,
            "image": image,
            "state": state,
            "default_name": default_name(mac, model),
            "unknown_name": default_name(mac, None),
            "now": time.time() if now is None else now,
        }

        def work(conn: sqlite3.Connection) -> Node:
            with _transaction(conn):
                conn.execute(
                    "INSERT INTO nodes"
                    " (mac, ip, name, model, image, state, first_seen, last_seen, announced)"
                    " VALUES (:mac, :ip, coalesce(:name, :default_name), :model, :image,"
                    " coalesce(:state, 'unknown'), :now, :now, 0)"
                    " ON CONFLICT (mac) DO UPDATE SET"
                    " ip = coalesce(:ip, ip),"
                    " name = coalesce(:name, CASE WHEN name = :unknown_name AND :model IS NOT NULL"
                    " THEN :default_name ELSE name END),"
                    " model = coalesce(:model, model), image = coalesce(:image, image),"
                    " state = coalesce(:state, state), last_seen = :now",
                    params,
                )
                row = conn.execute(
                    f"SELECT {_NODE_COLUMNS} FROM nodes WHERE mac = ?", (mac,)
                ).fetchone()
            return self._kept(_node(row))

        return await self._run(work)

    async def _nodes(self, where: str, args: tuple[Any, ...] = ()) -> list[Node]:
        """The nodes a query selects: `where` is the SQL after `FROM nodes` (a constant of
        this module, values as `?` in `args`)."""

        def work(conn: sqlite3.Connection) -> list[Node]:
            rows = conn.execute(f"SELECT {_NODE_COLUMNS} FROM nodes {where}", args).fetchall()
            return [_node(row) for row in rows]

        return await self._run(work)

    async def _one_node(self, where: str, args: tuple[Any, ...]) -> Node | None:
        """The first node `_nodes(where, args)` would give, or None (`where` ends with
        LIMIT 1 when it may select several)."""
        found = await self._nodes(where, args)
        return found[0] if found else None

    async def get_node(self, mac: str) -> Node | None:
        """Return node ``mac``, or None if unknown (from memory: no thread hand-off).
        Raises ValueError for an invalid MAC."""
        mac = normalise_mac(mac)
        self._check_open()
        return self._node_rows.get(mac)

    async def node_by_ip(self, ip: str) -> Node | None:
        """The node (a model known) whose address is `ip`, or None; when a stale entry still
        holds the address too, the one seen last."""
        return await self._one_node(
            "WHERE ip = ? AND model IS NOT NULL ORDER BY last_seen DESC LIMIT 1", (ip,)
        )

    async def node_by_name(self, name: str) -> Node | None:
        """The node (a model known) named `name`, or None."""
        return await self._one_node(
            "WHERE name = ? AND model IS NOT NULL ORDER BY last_seen DESC LIMIT 1", (name,)
        )

    async def list_nodes(self) -> list[Node]:
        """Return every node, ordered by MAC."""
        return await self._nodes("ORDER BY mac")

    async def nodes_using_image(self, image: str) -> list[Node]:
        """The nodes whose image is `image` (its full name), ordered by name."""
        return await self._nodes("WHERE image = ? ORDER BY name", (image,))

    async def unannounced_nodes(self) -> list[Node]:
        """Nodes recorded whose first sighting was not announced (an interruption came
        between the commit and the announcement), oldest first; unknown devices are not
        nodes to announce."""
        return await self._nodes("WHERE NOT announced AND model IS NOT NULL ORDER BY first_seen")

    async def mark_announced(self, *macs: str) -> None:
        """Record that the first sighting of each node of ``macs`` was announced (one
        transaction)."""
        macs = tuple(normalise_mac(mac) for mac in macs)

        def work(conn: sqlite3.Connection) -> None:
            with _transaction(conn):
                conn.executemany(
                    "UPDATE nodes SET announced = 1 WHERE mac = ?", [(mac,) for mac in macs]
                )
            for mac in macs:
                node = self._node_rows.get(mac)
                if node is not None:
                    self._kept(replace(node, announced=True))

        if macs:
            await self._run(work)

    async def remove_node(self, mac: str) -> bool:
        """Forget node ``mac``; return whether it was known.

        Raises ValueError for an invalid MAC.
        """
        mac = normalise_mac(mac)

        def work(conn: sqlite3.Connection) -> bool:
            removed = conn.execute("DELETE FROM nodes WHERE mac = ?", (mac,)).rowcount > 0
            self._node_rows.pop(mac, None)
            return removed

        return await self._run(work)

    async def replace_node_image(self, old: str, new: str | None) -> list[str]:
        """Give every node whose image is `old` the image `new` (None: no image); the names
        of the nodes changed, in one transaction."""

        def work(conn: sqlite3.Connection) -> list[str]:
            with _transaction(conn):
                rows = conn.execute(
                    "SELECT name FROM nodes WHERE image = ? ORDER BY name", (old,)
                ).fetchall()
                conn.execute("UPDATE nodes SET image = ? WHERE image = ?", (new, old))
            for node in [n for n in self._node_rows.values() if n.image == old]:
                self._kept(replace(node, image=new))
            return [str(name) for (name,) in rows]

        return await self._run(work)

    async def count_nodes(self) -> int:
        """Return how many nodes are known (unknown devices not counted)."""

        def work(conn: sqlite3.Connection) -> int:
            count: int = conn.execute(
                "SELECT count(*) FROM nodes WHERE model IS NOT NULL"
            ).fetchone()[0]
            return count

        return await self._run(work)

    async def count_unknown_devices(self) -> int:
        """Return how many unknown devices (entries of no model) are recorded."""

        def work(conn: sqlite3.Connection) -> int:
            (count,) = conn.execute("SELECT count(*) FROM nodes WHERE model IS NULL").fetchone()
            return int(count)

        return await self._run(work)

    async def nodes_in_state(self, state: str, model: str | None = None) -> list[Node]:
        """The nodes in `state` (of `model` when given), oldest first."""
        return await self._nodes(
            "WHERE state = ? AND (? IS NULL OR model = ?) ORDER BY first_seen, mac",
            (state, model, model),
        )

    async def set_node_state(
        self, mac: str, state: str, *, image: str | None = None, expect: str | None = None
    ) -> Node | None:
        """Move node `mac` to `state` (and `image` when given), only from state `expect`
        when given; the node as stored, or None when it is unknown or was not in `expect`."""
        mac = normalise_mac(mac)

        def work(conn: sqlite3.Connection) -> Node | None:
            with _transaction(conn):
                changed = conn.execute(
                    "UPDATE nodes SET state = ?, image = coalesce(?, image)"
                    " WHERE mac = ? AND (? IS NULL OR state = ?)",
                    (state, image, mac, expect, expect),
                ).rowcount
                if not changed:
                    return None
                row = conn.execute(
                    f"SELECT {_NODE_COLUMNS} FROM nodes WHERE mac = ?", (mac,)
                ).fetchone()
            return self._kept(_node(row))

        return await self._run(work)

    async def move_nodes(
        self, model: str, from_state: str, to_state: str, *, image: str
    ) -> list[Node]:
        """Every node of `model` in `from_state` moved to `to_state` in one transaction, a
        node without an image of its own given `image`; the nodes as stored, oldest first.

        One call for the nodes a default image was waiting for, however many they are."""

        def work(conn: sqlite3.Connection) -> list[Node]:
            with _transaction(conn):
                rows = conn.execute(
                    f"SELECT {_NODE_COLUMNS} FROM nodes WHERE model = ? AND state = ?"
                    " ORDER BY first_seen, mac",
                    (model, from_state),
                ).fetchall()
                conn.execute(
                    "UPDATE nodes SET state = ?, image = coalesce(image, ?)"
                    " WHERE model = ? AND state = ?",
                    (to_state, image, model, from_state),
                )
            return [
                self._kept(
                    replace(node, state=to_state, image=image if node.image is None else node.image)
                )
                for node in map(_node, rows)
            ]

        return await self._run(work)

    async def set_model_status(
        self,
        model: str,
        image_status: str,
        *,
        last_error: str | None = None,
        next_retry: float | None = None,
        image: str | None = None,
        image_id: str | None = None,
        source: str | None = None,
        now: float | None = None,
    ) -> ModelStatus:
        """Replace the image status of ``model`` and return it as stored.

        Every field is written, so a None ``last_error`` or ``next_retry`` clears the old one.
        """
        status = ModelStatus(
            model=model,
            image_status=image_status,
            last_error=last_error,
            next_retry=next_retry,
            updated=time.time() if now is None else now,
            image=image,
            image_id=image_id,
            source=source,
        )

        def work(conn: sqlite3.Connection) -> ModelStatus:
            # An upsert rather than INSERT OR REPLACE, which deletes the row and would fire
            # foreign-key actions should a later table refer to models.
            conn.execute(
                f"INSERT INTO models ({_MODEL_COLUMNS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"
                " ON CONFLICT (model) DO UPDATE SET image_status = excluded.image_status,"
                " last_error = excluded.last_error, next_retry = excluded.next_retry,"
                " updated = excluded.updated, image = excluded.image,"
                " image_id = excluded.image_id, source = excluded.source",
                (
                    model,
                    image_status,
                    last_error,
                    next_retry,
                    status.updated,
                    image,
                    image_id,
                    source,
                ),
            )
            self._model_rows[model] = status
            return status

        return await self._run(work)

    async def get_model_status(self, model: str) -> ModelStatus | None:
        """Return the image status of ``model``, or None if none was recorded (from memory:
        no thread hand-off)."""
        self._check_open()
        return self._model_rows.get(model)

    async def list_models(self) -> list[ModelStatus]:
        """Return the image status of every model, ordered by model."""

        def work(conn: sqlite3.Connection) -> list[ModelStatus]:
            rows = conn.execute(f"SELECT {_MODEL_COLUMNS} FROM models ORDER BY model").fetchall()
            return [ModelStatus(*row) for row in rows]

        return await self._run(work)

    async def add_vnode(self, name: str, mac: str, owner: int, now: float | None = None) -> VNode:
        """Record virtual node `name` (MAC `mac`, created by uid `owner`).

        Raises StateError when the name or the MAC is taken, ValueError for an invalid MAC.
        """
        vnode = VNode(name, normalise_mac(mac), owner, time.time() if now is None else now)

        def work(conn: sqlite3.Connection) -> VNode:
            conn.execute(
                "INSERT INTO vnodes (name, mac, owner, created) VALUES (?, ?, ?, ?)",
                (vnode.name, vnode.mac, vnode.owner, vnode.created),
            )
            return vnode

        return await self._run(work)

    async def remove_vnode(self, name: str) -> bool:
        """Forget virtual node `name` (its node stays); return whether it was recorded."""

        def work(conn: sqlite3.Connection) -> bool:
            return conn.execute("DELETE FROM vnodes WHERE name = ?", (name,)).rowcount > 0

        return await self._run(work)

    async def list_vnodes(self) -> list[VNode]:
        """Every virtual node, ordered by name."""

        def work(conn: sqlite3.Connection) -> list[VNode]:
            rows = conn.execute(
                "SELECT name, mac, owner, created FROM vnodes ORDER BY name"
            ).fetchall()
            return [VNode(*row) for row in rows]

        return await self._run(work)
