"""Content that does not match its digest is refused, and the user is told.

Against a live daemon: a registry (a small aiohttp server: a real docker-registry cannot be made
to lie) holds two WalT images; for one of them it answers the config blob asked by its digest
with other content (labels changed on the way). That image is left out and `walt image search`
shows a warning line naming it and the mismatch, as it does for a failed source; the honest
image is listed.
"""

from __future__ import annotations

import hashlib
import json

import pytest
from aiohttp import web

from tests.hostile.registry_env import live_daemon, serving, v2_entry, walt_search

pytestmark = pytest.mark.asyncio

MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG = "application/vnd.docker.container.image.v1+json"


def _digest(body: bytes) -> str:
    return "sha256:" + hashlib.sha256(body).hexdigest()


def _image(models: str) -> tuple[bytes, bytes]:
    """(manifest, config) of a WalT image for `models`."""
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "created": "2024-01-02T03:04:05Z",
            "config": {"Labels": {"walt.node.models": models}},
            "rootfs": {"type": "layers", "diff_ids": []},
        }
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": MANIFEST,
            "config": {"mediaType": CONFIG, "size": len(config), "digest": _digest(config)},
            "layers": [],
        }
    ).encode()
    return manifest, config


def lying_registry() -> tuple[list[web.RouteDef], str]:
    """Routes of a registry holding alice/good and alice/bad (whose config it alters), and
    the digest of bad's config as its manifest names it."""
    good_manifest, good_config = _image("pc-x86-64")
    bad_manifest, bad_config = _image("rpi-4-b")
    blobs = {
        _digest(good_config): good_config,
        # what it sends for bad's config is not what the digest names
        _digest(bad_config): bad_config.replace(b"rpi-4-b", b"pc-x86-64"),
    }
    manifests = {"good": good_manifest, "bad": bad_manifest}

    async def root(request: web.Request) -> web.Response:
        return web.json_response({})

    async def catalog(request: web.Request) -> web.Response:
        return web.json_response({"repositories": ["alice/bad", "alice/good"]})

    async def tags(request: web.Request) -> web.Response:
        return web.json_response({"name": request.match_info["repo"], "tags": ["latest"]})

    async def manifest(request: web.Request) -> web.Response:
        body = manifests[request.match_info["repo"]]
        headers = {"Docker-Content-Digest": _digest(body)}
        return web.Response(body=body, content_type=MANIFEST, headers=headers)

    async def blob(request: web.Request) -> web.Response:
        return web.Response(body=blobs[request.match_info["digest"]])

    routes = [
        web.get("/v2/", root),
        web.get("/v2/_catalog", catalog),
        web.get("/v2/alice/{repo}/tags/list", tags),
        web.get("/v2/alice/{repo}/manifests/latest", manifest),
        web.get("/v2/alice/{repo}/blobs/{digest}", blob),
    ]
    return routes, _digest(bad_config)


async def test_a_digest_mismatch_is_a_warning_line() -> None:
    routes, bad_config = lying_registry()
    async with serving(routes) as port, live_daemon([v2_entry("liar", port)]) as daemon:
        result = await walt_search(daemon)
    assert result.returncode == 0, result.stderr
    (warning,) = [line for line in result.stderr.splitlines() if line.startswith("Warning:")]
    assert warning.startswith(
        f"Warning: liar: digest mismatch: GET /v2/alice/bad/blobs/{bad_config} should be "
        f"{bad_config} but its content is sha256:"
    ), warning
    assert warning.endswith("(content refused); image alice/bad:latest left out")
    rows = [[c.strip() for c in line.split("|")] for line in result.stdout.splitlines()[2:]]
    assert rows == [["alice", "good", "custom registry", "pc-x86-64", "liar:alice/good"]]
