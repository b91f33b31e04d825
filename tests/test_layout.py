"""The per-node layout: links as the contract says, moved to the runtime folder, switched
atomically; boot paths checked."""

from __future__ import annotations

import os
import stat
import threading
from pathlib import Path

import pytest

from waltd.provision import layout
from waltd.provision.layout import (
    layout_in,
    node_boot_file,
    remove_node_links,
    set_node_links,
    set_node_waiting,
)

MODEL = "pc-x86-64"
ID_A = "a" * 64
ID_B = "b" * 64
MAC = "52:54:00:12:34:56"


@pytest.mark.parametrize("in_memory", [False, True], ids=["in R", "in the runtime folder"])
def test_node_links_as_the_contract_says(tmp_path: Path, in_memory: bool) -> None:
    """The same links lead to the same places whether the layout's changing folders are
    R's own or links into the runtime folder (`layout_in`)."""
    root = tmp_path / "exports"
    runtime = tmp_path / "run" / "layout"
    if in_memory:
        layout_in(root, runtime)
    paths = set_node_links(
        root, "52-54-00-12-34-56", image_id=ID_A, model=MODEL, ip="10.1.2.3", name="vnode1"
    )
    nodes = root / "nodes"
    assert paths.folder == nodes / MAC
    assert os.readlink(nodes / MAC / "fs") == f"../../images/{ID_A}/fs"
    assert os.readlink(nodes / MAC / "tftp") == f"../../boot/{ID_A}/{MODEL}"
    assert os.readlink(nodes / "by-ip" / "10.1.2.3") == f"../{MAC}"
    assert os.readlink(nodes / "by-name" / "vnode1") == f"../{MAC}"
    tftp = root / "tftp" / "nodes" / "52-54-00-12-34-56"
    assert os.readlink(tftp) == f"../../nodes/{MAC}/tftp"
    # The links lead where they say once the targets exist.
    (root / "boot" / ID_A / MODEL).mkdir(parents=True)
    (root / "boot" / ID_A / MODEL / "start.ipxe").write_text("A")
    (root / "images" / ID_A / "fs").mkdir(parents=True)
    assert (tftp / "start.ipxe").read_text() == "A"
    assert (nodes / "by-ip" / "10.1.2.3" / "fs").resolve() == root / "images" / ID_A / "fs"
    assert node_boot_file(root, MAC, "start.ipxe") == root / "boot" / ID_A / MODEL / "start.ipxe"
    for folder in (root / "tftp", root / "tftp" / "nodes", nodes, nodes / MAC, nodes / "by-ip"):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o755  # dnsmasq reads as nobody
    # kept where they were made: the runtime folder, or R
    assert (runtime / "nodes" / MAC / "fs").is_symlink() == in_memory
    assert (root / "nodes").is_symlink() == in_memory

    # A new IP and name: the stale aliases go; another node's stay.
    set_node_links(root, "02:00:00:00:00:01", image_id=ID_B, model=MODEL, ip="10.1.2.9", name="o")
    set_node_links(root, MAC, image_id=ID_B, model=MODEL, ip="10.1.2.4", name="vnode2")
    assert sorted(os.listdir(nodes / "by-ip")) == ["10.1.2.4", "10.1.2.9"]
    assert sorted(os.listdir(nodes / "by-name")) == ["o", "vnode2"]
    assert os.readlink(nodes / MAC / "tftp") == f"../../boot/{ID_B}/{MODEL}"
    assert node_boot_file(root, MAC, "start.ipxe") is None  # no copy for B yet

    # Waiting: the server's start.ipxe, no root file system.
    set_node_waiting(root, MAC, ip="10.1.2.4", name="vnode2")
    assert os.readlink(nodes / MAC / "tftp") == "../../boot/waiting"
    assert not os.path.lexists(nodes / MAC / "fs")

    remove_node_links(root, MAC)
    assert not os.path.lexists(nodes / MAC) and not os.path.lexists(tftp)
    assert os.listdir(nodes / "by-ip") == ["10.1.2.9"] and os.listdir(nodes / "by-name") == ["o"]
    assert os.listdir(root / "tftp" / "nodes") == ["02-00-00-00-00-01"]
    for bad in ({"image_id": "../../etc"}, {"model": "a/b"}, {"name": "../x"}, {"ip": "1.2"}):
        args = {"image_id": ID_A, "model": MODEL, "ip": None, "name": None, **bad}
        with pytest.raises(ValueError):
            set_node_links(root, MAC, **args)  # type: ignore[arg-type]


def test_an_earlier_layout_in_R_moves_to_the_runtime_folder(tmp_path: Path) -> None:
    """R's own changing folders (an earlier layout's, or a start with no runtime folder yet)
    are emptied of their links and folders and replaced by links; the layout is then set
    again there (the exports service rebuilds it from the database)."""
    root, runtime = tmp_path / "exports", tmp_path / "run" / "layout"
    set_node_links(root, MAC, image_id=ID_A, model=MODEL, ip="10.1.2.3", name="n")
    layout_in(root, runtime)
    assert os.readlink(root / "nodes") == str(runtime / "nodes")
    assert os.readlink(root / "tftp" / "nodes") == str(runtime / "tftp" / "nodes")
    assert list((runtime / "nodes").iterdir()) == []  # the old links are gone, not moved
    set_node_links(root, MAC, image_id=ID_A, model=MODEL, ip="10.1.2.3", name="n")
    layout_in(root, runtime)  # again (a restart after a crash): what it holds stays
    assert os.readlink(runtime / "nodes" / MAC / "fs") == f"../../images/{ID_A}/fs"
    # the runtime folder being R: nothing moves
    layout_in(root, root)
    assert (root / "nodes").is_symlink()


def test_what_is_not_the_layouts_keeps_its_folder_and_says_so(tmp_path: Path) -> None:
    root, runtime = tmp_path / "exports", tmp_path / "run" / "layout"
    set_node_links(root, MAC, image_id=ID_A, model=MODEL, ip="10.1.2.3", name="n")
    (root / "nodes" / MAC / "notes.txt").write_text("an operator's")
    with pytest.raises(OSError, match="holds what is not the layout's"):
        layout_in(root, runtime)
    assert (root / "nodes" / MAC / "notes.txt").read_text() == "an operator's"
    assert not (root / "nodes" / MAC / "fs").is_symlink()  # the layout's links went


def test_known_aliases_replace_the_look_at_every_alias(tmp_path: Path) -> None:
    """A caller keeping each node's aliases (the index, then what each set returns) gets the
    layout a look at every alias gives: the stale ones of the node go, never another's."""
    root = tmp_path / "exports"
    nodes = root / "nodes"
    other = "02:00:00:00:00:01"
    set_node_links(root, MAC, image_id=ID_A, model=MODEL, ip="10.1.2.3", name="a")
    set_node_waiting(root, other, ip="10.1.2.9", name="o")
    index = layout.alias_index(root)
    assert index == {
        MAC: (nodes / "by-ip" / "10.1.2.3", nodes / "by-name" / "a"),
        other: (nodes / "by-ip" / "10.1.2.9", nodes / "by-name" / "o"),
    }

    # The other node takes this one's IP meanwhile: its link is not this node's to remove.
    set_node_waiting(root, other, ip="10.1.2.3", name="o", known=index[other])
    paths = set_node_links(
        root, MAC, image_id=ID_B, model=MODEL, ip="10.1.2.4", name="b", known=index[MAC]
    )
    assert paths.aliases == (nodes / "by-ip" / "10.1.2.4", nodes / "by-name" / "b")
    assert sorted(os.listdir(nodes / "by-ip")) == ["10.1.2.3", "10.1.2.4"]
    assert os.readlink(nodes / "by-ip" / "10.1.2.3") == f"../{other}"
    assert sorted(os.listdir(nodes / "by-name")) == ["b", "o"]

    # No IP, no name: the aliases it had go; a link outside the alias folders is never taken.
    (nodes / MAC / "elsewhere").symlink_to(f"../{MAC}")
    known = (*paths.aliases, nodes / MAC / "elsewhere")
    paths = set_node_waiting(root, MAC, ip=None, name=None, known=known)
    assert paths.aliases == ()
    assert layout.alias_index(root) == {
        other: (nodes / "by-ip" / "10.1.2.3", nodes / "by-name" / "o")
    }
    assert os.path.islink(nodes / MAC / "elsewhere")


def test_switching_a_link_never_shows_it_missing(tmp_path: Path) -> None:
    """A reader loop runs while the node's links switch back and forth between two images:
    it sees one or the other, never no link."""
    root = tmp_path / "exports"
    for image_id in (ID_A, ID_B):
        folder = root / "boot" / image_id / MODEL
        folder.mkdir(parents=True)
        (folder / "start.ipxe").write_text(image_id[0])
    set_node_links(root, MAC, image_id=ID_A, model=MODEL, ip="10.0.0.2", name="n")
    start = root / "tftp" / "nodes" / "52-54-00-12-34-56" / "start.ipxe"
    seen: dict[str, int] = {}
    missing: list[BaseException] = []
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            try:
                text = start.read_text()
            except OSError as err:
                missing.append(err)
                continue
            seen[text] = seen.get(text, 0) + 1

    reader = threading.Thread(target=read)
    reader.start()
    try:
        for i in range(400):
            image_id = ID_B if i % 2 == 0 else ID_A
            set_node_links(root, MAC, image_id=image_id, model=MODEL, ip="10.0.0.2", name="n")
    finally:
        stop.set()
        reader.join()
    assert missing == []
    assert set(seen) == {"a", "b"}  # the reader did see the switches
    assert not [p for p in (root / "nodes" / MAC).iterdir() if p.name.startswith(".")]


def test_boot_paths_are_checked() -> None:
    assert layout.boot_path("vmlinuz") == "vmlinuz"
    assert layout.boot_path("sub/initrd.img") == "sub/initrd.img"
    for bad in ("", "/etc/passwd", "../x", "a/../../b", "a//b", "./a", "a/.", "a\0b", "x" * 1025):
        with pytest.raises(ValueError):
            layout.boot_path(bad)
    with pytest.raises(ValueError, match="255 bytes"):
        layout.boot_path("é" * 128)
