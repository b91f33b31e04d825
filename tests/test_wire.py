"""The API's shapes: what the daemon sends the client reads back; what is refused is named."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import pytest

from waltd.api import wire

_IMAGE = wire.ImageRow(
    location="local",
    kind="custom registry",
    user="bob",
    name="pc-tests",
    tag="v2",
    digest="sha256:" + "0" * 64,
    labels={"walt.node.models": "pc-x86-64", "walt.server.minversion": "9"},
    created=None,
    platforms=("linux/amd64",),
    clone_url="local:bob/pc-tests:v2",
    models=("pc-x86-64",),
    minversion=9,
)


def _through_json(value: dict[str, object]) -> object:
    return json.loads(json.dumps(value))


def test_every_shape_reads_back_what_was_sent() -> None:
    status = wire.Status(
        version="0.1.0",
        pid=42,
        uptime_s=1.5,
        caller=wire.Caller("Bob", "bob", 1000),
        services=(wire.ServiceState("api", "running", 0, None),),
        node_network=None,
        registries=(wire.RegistryInfo("local", "docker-registry-v2", "basic"),),
        nodes=3,
    )
    assert wire.Status.from_json(_through_json(status.to_json())) == status
    request = wire.SearchRequest("pc", {"local": wire.Login("bob", "s3cr3t-pw")})
    assert wire.SearchRequest.from_json(_through_json(request.to_json())) == request
    result = wire.SearchResult(5, (_IMAGE,), ("Warning: hub: timed out",))
    assert wire.search_record(_through_json(result.to_json())) == result
    progress = wire.SearchProgress("hub", "done", 2)
    assert wire.search_record(_through_json(progress.to_json())) == progress
    query = wire.EventsQuery(since=7, limit=100, follow=True)
    assert query.to_query() == "?since=7&limit=100&follow=1"
    assert wire.EventsQuery.from_query({"since": "7", "limit": "100", "follow": "1"}) == query


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (lambda r: r["images"][0]["labels"].update(x=1), "images[0].labels.x must be a string"),
        (lambda r: r["images"][0].pop("clone_url"), "images[0].clone_url is missing"),
        (lambda r: r["images"][0].update(minversion="9"), "images[0].minversion must be an int"),
        (lambda r: r["images"][0].update(minversion=2**80), "images[0].minversion is out of"),
        (lambda r: r.update(warnings="x"), "warnings must be a list"),
        (lambda r: r.update(type="other"), "a search record of unknown type 'other'"),
    ],
)
def test_a_broken_answer_is_refused_naming_the_field(
    change: Callable[[dict[str, Any]], object], error: str
) -> None:
    record = wire.SearchResult(5, (_IMAGE,), ()).to_json()
    change(record)
    with pytest.raises(ValueError, match=f"^{re.escape(error)}"):
        wire.search_record(record)


def test_a_refused_login_names_its_field_never_its_password() -> None:
    password = "p" * (wire.MAX_LOGIN_CHARS + 1)
    body = {"credentials": {"local": {"username": "bob", "password": password}}}
    with pytest.raises(ValueError, match=r"^credentials.local.password is longer than") as err:
        wire.SearchRequest.from_json(body)
    assert "ppp" not in str(err.value)
    many = {f"r{i}": {"username": "u", "password": "p"} for i in range(wire.MAX_LOGINS + 1)}
    with pytest.raises(ValueError, match=r"^credentials has more than 64 entries"):
        wire.SearchRequest.from_json({"credentials": many})


def test_body_nesting_is_bounded_and_strings_do_not_count() -> None:
    deepest = "[" * wire.MAX_BODY_DEPTH + "]" * wire.MAX_BODY_DEPTH
    assert wire.decode_body(deepest.encode()) == json.loads(deepest)
    with pytest.raises(ValueError, match="nests deeper than"):
        wire.decode_body(f"[{deepest}]".encode())
    text = json.dumps({"keyword": '[{"\\' * 1000})
    assert wire.decode_body(text.encode()) == json.loads(text)
    with pytest.raises(ValueError, match="over 65536 bytes"):
        wire.decode_body(b" " * (wire.MAX_BODY_BYTES + 1))


@pytest.mark.parametrize("raw", ["-1", "1e3", "²", "٣", "9" * 19, "9" * 5000, " 1"])
def test_query_numbers_are_plain_bounded_decimals(raw: str) -> None:
    with pytest.raises(ValueError, match=r"^since must be a non-negative integer of at most 18"):
        wire.EventsQuery.from_query({"since": raw})
    with pytest.raises(ValueError, match=r"^limit must be"):
        wire.EventsQuery(limit=-1)


_NODE = wire.NodeRow(
    name="rpi-3-b-123456",
    mac="52:54:00:12:34:56",
    model="rpi-3-b",
    image="waltplatform/rpi-3-b-default",
    state="ready",
    ip="192.168.152.5",
    first_seen=1_790_000_000.25,
    last_seen=1_790_000_060.5,
)
_DEVICE = wire.NodeRow(
    name="unknown-000001",
    mac="02:00:00:00:00:01",
    model=None,
    image=None,
    state="unknown",
    ip=None,
    first_seen=1_790_000_000,
    last_seen=1_790_000_000,
)
_MODEL = wire.ModelRow(
    model="pc-x86-64",
    image="waltplatform/pc-x86-64-default",
    status="failed",
    last_error="hub: timed out",
    next_retry=1_790_000_100.0,
)


def test_the_node_listing_reads_back_what_was_sent() -> None:
    listing = wire.NodeListing((_NODE,), (_DEVICE,), (_MODEL,), omitted=3)
    assert wire.NodeListing.from_json(_through_json(listing.to_json())) == listing
    empty = wire.NodeListing((), (), ())
    assert wire.NodeListing.from_json(_through_json(empty.to_json())) == empty


@pytest.mark.parametrize(
    ("change", "error"),
    [
        (lambda r: r["nodes"][0].update(name=5), "nodes[0].name must be a string"),
        (lambda r: r["nodes"][0].pop("mac"), "nodes[0].mac is missing"),
        (lambda r: r["devices"][0].update(ip="x" * 257), "devices[0].ip is longer than 256"),
        (lambda r: r["nodes"][0].update(image="i" * 513), "nodes[0].image is longer than 512"),
        (lambda r: r["nodes"][0].update(first_seen="now"), "nodes[0].first_seen must be a num"),
        (lambda r: r["nodes"][0].update(last_seen=float("nan")), "nodes[0].last_seen must be a t"),
        (lambda r: r["devices"][0].update(first_seen=-1), "devices[0].first_seen must be a time"),
        (lambda r: r["models"][0].update(next_retry=1e300), "models[0].next_retry must be a time"),
        (lambda r: r["models"][0].update(last_error="e" * 4097), "models[0].last_error is longer"),
        (lambda r: r["models"][0].update(status=None), "models[0].status must be a string"),
        (lambda r: r.update(nodes={}), "nodes must be a list"),
        (lambda r: r.update(devices=[{}] * 100_001), "devices has more than 100000 items"),
        (lambda r: r.update(omitted=-1), "omitted must not be negative"),
    ],
)
def test_a_broken_node_listing_is_refused_naming_the_field(
    change: Callable[[dict[str, Any]], object], error: str
) -> None:
    record = wire.NodeListing((_NODE,), (_DEVICE,), (_MODEL,)).to_json()
    change(record)
    with pytest.raises(ValueError, match=f"^{re.escape(error)}"):
        wire.NodeListing.from_json(_through_json(record))
