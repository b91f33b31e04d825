"""The internal repository's store on real podman storage in the test's folder: names, listing,
staging and installation, removal, the clean-up at start, name locks and ownership."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import require_tool
from tests.support.daemon import Daemon, remove, short_dir, walt, write_config
from tests.support.store_images import build, release_storage, repository_at
from tests.support.users import fresh_name, unix_users
from waltd.api import wire
from waltd.cli.images_store import MINE_HEADERS, NO_IMAGES, OTHERS_HEADERS, show_text
from waltd.db import Database
from waltd.images import manage, store
from waltd.images.locks import NameLocks
from waltd.images.manage import Actor, Handles
from waltd.images.ownership import may_change
from waltd.images.repository import Repository, RepositoryService
from waltd.images.store import LocalRef
from waltd.names import InvalidName


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Repository]:
    repository = repository_at(tmp_path)
    yield repository
    release_storage(repository.storage.graphroot)


async def _names(repo: Repository) -> set[str]:
    listed = await repo.run_json(["podman", "images", "--all", "--format", "json"])
    return {name for entry in listed or () for name in entry.get("Names") or ()}


def test_local_ref_grammar() -> None:
    assert LocalRef.parse("a", "bob") == LocalRef("bob", "a", "latest")
    assert LocalRef.parse("alice/a:v1.2", "bob") == LocalRef("alice", "a", "v1.2")
    ref = LocalRef.parse("a:v2", "bob")
    assert ref.full == "docker.io/bob/a:v2"
    assert ref.clone_url == "walt:bob/a:v2"
    assert LocalRef("bob", "a").display == "bob/a"
    for bad in ("../x", "a b", "a;b", "a\nb", "x" * 300, "A", "u/v/w", "-a", "default", ""):
        with pytest.raises(InvalidName, match=r"use |at most|reserved|empty"):
            LocalRef.parse(bad, "bob")
    assert LocalRef.of_stored("docker.io/bob/a:v2") == LocalRef("bob", "a", "v2")
    for other in ("localhost/waltd-staging/bob/a:abc", "quay.io/bob/a:v", "docker.io/bob/a"):
        assert LocalRef.of_stored(other) is None


async def test_list_and_get_read_storage(repo: Repository) -> None:
    a = LocalRef("alice", "a")
    a2 = LocalRef("alice", "a", "v2")
    b = LocalRef("bob", "b")
    await build(repo, a, models="pc-x86-64,rpi-3-b", layers=3)
    await build(repo, a2)
    await build(repo, b, models=None)
    staged = store.staging_ref(a)
    await build(repo, staged)
    a_copy = LocalRef("alice", "copy")
    await store.tag(repo, a.full, a_copy)

    listed = await store.list_images(repo)
    # once per name, sorted, the staging name left out
    assert [i.ref for i in listed] == [a, a2, a_copy, b]
    got = await store.get(repo, a)
    assert got is not None
    assert got.models == ("pc-x86-64", "rpi-3-b")
    assert got.layers == 3
    assert got.size > 0 and got.created and got.digest and got.digest.startswith("sha256:")
    b_image = await store.get(repo, b)
    assert b_image is not None and b_image.models == ()
    assert await store.get(repo, LocalRef("alice", "absent")) is None
    data = await store.inspect_id(repo, staged)
    assert data is not None and staged in data.names
    assert await store.inspect_id(repo, "0" * 64) is None


async def test_install_moves_the_name_and_drops_the_old_image(repo: Repository) -> None:
    ref = LocalRef("alice", "a")
    old_id = await build(repo, ref, content="old")
    async with store.staging(repo, ref) as staged:
        new_id = await build(repo, staged, content="new")
        await store.install(repo, staged, ref)

    got = await store.get(repo, ref)
    assert got is not None and got.id == new_id
    assert staged not in await _names(repo)
    assert await store.inspect_id(repo, old_id) is None  # nothing named it any more


async def test_the_longest_names_fit_in_storage(repo: Repository) -> None:
    ref = LocalRef.parse("u" * 32 + "/" + "n" * 128 + ":" + "t" * 128, "alice")
    async with store.staging(repo, ref) as staged:
        image_id = await build(repo, staged)
        await store.install(repo, staged, ref)
    got = await store.get(repo, ref)
    assert got is not None and got.id == image_id
    assert [i.ref for i in await store.list_images(repo)] == [ref]


async def test_install_keeps_an_old_image_another_name_holds(repo: Repository) -> None:
    ref = LocalRef("alice", "a")
    copy = LocalRef("alice", "copy")
    old_id = await build(repo, ref, content="old")
    await store.tag(repo, ref.full, copy)
    async with store.staging(repo, ref) as staged:
        await build(repo, staged, content="new")
        await store.install(repo, staged, ref)

    kept = await store.get(repo, copy)
    assert kept is not None and kept.id == old_id


async def test_staging_is_discarded_on_failure_and_cancellation(repo: Repository) -> None:
    ref = LocalRef("alice", "a")
    old_id = await build(repo, ref)
    made: list[str] = []

    with pytest.raises(RuntimeError, match="copy failed"):
        async with store.staging(repo, ref) as staged:
            made.append(await build(repo, staged))
            raise RuntimeError("copy failed")

    building = asyncio.Event()

    async def cancelled_work() -> None:
        async with store.staging(repo, ref) as staged:
            made.append(await build(repo, staged))
            building.set()
            await asyncio.Event().wait()

    task = asyncio.create_task(cancelled_work())
    await building.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    assert not any(n.startswith(store.STAGING_PREFIX) for n in await _names(repo))
    for image_id in made:
        assert await store.inspect_id(repo, image_id) is None
    kept = await store.get(repo, ref)
    assert kept is not None and kept.id == old_id


async def test_remove_drops_the_name_and_an_unnamed_image(repo: Repository) -> None:
    ref = LocalRef("alice", "a")
    copy = LocalRef("alice", "copy")
    image_id = await build(repo, ref)
    await store.tag(repo, ref.full, copy)

    await store.remove(repo, ref)
    assert await store.get(repo, ref) is None
    assert await store.inspect_id(repo, image_id) is not None  # `copy` still holds it

    await store.remove(repo, copy)
    assert await store.inspect_id(repo, image_id) is None
    with pytest.raises(LookupError, match="no image alice/copy"):
        await store.remove(repo, copy)


async def test_repository_start_removes_what_a_crash_left(repo: Repository) -> None:
    ref = LocalRef("alice", "a")
    await build(repo, ref)
    left = [store.staging_ref(ref), store.staging_ref(LocalRef("bob", "b"))]
    for staged in left:
        await build(repo, staged)
    container = f"{store.CONTAINER_PREFIX}squash-1"
    await repo.run(["buildah", "from", "--name", container, ref.full])

    async with RepositoryService(repo, repo._running):
        pass

    names = await _names(repo)
    assert ref.full in names
    assert not any(n.startswith(store.STAGING_PREFIX) for n in names)
    containers = await repo.run_json(["buildah", "containers", "--json"])
    assert container not in {c["containername"] for c in containers or ()}
    assert await store.cleanup_staging(repo) == 0


async def test_repository_start_on_a_fresh_storage_runs_no_tool(repo: Repository) -> None:
    async with RepositoryService(repo, repo._running):
        pass
    # podman and buildah leave lock files in the storage they open: none ran
    assert await asyncio.to_thread(lambda: list(repo.storage.graphroot.iterdir())) == []


def test_layer_limit_says_to_squash() -> None:
    image = store.StoredImage(LocalRef("alice", "big", "v1"), "f" * 64, None, None, 1, {}, 121)
    with pytest.raises(store.TooManyLayers, match="squash it first: walt image squash big:v1"):
        store.check_layers(image)
    store.check_layers(
        store.StoredImage(LocalRef("alice", "ok"), "f" * 64, None, None, 1, {}, store.MAX_LAYERS)
    )


async def test_name_locks_serialise_one_name_only() -> None:
    locks = NameLocks()
    order: list[str] = []
    first_in = asyncio.Event()
    release = asyncio.Event()

    async def first() -> None:
        async with locks.hold("docker.io/alice/a:latest"):
            order.append("first in")
            first_in.set()
            await release.wait()
            order.append("first out")

    async def second() -> None:
        async with locks.hold("docker.io/alice/a:latest"):
            order.append("second in")

    async def other() -> None:
        async with locks.hold("docker.io/alice/b:latest"):
            order.append("other in")

    one = asyncio.create_task(first())
    await first_in.wait()
    two = asyncio.create_task(second())
    await other()  # a different name: not held up by `first`
    assert order == ["first in", "other in"]
    release.set()
    await asyncio.gather(one, two)
    assert order == ["first in", "other in", "first out", "second in"]
    assert not locks.held("docker.io/alice/a:latest")


def test_ownership() -> None:
    mine = LocalRef("alice", "a")
    theirs = LocalRef("bob", "b")
    platform = LocalRef("waltplatform", "rpi-3-b-default")
    assert may_change("alice", False, mine) is None
    assert "belongs to user bob" in (may_change("alice", False, theirs) or "")
    assert "only root" in (may_change("alice", False, platform) or "")
    assert may_change("root", True, platform) is None
    assert "only root" in (may_change("waltplatform", False, platform) or "")
    assert "belongs to user bob" in (may_change("root", True, theirs) or "")


# The commands (images/manage.py) on real storage and a real state database -----------------

ALICE = Actor("alice", is_root=False)
ROOT = Actor("root", is_root=True)


@pytest.fixture
async def handles(repo: Repository, tmp_path: Path) -> AsyncIterator[Handles]:
    async with Database(tmp_path / "waltd.db") as db:
        yield Handles(repo, db, NameLocks())


async def _node(handles: Handles, number: int, image: LocalRef, model: str = "pc-x86-64") -> str:
    node = await handles.db.upsert_node(
        f"52:54:00:00:00:{number:02x}", model=model, image=image.full, name=f"node-{number}"
    )
    return node.name


async def test_show_lists_mine_or_everyones_with_their_nodes(handles: Handles) -> None:
    mine = LocalRef("alice", "a", "v1")
    theirs = LocalRef("bob", "b")
    default = LocalRef("waltplatform", "pc-x86-64-default")
    for ref in (mine, theirs, default):
        await build(handles.repo, ref)
    await _node(handles, 1, mine)
    await _node(handles, 2, mine)

    shown = await manage.show(handles, ALICE, everyone=False)
    assert [(s.image.ref, s.nodes, s.mine) for s in shown] == [(mine, ("node-1", "node-2"), True)]
    everything = await manage.show(handles, ALICE, everyone=True)
    assert [(s.image.ref, s.mine, s.default) for s in everything] == [
        (mine, True, False),
        (theirs, False, False),
        (default, False, True),
    ]


async def test_rename_moves_the_name_and_its_nodes(handles: Handles) -> None:
    old, new = LocalRef("alice", "a"), LocalRef("alice", "b", "v2")
    image_id = await build(handles.repo, old)
    await _node(handles, 1, old)

    with pytest.raises(manage.Refused, match=r"used by node\(s\) node-1.*--force a b:v2"):
        await manage.rename(handles, ALICE, "a", "b:v2", force=False)
    assert (await store.get(handles.repo, old)) is not None

    outcome = await manage.rename(handles, ALICE, "a", "b:v2", force=True)
    assert outcome.nodes == ("node-1",) and outcome.image == "b:v2"
    assert await store.get(handles.repo, old) is None
    renamed = await store.get(handles.repo, new)
    assert renamed is not None and renamed.id == image_id
    node = await handles.db.get_node("52:54:00:00:00:01")
    assert node is not None and node.image == new.full


async def test_overwriting_is_refused_without_force_and_for_unsupported_models(
    handles: Handles,
) -> None:
    src, target = LocalRef("alice", "src"), LocalRef("alice", "target")
    await build(handles.repo, src, models="rpi-3-b")
    target_id = await build(handles.repo, target, models="pc-x86-64")

    with pytest.raises(manage.Refused, match="target exists already; to overwrite it: walt image"):
        await manage.duplicate(handles, ALICE, "src", "target", force=False)
    await _node(handles, 1, target, model="pc-x86-64")
    with pytest.raises(manage.Refused, match=r"used by node\(s\) node-1: replacing"):
        await manage.rename(handles, ALICE, "src", "target", force=False)
    with pytest.raises(manage.Refused, match=r"model.*pc-x86-64, which the new image does not"):
        await manage.rename(handles, ALICE, "src", "target", force=True)
    kept = await store.get(handles.repo, target)
    assert kept is not None and kept.id == target_id
    assert await store.get(handles.repo, src) is not None


async def test_duplicate_shares_the_image_and_takes_from_anyone(handles: Handles) -> None:
    theirs = LocalRef("bob", "b")
    image_id = await build(handles.repo, theirs, layers=2)

    outcome = await manage.duplicate(handles, ALICE, "bob/b", "mine", force=False)
    assert outcome.image == "mine" and outcome.layers == 2
    copy = await store.get(handles.repo, LocalRef("alice", "mine"))
    assert copy is not None and copy.id == image_id and copy.layers == 2
    assert await store.get(handles.repo, theirs) is not None


async def test_remove_refuses_an_image_in_use_unless_forced(handles: Handles) -> None:
    ref = LocalRef("alice", "a")
    image_id = await build(handles.repo, ref)
    await _node(handles, 1, ref)

    with pytest.raises(manage.Refused, match=r"node\(s\) node-1; .*remove --force a"):
        await manage.remove(handles, ALICE, "a", force=False)
    outcome = await manage.remove(handles, ALICE, "a", force=True)
    assert outcome.nodes == ("node-1",)
    assert await store.inspect_id(handles.repo, image_id) is None
    node = await handles.db.get_node("52:54:00:00:00:01")
    assert node is not None and node.image is None
    with pytest.raises(LookupError, match="there is no image a"):
        await manage.remove(handles, ALICE, "a", force=False)


async def test_ownership_is_enforced_with_the_reason(handles: Handles) -> None:
    theirs = LocalRef("bob", "b")
    platform = LocalRef("waltplatform", "pc-x86-64-default")
    await build(handles.repo, theirs)
    await build(handles.repo, platform)

    with pytest.raises(
        PermissionError, match=r"belongs to user bob: you \(alice\) may change only"
    ):
        await manage.remove(handles, ALICE, "bob/b", force=True)
    with pytest.raises(PermissionError, match="belongs to user bob"):
        await manage.rename(handles, ALICE, "bob/b", "b", force=True)
    with pytest.raises(PermissionError, match="only root may change it"):
        await manage.squash(handles, ALICE, "waltplatform/pc-x86-64-default", False, print)
    with pytest.raises(PermissionError, match="belongs to user bob"):
        await manage.duplicate(handles, ALICE, "a", "bob/b", force=True)
    await manage.rename(handles, ROOT, "waltplatform/pc-x86-64-default", "waltplatform/x", False)
    assert await store.get(handles.repo, theirs) is not None


async def test_squash_makes_one_layer_with_the_same_files_and_labels(handles: Handles) -> None:
    ref = LocalRef("alice", "big")
    before_id = await build(handles.repo, ref, models="pc-x86-64,rpi-3-b", layers=5)
    steps: list[str] = []

    outcome = await manage.squash(handles, ALICE, "big", False, steps.append)

    after = await store.get(handles.repo, ref)
    assert after is not None and after.layers == 1 and outcome.layers == 1
    assert after.id != before_id and after.models == ("pc-x86-64", "rpi-3-b")
    assert steps[0] == "squashing the 5 layers of big into one"
    assert await store.inspect_id(handles.repo, before_id) is None
    mount = Path((await handles.repo.run(["podman", "image", "mount", ref.full])).decode().strip())
    try:
        files = await asyncio.to_thread(lambda: sorted(p.name for p in mount.iterdir()))
        assert files == [f"layer-{n}" for n in range(5)]
    finally:
        await handles.repo.run(["podman", "image", "unmount", ref.full])
    names = await _names(handles.repo)
    assert not any(n.startswith(store.STAGING_PREFIX) for n in names)
    again = await manage.squash(handles, ALICE, "big", False, steps.append)
    assert again.message == "image big has one layer already"


async def test_a_cancelled_squash_leaves_the_image_as_it_was(handles: Handles) -> None:
    ref = LocalRef("alice", "big")
    before_id = await build(handles.repo, ref, layers=3)
    task: asyncio.Task[manage.Outcome] | None = None

    def cancel_at_once(step: str) -> None:
        # the caller leaves as the squash starts: cancelled at its next await
        assert task is not None
        task.cancel()

    task = asyncio.create_task(manage.squash(handles, ALICE, "big", False, cancel_at_once))
    with pytest.raises(asyncio.CancelledError):
        await task

    kept = await store.get(handles.repo, ref)
    assert kept is not None and kept.id == before_id and kept.layers == 3
    assert not any(n.startswith(store.STAGING_PREFIX) for n in await _names(handles.repo))
    containers = await handles.repo.run_json(["buildah", "containers", "--json"])
    assert not containers
    assert not handles.locks.held(ref.full)


async def test_two_operations_on_one_name_run_one_after_the_other(handles: Handles) -> None:
    ref = LocalRef("alice", "a")
    await build(handles.repo, ref)
    await build(handles.repo, LocalRef("alice", "x"))
    taken, release = asyncio.Event(), asyncio.Event()

    async def holder() -> None:
        async with handles.locks.hold(ref.full):
            taken.set()
            await release.wait()

    held = asyncio.create_task(holder())
    await taken.wait()
    removal = asyncio.create_task(manage.remove(handles, ALICE, "a", force=False))
    # another name is not held up: this duplicate completes while `a` is held
    await manage.duplicate(handles, ALICE, "x", "y", force=False)
    assert not removal.done() and await store.get(handles.repo, ref) is not None
    release.set()
    await asyncio.gather(held, removal)
    assert await store.get(handles.repo, ref) is None


# End to end: a real daemon, `walt` as root, and real non-root users (useradd) -------------

# PATH METHOD TARGET [BODY]: one request on the socket; prints the status and the NDJSON
# records (or the JSON body) of the answer. Run with the system Python as a useradd user.
_CLIENT = r"""
import json, socket, sys
path, method, target = sys.argv[1:4]
body = sys.argv[4].encode() if len(sys.argv) > 4 else b""
s = socket.socket(socket.AF_UNIX)
s.settimeout(60)
s.connect(path)
head = f"{method} {target} HTTP/1.0\r\nContent-Type: application/json\r\n"
s.sendall(head.encode() + b"Content-Length: %d\r\n\r\n" % len(body) + body)
f = s.makefile("rb")
status = int(f.readline().split()[1])
while f.readline() not in (b"\r\n", b""):
    pass
lines = [json.loads(line) for line in f if line.strip()]
print(json.dumps({"status": status, "records": lines}))
"""


@pytest.fixture(scope="module")
def users() -> Iterator[tuple[str, ...]]:
    with unix_users(fresh_name("waltsa"), fresh_name("waltsb")) as names:
        yield names


def _as(user: str, daemon: Daemon, method: str, target: str, body: Any = None) -> Any:
    python = require_tool("/usr/bin/python3")
    argv = [python, "-c", _CLIENT, str(daemon.socket), method, target]
    if body is not None:
        argv.append(json.dumps(body))
    res = subprocess.run(
        ["runuser", "-u", user, "--", *argv], capture_output=True, text=True, timeout=60
    )
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def _op(user: str, daemon: Daemon, op: str, image: str, new: str | None = None) -> Any:
    """The last record of an operation by `user` (a result or an error)."""
    answer = _as(user, daemon, "POST", f"/v1/images/{op}", {"image": image, "new": new})
    assert answer["status"] == 200, answer
    return answer["records"][-1]


@pytest.fixture
def daemon_folder() -> Iterator[Path]:
    folder = short_dir()
    folder.chmod(0o755)  # the users reach the socket inside
    yield folder
    release_storage(folder / "images")
    remove(folder)


async def test_users_change_only_their_own_images(
    daemon_folder: Path, users: tuple[str, str]
) -> None:
    alice, bob = users
    folder = daemon_folder
    config = write_config(
        folder, registries=[], images={"docker-socket": str(folder / "no-docker.sock")}
    )
    repo = repository_at(folder)
    refs = {
        "root": LocalRef("root", "lab"),
        "default": LocalRef("waltplatform", "pc-x86-64-default"),
        "alice": LocalRef(alice, "mine"),
        "alice-used": LocalRef(alice, "used"),
        "bob": LocalRef(bob, "theirs"),
    }
    for ref in refs.values():
        await build(repo, ref)
    async with Database(folder / "state" / "waltd.db") as db:
        await db.upsert_node(
            "52:54:00:00:00:01", model="pc-x86-64", image=refs["alice-used"].full, name="node-1"
        )
    daemon = Daemon(folder, config).start()
    try:
        # show: the caller's own, then everyone's with clone URLs and the default image
        own = _as(alice, daemon, "GET", "/v1/images")["records"][0]["images"]
        assert {(i["name"], tuple(i["nodes"])) for i in own} == {
            ("mine", ()),
            ("used", ("node-1",)),
        }
        every = _as(alice, daemon, "GET", "/v1/images?all=1")["records"][0]["images"]
        by_url = {i["clone_url"]: i for i in every}
        assert by_url["walt:root/lab"]["mine"] is False
        assert by_url["walt:waltplatform/pc-x86-64-default"]["default"] is True
        assert by_url[f"walt:{bob}/theirs"]["models"] == ["pc-x86-64"]

        # ownership: refused with the reason, storage unchanged
        refusal = _op(alice, daemon, "rename", "root/lab", "lab")
        assert refusal["type"] == "error"
        assert f"belongs to user root: you ({alice}) may change only your own" in refusal["error"]
        refusal = _op(alice, daemon, "remove", f"{bob}/theirs")
        assert f"belongs to user {bob}" in refusal["error"]
        refusal = _op(alice, daemon, "squash", "waltplatform/pc-x86-64-default")
        assert "only root may change it" in refusal["error"]
        refusal = _op(alice, daemon, "remove", "used")
        assert "used by node(s) node-1" in refusal["error"]
        for key in ("root", "bob", "default", "alice-used"):
            assert await store.get(repo, refs[key]) is not None

        # her own: done
        assert _op(alice, daemon, "rename", "mine", "mine2")["type"] == "result"
        assert await store.get(repo, refs["alice"]) is None
        assert await store.get(repo, LocalRef(alice, "mine2")) is not None
        copied = _op(alice, daemon, "duplicate", "root/lab", "from-root")
        assert copied["type"] == "result" and copied["image"] == "from-root"

        # search: the internal repository gives the others' images, never the caller's own
        found = _as(alice, daemon, "POST", "/v1/images/search", {"keyword": None})
        result = found["records"][-1]
        urls = {i["clone_url"] for i in result["images"] if i["location"] == "walt"}
        assert urls == {
            "walt:root/lab",
            "walt:waltplatform/pc-x86-64-default",
            f"walt:{bob}/theirs",
        }
        assert {"type": "progress", "source": "walt", "status": "done", "count": 3} in found[
            "records"
        ]

        # root: its own and the default images, never a user's
        shown = walt(daemon.socket, "image", "show", "--all")
        assert shown.returncode == 0, shown.stderr
        assert "lab " in shown.stdout and "Default images:" in shown.stdout
        assert f"walt:{alice}/used" in shown.stdout
        refused = walt(daemon.socket, "image", "remove", f"{alice}/used")
        assert refused.returncode == 1
        assert f"belongs to user {alice}: you (root) may change only" in refused.stderr
        removed = walt(daemon.socket, "image", "remove", "waltplatform/pc-x86-64-default")
        assert removed.returncode == 0, removed.stderr
        assert removed.stdout == "image waltplatform/pc-x86-64-default removed\n"
        assert await store.get(repo, refs["default"]) is None
        done = walt(daemon.socket, "image", "duplicate", "lab", "lab2")
        assert done.stdout == "image lab duplicated as lab2\n", done.stderr
        done = walt(daemon.socket, "image", "rename", "lab2", "lab3:v1")
        assert done.stdout == "image lab2 is now lab3:v1\n", done.stderr
        done = walt(daemon.socket, "image", "squash", "lab3:v1")
        assert done.stdout == "image lab3:v1 has one layer already\n", done.stderr
        listed = json.loads(walt(daemon.socket, "image", "show", "--json").stdout)
        assert [(i["name"], i["tag"], i["mine"]) for i in listed] == [
            ("lab", "latest", True),
            ("lab3", "v1", True),
        ]
        lab_id = {i["id"] for i in listed}
        assert len(lab_id) == 1  # one image, two names: no copy was made
        assert daemon.stop() == 0
    finally:
        daemon.kill()


# The wire shapes and the client's tables ------------------------------------------------


def _row(**changes: Any) -> wire.StoredImageRow:
    base = wire.StoredImageRow(
        user="alice",
        name="a",
        tag="v2",
        id="f" * 64,
        created="2026-12-01T12:32:27.68Z",
        size=3 * 1024**2,
        layers=3,
        models=("rpi-3-b", "pc-x86-64"),
        nodes=("node-1", "node-2"),
        mine=True,
        default=False,
        clone_url="walt:alice/a:v2",
    )
    return replace(base, **changes)


def test_wire_shapes_round_trip_and_name_a_bad_field() -> None:
    listing = wire.ImageListing((_row(), _row(user="bob", mine=False, nodes=())))
    assert wire.ImageListing.from_json(json.loads(json.dumps(listing.to_json()))) == listing
    op = wire.ImageOperation("a", "b:v1", True)
    assert wire.ImageOperation.from_json(op.to_json()) == op
    result = wire.OperationResult("b:v1", "f" * 64, 1, ("node-1",), "done")
    assert wire.operation_record(result.to_json()) == result
    assert wire.operation_record({"type": "progress", "step": "s"}) == wire.OperationStep("s")
    for bad, says in (
        ({"image": "a", "force": "yes"}, "force must be true or false"),
        ({"image": "x" * 600}, "image is longer than 512 characters"),
        ({"new": "b"}, "image is missing"),
    ):
        with pytest.raises(ValueError, match=says):
            wire.ImageOperation.from_json(bad)
    broken = listing.to_json()
    broken["images"][1]["mine"] = "no"
    with pytest.raises(ValueError, match=r"images\[1\]\.mine must be true or false"):
        wire.ImageListing.from_json(broken)


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.split(" | ")]


def test_show_tables() -> None:
    mine = _row()
    theirs = _row(user="bob", name="b", tag="latest", mine=False, nodes=(), size=512)
    theirs = replace(theirs, clone_url="walt:bob/b")
    default = _row(
        user="waltplatform", name="pc-x86-64-default", tag="latest", mine=False, default=True
    )
    default = replace(default, clone_url="walt:waltplatform/pc-x86-64-default", created=None)
    lines = show_text(wire.ImageListing((mine, theirs, default)), everyone=True).splitlines()
    assert _cells(lines[0]) == list(MINE_HEADERS)
    assert _cells(lines[2]) == [
        "a:v2",
        "node-1, node-2",
        "2026-12-01 12:32",
        "3.0 MiB",
        "3",
        "rpi-3-b,pc-x86-64",
    ]
    assert lines[4] == "Other users' images:"
    assert _cells(lines[5]) == list(OTHERS_HEADERS)
    assert _cells(lines[7]) == [
        "bob",
        "b",
        "no",
        "2026-12-01 12:32",
        "512 B",
        "rpi-3-b,pc-x86-64",
        "walt:bob/b",
    ]
    assert lines[9] == "Default images:"
    assert _cells(lines[12])[0] == "waltplatform" and _cells(lines[12])[3] == "-"
    assert _cells(lines[12])[-1] == "walt:waltplatform/pc-x86-64-default"
    assert show_text(wire.ImageListing((theirs,)), everyone=False) == NO_IMAGES
