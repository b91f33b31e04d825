"""The lab's default images (lab/default_images.py): built and pushed to a real registry,
downloads counted from its access log, a registry restarted on its port, a DHCP storm."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from lab import Lab, Registry
from lab.default_images import (
    add_nodes,
    blob_gets,
    build_and_publish,
    count_downloads,
    dhcp_storm,
    vendor_class,
)
from tests.lab.conftest import Dnsmasq

pytestmark = pytest.mark.lab
# the async tests share the module's lab, hence its event loop
in_module_loop = pytest.mark.asyncio(loop_scope="module")

LAYER = "sha256:" + "a" * 64
CONFIG = "sha256:" + "c" * 64


def test_blob_gets_counts_successful_gets_of_blobs_only() -> None:
    repo = "waltplatform/pc-x86-64-default"
    log = "\n".join(
        [
            'time="2024-01-01T00:00:00Z" level=warning msg="something of the registry\'s own"',
            f'127.0.0.1 - - [01/Jan/2024:00:00:00 +0000] "HEAD /v2/{repo}/blobs/{LAYER} '
            'HTTP/1.1" 200 0 "" "skopeo/1.9.3"',
            f'127.0.0.1 - - [01/Jan/2024:00:00:01 +0000] "GET /v2/{repo}/blobs/{LAYER} '
            'HTTP/1.1" 200 41943040 "" "skopeo/1.9.3"',
            f'127.0.0.1 - - [01/Jan/2024:00:00:02 +0000] "GET /v2/{repo}/blobs/{LAYER} '
            'HTTP/1.1" 404 157 "" "skopeo/1.9.3"',
            f'127.0.0.1 - - [01/Jan/2024:00:00:03 +0000] "GET /v2/{repo}/blobs/{CONFIG} '
            'HTTP/1.1" 200 512 "" "waltd"',
            f'127.0.0.1 - - [01/Jan/2024:00:00:04 +0000] "GET /v2/{repo}/manifests/latest '
            'HTTP/1.1" 200 529 "" "skopeo/1.9.3"',
            f'127.0.0.1 - - [01/Jan/2024:00:00:05 +0000] "GET /v2/{repo}/blobs/{LAYER} '
            'HTTP/1.1" 200 41943040 "" "skopeo/1.9.3"',
        ]
    )
    assert blob_gets(log) == {(repo, LAYER): 2, (repo, CONFIG): 1}


async def _download(lab: Lab, registry: Registry, model: str, into: Path) -> None:
    """A full download of `model`'s default image (skopeo's dir: transport keeps nothing
    from an earlier copy, so every blob is fetched)."""
    source = f"docker://{registry.host}/waltplatform/{model}-default:latest"
    argv = ["skopeo", "copy", "--quiet", "--src-tls-verify=false", source, f"dir:{into}"]
    await lab.run(argv, env=lab.containers_env)


@in_module_loop
async def test_downloads_are_counted_per_image_and_survive_a_restart(
    lab: Lab, require_tool: Callable[[str], str]
) -> None:
    for tool in ("buildah", "podman", "skopeo", "docker-registry"):
        require_tool(tool)
    registry = await lab.start_registry("counted", access_log=True)
    images = await build_and_publish(lab, ["pc-x86-64", "rpi-4-b"], registry, payload_mb=1)
    names = [image.reference for image in images]
    assert names == ["waltplatform/pc-x86-64-default:latest", "waltplatform/rpi-4-b-default:latest"]
    labels = ["podman", "image", "inspect", "--format", "{{json .Labels}}", images[1].local]
    inspected = await lab.run(labels, env=lab.containers_env)
    assert '"walt.node.models":"rpi-4-b"' in inspected.stdout
    # pushing is no download
    assert count_downloads(lab, registry) == dict.fromkeys(names, 0)

    await _download(lab, registry, "pc-x86-64", lab.root / "pull-1")
    # resolving reads the manifest and config, not the layer
    inspect = ["skopeo", "inspect", "--tls-verify=false"]
    await lab.run([*inspect, f"docker://{registry.host}/{names[1]}"], env=lab.containers_env)
    assert count_downloads(lab, registry) == {names[0]: 1, names[1]: 0}

    await lab.stop(registry.process)
    registry = await lab.restart_registry(registry)
    assert lab.registries["counted"] is registry
    await _download(lab, registry, "pc-x86-64", lab.root / "pull-2")
    await _download(lab, registry, "rpi-4-b", lab.root / "pull-3")
    assert count_downloads(lab, registry) == {names[0]: 2, names[1]: 1}
    assert (lab.root / "pull-3").stat().st_size  # the copy is there
    payloads = [p.stat().st_size for p in (lab.root / "pull-3").iterdir()]
    assert max(payloads) > 2**20  # the random payload did not compress


@in_module_loop
async def test_dhcp_storm_leases_every_node_with_its_model(lab: Lab, dnsmasq: Dnsmasq) -> None:
    models = ["pc-x86-64", "rpi-3-b-plus"]
    nodes = await add_nodes(lab, 6, models)
    assert [n.model for n in nodes] == models * 3
    ips = await dhcp_storm(lab, nodes)
    assert len(set(ips)) == 6 and all(ip in lab.subnet for ip in ips)
    for storm_node in nodes:
        event = await dnsmasq.wait_event("add", storm_node.node.mac)
        assert event["env"]["DNSMASQ_VENDOR_CLASS"] == vendor_class(storm_node.model)
