"""Boot files (provision/boot.py): an image's /boot/<model>/ copied out of a hostile tree,
the per-node layout and its atomic link switches, the server's iPXE scripts.

Real files, links, FIFOs, sockets and devices in the test's folder (a device needs root).
"""

from __future__ import annotations

import os
import socket
import stat
from pathlib import Path

import pytest

from tests.conftest import require_root
from waltd.provision import boot
from waltd.provision.boot import BootCopyError, CopyLimits, bootstrap_ipxe, copy_boot_files
from waltd.provision.layout import set_node_waiting

MODEL = "pc-x86-64"
ID_A = "a" * 64
ID_B = "b" * 64
MAC = "52:54:00:12:34:56"


def _image(tmp_path: Path) -> Path:
    """An image root with a plain /boot/<model>/ and a secret outside it."""
    image = tmp_path / "image"
    files = image / "boot" / MODEL
    files.mkdir(parents=True)
    (files / "start.ipxe").write_text("#!ipxe\nboot\n")
    (files / "vmlinuz").write_bytes(os.urandom(100_000))
    (image / "etc").mkdir()
    (image / "etc" / "hostname").write_text("the image's own\n")
    return image


def _all_files(folder: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def test_a_hostile_boot_tree_copies_nothing_from_outside(tmp_path: Path) -> None:
    require_root()  # mknod
    image = _image(tmp_path)
    outside = tmp_path / "outside"
    outside.mkdir()
    secret = outside / "shadow"
    secret.write_text("root:secret-hash:::\n")
    files = image / "boot" / MODEL
    # Links that lead out on the host, but are read inside the image.
    (files / "abs-secret").symlink_to(secret)  # absolute: image_root/<that path>: absent
    (files / "up-secret").symlink_to("../../../../../../../../outside/shadow")  # `..` stops
    (files / "abs-host").symlink_to("/etc/hostname")  # the image's /etc/hostname
    (files / "up-host").symlink_to("../../../../../../etc/hostname")
    (files / "escape").symlink_to("/")  # a folder: left out
    (files / "loop-a").symlink_to("loop-b")
    (files / "loop-b").symlink_to("loop-a")
    (files / "self").symlink_to("self")
    (files / "dangling").symlink_to("nothing-here")
    (files / "via-dir").symlink_to("sub/../start.ipxe")
    os.mkfifo(files / "fifo")
    os.mknod(files / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(str(files / "sock"))
    sock.close()
    sub = files / "sub"
    sub.mkdir(mode=0o700)
    (sub / "initrd.img").write_bytes(b"initrd")
    (sub / "initrd.img").chmod(0o4700)  # setuid and private: copied 0644
    (sub / "kernel-link").symlink_to("../vmlinuz")
    (sub / "to-fifo").symlink_to("/boot/pc-x86-64/fifo")

    dest = tmp_path / "exports" / "boot" / ID_A / MODEL
    report = copy_boot_files(image, MODEL, dest)

    copied = _all_files(dest)
    assert copied == {
        "abs-host": b"the image's own\n",
        "start.ipxe": b"#!ipxe\nboot\n",
        "sub/initrd.img": b"initrd",
        "sub/kernel-link": (files / "vmlinuz").read_bytes(),
        "up-host": b"the image's own\n",
        "via-dir": b"#!ipxe\nboot\n",
        "vmlinuz": (files / "vmlinuz").read_bytes(),
    }
    assert not any(b"secret" in data for data in copied.values())
    left_out = {s.path: s.reason for s in report.skipped}
    assert set(left_out) == {
        "abs-secret",
        "up-secret",
        "escape",
        "loop-a",
        "loop-b",
        "self",
        "dangling",
        "fifo",
        "null",
        "sock",
        "sub/to-fifo",
    }
    assert left_out["abs-secret"] == "a link: it leads to nothing in the image"
    assert "loop" in left_out["loop-a"] and "loop" in left_out["self"]
    assert left_out["escape"] == "a link to a folder"
    assert (left_out["fifo"], left_out["null"], left_out["sock"]) == (
        "a FIFO",
        "a device",
        "a socket",
    )
    assert left_out["sub/to-fifo"] == "a link to a FIFO"
    assert (report.files, report.folders) == (7, 1)
    assert report.bytes == sum(len(data) for data in copied.values())
    # Server-owned: regular files and folders only, 0644 and 0755, root's.
    for path in [dest, *dest.rglob("*")]:
        info = path.lstat()
        assert info.st_uid == 0
        if path.is_dir():
            assert stat.S_IMODE(info.st_mode) == 0o755
        else:
            assert stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o644
    assert [p.name for p in dest.parent.iterdir()] == [MODEL]  # no temporary copy left


def test_boot_folder_reached_through_links_inside_the_image(tmp_path: Path) -> None:
    """/boot itself a link (absolute, as distributions make them): followed inside."""
    image = tmp_path / "image"
    real = image / "usr" / "lib" / "boot" / MODEL
    real.mkdir(parents=True)
    (real / "start.ipxe").write_text("#!ipxe\n")
    (real / "up").symlink_to("../" + MODEL + "/start.ipxe")
    (image / "boot").symlink_to("/usr/lib/boot")
    dest = tmp_path / "dest" / MODEL
    report = copy_boot_files(image, MODEL, dest)
    assert _all_files(dest) == {"start.ipxe": b"#!ipxe\n", "up": b"#!ipxe\n"}
    assert report.skipped == ()


def test_a_missing_boot_folder_or_bad_model_is_a_clear_error(tmp_path: Path) -> None:
    image = _image(tmp_path)
    with pytest.raises(BootCopyError, match=r"the image has no /boot/rpi-3-b/ folder"):
        copy_boot_files(image, "rpi-3-b", tmp_path / "dest" / "rpi-3-b")
    (image / "boot" / "rpi-4").symlink_to(tmp_path)  # outside: absent inside the image
    with pytest.raises(BootCopyError, match=r"no /boot/rpi-4/ folder"):
        copy_boot_files(image, "rpi-4", tmp_path / "dest" / "rpi-4")
    with pytest.raises(BootCopyError, match="invalid node model"):
        copy_boot_files(image, "../etc", tmp_path / "dest" / "x")
    assert not (tmp_path / "dest").exists() or not any((tmp_path / "dest").iterdir())


def _fails_and_leaves_nothing(image: Path, dest: Path, match: str, **limits: int) -> None:
    with pytest.raises(BootCopyError, match=match):
        copy_boot_files(image, MODEL, dest, CopyLimits(**limits) if limits else None)
    assert not dest.exists()
    assert list(dest.parent.iterdir()) == []  # its temporary copy removed too


def test_bounds_size_depth_and_entries(tmp_path: Path) -> None:
    image = _image(tmp_path)
    files = image / "boot" / MODEL
    dest = tmp_path / "dest" / MODEL
    # A sparse file past 2 GiB: refused from its size, before a byte is read.
    with open(files / "huge", "wb") as huge:
        huge.truncate(2 * 2**30 + 1)
    _fails_and_leaves_nothing(image, dest, r"more than 2147483648 bytes")
    (files / "huge").unlink()
    # Deeper than 32 folders.
    deep = files.joinpath(*["d"] * 33)
    deep.mkdir(parents=True)
    _fails_and_leaves_nothing(image, dest, "nested more than 32 deep")
    # Within 32 it is copied.
    (deep.parent / "d").rmdir()
    (deep.parent / "leaf").write_text("x")
    report = copy_boot_files(image, MODEL, dest)
    assert report.folders == 32 and dest.joinpath(*["d"] * 32, "leaf").read_text() == "x"
    # More entries than the bound (10000 by default; 50 here, the same check).
    assert CopyLimits().entries == 10_000
    many = files / "many"
    many.mkdir()
    for i in range(50):
        (many / str(i)).touch()
    with pytest.raises(BootCopyError, match="more than 50 entries"):
        copy_boot_files(image, MODEL, dest, CopyLimits(entries=50))
    assert _all_files(dest)["start.ipxe"] == b"#!ipxe\nboot\n"  # the last good copy stays


def test_a_new_copy_replaces_the_old_one_and_partials_are_cleared(tmp_path: Path) -> None:
    image = _image(tmp_path)
    dest = tmp_path / "boot" / ID_A / MODEL
    copy_boot_files(image, MODEL, dest)
    (image / "boot" / MODEL / "vmlinuz").unlink()
    (image / "boot" / MODEL / "new").write_text("new")
    copy_boot_files(image, MODEL, dest)
    assert _all_files(dest) == {"new": b"new", "start.ipxe": b"#!ipxe\nboot\n"}
    assert [p.name for p in dest.parent.iterdir()] == [MODEL]
    partial = dest.parent / ".waltd-tmp-pc-x86-64.0123abcd"
    partial.mkdir()
    (partial / "half").touch()
    assert boot.clear_partial_copies(dest.parent) == [partial]
    assert [p.name for p in dest.parent.iterdir()] == [MODEL]
    # Once no node uses the image: its copies go, the server's own folder never.
    boot.remove_boot_copies(tmp_path, ID_A)
    assert list((tmp_path / "boot").iterdir()) == []
    boot.remove_boot_copies(tmp_path, ID_A)  # gone already: nothing to do
    with pytest.raises(ValueError):
        boot.remove_boot_copies(tmp_path, "waiting")


def test_iPXE_scripts_chain_the_same_node_script() -> None:
    script = bootstrap_ipxe(8080, Path("/var/lib/walt/nodes"))
    lines = script.splitlines()
    assert lines[0] == "#!ipxe"
    # the model is announced, DHCP done again, then the variables images use
    assert lines.index("set user-class walt.node.${model}") < lines.index("dhcp || goto dhcp")
    assert "set walt-server ${next-server}" in lines
    assert "set walt-http http://${next-server}:8080" in lines
    assert "set walt-nfsroot ${next-server}:/var/lib/walt/nodes/${mac}/fs" in lines
    chain = "tftp://${next-server}/nodes/${mac:hexhyp}/start.ipxe"
    assert f"chain --autofree {chain} || goto retry" in lines
    assert lines.index("dhcp || goto dhcp") < lines.index("set walt-server ${next-server}")
    # no other iPXE binary is ever chained: the only chain is the node's script
    assert sum("chain" in line for line in lines) == 1
    waiting = boot.WAITING_IPXE.splitlines()
    assert waiting[0] == "#!ipxe" and "sleep 5" in waiting
    assert waiting[-1] == f"chain --replace --autofree {chain}"
    for bad in (Path("/with space"), Path("/a$b"), Path("relative")):
        with pytest.raises(ValueError, match="NFS root"):
            bootstrap_ipxe(80, bad)
    with pytest.raises(ValueError):
        bootstrap_ipxe(0, Path("/x"))


def test_server_files_are_installed_world_readable(tmp_path: Path) -> None:
    root = tmp_path / "exports"
    boot.install_server_files(root, 80)
    assert (root / "tftp" / "bootstrap.ipxe").read_text() == bootstrap_ipxe(80, root / "nodes")
    waiting = root / "boot" / "waiting" / "start.ipxe"
    assert waiting.read_text() == boot.WAITING_IPXE
    for path in (waiting, root / "tftp" / "bootstrap.ipxe"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o644
    # A waiting node's TFTP link leads to it.
    set_node_waiting(root, MAC, ip=None, name=None)
    alias = root / "tftp" / "nodes" / "52-54-00-12-34-56" / "start.ipxe"
    assert alias.read_text() == boot.WAITING_IPXE


def test_an_image_without_a_boot_folder_for_the_model(tmp_path: Path) -> None:
    """No /boot/<model>/ (or a file there): NoBootFolder, nothing left at the destination;
    the exports service still exports such an image's root."""
    image = tmp_path / "image"
    (image / "boot" / "other-model").mkdir(parents=True)
    dest = tmp_path / "out" / MODEL
    with pytest.raises(boot.NoBootFolder, match=f"no /boot/{MODEL}/"):
        copy_boot_files(image, MODEL, dest)
    (image / "boot" / MODEL).write_text("a file, not a folder")
    with pytest.raises(boot.NoBootFolder, match="is not a folder"):
        copy_boot_files(image, MODEL, dest)
    assert not dest.exists()
