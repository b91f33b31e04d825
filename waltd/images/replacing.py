"""When an image may be replaced (pure): the rule rename, duplicate, squash, build and clone
share for a name that already holds an image, which nodes may be using."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from waltd.db import Node


def node_names(nodes: Iterable[Node]) -> str:
    """The nodes' names, sorted, for a message."""
    return ", ".join(sorted(node.name for node in nodes))


def unsupported(nodes: Iterable[Node], models: Sequence[str]) -> list[str]:
    """The models of `nodes` that an image supporting `models` does not support, sorted."""
    return sorted({node.model for node in nodes if node.model and node.model not in models})


def refusal(
    shown: str,
    nodes: Sequence[Node],
    models: Sequence[str] | None,
    force: bool,
    command: str,
    *,
    unused_needs_force: bool = True,
) -> str | None:
    """Why the image `shown`, which `nodes` use, may not be replaced by one supporting
    `models` (None: not known yet); None when it may. Without `force`, an image in use is
    never replaced (nor an unused one, with `unused_needs_force`); with it, not by an image
    missing one of its nodes' models. `command` is the command line that would do it."""
    if not force:
        if nodes:
            return (
                f"image {shown} is used by node(s) {node_names(nodes)}: replacing it changes "
                f"what they boot (at their next reboot); to do it anyway: {command}"
            )
        if unused_needs_force:
            return f"image {shown} exists already; to overwrite it: {command}"
        return None
    missing = [] if models is None else unsupported(nodes, models)
    if missing:
        return (
            f"image {shown} is used by node(s) {node_names(nodes)} of model(s) "
            f"{', '.join(missing)}, which the new image does not support "
            f"(it supports {', '.join(models or ()) or 'no model'}): refused even with --force"
        )
    return None
