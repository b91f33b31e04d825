"""NFS exports of images to nodes: the configuration text (pure), then a real ganesha and
rpcbind in a lab's server namespace, read with libnfs's tools from node namespaces, over
image mounts of a real podman storage (root, podman, buildah, ganesha, rpcbind, nfs-cat)."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from lab import Lab, Node
from lab.images import build_image, image_id, image_mounts
from lab.nfs import ganesha
from tests.support.labs import running_lab
from waltd.process import Children
from waltd.provision.mounts import MountBusy
from waltd.provision.nfs import (
    KernelExporter,
    NfsError,
    NfsExport,
    NfsExports,
    check_exports,
    export_id_of,
    fsid_of,
    ganesha_conf,
    ganesha_exports,
    kernel_exports,
)

ID_A, ID_B = "0123456789abcdef" * 4, "fedcba9876543210" * 4
R = Path("/var/lib/walt")
MAC_A, MAC_B = "52:54:00:00:00:01", "52:54:00:00:00:02"


def _export(mac: str, image: str, ip: str) -> NfsExport:
    return NfsExport(R / "nodes" / mac / "fs", R / "images" / image / "fs", ip, fsid_of(image))


def test_fsid_is_stable_and_distinct_per_image() -> None:
    assert fsid_of(ID_A) == fsid_of(ID_A) == 0x0123456789ABCDEF0123456789ABCDEF
    assert fsid_of(ID_A) != fsid_of(ID_B)
    assert fsid_of("0" * 31 + "1" + "f" * 32) != fsid_of("0" * 31 + "2" + "f" * 32)
    with pytest.raises(ValueError, match="64 hex"):
        fsid_of("abc")


def test_export_id_comes_from_the_node_address() -> None:
    assert export_id_of("10.1.2.51") == 2 * 256 + 51
    with pytest.raises(ValueError, match="IPv4"):
        export_id_of("fd00::1")


def test_ganesha_conf_includes_the_exports_file() -> None:
    conf = ganesha_conf(R / "recovery", R / "exports.conf")
    assert f'%include "{R}/exports.conf"\n' in conf
    assert f'RecoveryRoot = "{R}/recovery";' in conf
    assert "Protocols = 3, 4;" in conf and "Mount_Path_Pseudo = true;" in conf
    assert conf.count("{") == conf.count("}")


def test_ganesha_exports_one_block_per_node() -> None:
    text = ganesha_exports([_export(MAC_A, ID_A, "10.1.2.51"), _export(MAC_B, ID_A, "10.1.2.52")])
    blocks = re.findall(r"EXPORT \{.*?\n\}\n", text, re.S)
    assert len(blocks) == 2 and "".join(blocks) == text
    first = blocks[0]
    assert "Export_Id = 563;" in first  # 10.1.2.51: 2 * 256 + 51
    assert f'Path = "{R}/images/{ID_A}/fs";' in first
    # quoted: ganesha's parser rejects the ':' of a MAC in a bare path
    assert f'Pseudo = "{R}/nodes/{MAC_A}/fs";' in first
    assert "CLIENT { Clients = 10.1.2.51; Access_Type = RO; }" in first
    assert "Access_Type = NONE;" in first and "Squash = No_Root_Squash;" in first
    assert "Protocols = 3, 4;" in first and "Transports = TCP;" in first
    assert "SecType = sys;" in first and "FSAL { Name = VFS; }" in first
    assert f"Filesystem_id = {0x0123456789ABCDEF}.{0x0123456789ABCDEF};" in first
    assert ganesha_exports([]) == ""


@pytest.mark.parametrize(
    ("exports", "message"),
    [
        ([_export(MAC_A, ID_A, "10.0.0.1"), _export(MAC_A, ID_B, "10.0.0.2")], "two exports"),
        ([_export(MAC_A, ID_A, "10.0.0.1"), _export(MAC_B, ID_A, "10.1.0.1")], "/16 or smaller"),
        ([_export(MAC_A, ID_A, "10.1.0.0")], "pseudo root"),
        ([_export(MAC_A, ID_A, "10.0.0.1; Access_Type = RW")], "does not appear to be"),
        ([NfsExport(Path("nodes/fs"), R, "10.0.0.1", 1)], "absolute"),
        ([NfsExport(R / "a/../b", R, "10.0.0.1", 1)], "absolute"),
        ([NfsExport(R / "n", R, "10.0.0.1", 2**128)], "fsid"),
    ],
)
def test_bad_exports_are_refused(exports: list[NfsExport], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_exports(exports)


def test_ganesha_exports_refuse_what_they_cannot_quote() -> None:
    for pseudo in ('/n"; Path = "/', "/n\n}"):
        with pytest.raises(ValueError, match="cannot be written"):
            ganesha_exports([NfsExport(Path(pseudo), R, "10.0.0.1", 1)])


def test_kernel_exports_give_mountd_and_nfsd_their_paths() -> None:
    text = kernel_exports([_export(MAC_A, ID_A, "10.1.2.51"), _export(MAC_B, ID_A, "10.1.2.52")])
    lines = text.splitlines()
    assert lines[0].startswith("#")
    options = "ro,no_root_squash,no_subtree_check,sec=sys,fsid=0123456789abcdef0123456789abcdef"
    assert lines[1:] == [
        # the real mount point, for the kernel (it resolves the node's symlink), both nodes
        f"{R}/images/{ID_A}/fs 10.1.2.51({options}) 10.1.2.52({options})",
        # the path each node asks for, which mountd authorises by its text
        f"{R}/nodes/{MAC_A}/fs 10.1.2.51({options})",
        f"{R}/nodes/{MAC_B}/fs 10.1.2.52({options})",
    ]
    assert kernel_exports([]).count("\n") == 1
    with pytest.raises(ValueError, match="exports file"):
        kernel_exports([NfsExport(Path("/a b"), R, "10.0.0.1", 1)])


async def test_the_kernel_exporter_needs_exportfs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """This machine runs no kernel nfsd: the exporter's own checks only."""
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr("waltd.provision.nfs.shutil.which", lambda *a, **k: None)
    exporter = KernelExporter(Children(tmp_path / "children.json"), tmp_path / "walt.exports")
    with pytest.raises(NfsError, match=r"exportfs is not installed.*nfs-kernel-server"):
        await exporter.apply([_export(MAC_A, ID_A, "10.1.2.51")])


async def test_exports_wait_for_a_server() -> None:
    handle = NfsExports()
    wanted = [_export(MAC_A, ID_A, "10.1.2.51")]
    await handle.apply(wanted)  # no server yet: kept, applied when it starts
    assert handle.last == tuple(wanted)
    with pytest.raises(ValueError):
        await handle.apply([_export(MAC_A, ID_A, "fd00::1")])


# ---- a real ganesha -----------------------------------------------------------------------

MARKER_1, MARKER_2 = "image one\n", "image two\n"


@pytest.fixture
async def lab() -> AsyncIterator[Lab]:
    tools = ("buildah", "podman", "ganesha.nfsd", "rpcbind", "nfs-cat", "nfs-cp")
    async with running_lab(*tools) as running:
        yield running


async def _node(lab: Lab, number: int) -> tuple[Node, str]:
    node = await lab.add_node()
    ip = str(ipaddress.ip_address(int(lab.server_ip) + 10 + number))
    await lab.run(["ip", "addr", "add", f"{ip}/24", "dev", node.ifname], netns=node.netns)
    return node, ip


async def _cat(lab: Lab, node: Node, url: str) -> tuple[int, str]:
    result = await lab.run(["nfs-cat", url], netns=node.netns, check=False, timeout_s=20)
    return result.returncode, result.stdout


async def test_ganesha_exports_each_node_its_image(lab: Lab, tmp_path: Path) -> None:
    one, two = "docker.io/waltplatform/one:latest", "docker.io/waltplatform/two:latest"
    await build_image(lab, one, ["pc-x86-64"], {"etc/marker": MARKER_1})
    await build_image(lab, two, ["pc-x86-64"], {"etc/marker": MARKER_2})
    id_1, id_2 = await image_id(lab, one), await image_id(lab, two)
    (node_a, ip_a), (node_b, _) = await _node(lab, 1), await _node(lab, 2)
    mounts = image_mounts(lab)
    lab.track_mount(mounts.images / id_1 / "fs")
    lab.track_mount(mounts.images / id_2 / "fs")
    fs_1, fs_2 = await mounts.mount(id_1), await mounts.mount(id_2)
    pseudo = lab.root / "nodes" / node_a.mac / "fs"
    url = f"nfs://{lab.server_ip}{pseudo}/etc/marker"

    async with ganesha(lab) as nfs:
        await nfs.set_exports([NfsExport(pseudo, fs_1, ip_a, fsid_of(id_1))])
        assert await _cat(lab, node_a, url) == (0, MARKER_1)
        assert await _cat(lab, node_a, url + "?version=4") == (0, MARKER_1)
        # another node (another address) is refused, over v3 and v4
        assert (await _cat(lab, node_b, url))[0] != 0
        assert (await _cat(lab, node_b, url + "?version=4"))[0] != 0
        # read-only
        local = tmp_path / "new"
        local.write_text("x")
        target = f"nfs://{lab.server_ip}{pseudo}/etc/new"
        copy = await lab.run(["nfs-cp", str(local), target], netns=node_a.netns, check=False)
        assert copy.returncode != 0 and "ROFS" in copy.stderr + copy.stdout, copy
        # an exported mount is busy
        with pytest.raises(MountBusy):
            await mounts.unmount(id_1)

        # the node boots another image: same node, same export id, another path and fsid
        await nfs.set_exports([NfsExport(pseudo, fs_2, ip_a, fsid_of(id_2))])
        assert await _cat(lab, node_a, url) == (0, MARKER_2)
        assert await _cat(lab, node_a, url + "?version=4") == (0, MARKER_2)

        # a path ganesha cannot export is reported, not taken silently
        with pytest.raises(NfsError, match="refused"):
            await nfs.set_exports([NfsExport(pseudo, lab.root / "absent", ip_a, 7)])

        await nfs.set_exports([])  # removed at once, and the mounts may go
        assert (await _cat(lab, node_a, url))[0] != 0
        await mounts.unmount(id_1)
    await mounts.unmount(id_2)
    assert mounts.mounted() == {}
    for image in (id_1, id_2):
        lab.untrack_mount(mounts.images / image / "fs")
