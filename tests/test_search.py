"""Search policy: merge, filter, minversion, failing sources, and the client's table of the
images the API sends (pure parts).

The sources here are in-memory stand-ins for the merge logic only; the real clients are
tested against real registries in their own modules and end to end in test_image_search.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from waltd.api import wire
from waltd.api.server import image_row
from waltd.cli.terminal import table
from waltd.cli.walt import HEADERS, NO_MATCH, image_table
from waltd.registries.base import (
    LOCATION_DOCKER,
    LOCATION_HUB,
    LOCATION_REGISTRY,
    Credentials,
    ImageInfo,
    RegistryError,
    Warn,
)
from waltd.registries.search import search


def _table(images: Sequence[ImageInfo], server_version: int) -> str:
    """What `walt image search` prints of `images`, as the API sends them."""
    sent = wire.SearchResult(server_version, tuple(image_row(i) for i in images), ())
    return image_table(sent)


def _img(
    location: str,
    kind: str,
    user: str,
    name: str,
    tag: str = "latest",
    models: str | None = "pc-x86-64",
    **labels: str,
) -> ImageInfo:
    all_labels = dict(labels)
    if models is not None:
        all_labels["walt.node.models"] = models
    return ImageInfo(location, kind, user, name, tag, "sha256:" + "0" * 64, all_labels)


class _Source:
    def __init__(self, label: str, images: list[ImageInfo] | Exception, delay: float = 0) -> None:
        self.label = label
        self.kind = LOCATION_REGISTRY
        self._images = images
        self._delay = delay
        self.creds: Credentials | None = None

    async def list_images(
        self, creds: Credentials | None = None, *, warn: Warn | None = None
    ) -> list[ImageInfo]:
        self.creds = creds
        await asyncio.sleep(self._delay)
        if isinstance(self._images, Exception):
            raise self._images
        return self._images


async def test_merge_filter_and_warning() -> None:
    hub = _Source(
        "hub",
        [
            _img("hub", LOCATION_HUB, "waltplatform", "rpi-default", models="rpi-b"),
            _img("hub", LOCATION_HUB, "eduble", "nginx", models=None),
        ],
    )
    local = _Source("local", [_img("local", LOCATION_REGISTRY, "bob", "pc-tests", "v2")])
    down = _Source("broken", RegistryError("broken", "connection refused"))
    docker = _Source("docker", [_img("docker", LOCATION_DOCKER, "alice", "debian-pc")])
    creds = {"local": Credentials("bob", "pw")}
    progress: list[tuple[str, str, int | None]] = []
    result = await search([hub, local, down, docker], None, creds, lambda *a: progress.append(a))
    assert [i.clone_url for i in result.images] == [
        "docker:alice/debian-pc",
        "local:bob/pc-tests:v2",
        "hub:waltplatform/rpi-default",
    ]
    assert result.warnings == ("Warning: broken: connection refused",)
    assert local.creds == creds["local"] and hub.creds is None
    assert sorted(progress) == [
        ("broken", "failed", None),
        ("docker", "done", 1),
        ("hub", "done", 2),
        ("local", "done", 1),
    ]


async def test_sources_are_queried_concurrently() -> None:
    sources = [_Source(f"s{i}", [], delay=0.3) for i in range(5)]
    loop = asyncio.get_running_loop()
    began = loop.time()
    await search(sources, None)
    assert loop.time() - began < 0.9


async def test_keyword_matches_the_clone_url() -> None:
    src = _Source(
        "local",
        [
            _img("local", LOCATION_REGISTRY, "bob", "pc-tests"),
            _img("local", LOCATION_REGISTRY, "eve", "rpi", "bob-edition"),
        ],
    )
    result = await search([src], "bob")
    assert len(result.images) == 2
    assert (await search([src], "rpi")).images[0].user == "eve"
    assert _table((await search([src], "nothing")).images, 1) == NO_MATCH


async def test_warnings_hold_no_password_of_the_search() -> None:
    """A source's error text is scrubbed of this search's passwords (sources never put them
    there: this is the search's own guard, not the process-wide log redactor)."""
    leaky = _Source("local", RegistryError("local", "refused login alice:pa55-word-1"))
    creds = {"local": Credentials("alice", "pa55-word-1")}
    result = await search([leaky], None, creds)
    assert result.warnings == ("Warning: local: refused login alice:***",)
    assert leaky.creds == creds["local"]


def test_table_and_minversion() -> None:
    images = (
        _img("hub", LOCATION_HUB, "waltplatform", "rpi-default", models="rpi-b,rpi-3-b"),
        _img("local", LOCATION_REGISTRY, "bob", "future", "1.0", **{"walt.server.minversion": "9"}),
    )
    text = _table(images, server_version=5)
    lines = text.splitlines()
    assert lines[0].split(" | ")[0:5] == [
        "User        ",
        "Image name ",
        "Location       ",
        "Compatibility",
        "Clonable link",
    ]
    assert "hub:waltplatform/rpi-default" in lines[2] and "rpi-b,rpi-3-b" in lines[2]
    assert lines[3].endswith("[Need server upgrade, version>=9]")
    assert "future:1.0" in lines[3] and "local:bob/future:1.0" not in lines[3]


def test_minversion_is_a_plain_decimal_number() -> None:
    def image(minversion: str) -> ImageInfo:
        return _img(
            "local", LOCATION_REGISTRY, "bob", "x", **{"walt.server.minversion": minversion}
        )

    assert image(" 7 ").minversion == 7
    # str.isdigit() accepts the first ones, int() does not; the last is too long for int()
    for odd in ("²", "٣", "7²", "-1", "", "9" * 5000):
        assert image(odd).minversion is None, odd
    assert "local:bob/x" in _table([image("²")], server_version=5)


def test_label_text_reaches_no_terminal_raw() -> None:
    models = "rpi-b, \x1b[2J\x1b[31mpc\x1b[0m ,pc-x86-64,Bad Model,rpi-3-b-plus"
    image = _img("local", LOCATION_REGISTRY, "bob", "x", models=models)
    assert image.models == ("rpi-b", "pc-x86-64", "rpi-3-b-plus")
    assert not _img("local", LOCATION_REGISTRY, "bob", "y", models="\x1b]0;owned\x07").is_walt

    text = table([["bob\x1b[2J", "x\u202etxt", "custom registry", "rpi-b", "a\tb\nc"]], HEADERS)
    assert all(c.isprintable() for line in text.splitlines() for c in line)
    _header, _rule, row = text.splitlines()  # the newline in a cell made no line of its own
    assert row == "bob\\x1b[2J | x\\u202etxt | custom registry | rpi-b         | a\\tb\\nc"
