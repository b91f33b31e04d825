"""Default images: the source plan (pure), and the real daemon fetching them.

The daemon runs with its own podman storage; its registries are real docker-registry servers
of a lab (one standing in for Docker Hub's registry, one asking for a password); nodes are
leases handed to the daemon's hook as dnsmasq would (`run_hook`), so these tests need no node
network. Every result is read back from the daemon's storage and log.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from lab import Lab, Registry, build_image, push_image
from tests.support.context import make_context
from tests.support.daemon import Daemon, is_event, run_hook, write_config
from tests.support.dockerd import dockerd, load_image
from tests.support.labs import running_lab
from tests.support.registry_images import put_list
from tests.support.store_images import build, release_storage, repository_at, storage_folder
from tests.support.transfer import hub_entry, registry_entry, run
from waltd import config as configuration
from waltd import credentials
from waltd.provision.fetch import DOCKER, AllSourcesFailed, Attempt, Fetcher, plan, retry_policy
from waltd.registries.base import Credentials

SECURE = ("fetch-user", "a server password, never shown")


def _entry(label: str, auth: str = "none") -> configuration.Registry:
    return configuration.Registry(
        label, "docker-registry-v2", "x", host="127.0.0.1", port=5000, protocol="http", auth=auth
    )


def test_plan_keeps_the_configuration_order_then_the_docker_daemon() -> None:
    hub = configuration.Registry("hub", "docker-hub", "hub")
    login = Credentials("u", "secret-password")
    attempts = plan([hub, _entry("a"), _entry("b", "basic")], {"b": login}, True)
    assert [a.label for a in attempts] == ["hub", "a", "b", DOCKER]
    assert attempts[2].creds == login and attempts[0].creds is None
    assert all(a.skip is None for a in attempts)


def test_plan_skips_a_registry_needing_a_login_the_server_lacks() -> None:
    attempts = plan([_entry("b", "basic"), _entry("c")], {}, False)
    assert attempts[0] == Attempt("b", skip=attempts[0].skip)
    assert "server.secrets has none for 'b'" in (attempts[0].skip or "")
    assert attempts[1].skip is None and [a.label for a in attempts] == ["b", "c"]


def test_plan_never_hands_a_login_to_a_registry_that_takes_none() -> None:
    attempts = plan([_entry("a")], {"a": Credentials("u", "secret-password")}, False)
    assert attempts[0].creds is None


def test_retries_double_within_the_configured_bounds() -> None:
    images = configuration.Images(retry_min_s=2.0, retry_max_s=10.0)
    policy = retry_policy(images)
    delays = [policy.delay(n) for n in range(1, 8)]
    assert all(2.0 <= d <= 10.0 for d in delays)
    assert max(delays[4:]) > 4.0  # it grew


# ---- the daemon, with real registries --------------------------------------------------

PC = "pc-x86-64"
RPI = "rpi-3-b"


@dataclass
class Setup:
    lab: Lab
    hub: Registry
    secure: Registry


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def setup() -> AsyncIterator[Setup]:
    async with running_lab("docker-registry", "skopeo", "buildah", "podman", "htpasswd") as lab:
        hub = await lab.start_registry("hub")
        secure = await lab.start_registry("secure", auth=SECURE)
        for model in (PC, RPI):
            name = f"docker.io/waltplatform/{model}-default:latest"
            await build_image(lab, name, [model], {"etc/model": model})
        await push_image(lab, f"docker.io/waltplatform/{PC}-default:latest", hub)
        # the Raspberry Pi image is only in the registry asking for a password
        await push_image(lab, f"docker.io/waltplatform/{RPI}-default:latest", secure)
        yield Setup(lab, hub, secure)


def _config(folder: Path, setup: Setup, **images: Any) -> Path:
    entries = [
        hub_entry(setup.hub.url),
        registry_entry(setup.secure, "secure", "basic"),
    ]
    path = write_config(
        folder,
        registries=entries,
        images={"docker-socket": str(folder / "no-docker.sock"), **images},
    )
    credentials.save(credentials.secrets_path(path), {"secure": Credentials(*SECURE)})
    return path


@pytest.fixture
def folder() -> Iterator[Path]:
    with storage_folder() as path:
        yield path


def _lease(d: Daemon, mac: str, ip: str, model: str) -> None:
    run_hook(d.folder, "add", mac, ip, DNSMASQ_VENDOR_CLASS=f"walt.node.{model}")


def _podman(folder: Path, *args: str) -> Any:
    """podman's JSON answer on the daemon's storage."""
    conf = folder / "state" / "containers"
    env = {
        **os.environ,
        "CONTAINERS_STORAGE_CONF": str(conf / "storage.conf"),
        "CONTAINERS_CONF": str(conf / "containers.conf"),
        "CONTAINERS_REGISTRIES_CONF": str(conf / "registries.conf"),
    }
    return json.loads(run(["podman", *args], env=env).stdout)


def _stored(folder: Path) -> list[str]:
    """Every image name of the daemon's storage (staging names included)."""
    listed = _podman(folder, "images", "--all", "--format", "json")
    return sorted(name for entry in listed for name in entry.get("Names") or ())


def _inspect(folder: Path, image: str) -> dict[str, Any]:
    """podman's inspection of an image of the daemon's storage."""
    found: list[dict[str, Any]] = _podman(folder, "image", "inspect", image)
    return found[0]


def _events(d: Daemon, name: str, **keys: object) -> list[dict[str, Any]]:
    match = is_event(name, **keys)
    return [r for r in d.records() if match(r)]


@pytest.mark.lab
@pytest.mark.asyncio(loop_scope="module")
async def test_nodes_wait_for_one_download_then_become_ready(setup: Setup, folder: Path) -> None:
    d = Daemon(folder, _config(folder, setup)).start()
    try:
        macs = [f"52:54:00:aa:00:0{i}" for i in range(4)]
        for i, mac in enumerate(macs[:3]):
            await asyncio.to_thread(_lease, d, mac, f"10.9.0.{10 + i}", PC)
        await asyncio.to_thread(_lease, d, macs[3], "10.9.0.20", RPI)
        for mac in macs:
            await asyncio.to_thread(d.wait_for, is_event("node.ready", mac=mac), 60)
        # one download per model, each from the first source that has it
        pc_done = _events(d, "image.fetch.done", model=PC)
        assert [r["source"] for r in pc_done] == ["hub"]
        assert len(_events(d, "model.new", model=PC)) == 1
        rpi = [r["source"] for r in _events(d, "image.fetch.started", model=RPI)]
        assert rpi == ["hub", "secure"]
        (failed_hub,) = _events(d, "image.fetch.source_failed", model=RPI)
        assert failed_hub["source"] == "hub" and "no image" in failed_hub["error"]
        ready = _events(d, "node.ready", mac=macs[0])[0]
        assert ready["image"] == f"waltplatform/{PC}-default"
        names = await asyncio.to_thread(_stored, folder)
        assert names == sorted(f"docker.io/waltplatform/{m}-default:latest" for m in (PC, RPI)), (
            names
        )
        # the password went nowhere near the log
        assert SECURE[1] not in d.log_path.read_text()
    finally:
        d.stop()


@pytest.mark.lab
@pytest.mark.asyncio(loop_scope="module")
async def test_every_source_failing_then_a_reload_brings_the_image(
    setup: Setup, folder: Path
) -> None:
    model = "pc-x86-32"  # in no registry yet
    config = _config(folder, setup, **{"retry-min-s": 600, "retry-max-s": 900})
    d = Daemon(folder, config).start()
    try:
        mac = "52:54:00:bb:00:01"
        await asyncio.to_thread(_lease, d, mac, "10.9.1.10", model)
        failed = await asyncio.to_thread(d.wait_for, is_event("image.fetch.failed", model=model))
        assert failed["level"] == "error"
        assert [e["source"] for e in failed["errors"]] == ["hub", "secure"]
        assert 300 <= failed["retry_in_s"] <= 900
        assert _events(d, "node.ready", mac=mac) == []
        name = f"docker.io/waltplatform/{model}-default:latest"
        await build_image(setup.lab, name, [model], {"etc/model": model})
        await push_image(setup.lab, name, setup.secure)
        d.signal(signal.SIGHUP)  # retried at once, not in ten minutes
        done = await asyncio.to_thread(d.wait_for, is_event("node.ready", mac=mac), 60)
        assert done["image"] == f"waltplatform/{model}-default"
    finally:
        d.stop()


@pytest.mark.lab
@pytest.mark.asyncio(loop_scope="module")
async def test_a_restart_fetches_nothing_again(setup: Setup, folder: Path) -> None:
    config = _config(folder, setup)
    d = Daemon(folder, config).start()
    mac = "52:54:00:cc:00:01"
    try:
        await asyncio.to_thread(_lease, d, mac, "10.9.2.10", PC)
        await asyncio.to_thread(d.wait_for, is_event("node.ready", mac=mac), 60)
    finally:
        d.stop()
    d = Daemon(folder, config).start()
    try:
        await asyncio.to_thread(_lease, d, mac, "10.9.2.10", PC)
        other = "52:54:00:cc:00:02"
        await asyncio.to_thread(_lease, d, other, "10.9.2.11", PC)
        await asyncio.to_thread(d.wait_for, is_event("node.ready", mac=other), 60)
        second_run = d.records()
        started = [r for r in second_run if r.get("event") == "image.fetch.started"]
        assert started == []
    finally:
        d.stop()


@pytest.mark.lab
@pytest.mark.asyncio(loop_scope="module")
async def test_a_multi_platform_default_image_gives_the_models_platform(
    setup: Setup, folder: Path
) -> None:
    """A Raspberry Pi 4 default image offered for amd64 and arm64: the node gets arm64
    (skopeo alone would take the server's amd64)."""
    model = "rpi-4-b"
    repo = f"waltplatform/{model}-default"
    for arch in ("amd64", "arm64"):
        name = f"docker.io/{repo}:{arch}"
        await build_image(setup.lab, name, [model], {"etc/arch": arch}, arch=arch)
        await push_image(setup.lab, name, setup.hub)
    children = [(a, {"os": "linux", "architecture": a}) for a in ("amd64", "arm64")]
    await put_list(setup.hub, repo, "latest", children)
    d = Daemon(folder, _config(folder, setup)).start()
    try:
        mac = "dc:a6:32:00:00:01"
        await asyncio.to_thread(_lease, d, mac, "10.9.3.10", model)
        await asyncio.to_thread(d.wait_for, is_event("node.ready", mac=mac), 60)
        inspected = await asyncio.to_thread(_inspect, folder, f"docker.io/{repo}:latest")
        assert inspected["Architecture"] == "arm64"
    finally:
        d.stop()


@pytest.mark.lab
@pytest.mark.asyncio(loop_scope="module")
async def test_the_docker_daemon_comes_after_every_registry(setup: Setup, folder: Path) -> None:
    model = "pc-x86-docker"
    name = f"docker.io/waltplatform/{model}-default:latest"
    await build_image(setup.lab, name, [model], {"etc/model": model})
    async with dockerd(setup.lab) as docker:
        await load_image(setup.lab, docker, name, f"waltplatform/{model}-default:latest")
        sock = setup.lab.root / "dockerd" / "docker.sock"
        d = Daemon(folder, _config(folder, setup, **{"docker-socket": str(sock)})).start()
        try:
            mac = "52:54:00:dd:00:01"
            await asyncio.to_thread(_lease, d, mac, "10.9.4.10", model)
            await asyncio.to_thread(d.wait_for, is_event("node.ready", mac=mac), 60)
            started = [r["source"] for r in _events(d, "image.fetch.started", model=model)]
            assert started == ["hub", "secure", "docker"]
            (done,) = _events(d, "image.fetch.done", model=model)
            assert done["source"] == "docker"
        finally:
            d.stop()


async def test_a_default_image_of_other_models_fails_the_fetch_and_the_status_says_so(
    tmp_path: Path,
) -> None:
    """An image under the default name that root put there for other models is never
    replaced: the fetch fails as when no source gives it, with the same status and record."""
    repo = repository_at(tmp_path)
    try:
        await build(repo, "docker.io/waltplatform/pc-x86-64-default:latest", models="rpi-4-b")
        ctx = replace(make_context(tmp_path / "state"), repository=repo)
        async with ctx.db as db:
            with ctx.nodes.subscribe("test") as events:
                with pytest.raises(AllSourcesFailed, match="does not list pc-x86-64"):
                    await Fetcher(ctx).fetch("pc-x86-64")
                emitted = [await events.get() for _ in range(events.pending())]
            status = await db.get_model_status("pc-x86-64")
    finally:
        release_storage(repo.storage.graphroot)
    assert [type(e).__name__ for e in emitted] == ["FetchFailed"]
    assert status is not None and status.image_status == "failed"
    assert status.last_error is not None and "does not list pc-x86-64" in status.last_error
    assert status.next_retry is not None and status.next_retry > time.time()
