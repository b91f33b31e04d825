"""`walt image publish` end to end: waltd with its own podman storage, real docker-registry
servers of a lab (anonymous, htpasswd, and one standing in for Docker Hub's registry), root's
`walt` client and a real non-root user (useradd) speaking HTTP on the socket. What was
published is read back from the registries with skopeo.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from lab import Lab, Registry
from tests.support.daemon import ROOT, Daemon, remove, short_dir, write_config
from tests.support.labs import running_lab
from tests.support.store_images import build as build_stored
from tests.support.store_images import release_storage, repository_at
from tests.support.transfer import hub_entry, post_as, registry_entry, run
from tests.support.users import unix_user
from waltd import config
from waltd.images.publish import choose_registry, render_metadata
from waltd.images.store import LocalRef
from waltd.registries.base import Credentials, authfile
from waltd.registries.hub import parse_walt_metadata

PC = "pc-x86-64"
pytestmark = [pytest.mark.lab, pytest.mark.asyncio(loop_scope="module")]

REG_USER, REG_PASSWORD = "reg-user", "publish pass: never on a command line"
HUB_USER, HUB_PASSWORD = "hubber", "hub pass: never on a command line"


@dataclass
class Setup:
    """The module's lab, daemon and user."""

    lab: Lab
    daemon: Daemon
    folder: Path
    user: str

    def walt(self, *args: str) -> subprocess.CompletedProcess[str]:
        """`walt ARGS` as root."""
        env = {**os.environ, "WALT_SOCKET": str(self.daemon.socket), "PYTHONPATH": str(ROOT)}
        env["WALT_CLIENT_CONFIG"] = str(self.folder / "none.conf")
        return run([sys.executable, "-m", "waltd.cli.walt", *args], env=env)

    def publish(self, image: str, registry: str | None, **logins: tuple[str, str]) -> list[Any]:
        """The test user's publish request: its records."""
        creds = {k: {"username": u, "password": p} for k, (u, p) in logins.items()}
        body = {"image": image, "registry": registry, "credentials": creds}
        return post_as(self.user, self.daemon.socket, "/v1/images/publish", body)


async def inspect(registry: Registry, path: str, login: tuple[str, str] | None = None) -> Any:
    """`skopeo inspect` of `path` in `registry` (its config labels, its manifest type)."""
    creds = Credentials(*login) if login else None
    async with authfile(registry.host, creds) as auth:
        options = ["--authfile", str(auth)] if auth else []
        argv = ["skopeo", "inspect", "--tls-verify=false", *options]
        raw = await asyncio.to_thread(run, [*argv, "--raw", f"docker://{registry.host}/{path}"])
        info = await asyncio.to_thread(run, [*argv, f"docker://{registry.host}/{path}"])
    assert info.returncode == 0, info.stderr
    return json.loads(info.stdout), json.loads(raw.stdout)


@pytest.fixture(scope="module")
def user() -> Iterator[str]:
    with unix_user("waltpu") as name:
        yield name


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def setup(user: str) -> AsyncIterator[Setup]:
    async with running_lab("docker-registry", "skopeo", "buildah", "podman", "htpasswd") as lab:
        open_ = await lab.start_registry("open")
        secure = await lab.start_registry("secure", auth=(REG_USER, REG_PASSWORD))
        hub = await lab.start_registry("hub")
        jfrog = await lab.start_registry("jfrog")
        folder = short_dir()
        folder.chmod(0o755)
        repo = repository_at(folder)
        await build_stored(repo, LocalRef("root", "img"), models=PC, layers=2)
        await build_stored(repo, LocalRef(user, "pub"), models=PC)
        await build_stored(repo, LocalRef(user, "pub", "v2"), models="rpi-3-b")
        entries = [
            registry_entry(open_, "open"),
            registry_entry(secure, "secure", "basic"),
            hub_entry(hub.url, "hub"),
            # Artifactory keeps `<repository>/<name>` where a registry keeps that path: a
            # push lands the same way (only its catalog differs, which publish never reads)
            {
                "label": "jfrog",
                "api": "jfrog-artifactory",
                "description": "lab jfrog",
                "host": "127.0.0.1",
                "port": jfrog.port,
                "protocol": "http",
                "auth": "none",
                "repository": "walt",
            },
        ]
        conf = write_config(folder, registries=entries, images={"docker-socket": "/nonexistent"})
        daemon = Daemon(folder, conf).start()
        try:
            yield Setup(lab, daemon, folder, user)
        finally:
            daemon.kill()
            release_storage(folder / "images")
            remove(folder)


async def test_several_registries_need_a_choice(setup: Setup) -> None:
    res = await asyncio.to_thread(setup.walt, "image", "publish", "img")
    assert res.returncode == 1
    assert "choose one with --registry LABEL" in res.stderr
    lines = res.stderr.splitlines()
    assert "Registry | Description" in lines
    assert "open     | lab open" in lines and "hub      | hub" in lines


async def test_publish_without_auth_names_it_after_the_walt_user(setup: Setup) -> None:
    res = await asyncio.to_thread(setup.walt, "image", "publish", "--registry", "open", "img")
    assert res.returncode == 0, res.stderr
    assert res.stdout == "OK, image was published at:\nopen:root/img\n"
    info, manifest = await inspect(setup.lab.registries["open"], "root/img:latest")
    assert info["Labels"]["walt.node.models"] == PC and len(info["Layers"]) == 2
    assert manifest["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    # what was published clones back as the same image
    back = await asyncio.to_thread(setup.walt, "image", "clone", "open:root/img", "back")
    assert back.returncode == 0, back.stderr


async def test_publish_with_auth_names_it_after_the_registry_user(setup: Setup) -> None:
    refused = await asyncio.to_thread(setup.publish, "pub", "secure")
    assert refused[-1]["type"] == "error" and "needs your login" in refused[-1]["error"]
    wrong = await asyncio.to_thread(
        setup.publish, "pub", "secure", secure=(REG_USER, "wrong pass 1")
    )
    assert wrong[-1]["type"] == "error" and "wrong pass 1" not in wrong[-1]["error"]
    out = await asyncio.to_thread(setup.publish, "pub", "secure", secure=(REG_USER, REG_PASSWORD))
    assert out[-1]["type"] == "result", out[-1]
    assert out[-1]["url"] == f"secure:{REG_USER}/pub"
    registry = setup.lab.registries["secure"]
    assert out[-1]["reference"] == f"{registry.host}/{REG_USER}/pub:latest"
    info, _ = await inspect(registry, f"{REG_USER}/pub:latest", (REG_USER, REG_PASSWORD))
    assert info["Labels"]["walt.node.models"] == PC
    assert REG_PASSWORD not in setup.daemon.log_path.read_text()
    others = await asyncio.to_thread(setup.publish, "root/img", "open")
    assert others[-1]["type"] == "error" and "you may publish only your own" in others[-1]["error"]


async def test_publish_to_artifactory_names_it_in_the_repository(setup: Setup) -> None:
    out = await asyncio.to_thread(setup.publish, "pub:v2", "jfrog")
    assert out[-1]["type"] == "result", out[-1]
    assert out[-1]["url"] == "jfrog:walt/pub:v2"
    info, _ = await inspect(setup.lab.registries["jfrog"], "walt/pub:v2")
    assert info["Labels"]["walt.node.models"] == "rpi-3-b"


async def test_publish_to_the_hub_updates_walt_metadata(setup: Setup) -> None:
    hub = setup.lab.registries["hub"]
    for image in ("pub", "pub:v2"):
        out = await asyncio.to_thread(setup.publish, image, "hub", hub=(HUB_USER, HUB_PASSWORD))
        assert out[-1]["type"] == "result", out[-1]
    assert out[-1]["url"] == f"hub:{HUB_USER}/pub:v2"
    info, _ = await inspect(hub, f"{HUB_USER}/pub:v2")
    assert info["Labels"]["walt.node.models"] == "rpi-3-b"
    meta, _ = await inspect(hub, f"{HUB_USER}/walt_metadata:latest")
    listed = parse_walt_metadata(HUB_USER, meta["Labels"]["metadata"])
    assert listed.ignored == ()
    assert listed.images[("pub", "latest")]["walt.node.models"] == PC
    assert listed.images[("pub", "v2")]["walt.node.models"] == "rpi-3-b"


async def test_registry_choice_and_metadata_rendering() -> None:
    one = config.Registry("only", "docker-registry-v2", "the one", "h", 5000, "http")
    assert choose_registry((one,), None) is one
    with pytest.raises(ValueError, match="no registry is configured"):
        choose_registry((), None)
    with pytest.raises(ValueError, match="no registry labelled 'other'"):
        choose_registry((one,), "other")
    value = render_metadata({("a", "latest"): {"walt.node.models": PC}}, "u")
    decoded = json.loads(base64.b64decode(value))
    assert decoded == {"walt.user.images": {"u/a:latest": {"labels": {"walt.node.models": PC}}}}
    assert parse_walt_metadata("u", value).images == {("a", "latest"): {"walt.node.models": PC}}
