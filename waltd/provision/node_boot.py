"""`walt node boot NODE... IMAGE|default`: which image nodes boot.

The rules (`may_boot`, `unsupported`: pure): every node named must exist; the image must
support each node's model (its `walt.node.models`); a user boots their own images or the
`waltplatform` ones, root any. `default` is each node's own model's default image, which
must be ready. Then the switch: each node's image and state `ready` (it boots again) in the
database, one `node.ready` event each, to which the exports service answers by moving the
node's links and export; a virtual node is reset, another node is told to reboot.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from waltd import log
from waltd.context import Context
from waltd.db import Node
from waltd.images import store
from waltd.images.ownership import PLATFORM_USER
from waltd.images.store import LocalRef
from waltd.node_events import emit
from waltd.provision import nodes

_log = log.get("nodes")
DEFAULT = "default"
MAX_NODES = 1000  # named in one request


@dataclass(frozen=True)
class Switched:
    """A node given an image: what happens next (`reset`: a virtual node, reset now;
    `reboot`: the node boots it at its next boot)."""

    name: str
    image: str
    action: str


def may_boot(image: LocalRef, caller: str, is_root: bool) -> str | None:
    """None when the caller may boot nodes on `image` (their own, a `waltplatform` one;
    root: any), else the refusal."""
    if is_root or image.user in (caller, PLATFORM_USER):
        return None
    return (
        f"{image.display} belongs to user {image.user}: boot your own images "
        f"(clone it first: walt image clone walt:{image.display})"
    )


def unsupported(targets: Sequence[Node], image: LocalRef, models: Sequence[str]) -> str | None:
    """None when `image` (supporting `models`) supports every node's model, else the
    refusal naming the nodes left out."""
    left_out = [n for n in targets if n.model not in models]
    if not left_out:
        return None
    listed = ", ".join(f"{n.name} ({n.model})" for n in left_out)
    return (
        f"{image.display} does not support the model of {listed}: "
        f"it supports {', '.join(models) or 'no node model'}"
    )


async def _targets(ctx: Context, names: Sequence[str]) -> list[Node]:
    if not names:
        raise ValueError("name at least one node")
    if len(names) > MAX_NODES:
        raise ValueError(f"at most {MAX_NODES} nodes at once")
    found: list[Node] = []
    unknown: list[str] = []
    for name in dict.fromkeys(names):
        node = await ctx.db.node_by_name(name)
        if node is None:
            unknown.append(name)
        else:
            found.append(node)
    if unknown:
        raise LookupError(f"no node named {', '.join(repr(n[:64]) for n in unknown)}")
    return found


async def _default_of(ctx: Context, node: Node) -> str:
    assert node.model is not None
    status = await ctx.db.get_model_status(node.model)
    if status is None or status.image_status != nodes.IMAGE_READY or status.image is None:
        image = nodes.default_image(node.model).display
        raise LookupError(f"the default image of {node.model} ({image}) is not ready yet")
    return status.image


async def boot_nodes(
    ctx: Context, names: Sequence[str], image: str, caller: str, is_root: bool
) -> list[Switched]:
    """Give each node named the image `image` (`default`: its model's default image).

    LookupError (a node or image that does not exist), PermissionError or ValueError (the
    rules) say why nothing was changed.
    """
    targets = await _targets(ctx, names)
    chosen: dict[str, str] = {}
    if image == DEFAULT:
        for node in targets:
            chosen[node.mac] = await _default_of(ctx, node)
    else:
        ref = LocalRef.parse(image, caller)
        stored = await store.get(ctx.repository, ref)
        if stored is None:
            raise LookupError(f"no image {ref.display} (walt image show lists yours)")
        refusal = may_boot(ref, caller, is_root)
        if refusal is not None:
            raise PermissionError(refusal)
        refusal = unsupported(targets, ref, stored.models)
        if refusal is not None:
            raise ValueError(refusal)
        chosen = {node.mac: ref.full for node in targets}
    done = []
    for node in targets:
        switched = await ctx.db.set_node_state(node.mac, nodes.READY, image=chosen[node.mac])
        if switched is None:
            continue  # forgotten meanwhile
        event = nodes.state_event(switched)
        emit(ctx.nodes, event)
        virtual = ctx.vnodes.is_virtual(node.mac)
        if virtual:
            await ctx.vnodes.reset(node.mac)
        shown = event.image or chosen[node.mac]
        done.append(Switched(node.name, shown, "reset" if virtual else "reboot"))
        _log.info("node_image_switched", name=node.name, mac=node.mac, image=shown)
    return done
