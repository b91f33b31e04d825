"""`walt image search` end to end: the `walt` client, waltd in the lab, real registries.

Real: waltd as a process in the lab's server namespace, reading its server.conf and reloading it
on SIGHUP; the `walt` client as a process, with its login file; three docker-registry servers
(one anonymous, one with htpasswd, one more anonymous); images built with buildah and pushed with
skopeo, among them a `walt_metadata` image published the reference system's way.

Fake, and only this (tests/support): Docker Hub's web API (search and repository lists,
`HubApiFake`) and its token service (`TokenFront`, Bearer tokens in front of the first real
registry), and Artifactory's catalog route (`ArtifactoryProxy`, in front of the third). They run
in this test's event loop; the server namespace reaches them on the same URLs as the host.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
import yaml

from lab import Lab, LabProcess, Registry
from tests.support.daemon import ROOT, is_event, write_config
from tests.support.hub_fake import HubApiFake, HubRepo, TokenFront, encode_metadata
from tests.support.hub_fake import publish_metadata as publish_hub_metadata
from tests.support.lab_daemon import records, start_waltd, wait_record
from tests.support.labs import running_lab
from tests.support.registry_artifactory import ArtifactoryProxy
from tests.support.registry_images import build, push_tags
from tests.support.search_lab import command_line, count_requests, process_tree, reach_from_server
from waltd import SERVER_VERSION

pytestmark = [pytest.mark.lab, pytest.mark.asyncio(loop_scope="module")]

USER, PASSWORD = "walt-user", "s3arch pass: not to be seen anywhere"
WRONG_PASSWORD = "wr0ng pass: not to be seen either"
TAGS = ["latest", *(f"t{i:02d}" for i in range(20))]
RPI = "rpi-3-b-plus,rpi-4-b"
PC = "pc-x86-64"
HEADER = ["User", "Image name", "Location", "Compatibility", "Clonable link"]
NO_MATCH = "Sorry, no image could match your request."
DOWN_WARNING = "Warning: down: cannot connect to 127.0.0.1:9 (connection refused)"
IMAGES = {  # image built -> its labels
    "rpi": {"walt.node.models": RPI},
    # needs the very version of this server: its link is shown
    "pc": {"walt.node.models": PC, "walt.server.minversion": str(SERVER_VERSION)},
    "future": {"walt.node.models": PC, "walt.server.minversion": str(SERVER_VERSION + 1)},
    "plain": {"org.example.purpose": "not a WalT image"},
}
PUSHES = [  # (registry role, image, repository, tags)
    ("hub", "rpi", "alice/rpi-os", ["latest", "v2"]),  # listed in alice's walt_metadata
    ("hub", "future", "bob/walt-pc", ["latest"]),  # found by Hub's search
    ("hub", "plain", "carol/walt-tools", ["latest"]),  # found by search, not WalT
    ("local", "pc", f"{USER}/pc-img", TAGS),
    ("local", "plain", f"{USER}/plain", ["latest"]),
    ("local", "rpi", "bob/rpi-tools", ["1.0"]),
    ("local", "pc", "solo", ["latest"]),  # WalT labels, but not named user/name
    ("arti", "rpi", "walt/rpi-img", ["latest"]),  # Artifactory repository `walt`
    ("arti", "plain", "walt/plain", ["latest"]),
]
HUB_REPOS = [
    HubRepo("alice/walt_metadata"),
    HubRepo("alice/rpi-os", "Raspberry Pi OS"),  # found through alice's metadata only
    HubRepo("bob/walt-pc", "a PC image"),
    HubRepo("carol/walt-tools", "tools, not for nodes"),
]
NEED_UPGRADE = f"[Need server upgrade, version>={SERVER_VERSION + 1}]"
KINDS = {"hub": "docker hub", "local": "custom registry", "jfrog": "custom registry"}


@dataclass(frozen=True)
class Walt:
    """A WalT image the search must show, and how."""

    location: str
    user: str
    name: str
    tag: str
    models: str
    needs_upgrade: bool = False

    @property
    def clone_url(self) -> str:
        """`<location>:<user>/<name>[:<tag>]`, a trailing `:latest` hidden."""
        return f"{self.location}:{self.user}/{self.name}{self.shown_tag}"

    @property
    def shown_tag(self) -> str:
        """`:<tag>`, or nothing for `latest`."""
        return "" if self.tag == "latest" else f":{self.tag}"

    @property
    def row(self) -> list[str]:
        """Its table row as the reference WalT server words it (`walt image search`)."""
        link = NEED_UPGRADE if self.needs_upgrade else self.clone_url
        return [self.user, self.name + self.shown_tag, KINDS[self.location], self.models, link]


# Every WalT image of the lab, in the table's order (user, name, tag).
ALL = [
    Walt("hub", "alice", "rpi-os", "latest", RPI),
    Walt("hub", "alice", "rpi-os", "v2", RPI),
    Walt("local", "bob", "rpi-tools", "1.0", RPI),
    Walt("hub", "bob", "walt-pc", "latest", PC, needs_upgrade=True),
    Walt("jfrog", "walt", "rpi-img", "latest", RPI),
    *(Walt("local", USER, "pc-img", tag, PC) for tag in TAGS),
]


def _rows_except(location: str = "") -> list[list[str]]:
    """The table rows of every WalT image but those at `location`."""
    return [image.row for image in ALL if image.location != location]


def _config(folder: Path, registries: list[dict[str, Any]]) -> Path:
    """waltd's server.conf: these registries, its files in `folder`, no docker daemon."""
    return write_config(
        folder,
        registries=registries,
        images={"docker-socket": str(folder / "no-docker.sock")},
        daemon={"shutdown-budget-s": 5},
    )


def _events(waltd: LabProcess, name: str) -> list[dict[str, Any]]:
    return [r for r in records(waltd) if r.get("event") == name]


async def _finish(
    proc: asyncio.subprocess.Process, args: list[str]
) -> subprocess.CompletedProcess[str]:
    """The output of a client process once it ends (killed after 30 s)."""
    try:
        out, err = await asyncio.wait_for(proc.communicate(), 30)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    assert proc.returncode is not None
    return subprocess.CompletedProcess(args, proc.returncode, out.decode(), err.decode())


@dataclass
class SearchLab:
    """The lab, waltd in it, the fakes' request logs and the client's login files."""

    lab: Lab
    waltd: LabProcess
    config: Path
    registries: list[dict[str, Any]]  # server.conf's registries, hub first
    login: Path  # the client's config with the local registry's login
    wrong_login: Path  # the same with a wrong password
    hub_api_requests: list[str]  # paths asked of the Hub API fake
    token_front_requests: list[str]  # paths asked of the hub's token front
    digests: dict[str, str]  # clone URL -> manifest digest

    @property
    def folder(self) -> Path:
        """waltd's own files."""
        return self.config.parent

    async def reload(self, registries: list[dict[str, Any]]) -> None:
        """Rewrite server.conf, SIGHUP waltd, wait until it runs with these registries."""
        _config(self.folder, registries)
        seen = len(_events(self.waltd, "config_reloaded"))
        os.kill(self.waltd.pid, signal.SIGHUP)
        reloaded = await wait_record(self.waltd, is_event("config_reloaded"), after=seen)
        assert reloaded["registries"] == [r["label"] for r in registries]

    async def start_walt(self, *args: str, login: Path | None = None) -> asyncio.subprocess.Process:
        """Start the `walt` client without a terminal, with `login` as its config file."""
        env = {
            **os.environ,
            "WALT_SOCKET": str(self.folder / "api.sock"),
            "WALT_CLIENT_CONFIG": str(login or self.login),
            "PYTHONPATH": str(ROOT),
        }
        return await asyncio.create_subprocess_exec(
            *(sys.executable, "-m", "waltd.cli.walt", *args),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=env,
        )

    async def walt(self, *args: str, login: Path | None = None) -> subprocess.CompletedProcess[str]:
        """Run the `walt` client to its end (awaited: the fakes answer meanwhile)."""
        return await _finish(await self.start_walt(*args, login=login), list(args))


def _login_file(path: Path, password: str) -> Path:
    """A client config of mode 0600 holding the local registry's login."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as out:
        yaml.safe_dump({"registries": {"local": {"username": USER, "password": password}}}, out)
    return path


def _registry_entries(
    front: TokenFront, api: HubApiFake, local: Registry, jfrog: ArtifactoryProxy
) -> list[dict[str, Any]]:
    """server.conf's registries: the hub stand-in, htpasswd, Artifactory, and one down."""
    lab_host = {"host": "127.0.0.1", "protocol": "http"}
    return [
        {"label": "hub", "api": "docker-hub", "registry-url": front.url, "hub-url": api.url},
        {
            "label": "local",
            "api": "docker-registry-v2",
            "description": "Lab registry with htpasswd",
            **lab_host,
            "port": local.port,
            "auth": "basic",
        },
        {
            "label": "jfrog",
            "api": "jfrog-artifactory",
            "description": "Lab Artifactory",
            **lab_host,
            "port": jfrog.port,
            "repository": "walt",
        },
        # port 9 of the server namespace: nobody listens there
        {
            "label": "down",
            "api": "docker-registry-v2",
            "description": "Down",
            **lab_host,
            "port": 9,
        },
    ]


async def _fill(lab: Lab, registries: Mapping[str, Registry]) -> dict[str, str]:
    """Build the images, push them (PUSHES), publish alice's metadata; digests by clone URL."""
    await asyncio.gather(
        *(build(lab, f"docker.io/search/{name}:latest", labels) for name, labels in IMAGES.items())
    )
    metadata = encode_metadata({f"alice/rpi-os:{tag}": IMAGES["rpi"] for tag in ("latest", "v2")})
    *digests, _ = await asyncio.gather(
        *(
            push_tags(lab, f"docker.io/search/{image}:latest", registries[role], repo, tags)
            for role, image, repo, tags in PUSHES
        ),
        publish_hub_metadata(lab, registries["hub"], "alice", metadata),
    )
    location = {"hub": "hub", "local": "local", "arti": "jfrog"}
    return {
        f"{location[role]}:{repo}" + ("" if tag == "latest" else f":{tag}"): digest
        for (role, _, repo, tags), digest in zip(PUSHES, digests, strict=True)
        for tag in tags
    }


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world() -> AsyncIterator[SearchLab]:
    """The lab's registries filled, the fakes reachable from the server namespace, waltd up."""
    async with running_lab("buildah", "skopeo", "docker-registry", "htpasswd") as lab:
        started = await asyncio.gather(
            lab.start_registry("hub"),
            lab.start_registry("local", auth=(USER, PASSWORD)),
            lab.start_registry("arti"),
        )
        registries = {r.role: r for r in started}
        digests = await _fill(lab, registries)
        api = HubApiFake(repos=HUB_REPOS, max_page_size=2)
        front = TokenFront(backend=registries["hub"])
        api_requests, front_requests = count_requests(api.app), count_requests(front.app)
        async with api, front, ArtifactoryProxy(registries["arti"].url) as jfrog:
            for port in (api.url.rsplit(":", 1)[1], front.url.rsplit(":", 1)[1], jfrog.port):
                await reach_from_server(lab, int(port))
            folder, client = lab.root / "waltd", lab.root / "client"
            folder.mkdir()
            client.mkdir()
            entries = _registry_entries(front, api, registries["local"], jfrog)
            config = _config(folder, entries)
            waltd = await start_waltd(lab, config)
            await wait_record(waltd, is_event("daemon_ready"))
            yield SearchLab(
                lab=lab,
                waltd=waltd,
                config=config,
                registries=entries,
                login=_login_file(client / "config", PASSWORD),
                wrong_login=_login_file(client / "wrong", WRONG_PASSWORD),
                hub_api_requests=api_requests,
                token_front_requests=front_requests,
                digests=digests,
            )
            assert await lab.stop(waltd) == 0


def _rows(stdout: str) -> list[list[str]]:
    """The rows of the table `walt image search` printed, after checking its header."""
    header, rule, *lines = stdout.splitlines()
    assert [cell.strip() for cell in header.split(" | ")] == HEADER
    assert re.fullmatch(r"-+(-\+-+)+", rule), rule
    return [[cell.strip() for cell in line.split(" | ")] for line in lines]


async def test_search_shows_exactly_the_walt_images(world: SearchLab) -> None:
    result = await world.walt("image", "search")
    assert result.returncode == 0, result.stderr
    # every answering source's WalT images: not the others, nor `solo` (not user/name)
    assert _rows(result.stdout) == _rows_except()
    # the registry that is down: one line naming it; no docker daemon: not even a line
    assert result.stderr.splitlines() == [DOWN_WARNING]
    searches = _events(world.waltd, "image_search")
    assert (searches[-1]["found"], searches[-1]["failed_sources"]) == (len(ALL), 1)
    # the hub's images came through its Bearer token flow and Hub's web API
    assert "/token" in world.token_front_requests
    assert "/v2/repositories/alice/" in world.hub_api_requests


@pytest.mark.parametrize(
    ("keyword", "links"),
    [
        # matched anywhere in the clone URL: name, location, user, tag
        (
            "rpi",
            [
                "hub:alice/rpi-os",
                "hub:alice/rpi-os:v2",
                "local:bob/rpi-tools:1.0",
                "jfrog:walt/rpi-img",
            ],
        ),
        ("jfrog:", ["jfrog:walt/rpi-img"]),
        ("bob/", ["local:bob/rpi-tools:1.0", NEED_UPGRADE]),
        (":t07", [f"local:{USER}/pc-img:t07"]),
        # the Location column says "custom registry", no clone URL does
        ("custom", []),
    ],
)
async def test_keyword_filters_on_the_clone_url(
    world: SearchLab, keyword: str, links: list[str]
) -> None:
    result = await world.walt("image", "search", keyword)
    assert result.returncode == 0, result.stderr
    if links:
        assert [row[4] for row in _rows(result.stdout)] == links
    else:
        assert result.stdout.strip() == NO_MATCH
    assert result.stderr.splitlines() == [DOWN_WARNING]


async def test_json_output_holds_the_digests(world: SearchLab) -> None:
    result = await world.walt("image", "search", "--json")
    assert result.returncode == 0, result.stderr
    images = json.loads(result.stdout)
    assert [image["clone_url"] for image in images] == [image.clone_url for image in ALL]
    for image, expected in zip(images, ALL, strict=True):
        assert image["digest"] == world.digests[expected.clone_url], expected.clone_url
        assert image["labels"]["walt.node.models"] == expected.models
        assert image["kind"] == KINDS[expected.location]
    future = images[[i.clone_url for i in ALL].index("hub:bob/walt-pc")]
    assert future["labels"]["walt.server.minversion"] == str(SERVER_VERSION + 1)


async def test_without_the_login_the_registry_warns_and_the_others_answer(
    world: SearchLab,
) -> None:
    cases = {
        world.lab.root / "client" / "absent": (
            "Warning: local: authentication required (401) for the catalog: no credentials given"
        ),
        world.wrong_login: "Warning: local: authentication refused (401) for the catalog",
    }
    for login, warning in cases.items():
        result = await world.walt("image", "search", login=login)
        assert result.returncode == 0, result.stderr
        assert _rows(result.stdout) == _rows_except("local")
        assert sorted(result.stderr.splitlines()) == sorted([DOWN_WARNING, warning])


async def test_the_passwords_appear_nowhere(world: SearchLab) -> None:
    args = ["image", "search"]
    proc = await world.start_walt(*args)
    finished = asyncio.ensure_future(_finish(proc, args))
    # the command lines of waltd, its children and the client, all along the search
    command_lines: set[str] = set()
    while not finished.done():
        command_lines.update(
            command_line(pid) for pid in [*process_tree(world.waltd.pid), proc.pid]
        )
        await asyncio.sleep(0.01)
    result = finished.result()
    wrong = await world.walt(*args, login=world.wrong_login)
    assert result.returncode == wrong.returncode == 0
    assert any(row[4].startswith("local:") for row in _rows(result.stdout))  # the login served
    assert any("-m waltd --config" in line for line in command_lines)

    shown = await world.walt("log", "show", "--json", "--limit", "0")
    assert shown.returncode == 0, shown.stderr
    events = [json.loads(line) for line in shown.stdout.splitlines()]
    assert sum(event["event"] == "image_search" for event in events) >= 2
    texts = {
        "command lines": "\n".join(command_lines),
        "the client's output": result.stdout + result.stderr + wrong.stdout + wrong.stderr,
        "walt log show": shown.stdout + shown.stderr,
        "waltd's log": world.waltd.log.read_text(errors="replace"),
    }
    # and every file waltd wrote (state, caches)
    for path in world.folder.rglob("*"):
        if path.is_file():
            texts[str(path)] = path.read_bytes().decode(errors="replace")
    for where, text in texts.items():
        for secret in (PASSWORD, WRONG_PASSWORD):
            assert secret not in text, f"a password in {where}"


async def test_a_disabled_hub_is_never_contacted(world: SearchLab) -> None:
    api_seen, front_seen = len(world.hub_api_requests), len(world.token_front_requests)
    await world.reload([r for r in world.registries if r["label"] != "hub"])
    try:
        result = await world.walt("image", "search")
        assert result.returncode == 0, result.stderr
        assert _rows(result.stdout) == _rows_except("hub")
        assert result.stderr.splitlines() == [DOWN_WARNING]
        # neither for the reload nor for the search
        assert world.hub_api_requests[api_seen:] == []
        assert world.token_front_requests[front_seen:] == []
    finally:
        await world.reload(world.registries)
    # enabled again, it answers again: the counts above did see the hub's requests
    again = await world.walt("image", "search", "hub:")
    assert _rows(again.stdout) == [i.row for i in ALL if i.location == "hub"]
    assert len(world.hub_api_requests) > api_seen and len(world.token_front_requests) > front_seen
