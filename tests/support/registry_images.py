"""Test images in the lab's real registries: built offline with buildah, pushed with skopeo.

Many tags cost one push: further tags of an image are PUTs of the same manifest. Multi-platform
images are manifest lists / OCI indexes PUT over single-platform images pushed first.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence

import aiohttp

from lab import Lab, Registry, build_image, push_image
from tests.support.registry_proxy import Proxy
from waltd import config

DOCKER_LIST = "application/vnd.docker.distribution.manifest.list.v2+json"
OCI_INDEX = "application/vnd.oci.image.index.v1+json"
_ACCEPT = ", ".join(
    (
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        DOCKER_LIST,
        OCI_INDEX,
    )
)


def entry(registry: Registry | Proxy, label: str = "local") -> config.Registry:
    """A `docker-registry-v2` configuration entry (plain HTTP) for a lab registry or a proxy."""
    port = registry.port
    return config.Registry(label, "docker-registry-v2", "test", "127.0.0.1", port, "http")


async def build(
    lab: Lab,
    name: str,
    labels: Mapping[str, str],
    *,
    arch: str = "amd64",
    variant: str = "",
) -> str:
    """Build `name` (a full name, docker.io/...) from scratch with `labels`; return its id.

    Each image gets one small layer of its own, so that images never share a digest.
    """
    files = {"marker": name}
    return await build_image(lab, name, None, files, labels=labels, arch=arch, variant=variant)


def _headers(registry: Registry, **extra: str) -> dict[str, str]:
    headers = dict(extra)
    if registry.auth is not None:
        headers["Authorization"] = aiohttp.encode_basic_auth(*registry.auth)
    return headers


async def manifest(registry: Registry, repo: str, ref: str) -> tuple[bytes, str, str]:
    """The manifest of `repo:ref` as stored: (bytes, media type, digest)."""
    url = f"{registry.url}/v2/{repo}/manifests/{ref}"
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, headers=_headers(registry, Accept=_ACCEPT)) as response,
    ):
        response.raise_for_status()
        body = await response.read()
        return body, response.headers["Content-Type"], "sha256:" + hashlib.sha256(body).hexdigest()


async def put_manifest(
    registry: Registry, repo: str, tag: str, body: bytes, media_type: str
) -> str:
    """PUT a manifest under `repo:tag`; return its digest."""
    url = f"{registry.url}/v2/{repo}/manifests/{tag}"
    headers = _headers(registry, **{"Content-Type": media_type})
    async with (
        aiohttp.ClientSession() as session,
        session.put(url, data=body, headers=headers) as response,
    ):
        if response.status != 201:
            raise AssertionError(f"PUT {url}: {response.status} {await response.text()}")
        return response.headers["Docker-Content-Digest"]


async def push_tags(
    lab: Lab, image: str, registry: Registry, repo: str, tags: Sequence[str]
) -> str:
    """Push `image` as `repo:<first tag>` and tag it with the others; return its digest."""
    await push_image(lab, image, registry, f"{repo}:{tags[0]}")
    body, media_type, digest = await manifest(registry, repo, tags[0])
    await asyncio.gather(*(put_manifest(registry, repo, t, body, media_type) for t in tags[1:]))
    return digest


async def put_list(
    registry: Registry,
    repo: str,
    tag: str,
    children: Iterable[tuple[str, Mapping[str, str]]],
    media_type: str = OCI_INDEX,
) -> str:
    """A manifest list / OCI index over tags of `repo` (each with its platform); its digest."""
    entries = []
    for child_tag, platform in children:
        body, child_type, digest = await manifest(registry, repo, child_tag)
        entries.append(
            {"mediaType": child_type, "digest": digest, "size": len(body), "platform": platform}
        )
    index = {"schemaVersion": 2, "mediaType": media_type, "manifests": entries}
    return await put_manifest(registry, repo, tag, json.dumps(index).encode(), media_type)


async def config_blob(registry: Registry, repo: str, ref: str) -> dict[str, object]:
    """The config blob of a single-platform image, decoded."""
    body, _, _ = await manifest(registry, repo, ref)
    digest = json.loads(body)["config"]["digest"]
    url = f"{registry.url}/v2/{repo}/blobs/{digest}"
    async with (
        aiohttp.ClientSession() as session,
        session.get(url, headers=_headers(registry)) as response,
    ):
        response.raise_for_status()
        return json.loads(await response.read())
