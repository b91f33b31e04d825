"""`walt image clone` end to end: the `walt` client run by a real non-root user (useradd),
waltd with its own podman storage, real docker-registry servers of a lab (anonymous, htpasswd,
and one standing in for Docker Hub's registry), a real dockerd for `docker:` URLs.

Nothing is fake: images are built with buildah in the lab's storage, pushed with skopeo, and
every result is read back from the daemon's storage with podman.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml

from lab import Lab, Registry, build_image, push_image
from tests.conftest import require_tool
from tests.support.daemon import ROOT, Daemon, is_event, remove, short_dir, write_config
from tests.support.dockerd import dockerd, load_image
from tests.support.labs import running_lab
from tests.support.store_images import build as build_stored
from tests.support.store_images import release_storage, repository_at
from tests.support.transfer import hub_entry, post_as, registry_entry, run
from tests.support.users import unix_user
from waltd.api.wire import CloneRequest, CopyProgress, Login, PublishRequest
from waltd.cli.images_transfer import ProgressView
from waltd.db import Database
from waltd.images.copy import Progress, ProgressParser, checked_copy, pinned
from waltd.images.store import LocalRef
from waltd.registries.base import ImageInfo

pytestmark = [pytest.mark.lab, pytest.mark.asyncio(loop_scope="module")]

SECURE_USER, SECURE_PASSWORD = "reg-user", "htpasswd pass: never on a command line"
PC = "pc-x86-64"
NODE_MAC = "52:54:00:12:34:56"


@dataclass
class Setup:
    """The module's lab, daemon, user and registries."""

    lab: Lab
    daemon: Daemon
    folder: Path
    user: str
    registries: dict[str, Registry]

    def walt(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`walt ARGS` as root, its logins in `walt-root.conf` of the folder."""
        env = {
            **os.environ,
            "WALT_SOCKET": str(self.daemon.socket),
            "PYTHONPATH": str(ROOT),
            "WALT_CLIENT_CONFIG": str(self.folder / "walt-root.conf"),
        }
        return run([sys.executable, "-m", "waltd.cli.walt", *args], env=env)

    def clone(self, url: str, name: str | None = None, **extra: Any) -> list[dict[str, Any]]:
        """The test user's clone of `url` as `name`: its records."""
        body = {"url": url, "name": name, **extra}
        return post_as(self.user, self.daemon.socket, "/v1/images/clone", body)

    def stored(self, full: str) -> dict[str, Any] | None:
        """podman's inspection of an image of the daemon's storage, None when absent."""
        res = self.podman("image", "inspect", full)
        return json.loads(res.stdout)[0] if res.returncode == 0 else None

    def podman(self, *args: str) -> subprocess.CompletedProcess[str]:
        """podman on the daemon's storage."""
        folder = self.folder / "state" / "containers"
        env = {
            **os.environ,
            "CONTAINERS_STORAGE_CONF": str(folder / "storage.conf"),
            "CONTAINERS_CONF": str(folder / "containers.conf"),
            "CONTAINERS_REGISTRIES_CONF": str(folder / "registries.conf"),
        }
        return run(["podman", *args], env=env)

    def names(self) -> list[str]:
        """Every image name of the daemon's storage."""
        listed = json.loads(self.podman("images", "--all", "--format", "json").stdout or "[]")
        return [name for entry in listed for name in entry.get("Names") or ()]


def records(result: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    """The NDJSON records `walt ... --json` printed."""
    return [json.loads(line) for line in result.stdout.splitlines() if line.strip()]


def write_logins(setup: Setup, user: str, logins: dict[str, tuple[str, str]]) -> None:
    """The user's ~/.walt/config equivalent (mode 0600, theirs)."""
    path = setup.folder / f"walt-{user}.conf"
    data = {"registries": {k: {"username": u, "password": p} for k, (u, p) in logins.items()}}
    path.write_text(yaml.safe_dump(data))
    path.chmod(0o600)
    if user != "root":
        os.chown(path, int(run(["id", "-u", user]).stdout), -1)


@pytest.fixture(scope="module")
def user() -> Iterator[str]:
    with unix_user("waltcl") as name:
        yield name


async def layered(lab: Lab, name: str, base: str | None, size_kib: int, models: str | None) -> None:
    """Commit `name` in the lab's storage: `base` (or scratch) plus one layer of `size_kib`
    KiB of random data, labelled with `models` (None: no label)."""
    env = lab.containers_env
    data = lab.root / f"data-{uuid.uuid4().hex[:6]}"
    data.write_bytes(os.urandom(size_kib * 1024))
    container = (await lab.run(["buildah", "from", base or "scratch"], env=env)).stdout.strip()
    try:
        await lab.run(["buildah", "add", "--quiet", container, str(data), f"/{data.name}"], env=env)
        if models is not None:
            await lab.run(
                ["buildah", "config", "--label", f"walt.node.models={models}", container], env=env
            )
        await lab.run(["buildah", "commit", "--quiet", container, name], env=env)
    finally:
        await lab.run(["buildah", "rm", container], env=env)
        data.unlink()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def setup(user: str) -> AsyncIterator[Setup]:
    async with running_lab("docker-registry", "skopeo", "buildah", "podman", "htpasswd") as lab:
        local = await lab.start_registry("local")
        secure = await lab.start_registry("secure", auth=(SECURE_USER, SECURE_PASSWORD))
        hub = await lab.start_registry("hub")
        # images: a base of 2 MiB, an image on it (shared layer), a non-WalT one
        await layered(lab, "docker.io/alice/base:latest", None, 2048, PC)
        await layered(lab, "docker.io/alice/pc-img:latest", "docker.io/alice/base:latest", 512, PC)
        await layered(lab, "docker.io/alice/more:latest", "docker.io/alice/base:latest", 256, PC)
        await build_image(lab, "docker.io/alice/plain:latest", None, {"x": "not walt"})
        for image in ("base", "pc-img", "more", "plain"):
            await push_image(lab, f"docker.io/alice/{image}:latest", local)
        await push_image(lab, "docker.io/alice/pc-img:latest", secure)
        await push_image(lab, "docker.io/alice/pc-img:latest", hub, "hubuser/pc-img:v1")
        folder = short_dir()
        folder.chmod(0o755)  # the user reaches the socket inside
        # another user's image in the daemon's storage, for walt: URLs
        repo = repository_at(folder)
        await build_stored(repo, LocalRef("bob", "tools"), models=PC)
        # a Raspberry Pi node uses the user's image `inuse` (which does not exist yet)
        async with Database(folder / "state" / "waltd.db") as db:
            image = f"docker.io/{user}/inuse:latest"
            await db.upsert_node(NODE_MAC, model="rpi-3-b", name="rpi-node", image=image)
        entries = [
            registry_entry(local, "local"),
            registry_entry(secure, "secure", "basic"),
            hub_entry(hub.url),
        ]
        config = write_config(
            folder,
            registries=entries,
            images={"docker-socket": str(lab.root / "dockerd/docker.sock")},
        )
        daemon = Daemon(folder, config).start()
        try:
            yield Setup(lab, daemon, folder, user, lab.registries)
        finally:
            daemon.kill()
            release_storage(folder / "images")
            remove(folder)


def _no_staging(setup: Setup) -> None:
    assert not [n for n in setup.names() if "waltd-staging" in n], setup.names()


def _progress(out: list[dict[str, Any]], step: str = "blob") -> list[dict[str, Any]]:
    return [r for r in out if r["type"] == "progress" and r["step"] == step]


async def test_clone_from_a_registry_label_with_progress(setup: Setup) -> None:
    out = await asyncio.to_thread(setup.clone, "local:alice/pc-img")
    blobs = _progress(out)
    assert {r["state"] for r in blobs} >= {"done"}
    # byte progress reached the client (skopeo drew it on its pseudo-terminal)
    assert max(r["total"] or 0 for r in blobs) >= 2 * 2**20
    assert _progress(out, "manifest")
    result = out[-1]
    assert result["type"] == "result" and result["image"] == "pc-img", out
    assert result["models"] == [PC] and result["replaced"] is False
    image = setup.stored(f"docker.io/{setup.user}/pc-img:latest")
    assert image is not None and image["Labels"]["walt.node.models"] == PC
    assert result["id"] == image["Id"]
    _no_staging(setup)


async def test_a_second_clone_sharing_layers_transfers_less(setup: Setup) -> None:
    first = await asyncio.to_thread(setup.clone, "local:alice/base", "shared-base")
    second = await asyncio.to_thread(setup.clone, "local:alice/more")
    assert first[-1]["type"] == second[-1]["type"] == "result", (first[-1], second[-1])
    base_blobs = {r["id"] for r in _progress(first)}
    steps = _progress(second)
    skipped = {r["id"] for r in steps if r["state"] == "skipped"}
    fetched = {r["id"] for r in steps if r["state"] == "done"}
    assert skipped == base_blobs, (skipped, base_blobs)  # the 2 MiB base was not fetched again
    sent = sum(r["total"] or 0 for r in steps if r["state"] == "done")
    assert len(fetched) == 1 and sent < 2**20


async def test_clone_from_an_htpasswd_registry_with_the_users_password(setup: Setup) -> None:
    refused = await asyncio.to_thread(setup.clone, "secure:alice/pc-img", "sec")
    assert refused[-1]["type"] == "error"
    login = {"secure": {"username": SECURE_USER, "password": SECURE_PASSWORD}}
    out = await asyncio.to_thread(setup.clone, "secure:alice/pc-img", "sec", credentials=login)
    assert out[-1]["type"] == "result", out[-1]
    assert setup.stored(f"docker.io/{setup.user}/sec:latest") is not None
    # the client reads the login from the user's file (here root's) and sends it
    write_logins(setup, "root", {"secure": (SECURE_USER, SECURE_PASSWORD)})
    try:
        res = await asyncio.to_thread(setup.walt, "image", "clone", "secure:alice/pc-img", "sec")
    finally:
        (setup.folder / "walt-root.conf").unlink()
    assert res.returncode == 0, res.stderr
    assert "OK, secure:alice/pc-img was cloned as sec." in res.stdout
    assert setup.stored("docker.io/root/sec:latest") is not None
    assert SECURE_PASSWORD not in setup.daemon.log_path.read_text()
    _no_staging(setup)


async def test_clone_from_the_hub_stand_in(setup: Setup) -> None:
    out = await asyncio.to_thread(setup.clone, "hub:hubuser/pc-img:v1")
    assert out[-1]["type"] == "result", out[-1]
    assert out[-1]["image"] == "pc-img:v1"
    assert setup.stored(f"docker.io/{setup.user}/pc-img:v1") is not None


async def test_clone_of_another_users_image_of_the_repository(setup: Setup) -> None:
    out = await asyncio.to_thread(setup.clone, "walt:bob/tools")
    assert out[-1]["type"] == "result", out[-1]
    mine = setup.stored(f"docker.io/{setup.user}/tools:latest")
    theirs = setup.stored("docker.io/bob/tools:latest")
    assert mine is not None and theirs is not None and mine["Id"] == theirs["Id"]
    # within storage: every layer was there already
    last = {r["id"]: r["state"] for r in _progress(out)}
    assert last and set(last.values()) == {"skipped"}, last
    own = await asyncio.to_thread(setup.clone, f"walt:{setup.user}/tools", "t2")
    assert own[-1]["status"] == 400
    assert "one of your own images: cloning it is refused" in own[-1]["error"]
    theirs_name = await asyncio.to_thread(setup.clone, "local:alice/pc-img", "bob/tools")
    assert theirs_name[-1]["status"] == 403, theirs_name
    assert setup.stored("docker.io/bob/tools:latest") == theirs


async def test_same_name_needs_force_and_then_replaces(setup: Setup) -> None:
    first = await asyncio.to_thread(setup.walt, "image", "clone", "local:alice/base", "dup")
    assert first.returncode == 0, first.stderr
    before = setup.stored("docker.io/root/dup:latest")
    again = await asyncio.to_thread(setup.walt, "image", "clone", "local:alice/pc-img", "dup")
    assert again.returncode == 1
    assert "already exists: cloning would overwrite it" in again.stderr
    assert "walt image clone --force local:alice/pc-img dup" in again.stderr
    assert setup.stored("docker.io/root/dup:latest") == before
    forced = await asyncio.to_thread(
        setup.walt, "image", "clone", "--force", "local:alice/pc-img", "dup"
    )
    assert forced.returncode == 0, forced.stderr
    after = setup.stored("docker.io/root/dup:latest")
    assert after is not None and before is not None and after["Id"] != before["Id"]
    _no_staging(setup)


async def test_replacing_an_image_in_use_needs_force_and_the_nodes_models(setup: Setup) -> None:
    first = await asyncio.to_thread(setup.clone, "local:alice/base", "inuse")
    assert first[-1]["type"] == "result", first[-1]
    before = setup.stored(f"docker.io/{setup.user}/inuse:latest")
    again = await asyncio.to_thread(setup.clone, "local:alice/pc-img", "inuse")
    assert again[-1]["type"] == "error"
    assert "and reboot the 1 node(s) using it: rpi-node" in again[-1]["error"]
    assert "walt image clone --force local:alice/pc-img inuse" in again[-1]["error"]
    forced = await asyncio.to_thread(setup.clone, "local:alice/pc-img", "inuse", force=True)
    assert forced[-1]["type"] == "error"
    assert "used by nodes of model(s) rpi-3-b" in forced[-1]["error"]
    assert setup.stored(f"docker.io/{setup.user}/inuse:latest") == before
    _no_staging(setup)


async def test_an_image_without_node_models_is_refused(setup: Setup) -> None:
    out = await asyncio.to_thread(setup.clone, "local:alice/plain")
    assert out[-1] == {
        "type": "error",
        "error": "This remote image does not indicate compatible node models.",
    }
    assert setup.stored(f"docker.io/{setup.user}/plain:latest") is None
    _no_staging(setup)


async def test_bad_urls_and_names_are_refused_with_what_is_allowed(setup: Setup) -> None:
    res = await asyncio.to_thread(setup.walt, "image", "clone", "nowhere:alice/pc-img")
    assert res.returncode == 1
    assert "unknown location 'nowhere', use one of walt, hub, docker" in res.stderr
    res = await asyncio.to_thread(setup.walt, "image", "clone", "local:alice/pc-img", "../x")
    assert res.returncode == 1 and "in image name '../x': use lower-case letters" in res.stderr


async def test_two_requests_for_one_clone_make_one_copy(setup: Setup) -> None:
    results = await asyncio.gather(
        asyncio.to_thread(setup.clone, "local:alice/more", "joined"),
        asyncio.to_thread(setup.clone, "local:alice/more", "joined"),
    )
    assert [out[-1]["type"] for out in results] == ["result", "result"], results
    match = is_event("image_cloned", image=f"{setup.user}/joined")
    assert len([r for r in setup.daemon.records() if match(r)]) == 1


async def test_clone_from_the_docker_daemon(setup: Setup) -> None:
    require_tool("dockerd")
    async with dockerd(setup.lab) as daemon:
        await load_image(setup.lab, daemon, "docker.io/alice/pc-img:latest", "carol/dock:1")
        res = await asyncio.to_thread(setup.walt, "image", "clone", "docker:carol/dock:1")
        assert res.returncode == 0, res.stderr
    assert setup.stored("docker.io/root/dock:1") is not None


async def test_skopeo_terminal_lines_become_progress_events() -> None:
    parser = ProgressParser()
    drawn = (
        b"Getting image source signatures\r\n"
        b"Copying blob b3490356931f [=====>-------] 12.5MiB / 30.0MiB\r\n"
        b"Copying blob 0123456789ab skipped: already exists  \r\n"
        b"\x1b[1A\x1b[J\x1b[1A\x1b[JCopying blob b3490356931f [=======] 30.0MiB / 30.0MiB\r\n"
        b"Copying blob 0123456789ab skipped: already exists  \r\n"
        b"\x1b[1A\x1b[JCopying blob b3490356931f done  \r\n"
        b"Copying config sha256:d19a146318aa0000 done  \r\nWriting manif"
    )
    events = parser.feed(drawn[:70]) + parser.feed(drawn[70:])
    assert events == [
        Progress("blob", "b3490356931f", "copying", round(12.5 * 2**20), 30 * 2**20),
        Progress("blob", "0123456789ab", "skipped"),
        Progress("blob", "b3490356931f", "copying", 30 * 2**20, 30 * 2**20),
        Progress("blob", "b3490356931f", "done", 30 * 2**20, 30 * 2**20),
        Progress("config", "d19a146318aa", "done"),
    ]
    assert parser.feed(b"est to image destination\r\n") == [Progress("manifest", "", "copying")]
    assert parser.feed(b"x" * 10_000) == [] and parser.feed(b"\r\n") == []  # no line of skopeo's


async def test_a_copy_is_pinned_to_the_digest_checked() -> None:
    digest = "sha256:" + "ab" * 32
    ref = "docker://127.0.0.1:5000/alice/pc-img:v1"
    assert pinned(ref, "v1", digest) == f"docker://127.0.0.1:5000/alice/pc-img@{digest}"
    # only a registry reference ending with its tag
    assert pinned("docker-daemon:alice/pc-img:v1", "v1", digest) == "docker-daemon:alice/pc-img:v1"
    assert pinned(ref, "v2", digest) == ref


async def test_a_checked_single_image_is_known_before_its_copy() -> None:
    digest, config = "sha256:" + "ab" * 32, "sha256:" + "cd" * 32
    ref = "docker://127.0.0.1:5000/alice/pc-img:v1"
    info = ImageInfo("local", "registry", "alice", "pc-img", "v1", digest, {})
    at = f"docker://127.0.0.1:5000/alice/pc-img@{digest}"
    assert checked_copy(ref, "v1", replace(info, config_digest=config)) == (at, "cd" * 32)
    # a list (skopeo may choose another platform), no config digest, no check: no id
    listed = replace(info, config_digest=config, platforms=("linux/amd64", "linux/arm64"))
    assert checked_copy(ref, "v1", listed) == (at, None)
    assert checked_copy(ref, "v1", info) == (at, None)
    assert checked_copy(ref, "v1", None) == (ref, None)
    # not pinned (not a registry reference): the id is not trusted either
    daemon = "docker-daemon:alice/pc-img:v1"
    assert checked_copy(daemon, "v1", replace(info, config_digest=config)) == (daemon, None)


async def test_the_clients_progress_line() -> None:
    view = ProgressView()
    view.update(CopyProgress("blob", "a", "skipped"))
    view.update(CopyProgress("blob", "b", "copying", 512 * 1024, 2**20))
    assert view.line() == f"[{'=' * 12}{' ' * 12}] 1/2 layers (1 already here), 512.0 KiB / 1.0 MiB"
    view.update(CopyProgress("blob", "b", "done", 2**20, 2**20))
    view.update(CopyProgress("manifest", "", "copying"))
    assert view.line().startswith(f"[{'=' * 24}] 2/2 layers") and "writing the image" in view.line()


def _read_terminal(master: int) -> bytes:
    """What was written on a pseudo-terminal until its last writer closed it."""
    data = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: no writer left
            return data
        if not chunk:
            return data
        data += chunk


async def test_the_client_draws_a_bar_on_a_terminal(setup: Setup) -> None:
    # an image whose layer no image of the storage holds yet
    await layered(setup.lab, "docker.io/alice/fresh:latest", None, 4096, PC)
    await push_image(setup.lab, "docker.io/alice/fresh:latest", setup.registries["local"])
    master, slave = os.openpty()
    env = {**os.environ, "WALT_SOCKET": str(setup.daemon.socket), "PYTHONPATH": str(ROOT)}
    argv = [sys.executable, "-m", "waltd.cli.walt", "image", "clone", "local:alice/fresh", "bar"]
    try:
        client = await asyncio.create_subprocess_exec(
            *argv, env=env, stdout=subprocess.PIPE, stderr=slave
        )
        os.close(slave)
        slave = -1
        drawn, (out, _) = await asyncio.gather(
            asyncio.to_thread(_read_terminal, master), client.communicate()
        )
    finally:
        os.close(master)
        if slave != -1:
            os.close(slave)
    assert client.returncode == 0
    assert out.decode() == "OK, local:alice/fresh was cloned as bar.\n"
    last = drawn.decode().split("\r\x1b[K")[-1]
    assert last.startswith(f"[{'=' * 24}] 1/1 layers, 4.0 MiB / 4.0 MiB"), drawn


async def test_clone_and_publish_requests_are_checked() -> None:
    with pytest.raises(ValueError, match="force must be true or false"):
        CloneRequest.from_json({"url": "hub:a/b", "force": "yes"})
    with pytest.raises(ValueError, match="url is longer than 1024 characters"):
        CloneRequest.from_json({"url": "x" * 1025})
    with pytest.raises(ValueError, match="image is missing"):
        PublishRequest.from_json({"registry": "hub"})
    login = {"credentials": {"hub": {"username": "u", "password": "p" * 2000}}}
    with pytest.raises(ValueError, match=r"credentials\.hub\.password is longer than"):
        PublishRequest.from_json({"image": "a", **login})
    request = CloneRequest("hub:a/b:1", "c", True, {"hub": Login("u", "secret-1")})
    assert CloneRequest.from_json(request.to_json()) == request
    assert "secret-1" not in repr(request)
