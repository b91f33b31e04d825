"""Real registries of the lab: push, pull and catalog, anonymous and with htpasswd."""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest
import pytest_asyncio

from lab import Lab, LabError, Registry, build_image, image_id, pull_image, push_image

pytestmark = [pytest.mark.lab, pytest.mark.asyncio(loop_scope="module")]

IMAGE = "docker.io/waltplatform/pc-x86-64-default:latest"
USER, PASSWORD = "walt-user", "a s3cret, with spaces"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def image(lab: Lab, require_tool: Callable[[str], str]) -> str:
    """A WalT image holding a static busybox, so that it can also run."""
    for tool in ("buildah", "podman", "skopeo", "docker-registry", "htpasswd"):
        require_tool(tool)
    busybox = shutil.which("busybox")
    assert busybox is not None
    files = {"bin/busybox": Path(busybox), "etc/marker": "walt\n"}
    return await build_image(lab, IMAGE, ["pc-x86-64", "pc-x86-32"], files)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def hub(lab: Lab, image: str) -> Registry:
    """An anonymous registry (the hub's stand-in) holding the image."""
    registry = await lab.start_registry("hub")
    await push_image(lab, IMAGE, registry)
    return registry


async def _get(url: str, credentials: tuple[str, str] | None = None) -> tuple[int, object]:
    headers = {"Authorization": aiohttp.encode_basic_auth(*credentials)} if credentials else {}
    async with aiohttp.ClientSession() as session, session.get(url, headers=headers) as response:
        body = await response.json() if response.status == 200 else None
        return response.status, body


async def _labels(lab: Lab, image: str) -> str:
    inspect = ["podman", "image", "inspect", "--format", "{{json .Labels}}", image]
    return (await lab.run(inspect, env=lab.containers_env)).stdout


async def test_anonymous_push_pull_and_catalog(lab: Lab, image: str, hub: Registry) -> None:
    assert await _get(f"{hub.url}/v2/_catalog") == (
        200,
        {"repositories": ["waltplatform/pc-x86-64-default"]},
    )
    status, tags = await _get(f"{hub.url}/v2/waltplatform/pc-x86-64-default/tags/list")
    assert (status, tags) == (200, {"name": "waltplatform/pc-x86-64-default", "tags": ["latest"]})

    copy = "docker.io/tester/copy:latest"
    pulled = await pull_image(lab, hub, "waltplatform/pc-x86-64-default:latest", copy)
    assert pulled == image  # same config blob: same image
    assert '"walt.node.models":"pc-x86-64,pc-x86-32"' in await _labels(lab, copy)


async def test_htpasswd_registry_wants_the_right_password(lab: Lab, image: str) -> None:
    local = await lab.start_registry("local", auth=(USER, PASSWORD))
    await push_image(lab, IMAGE, local, f"{USER}/default:latest")

    catalog = f"{local.url}/v2/_catalog"
    assert await _get(catalog, (USER, PASSWORD)) == (
        200,
        {"repositories": [f"{USER}/default"]},
    )
    assert (await _get(catalog))[0] == 401
    assert (await _get(catalog, (USER, "wrong")))[0] == 401
    with pytest.raises(LabError, match="unauthorized"):
        await pull_image(lab, local, f"{USER}/default:latest", credentials=(USER, "wrong"))
    pulled = await pull_image(lab, local, f"{USER}/default:latest", "docker.io/tester/auth:latest")
    assert pulled == image

    htpasswd = (lab.root / "registries/local/htpasswd").read_text()
    assert htpasswd.startswith(f"{USER}:$2y$") and PASSWORD not in htpasswd
    assert not list((lab.root / "containers").glob("auth-*.json"))  # temporary auth files gone


async def test_podman_uses_the_lab_storage_registries_and_runtime(lab: Lab, hub: Registry) -> None:
    env = lab.containers_env
    # plain HTTP accepted because the lab's registries.conf marks the registry insecure
    ref = f"{hub.host}/waltplatform/pc-x86-64-default:latest"
    await lab.run(["podman", "pull", "--quiet", ref], env=env)
    assert await image_id(lab, ref) == await image_id(lab, IMAGE)
    assert (lab.graphroot / "overlay-images").is_dir()

    run = ["podman", "run", "--rm", "--network", "none", IMAGE, "/bin/busybox", "cat"]
    result = await lab.run([*run, "/etc/marker"], env=env)
    assert result.stdout == "walt\n"
    limits = await lab.run([*run, "/proc/self/limits"], env=env)
    assert any(
        line.startswith("Max open files") and line.split()[3:5] == ["20000", "20000"]
        for line in limits.stdout.splitlines()
    )
