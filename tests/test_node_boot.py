"""`walt node boot`'s rules (pure): who may boot which image on which nodes."""

from __future__ import annotations

from waltd.db import Node
from waltd.images.store import LocalRef
from waltd.provision.node_boot import may_boot, unsupported


def _node(name: str, model: str) -> Node:
    return Node("52:54:00:00:00:01", "10.0.0.2", name, model, None, "ready", 1.0, 1.0, True)


def test_a_user_boots_their_own_images_and_the_platform_ones() -> None:
    assert may_boot(LocalRef("alice", "img"), "alice", False) is None
    assert may_boot(LocalRef("waltplatform", "pc-x86-64-default"), "alice", False) is None
    refusal = may_boot(LocalRef("bob", "img"), "alice", False)
    assert refusal is not None and "belongs to user bob" in refusal
    assert "walt image clone walt:bob/img" in refusal
    assert may_boot(LocalRef("bob", "img"), "root", True) is None


def test_the_image_must_support_every_node() -> None:
    nodes = [_node("pc1", "pc-x86-64"), _node("rpi1", "rpi-3-b")]
    image = LocalRef("alice", "img")
    assert unsupported(nodes, image, ["pc-x86-64", "rpi-3-b"]) is None
    refusal = unsupported(nodes, image, ["pc-x86-64"])
    assert refusal is not None
    assert "rpi1 (rpi-3-b)" in refusal and "pc1" not in refusal
    assert "it supports pc-x86-64" in refusal
    assert "no node model" in (unsupported(nodes, image, []) or "")
