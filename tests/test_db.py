"""The state database, against real SQLite files."""

from __future__ import annotations

import asyncio
import sqlite3
import stat
from pathlib import Path

import pytest

from waltd import db
from waltd.db import Database, ModelStatus, Node, StateError
from waltd.names import normalise_mac

MAC = "00:11:22:aa:bb:cc"


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "waltd.db"


def write_file(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def make_db_at_version(path: Path, version: int, then: str = "") -> None:
    """A database file at schema `version` (the real migrations up to it), then `then` run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(path)
    for script in db.MIGRATIONS[:version]:
        conn.executescript(script)
    if then:
        conn.execute(then)
    conn.execute(f"PRAGMA user_version = {version}")
    conn.commit()
    conn.close()


def raw_version(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        version: int = conn.execute("PRAGMA user_version").fetchone()[0]
        return version
    finally:
        conn.close()


async def test_open_creates_private_folder_and_enables_wal(path: Path) -> None:
    async with Database(path):
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        conn = sqlite3.connect(path)
        try:
            assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        finally:
            conn.close()


def _modes(path: Path) -> dict[str, int]:
    return {p.name: stat.S_IMODE(p.stat().st_mode) for p in path.parent.glob(f"{path.name}*")}


async def test_the_database_files_are_private(path: Path) -> None:
    """The state folder is traversable (dnsmasq reads inside it), so the files themselves
    must keep other users out, including those an older daemon left readable."""
    async with Database(path) as database:
        await database.upsert_node(MAC)  # the -wal file exists once something was written
        assert _modes(path) == {"waltd.db": 0o600, "waltd.db-wal": 0o600, "waltd.db-shm": 0o600}
    for file in path.parent.iterdir():
        file.chmod(0o644)
    async with Database(path) as database:
        assert set(_modes(path).values()) == {0o600}
        assert await database.get_node(MAC) is not None


async def test_migrations_run_from_zero_and_record_version(path: Path) -> None:
    async with Database(path) as database:
        assert await database.schema_version() == len(db.MIGRATIONS) >= 1
        assert await database.count_nodes() == 0
        assert await database.list_models() == []
    assert raw_version(path) == len(db.MIGRATIONS)


async def test_reopen_keeps_data_and_runs_only_new_migrations(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with Database(path) as database:
        await database.upsert_node(MAC, now=1.0)
    # A later release adds a migration whose side effect shows how often it ran.
    newer = (*db.MIGRATIONS, "CREATE TABLE marks (x); INSERT INTO marks VALUES (1);")
    monkeypatch.setattr(db, "MIGRATIONS", newer)
    for _ in range(2):
        async with Database(path) as database:
            assert await database.schema_version() == len(newer)
            assert (await database.get_node(MAC)) is not None
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT count(*) FROM marks").fetchone()[0] == 1
    finally:
        conn.close()


async def test_failed_migration_rolls_back_with_its_version(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    async with Database(path):
        pass
    broken = (*db.MIGRATIONS, "CREATE TABLE half (x); INSERT INTO nowhere VALUES (1);")
    monkeypatch.setattr(db, "MIGRATIONS", broken)
    failing = len(broken)
    with pytest.raises(StateError, match=rf"version {failing} failed: no such table: nowhere"):
        async with Database(path):
            pass
    assert raw_version(path) == len(broken) - 1
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("SELECT name FROM sqlite_master WHERE name = 'half'").fetchall() == []
    finally:
        conn.close()


async def test_nodes_of_a_version_1_database_count_as_announced(path: Path) -> None:
    """Nodes recorded before the `announced` column existed were announced when recorded."""
    make_db_at_version(
        path,
        1,
        "INSERT INTO nodes VALUES"
        f" ('{MAC}', '10.0.0.2', 'node-aabbcc', 'rpi-3-b', NULL, 'leased', 1, 2)",
    )
    async with Database(path) as database:
        node = await database.get_node(MAC)
        assert node is not None and node.announced
        assert await database.unannounced_nodes() == []
        # a device of no model is never announced as a node
        await database.upsert_node("00:11:22:aa:bb:dc", ip="10.0.0.4")
        assert await database.unannounced_nodes() == []
        new = await database.upsert_node("00:11:22:aa:bb:dd", ip="10.0.0.3", model="rpi-3-b")
        assert await database.unannounced_nodes() == [new]
        await database.mark_announced(new.mac)
        assert await database.unannounced_nodes() == []
        # several at once, in one transaction; none is nothing to do
        more = [
            await database.upsert_node(f"00:11:22:aa:bb:e{i}", model="rpi-3-b") for i in range(3)
        ]
        assert await database.unannounced_nodes() == more
        await database.mark_announced()
        await database.mark_announced(*(node.mac.upper() for node in more))
        assert await database.unannounced_nodes() == []
        marked = [await database.get_node(node.mac) for node in more]
        assert all(node is not None and node.announced for node in marked)
        assert await database.count_unknown_devices() == 1


async def test_newer_schema_is_refused_untouched(path: Path) -> None:
    make_db_at_version(path, 7)
    with pytest.raises(StateError) as caught:
        async with Database(path):
            pass
    message = str(caught.value)
    assert str(path) in message
    assert f"schema version 7 is newer than this waltd (knows {len(db.MIGRATIONS)})" in message
    assert message.endswith("upgrade waltd")
    assert raw_version(path) == 7


async def test_garbage_file_is_refused_naming_it(path: Path) -> None:
    write_file(path, b"this is not an SQLite database\n" * 64)
    with pytest.raises(StateError, match="not a database") as caught:
        async with Database(path):
            pass
    assert str(path) in str(caught.value)


async def test_unusable_folder_is_refused(tmp_path: Path) -> None:
    write_file(tmp_path / "file", b"")
    with pytest.raises(StateError, match="cannot create state folder"):
        async with Database(tmp_path / "file" / "waltd.db"):
            pass


async def test_new_node_gets_defaults(path: Path) -> None:
    async with Database(path) as database:
        node = await database.upsert_node("00-11-22-AA-BB-CC", ip="192.168.152.2", now=10.0)
        assert node == Node(
            mac=MAC,
            ip="192.168.152.2",
            name="unknown-aabbcc",
            model=None,
            image=None,
            state="unknown",
            first_seen=10.0,
            last_seen=10.0,
            announced=False,
        )
        assert await database.get_node(MAC.upper()) == node


async def test_upsert_keeps_first_seen_and_unspecified_fields(path: Path) -> None:
    async with Database(path) as database:
        await database.upsert_node(MAC, ip="10.0.0.2", model="rpi-3-b", name="bench", now=10.0)
        node = await database.upsert_node(MAC, state="booted", image="img", now=20.0)
        assert node == Node(MAC, "10.0.0.2", "bench", "rpi-3-b", "img", "booted", 10.0, 20.0, False)
        node = await database.upsert_node(MAC, ip="10.0.0.3", now=30.0)
        assert node == Node(MAC, "10.0.0.3", "bench", "rpi-3-b", "img", "booted", 10.0, 30.0, False)
        assert await database.get_node(MAC) == node


@pytest.mark.parametrize(
    "bad",
    ["", "00:11:22:aa:bb", "00:11:22:aa:bb:cc:dd", "00:11-22:aa:bb:cc", "00:11:22:aa:bb:gg",
     "0011.22aa.bbcc", "00:11:22:aa:bb:cc\n", " 00:11:22:aa:bb:cc"],
)  # fmt: skip
async def test_bad_mac_is_refused(path: Path, bad: str) -> None:
    with pytest.raises(ValueError, match="invalid MAC"):
        normalise_mac(bad)
    async with Database(path) as database:
        with pytest.raises(ValueError, match="invalid MAC"):
            await database.upsert_node(bad)
        with pytest.raises(ValueError, match="invalid MAC"):
            await database.get_node(bad)
        with pytest.raises(ValueError, match="invalid MAC"):
            await database.remove_node(bad)
        assert await database.count_nodes() == 0


async def test_list_and_remove_nodes(path: Path) -> None:
    async with Database(path) as database:
        for mac in ("00:00:00:00:00:02", "00:00:00:00:00:01", "00:00:00:00:00:03"):
            await database.upsert_node(mac)
        assert [node.mac for node in await database.list_nodes()] == [
            "00:00:00:00:00:01",
            "00:00:00:00:00:02",
            "00:00:00:00:00:03",
        ]
        assert await database.remove_node("00-00-00-00-00-02") is True
        assert await database.remove_node("00:00:00:00:00:02") is False
        assert len(await database.list_nodes()) == 2
        assert await database.count_nodes() == 0  # no model: devices, not nodes
        await database.upsert_node("00:00:00:00:00:01", model="pc-x86-64")
        assert await database.count_nodes() == 1
        assert await database.get_node("00:00:00:00:00:02") is None


async def test_a_device_takes_its_models_name_once_it_has_one(path: Path) -> None:
    async with Database(path) as database:
        await database.upsert_node(MAC)
        node = await database.upsert_node(MAC, model="rpi-3-b")
        assert node.name == "rpi-3-b-aabbcc"
        # a name given by someone is kept
        await database.upsert_node(MAC, name="bench")
        assert (await database.upsert_node(MAC, model="pc-x86-64")).name == "bench"


async def test_states_and_their_transitions(path: Path) -> None:
    async with Database(path) as database:
        for i, model in enumerate(["a", "a", "b"]):
            await database.upsert_node(f"00:00:00:00:00:0{i}", model=model, state="waiting")
        waiting = await database.nodes_in_state("waiting", "a")
        assert [n.mac for n in waiting] == ["00:00:00:00:00:00", "00:00:00:00:00:01"]
        moved = await database.set_node_state(
            "00:00:00:00:00:00",
            "ready",
            image="docker.io/waltplatform/a-default:latest",
            expect="waiting",
        )
        assert moved is not None and moved.state == "ready"
        assert moved.image == "docker.io/waltplatform/a-default:latest"
        # only from the state expected
        assert await database.set_node_state("00:00:00:00:00:00", "ready", expect="waiting") is None
        assert len(await database.nodes_in_state("waiting")) == 2


async def test_a_models_waiting_nodes_move_together(path: Path) -> None:
    image = "docker.io/waltplatform/a-default:latest"
    async with Database(path) as database:
        for i, (model, state) in enumerate([("a", "waiting"), ("a", "down"), ("b", "waiting")]):
            await database.upsert_node(f"00:00:00:00:00:0{i}", model=model, state=state, now=i)
        own = "docker.io/u/own:1"
        await database.upsert_node(
            "00:00:00:00:00:03", model="a", image=own, state="waiting", now=3
        )
        moved = await database.move_nodes("a", "waiting", "ready", image=image)
        # oldest first, as stored; a node's own image is kept
        assert [(n.mac, n.state, n.image) for n in moved] == [
            ("00:00:00:00:00:00", "ready", image),
            ("00:00:00:00:00:03", "ready", own),
        ]
        assert moved == [await database.get_node(n.mac) for n in moved]
        left = await database.get_node("00:00:00:00:00:01")
        assert left is not None and left.state == "down"
        assert [n.mac for n in await database.nodes_in_state("waiting")] == ["00:00:00:00:00:02"]
        assert await database.move_nodes("a", "waiting", "ready", image=image) == []


async def test_migration_3_maps_old_states(path: Path) -> None:
    make_db_at_version(path, 2)
    conn = sqlite3.connect(path)
    rows = [
        ("00:00:00:00:00:01", "a", "leased"),
        ("00:00:00:00:00:02", None, "leased"),
        ("00:00:00:00:00:03", "a", "released"),
        ("00:00:00:00:00:04", "a", "new"),
    ]
    for mac, model, state in rows:
        conn.execute(
            "INSERT INTO nodes (mac, name, model, state, first_seen, last_seen)"
            " VALUES (?, ?, ?, ?, 1, 1)",
            (mac, mac, model, state),
        )
    conn.commit()
    conn.close()
    async with Database(path) as database:
        states = {n.mac[-1]: n.state for n in await database.list_nodes()}
        assert states == {"1": "waiting", "2": "unknown", "3": "down", "4": "waiting"}


async def test_model_status_round_trip(path: Path) -> None:
    async with Database(path) as database:
        assert await database.get_model_status("rpi-3-b") is None
        failed = await database.set_model_status(
            "rpi-3-b", "failed", last_error="registry down", next_retry=160.0, now=100.0
        )
        assert failed == ModelStatus("rpi-3-b", "failed", "registry down", 160.0, 100.0)
        await database.set_model_status("pc-x86-64", "fetching", now=90.0)
    async with Database(path) as database:
        assert await database.get_model_status("rpi-3-b") == failed
        # A new status replaces the whole row: the old error and retry time go.
        ready = await database.set_model_status("rpi-3-b", "ready", now=200.0)
        assert ready == ModelStatus("rpi-3-b", "ready", None, None, 200.0)
        assert await database.list_models() == [
            ModelStatus("pc-x86-64", "fetching", None, None, 90.0),
            ready,
        ]


async def test_concurrent_upserts_all_land(path: Path) -> None:
    macs = [f"02:00:00:00:{i // 256:02x}:{i % 256:02x}" for i in range(200)]
    async with Database(path) as database:
        nodes = await asyncio.gather(*(database.upsert_node(mac, now=1.0) for mac in macs))
        assert [node.mac for node in nodes] == macs
        # Many tasks hitting one node: every call lands and the latest time wins.
        await asyncio.gather(*(database.upsert_node(MAC, now=float(t)) for t in range(50)))
        assert len(await database.list_nodes()) == 201
        node = await database.get_node(MAC)
        assert node is not None
        assert (node.first_seen, node.last_seen) == (0.0, 49.0)


async def test_disk_waits_do_not_block_the_loop(path: Path) -> None:
    async with Database(path) as database:
        # Another writer holds the lock: the upsert waits in the worker while the loop runs on.
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        upsert = asyncio.create_task(database.upsert_node(MAC))
        # One turn of the loop starts the upsert; had its wait blocked the loop, this turn
        # would end only once the upsert gave up on the lock.
        await asyncio.sleep(0)
        assert not upsert.done()
        other.execute("COMMIT")
        other.close()
        assert (await upsert).mac == MAC


async def test_closed_database_refuses_calls(path: Path) -> None:
    database = Database(path)
    with pytest.raises(RuntimeError, match="not open"):
        await database.count_nodes()
    async with database:
        await database.upsert_node(MAC)
    with pytest.raises(RuntimeError, match="not open"):
        await database.count_nodes()
    # Closing checkpointed the WAL and the data is there for the next run.
    assert not path.with_name("waltd.db-wal").exists()
    async with Database(path) as again:
        assert len(await again.list_nodes()) == 1


async def test_nodes_using_an_image(path: Path) -> None:
    async with Database(path) as database:
        await database.upsert_node("00:11:22:aa:bb:02", name="b", image="docker.io/u/x:latest")
        await database.upsert_node("00:11:22:aa:bb:01", name="a", image="docker.io/u/x:latest")
        await database.upsert_node("00:11:22:aa:bb:03", name="c", image="docker.io/u/y:latest")
        using = await database.nodes_using_image("docker.io/u/x:latest")
        assert [node.name for node in using] == ["a", "b"]
        assert await database.nodes_using_image("docker.io/u/z:latest") == []


async def test_node_by_ip_is_the_node_seen_last_at_that_address(path: Path) -> None:
    async with Database(path) as database:
        await database.upsert_node("02:00:00:00:00:01", ip="10.0.0.5", model="pc-x86-64", now=1.0)
        await database.upsert_node("02:00:00:00:00:02", ip="10.0.0.5", model="pc-x86-64", now=2.0)
        await database.upsert_node("02:00:00:00:00:03", ip="10.0.0.6", now=3.0)  # no model
        found = await database.node_by_ip("10.0.0.5")
        assert found is not None and found.mac == "02:00:00:00:00:02"
        assert await database.node_by_ip("10.0.0.6") is None  # an unknown device is no node
        assert await database.node_by_ip("10.0.0.7") is None


async def _as_on_disk(database: Database) -> None:
    """Every node and model status answered from memory is what SQLite holds."""
    for node in await database.list_nodes():
        assert await database.get_node(node.mac) == node
    for status in await database.list_models():
        assert await database.get_model_status(status.model) == status


async def test_nodes_and_models_in_memory_follow_every_write(path: Path) -> None:
    """get_node and get_model_status answer from memory: each kind of write keeps it as on
    disk, and a database opened again starts from what it holds."""
    macs = [f"00:11:22:aa:bb:0{i}" for i in range(4)]
    async with Database(path) as database:
        assert await database.get_node(macs[0]) is None
        for i, mac in enumerate(macs):
            await database.upsert_node(mac, ip=f"10.0.0.{i}", model="pc", state="waiting")
        await _as_on_disk(database)
        await database.mark_announced(macs[0])
        await database.set_node_state(macs[1], "booted", image="docker.io/u/x:latest")
        await database.move_nodes("pc", "waiting", "ready", image="docker.io/u/y:latest")
        await database.replace_node_image("docker.io/u/y:latest", "docker.io/u/z:latest")
        assert await database.remove_node(macs[3])
        await database.set_model_status("pc", "ready", image="docker.io/u/z:latest", image_id="1")
        await database.set_model_status("rpi", "failed", last_error="down", next_retry=5.0)
        await _as_on_disk(database)
        assert await database.get_node(macs[3]) is None
        node = await database.get_node(macs[2].upper())
        assert node is not None and (node.state, node.image) == ("ready", "docker.io/u/z:latest")
        before = {mac: await database.get_node(mac) for mac in macs}
    async with Database(path) as again:
        assert {mac: await again.get_node(mac) for mac in macs} == before
        await _as_on_disk(again)
        failed = await again.get_model_status("rpi")
        assert failed is not None
        assert (failed.image_status, failed.last_error) == ("failed", "down")
        assert failed.next_retry == 5.0
    with pytest.raises(RuntimeError, match="not open"):
        await again.get_node(macs[0])


async def test_a_failed_write_leaves_memory_as_on_disk(
    path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(db, "BUSY_TIMEOUT_S", 0.05)
    async with Database(path) as database:
        recorded = await database.upsert_node(MAC, ip="10.0.0.1", model="pc")
        other = sqlite3.connect(path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")  # the lock the writes wait for, past their timeout
            with pytest.raises(StateError, match="locked"):
                await database.upsert_node(MAC, ip="10.0.0.2")
            with pytest.raises(StateError, match="locked"):
                await database.set_node_state(MAC, "ready")
            # a read does not wait for the lock: it answers what was committed
            assert await database.get_node(MAC) == recorded
        finally:
            other.execute("ROLLBACK")
            other.close()
        await _as_on_disk(database)
