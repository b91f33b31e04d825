"""The export spike: an image of podman's storage, mounted exportable, served by ganesha."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from lab import Lab, NfsExport, build_image, exportable_mount, fsid_of, ganesha
from lab.record import mount_points

if TYPE_CHECKING:
    from conftest import Dnsmasq

pytestmark = [pytest.mark.lab, pytest.mark.asyncio(loop_scope="module")]

IMAGE = "docker.io/waltplatform/pc-x86-64-default:latest"
MARKER = "exported by the lab's ganesha\n"


async def _nfs_cat(lab: Lab, netns: str, url: str) -> tuple[int, str]:
    result = await lab.run(["nfs-cat", url], netns=netns, check=False, timeout_s=20)
    return result.returncode, result.stdout


async def test_ganesha_serves_the_image_to_its_node_only(
    lab: Lab, dnsmasq: Dnsmasq, require_tool: Callable[[str], str]
) -> None:
    for tool in ("buildah", "podman", "ganesha.nfsd", "rpcbind", "nfs-cat"):
        require_tool(tool)
    image = await build_image(lab, IMAGE, ["pc-x86-64"], {"etc/marker": MARKER})
    node_a, node_b = await lab.add_node(), await lab.add_node()
    ip_a = await lab.node_dhcp(node_a, vendor_class="walt.node.pc-x86-64")
    await lab.node_dhcp(node_b, vendor_class="walt.node.pc-x86-64")
    pseudo = f"{lab.root}/nodes/{node_a.mac}/fs"
    url = f"nfs://{lab.server_ip}{pseudo}/etc/marker"

    async with exportable_mount(lab, IMAGE) as fs:
        assert fs == fs.resolve() and (fs / "etc/marker").read_text() == MARKER
        async with ganesha(lab) as nfs:
            await nfs.set_exports([NfsExport(Path(pseudo), fs, str(ip_a), fsid_of(image))])

            assert await _nfs_cat(lab, node_a.netns, url) == (0, MARKER)
            assert await _nfs_cat(lab, node_a.netns, url + "?version=4") == (0, MARKER)
            code_v3, _ = await _nfs_cat(lab, node_b.netns, url)
            code_v4, _ = await _nfs_cat(lab, node_b.netns, url + "?version=4")
            assert code_v3 != 0 and code_v4 != 0

            await nfs.set_exports([])  # removed at once, and the mount may go
            code, _ = await _nfs_cat(lab, node_a.netns, url)
            assert code != 0
        assert str(fs) in mount_points(lab.root)
    assert mount_points(lab.root) == []
