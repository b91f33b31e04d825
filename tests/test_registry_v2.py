"""The registry v2 client and source against real docker-registry servers of the lab.

The registries, images and tags are real (docker-registry, buildah, skopeo). Where a test needs
what docker-registry cannot do (Bearer tokens) or needs to count requests, a thin proxy of
tests/support sits in front of it; each such test says which part is fake.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from pathlib import Path

import pytest
import pytest_asyncio
from aiohttp import web
from multidict import CIMultiDict, CIMultiDictProxy

from lab import Lab, Registry, push_image
from tests.conftest import require_tool
from tests.support.labs import running_lab
from tests.support.registry_images import (
    DOCKER_LIST,
    build,
    config_blob,
    entry,
    push_tags,
    put_list,
)
from tests.support.registry_proxy import Proxy
from tests.support.registry_token import TokenProxy
from waltd.registries.base import AuthError, Credentials, ImageInfo, RegistryError, authfile
from waltd.registries.cache import CacheStats, DigestCache, digest_of
from waltd.registries.v2 import protocol
from waltd.registries.v2.client import V2Client
from waltd.registries.v2.protocol import OCI_INDEX
from waltd.registries.v2.source import RegistryV2Source

pytestmark = pytest.mark.asyncio(loop_scope="module")
lab_test = pytest.mark.lab

USER, PASSWORD = "walt-user", "pw with spaces, and s3cret"
TAGS = [f"v{i:02d}" for i in range(30)]
MODELS_A = "pc-x86-64,pc-x86-32"
MODELS_B = "rpi-3-b,rpi-4-b"
MODELS_MULTI = "pc-x86-64,rpi-2-b,rpi-3-b,rpi-4-b"
ARCHES = {  # tag -> (architecture, variant, platform in a list)
    "amd64": ("amd64", "", {"os": "linux", "architecture": "amd64"}),
    "arm64": ("arm64", "v8", {"os": "linux", "architecture": "arm64", "variant": "v8"}),
    "armv7": ("arm", "v7", {"os": "linux", "architecture": "arm", "variant": "v7"}),
}
MULTI_TAGS = ["amd64", "arm64", "armv7", "latest", "docker-list", "no-arm64"]


@dataclass
class World:
    """The lab's registries and what they hold."""

    lab: Lab
    anon: Registry
    auth: Registry
    digests: dict[str, str]  # "repo:tag" -> manifest digest
    created: dict[str, str]  # image -> config `created`


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def lab() -> AsyncIterator[Lab]:
    """One lab for the module."""
    async with running_lab("buildah", "skopeo", "docker-registry", "htpasswd") as running:
        yield running


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def world(lab: Lab) -> World:
    """An anonymous registry and an htpasswd one holding WalT and other images, many tags."""
    images = {
        "a": {"walt.node.models": MODELS_A, "walt.image.preferred-name": "a"},
        "b": {"walt.node.models": MODELS_B, "walt.server.minversion": "7"},
        "plain": {"org.example.purpose": "not a walt image"},
    }
    await asyncio.gather(
        *(build(lab, f"docker.io/test/{name}:latest", labels) for name, labels in images.items()),
        *(
            build(
                lab,
                f"docker.io/test/{tag}:latest",
                {"walt.node.models": MODELS_MULTI, "test.arch": tag},
                arch=arch,
                variant=variant,
            )
            for tag, (arch, variant, _) in ARCHES.items()
        ),
    )
    anon, auth = await asyncio.gather(
        lab.start_registry("anon"), lab.start_registry("auth", auth=(USER, PASSWORD))
    )
    digests: dict[str, str] = {}

    async def push(image: str, registry: Registry, repo: str, tags: list[str]) -> None:
        digest = await push_tags(lab, f"docker.io/test/{image}:latest", registry, repo, tags)
        if registry is anon:
            digests.update({f"{repo}:{tag}": digest for tag in tags})

    await asyncio.gather(
        push("a", anon, "alice/walt-a", ["latest", *TAGS]),
        push("b", anon, "bob/walt-b", TAGS),
        push("plain", anon, "carol/plain", TAGS),
        push("a", anon, "solo", ["latest"]),  # not user/name
        push("a", anon, "deep/er/walt-a", ["latest"]),  # not user/name either
        *(push(tag, anon, "multi/arch", [tag]) for tag in ARCHES),
        push("a", auth, f"{USER}/img", ["latest", *TAGS[:5]]),
        push("plain", auth, f"{USER}/plain", ["latest"]),
    )
    platforms = {tag: platform for tag, (_, _, platform) in ARCHES.items()}
    digests["multi/arch:latest"] = await put_list(anon, "multi/arch", "latest", platforms.items())
    digests["multi/arch:docker-list"] = await put_list(
        anon, "multi/arch", "docker-list", platforms.items(), DOCKER_LIST
    )
    no_arm64 = [(t, platforms[t]) for t in ("amd64", "armv7")]
    digests["multi/arch:no-arm64"] = await put_list(anon, "multi/arch", "no-arm64", no_arm64)
    created = {
        "a": str((await config_blob(anon, "alice/walt-a", "latest"))["created"]),
        "b": str((await config_blob(anon, "bob/walt-b", "v00"))["created"]),
        **{t: str((await config_blob(anon, "multi/arch", t))["created"]) for t in ARCHES},
    }
    return World(lab, anon, auth, digests, created)


def _by_ref(images: list[ImageInfo]) -> dict[str, ImageInfo]:
    refs = {f"{i.user}/{i.name}:{i.tag}": i for i in images}
    assert len(refs) == len(images)
    return refs


# ---- listing ---------------------------------------------------------------------------------


@lab_test
async def test_lists_exactly_the_walt_images_with_labels_digests_and_dates(world: World) -> None:
    cache = DigestCache()
    found = _by_ref(await RegistryV2Source(entry(world.anon), cache=cache).list_images())

    expected = {
        *(f"alice/walt-a:{t}" for t in ["latest", *TAGS]),
        *(f"bob/walt-b:{t}" for t in TAGS),
        *(f"multi/arch:{t}" for t in MULTI_TAGS),
    }
    assert set(found) == expected  # no carol/plain, no solo, no deep/er/walt-a
    for ref, info in found.items():
        assert info.digest == world.digests[ref]
        assert (info.location, info.kind) == ("local", "custom registry")
    a = found["alice/walt-a:v07"]
    assert a.models == ("pc-x86-64", "pc-x86-32")
    assert a.labels["walt.image.preferred-name"] == "a"
    assert a.created == world.created["a"]
    assert a.clone_url == "local:alice/walt-a:v07"
    assert found["alice/walt-a:latest"].clone_url == "local:alice/walt-a"
    assert found["bob/walt-b:v29"].minversion == 7
    assert found["bob/walt-b:v29"].created == world.created["b"]
    assert a.platforms == ()
    multi = found["multi/arch:latest"]
    assert multi.platforms == ("linux/amd64", "linux/arm64", "linux/arm/v7")
    assert multi.labels["test.arch"] == "amd64"  # without a model: amd64 first
    assert multi.created == world.created["amd64"]
    assert found["multi/arch:no-arm64"].platforms == ("linux/amd64", "linux/arm/v7")


@lab_test
async def test_htpasswd_registry_wants_the_right_credentials(world: World) -> None:
    source = RegistryV2Source(entry(world.auth))
    found = _by_ref(await source.list_images(Credentials(USER, PASSWORD)))
    assert set(found) == {f"{USER}/img:{t}" for t in ["latest", *TAGS[:5]]}
    assert found[f"{USER}/img:v03"].models == ("pc-x86-64", "pc-x86-32")

    with pytest.raises(AuthError, match=r"^local: authentication required \(401\)") as anonymous:
        await source.list_images()
    wrong = Credentials(USER, "not-" + PASSWORD)
    with pytest.raises(AuthError, match=r"^local: authentication refused \(401\)") as refused:
        await source.list_images(wrong)
    for err in (anonymous.value, refused.value):
        assert err.status == 401
        assert PASSWORD not in str(err) and "not-" not in str(err)


@lab_test
async def test_resolve_and_transport_agree_with_skopeo(world: World) -> None:
    """The transport string works with the real skopeo, credentials through an authfile."""
    lab = world.lab
    source = RegistryV2Source(entry(world.anon))
    info = await source.resolve("alice", "walt-a", "v05")
    assert info.digest == world.digests["alice/walt-a:v05"]
    transport = source.transport("alice", "walt-a", "v05")
    assert transport == f"docker://127.0.0.1:{world.anon.port}/alice/walt-a:v05"
    inspect = ["skopeo", "inspect", "--tls-verify=false", "--format", "{{.Digest}}"]
    assert (await lab.run([*inspect, transport])).stdout.strip() == info.digest

    private = RegistryV2Source(entry(world.auth, "private"))
    creds = Credentials(USER, PASSWORD)
    info = await private.resolve(USER, "img", "v01", creds)
    async with authfile(private.registry_host, creds) as path:
        assert path is not None
        argv = [*inspect, "--authfile", str(path), private.transport(USER, "img", "v01")]
        assert (await lab.run(argv)).stdout.strip() == info.digest
    assert private.registry_host == f"127.0.0.1:{world.auth.port}"
    assert private.skopeo_options() == ["--src-tls-verify=false"]  # protocol http


@lab_test
async def test_platform_is_chosen_by_node_model(world: World) -> None:
    async with V2Client("local", world.anon.url) as client:

        async def arch(tag: str, model: str) -> tuple[str | None, str]:
            image = await client.image("multi/arch", tag, (model,))
            return image.platform, image.labels["test.arch"]

        for tag in ("latest", "docker-list"):
            assert await arch(tag, "pc-x86-64") == ("linux/amd64", "amd64")
            for model in ("rpi-3-b", "rpi-3-b-plus", "rpi-4-b", "rpi-400", "rpi-5-b"):
                assert await arch(tag, model) == ("linux/arm64", "arm64")
            assert await arch(tag, "rpi-2-b") == ("linux/arm/v7", "armv7")
        # no arm64 offered: the 64-bit boards fall back to arm/v7
        assert await arch("no-arm64", "rpi-4-b") == ("linux/arm/v7", "armv7")
        # single-platform images are taken as they are
        assert await arch("amd64", "rpi-4-b") == ("linux/amd64", "amd64")

        index = await client.image("multi/arch", "latest", ("rpi-4-b",))
        assert index.media_type == OCI_INDEX
        assert index.digest == world.digests["multi/arch:latest"]
        assert index.platforms == ("linux/amd64", "linux/arm64", "linux/arm/v7")
        listed = await client.image("multi/arch", "docker-list")
        assert listed.media_type == DOCKER_LIST
        with pytest.raises(RegistryError, match=r"^local: multi/arch:latest: no image for rpi-b"):
            await client.image("multi/arch", "latest", ("rpi-b",))
        by_digest = await client.image("multi/arch", index.digest, ("pc-x86-64",))
        assert by_digest.digest == index.digest and by_digest.labels["test.arch"] == "amd64"


@lab_test
async def test_catalog_follows_link_pagination(world: World) -> None:
    async with Proxy(world.anon.url) as proxy:
        async with V2Client("local", proxy.url, page_size=2) as client:
            catalog = await client.catalog()
            tags = await client.tags("alice/walt-a")
    assert catalog == sorted(
        ["alice/walt-a", "bob/walt-b", "carol/plain", "deep/er/walt-a", "multi/arch", "solo"]
    )
    assert proxy.counts()["GET", "catalog"] == math.ceil(len(catalog) / 2)
    assert sorted(tags) == sorted(["latest", *TAGS])


# ---- Bearer tokens ---------------------------------------------------------------------------


@lab_test
async def test_bearer_tokens_one_per_scope(world: World) -> None:
    """Only the auth layer is fake: a token-issuing proxy in front of the real registry."""
    async with TokenProxy(world.anon.url, users={"alice": "tok-pass"}) as proxy:
        source = RegistryV2Source(entry(proxy))
        found = await source.list_images(Credentials("alice", "tok-pass"))
        direct = await RegistryV2Source(entry(world.anon)).list_images()
        assert sorted(map(_key, found)) == sorted(map(_key, direct))
        scopes = [scope for _, scope in proxy.issued]
        assert len(scopes) == len(set(scopes))  # fetched once, reused by every request
        assert set(scopes) == {
            "registry:catalog:*",
            *(f"repository:{r}:pull" for r in ("alice/walt-a", "bob/walt-b", "carol/plain")),
            "repository:multi/arch:pull",
        }
        assert {user for user, _ in proxy.issued} == {"alice"}

        with pytest.raises(AuthError, match=r"^local: authentication refused \(401\)") as err:
            await source.list_images(Credentials("alice", "tok-wrong"))
        with pytest.raises(AuthError, match=r"^local: authentication required \(401\)"):
            await source.list_images()
        assert "tok-wrong" not in str(err.value)
        assert not any(token in str(err.value) for token in proxy.tokens)


@lab_test
async def test_bearer_tokens_anonymous_renewed_and_rechallenged(world: World) -> None:
    """Only the auth layer is fake: a token-issuing proxy in front of the real registry."""
    now = [0.0]  # the client's clock: tokens age without the test waiting
    async with (
        TokenProxy(world.anon.url, anonymous=True, expires_in=60) as proxy,
        V2Client("local", proxy.url, clock=lambda: now[0]) as client,
    ):
        assert "v00" in await client.tags("alice/walt-a")
        assert await client.tags("alice/walt-a")
        assert proxy.issued == [(None, "repository:alice/walt-a:pull")]
        now[0] = 55.0  # past the renewal point (60 s less a 6 s margin), before the expiry
        await client.tags("alice/walt-a")
        assert len(proxy.issued) == 2
        unauthorised = proxy.count("GET", r"/v2/alice/walt-a/tags/list\?n=\d+")
        proxy.revoke_all()  # tokens refused from now on: the client is challenged again
        assert await client.tags("alice/walt-a")
        assert len(proxy.issued) == 3
        assert proxy.count("GET", r"/v2/alice/walt-a/tags/list\?n=\d+") == unauthorised + 2


async def _self_signed(lab: Lab, folder: Path) -> ssl.SSLContext:
    """A server TLS context with a new self-signed certificate for 127.0.0.1."""
    require_tool("openssl")
    key, cert = folder / "key.pem", folder / "cert.pem"
    await lab.run(
        [
            *("openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt"),
            *("ec_paramgen_curve:prime256v1", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1"),
            *("-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)),
        ]
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    return context


@lab_test
async def test_https_verified_or_not(world: World, tmp_path: Path) -> None:
    """A TLS-terminating proxy with a self-signed certificate in front of the real registry."""
    context = await _self_signed(world.lab, tmp_path)
    async with Proxy(world.anon.url, tls=context) as proxy:
        verified = replace(entry(proxy), protocol="https")
        with pytest.raises(RegistryError) as err:
            await RegistryV2Source(verified).list_images()
        assert str(err.value) == (
            f"local: TLS certificate of 127.0.0.1:{proxy.port} not trusted (self-signed "
            "certificate); protocol https-no-verify skips the check"
        )
        unverified = RegistryV2Source(replace(verified, protocol="https-no-verify"))
        assert unverified.base_url == f"https://127.0.0.1:{proxy.port}"
        assert RegistryV2Source(verified).skopeo_options() == []
        assert unverified.skopeo_options() == ["--src-tls-verify=false"]
        assert len(await unverified.list_images()) == 67


@lab_test
async def test_https_no_verify_is_for_the_registry_alone(world: World, tmp_path: Path) -> None:
    """TLS proxies with a self-signed certificate: the registry, and storage it redirects to."""
    context = await _self_signed(world.lab, tmp_path)
    async with (
        Proxy(world.anon.url, tls=context) as registry,
        Proxy(world.anon.url, tls=context) as storage,
    ):

        async def blobs_elsewhere(request: web.Request) -> web.StreamResponse | None:
            if "/blobs/" in request.path:
                raise web.HTTPTemporaryRedirect(storage.url + request.path)
            return None

        registry.fault = blobs_elsewhere
        async with V2Client("local", registry.url, verify_tls=False) as client:
            with pytest.raises(RegistryError) as err:
                await client.image("alice/walt-a", "v01")
    # the registry's own certificate was not checked, the storage's was (no advice: the
    # protocol setting is about the registry)
    assert str(err.value) == (
        f"local: TLS certificate of 127.0.0.1:{storage.port} not trusted (self-signed certificate)"
    )
    assert registry.count("GET", r"/v2/alice/walt-a/blobs/.*") == 1
    assert storage.requests == []  # refused in the handshake


def _key(info: ImageInfo) -> tuple[str, str, str, str | None]:
    return (info.user, info.name, info.tag, info.digest)


# ---- cache -----------------------------------------------------------------------------------


@lab_test
async def test_warm_listing_rereads_only_what_changed(world: World, tmp_path: Path) -> None:
    """A proxy in front of the real registry counts the requests."""
    lab = world.lab
    registry = await lab.start_registry("cache")
    await push_tags(lab, "docker.io/test/a:latest", registry, "dave/img", TAGS[:20])
    cache = DigestCache(tmp_path / "cache")
    async with Proxy(registry.url) as proxy:
        source = RegistryV2Source(entry(proxy), cache=cache, concurrency=4)
        cold = _by_ref(await source.list_images())
        assert len(cold) == 20
        counts = proxy.counts()
        assert counts["GET", "manifests"] == 20 and counts["HEAD", "manifests"] == 0
        assert counts["GET", "blobs"] == 1  # one config for 20 tags
        assert 2 <= proxy.max_in_flight <= 4

        await push_image(lab, "docker.io/test/b:latest", registry, "dave/img:v07")
        proxy.reset()
        warm = _by_ref(await source.list_images())
        counts = proxy.counts()
        assert counts["HEAD", "manifests"] == 20
        assert counts["GET", "manifests"] == 1 and counts["GET", "blobs"] == 1
        assert warm["dave/img:v07"].models == ("rpi-3-b", "rpi-4-b")
        assert warm["dave/img:v07"].digest != cold["dave/img:v07"].digest
        assert warm["dave/img:v06"] == cold["dave/img:v06"]

        # a new process: the disk has every manifest, config and tag: HEADs only (the
        # listing wrote them in the background; the daemon waits for that at shutdown)
        await cache.flush()
        proxy.reset()
        fresh = RegistryV2Source(entry(proxy), cache=DigestCache(tmp_path / "cache"))
        assert _by_ref(await fresh.list_images()) == warm
        assert proxy.counts()["GET", "blobs"] == 0
        assert proxy.counts()["GET", "manifests"] == 0
        assert proxy.counts()["HEAD", "manifests"] == 20


def _folder(path: Path) -> tuple[list[str], int]:
    """File names in `path`, and its mode."""
    return sorted(p.name for p in path.iterdir()), path.stat().st_mode & 0o777


async def test_cache_memory_bound_and_disk_checks(tmp_path: Path) -> None:
    blobs = [json.dumps({"n": i, "pad": "x" * 1000}).encode() for i in range(20)]
    digests = [digest_of(b) for b in blobs]
    cache = DigestCache(tmp_path, max_memory=8000)
    for digest, blob in zip(digests, blobs, strict=True):
        await cache.put(digest, blob)
    assert 0 < cache.stats().memory_bytes <= 8000
    assert os.listdir(tmp_path) == []  # written together, at flush
    await cache.flush()
    files, mode = _folder(tmp_path)
    assert files == sorted(d.replace(":", "-") + ".json" for d in digests)
    assert mode == 0o700

    fresh = DigestCache(tmp_path)
    assert await fresh.get(digests[0]) == blobs[0]  # from disk, checked
    (tmp_path / (digests[1].replace(":", "-") + ".json")).write_bytes(blobs[2])
    assert await fresh.get(digests[1]) is None  # tampered: a miss, and gone
    assert not (tmp_path / (digests[1].replace(":", "-") + ".json")).exists()
    with pytest.raises(ValueError, match="does not match"):
        await fresh.put(digests[3], blobs[4])
    assert await fresh.get("sha256:../../etc/passwd") is None
    assert await DigestCache().get(digests[0]) is None  # memory only: nothing on disk


async def test_saved_tag_map_round_trip_and_garbage(tmp_path: Path) -> None:
    digest = digest_of(b"{}")
    cache = DigestCache(tmp_path)
    cache.remember_tag("reg/user/img:latest", digest)
    await cache.flush()
    assert DigestCache(tmp_path).tag_digest("reg/user/img:latest") == digest
    for garbage in (b"\xff{", b"[1, 2]", b'{"k": "not-a-digest"}'):
        (tmp_path / "tags.json").write_bytes(garbage)
        assert DigestCache(tmp_path).tag_digest("k") is None  # a cold start, not a crash


async def test_cache_writes_to_disk_once_enough_waits(tmp_path: Path) -> None:
    blobs = [json.dumps({"n": i, "pad": "x" * 1000}).encode() for i in range(20)]
    cache = DigestCache(tmp_path, max_unwritten=5000)
    for blob in blobs:
        await cache.put(digest_of(blob), blob)
        assert cache.stats().unwritten_bytes <= 5000
    assert len(os.listdir(tmp_path)) >= 15  # without a call of flush()
    await cache.flush()
    assert len(os.listdir(tmp_path)) == 20


async def test_a_background_write_is_awaited_by_flush(tmp_path: Path) -> None:
    """flush_soon returns at once (a search does not wait for the disk); the owner's
    flush() waits for that write, so nothing is lost at shutdown."""
    blobs = [json.dumps({"n": i}).encode() for i in range(50)]
    cache = DigestCache(tmp_path)
    for blob in blobs:
        await cache.put(digest_of(blob), blob)
    cache.remember_tag("reg/u/img:latest", digest_of(blobs[0]))
    cache.flush_soon()
    cache.flush_soon()  # one write at a time
    assert os.listdir(tmp_path) == []  # nothing waited for the disk yet
    await cache.flush()
    assert len(os.listdir(tmp_path)) == 50 + 1  # the entries and the tag map
    assert DigestCache(tmp_path).tag_digest("reg/u/img:latest") == digest_of(blobs[0])


async def test_cache_counts_concurrent_disk_reads_once(tmp_path: Path) -> None:
    blob = b"x" * 1000
    writer = DigestCache(tmp_path)
    await writer.put(digest_of(blob), blob)
    await writer.flush()
    cache = DigestCache(tmp_path, max_memory=4096)
    for _ in range(2):
        found = await asyncio.gather(*(cache.get(digest_of(blob)) for _ in range(5)))
        assert found == [blob] * 5
    # one entry of 1000 bytes, not 10 reads' worth, which would evict everything
    assert cache.stats() == CacheStats(memory_entries=1, memory_bytes=1000, unwritten_bytes=0)


def _headers(*pairs: tuple[str, str]) -> CIMultiDictProxy[str]:
    return CIMultiDictProxy(CIMultiDict(pairs))


async def test_protocol_reads_challenges_links_and_retry_after() -> None:
    both = _headers(
        ("WWW-Authenticate", 'Basic realm="r"'),
        ("WWW-Authenticate", 'Bearer realm="https://auth.example/token",service=reg,scope="a b"'),
    )
    assert protocol.challenge(both) == (
        "bearer",
        {"realm": "https://auth.example/token", "service": "reg", "scope": "a b"},
    )
    assert protocol.challenge(_headers(("WWW-Authenticate", "Negotiate x"))) is None
    link = _headers(("Link", '</v2/_catalog?last=b&n=2>; rel="next"'))
    assert protocol.next_page(link) == "/v2/_catalog?last=b&n=2"
    assert protocol.next_page(_headers(("Link", '</x>; rel="prev"'))) is None
    assert protocol.retry_after(_headers(("Retry-After", "7"))) == 7
    date = _headers(("Retry-After", "Thu, 01 Jan 1970 00:01:40 GMT"))
    assert protocol.retry_after(date, now=40) == 60
    assert protocol.retry_after(_headers(("Retry-After", "soon"))) is None


async def test_protocol_manifest_types_scopes_and_error_codes() -> None:
    assert protocol.manifest_type(None, {"manifests": []}) == OCI_INDEX
    assert protocol.manifest_type(protocol.MANIFEST_V2, {}) == protocol.MANIFEST_V2
    assert protocol.manifest_type(None, {"mediaType": "x/y", "config": {}}) == "x/y"
    assert protocol.manifest_type(None, {"schemaVersion": 1}) in protocol.SCHEMA1
    assert protocol.scope("/v2/a/b/manifests/latest") == "repository:a/b:pull"
    assert protocol.scope("/v2/_catalog") == "registry:catalog:*"
    assert protocol.error_code(b'{"errors": [{"code": "NAME_UNKNOWN"}]}') == "NAME_UNKNOWN"
    assert protocol.error_code(b'{"errors": [{"code": "\\u001b[2J"}]}') is None
