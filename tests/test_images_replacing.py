"""The rule for replacing an image that exists (pure)."""

from __future__ import annotations

from waltd.db import Node
from waltd.images.replacing import refusal, unsupported


def _node(name: str, model: str | None) -> Node:
    return Node(
        "00:11:22:aa:bb:cc", None, name, model, "docker.io/u/x:latest", "booted", 0, 0, True
    )


PI, PC = _node("pi1", "rpi-3-b"), _node("pc1", "pc-x86-64")


def test_without_force_an_image_in_use_is_never_replaced() -> None:
    text = refusal("x", [PI, PC], ("rpi-3-b", "pc-x86-64"), False, "CMD")
    assert text is not None
    assert "used by node(s) pc1, pi1" in text and text.endswith("to do it anyway: CMD")
    assert refusal("x", [PI], None, False, "CMD", unused_needs_force=False) is not None


def test_an_unused_image_needs_force_unless_the_command_says_otherwise() -> None:
    assert refusal("x", [], ("pc-x86-64",), False, "CMD") == (
        "image x exists already; to overwrite it: CMD"
    )
    assert refusal("x", [], ("pc-x86-64",), False, "CMD", unused_needs_force=False) is None


def test_with_force_the_new_image_must_support_the_nodes_models() -> None:
    assert refusal("x", [PI, PC], ("rpi-3-b", "pc-x86-64"), True, "CMD") is None
    text = refusal("x", [PI, PC], ("pc-x86-64",), True, "CMD")
    assert text is not None and "model(s) rpi-3-b, which the new image does not support" in text
    assert refusal("x", [PI], None, True, "CMD") is None  # models not known yet
    assert unsupported([PI, PC, _node("n", None)], ("pc-x86-64",)) == ["rpi-3-b"]
