"""Registry faults, each a clear error naming the source, never a secret.

A real docker-registry holds the images; a proxy in front of it (tests/support/registry_proxy.py)
injects the fault under test and counts the attempts. Where the fault is the whole answer
(an endless body, a silence), the proxy makes it up without asking the registry.
"""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator

import aiohttp
import pytest
import pytest_asyncio
import structlog
from aiohttp import web

from lab import Registry
from tests.support.labs import running_lab
from tests.support.registry_images import build, entry, push_tags
from tests.support.registry_proxy import (
    Proxy,
    endless_body,
    fan_out,
    hang,
    reset_mid_body,
    rewrite_body,
    stall_body,
    status,
    when,
)
from waltd.registries.base import AuthError, Credentials, NotFound, RegistryError, Unsupported
from waltd.registries.cache import DigestCache
from waltd.registries.v2.client import V2Client
from waltd.registries.v2.source import RegistryV2Source

pytestmark = [pytest.mark.lab, pytest.mark.asyncio(loop_scope="module")]

TAGS = ["latest", *(f"v{i:02d}" for i in range(12))]
TAGS_PATH = r"/v2/alice/img/tags/list"
SECRET = "very-secret-pw"
CREDS = Credentials("alice", SECRET)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def registry() -> AsyncIterator[Registry]:
    """A real registry holding alice/img under a few tags."""
    async with running_lab("buildah", "skopeo", "docker-registry") as lab:
        await build(lab, "docker.io/t/img:latest", {"walt.node.models": "pc-x86-64"})
        running = await lab.start_registry("faulty")
        await push_tags(lab, "docker.io/t/img:latest", running, "alice/img", TAGS)
        yield running


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def shared_proxy(registry: Registry) -> AsyncIterator[Proxy]:
    """The fault-injecting proxy in front of the registry, for the whole module."""
    async with Proxy(registry.url) as running:
        yield running


@pytest_asyncio.fixture(loop_scope="module")
async def proxy(shared_proxy: Proxy) -> AsyncIterator[Proxy]:
    """The proxy, without fault nor counts at the start of each test."""
    shared_proxy.reset()
    yield shared_proxy
    shared_proxy.reset()


def client(
    proxy: Proxy,
    *,
    creds: Credentials | None = None,
    timeout_s: float = 30,
    max_body: int = 8 * 2**20,
    concurrency: int = 32,
    cache: DigestCache | None = None,
) -> V2Client:
    """A client of the registry through the proxy, labelled `local`."""
    return V2Client(
        "local",
        proxy.url,
        creds=creds,
        timeout_s=timeout_s,
        max_body=max_body,
        concurrency=concurrency,
        cache=cache,
    )


def no_secret(err: BaseException) -> None:
    """Neither the password nor the Basic header value appears in the error."""
    text = f"{err} {err!r}"
    assert SECRET not in text
    assert "YWxpY2U6" not in text  # base64 of "alice:", how a Basic header starts


async def test_registry_down() -> None:
    with socket.socket() as sock:  # a port nobody listens on any more
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = time.monotonic()
    async with V2Client("local", f"http://127.0.0.1:{port}", creds=CREDS) as down:
        with pytest.raises(RegistryError) as err:
            await down.catalog()
    assert str(err.value) == f"local: cannot connect to 127.0.0.1:{port} (connection refused)"
    assert err.value.retryable and time.monotonic() - started < 3
    no_secret(err.value)


async def test_connection_reset_mid_body(proxy: Proxy) -> None:
    proxy.fault = when(TAGS_PATH, reset_mid_body())
    async with client(proxy) as registry:
        with pytest.raises(RegistryError) as err:
            await registry.tags("alice/img")
    assert str(err.value) == f"local: connection reset during GET {TAGS_PATH}"
    assert proxy.count("GET", TAGS_PATH + ".*") == 3  # retried twice


async def test_401_and_403_are_not_retried(proxy: Proxy) -> None:
    proxy.fault = when(TAGS_PATH, status(401))
    async with client(proxy) as anonymous, client(proxy, creds=CREDS) as known:
        with pytest.raises(AuthError) as required:
            await anonymous.tags("alice/img")
        assert str(required.value) == (
            "local: authentication required (401) for the tags list of alice/img: "
            "no credentials given"
        )
        with pytest.raises(AuthError) as refused:
            await known.tags("alice/img")
        assert (
            str(refused.value)
            == "local: authentication refused (401) for the tags list of alice/img"
        )
        no_secret(refused.value)
        assert proxy.count("GET", TAGS_PATH + ".*") == 2

        denied = '{"errors": [{"code": "DENIED", "message": "requested access is denied"}]}'
        proxy.fault = when(TAGS_PATH, status(403, denied))
        with pytest.raises(AuthError) as forbidden:
            await known.tags("alice/img")
        assert (
            str(forbidden.value)
            == "local: access denied (403) to the tags list of alice/img (DENIED)"
        )
        assert forbidden.value.status == 403
        assert proxy.count("GET", TAGS_PATH + ".*") == 3


async def test_basic_challenge_then_credentials(proxy: Proxy) -> None:
    """The fault is a Basic challenge on the first request; the credentials go out after it."""
    seen: list[str | None] = []

    async def basic_once(request: web.Request) -> web.StreamResponse | None:
        seen.append(request.headers.get("Authorization"))
        if len(seen) == 1:
            return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="test"'})
        return None

    proxy.fault = basic_once
    async with client(proxy, creds=CREDS) as registry:
        assert "v03" in await registry.tags("alice/img")
        await registry.tags("alice/img")
    assert seen[0] is None and seen[1] == seen[2] and seen[1] is not None
    assert seen[1].startswith("Basic ")


async def test_404_from_the_real_registry(proxy: Proxy) -> None:
    async with client(proxy) as registry:
        with pytest.raises(NotFound) as repo:
            await registry.tags("alice/missing")
        assert (
            str(repo.value)
            == "local: the tags list of alice/missing not found (404) (NAME_UNKNOWN)"
        )
        with pytest.raises(NotFound) as tag:
            await registry.image("alice/img", "nope")
        assert str(tag.value) == "local: image alice/img:nope not found (404) (MANIFEST_UNKNOWN)"
    assert len(proxy.requests) == 2  # never retried


async def test_429_waits_for_retry_after(proxy: Proxy) -> None:
    proxy.fault = when(TAGS_PATH, status(429, Retry_After="1"), times=1)
    started = time.monotonic()
    async with client(proxy) as registry:
        assert "v05" in await registry.tags("alice/img")
        assert time.monotonic() - started >= 1.0
        assert proxy.count("GET", TAGS_PATH + ".*") == 2

        proxy.fault = when(TAGS_PATH, status(429, Retry_After="3600"))
        with pytest.raises(RegistryError) as err:
            await registry.tags("alice/img")
    assert str(err.value) == (f"local: rate limited (429) on GET {TAGS_PATH}; asked to wait 3600 s")
    assert proxy.count("GET", TAGS_PATH + ".*") == 3  # a wait that long is not waited for


async def test_5xx_retried_then_clear_failure(proxy: Proxy) -> None:
    proxy.fault = when(TAGS_PATH, status(503), times=1)
    async with client(proxy) as registry:
        assert "v05" in await registry.tags("alice/img")
        assert proxy.count("GET", TAGS_PATH + ".*") == 2
        proxy.reset()
        proxy.fault = when(TAGS_PATH, status(500))
        with pytest.raises(RegistryError) as err:
            await registry.tags("alice/img")
    assert str(err.value) == f"local: HTTP 500 from GET {TAGS_PATH}"
    assert err.value.status == 500 and err.value.retryable
    assert proxy.count("GET", TAGS_PATH + ".*") == 3


async def test_invalid_json_and_wrong_content_type(proxy: Proxy) -> None:
    async with client(proxy) as registry:
        proxy.fault = when(TAGS_PATH, status(200, '{"name": "alice/img", "tags": ['))
        with pytest.raises(RegistryError) as invalid:
            await registry.tags("alice/img")
        assert str(invalid.value) == "local: invalid JSON in the tags list of alice/img"

        proxy.fault = when(TAGS_PATH, status(200, '{"name": "alice/img"}'))
        with pytest.raises(RegistryError, match=r"^local: invalid content in the tags list"):
            await registry.tags("alice/img")

        login_page = status(200, "<html>Please log in</html>", content_type="text/html")
        proxy.fault = when(TAGS_PATH, login_page)
        with pytest.raises(RegistryError) as html:
            await registry.tags("alice/img")
        assert str(html.value) == (
            "local: unexpected content type text/html for the tags list of alice/img "
            "(expected JSON)"
        )
        proxy.fault = when(r"/v2/alice/img/manifests/latest", login_page)
        with pytest.raises(RegistryError) as manifest:
            await registry.image("alice/img", "latest")
        assert str(manifest.value) == (
            "local: unexpected content type text/html for image alice/img:latest (not a manifest)"
        )


async def test_body_over_the_limit(proxy: Proxy) -> None:
    sent, ended = [0], asyncio.Event()
    proxy.fault = when(r"/v2/_catalog", endless_body(sent, ended))
    async with client(proxy, max_body=64 * 1024) as registry:
        with pytest.raises(RegistryError) as endless:
            await registry.catalog()
        assert str(endless.value) == "local: response body over 64 KiB limit (GET /v2/_catalog)"
        # announced too big: refused before reading it
        proxy.fault = when(TAGS_PATH, status(200, json.dumps({"tags": ["x" * 100_000]})))
        with pytest.raises(RegistryError, match=r"^local: response body over 64 KiB limit"):
            await registry.tags("alice/img")
    await asyncio.wait_for(ended.wait(), 10)
    assert sent[0] < 8 * 2**20  # the endless answer was cut off, not read to the end


async def test_never_answers(proxy: Proxy) -> None:
    started = time.monotonic()
    async with client(proxy, timeout_s=0.3) as registry:
        proxy.fault = when(r"/v2/_catalog", hang())
        with pytest.raises(RegistryError) as silent:
            await registry.catalog()
        assert str(silent.value) == "local: no answer within 0.3 s to GET /v2/_catalog"
        proxy.fault = when(TAGS_PATH, stall_body())
        with pytest.raises(RegistryError) as stalled:
            await registry.tags("alice/img")
        assert str(stalled.value) == f"local: no answer within 0.3 s to GET {TAGS_PATH}"
    assert time.monotonic() - started < 2  # a timeout is not retried
    assert len(proxy.requests) == 2


async def test_a_lying_registry_is_refused(proxy: Proxy) -> None:
    cache = DigestCache()
    proxy.fault = when(
        r"/v2/alice/img/blobs/.*",
        rewrite_body(proxy, lambda b: b.replace(b"pc-x86-64", b"pc-x86-32")),
    )
    async with client(proxy, cache=cache) as registry:
        with pytest.raises(RegistryError) as blob:
            await registry.image("alice/img", "v01")
        text = str(blob.value)
        assert text.startswith("local: digest mismatch: GET /v2/alice/img/blobs/sha256:")
        assert text.endswith("(content refused)")
        config_digest = text.split("should be ")[1].split(" ")[0]
        assert await cache.get(config_digest) is None

        proxy.fault = when(
            r"/v2/alice/img/manifests/v02",
            rewrite_body(proxy, lambda b: b.replace(b'"size":', b'"size" :', 1)),
        )
        with pytest.raises(RegistryError, match=r"^local: digest mismatch: GET .*manifests/v02"):
            await registry.image("alice/img", "v02")


async def test_concurrency_is_bounded(proxy: Proxy) -> None:
    async def slow(request: web.Request) -> None:
        await asyncio.sleep(0.05)

    proxy.fault = slow
    # a shared session without a connection limit: the bound is the client's own
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as session:
        async with V2Client("local", proxy.url, concurrency=3, session=session) as registry:
            found = await asyncio.gather(*(registry.digest("alice/img", t) for t in TAGS))
        assert not session.closed  # a session it was given stays open
    assert len(set(found)) == 1
    assert proxy.max_in_flight == 3


async def test_listing_leaves_out_what_is_not_an_image(proxy: Proxy) -> None:
    """Made-up answers for a few tags: deleted, a Helm chart, schema 1, attestations only."""
    oci_manifest, oci_index = (
        f"application/vnd.oci.image.{k}.v1+json" for k in ("manifest", "index")
    )
    helm = {
        "schemaVersion": 2,
        "mediaType": oci_manifest,
        "config": {
            "mediaType": "application/vnd.cncf.helm.config.v1+json",
            "digest": "sha256:" + "0" * 64,
            "size": 2,
        },
        "layers": [],
    }
    attestations = {
        "schemaVersion": 2,
        "mediaType": oci_index,
        "manifests": [
            {
                "mediaType": oci_manifest,
                "digest": "sha256:" + "1" * 64,
                "size": 2,
                "platform": {"os": "unknown", "architecture": "unknown"},
                "annotations": {"vnd.docker.reference.type": "attestation-manifest"},
            }
        ],
    }
    answers = {
        "v04": status(404),
        "v05": status(200, json.dumps(helm), content_type=oci_manifest),
        "v06": status(
            200,
            '{"schemaVersion": 1}',
            content_type="application/vnd.docker.distribution.manifest.v1+prettyjws",
        ),
        "v07": status(200, json.dumps(attestations), content_type=oci_index),
    }

    async def made_up(request: web.Request) -> web.StreamResponse | None:
        tag = request.path.rpartition("/")[2]
        fault = answers.get(tag) if "/manifests/" in request.path else None
        return await fault(request) if fault else None

    proxy.fault = made_up
    found = await RegistryV2Source(entry(proxy)).list_images()
    assert sorted(i.tag for i in found) == sorted(t for t in TAGS if t not in answers)
    async with client(proxy) as registry:
        with pytest.raises(Unsupported, match=r"^local: alice/img:v05 is not a container image"):
            await registry.image("alice/img", "v05")
        with pytest.raises(Unsupported, match=r"^local: image alice/img:v06 is a Docker schema 1"):
            await registry.image("alice/img", "v06")
        with pytest.raises(Unsupported, match=r"^local: alice/img:v07: the manifest list holds no"):
            await registry.image("alice/img", "v07")


async def test_credentials_stay_with_their_server(proxy: Proxy, registry: Registry) -> None:
    """Blobs may be redirected to storage elsewhere: no Authorization goes there."""
    seen: list[str | None] = []

    async def record(request: web.Request) -> None:
        seen.append(request.headers.get("Authorization"))

    async with Proxy(registry.url) as storage:
        storage.fault = record

        async def challenge_then_redirect(request: web.Request) -> web.StreamResponse | None:
            if "Authorization" not in request.headers:
                return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="x"'})
            if "/blobs/" in request.path:
                raise web.HTTPTemporaryRedirect(storage.url + request.path)
            return None

        proxy.fault = challenge_then_redirect
        async with client(proxy, creds=CREDS) as registry_client:
            image = await registry_client.image("alice/img", "v03")
    assert image.labels["walt.node.models"] == "pc-x86-64"
    assert storage.count("GET", r"/v2/alice/img/blobs/sha256:[0-9a-f]{64}") == 1
    assert seen == [None]  # the storage got the request without credentials


async def test_a_challenge_from_a_redirect_target_gets_no_credentials(
    proxy: Proxy, registry: Registry
) -> None:
    """The registry (Basic) redirects blobs to storage elsewhere, whose 401 names a Bearer realm
    of its own: neither the storage nor that realm gets the credentials."""
    seen: list[str | None] = []
    async with Proxy(registry.url) as storage, Proxy(registry.url) as realm:

        async def challenge(request: web.Request) -> web.StreamResponse:
            seen.append(request.headers.get("Authorization"))
            bearer = f'Bearer realm="{realm.url}/token",service="storage"'
            return web.Response(status=401, headers={"WWW-Authenticate": bearer})

        async def basic_then_redirect(request: web.Request) -> web.StreamResponse | None:
            if "Authorization" not in request.headers:
                return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="x"'})
            if "/blobs/" in request.path:
                raise web.HTTPTemporaryRedirect(storage.url + request.path)
            return None

        storage.fault = challenge
        proxy.fault = basic_then_redirect
        async with client(proxy, creds=CREDS) as registry_client:
            with pytest.raises(AuthError) as err:
                await registry_client.image("alice/img", "v03")
    assert str(err.value) == (
        f"local: authentication required (401) by 127.0.0.1:{storage.port}, where the registry "
        "redirected the request for the config of alice/img:v03: no credentials are sent there"
    )
    assert seen == [None]  # asked once, without credentials
    assert realm.requests == []
    no_secret(err.value)


async def test_tls_to_a_plain_http_registry_says_so(proxy: Proxy) -> None:
    https = proxy.url.replace("http://", "https://")
    for verify in (True, False):  # https, https-no-verify: no certificate to blame either way
        async with V2Client("local", https, verify_tls=verify) as registry:
            with pytest.raises(RegistryError) as err:
                await registry.catalog()
        assert str(err.value) == (
            f"local: TLS handshake with 127.0.0.1:{proxy.port} failed (wrong version number); "
            "a plain-HTTP registry needs protocol http"
        )


async def test_one_broken_image_is_left_out_of_the_listing(proxy: Proxy) -> None:
    """Made-up manifests for a few tags; the other tags are the real registry's."""
    oci_manifest = "application/vnd.oci.image.manifest.v1+json"
    answers = {
        "v01": status(200, json.dumps({"pad": "x" * 100_000}), content_type=oci_manifest),
        "v02": rewrite_body(proxy, lambda b: b.replace(b'"size":', b'"size" :', 1)),
        "v03": status(200, '{"schemaVersion": 2, ', content_type=oci_manifest),
        "v04": status(200, "[]", content_type=oci_manifest),
    }

    async def made_up(request: web.Request) -> web.StreamResponse | None:
        tag = request.path.rpartition("/")[2]
        fault = answers.get(tag) if "/manifests/" in request.path else None
        return await fault(request) if fault else None

    proxy.fault = made_up
    with structlog.testing.capture_logs() as logs:
        found = await RegistryV2Source(entry(proxy), max_body=64 * 1024).list_images()
    assert sorted(i.tag for i in found) == sorted(t for t in TAGS if t not in answers)
    skipped = {r["image"]: r["error"] for r in logs if r["event"] == "registry_image_skipped"}
    manifests = "/v2/alice/img/manifests"
    assert skipped.pop("alice/img:v01") == (
        f"local: response body over 64 KiB limit (GET {manifests}/v01)"
    )
    assert skipped.pop("alice/img:v02").startswith(f"local: digest mismatch: GET {manifests}/v02")
    assert skipped == {
        "alice/img:v03": "local: invalid JSON in image alice/img:v03",
        "alice/img:v04": "local: invalid manifest for image alice/img:v04",
    }


async def test_a_listing_runs_a_bounded_pool_and_caps_what_it_reads(proxy: Proxy) -> None:
    """Made-up catalog and tag lists (tests/support fan_out) over the real alice/img:latest."""
    repositories = ["u0/img", "u1/img", "u2/img"]
    fan = fan_out(proxy, repositories, 300, "alice/img:latest")
    baseline = len(asyncio.all_tasks())
    most = [0]

    async def counting(request: web.Request) -> web.StreamResponse | None:
        most[0] = max(most[0], len(asyncio.all_tasks()))
        return await fan(request)

    proxy.fault = counting
    source = RegistryV2Source(entry(proxy), concurrency=4, max_tags=250, max_images=600)
    with structlog.testing.capture_logs() as logs:
        found = await source.list_images()
    # the proxy's connections and the pool's workers, not a task per tag
    assert most[0] - baseline < 30
    per_repository = Counter(f"{i.user}/{i.name}" for i in found)
    assert sorted(per_repository.values()) == [100, 250, 250]
    tags_capped = [r for r in logs if r["event"] == "registry_tags_capped"]
    assert sorted(r["repository"] for r in tags_capped) == repositories
    assert {(r["tags"], r["inspected"], r["log_level"]) for r in tags_capped} == {
        (300, 250, "warning")
    }
    (images_capped,) = [r for r in logs if r["event"] == "registry_images_capped"]
    assert (images_capped["registry"], images_capped["inspected"]) == ("local", 600)


async def test_the_clients_of_a_source_share_one_bound(proxy: Proxy) -> None:
    async def slow(request: web.Request) -> None:
        await asyncio.sleep(0.05)

    proxy.fault = slow
    source = RegistryV2Source(entry(proxy), concurrency=3)
    found = await asyncio.gather(*(source.list_images() for _ in range(3)))
    assert all(len(images) == len(TAGS) for images in found)
    assert proxy.max_in_flight == 3  # three searches at once, still three requests at most
