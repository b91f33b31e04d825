"""Exports end to end: nodes that become ready get their image mounted once, their boot files
and their own NFS export; `walt node boot` moves a node; an image left unused is unmounted
after its grace time; a restart keeps serving without a second mount.

Real components: waltd with its dnsmasq, ganesha and rpcbind in a lab's server namespace,
a docker-registry standing in for the hub, images built with buildah, simulated nodes that
lease with busybox udhcpc and read their root over NFS with nfs-cat (v3 and v4) and their boot
files over HTTP, from their own namespaces. The rebuild's forgetting of removed nodes is
tested in the test's own loop.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path

import pytest

from lab.images import build_image, push_image
from lab.lab import Lab, LabProcess, Node
from tests.support.context import make_context
from tests.support.daemon import is_event, walt
from tests.support.lab_daemon import hub_config, records, start_waltd, wait_record
from tests.support.labs import running_lab
from tests.support.store_images import release_storage
from waltd.config import default_config
from waltd.provision import layout
from waltd.provision.exports import ExportsService
from waltd.provision.mounts import parse_mounts

pytestmark = pytest.mark.lab

PC = "pc-x86-64"
DEFAULT = f"docker.io/waltplatform/{PC}-default:latest"
OTHER = "docker.io/root/other:latest"


def _tree(folder: Path, marker: str) -> Path:
    """An image's files: its boot folder (with a link to the server's files that must not be
    served) and a marker file of its root."""
    boot = folder / "boot" / PC
    boot.mkdir(parents=True)
    (boot / "start.ipxe").write_text(f"#!ipxe\necho {marker}\n")
    (boot / "vmlinuz").write_text(f"kernel of {marker}")
    os.symlink("/etc/shadow", boot / "shadow")
    (folder / "etc").mkdir()
    (folder / "etc" / "marker").write_text(f"{marker}\n")
    return folder


@pytest.fixture
async def lab() -> AsyncIterator[Lab]:
    tools = ("dnsmasq", "docker-registry", "skopeo", "buildah", "podman", "ganesha.nfsd")
    async with running_lab(*tools, "rpcbind", "nfs-cat") as lab:
        yield lab


async def _nfs_cat(lab: Lab, node: Node, path: str, version: int = 3) -> tuple[int, str]:
    url = f"nfs://{lab.server_ip}{path}" + ("?version=4" if version == 4 else "")
    result = await lab.run(["nfs-cat", url], netns=node.netns, check=False, timeout_s=30)
    return result.returncode, result.stdout


async def _http(lab: Lab, node: Node, path: str) -> str:
    url = f"http://{lab.server_ip}{path}"
    result = await lab.run(["busybox", "wget", "-q", "-O", "-", url], netns=node.netns)
    return result.stdout


def _image_mounts(root: Path) -> dict[str, Path]:
    return parse_mounts(Path("/proc/self/mounts").read_text(), Path(os.path.realpath(root)))


def _stacked(root: Path, image_id: str) -> int:
    """How many mounts sit on the image's mount point (one, never more)."""
    point = str(Path(os.path.realpath(root)) / "images" / image_id / "fs")
    return sum(1 for line in Path("/proc/self/mounts").read_text().splitlines()
               if line.split()[1] == point)  # fmt: skip


async def _exported(waltd: LabProcess, mac: str, after: int = 0) -> dict[str, object]:
    return await wait_record(waltd, is_event("node.exported", mac=mac), after=after, timeout_s=90)


async def test_nodes_are_exported_switched_and_released(lab: Lab) -> None:
    hub = await lab.start_registry("hub")
    await build_image(lab, DEFAULT, [PC], _tree(lab.root / "tree-default", "default image"))
    await push_image(lab, DEFAULT, hub)
    await build_image(lab, OTHER, [PC], _tree(lab.root / "tree-other", "other image"))
    await push_image(lab, OTHER, hub, "root/other:latest")
    config = hub_config(lab, hub.url, exports={"unmount-grace-s": 1})
    folder = config.parent
    root = folder / "exports"
    waltd = await start_waltd(lab, config)
    try:
        await wait_record(waltd, is_event("dnsmasq_started"))
        a, b = await lab.add_node(), await lab.add_node()
        await asyncio.gather(*(lab.node_dhcp(n, vendor_class=f"walt.node.{PC}") for n in (a, b)))
        first_a = await _exported(waltd, a.mac)
        await _exported(waltd, b.mac)
        mounts = _image_mounts(root)
        assert len(mounts) == 1  # one mount for both nodes
        (default_id,) = mounts
        assert first_a["image_id"] == default_id[:12]
        for node in (a, b):
            fs = root / "nodes" / node.mac / "fs"
            assert os.readlink(fs) == f"../../images/{default_id}/fs"
        # each node reads its own root, over v3 and v4, and only its own
        for version in (3, 4):
            status, text = await _nfs_cat(lab, a, f"{root}/nodes/{a.mac}/fs/etc/marker", version)
            assert (status, text) == (0, "default image\n")
        status, _ = await _nfs_cat(lab, a, f"{root}/nodes/{b.mac}/fs/etc/marker")
        assert status != 0
        # boot files over HTTP, the server's own files never
        assert await _http(lab, a, "/boot/vmlinuz") == "kernel of default image"
        copied = root / "boot" / default_id / PC
        assert sorted(p.name for p in copied.iterdir()) == ["start.ipxe", "vmlinuz"]

        # a's image switched: it is exported the new image, b keeps the default one
        sock = folder / "api.sock"
        cloned = await asyncio.to_thread(walt, sock, "image", "clone", "hub:root/other")
        assert cloned.returncode == 0, cloned.stdout + cloned.stderr
        name_a = next(r["name"] for r in records(waltd) if is_event("node.detected", mac=a.mac)(r))
        name_b = next(r["name"] for r in records(waltd) if is_event("node.detected", mac=b.mac)(r))
        # refusals change nothing and say why
        refused = await asyncio.to_thread(walt, sock, "node", "boot", "nosuch", "other")
        assert refused.returncode != 0 and "no node named 'nosuch'" in refused.stderr
        refused = await asyncio.to_thread(walt, sock, "node", "boot", name_a, "absent")
        assert refused.returncode != 0 and "no image root/absent" in refused.stderr
        switched = await asyncio.to_thread(walt, sock, "node", "boot", name_a, "other")
        assert switched.returncode == 0, switched.stdout + switched.stderr
        assert f"{name_a} will boot root/other" in switched.stdout
        moved = await _exported(waltd, a.mac, after=1)
        assert moved["image"] == "root/other"
        status, text = await _nfs_cat(lab, a, f"{root}/nodes/{a.mac}/fs/etc/marker")
        assert (status, text) == (0, "other image\n")
        status, text = await _nfs_cat(lab, b, f"{root}/nodes/{b.mac}/fs/etc/marker")
        assert (status, text) == (0, "default image\n")
        # b leaves the default image too: unexported, then unmounted after the grace time
        switched = await asyncio.to_thread(walt, sock, "node", "boot", name_b, "other")
        assert switched.returncode == 0, switched.stdout + switched.stderr
        await wait_record(waltd, is_event("image_unmounted", image=default_id[:12]))
        assert default_id not in _image_mounts(root)
        (other_id,) = _image_mounts(root)
    finally:
        await lab.stop(waltd, grace_s=10)
    # a restart: the mount a run left is kept, not doubled, and served again
    waltd = await start_waltd(lab, config, name="waltd-again")
    try:
        await _exported(waltd, a.mac)
        assert _stacked(root, other_id) == 1
        # its aliases, read once at the start and kept since: its own, none stale
        aliases = (
            root / "nodes" / "by-ip" / str(first_a["ip"]),
            root / "nodes" / "by-name" / name_a,
        )
        assert layout.alias_index(root)[a.mac] == aliases
        status, text = await _nfs_cat(lab, a, f"{root}/nodes/{a.mac}/fs/etc/marker", 4)
        assert (status, text) == (0, "other image\n")
        # a crash (SIGKILL): the next run finds the mount, keeps it, never mounts it twice
        waltd.process.kill()
        await waltd.process.wait()
        waltd = await start_waltd(lab, config, name="waltd-after-crash")
        await _exported(waltd, a.mac)
        assert _stacked(root, other_id) == 1
        status, text = await _nfs_cat(lab, a, f"{root}/nodes/{a.mac}/fs/etc/marker")
        assert (status, text) == (0, "other image\n")
    finally:
        await lab.stop(waltd, grace_s=10)
        for point in _image_mounts(root).values():
            await lab.run(["umount", str(point)])
        release_storage(folder / "images")


async def test_a_rebuild_forgets_a_node_the_database_forgot(tmp_path: Path) -> None:
    """A node removed while its NodeRemoved event was lost (the channel then says Resync), or
    while the daemon was down: the rebuild takes it out of the layout. In the test's loop, a
    waiting node (no image: no mount, no NFS server)."""
    exports = replace(default_config().exports, root=tmp_path / "exports")
    ctx = make_context(tmp_path / "state", replace(default_config(), exports=exports))
    mac, other = "52:54:00:00:00:0a", "52:54:00:00:00:0b"
    async with ctx.db as db:
        for node in (mac, other):
            await db.upsert_node(
                node, ip="10.0.0.5" if node == mac else "10.0.0.6", model=PC, state="waiting"
            )
        service = ExportsService(ctx)
        await service.rebuild()
        folder = tmp_path / "exports" / "nodes"
        assert (folder / mac).is_dir() and (folder / "by-ip" / "10.0.0.5").is_symlink()
        await db.remove_node(mac)
        await service.rebuild()  # a Resync
        assert not (folder / mac).exists() and not (folder / "by-ip" / "10.0.0.5").exists()
        assert (folder / other).is_dir()
        await db.remove_node(other)
        await ExportsService(ctx).rebuild()  # a new daemon: only the layout remembers it
        assert not (folder / other).exists()
