"""A registry cannot make the daemon hold much: repositories, bytes and time per search are bounded.

Against a live daemon, three hostile registries (small aiohttp servers: a real registry cannot
be made to answer like this) and one honest one (a real docker-registry): a catalog that keeps
answering `Link: rel="next"` with ~1 MiB pages of names, a tags list doing the same, and a
catalog that trickles small pages forever. Each ends with a one-line warning naming it and its
bound, the honest registry's image is listed, and the daemon's peak resident memory stays
within 100 MB of its idle value.
"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from aiohttp import web

from lab import Lab, Registry
from tests.hostile.registry_env import (
    MODELS,
    WALT_IMAGE,
    honest_registry,
    live_daemon,
    memory_kib,
    serving,
    v2_entry,
    walt_search,
)
from waltd import config as configuration

PAGE = 2**20  # bytes of names per hostile page
DEADLINE_S = 4


def _names_page(make: str) -> bytes:
    """A JSON list of distinct names (`make` formats a number) filling about PAGE bytes."""
    names: list[str] = []
    size = 0
    for i in itertools.count():
        name = make.format(i)
        names.append(name)
        size += len(name) + 4
        if size >= PAGE:
            return json.dumps(names).encode()
    raise AssertionError("unreachable")


def _endless(key: str, body_list: bytes, path: str, delay_s: float = 0) -> web.RouteDef:
    """A route answering page after page of `key`, each linking to a next one never seen."""
    pages = itertools.count()

    async def page(request: web.Request) -> web.Response:
        if delay_s:
            await asyncio.sleep(delay_s)
        body = b'{"%s": %s}' % (key.encode(), body_list)
        link = f'<{path}?n=1000&last=p{next(pages)}>; rel="next"'
        return web.Response(body=body, content_type="application/json", headers={"Link": link})

    return web.get(path, page)


async def _v2_root(request: web.Request) -> web.Response:
    return web.json_response({})


async def _one_repository(request: web.Request) -> web.Response:
    return web.json_response({"repositories": ["a/b"]})


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def honest() -> AsyncIterator[Registry]:
    """The real registry with one WalT image."""
    async with Lab() as lab:
        yield await honest_registry(lab)


@pytest.mark.lab
@pytest.mark.asyncio(loop_scope="module")
async def test_a_flooding_registry_ends_with_a_warning_and_little_memory(honest: Registry) -> None:
    names = _names_page("n{:07d}/r")
    tags = _names_page("t{:07d}")
    flood = [web.get("/v2/", _v2_root), _endless("repositories", names, "/v2/_catalog")]
    tag_flood = [
        web.get("/v2/", _v2_root),
        web.get("/v2/_catalog", _one_repository),
        _endless("tags", tags, "/v2/a/b/tags/list"),
    ]
    slow = [
        web.get("/v2/", _v2_root),
        _endless("repositories", b'["x/y"]', "/v2/_catalog", delay_s=0.3),
    ]
    async with (
        serving(flood) as flood_port,
        serving(tag_flood) as tag_flood_port,
        serving(slow) as slow_port,
    ):
        registries = [
            v2_entry("flood", flood_port),
            v2_entry("tagflood", tag_flood_port),
            v2_entry("slow", slow_port),
            v2_entry("honest", honest.port),
        ]
        async with live_daemon(registries, {"search-deadline-s": DEADLINE_S}) as daemon:
            assert daemon.proc is not None
            idle = memory_kib(daemon.proc.pid, "VmHWM")
            started = asyncio.get_running_loop().time()
            result = await walt_search(daemon)
            took = asyncio.get_running_loop().time() - started
            peak = memory_kib(daemon.proc.pid, "VmHWM")
    warnings = [line for line in result.stderr.splitlines() if line.startswith("Warning:")]
    assert sorted(warnings) == [
        "Warning: flood: the catalog lists over 10000 repositories "
        "(limit images.search-max-repositories)",
        f"Warning: slow: no complete answer within {DEADLINE_S} s (limit images.search-deadline-s)",
        "Warning: tagflood: the lists read exceed 8 MiB at the tags list of a/b "
        "(limit images.search-max-bytes)",
    ], result.stderr
    rows = [line.split("|") for line in result.stdout.splitlines()[2:]]
    assert [[cell.strip() for cell in row] for row in rows] == [
        ["alice", "rpi-os", "custom registry", MODELS, f"honest:{WALT_IMAGE}"]
    ], result.stdout
    assert (peak - idle) / 1024 < 100, f"peak {peak} KiB, idle {idle} KiB"
    assert took < DEADLINE_S + 10


def _images(**keys: object) -> configuration.Images:
    return configuration.parse({"images": keys}, "server.conf").images


def test_search_bounds_are_configurable_with_sane_defaults() -> None:
    default = _images()
    assert (default.search_deadline_s, default.search_max_repositories) == (120, 10_000)
    assert default.search_max_bytes == 8 * 2**20
    set_ = _images(
        **{"search-deadline-s": 30, "search-max-repositories": 500, "search-max-bytes": 2**20}
    )
    assert (set_.search_deadline_s, set_.search_max_repositories) == (30, 500)
    assert set_.search_max_bytes == 2**20


@pytest.mark.parametrize(
    ("key", "value", "text"),
    [
        ("search-deadline-s", 0, "must be a number of seconds above 0 and at most 3600"),
        ("search-deadline-s", "soon", "must be a number of seconds above 0 and at most 3600"),
        ("search-max-repositories", 0, "must be an integer from 1 to 1000000"),
        ("search-max-repositories", True, "must be an integer from 1 to 1000000"),
        ("search-max-bytes", 1024, "must be an integer from 65536 to 1073741824"),
    ],
)
def test_search_bounds_out_of_range_are_refused(key: str, value: object, text: str) -> None:
    with pytest.raises(configuration.ConfigError) as caught:
        _images(**{key: value})
    (problem,) = caught.value.problems
    assert problem.key == key and text in problem.text
