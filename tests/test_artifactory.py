"""JFrog Artifactory's repository-path layout, against a real registry behind a thin proxy.

The proxy (tests/support/registry_artifactory.py) only rewrites the catalog, the one route
where Artifactory differs (`/v2/<repository>/_catalog`, none at the root); images, manifests,
blobs and the htpasswd authentication are the real docker-registry's.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tests.support.labs import running_lab
from tests.support.registry_artifactory import ArtifactoryProxy
from tests.support.registry_images import build, push_tags
from waltd import config
from waltd.registries.artifactory import ArtifactorySource
from waltd.registries.base import AuthError, Credentials, NotFound
from waltd.registries.v2.client import V2Client

pytestmark = [pytest.mark.lab, pytest.mark.asyncio(loop_scope="module")]

USER, PASSWORD = "jfrog-user", "jfrog pass 42"
CREDS = Credentials(USER, PASSWORD)
TAGS = ["latest", "1.0", "1.1"]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def proxy() -> AsyncIterator[ArtifactoryProxy]:
    """Artifactory repositories `walt` and `other` over an htpasswd registry."""
    async with running_lab("buildah", "skopeo", "docker-registry", "htpasswd") as lab:
        await asyncio.gather(
            build(lab, "docker.io/t/walt:latest", {"walt.node.models": "rpi-4-b"}),
            build(lab, "docker.io/t/plain:latest", {"purpose": "not walt"}),
        )
        registry = await lab.start_registry("jfrog", auth=(USER, PASSWORD))
        pushes = [
            ("walt", "walt/rpi-image", TAGS),
            ("walt", "walt/second", ["latest"]),
            ("plain", "walt/plain", ["latest"]),  # not a WalT image
            ("walt", "walt/deep/image", ["latest"]),  # not <repository>/<name>
            ("walt", "other/foreign", ["latest"]),  # another Artifactory repository
        ]
        await asyncio.gather(
            *(push_tags(lab, f"docker.io/t/{i}:latest", registry, r, t) for i, r, t in pushes)
        )
        async with ArtifactoryProxy(registry.url) as running:
            yield running


def source(proxy: ArtifactoryProxy, repository: str = "walt") -> ArtifactorySource:
    """The `jfrog-artifactory` entry of the proxy for `repository`."""
    entry = config.Registry(
        "jfrog", "jfrog-artifactory", "JFrog", "127.0.0.1", proxy.port, "http", "basic", repository
    )
    return ArtifactorySource(entry)


async def test_lists_the_repository_images_with_the_repository_as_user(
    proxy: ArtifactoryProxy,
) -> None:
    proxy.reset()
    found = await source(proxy).list_images(CREDS)
    assert sorted((i.user, i.name, i.tag) for i in found) == sorted(
        [*(("walt", "rpi-image", t) for t in TAGS), ("walt", "second", "latest")]
    )
    image = next(i for i in found if i.tag == "1.1")
    assert image.clone_url == "jfrog:walt/rpi-image:1.1"
    assert image.models == ("rpi-4-b",)
    assert proxy.count("GET", r"/v2/_catalog.*") == 0  # only the repository's catalog
    # the first request meets the Basic challenge; later ones carry the credentials at once
    assert proxy.count("GET", r"/v2/walt/_catalog\?n=\d+") == 2
    assert proxy.count("GET", r"/v2/walt/rpi-image/tags/list\?n=\d+") == 1

    other = await source(proxy, "other").list_images(CREDS)
    assert [(i.user, i.name) for i in other] == [("other", "foreign")]


async def test_catalog_pages_and_authentication(proxy: ArtifactoryProxy) -> None:
    async with V2Client("jfrog", proxy.url, creds=CREDS, path_prefix="walt", page_size=1) as client:
        assert sorted(await client.catalog()) == ["deep/image", "plain", "rpi-image", "second"]
    assert proxy.count("GET", r"/v2/walt/_catalog\?last=.*") == 3
    with pytest.raises(AuthError, match=r"^jfrog: authentication required \(401\)"):
        await source(proxy).list_images()


async def test_resolve_and_transport_use_the_repository_path(proxy: ArtifactoryProxy) -> None:
    jfrog = source(proxy)
    info = await jfrog.resolve("walt", "rpi-image", "1.0", CREDS)
    assert (info.user, info.name, info.tag, info.models) == (
        "walt",
        "rpi-image",
        "1.0",
        ("rpi-4-b",),
    )
    assert info.digest is not None and info.digest.startswith("sha256:")
    assert jfrog.transport("walt", "rpi-image", "1.0") == (
        f"docker://127.0.0.1:{proxy.port}/walt/rpi-image:1.0"
    )
    with pytest.raises(NotFound, match=r"^jfrog: no image bob/rpi-image: images of this registry"):
        await jfrog.resolve("bob", "rpi-image", "1.0", CREDS)
    with pytest.raises(NotFound, match=r"^jfrog: image missing:latest not found \(404\)"):
        await jfrog.resolve("walt", "missing", "latest", CREDS)
