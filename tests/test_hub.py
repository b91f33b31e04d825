"""Docker Hub source: the reference's `walt_metadata` convention, Hub search, tokens.

Docker Hub cannot be reached here, so (see tests/support/hub_fake.py) Hub's search and
repositories endpoints are a fake on 127.0.0.1, and the registry is a REAL docker registry
of the lab behind a thin token-issuing front: only the Bearer auth layer is fake.
"""

from __future__ import annotations

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import pytest
import pytest_asyncio
import structlog
from aiohttp import web
from hypothesis import given
from hypothesis import strategies as st

from lab import Lab, Registry, build_image, push_image
from tests.support.hub_fake import (
    HubApiFake,
    HubRepo,
    LocalServer,
    TokenFront,
    encode_metadata,
    publish_metadata,
)
from tests.support.labs import running_lab
from tests.support.registry_proxy import Proxy, rewrite_body, status
from waltd.registries.base import LOCATION_HUB, AuthError, Credentials, NotFound, RegistryError
from waltd.registries.hub import HubSource, MetadataError, parse_walt_metadata

module = pytest.mark.asyncio(loop_scope="module")

RPI = "docker.io/alice/rpi-os:latest"
PC = "docker.io/bob/walt-pc:latest"
PLAIN = "docker.io/carol/walt-tools:latest"
RPI_MODELS = "rpi-3-b-plus,rpi-4-b"
FRANK = ("frank", "pass word, secret")


@dataclass
class HubEnv:
    """The lab's registry, the token front before it, and the Hub API fake."""

    lab: Lab
    registry: Registry
    front: TokenFront
    api: HubApiFake

    def source(self, **options: Any) -> HubSource:
        return HubSource(registry_url=self.front.url, hub_url=self.api.url, **options)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def hub() -> AsyncIterator[HubEnv]:
    """Images published the reference way, found by search, non-WalT, private, garbage."""
    repos = [
        HubRepo("alice/walt_metadata"),
        HubRepo("alice/rpi-os", "Raspberry Pi OS for my boards"),  # not matched by "walt"
        HubRepo("bob/walt-pc", "a PC image"),
        HubRepo("carol/walt-tools", "not an image for nodes"),
        HubRepo("dave/walt_metadata"),
        HubRepo("dave/node-image"),
        HubRepo("erin/walt-secret", "private"),
        HubRepo("frank/my-image"),
        HubRepo("waltz", "an official image: no user"),
    ]
    async with running_lab("docker-registry", "skopeo", "buildah", "podman") as lab:
        registry = await lab.start_registry("hub")
        await build_image(lab, RPI, RPI_MODELS.split(","), {"etc/rpi": "rpi\n"})
        labels = {"walt.server.minversion": "4"}
        await build_image(lab, PC, ["pc-x86-64"], {"etc/pc": "pc\n"}, labels=labels)
        await build_image(lab, PLAIN, None, {})
        for image, names in {
            RPI: ["alice/rpi-os:latest", "alice/rpi-os:v2"],
            PC: [
                "bob/walt-pc:latest",
                "dave/node-image:latest",
                "erin/walt-secret:latest",
                "frank/my-image:latest",
            ],
            PLAIN: ["bob/walt-pc:plain", "carol/walt-tools:latest"],
        }.items():
            for name in names:
                await push_image(lab, image, registry, name)
        rpi_labels = {"walt.node.models": RPI_MODELS}
        metadata = encode_metadata(
            {
                "alice/rpi-os:latest": rpi_labels,
                "alice/rpi-os:v2": rpi_labels,
                "alice/gone:latest": rpi_labels,  # no longer in the registry
                "mallory/fake:latest": rpi_labels,  # not alice's to list
            }
        )
        await publish_metadata(lab, registry, "alice", metadata)
        await publish_metadata(lab, registry, "dave", "this is not base64!")
        async with (
            TokenFront(backend=registry, credentials=FRANK, denied={"erin/walt-secret"}) as front,
            HubApiFake(repos=repos, max_page_size=2) as api,
        ):
            yield HubEnv(lab, registry, front, api)


def _by_name(images: list[Any]) -> dict[str, Any]:
    return {f"{i.user}/{i.name}:{i.tag}": i for i in images}


@module
async def test_finds_reference_published_and_searched_walt_images(hub: HubEnv) -> None:
    tokens_before = hub.front.token_requests
    with structlog.testing.capture_logs() as logs:
        images = await hub.source().list_images()
    found = _by_name(images)
    # alice: through her walt_metadata; bob: through search; dave: his repository list
    # (his metadata is garbage); carol's and bob's `plain` are not WalT images; erin's is
    # private; alice/gone is listed in metadata but the registry has no such repository.
    assert sorted(found) == [
        "alice/rpi-os:latest",
        "alice/rpi-os:v2",
        "bob/walt-pc:latest",
        "dave/node-image:latest",
    ]
    rpi = found["alice/rpi-os:v2"]
    assert (rpi.location, rpi.kind, rpi.clone_url) == ("hub", LOCATION_HUB, "hub:alice/rpi-os:v2")
    assert rpi.models == ("rpi-3-b-plus", "rpi-4-b")
    assert rpi.digest and rpi.digest == found["alice/rpi-os:latest"].digest
    assert rpi.created
    assert found["bob/walt-pc:latest"].minversion == 4
    assert found["alice/rpi-os:latest"].clone_url == "hub:alice/rpi-os"

    events = {(r["event"], r.get("image") or r.get("repository")): r for r in logs}
    invalid = events["hub_metadata_invalid", "dave/walt_metadata:latest"]
    assert invalid["error"] == "the metadata label is not base64"
    ignored = events["hub_metadata_entry_ignored", "alice/walt_metadata:latest"]
    assert ignored["error"] == "'mallory/fake:latest': not in alice's namespace"
    assert ("hub_repository_skipped", "erin/walt-secret") in events
    assert not any(r["event"] == "hub_search_capped" for r in logs)

    assert hub.front.token_requests > tokens_before  # the Bearer flow was used
    paths = [path for path, _ in hub.api.requests]
    assert "/v2/repositories/alice/" in paths and "/v2/repositories/dave/" in paths
    assert any("page=2" in query for _, query in hub.api.requests)  # `next` followed


@module
async def test_cap_on_repositories_is_logged_and_metadata_fills_in(hub: HubEnv) -> None:
    with structlog.testing.capture_logs() as logs:
        images = await hub.source(max_repositories=1).list_images()
    found = _by_name(images)
    # one repository inspected (alice/rpi-os, named first by her metadata); alice/gone could
    # not be checked, so it is shown as the reference shows it: metadata labels, no digest
    assert sorted(found) == ["alice/gone:latest", "alice/rpi-os:latest", "alice/rpi-os:v2"]
    assert found["alice/rpi-os:latest"].digest
    gone = found["alice/gone:latest"]
    assert gone.digest is None and gone.models == ("rpi-3-b-plus", "rpi-4-b")
    (capped,) = [r for r in logs if r["event"] == "hub_search_capped"]
    assert capped["inspected"] == 1 and capped["left_out"] == ["alice/gone"]
    assert capped["log_level"] == "warning"


@module
async def test_credentials_go_to_the_token_service(hub: HubEnv) -> None:
    anonymous = _by_name(await hub.source().list_images())
    assert "frank/my-image:latest" not in anonymous  # found neither by search nor metadata

    images = await hub.source().list_images(Credentials(*FRANK))
    assert "frank/my-image:latest" in _by_name(images)  # the caller's own repositories
    assert "frank" in hub.front.basic_users

    with pytest.raises(AuthError) as caught:
        await hub.source().list_images(Credentials("frank", "wrong password"))
    assert str(caught.value) == "hub: authentication refused (401) by the token service"
    assert "wrong" not in repr(caught.value)


@module
async def test_resolve_and_copy_with_skopeo(hub: HubEnv) -> None:
    source = hub.source()
    listed = _by_name(await source.list_images())
    resolved = await source.resolve("bob", "walt-pc", "latest")
    assert resolved == listed["bob/walt-pc:latest"]
    with pytest.raises(NotFound, match=r"^hub: image bob/absent:latest not found"):
        await source.resolve("bob", "absent", "latest")

    transport = source.transport("alice", "rpi-os", "v2")
    assert transport == f"docker://{hub.front.url.removeprefix('http://')}/alice/rpi-os:v2"
    target = "docker.io/copier/from-hub:latest"
    argv = ["skopeo", "copy", "--quiet", *source.skopeo_options(), transport]
    await hub.lab.run([*argv, f"containers-storage:{target}"], env=hub.lab.containers_env)
    inspect = ["podman", "image", "inspect", "--format", '{{index .Labels "walt.node.models"}}']
    out = await hub.lab.run([*inspect, target], env=hub.lab.containers_env)
    assert out.stdout.strip() == RPI_MODELS


@module
async def test_a_busy_or_broken_tag_does_not_fail_the_hub(hub: HubEnv) -> None:
    """A proxy in front of the token front answers for three tags: 429, 503, a lying body."""
    async with Proxy(hub.front.url) as proxy:
        faults = {
            "alice/rpi-os/manifests/latest": status(429, Retry_After="0"),
            "alice/rpi-os/manifests/v2": status(503),
            "bob/walt-pc/manifests/latest": rewrite_body(
                proxy, lambda b: b.replace(b'"size":', b'"size" :', 1)
            ),
        }

        async def made_up(request: web.Request) -> web.StreamResponse | None:
            fault = faults.get(request.path.removeprefix("/v2/"))
            return await fault(request) if fault else None

        proxy.fault = made_up
        source = HubSource(registry_url=proxy.url, hub_url=hub.api.url)
        with structlog.testing.capture_logs() as logs:
            found = _by_name(await source.list_images())
    # alice's tags were not inspected: her metadata's labels stand in, without a digest;
    # bob's image is broken: left out; the others are there
    assert sorted(found) == ["alice/rpi-os:latest", "alice/rpi-os:v2", "dave/node-image:latest"]
    for tag in ("latest", "v2"):
        alice = found[f"alice/rpi-os:{tag}"]
        assert alice.digest is None and alice.models == ("rpi-3-b-plus", "rpi-4-b")
    assert found["dave/node-image:latest"].digest
    not_inspected = {
        r["image"]: r["error"] for r in logs if r["event"] == "hub_image_not_inspected"
    }
    assert set(not_inspected) == {"alice/rpi-os:latest", "alice/rpi-os:v2"}
    assert (
        not_inspected["alice/rpi-os:v2"] == "hub: HTTP 503 from GET /v2/alice/rpi-os/manifests/v2"
    )
    (skipped,) = [r for r in logs if r["event"] == "registry_image_skipped"]
    assert skipped["image"] == "bob/walt-pc:latest"
    assert skipped["error"].startswith("hub: digest mismatch: GET /v2/bob/walt-pc/manifests/latest")


# ---- Hub's web API alone (no registry reached) ----------------------------------------------


async def test_hub_api_down_is_a_clear_error() -> None:
    with pytest.raises(RegistryError) as caught:
        await HubSource(
            hub_url="http://127.0.0.1:9", registry_url="http://127.0.0.1:9"
        ).list_images()
    assert str(caught.value).startswith("hub: search for ")
    assert str(caught.value).endswith("at http://127.0.0.1:9: cannot connect (connection refused)")


async def test_hub_api_garbage_is_a_clear_error() -> None:
    async with HubApiFake(repos=[HubRepo("alice/walt_metadata")], broken=True) as api:
        source = HubSource(hub_url=api.url, registry_url="http://127.0.0.1:9")
        with pytest.raises(RegistryError, match=r"^hub: search for .*: the answer is not JSON$"):
            await source.list_images()


async def test_next_page_on_another_origin_is_refused() -> None:
    async def page(request: web.Request) -> web.Response:
        results = [{"repo_name": "alice/walt_metadata"}]
        return web.json_response({"results": results, "next": "http://127.0.0.2:9/v2/x"})

    server = LocalServer()
    server.app.router.add_get("/v2/search/repositories/", page)
    async with server:
        source = HubSource(hub_url=server.url, registry_url="http://127.0.0.1:9")
        with pytest.raises(RegistryError, match=r"next page link leaves http://127\.0\.0\.1:"):
            await source.list_images()


async def test_hub_api_paging_ends_and_stays_on_its_server() -> None:
    """Hub search answers that would keep the daemon paging forever, or send it elsewhere."""
    asked: list[str] = []
    mode = ["own link"]

    async def page(request: web.Request) -> web.Response:
        asked.append(request.path_qs)
        if mode[0] == "own link":  # `next` is the very page
            results = [{"repo_name": "waltz"}]
            return web.json_response({"results": results, "next": str(request.url)})
        if mode[0] == "nothing, forever":  # new pages of null items
            following = request.url.update_query(page=str(int(request.query.get("page", 1)) + 1))
            return web.json_response({"results": [None], "next": str(following)})
        raise web.HTTPFound(f"{elsewhere.url}/v2/search/repositories/")

    async def empty(request: web.Request) -> web.Response:
        asked.append("elsewhere")
        return web.json_response({"results": [], "next": None})

    server, elsewhere = LocalServer(), LocalServer()
    server.app.router.add_get("/v2/search/repositories/", page)
    elsewhere.app.router.add_get("/v2/search/repositories/", empty)
    async with server, elsewhere:
        source = HubSource(hub_url=server.url, registry_url="http://127.0.0.1:9")
        async with asyncio.timeout(20):
            assert await source.list_images() == []
            assert len(asked) == 2  # one page per query (walt_metadata, walt)

            asked.clear()
            mode[0] = "nothing, forever"
            with structlog.testing.capture_logs() as logs:
                assert await source.list_images() == []
            assert len(asked) == 200  # 100 pages per query
            capped = [r for r in logs if r["event"] == "hub_pages_capped"]
            assert len(capped) == 2 and capped[0]["pages"] == 100

            asked.clear()
            mode[0] = "redirect"
            with pytest.raises(RegistryError) as caught:
                await source.list_images()
    assert "elsewhere" not in asked
    assert str(caught.value).startswith("hub: search for ")
    assert str(caught.value).endswith(f"at {server.url}: redirected (HTTP 302), not followed")


def test_transport_of_hub_and_of_a_stand_in() -> None:
    hub = HubSource()
    assert hub.transport("u", "n", "t") == "docker://docker.io/u/n:t"
    assert hub.registry_host == "docker.io" and hub.skopeo_options() == []
    mirror = HubSource(registry_url="http://mirror.example:5000/")
    assert mirror.transport("u", "n", "t") == "docker://mirror.example:5000/u/n:t"
    assert mirror.skopeo_options() == ["--src-tls-verify=false"]


# ---- the metadata label (pure) ---------------------------------------------------------------


def _encode(data: object) -> str:
    return base64.b64encode(json.dumps(data).encode()).decode()


def test_metadata_as_the_reference_writes_it() -> None:
    labels = {"walt.node.models": "pc-x86-64", "walt.server.minversion": "4"}
    meta = parse_walt_metadata("alice", encode_metadata({"alice/img:v1": labels}))
    assert meta.images == {("img", "v1"): labels} and meta.ignored == ()


def test_bad_metadata_entries_are_left_out_with_a_reason() -> None:
    good = {"labels": {"walt.node.models": "rpi-b"}}
    meta = parse_walt_metadata(
        "alice",
        _encode(
            {
                "walt.user.images": {
                    "alice/untagged": good,
                    "alice/ok:1": good,
                    "bob/theirs:latest": good,
                    "alice/Bad Name:x": good,
                    "alice/no-labels:latest": {"labels": ["walt.node.models"]},
                    "alice/number:latest": {"labels": {"walt.node.models": 3}},
                    "alice/not-a-dict:latest": "labels",
                }
            }
        ),
    )
    assert meta.images == {("untagged", "latest"): good["labels"], ("ok", "1"): good["labels"]}
    assert meta.ignored == (
        "'bob/theirs:latest': not in alice's namespace",
        "'alice/Bad Name:x': not a <user>/<repo>:<tag> reference",
        "'alice/no-labels:latest': no \"labels\" object of strings",
        "'alice/number:latest': no \"labels\" object of strings",
        "'alice/not-a-dict:latest': no \"labels\" object of strings",
    )


@pytest.mark.parametrize(
    ("encoded", "message"),
    [
        ("not base64!", "the metadata label is not base64"),
        ("", "the metadata label is not JSON"),
        (base64.b64encode(b"\xff\xfe").decode(), "the metadata label does not decode to UTF-8"),
        (base64.b64encode(b"{oops").decode(), "the metadata label is not JSON"),
        (_encode([1, 2]), 'the metadata label has no "walt.user.images" object'),
        (_encode({"walt.user.images": []}), 'the metadata label has no "walt.user.images"'),
    ],
)
def test_garbage_metadata_is_a_clear_error(encoded: str, message: str) -> None:
    with pytest.raises(MetadataError, match=f"^{message}"):
        parse_walt_metadata("alice", encoded)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=24), inner),
    max_leaves=12,
)


@given(
    st.one_of(
        st.text(max_size=64),
        st.binary(max_size=64).map(lambda b: base64.b64encode(b).decode()),
        _json.map(lambda d: _encode({"walt.user.images": d})),
        _json.map(_encode),
    )
)
def test_any_label_gives_metadata_or_a_metadata_error(encoded: str) -> None:
    try:
        meta = parse_walt_metadata("alice", encoded)
    except MetadataError:
        return
    assert all(isinstance(v, str) for labels in meta.images.values() for v in labels.values())
