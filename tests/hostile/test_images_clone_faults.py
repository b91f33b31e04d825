"""A clone that cannot finish leaves nothing half done: the registry dies in the middle of a
layer, the storage's disk fills up, the client is interrupted (Ctrl-C). Each time: a clear
error (or none to give: the client left), no staging image left in storage, and the image the
clone would have replaced exactly as it was.

Real: waltd with its podman storage, a docker-registry server of a lab, a tmpfs of a few MiB
as the storage of the full-disk daemon, the `walt` client interrupted by SIGINT. Fake, and
only this: a proxy in front of the registry (tests/support/registry_proxy.py) that sends half
of one layer and then holds the connection, so that the registry goes away at a known point
of the transfer, which a real one serving from loopback would not let a test catch.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from aiohttp import web

from lab import Lab, Registry, push_image
from tests.support.daemon import ROOT, Daemon, is_event, remove, short_dir, write_config
from tests.support.labs import running_lab
from tests.support.registry_images import manifest
from tests.support.registry_proxy import Fault, Proxy, when
from tests.support.store_images import release_storage
from tests.support.transfer import registry_entry, run
from tests.support.wait import until
from tests.test_images_clone import layered

pytestmark = [pytest.mark.lab, pytest.mark.asyncio(loop_scope="module")]
PC = "pc-x86-64"


@dataclass
class Setup:
    """The lab, its registry, the proxy in front of it, the daemon, the big layer's digest."""

    lab: Lab
    registry: Registry
    proxy: Proxy
    daemon: Daemon
    folder: Path
    layer: str

    def walt(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`walt ARGS` as root."""
        return run([sys.executable, "-m", "waltd.cli.walt", *args], env=self.env)

    @property
    def env(self) -> dict[str, str]:
        """The client's environment."""
        return {**os.environ, "WALT_SOCKET": str(self.daemon.socket), "PYTHONPATH": str(ROOT)}


def podman(folder: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """podman on the storage of the daemon of `folder`."""
    conf = folder / "state" / "containers"
    env = {
        **os.environ,
        "CONTAINERS_STORAGE_CONF": str(conf / "storage.conf"),
        "CONTAINERS_CONF": str(conf / "containers.conf"),
    }
    return run(["podman", *args], env=env)


def image_id(folder: Path, name: str) -> str | None:
    """The id of image `name` of the daemon's storage, None when absent."""
    res = podman(folder, "image", "inspect", "--format", "{{.Id}}", name)
    return res.stdout.strip() if res.returncode == 0 else None


def staging_names(folder: Path) -> list[str]:
    """The staging names left in the daemon's storage."""
    listed = json.loads(podman(folder, "images", "--all", "--format", "json").stdout or "[]")
    return [n for entry in listed for n in entry.get("Names") or () if "waltd-staging" in n]


def half_then_hold(proxy: Proxy, holding: asyncio.Event, cut: asyncio.Event) -> Fault:
    """Send the headers and half of the upstream's body, set `holding`, then wait for `cut`
    and drop the connection."""

    async def apply(request: web.Request) -> web.StreamResponse:
        if request.method != "GET":
            return await proxy.forward(request)
        upstream = await proxy.forward(request)
        body = bytes(upstream.body)  # type: ignore[arg-type]
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        response.content_length = len(body)
        await response.prepare(request)
        await response.write(body[: len(body) // 2])
        holding.set()
        await cut.wait()
        if request.transport is not None:  # None: the client left first
            request.transport.abort()
        raise ConnectionResetError("the registry went away")

    return apply


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def setup() -> AsyncIterator[Setup]:
    async with running_lab("docker-registry", "skopeo", "buildah", "podman") as lab:
        registry = await lab.start_registry("src")
        await layered(lab, "docker.io/alice/small:latest", None, 64, PC)
        await layered(lab, "docker.io/alice/big:latest", None, 8 * 1024, PC)
        for image in ("small", "big"):
            await push_image(lab, f"docker.io/alice/{image}:latest", registry)
        body, _, _ = await manifest(registry, "alice/big", "latest")
        layer = json.loads(body)["layers"][0]["digest"]
        async with Proxy(registry.url) as proxy:
            folder = short_dir()
            entries = [registry_entry(registry, "src"), {**registry_entry(registry, "flaky")}]
            entries[1]["port"] = proxy.port
            config = write_config(folder, registries=entries, images={"docker-socket": "/none"})
            daemon = Daemon(folder, config).start()
            try:
                yield Setup(lab, registry, proxy, daemon, folder, layer)
            finally:
                daemon.kill()
                release_storage(folder / "images")
                remove(folder)


async def _previous(setup: Setup, name: str) -> str:
    """Clone the small image as `name`; its id (what a failed clone must leave)."""
    res = await asyncio.to_thread(setup.walt, "image", "clone", "--force", "src:alice/small", name)
    assert res.returncode == 0, res.stderr
    found = image_id(setup.folder, f"docker.io/root/{name}:latest")
    assert found is not None
    return found


@pytest.mark.parametrize("replacing", [True, False], ids=["replacing", "new-name"])
async def test_ctrl_c_of_the_client_ends_the_clone(setup: Setup, replacing: bool) -> None:
    # replacing: copied under a staging name; a new name: copied straight under it
    name = "target" if replacing else "fresh"
    before = await _previous(setup, name) if replacing else None
    holding, cut = asyncio.Event(), asyncio.Event()
    setup.proxy.fault = when(
        f"/v2/alice/big/blobs/{setup.layer}", half_then_hold(setup.proxy, holding, cut)
    )
    argv = [sys.executable, "-m", "waltd.cli.walt", "image", "clone", "--json", "--force"]
    client = await asyncio.create_subprocess_exec(
        *argv, "flaky:alice/big", name, env=setup.env, stdout=subprocess.DEVNULL
    )
    try:
        await asyncio.wait_for(holding.wait(), 60)
        client.send_signal(signal.SIGINT)
        assert await asyncio.wait_for(client.wait(), 30) == 130
        # the daemon notices the connection closed, kills skopeo and discards what it copied
        cancelled = is_event("image_clone_cancelled", url="flaky:alice/big", image=f"root/{name}")
        await until(
            lambda: any(cancelled(r) for r in setup.daemon.records()),
            what="the clone's cancellation",
            timeout_s=30,
        )
        assert staging_names(setup.folder) == [] and _skopeo_children(setup) == []
    finally:
        cut.set()
        setup.proxy.reset()
        if client.returncode is None:
            client.kill()
            await client.wait()
    assert image_id(setup.folder, f"docker.io/root/{name}:latest") == before


def _skopeo_children(setup: Setup) -> list[Any]:
    """The skopeo processes the daemon has recorded as its children."""
    path = setup.folder / "run" / "children.json"
    try:
        records = json.loads(path.read_text())
    except (OSError, ValueError):
        return []
    return [r for r in records if r.get("argv0") == "skopeo"]


@contextlib.asynccontextmanager
async def tmpfs(lab: Lab, path: Path, size: str) -> AsyncIterator[Path]:
    """A tmpfs of `size` mounted at `path` (recorded by the lab, unmounted at the end)."""
    await asyncio.to_thread(path.mkdir, parents=True)
    lab.track_mount(path)
    await lab.run(["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)])
    try:
        yield path
    finally:
        # podman's own mount of the storage's overlay folder, then the tmpfs
        await asyncio.to_thread(release_storage, path)
        lab.untrack_mount(path)


async def test_a_full_disk_during_a_clone(setup: Setup) -> None:
    folder = short_dir()
    try:
        async with tmpfs(setup.lab, folder / "images", "6m"):
            config = write_config(
                folder,
                registries=[registry_entry(setup.lab.registries["src"], "src")],
                images={"docker-socket": "/none"},
            )
            daemon = Daemon(folder, config).start()
            try:
                env = {**setup.env, "WALT_SOCKET": str(daemon.socket)}
                walt = [sys.executable, "-m", "waltd.cli.walt", "image", "clone"]
                small = await asyncio.to_thread(run, [*walt, "src:alice/small", "victim"], env=env)
                assert small.returncode == 0, small.stderr
                before = image_id(folder, "docker.io/root/victim:latest")
                # 8 MiB of random data into 6 MiB
                res = await asyncio.to_thread(
                    run, [*walt, "--force", "src:alice/big", "victim"], env=env
                )
                assert res.returncode == 1
                assert "no space left on device" in res.stderr, res.stderr
                assert image_id(folder, "docker.io/root/victim:latest") == before
                # into a new name (copied straight under it): no image of that name either
                res = await asyncio.to_thread(run, [*walt, "src:alice/big", "other"], env=env)
                assert res.returncode == 1
                assert "no space left on device" in res.stderr, res.stderr
                assert image_id(folder, "docker.io/root/other:latest") is None
                assert staging_names(folder) == []
            finally:
                daemon.stop()
    finally:
        remove(folder)


async def test_registry_dying_in_the_middle_of_a_layer(setup: Setup) -> None:
    before = await _previous(setup, "victim")
    holding, cut = asyncio.Event(), asyncio.Event()
    setup.proxy.fault = when(
        f"/v2/alice/big/blobs/{setup.layer}", half_then_hold(setup.proxy, holding, cut)
    )
    try:
        clone = asyncio.create_task(
            asyncio.to_thread(setup.walt, "image", "clone", "--force", "flaky:alice/big", "victim")
        )
        await asyncio.wait_for(holding.wait(), 60)
        # half of the layer is in: the registry goes away, its port with it
        await setup.lab.stop(setup.registry.process)
        cut.set()
        res = await asyncio.wait_for(clone, 120)
    finally:
        setup.proxy.reset()
    assert res.returncode == 1
    assert res.stderr.startswith("walt: skopeo failed"), res.stderr
    assert "blob" in res.stderr or "connection" in res.stderr, res.stderr
    assert image_id(setup.folder, "docker.io/root/victim:latest") == before
    assert staging_names(setup.folder) == []
