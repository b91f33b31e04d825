"""Images mounted the exportable way: the mount table parser (pure), then real overlay mounts
of images built into a real podman storage in the test's folder (root, podman, buildah)."""

from __future__ import annotations

import asyncio
import errno
import json
import os
import subprocess
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from structlog.testing import capture_logs

from tests.conftest import require_root, require_tool
from tests.support.store_images import build, release_storage, repository_at
from waltd.images import mounts as layers
from waltd.images import store
from waltd.images.mounts import (
    LayersError,
    image_layers,
    lower_links,
    short_name,
    top_layer,
    unescape_mount_field,
)
from waltd.images.repository import Repository
from waltd.images.store import LocalRef
from waltd.process import Children
from waltd.provision.mounts import (
    MAX_OPTIONS_BYTES,
    ImageMounts,
    MountBusy,
    MountError,
    Reconciled,
    full_layers,
    overlay_data,
    overlay_options,
    parse_mounts,
)

ID_A, ID_B = "a" * 64, "b" * 64
ROOT = Path("/srv/walt exports")

TABLE = (
    "/dev/vda / ext4 rw,relatime 0 0\n"
    # an image mount, its root holding a space (\040)
    f"overlay /srv/walt\\040exports/images/{ID_A}/fs overlay ro,lowerdir=l/AB,upperdir=/u 0 0\n"
    # not an overlay, not under images/, not an id, not fs: all left out
    f"tmpfs /srv/walt\\040exports/images/{ID_B}/fs tmpfs rw 0 0\n"
    f"overlay /srv/other/images/{ID_B}/fs overlay ro 0 0\n"
    "overlay /srv/walt\\040exports/images/short/fs overlay ro 0 0\n"
    f"overlay /srv/walt\\040exports/images/{ID_B}/fs/deeper overlay ro 0 0\n"
    f"overlay /srv/walt\\040exports/images/{ID_B}/fs overlay ro,lowerdir=l/CD 0 0\n"
)


def test_parse_mounts_finds_image_mounts_only() -> None:
    assert parse_mounts(TABLE, ROOT) == {
        ID_A: ROOT / "images" / ID_A / "fs",
        ID_B: ROOT / "images" / ID_B / "fs",
    }
    assert parse_mounts("", ROOT) == {}
    assert parse_mounts(TABLE, Path("/srv/walt")) == {}


def test_unescape_mount_field() -> None:
    assert unescape_mount_field(r"/mnt/a\040b\011c\134d\054e") == "/mnt/a b\tc\\d,e"
    assert unescape_mount_field("/plain") == "/plain"


def _inspected(upper: object, lower: object = None, name: str = "overlay") -> dict[str, object]:
    data = {"UpperDir": upper, "WorkDir": "/s/overlay/x/work"}
    return {"GraphDriver": {"Name": name, "Data": data | ({"LowerDir": lower} if lower else {})}}


def test_image_layers_come_top_first_from_podmans_inspect() -> None:
    top = "/s/overlay/x/diff"
    assert image_layers(_inspected(top)) == [Path(top)]
    below = "/s/overlay/y/diff:/s/overlay/z/diff"
    assert image_layers(_inspected(top, below)) == [Path(top), *map(Path, below.split(":"))]
    for bad, why in (
        (_inspected(top, name="vfs"), "'vfs', not overlay"),
        ({"GraphDriver": None}, "None, not overlay"),
        (_inspected(None), "no layer folder"),
        (_inspected("relative/diff"), "no layer folder"),
        (_inspected(top, "/a/diff:b/diff"), "not absolute"),
    ):
        with pytest.raises(LayersError, match=why):
            image_layers(bad)


def test_a_layer_is_named_by_the_storages_short_link(tmp_path: Path) -> None:
    overlay = tmp_path / "overlay"
    (overlay / "l").mkdir(parents=True)
    for layer, link in (("x", "ABC123"), ("y", "DEF456"), ("z", "GHI789")):
        (overlay / layer / "diff").mkdir(parents=True)
        (overlay / layer / "link").write_text(link)
    (overlay / "l" / "ABC123").symlink_to("../x/diff")
    (overlay / "l" / "DEF456").symlink_to("../x/diff")  # a link to another layer
    assert short_name(overlay / "x" / "diff", overlay) == "l/ABC123"
    # no valid link (wrong target, none at all, another storage): the full path
    for layer in (overlay / "y" / "diff", overlay / "z" / "diff", tmp_path / "other" / "diff"):
        assert short_name(layer, overlay) == str(layer)


def test_the_top_layer_comes_from_the_storages_image_records() -> None:
    records = [{"id": ID_B, "layer": "c" * 64}, {"id": ID_A, "layer": "d" * 64, "names": []}]
    assert top_layer(json.dumps(records).encode(), ID_A) == "d" * 64
    for images, why in (
        (b"[{", "not JSON"),
        (json.dumps({"id": ID_A}).encode(), "hold no image"),
        (json.dumps(records[:1]).encode(), "hold no image"),
        (json.dumps([{"id": ID_A}]).encode(), "names no top layer"),
        (json.dumps([{"id": ID_A, "layer": "../x"}]).encode(), "names no top layer"),
    ):
        with pytest.raises(LayersError, match=why):
            top_layer(images, ID_A)


def test_a_layers_lower_file_lists_short_links_only() -> None:
    assert lower_links("l/ABC:l/DEF\n") == ["l/ABC", "l/DEF"]
    assert lower_links("") == [] and lower_links("\n") == []
    for bad in ("/abs/diff", "l/A:", "l/../x", "l/A,upperdir=/x", "l/" + "A" * 65):
        with pytest.raises(LayersError, match="not a short link"):
            lower_links(bad)


def test_holds_come_from_the_storages_image_records() -> None:
    records = [
        {"id": ID_A, "names": [layers.hold_name(ID_A), "docker.io/alice/a:latest"]},
        {"id": ID_B, "names": ["docker.io/alice/b:latest"]},
        {"id": "c" * 64, "names": [f"{layers.HOLD_PREFIX}not-an-id:latest"]},
        {"id": "d" * 64},
        "not a record",
    ]
    assert layers.held_in(json.dumps(records).encode()) == {ID_A}
    assert layers.held_in(b"[]") == set()
    for bad, problem in ((b"{", "not JSON"), (b"{}", "not a list")):
        with pytest.raises(LayersError, match=problem):
            layers.held_in(bad)


def test_layers_by_full_path_for_mount_2() -> None:
    overlay = Path("/var/lib/walt/images/overlay")
    assert full_layers("l/AB:/other/diff:l/CD", overlay) == (
        f"{overlay}/l/AB:/other/diff:{overlay}/l/CD"
    )
    data = overlay_data("/a:/b", Path("/u"), Path("/w"))
    assert data == "index=on,nfs_export=on,lowerdir=/a:/b,upperdir=/u,workdir=/w"
    assert "ro" not in (data or "").split(",")  # read-only is mount(2)'s flag
    assert overlay_data("/x" * MAX_OPTIONS_BYTES, Path("/u"), Path("/w")) is None


def test_overlay_options_fit_in_a_page_or_say_what_to_do() -> None:
    upper, work = Path("/var/lib/walt/images") / ID_A / "upper", Path("/w")
    options = overlay_options("l/AB:l/CD", upper, work)
    assert options == f"ro,index=on,nfs_export=on,lowerdir=l/AB:l/CD,upperdir={upper},workdir=/w"
    # 128 layers of podman's short links fit
    assert len(overlay_options(":".join(["l/" + "X" * 26] * 128), upper, work)) < 4096
    with pytest.raises(MountError, match=r"141 layers take \d+ bytes.*squash"):
        overlay_options(":".join(["l/" + "X" * 26] * 141), upper, work)
    assert MAX_OPTIONS_BYTES == 4095


# ---- real mounts ------------------------------------------------------------------------


@dataclass
class Setup:
    repo: Repository
    root: Path
    children: Children

    def mounts(self) -> ImageMounts:
        """A fresh ImageMounts, as a restarted daemon makes."""
        return ImageMounts(self.root, self.repo, self.children)


def _overlays_at(point: Path) -> int:
    with open("/proc/self/mounts") as table:
        return sum(1 for line in table if line.split()[1:3] == [str(point), "overlay"])


def _options(point: Path) -> set[str]:
    with open("/proc/self/mounts") as table:
        return {
            o for line in table if line.split()[1] == str(point) for o in line.split()[3].split(",")
        }


def _unmount_all(root: Path, mounted: Iterable[str]) -> None:
    for image in mounted:
        subprocess.run(["umount", "-R", str(root / "images" / image / "fs")], check=False)


def _mount_by_hand(lower: str, relative: Path, point: Path) -> None:
    """A read-only overlay of `lower` at `point`, as podman mounts one (with an empty folder
    below: an overlay without an upper folder wants two layers)."""
    empty = point.parent.parent.parent / "empty-lower"
    empty.mkdir(exist_ok=True)
    options = f"ro,lowerdir={lower}:{empty}"
    subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", options, str(point)], cwd=relative, check=True
    )


def _real(path: Path) -> Path:
    return Path(os.path.realpath(path))


@pytest.fixture
async def setup(tmp_path: Path) -> AsyncIterator[Setup]:
    require_root()
    for tool in ("mount", "umount"):
        require_tool(tool)
    repo = repository_at(tmp_path)
    root = tmp_path / "exports"  # the repository's exports root (repository_at)
    old = os.umask(0o077)  # the daemon's: mounts must not show it to nodes
    try:
        yield Setup(repo, root, Children(tmp_path / "children.json"))
    finally:
        os.umask(old)
    _unmount_all(root, ImageMounts(root, repo, Children(tmp_path / "c.json")).mounted())
    release_storage(repo.storage.graphroot)


async def _names(repo: Repository, image_id: str) -> set[str]:
    data = await store.inspect_id(repo, image_id)
    return set(data.names) if data else set()


def _tools_run(children: Children) -> list[list[str]]:
    """The command lines `children.run` starts from now on (they still run)."""
    ran: list[list[str]] = []
    run = children.run

    async def recording(argv: list[str], **options: Any) -> tuple[int, bytes, bytes]:
        ran.append(list(argv))
        return await run(argv, **options)

    children.run = recording  # type: ignore[method-assign]
    return ran


def _no_table() -> str:
    raise AssertionError("the mount table was read")


async def test_an_image_is_mounted_once_read_only_and_held(setup: Setup) -> None:
    ref = LocalRef("alice", "one")
    image = await build(setup.repo, ref, layers=2, content="hello")
    mounts = setup.mounts()

    ran = _tools_run(setup.children)
    first, second = await asyncio.gather(mounts.mount(image), mounts.mount(image))
    assert ran == []  # no tool, mount(8) included: mount(2) with the layers' full paths
    assert first == second == setup.root.resolve() / "images" / image / "fs"
    assert first == _real(first)
    assert _overlays_at(first) == 1
    assert mounts.mounted() == {image: first}
    assert (first / "layer-1").read_text() == "docker.io/alice/one:latest 1 hello\n"
    # mounted already: its mount point, found without reading the mount table
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(layers, "mount_table", _no_table)
        assert await mounts.mount(image) == first
    assert _overlays_at(first) == 1
    # the overlay's root shows the image's top layer's (buildah's 0555 here), not the
    # daemon's umask on the upper folder
    lower, relative = await layers.layer_dirs(setup.repo, image)
    top = os.stat(relative / lower.split(":")[0])
    assert (first.stat().st_mode, first.stat().st_uid) == (top.st_mode, top.st_uid)
    assert top.st_mode & 0o005
    with pytest.raises(OSError) as written:
        (first / "new").write_text("x")
    assert written.value.errno == errno.EROFS
    assert {"ro", "index=on", "nfs_export=on"} <= _options(first)

    # mounting gave it no name: a hold comes with the first deletion, which keeps the
    # image (its layers under the mount) when its last name goes; never listed
    assert await _names(setup.repo, image) == {ref.full}
    await store.remove(setup.repo, ref)
    assert await _names(setup.repo, image) == {layers.hold_name(image)}
    assert await store.list_images(setup.repo) == []
    assert (first / "layer-0").read_text() == "docker.io/alice/one:latest 0 hello\n"

    await mounts.unmount(image)
    assert mounts.mounted() == {} and not (setup.root / "images" / image).exists()
    assert await layers.held(setup.repo) == set()
    await store.drop_if_unnamed(setup.repo, image)
    assert await store.inspect_id(setup.repo, image) is None
    await mounts.unmount(image)  # not mounted: nothing to do


async def test_a_busy_mount_is_not_unmounted(setup: Setup) -> None:
    image = await build(setup.repo, LocalRef("alice", "busy"))
    mounts = setup.mounts()
    point = await mounts.mount(image)
    held_open = os.open(point / "layer-0", os.O_RDONLY)
    try:
        with pytest.raises(MountBusy, match="in use"):
            await mounts.unmount(image)
        assert mounts.mounted() == {image: point}
    finally:
        os.close(held_open)
    await mounts.unmount(image)
    assert mounts.mounted() == {}


async def test_mounting_an_absent_image_says_so(setup: Setup) -> None:
    with pytest.raises(MountError, match="cannot be mounted"):
        await setup.mounts().mount("c" * 64)
    with pytest.raises(ValueError, match="64 hex"):
        await setup.mounts().mount("c" * 12)
    assert not (setup.root / "images" / ("c" * 64)).exists()


async def test_reconcile_after_a_crash_never_mounts_twice(setup: Setup) -> None:
    kept = await build(setup.repo, LocalRef("alice", "kept"), content="k")
    gone = await build(setup.repo, LocalRef("alice", "gone"), content="g")
    before = setup.mounts()  # the daemon that crashed
    kept_at, gone_at = await before.mount(kept), await before.mount(gone)
    # what a crash mid-mount leaves: a folder without a mount, and a stray hold
    half = setup.root / "images" / ("d" * 64)
    (half / "upper").mkdir(parents=True)
    stray = await build(setup.repo, LocalRef("alice", "stray"), content="s")
    await layers.hold(setup.repo, stray)
    (setup.root / "images" / "not-an-id").mkdir()

    after = setup.mounts()
    assert await after.mount(kept) == kept_at and _overlays_at(kept_at) == 1
    done = await after.reconcile({kept})
    assert done.kept == {kept} and done.unmounted == {gone} and not done.busy
    assert done.removed == {gone, "d" * 64} and done.released == {stray}
    assert after.mounted() == {kept: kept_at} and _overlays_at(kept_at) == 1
    assert not gone_at.exists() and not half.exists()
    assert (setup.root / "images" / "not-an-id").is_dir()  # not the daemon's: left
    assert await layers.held(setup.repo) == set()

    # a mount stacked twice by hand: the wanted image keeps one
    lower, relative = await layers.layer_dirs(setup.repo, kept)
    _mount_by_hand(lower, relative, kept_at)
    assert _overlays_at(kept_at) == 2
    await setup.mounts().reconcile({kept})
    assert _overlays_at(kept_at) == 1 and (kept_at / "layer-0").exists()
    done = await setup.mounts().reconcile(set())
    assert done.unmounted == {kept} and after.mounted() == {}


async def test_a_restarted_daemon_keeps_the_mounts_a_crash_left_through_deletions(
    setup: Setup,
) -> None:
    """The images a previous daemon mounted, never held, are found in the mount table by
    the next one's first deletion (here the staging clean-up of its start) and kept."""
    one, two = LocalRef("alice", "one"), LocalRef("alice", "two")
    first = await build(setup.repo, one, content="1")
    second = await build(setup.repo, two, content="2")
    first_at = await setup.mounts().mount(first)
    await setup.mounts().mount(second)
    # the crash: names went meanwhile, as an interrupted clone over them could leave them
    await setup.repo.run(["podman", "untag", one.full, one.full])
    await setup.repo.run(["podman", "tag", second, f"{store.STAGING_PREFIX}alice/two:ab12"])
    await setup.repo.run(["podman", "untag", two.full, two.full])

    restarted = repository_at(setup.root.parent)
    assert await store.cleanup_staging(restarted) == 1
    await store.drop_dangling(restarted, set())
    assert await _names(restarted, first) == {layers.hold_name(first)}
    assert await _names(restarted, second) == {layers.hold_name(second)}
    assert (first_at / "layer-0").read_text() == "docker.io/alice/one:latest 0 1\n"
    # the storage's own records say which images are held, as podman does
    listed = await restarted.run_json(["podman", "images", "--format", "json"])
    by_podman = {e["Id"] for e in listed if layers.hold_name(e["Id"]) in e.get("Names", ())}
    assert await layers.held(restarted) == by_podman == {first, second}

    # once unmounted, the hold goes (the next deletion may then take the image)
    after = ImageMounts(setup.root, restarted, setup.children)
    done = await after.reconcile({second})
    assert done.unmounted == {first} and done.released == {first}
    await store.drop_if_unnamed(restarted, first)
    assert await store.inspect_id(restarted, first) is None
    assert await _names(restarted, second) == {layers.hold_name(second)}


async def test_a_deletion_goes_on_past_a_mounted_image_gone_from_storage(setup: Setup) -> None:
    """A mounted image removed behind the repository's back has no layers left to keep: the
    next deletion cannot hold it, and goes on without it."""
    gone = await build(setup.repo, LocalRef("alice", "gone"))
    other = LocalRef("alice", "other")
    other_id = await build(setup.repo, other, content="o")
    mounts = setup.mounts()
    await mounts.mount(gone)
    await setup.repo.run(["podman", "rmi", "--force", gone])  # not through the repository
    await store.remove(setup.repo, other)
    assert await store.inspect_id(setup.repo, other_id) is None
    assert await layers.held(setup.repo) == set()
    await mounts.unmount(gone)
    assert mounts.mounted() == {}


async def test_no_image_is_mounted_while_a_deletion_is_under_way(setup: Setup) -> None:
    """A deletion looks at the mount table once, first: a mount waits until it is through."""
    image = await build(setup.repo, LocalRef("alice", "late"))
    mounts = setup.mounts()
    async with setup.repo.deleting():
        mounting = asyncio.create_task(mounts.mount(image))
        for _ in range(20):  # loop turns and thread hand-offs a mount would be done in
            await asyncio.to_thread(mounts.mounted)
        assert not mounting.done() and mounts.mounted() == {}
    assert await mounting == setup.root.resolve() / "images" / image / "fs"
    assert await _names(setup.repo, image) == {"docker.io/alice/late:latest"}


async def test_reconcile_of_a_storage_never_written_starts_no_tool(setup: Setup) -> None:
    """A new server's first start reconciles while its first nodes arrive: nothing can be
    mounted or held there, known without a podman start (which would set the storage up)."""
    done = await setup.mounts().reconcile(set())
    assert done == Reconciled()
    assert list(setup.repo.storage.graphroot.iterdir()) == []  # no tool set it up
    assert await layers.held(setup.repo) == set()
    assert list(setup.repo.storage.graphroot.iterdir()) == []


async def test_the_layers_are_those_podmans_own_mount_shows(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The folders named from the storage's records, with no podman start, are in order
    those podman itself mounts (its mount adds an empty folder under a one-layer image:
    overlay wants two layers when there is no upper one)."""
    images = {
        count: await build(setup.repo, LocalRef("alice", f"layers-{count}"), layers=count)
        for count in (1, 3)
    }
    real_run_json = setup.repo.run_json

    async def no_podman(argv: object, **_: object) -> None:
        raise AssertionError(f"a tool started: {argv}")

    for count, image in images.items():
        monkeypatch.setattr(setup.repo, "run_json", no_podman)
        lower, relative = await layers.layer_dirs(setup.repo, image)
        monkeypatch.setattr(setup.repo, "run_json", real_run_json)
        assert all(name.startswith("l/") for name in lower.split(":"))
        ours = [_real(relative / name) for name in lower.split(":")]
        merged = (await setup.repo.run(["podman", "image", "mount", image])).decode().strip()
        try:
            theirs = [_real(relative / name) for name in _lowerdir_of(merged).split(":")]
        finally:
            await setup.repo.run(["podman", "image", "unmount", image])
        assert len(ours) == count and ours == [p for p in theirs if p.name != "empty"]


async def test_layers_come_from_podman_when_the_records_do_not_give_them(
    setup: Setup, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A storage whose records say nothing usable (a top layer's link file gone, as a
    storage of another layout would have it): podman's inspect names the same folders, the
    one without a short link by its full path, and the record says why."""
    image = await build(setup.repo, LocalRef("alice", "fallback"), layers=2)
    expected, relative = await layers.layer_dirs(setup.repo, image)
    top = str(_real(relative / expected.split(":")[0]))
    link_file = Path(top).parent / "link"
    saved = link_file.read_bytes()
    link_file.unlink()
    try:
        with capture_logs() as logs:
            lower, relative = await layers.layer_dirs(setup.repo, image)
    finally:
        link_file.write_bytes(saved)
    assert lower.split(":") == [top, *expected.split(":")[1:]]
    (record,) = [r for r in logs if r["event"] == "image_layers_inspected"]
    assert "leads to no layer" in record["reason"] and record["image"] == image[:12]


def _lowerdir_of(point: str) -> str:
    """The lowerdir option of the overlay mounted at `point`."""
    with open("/proc/self/mounts") as table:
        for line in table:
            fields = line.split()
            if unescape_mount_field(fields[1]) == point:
                for option in fields[3].split(","):
                    if option.startswith("lowerdir="):
                        return unescape_mount_field(option.removeprefix("lowerdir="))
    raise AssertionError(f"no overlay with a lowerdir at {point}")


async def test_an_image_of_a_hundred_layers_mounts(setup: Setup) -> None:
    """Many layers are named by their short relative links: the options fit in a page."""
    image = await build(setup.repo, LocalRef("alice", "many"), layers=100)
    lower, relative = await layers.layer_dirs(setup.repo, image)
    assert lower.count(":") >= 99 and "l/" in lower and relative.name == "overlay"
    ran = _tools_run(setup.children)
    point = await setup.mounts().mount(image)
    assert (point / "layer-0").exists() and (point / "layer-99").exists()
    # their full paths do not fit in a page: mount(8), run where the short names resolve
    assert [argv[0] for argv in ran] == ["mount"]
    await setup.mounts().unmount(image)
