"""GET /v1/nodes (`walt node show`): the nodes, the unknown devices and the default images;
POST /v1/nodes/boot (`walt node boot`): the image nodes boot.

Readable by any local user (the caller is still identified by SO_PEERCRED, as for every
endpoint). The answer is data (`wire.NodeListing`); `walt` draws the tables. Node names,
models and IPs come from the node network: the client escapes them when it prints them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from aiohttp import web

from waltd.api import wire
from waltd.api.common import Emit, caller, context, error, read_body, stream_operation
from waltd.db import ModelStatus, Node, StateError
from waltd.images import store
from waltd.provision import node_boot
from waltd.provision.nodes import default_image


def shown_image(full: str) -> str:
    """A stored image name as users write it, bounded for the wire."""
    return store.shown(full)[: wire.MAX_NAME_CHARS]


def node_row(node: Node) -> wire.NodeRow:
    """A node (or unknown device) of the database as the API sends it."""
    return wire.NodeRow(
        name=node.name,
        mac=node.mac,
        model=node.model,
        image=shown_image(node.image) if node.image else None,
        state=node.state,
        ip=node.ip,
        first_seen=node.first_seen,
        last_seen=node.last_seen,
    )


def model_row(status: ModelStatus) -> wire.ModelRow:
    """A model's default-image status as the API sends it (a long error shortened)."""
    error_text = status.last_error
    if error_text is not None and len(error_text) > wire.MAX_ERROR_CHARS:
        error_text = error_text[: wire.MAX_ERROR_CHARS - 3] + "..."
    image = shown_image(status.image) if status.image else default_image(status.model).display
    return wire.ModelRow(
        model=status.model,
        image=image,
        status=status.image_status,
        last_error=error_text,
        next_retry=status.next_retry,
    )


def listing(nodes: list[Node], models: list[ModelStatus]) -> wire.NodeListing:
    """The listing of the database's entries: nodes (a model known) apart from unknown
    devices, each list bounded to `wire.MAX_NODES`, the most recently seen kept (devices on
    the node network can make up MAC addresses and models without end)."""
    kept: dict[bool, list[wire.NodeRow]] = {True: [], False: []}
    omitted = 0
    for has_model in (True, False):
        entries = sorted(
            (n for n in nodes if (n.model is not None) == has_model),
            key=lambda n: n.last_seen,
            reverse=True,
        )
        omitted += max(0, len(entries) - wire.MAX_NODES)
        kept[has_model] = [node_row(n) for n in entries[: wire.MAX_NODES]]
    omitted += max(0, len(models) - wire.MAX_NODES)
    return wire.NodeListing(
        nodes=tuple(kept[True]),
        devices=tuple(kept[False]),
        models=tuple(model_row(m) for m in models[: wire.MAX_NODES]),
        omitted=omitted,
    )


async def list_nodes(request: web.Request) -> web.Response:
    """GET /v1/nodes: `wire.NodeListing` from the state database; 503 when it is not open."""
    db = context(request).db
    unavailable = "the state database is not open (the daemon is starting or stopping)"
    if not db.is_open:
        return error(503, unavailable)
    try:
        nodes = await db.list_nodes()
        models = await db.list_models()
    except RuntimeError:
        return error(503, unavailable)  # closed between the check and the reads
    except StateError as err:
        return error(503, f"cannot read the state database: {err}")
    return web.json_response(listing(nodes, models).to_json())


async def boot_nodes(request: web.Request) -> web.StreamResponse:
    """POST /v1/nodes/boot (`wire.NodeBootRequest`): one `wire.NodeBooting` record per node
    given the image, then `wire.NodesBooted`; nothing changes when the request is refused."""
    try:
        wanted = wire.NodeBootRequest.from_json(await read_body(request))
    except ValueError as err:
        return error(400, f"bad request: {err}")
    ctx = context(request)
    who = caller(request)

    async def operation(emit: Emit) -> Mapping[str, Any]:
        switched = await node_boot.boot_nodes(
            ctx, wanted.nodes, wanted.image, who.walt_user, who.uid == 0
        )
        for done in switched:
            emit(wire.NodeBooting(done.name, done.image, done.action).to_json())
        return wire.NodesBooted(len(switched)).to_json()

    return await stream_operation(request, operation)


def add_routes(app: web.Application) -> None:
    """The routes of `walt node show` and `walt node boot`."""
    app.router.add_get("/v1/nodes", list_nodes)
    app.router.add_post("/v1/nodes/boot", boot_nodes)
