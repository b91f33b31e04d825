"""Nodes and their states: the rules (pure), and the service that moves nodes along them.

A device on the node network is in one of these states, kept in the state database:

- `unknown`: it never said which node model it is (no `walt.node.<model>` class, no
  Raspberry Pi MAC prefix): recorded, never provisioned;
- `waiting`: a node whose model's default image is not in the repository yet;
- `ready`: a node with an image to boot (its model's default image, or one it was given);
- `booted`: the node said it finished booting;
- `down`: its lease ended, or it stopped answering.

A model's default image (`waltplatform/<model>-default:latest`) has its own status:
`missing` (never fetched), `fetching`, `failed` (every source failed; retried later) and
`ready` (in the repository, its image id pinned in the database).
"""

from __future__ import annotations

from waltd.db import Node
from waltd.images.ownership import PLATFORM_USER
from waltd.images.store import LocalRef, shown
from waltd.node_events import NodeState

UNKNOWN = "unknown"
WAITING = "waiting"
READY = "ready"
BOOTED = "booted"
DOWN = "down"

# The status of a model's default image.
MISSING = "missing"
FETCHING = "fetching"
FAILED = "failed"
IMAGE_READY = "ready"

# A lease event that repeats what is recorded this soon after the node's last sighting is no
# news: dnsmasq reports a lease again once the node's host entry gives it its name (just after
# the node's first lease), and every lease at its restart. A renewal comes much later (at half
# the lease time), and a lease that changes anything is never a repeat.
REPEAT_S = 10.0


def default_image(model: str) -> LocalRef:
    """The default image of node model `model`: `waltplatform/<model>-default:latest`."""
    return LocalRef(PLATFORM_USER, f"{model}-default")


def state_on_lease(known_state: str | None, model: str | None) -> str:
    """The state a lease (a DHCP request answered) puts a device in.

    A device of no model is `unknown`. A node that is `ready` stays so, and one that was
    `booted` is booting again: `ready`. Any other node waits until the provisioning
    service finds its image (which it does at once when the image is there).
    """
    if model is None:
        return UNKNOWN
    if known_state in (READY, BOOTED):
        return READY
    return WAITING


def state_event(node: Node) -> NodeState:
    """The `NodeState` event of `node` as stored, its image as users write it
    (`user/name[:tag]`; another stored name as it is)."""
    image = None if node.image is None else shown(node.image)
    return NodeState(
        mac=node.mac, name=node.name, model=node.model, ip=node.ip, state=node.state, image=image
    )


def lease_state(action: str, known_state: str | None, model: str | None) -> str:
    """The state a lease puts a device in (`state_on_lease`), except that dnsmasq's
    `old` (a lease it held already: its restart, a new hostname, the lease file) is no new
    DHCP answer: a node ready or booted stays so."""
    if action == "old" and model is not None and known_state in (READY, BOOTED):
        return known_state
    return state_on_lease(known_state, model)


def is_repeat(action: str, known: Node, *, ip: str, model: str, now: float) -> bool:
    """Whether lease event `action` of known node `known` (its address `ip`, its model
    `model`) repeats what is recorded, within REPEAT_S of its last sighting: nothing to
    record or tell (`lease_state` would leave its state as it is)."""
    return (
        action == "old"
        and known.announced
        and known.ip == ip
        and known.model == model
        and lease_state(action, known.state, model) == known.state
        and 0 <= now - known.last_seen < REPEAT_S
    )
